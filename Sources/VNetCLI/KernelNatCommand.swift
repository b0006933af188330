// `vnet nat --kernel`: a NAT network made of kernel parts (libvirt's "default" network without dnsmasq):
// a bridge with the gateway address, vnet's DHCP and DNS forwarding on it, IP forwarding, and an nftables
// table with masquerade and port maps. Everything is undone on SIGINT/SIGTERM/SIGHUP; `--undo` undoes what
// a killed run left behind. NatCommand parses the flags (shared with the userspace mode) and calls this.

import ArgumentParser
import CVNetShim
import VNetBuffers
import VNetHost
import VNetKernel
import VNetRuntime
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

struct KernelNatMode {
    var name: String
    var bridge: String?
    var network: String
    var gateway: String?
    var dhcpRange: String?
    var leaseTime: UInt64?
    var domain: String?
    var portMaps: [String]
    var dnsUpstream: String?
    var resolvConf: String
    var stateDir: String
    var undo: Bool
    var controlPath: String? = nil

    func makeConfig() throws -> KernelNatConfig {
        guard name.count <= 24, !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
            throw ValidationError("--name: with --kernel, 1-24 letters, digits or '_' (it names the nft table vnet-NAME)")
        }
        let br = bridge ?? "vnet-" + name
        do { try validateInterfaceName(br) } catch { throw ValidationError("--bridge: \(error) (a long --name needs --bridge)") }
        let (addr, prefix) = try parseCIDR(network)
        guard (8 ... 30).contains(prefix) else { throw ValidationError("--network: the prefix must be 8-30") }
        let net = IPv4Network(address: addr, prefixLength: prefix)
        let addressing = try Self.addressing(network: net, gateway: gateway, dhcpRange: dhcpRange)
        let (gw, first) = (addressing.gateway, addressing.dhcpFirst)
        var maps: [HostForward] = []
        for f in portMaps {
            do { maps.append(try HostForward.parseKernelPortMap(f, defaultGuest: first)) } catch {
                throw ValidationError("--port-map: \(error) (with --kernel the VM is an address)")
            }
        }
        return KernelNatConfig(name: name, bridge: br, network: addressing.network, gateway: gw, dhcpStart: first,
                               dhcpCount: addressing.dhcpCount, portMaps: maps, stateDirectory: stateDir)
    }

    /// The gateway and DHCP range from `--gateway` and `--dhcp-range` (shared with `vnet nat`).
    static func addressing(network: IPv4Network, gateway: String?, dhcpRange: String?) throws -> NetworkAddressing {
        var gw: IPv4Address? = nil
        if let t = gateway {
            guard let a = IPv4Address(t) else { throw ValidationError("--gateway '\(t)' is not an IPv4 address") }
            gw = a
        }
        var range: (IPv4Address, IPv4Address)? = nil
        if let r = dhcpRange {
            guard let parsed = NetworkAddressing.parseRange(r) else { throw ValidationError("--dhcp-range '\(r)': expected FIRST-LAST") }
            range = parsed
        }
        do { return try NetworkAddressing(network: network, gateway: gw, dhcpRange: range) } catch {
            throw ValidationError("--\(error)")
        }
    }

    /// `--dns-upstream ADDR:PORT` (IPv6 in brackets), else every nameserver of resolv.conf (either family, not
    /// link-local) on port 53, in order: the forwarder fails over from one to the next.
    func upstreams() throws -> [(IPAddress, UInt16)] {
        if let u = dnsUpstream {
            guard let colon = u.lastIndex(of: ":"), let a = IPAddress(text: u[..<colon]), let p = UInt16(u[u.index(after: colon)...]) else {
                throw ValidationError("--dns-upstream: expected ADDR:PORT (IPv6 in brackets: [::1]:53), got '\(u)'")
            }
            return [(a, p)]
        }
        guard let text = readSmallFile(resolvConf) else { return [] }
        return ResolvConf.parse(text).map { ($0, 53) }
    }

    func run() throws {
        let config = try makeConfig()
        let log: (String) -> Void = { line in print(line); fflush(nil) }
        if undo {
            do { try kernelCall { try KernelNat.recoverStale(config, log: log) } } catch let e as KernelNat.AlreadyRunning { fail(e.description, code: 1) }
            print("vnet: nothing left of \(config.name)")
            return
        }
        let dns = try upstreams()
        // Stop signals are blocked from here on, so a SIGTERM during set-up still tears down.
        let loop = try EventLoop(signals: .stopOnly)
        let nat = KernelNat(config: config, log: log)
        try kernelCall {
            do {
                try nat.setUp()
            } catch let e as KernelNat.AlreadyRunning {
                fail(e.description, code: 1)
            } catch {
                try? nat.tearDown()
                throw error
            }
            let dhcpConfig = DHCPConfig(network: config.network, serverAddress: config.gateway, router: config.gateway,
                                        dnsServers: dns.isEmpty ? [] : [config.gateway], poolStart: config.dhcpStart,
                                        poolSize: config.dhcpCount, leaseTime: .seconds(leaseTime ?? 3600), domainName: domain, mtu: 1500)
            let services: KernelNatServices
            do {
                services = try KernelNatServices(bridge: config.bridge, dhcpConfig: dhcpConfig, gateway: config.gateway, dnsUpstreams: dns)
            } catch {
                try? nat.tearDown()
                throw error
            }
            let last = IPv4Address(rawValue: config.dhcpStart.rawValue + UInt32(config.dhcpCount) - 1)
            print("vnet: nat \(config.name) (kernel): bridge \(config.bridge), gateway \(config.gateway)/\(config.network.prefixLength), "
                  + "DHCP \(config.dhcpStart)-\(last), DNS \(dns.isEmpty ? "off (no upstream)" : "via " + dns.map { "\($0.0.bracketed):\($0.1)" }.joined(separator: ", ") + " (UDP and TCP)"), nft table ip vnet-\(config.name)")
            for m in config.portMaps { print("vnet: port map \(m)") }
            print("vnet: start QEMU with: -netdev bridge,id=n0,br=\(config.bridge),helper=\"vnet tap-helper\" -device virtio-net-pci,netdev=n0")
            print("vnet: ready")
            fflush(nil)
            var sig: Int32 = 0
            if let path = controlPath {
                let target = KernelNatControl(services: services, config: config)
                let control = try ControlServer(path: path, epoll: loop.epoll, listenerTag: EventKind.control.tag(),
                                                clientTag: EventKind.controlClient.tag(), target: target)
                services.onLease = { address, mac in
                    control.publish("LEASE_GRANTED", data: ["address": address.description, "mac": mac.description, "bridge": config.bridge])
                }
                print("vnet: control socket \(path) (vnet ctl \(path) help)")
                fflush(nil)
                sig = try services.run(on: loop) { kind, index, events in
                    control.handle(tag: kind.tag(index), events: events, isListener: kind == .control)
                }
            } else {
                sig = try services.run(on: loop)
            }
            let c = services.counters
            print("vnet: stopping (signal \(sig)); dhcp replies \(c.dhcpReplies) dropped \(c.dhcpDropped), dns forwarded \(c.dnsForwarded) "
                  + "answered \(c.dnsAnswered) dropped \(c.dnsDropped) failovers \(c.dnsFailovers), dns over tcp \(c.dnsTCPRelayed) refused \(c.dnsTCPRefused)")
            try nat.tearDown()
            print("vnet: removed what \(config.name) added")
            fflush(nil)
        }
    }
}

/// `vnet nat --kernel --control PATH`: the kernel NAT's status over the control socket.
final class KernelNatControl: ControlTarget {
    let services: KernelNatServices
    let config: KernelNatConfig

    init(services: KernelNatServices, config: KernelNatConfig) {
        self.services = services
        self.config = config
    }

    var controlCommands: [ControlCommand] {
        [
            ControlCommand("info-network", help: "the bridge, addresses and nft table") { [unowned self] _ in
                let text = "\(config.name): type=kernel-nat,bridge=\(config.bridge),gateway=\(config.gateway)/\(config.network.prefixLength),"
                    + "nft=ip vnet-\(config.name)"
                return ControlResult(value: ["name": config.name, "bridge": config.bridge, "gateway": config.gateway.description,
                                             "network": config.network.description, "nft_table": "ip vnet-\(config.name)"], text: text)
            },
            ControlCommand("leases", help: "DHCP leases on the bridge") { [unowned self] _ in
                let leases = services.leases
                var lines = ["Address          MAC                Host name         Expires in"]
                for l in leases {
                    lines.append(l.address.description.padding(16) + " " + l.mac.description.padding(18) + " " + (l.hostName ?? "-").padding(17)
                                 + " " + (l.remainingSeconds > 0 ? "\(l.remainingSeconds)s" : "expired"))
                }
                if leases.isEmpty { lines.append("(no leases)") }
                return ControlResult(value: leases.map { ["address": $0.address.description, "mac": $0.mac.description,
                                                          "hostname": $0.hostName ?? "", "expires_in": Int(clamping: $0.remainingSeconds)] as [String: Any] },
                                     text: lines.joined(separator: "\n"))
            },
            ControlCommand("port-maps", help: "the DNAT port maps in the nft table") { [unowned self] _ in
                ControlResult(value: config.portMaps.map { "\($0)" }, text: config.portMaps.isEmpty ? "(no port maps)" : config.portMaps.map { "\($0)" }.joined(separator: "\n"))
            },
            ControlCommand("stats", help: "DHCP and DNS counters") { [unowned self] _ in
                let c = services.counters
                let v: [String: Any] = ["dhcp_replies": c.dhcpReplies, "dhcp_dropped": c.dhcpDropped, "dns_forwarded": c.dnsForwarded,
                                        "dns_answered": c.dnsAnswered, "dns_dropped": c.dnsDropped,
                                        "dns_failovers": c.dnsFailovers, "dns_tcp_relayed": c.dnsTCPRelayed, "dns_tcp_refused": c.dnsTCPRefused]
                return ControlResult(value: v, text: v.keys.sorted().map { "\($0) \(v[$0]!)" }.joined(separator: "\n"))
            },
        ]
    }
}

extension String {
    /// Left-aligned in `width` columns.
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
