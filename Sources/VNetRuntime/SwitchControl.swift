// `vnet switch` and `vnet nat` on the control plane: their control commands and events.
//
// Theory of Operation
// -------------------
// `SwitchRuntime` is a `ControlTarget` like `UserNetRuntime`: the same socket protocol (ControlServer), other
// commands. `ports` lists every switch port (the gateway's included) with its counters, laid out like
// ifconfig; `mac-table` is the forwarding database; with the gateway (`vnet nat`) there are also `leases`
// (with host names), the local DNS records (`dns-add`/`dns-remove`/`dns-list`, answered before lease names
// and before anything is forwarded) and the port maps. Events: PORT_CONNECTED and PORT_DISCONNECTED as peers
// come and go, LEASE_GRANTED on every DHCP ACK.

import VNetBuffers
import VNetGateway
import VNetHost
import VNetSwitch
import VNetWire

extension SwitchRuntime: ControlTarget {
    func startControl() throws {
        guard let path = options.controlPath else { return }
        control = try ControlServer(path: path, epoll: epoll, listenerTag: EventKind.control.tag(), clientTag: EventKind.controlClient.tag(),
                                    target: self, clientLimit: options.gateway?.controlClientCapacity ?? ControlServer.maximumClients)
    }

    func publishPort(_ i: Int, connected: Bool, description: String, reason: String = "connected") {
        control?.publishPort(name: "port\(i)", index: i, peer: description, connected: connected, reason: reason)
    }

    public var controlCommands: [ControlCommand] {
        var list = [
            ControlCommand("info-network", help: "the switch and its ports") { [unowned self] _ in self.switchInfo() },
            ControlCommand("ports", help: "per-port RX/TX packets, bytes and drops (ifconfig-like)") { [unowned self] _ in self.switchPorts() },
            ControlCommand("mac-table", help: "the learned MAC addresses: VLAN, MAC, port, seconds since seen") { [unowned self] _ in self.macTable() },
            ControlCommand("pcap-start", help: "file=PATH [rotate_bytes=N]: capture every frame entering the switch") { [unowned self] a in
                let file = try a.string("file")
                if self.sandboxed {
                    throw ControlError("--sandbox: pcap-start would create a new file, which the sandbox forbids after start-up; start vnet with --pcap FILE instead")
                }
                var rotate: UInt64? = nil
                if let r = try a.optionalInt("rotate_bytes") {
                    guard r > 0 else { throw ControlError("rotate_bytes must be positive") }
                    rotate = UInt64(r)
                }
                if let p = a.values["port"] as? String, p != "all" { throw ControlError("the switch captures all ports at once (port=all)") }
                pcap?.close()
                do { pcap = try PcapWriter(path: file, rotateBytes: rotate) } catch { throw ControlError("\(error)") }
                return ControlResult(value: ["file": file, "port": "all"], text: "capturing every port to \(file)")
            },
            ControlCommand("pcap-stop", help: "stop the capture") { [unowned self] _ in
                guard let p = pcap else { return ControlResult(value: ["packets": 0], text: "no capture running") }
                p.flush()
                let packets = p.packets, file = p.path
                p.close()
                pcap = nil
                return ControlResult(value: ["file": file, "packets": Int(clamping: packets)], text: "stopped: \(packets) packets in \(file)")
            },
            ControlCommand("stats", help: "every counter, drops by reason") { [unowned self] _ in
                ControlResult(value: self.counterLines, text: self.counterLines.joined(separator: "\n"))
            },
        ]
        if gateway != nil {
            list += [
                ControlCommand("leases", help: "DHCP leases with host names") { [unowned self] _ in self.natLeases() },
                ControlCommand("dns-add", help: "name=NAME [type=A|AAAA|SRV|TXT] value=VALUE [ttl=SECONDS]: answer NAME locally") { [unowned self] a in
                    try self.natDNSAdd(a)
                },
                ControlCommand("dns-remove", help: "name=NAME [type=A|AAAA|SRV|TXT] [value=VALUE]") { [unowned self] a in try self.natDNSRemove(a) },
                ControlCommand("dns-list", help: "local DNS records, then lease host names") { [unowned self] _ in self.natDNSList() },
                ControlCommand("port-maps", help: "the port maps and where each points now") { [unowned self] _ in self.portMapList() },
            ]
        }
        list += TransportCommand.merged(links.compactMap { if case .transport(let t)? = $0?.port.kind { t } else { nil } })
        return list
    }

    var now: Instant { Instant(nanoseconds: Sys.monotonicNanoseconds()) }

    /// A port's name in `info` and `ports`: a transport's own line of its state now (a VXLAN uplink's remotes as
    /// they are after `vxlan-remote-add`), else the name it got when it was added.
    func liveName(_ i: Int, _ p: L2Switch.Port) -> String {
        if let l = links[i], case .transport(let t) = l.port.kind { return t.description }
        return p.name
    }

    func switchInfo() -> ControlResult {
        var lines = [gateway.map { "nat: net=\($0.config.network),gateway=\($0.config.gatewayAddress),ports=\(fabric.portCount)" }
            ?? "switch: ports=\(fabric.portCount),max=\(options.maximumPorts)"]
        var ports: [[String: Any]] = []
        for (i, p) in fabric.ports.enumerated() {
            guard let p else { continue }
            let connected = i == gatewaySwitchPort || (links[i]?.port.isConnected ?? false)
            lines.append(" \\ port\(i): \(liveName(i, p)) (\(p.policy)), \(connected ? "connected" : "disconnected")")
            ports.append(["port": i, "name": liveName(i, p), "vlan": p.policy.description, "connected": connected])
        }
        return ControlResult(value: ["ports": ports], text: lines.joined(separator: "\n"))
    }

    func switchPorts() -> ControlResult {
        var text: [String] = []
        var value: [[String: Any]] = []
        for (i, p) in fabric.ports.enumerated() {
            guard let p else { continue }
            let k = p.counters
            var rxDrop = k.rxDrops
            if let l = links[i] {
                if l.port.isStream { l.port.syncCounters() }
                rxDrop &+= l.port.counters.droppedShort &+ l.port.counters.droppedOversize
            }
            text.append("port\(i): \(liveName(i, p))  \(p.policy)")
            text.append("        RX packets \(k.rxPackets)  bytes \(k.rxBytes) (\(UserNetRuntime.human(k.rxBytes)))  dropped \(rxDrop)")
            text.append("        TX packets \(k.txPackets)  bytes \(k.txBytes) (\(UserNetRuntime.human(k.txBytes)))  dropped \(k.txDrops)")
            value.append(["port": i, "name": liveName(i, p), "vlan": p.policy.description,
                          "rx_packets": Int(clamping: k.rxPackets), "rx_bytes": Int(clamping: k.rxBytes), "rx_dropped": Int(clamping: rxDrop),
                          "tx_packets": Int(clamping: k.txPackets), "tx_bytes": Int(clamping: k.txBytes), "tx_dropped": Int(clamping: k.txDrops)])
        }
        return ControlResult(value: value, text: text.joined(separator: "\n"))
    }

    func macTable() -> ControlResult {
        let t = now
        let rows = fabric.fdb.entries.sorted { ($0.key.vlan, $0.key.mac.rawValue) < ($1.key.vlan, $1.key.mac.rawValue) }
        var lines = ["VLAN  MAC                Port  Seen (s ago)"]
        for (k, e) in rows {
            lines.append(UserNetRuntime.pad(String(k.vlan), 4, left: true) + "  " + k.mac.description + "  "
                         + UserNetRuntime.pad(String(e.port), 4, left: true) + "  " + String((t - e.lastSeen).seconds))
        }
        if rows.isEmpty { lines.append("(empty)") }
        let value: [[String: Any]] = rows.map { ["vlan": Int($0.key.vlan), "mac": $0.key.mac.description, "port": $0.value.port,
                                                 "seen_seconds_ago": Int(clamping: (t - $0.value.lastSeen).seconds)] }
        return ControlResult(value: value, text: lines.joined(separator: "\n"))
    }

    func natLeases() -> ControlResult {
        guard let gw = gateway else { return ControlResult(value: [Any](), text: "(no gateway)") }
        let leases = gw.dhcp.leases(now: now)
        var lines = ["Address          MAC                Host name         Expires in"]
        for l in leases {
            lines.append(UserNetRuntime.pad(l.address.description, 16, left: true) + " " + UserNetRuntime.pad(l.mac.description, 18, left: true)
                         + " " + UserNetRuntime.pad(l.hostName ?? "-", 17, left: true) + " "
                         + (l.remainingSeconds > 0 ? "\(l.remainingSeconds)s" : (l.isStatic ? "static" : "expired")))
        }
        if leases.isEmpty { lines.append("(no leases)") }
        let value: [[String: Any]] = leases.map {
            ["address": $0.address.description, "mac": $0.mac.description, "hostname": $0.hostName ?? "",
             "expires_in": Int(clamping: $0.remainingSeconds), "static": $0.isStatic]
        }
        return ControlResult(value: value, text: lines.joined(separator: "\n"))
    }

    func natDNSAdd(_ a: ControlArguments) throws -> ControlResult {
        guard let gw = gateway else { throw ControlError("no gateway") }
        return try LocalDNSCommands.add(&gw.localDNS, a)
    }

    func natDNSRemove(_ a: ControlArguments) throws -> ControlResult {
        guard let gw = gateway else { throw ControlError("no gateway") }
        return try LocalDNSCommands.remove(&gw.localDNS, a)
    }

    func natDNSList() -> ControlResult {
        guard let gw = gateway else { return ControlResult(value: [Any](), text: "") }
        var (value, lines) = LocalDNSCommands.list(gw.localDNS)
        for (n, a) in publishedNames.sorted(by: { $0.key < $1.key }) {
            lines.append("\(n) 10 IN A \(a) (lease or --host)")
            value.append(["name": n, "type": "A", "value": a.description, "ttl": 10, "source": "lease"])
        }
        return ControlResult(value: value, text: lines.isEmpty ? "(no local DNS names)" : lines.joined(separator: "\n"))
    }

    func portMapList() -> ControlResult {
        let t = now
        var lines: [String] = []
        var value: [[String: Any]] = []
        for (_, m) in portMaps.active {
            let to = resolve(m.rule.target, now: t)
            lines.append("\(m.rule.proto.rawValue) \(m.bound) -> \(m.rule.targetDescription):\(m.rule.guestPort)" + (to.map { " (now \($0))" } ?? " (no such VM now)"))
            value.append(["protocol": m.rule.proto.rawValue, "bound": m.bound, "target": m.rule.targetDescription,
                          "guest_port": Int(m.rule.guestPort), "resolved": to?.description ?? ""])
        }
        return ControlResult(value: value, text: lines.isEmpty ? "(no port maps)" : lines.joined(separator: "\n"))
    }

    // MARK: Metrics

    /// The switch's ports (as port counters), the gateway's counters and flows, for the Prometheus endpoint.
    public func metricsSnapshot() -> MetricsSnapshot {
        var m = MetricsSnapshot()
        for (i, p) in fabric.ports.enumerated() {
            guard let p else { continue }
            var c = PortCounters()
            c.framesIn = p.counters.rxPackets
            c.bytesIn = p.counters.rxBytes
            c.framesOut = p.counters.txPackets
            c.bytesOut = p.counters.txBytes
            if let l = links[i] {
                if l.port.isStream { l.port.syncCounters() }
                c.droppedShort = l.port.counters.droppedShort &+ p.counters.rxDrops
                c.droppedOversize = l.port.counters.droppedOversize
                c.sendErrors = l.port.counters.sendErrors
            } else {
                c.droppedShort = p.counters.rxDrops
            }
            let connected = i == gatewaySwitchPort || (links[i]?.port.isConnected ?? false)
            m.ports.append(("port\(i)", c, connected))
            if let l = links[i], case .transport(let t) = l.port.kind { m.transports.append(("port\(i)", t.typeName, t.extraCounters, t.peers)) }
        }
        let sc = fabric.counters
        m.drops = SwitchDropReason.allCases.map { ("switch_" + $0.name, sc[$0]) }
        if let gw = gateway { m.addGateway(gw, now: now) }
        m.controlClients = control?.clientCount ?? 0
        m.pcapPackets = pcap?.packets ?? 0
        return m
    }
}
