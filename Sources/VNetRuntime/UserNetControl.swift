// `vnet user` on the control plane: its control commands, events, packet capture and metrics.
//
// Theory of Operation
// -------------------
// `UserNetRuntime` is a `ControlTarget`: this file lists its commands (what `vnet ctl` drives) and renders
// their results twice, as structured values and as QEMU-like text. It also starts and stops the optional
// observers on the runtime's loop: the control socket (`--control`), the capture (`--pcap`, or `pcap-start`
// at run time) and the Prometheus endpoint (`--metrics`). Nothing here is on the data path except the two
// capture hooks (a nil check per frame when no capture runs).

import CVNetShim
import VNetBuffers
import VNetGateway
import VNetHost
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

extension UserNetRuntime: ControlTarget {
    static let portName = "guest0"

    // MARK: Start and stop

    func startObservability() throws {
        if let path = options.pcapPath { try startCapture(path: path, rotateBytes: options.pcapRotateBytes) }
        if let m = options.metrics {
            metricsEndpoint = try MetricsEndpoint.serving(m, epoll: epoll, metrics: metrics) { [unowned self] in self.metricsSnapshot() }
        }
        if let path = options.controlPath {
            control = try ControlServer(path: path, epoll: epoll, listenerTag: EventKind.control.tag(),
                                        clientTag: EventKind.controlClient.tag(), target: self,
                                        clientLimit: options.gateway.controlClientCapacity)
        }
        port.stateObserver = { [unowned self] connected, detail in
            self.control?.publishPort(name: UserNetRuntime.portName, index: 0, peer: self.port.peer?.description ?? self.port.boundDescription,
                                      connected: connected, reason: detail)
        }
        gateway.leaseObserver = { [unowned self] address, mac in
            self.control?.publish("LEASE_GRANTED", data: ["address": address.description, "mac": mac.description,
                                                          "port": UserNetRuntime.portName])
        }
    }

    func stopObservability() {
        stopCapture()
        control = nil
        metricsEndpoint = nil
    }

    func startCapture(path: String, rotateBytes: UInt64?) throws {
        stopCapture()
        let writer = try PcapWriter(path: path, rotateBytes: rotateBytes)
        pcap = writer
        gateway.toGuest.observer = writer
    }

    func stopCapture() {
        gateway.toGuest.observer = nil
        pcap?.close()
        pcap = nil
    }

    // MARK: Commands

    public var controlCommands: [ControlCommand] {
        [
            ControlCommand("info-network", help: "the network and its port, as QEMU's 'info network'") { [unowned self] _ in self.infoNetwork() },
            ControlCommand("info-usernet", help: "forwards and flows, as QEMU's 'info usernet'") { [unowned self] _ in self.infoUsernet() },
            ControlCommand("ports", help: "per-port RX/TX packets, bytes, errors and drops (ifconfig-like)") { [unowned self] _ in self.portsReport() },
            ControlCommand("leases", help: "DHCP leases") { [unowned self] _ in self.leasesReport() },
            ControlCommand("hostfwd_add", help: "rule=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport or unix:PATH-[guestaddr]:guestport [mode=0600] [netdev=ID]") { [unowned self] a in
                try self.hostfwdAdd(a)
            },
            ControlCommand("hostfwd_remove", help: "rule=[tcp|udp]:[hostaddr]:hostport or unix:PATH [netdev=ID]") { [unowned self] a in try self.hostfwdRemove(a) },
            ControlCommand("hostfwd_list", help: "the host forwards in force") { [unowned self] _ in self.hostfwdList() },
            ControlCommand("dns-add", help: "name=NAME [type=A|AAAA|SRV|TXT] value=VALUE [ttl=SECONDS]: answer NAME locally") { [unowned self] a in
                try self.dnsAdd(a)
            },
            ControlCommand("dns-remove", help: "name=NAME [type=A|AAAA|SRV|TXT] [value=VALUE]") { [unowned self] a in try self.dnsRemove(a) },
            ControlCommand("dns-list", help: "the local DNS records") { [unowned self] _ in self.dnsList() },
            ControlCommand("pcap-start", help: "file=PATH [port=guest0] [rotate_bytes=N]: capture the port's frames") { [unowned self] a in
                try self.pcapStart(a)
            },
            ControlCommand("pcap-stop", help: "stop the capture") { [unowned self] _ in self.pcapStop() },
            ControlCommand("stats", help: "all counters, drops by reason, flow counts") { [unowned self] _ in self.statsReport() },
        ] + TransportCommand.merged(port.transport.map { [$0] } ?? [])
    }

    /// Where the metrics endpoint listens, when it does.
    public var metricsAddress: String? { metricsEndpoint?.boundAddress }

    var netdevName: String { options.gateway.id ?? "user" }

    var portType: String {
        switch port.kind {
        case .streamListener, .streamConnector: "stream"
        case .datagram: "dgram"
        case .tap: "tap"
        case .transport(let t): t.typeName
        }
    }

    var guestMAC: MACAddress? {
        gateway.leases(now: Instant(nanoseconds: Sys.monotonicNanoseconds())).first { $0.state == "bound" }?.mac
    }

    func infoNetwork() -> ControlResult {
        let c = options.gateway
        let userInfo = "net=\(c.network.address),restrict=\(c.restricted ? "on" : "off")"
        var peerInfo = "\(port.boundDescription),\(port.isConnected ? "connected" : "disconnected")"
        if let mac = guestMAC { peerInfo += ",macaddr=\(mac)" }
        var text = "\(netdevName): index=0,type=user,\(userInfo)\n \\ \(UserNetRuntime.portName): index=0,type=\(portType),\(peerInfo)"
        var value: [String: Any] = ["netdevs": [[
            "name": netdevName, "index": 0, "type": "user", "info": userInfo,
            "peers": [["name": UserNetRuntime.portName, "index": 0, "type": portType, "info": peerInfo, "connected": port.isConnected]],
        ] as [String: Any]]]
        // `vnet run`: the NIC as QEMU's own `info network` names it (MODEL.0), with the MAC seen on the wire.
        if let model = options.nicModel {
            let nicInfo = "model=\(model)" + (guestMAC.map { ",macaddr=\($0)" } ?? "")
            text += "\n\(model).0: index=0,type=nic,\(nicInfo)"
            value["nics"] = [["name": "\(model).0", "index": 0, "type": "nic", "info": nicInfo]]
        }
        return ControlResult(value: value, text: text)
    }

    static func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
        guard s.count < width else { return s }
        let fill = String(repeating: " ", count: width - s.count)
        return left ? s + fill : fill + s
    }

    /// One row in libslirp's layout: "%-19s %3d %15s %5d %15s %5d %5d %5d".
    static func usernetRow(_ label: String, fd: Int32, source: String, sourcePort: String, destination: String, destinationPort: String,
                           recvQ: Int, sendQ: Int) -> String {
        pad(label, 19, left: true) + " " + pad(String(fd), 3) + " " + pad(source, 15) + " " + pad(sourcePort, 5) + " "
            + pad(destination, 15) + " " + pad(destinationPort, 5) + " " + pad(String(recvQ), 5) + " " + pad(String(sendQ), 5)
    }

    func infoUsernet() -> ControlResult {
        var lines = ["Hub -1 (\(netdevName)):", "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ"]
        var rows: [[String: Any]] = []
        for (_, f) in forwards.active {
            let src = f.rule.hostAddress.isUnspecified ? "*" : f.rule.hostAddress.description
            let boundPort = f.bound.split(separator: ":").last.map(String.init) ?? String(f.rule.hostPort)
            let label = "  \(f.rule.proto.rawValue.uppercased())[HOST_FORWARD]"
            lines.append(UserNetRuntime.usernetRow(label, fd: f.fd, source: src, sourcePort: boundPort, destination: f.rule.target.plainDescription,
                                                   destinationPort: String(f.rule.guestPort), recvQ: 0, sendQ: 0))
            rows.append(["protocol": f.rule.proto.rawValue, "state": "HOST_FORWARD", "fd": Int(f.fd), "host_address": src,
                         "host_port": Int(boundPort) ?? Int(f.rule.hostPort), "guest_address": f.rule.target.plainDescription,
                         "guest_port": Int(f.rule.guestPort), "recv_q": 0, "send_q": 0])
        }
        for f in gateway.flows(now: Instant(nanoseconds: Sys.monotonicNanoseconds())) {
            let recvQ = max(0, Int(vnet_inq(f.hostHandle)))
            let sendQ = f.proto == .tcp ? max(0, Int(vnet_outq(f.hostHandle))) : 0
            let state = f.state ?? "\(f.expiresIn ?? 0) sec"
            let ports = f.proto == .icmp ? ("-", "-") : (String(f.guestPort), String(f.remotePort))
            lines.append(UserNetRuntime.usernetRow("  \(f.proto.rawValue)[\(state)]", fd: f.hostHandle, source: f.guestAddress.description,
                                                   sourcePort: ports.0, destination: f.remoteAddress.description, destinationPort: ports.1,
                                                   recvQ: recvQ, sendQ: sendQ))
            var row: [String: Any] = ["protocol": f.proto.rawValue.lowercased(), "fd": Int(f.hostHandle),
                                      "guest_address": f.guestAddress.description, "guest_port": Int(f.guestPort),
                                      "host_address": f.remoteAddress.description, "host_port": Int(f.remotePort),
                                      "recv_q": recvQ, "send_q": sendQ, "unacked_to_guest": f.unacknowledgedToGuest,
                                      "from_forward": f.fromForward]
            if let s = f.state { row["state"] = s }
            if let e = f.expiresIn { row["expires_in"] = e }
            rows.append(row)
        }
        return ControlResult(value: ["netdev": netdevName, "flows": rows], text: lines.joined(separator: "\n"))
    }

    var portCounters: PortCounters { port.currentCounters }

    static func human(_ bytes: UInt64) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var v = Double(bytes), i = 0
        while v >= 1000 && i < units.count - 1 { v /= 1000; i += 1 }
        return i == 0 ? "\(bytes) B" : String(format1: v) + " " + units[i]
    }

    func portsReport() -> ControlResult {
        let p = port.currentCounters
        let rxDropped = p.droppedShort &+ p.droppedOversize
        let txDropped = gateway.toGuest.refused
        var text = "\(UserNetRuntime.portName): \(portType) \(port.boundDescription)  \(port.isConnected ? "connected" : "disconnected")\n"
        if let mac = guestMAC { text += "        ether \(mac)  (guest)\n" }
        text += "        RX packets \(p.framesIn)  bytes \(p.bytesIn) (\(UserNetRuntime.human(p.bytesIn)))\n"
        text += "        RX errors \(p.desyncResets)  dropped \(rxDropped)\n"
        text += "        TX packets \(p.framesOut)  bytes \(p.bytesOut) (\(UserNetRuntime.human(p.bytesOut)))\n"
        text += "        TX errors \(p.sendErrors)  dropped \(txDropped)"
        let value: [[String: Any]] = [[
            "name": UserNetRuntime.portName, "type": portType, "address": port.boundDescription, "connected": port.isConnected,
            "rx_packets": Int(clamping: p.framesIn), "rx_bytes": Int(clamping: p.bytesIn), "rx_errors": Int(clamping: p.desyncResets),
            "rx_dropped": Int(clamping: rxDropped), "tx_packets": Int(clamping: p.framesOut), "tx_bytes": Int(clamping: p.bytesOut),
            "tx_errors": Int(clamping: p.sendErrors), "tx_dropped": Int(clamping: txDropped),
            "connections": Int(clamping: p.connections), "rejected_connections": Int(clamping: p.rejectedConnections),
        ]]
        return ControlResult(value: value, text: text)
    }

    func leasesReport() -> ControlResult {
        let leases = gateway.leases(now: Instant(nanoseconds: Sys.monotonicNanoseconds()))
        var lines = ["Address          MAC                State     Expires in"]
        for l in leases {
            lines.append(UserNetRuntime.pad(l.address.description, 16, left: true) + " " + UserNetRuntime.pad(l.mac.description, 18, left: true)
                         + " " + UserNetRuntime.pad(l.state, 9, left: true) + " \(l.expiresIn)s")
        }
        if leases.isEmpty { lines.append("(no leases)") }
        let value: [[String: Any]] = leases.map {
            ["address": $0.address.description, "mac": $0.mac.description, "state": $0.state, "expires_in": $0.expiresIn]
        }
        return ControlResult(value: value, text: lines.joined(separator: "\n"))
    }

    func checkNetdev(_ a: ControlArguments) throws {
        if let id = try a.optionalString("netdev"), id != netdevName {
            throw ControlError("no netdev '\(id)' (this network is '\(netdevName)')")
        }
    }

    func forwardDescription(_ f: ActiveForward) -> String {
        "\(f.rule.proto.rawValue) \(f.bound) -> \(f.rule.targetDescription):\(f.rule.guestPort)"
    }

    func forwardValue(_ f: ActiveForward) -> [String: Any] {
        ["protocol": f.rule.proto.rawValue, "host_address": f.rule.hostAddress.description, "host_port": Int(f.rule.hostPort),
         "bound": f.bound, "guest_address": f.rule.target.plainDescription, "guest_port": Int(f.rule.guestPort)]
            .merging(f.rule.unixPath.map { ["unix_path": $0] } ?? [:]) { a, _ in a }
    }

    func hostfwdAdd(_ a: ControlArguments) throws -> ControlResult {
        try checkNetdev(a)
        let text = try a.string("rule")
        var rule: HostForward
        do { rule = try UserNetOptions.parseHostForwardRule(text, config: options.gateway) } catch { throw ControlError(error.message) }
        if rule.unixPath != nil { rule = try unixForwardRule(rule, a) }
        if rule.unixPath == nil, forwards.clashes(with: rule) {
            throw ControlError("\(rule.proto.rawValue) port \(rule.hostPort) is already forwarded")
        }
        if sandboxed, rule.hostPort != 0, Int(rule.hostPort) < sandboxPortStart {
            throw ControlError("--sandbox: port \(rule.hostPort) is below \(sandboxPortStart) (net.ipv4.ip_unprivileged_port_start) and the sandbox dropped CAP_NET_BIND_SERVICE; use a higher port, or give the rule as hostfwd= at start")
        }
        let slot: Int
        do { slot = try openForward(rule) } catch { throw ControlError("could not set up host forwarding rule '\(text)': \(error)") }
        let f = forwards[slot]!
        logger.info("hostfwd added: \(forwardDescription(f))")
        return ControlResult(value: forwardValue(f), text: "hostfwd \(forwardDescription(f))")
    }

    func hostfwdRemove(_ a: ControlArguments) throws -> ControlResult {
        try checkNetdev(a)
        let text = try a.string("rule")
        if text.hasPrefix("unix:") { return try unixForwardRemove(String(text.dropFirst(5))) }
        let key: (ForwardProtocol, IPAddress, UInt16)
        do { key = try UserNetOptions.parseHostForwardKey(text) } catch { throw ControlError(error.message) }
        guard let slot = forwards.entries.firstIndex(where: { f in
            guard let f else { return false }
            let boundPort = UInt16(f.bound.split(separator: ":").last ?? "") ?? f.rule.hostPort
            return f.rule.proto == key.0 && f.rule.hostAddress == key.1 && (f.rule.hostPort == key.2 || boundPort == key.2)
        }) else { throw ControlError("host forwarding rule for \(text) not found") }
        let f = forwards[slot]!
        forwards.close(slot, gateway: gateway)
        logger.info("hostfwd removed: \(forwardDescription(f))")
        return ControlResult(value: forwardValue(f), text: "removed hostfwd \(forwardDescription(f))")
    }

    func hostfwdList() -> ControlResult {
        let active = forwards.active.map(\.entry)
        let text = active.isEmpty ? "(no host forwards)" : active.map { "hostfwd \(forwardDescription($0))" }.joined(separator: "\n")
        return ControlResult(value: active.map(forwardValue), text: text)
    }

    func dnsAdd(_ a: ControlArguments) throws -> ControlResult { try LocalDNSCommands.add(&gateway.localDNS, a) }

    func dnsRemove(_ a: ControlArguments) throws -> ControlResult { try LocalDNSCommands.remove(&gateway.localDNS, a) }

    func dnsList() -> ControlResult {
        let (value, lines) = LocalDNSCommands.list(gateway.localDNS)
        return ControlResult(value: value, text: lines.isEmpty ? "(no local DNS records)" : lines.joined(separator: "\n"))
    }

    func pcapStart(_ a: ControlArguments) throws -> ControlResult {
        let file = try a.string("file")
        if sandboxed {
            throw ControlError("--sandbox: pcap-start would create a new file, which the sandbox forbids after start-up; start vnet with --pcap FILE instead")
        }
        if let p = try a.optionalString("port"), p != UserNetRuntime.portName, p != "0" {
            throw ControlError("no port '\(p)' (this network has one: \(UserNetRuntime.portName))")
        }
        var rotate: UInt64? = nil
        if let r = try a.optionalInt("rotate_bytes") {
            guard r > 0 else { throw ControlError("rotate_bytes must be positive") }
            rotate = UInt64(r)
        }
        do { try startCapture(path: file, rotateBytes: rotate) } catch { throw ControlError("\(error)") }
        return ControlResult(value: ["file": file, "port": UserNetRuntime.portName], text: "capturing \(UserNetRuntime.portName) to \(file)")
    }

    func pcapStop() -> ControlResult {
        guard let p = pcap else { return ControlResult(value: ["packets": 0], text: "no capture running") }
        p.flush()
        let packets = p.packets, file = p.path
        stopCapture()
        return ControlResult(value: ["file": file, "packets": Int(clamping: packets)], text: "stopped: \(packets) packets in \(file)")
    }

    func statsReport() -> ControlResult {
        let c = gateway.counters
        var served: [String: Any] = [:], drops: [String: Any] = [:]
        for s in ServedCounter.allCases { served[s.name] = Int(clamping: c[s]) }
        for d in DropReason.allCases { drops[d.name] = Int(clamping: c[d]) }
        let p = port.currentCounters
        drops["port_frame_too_short"] = Int(clamping: p.droppedShort)
        drops["port_frame_too_long"] = Int(clamping: p.droppedOversize)
        drops["port_send_error"] = Int(clamping: p.sendErrors)
        drops["tx_queue_refused"] = Int(clamping: gateway.toGuest.refused)
        let flows = ["tcp": gateway.tcpFlowCount, "udp": gateway.udpFlowCount, "icmp": gateway.icmpFlowCount]
        var lines = ["flows: tcp \(flows["tcp"]!)  udp \(flows["udp"]!)  icmp \(flows["icmp"]!)"]
        lines += counterLines
        let totalDrops = drops.values.reduce(0) { $0 + ($1 as! Int) }
        lines.append("drops total \(totalDrops)")
        return ControlResult(value: ["served": served, "drops": drops, "flows": flows, "drops_total": totalDrops], text: lines.joined(separator: "\n"))
    }

    // MARK: Metrics

    public func metricsSnapshot() -> MetricsSnapshot {
        var s = MetricsSnapshot()
        let p = port.currentCounters
        s.drops = [("port_frame_too_short", p.droppedShort), ("port_frame_too_long", p.droppedOversize),
                   ("port_send_error", p.sendErrors), ("tx_queue_refused", gateway.toGuest.refused)]
        s.addGateway(gateway, now: Instant(nanoseconds: Sys.monotonicNanoseconds()))
        s.ports = [(UserNetRuntime.portName, p, port.isConnected)]
        if case .transport(let t) = port.kind { s.transports = [(UserNetRuntime.portName, t.typeName, t.extraCounters, t.peers)] }
        s.controlClients = control?.clientCount ?? 0
        s.pcapPackets = pcap?.packets ?? 0
        return s
    }
}

extension String {
    /// One decimal place, without Foundation's formatter.
    init(format1 v: Double) {
        let tenths = Int((v * 10).rounded())
        self = "\(tenths / 10).\(tenths % 10)"
    }
}
