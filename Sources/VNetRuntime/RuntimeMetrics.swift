// The runtime's counters, exported through swift-metrics.
//
// Theory of Operation
// -------------------
// The data path keeps its own plain counters (arrays of UInt64, see VNetGateway's Counters.swift, and
// `PortCounters`), which cost nothing to bump. `RuntimeMetrics` mirrors them into swift-metrics objects only
// when someone looks: `update` (called before each scrape) adds what each counter gained since the last
// update, and sets the gauges (flows per protocol, leases, control clients). It uses whatever backend the
// process bootstrapped (`MetricsSystem.bootstrap`); a library never bootstraps one, only the executable does.

import CoreMetrics
import VNetBuffers
import VNetGateway
import VNetHost
#if canImport(Glibc)
import Glibc
#endif

/// A snapshot of the counters one runtime exports (the switch runtime can fill the same shape).
public struct MetricsSnapshot {
    public var served: [(String, UInt64)] = []
    public var drops: [(String, UInt64)] = []
    /// Per port: (port name, counters, connected).
    public var ports: [(String, PortCounters, Bool)] = []
    /// Per transport port (vhost-user, vxlan): its name, type, own counters and levels, and its peers.
    public var transports: [(port: String, type: String, stats: [(String, UInt64)], peers: [String])] = []
    public var flows: [(String, Int)] = []
    public var flowsOpened: [(String, UInt64)] = []
    public var leases = 0
    public var dnsQueries: UInt64 = 0
    public var dnsLocalAnswers: UInt64 = 0
    public var dnsServfail: UInt64 = 0
    public var controlClients = 0
    public var pcapPackets: UInt64 = 0
    public init() {}
}

extension MetricsSnapshot {
    /// The gateway's part, the same in every mode: what it served and dropped, flows, leases, DNS.
    mutating func addGateway(_ gw: Gateway<RealHost>, now: Instant) {
        let c = gw.counters
        served = ServedCounter.allCases.map { ($0.name, c[$0]) }
        drops += DropReason.allCases.map { ($0.name, c[$0]) }
        flows = [("tcp", gw.tcpFlowCount), ("udp", gw.udpFlowCount), ("icmp", gw.icmpFlowCount)]
        flowsOpened = [("tcp", c[.tcpFlowsOpened]), ("udp", c[.udpFlowsOpened]), ("icmp", c[.icmpFlowsOpened])]
        leases = gw.leases(now: now).filter { $0.state == "bound" }.count
        dnsQueries = c[.dnsQueries]
        dnsLocalAnswers = c[.dnsLocalAnswers]
        dnsServfail = c[.dnsServfail]
    }
}

extension MetricsEndpoint {
    /// The metrics endpoint of a runtime, on its loop: each scrape mirrors `snapshot()` into `metrics` first.
    static func serving(_ m: MetricsOptions, epoll: Epoll, metrics: RuntimeMetrics,
                        snapshot: @escaping () -> MetricsSnapshot) throws -> MetricsEndpoint {
        let render = m.render
        return try MetricsEndpoint(host: m.host, port: m.port, epoll: epoll, listenerTag: EventKind.metrics.tag(),
                                   clientTag: EventKind.metricsClient.tag()) {
            metrics.update(snapshot())
            return render()
        }
    }
}

/// Prints counter lines on stderr between the markers readers wait for (SIGUSR1, and at exit).
func printCounterBlock(_ lines: [String]) {
    var text = "vnet: counters\n"
    for l in lines { text += "  \(l)\n" }
    text += "vnet: end of counters\n"   // readers wait for this line, so an empty block is unambiguous
    text.withUTF8 { b in _ = write(2, b.baseAddress, b.count) }
}

public final class RuntimeMetrics {
    var counters: [String: (CoreMetrics.Counter, UInt64)] = [:]
    var gauges: [String: Gauge] = [:]
    /// The `vnet_port_peer` series set to 1 at the last update: one that is gone is set to 0.
    var peersShown: [String: [(String, String)]] = [:]

    public init() {}

    func key(_ label: String, _ dims: [(String, String)]) -> String {
        label + dims.map { "|\($0.0)=\($0.1)" }.joined()
    }

    /// Brings a counter to `value` (counters only go up: a smaller value, after a reset, adds nothing).
    func count(_ label: String, _ dims: [(String, String)] = [], _ value: UInt64) {
        let k = key(label, dims)
        let (c, last) = counters[k] ?? (CoreMetrics.Counter(label: label, dimensions: dims), 0)
        if value > last { c.increment(by: Int64(clamping: value - last)) }
        counters[k] = (c, max(value, last))
    }

    func gauge(_ label: String, _ dims: [(String, String)] = [], _ value: Int) {
        let k = key(label, dims)
        let g = gauges[k] ?? Gauge(label: label, dimensions: dims)
        gauges[k] = g
        g.record(value)
    }

    public func update(_ s: MetricsSnapshot) {
        for (name, v) in s.served { count("vnet_gateway_events_total", [("event", name)], v) }
        for (reason, v) in s.drops { count("vnet_drops_total", [("reason", reason)], v) }
        for (port, p, connected) in s.ports {
            let d = [("port", port)]
            count("vnet_port_rx_packets_total", d, p.framesIn)
            count("vnet_port_tx_packets_total", d, p.framesOut)
            count("vnet_port_rx_bytes_total", d, p.bytesIn)
            count("vnet_port_tx_bytes_total", d, p.bytesOut)
            count("vnet_port_rx_errors_total", d, p.desyncResets)
            count("vnet_port_rx_dropped_total", d, p.droppedShort &+ p.droppedOversize)
            count("vnet_port_tx_errors_total", d, p.sendErrors)
            gauge("vnet_port_connected", d, connected ? 1 : 0)
        }
        var peersNow: [String: [(String, String)]] = [:]
        for t in s.transports {
            // The transport's own lines of `stats` (counters and levels alike, so gauges), and its far ends.
            for (name, v) in t.stats { gauge("vnet_port_transport_stat", [("port", t.port), ("transport", t.type), ("stat", name)], Int(clamping: v)) }
            for peer in t.peers {
                let d = [("port", t.port), ("transport", t.type), ("peer", peer)]
                peersNow[key("vnet_port_peer", d)] = d
                gauge("vnet_port_peer", d, 1)
            }
        }
        for (k, d) in peersShown where peersNow[k] == nil { gauge("vnet_port_peer", d, 0) }
        peersShown = peersNow
        for (proto, n) in s.flows { gauge("vnet_flows", [("protocol", proto)], n) }
        for (proto, n) in s.flowsOpened { count("vnet_flows_opened_total", [("protocol", proto)], n) }
        gauge("vnet_dhcp_leases", [], s.leases)
        count("vnet_dns_queries_total", [], s.dnsQueries)
        count("vnet_dns_answers_total", [("source", "local")], s.dnsLocalAnswers)
        count("vnet_dns_answers_total", [("source", "servfail")], s.dnsServfail)
        gauge("vnet_control_clients", [], s.controlClients)
        count("vnet_pcap_packets_total", [], s.pcapPackets)
    }
}
