// `vnet switch` and `vnet nat`: many peers on one learning switch, optionally with the built-in gateway.
//
// Theory of Operation
// -------------------
// Runs on the one `EventLoop` (VNetHost), as `UserNetRuntime` does. Every peer is a `Link`: a `GuestPort`
// (stream connection, stream connector, datagram peer, multicast group or TAP) plus the switch port it feeds
// and the output `FrameQueue` the switch fills for it. Tags come from the one registry (`EventKind`): the
// index names a link, listener, hub or group; gateway flow sockets keep the gateway's own `FlowTag`s.
//   - in: a readable link's frames go to `L2Switch.receive`, which copies each into the queues of the ports it
//     goes out of, or hands it to the gateway (the switch's local sink) synchronously;
//   - out: after every batch, frames the gateway queued are moved into the switch, but only while the port a
//     unicast frame is for has room, so a slow VM pushes back on the gateway's TCP flows instead of losing
//     their segments; then every link's queue is flushed to its peer.
// Stream listeners and datagram hubs make a port per peer up to the switch's port limit (a peer beyond it is
// refused and counted); a peer that leaves is removed and its MACs forgotten. Connectors and multicast
// groups hold their port for life; a reconnect forgets the port's MACs. Multicast echo: vnet sends to the group
// from a second socket, so its own datagrams (looped back to every local member) are recognised by source
// port and dropped. `vnet nat` also keeps DHCP leases in a state file (written atomically on change), and
// publishes lease host names to the gateway's DNS.

import CVNetShim
import Logging
import VNetBuffers
import VNetGateway
import VNetHost
import VNetServices
import VNetSwitch
import VNetTransport
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public final class SwitchRuntime {
    final class Link {
        let port: GuestPort
        let queue: FrameQueue
        var switchPort: Int
        let description: String
        /// Set for datagram-hub peers: the hub they belong to (they share its fd).
        let hub: Int?
        init(port: GuestPort, queue: FrameQueue, switchPort: Int, description: String, hub: Int? = nil) {
            self.port = port
            self.queue = queue
            self.switchPort = switchPort
            self.description = description
            self.hub = hub
        }
    }

    struct Listener {
        let fd: Int32
        let policy: VLANPolicy
        let description: String
    }

    struct Hub {
        let fd: Int32
        let policy: VLANPolicy
        let description: String
        /// vfkit framing: a peer's 4-byte "VFKT" datagram announces it (and is not a frame).
        var vfkit = false
        var peers: [(address: SocketAddress, link: Int)] = []
    }

    struct MulticastGroup {
        let receiveFD: Int32
        let link: Int
        /// The port of vnet's sending socket: datagrams from it are vnet's own, looped back.
        let ownSourcePort: UInt16
    }

    public internal(set) var options: SwitchOptions
    let logger: Logger
    let loop: EventLoop
    var epoll: Epoll { loop.epoll }
    public let fabric: L2Switch
    let host: RealHost?
    public let gateway: Gateway<RealHost>?
    var gatewaySwitchPort = -1
    var links: [Link?]
    var listeners: [Listener] = []
    var hubs: [Hub] = []
    var groups: [MulticastGroup] = []
    /// Port maps with their listening sockets.
    let portMaps: ForwardListeners
    /// Work posted from other threads (the library API), run on the loop's thread.
    public let commands: SwitchCommandQueue
    /// Told about lease changes on the loop's thread (the library's lease events).
    public var leaseEventSink: ((LeaseChange) -> Void)?
    var reportedLeases: [MACAddress: DHCPLease] = [:]
    let resolvWatcher: ResolvConfWatcher?
    var limitReporter = LimitReporter()
    /// Set once `--sandbox` took effect.
    public private(set) var sandboxed = false
    var pathsToRemove: [String] = []
    let receiveBuffer: UnsafeMutableRawBufferPointer
    var lastExpiry: UInt64 = 0
    var savedGeneration: UInt64 = 0
    var publishedNames: [String: IPv4Address] = [:]
    public private(set) var refusedPeers: UInt64 = 0
    var control: ControlServer?
    /// A capture of every frame entering the switch, from any port (`--pcap`, or `pcap-start` at run time).
    var pcap: PcapWriter?
    var metricsEndpoint: MetricsEndpoint?
    let metrics = RuntimeMetrics()
    /// Where the metrics endpoint listens, when it does.
    public var metricsAddress: String? { metricsEndpoint?.boundAddress }
    public private(set) var startupLines: [String] = []
    static let linkQueueCapacity = 1 << 20

    public init(options: SwitchOptions, logger: Logger) throws {
        self.options = options
        self.logger = logger
        if options.sandbox, let leases = options.leasesFile {
            throw RuntimeError("--sandbox: vnet nat writes its lease file (\(leases)) while running, which the sandbox forbids; --sandbox covers vnet user and vnet switch")
        }
        // TAPs first: opening them switches this thread's netns while no other socket exists.
        var tapFDs: [Int: Int32] = [:]
        for (i, spec) in options.ports.enumerated() {
            if case .tap(let ns, let name) = spec.endpoint {
                tapFDs[i] = try Sys.openTap(inNamespace: ns, name: name, mtu: options.mtu, offload: options.tapOffload)
            }
        }
        loop = try EventLoop(signals: !options.handleSignals ? .none : options.stopSignalsElsewhere ? .auxiliary : .all)
        portMaps = ForwardListeners(epoll: loop.epoll)
        fabric = L2Switch(maximumPorts: options.maximumPorts, fdbCapacity: options.fdbCapacity, macQuotaPerPort: options.macQuotaPerPort,
                          ageingTime: .seconds(options.ageingSeconds), mtu: options.mtu)
        links = Array(repeating: nil, count: options.maximumPorts)
        receiveBuffer = .allocate(byteCount: FrameLimits.qemuMaximumFrame + 1, alignment: 16)
        // With an offload port the gateway takes and makes super-segments and partial checksums; the switch
        // finishes them in software for the ports without offload.
        let offloads = options.tapOffload && options.ports.contains { if case .tap = $0.endpoint { true } else { false } }
        fabric.localTakesOffloads = offloads
        if var g = options.gateway {
            g.guestOffloads = offloads
            g.mtu = options.mtu
            let h = RealHost(epoll: loop.epoll)
            host = h
            let gw = Gateway(config: g, host: h)
            // Every read of a port ends with flushGuestSends (readLink, readHub, readMulticast).
            gw.gathersGuestDatagrams = true
            gateway = gw
        } else {
            host = nil
            gateway = nil
        }
        resolvWatcher = options.gateway != nil && options.dnsUpstream == nil ? ResolvConfWatcher(path: options.resolvConfPath) : nil
        commands = try SwitchCommandQueue()
        try loop.add(commands.fd, events: Epoll.readable, kind: .command)
        if let gw = gateway {
            if let up = options.dnsUpstream {
                guard let a = IPAddress(text: up.address) else { throw RuntimeError("--dns-upstream: '\(up.address)' is not an IP address") }
                gw.setDNSUpstreams([(a, up.port)])
            }
            guard let p = fabric.addPort(name: "gateway", policy: .access(options.gatewayVLAN), sink: .local) else {
                throw RuntimeError("no switch port left for the gateway")
            }
            gatewaySwitchPort = p
            for r in options.dnsRecords {
                do { try gw.localDNS.add(name: r.name, type: r.type, value: r.value) } catch { throw RuntimeError("--dns-record \(r.name): \(error)") }
            }
            try loadLeases()
            gw.leaseObserver = { [unowned self] address, mac in self.leaseGranted(address: address, mac: mac) }
        }
        for (i, spec) in options.ports.enumerated() {
            try open(spec, tapFD: tapFDs[i])
        }
        try openPortMaps()
        if let p = options.pcapPath { pcap = try PcapWriter(path: p, rotateBytes: nil) }
        try startControl()
        if let m = options.metrics {
            metricsEndpoint = try MetricsEndpoint.serving(m, epoll: epoll, metrics: metrics) { [unowned self] in self.metricsSnapshot() }
        }
    }

    deinit {
        for p in pathsToRemove { Sys.unlink(p) }
        for case let l? in links where l.hub == nil && l.port.fd >= 0 { Sys.close(l.port.fd) }
        for case let l? in links { if case .transport(let t) = l.port.kind { t.close() } }
        for l in listeners { Sys.close(l.fd) }
        for h in hubs { Sys.close(h.fd) }
        receiveBuffer.deallocate()
    }

    // MARK: Set-up

    func open(_ spec: SwitchPortSpec, tapFD: Int32?) throws {
        let mtu = options.mtu
        switch spec.endpoint {
        case .unixListen(let path):
            let fd = try Sys.listenUnix(path: path)
            pathsToRemove.append(path)
            try addListener(fd, spec)
        case .tcpListen(let h, let p):
            let (fd, description) = try Endpoints.listenTCP(host: h, port: p)
            try addListener(fd, spec, description: description)
        case .connectUnix(let path):
            let gp = GuestPort(kind: .streamConnector(address: try Endpoints.connectAddress(unixPath: path)), epoll: epoll, mtu: mtu, logger: logger)
            _ = try addLink(gp, spec.vlan, spec.endpoint.description)
        case .connectTCP(let h, let p):
            let gp = GuestPort(kind: .streamConnector(address: try Endpoints.connectAddress(host: h, port: p)), epoll: epoll, mtu: mtu, logger: logger)
            _ = try addLink(gp, spec.vlan, spec.endpoint.description)
        case .dgramUnix(let path), .vfkitUnix(let path):
            let vfkit = if case .vfkitUnix = spec.endpoint { true } else { false }
            let fd = try Endpoints.bindDatagram(unixPath: path, flag: vfkit ? "--vfkit" : "--dgram")
            pathsToRemove.append(path)
            try addHub(fd, spec)
        case .dgramUDP(let h, let p):
            let (fd, description) = try Endpoints.bindDatagram(host: h, port: p)
            try addHub(fd, spec, description: description)
        case .mcast(let g, let p, let l):
            try openMulticast(group: g, port: p, localAddress: l, spec)
        case .tap(let ns, let name):
            guard let fd = tapFD else { throw RuntimeError("--tap \(name): not opened") }
            let gp = GuestPort(kind: .tap(virtioHeader: options.tapOffload), epoll: epoll, mtu: mtu, logger: logger)
            gp.fd = fd
            let i = try addLink(gp, spec.vlan, "tap \(name) in netns \(ns)" + (options.tapOffload ? " (offload)" : ""))
            try epoll.add(fd, events: Epoll.readable, tag: EventKind.port.tag(i))
            // A TAP takes one write per frame anyway: while nothing waits in its queue, the switch writes each
            // frame straight from where it is (the gateway's queue, a reader's buffer), without a copy.
            fabric.setDirectWriter(port: i) { [unowned gp] header, frame in
                guard !gp.writeArmed, gp.fd >= 0 else { return false }
                switch Sys.writeTwo(gp.fd, header, frame) {
                case .done:
                    gp.counters.framesOut &+= 1
                    gp.counters.bytesOut &+= UInt64(frame.count)
                case .wouldBlock: return false
                default: gp.counters.sendErrors &+= 1   // dropped, as a queued frame would be
                }
                return true
            }
        case .transport(let plugged):
            _ = try addTransport(plugged.factory, policy: spec.vlan)
        }
    }

    /// Opens a transport with a protocol of its own as one switch port (PortTransport.swift); returns its slot.
    /// The library attaches at run time through this too.
    @discardableResult
    public func addTransport(_ factory: any PortTransportFactory, policy: VLANPolicy) throws -> Int {
        let t = try factory.make(logger: logger)
        let gp = GuestPort(kind: .transport(t), epoll: epoll, mtu: options.mtu, logger: logger)
        let i = try addLink(gp, policy, factory.description, carriesOffloads: factory.carriesOffloads)
        guard let l = links[i] else { throw RuntimeError("port \(i) vanished") }
        let context = PortContext(queue: l.queue, mtu: options.mtu, logger: logger, epoll: epoll, slot: i, deliver: { [unowned self] frame, offload in
            let now = Instant(nanoseconds: Sys.monotonicNanoseconds())
            self.pcap?.record(frame)
            self.fabric.receive(from: l.switchPort, frame: frame, offload: offload, now: now) { self.deliverLocal($0, $1, held: t.holdsFrames, now: now) }
        }, endBatch: { [unowned self] in self.flushGatewaySends() }, peerNews: { [unowned self] connected, peer, reason in
            if !connected || self.fabric.macs(of: l.switchPort).count > 0 { self.guestsDeparted(l, reason: reason) }
            self.publishPort(i, connected: connected, description: "\(l.description) peer \(peer)", reason: reason)
        }, tooBig: { [unowned self] frame, mtu in self.gateway?.answerFrameTooBig(frame, mtu: mtu) })
        do { try t.start(context) } catch {
            removeLink(i, reason: "failed to start")
            throw error
        }
        return i
    }

    func addListener(_ fd: Int32, _ spec: SwitchPortSpec, description: String? = nil) throws {
        let i = listeners.count
        listeners.append(Listener(fd: fd, policy: spec.vlan, description: description ?? spec.endpoint.description))
        try epoll.add(fd, events: Epoll.readable, tag: EventKind.portListener.tag(i))
    }

    func addHub(_ fd: Int32, _ spec: SwitchPortSpec, description: String? = nil) throws {
        let i = hubs.count
        var hub = Hub(fd: fd, policy: spec.vlan, description: description ?? spec.endpoint.description)
        if case .vfkitUnix = spec.endpoint { hub.vfkit = true }
        hubs.append(hub)
        try epoll.add(fd, events: Epoll.readable, tag: EventKind.datagramHub.tag(i))
    }

    /// A link holds a switch port and an output queue; nil when the switch is full.
    func addLink(_ port: GuestPort, _ policy: VLANPolicy, _ description: String, hub: Int? = nil, carriesOffloads: Bool = false) throws -> Int {
        var offloads = carriesOffloads
        if case .tap(let virtioHeader) = port.kind { offloads = virtioHeader }
        let queue = FrameQueue(capacity: SwitchRuntime.linkQueueCapacity, frameHeaderLength: offloads ? VirtioNetHeader.length : 0)
        guard let sp = fabric.addPort(name: description, policy: policy, sink: .queue(queue)) else {
            refusedPeers &+= 1
            throw RuntimeError("the switch is full (\(options.maximumPorts) ports)")
        }
        links[sp] = Link(port: port, queue: queue, switchPort: sp, description: description, hub: hub)
        port.boundDescription = description
        port.ioTag = hub.map { EventKind.datagramHub.tag($0) } ?? EventKind.port.tag(sp)
        return sp
    }

    /// The peer of a port went away: the guests learned behind it are gone, and so are their NAT flows (TCP
    /// host peers see RST, as with `vnet user`'s one guest), counted as `flows_closed_guest_gone`; then the port
    /// forgets their MACs. A guest whose MAC aged out of the table before (idle longer than the ageing time)
    /// keeps its flows until they time out.
    func guestsDeparted(_ l: Link, reason: String) {
        let macs = fabric.macs(of: l.switchPort)
        if let gw = gateway, !macs.isEmpty {
            let n = gw.closeFlows(ofGuests: Set(macs))
            if n > 0 { logger.info("port \(l.description): \(reason); closed \(n) flows of \(macs.map(\.description).joined(separator: ", "))") }
        }
        fabric.forgetMACs(of: l.switchPort)
    }

    func removeLink(_ i: Int, reason: String) {
        guard let l = links[i] else { return }
        if l.hub == nil, l.port.fd >= 0 {
            epoll.remove(l.port.fd)
            Sys.close(l.port.fd)
            l.port.fd = -1
        }
        if let h = l.hub { hubs[h].peers.removeAll { $0.link == i } }
        if case .transport(let t) = l.port.kind { t.close() }
        guestsDeparted(l, reason: reason)
        fabric.removePort(l.switchPort)
        links[i] = nil
        logger.info("port \(i) (\(l.description)) left: \(reason)")
        publishPort(i, connected: false, description: l.description, reason: reason)
    }

    func openMulticast(group: String, port: UInt16, localAddress: String, _ spec: SwitchPortSpec) throws {
        guard let g = IPv4Address(group), g.isMulticast else { throw RuntimeError("--mcast: '\(group)' is not an IPv4 multicast group") }
        guard let l = IPv4Address(localAddress) else { throw RuntimeError("--mcast: localaddr '\(localAddress)' is not an IPv4 address") }
        let rfd = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try Sys.setOption(rfd, SOL_SOCKET, SO_REUSEADDR, 1)
        try Sys.bind(rfd, SocketAddress(ipv4: g.rawValue, port: port))
        do { try Sys.joinMulticast(rfd, group: g.rawValue, local: l.rawValue) } catch {
            throw RuntimeError("--mcast \(group): joining the group on \(localAddress): \(Sys.errnoString(error.errno))")
        }
        let sfd = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        do { try Sys.sendMulticast(sfd, from: l.rawValue) } catch {
            throw RuntimeError("--mcast \(group): sending socket on \(localAddress): \(Sys.errnoString(error.errno))")
        }
        try Sys.bind(sfd, SocketAddress(ipv4: l.rawValue, port: 0))
        let own = Sys.localAddress(sfd)?.ipv4?.port ?? 0
        let gp = GuestPort(kind: .datagram(peer: SocketAddress(ipv4: g.rawValue, port: port)), epoll: epoll, mtu: options.mtu, logger: logger)
        gp.fd = sfd
        let i = try addLink(gp, spec.vlan, "mcast \(group):\(port) localaddr \(localAddress)")
        try epoll.add(sfd, events: Epoll.readable, tag: EventKind.port.tag(i))   // for EPOLLOUT when the queue waits
        groups.append(MulticastGroup(receiveFD: rfd, link: i, ownSourcePort: own))
        try epoll.add(rfd, events: Epoll.readable, tag: EventKind.multicastGroup.tag(groups.count - 1))
    }

    func openPortMaps() throws {
        for m in options.portMaps { _ = try addPortMap(m) }
    }

    /// Opens a port map's listening socket; returns its slot (an epoll tag, and the handle to remove it by).
    public func addPortMap(_ m: HostForward) throws -> Int {
        guard gateway != nil else { throw RuntimeError("port maps need the gateway") }
        do { return try portMaps.open(m) } catch { throw RuntimeError("port map \(m): \(error)") }
    }

    /// Closes a port map's socket. Connections it already forwarded keep running; its UDP flows are forgotten.
    @discardableResult
    public func removePortMap(slot i: Int) -> Bool { portMaps.close(i, gateway: gateway) != nil }

    /// The port maps in use: slot, rule and the address actually bound.
    public var activePortMaps: [(slot: Int, map: HostForward, bound: String)] {
        portMaps.active.map { ($0.slot, $0.entry.rule, $0.entry.bound) }
    }

    /// The VM a port map points at now: its address, or its lease host name's current address.
    func resolve(_ target: ForwardTarget, now: Instant) -> IPAddress? {
        switch target {
        case .address(let a): return a
        case .hostName(let n):
            return gateway?.dhcp.boundNames(now: now).first { $0.0 == n }.map { IPAddress($0.1) }
        }
    }

    func acceptPortMap(_ i: Int, now: UInt64) {
        guard let gw = gateway else { return }
        portMaps.accept(i, gateway: gw, now: now, target: { resolve($0.target, now: Instant(nanoseconds: now)) }) { map in
            logger.notice("port map \(map): no VM holds that name now; connection refused")
        }
    }

    // MARK: Leases

    func loadLeases() throws {
        guard let path = options.leasesFile, let gw = gateway else { return }
        let saved: [DHCPLease]
        do {
            guard let s = try LeaseFile.read(path: path) else { return }
            saved = s
        } catch {
            throw RuntimeError("\(error)")
        }
        let n = gw.restoreLeases(saved, now: Instant(nanoseconds: Sys.monotonicNanoseconds()))
        savedGeneration = gw.dhcp.generation
        logger.info("restored \(n) of \(saved.count) leases from \(path)")
    }

    /// Writes the lease file when the bindings changed, and republishes lease names to DNS.
    func leasesChanged(now: Instant) {
        guard let gw = gateway, gw.dhcp.generation != savedGeneration else { return }
        savedGeneration = gw.dhcp.generation
        if let path = options.leasesFile {
            do {
                try LeaseFile.write(gw.dhcp.leases(now: now), path: path)
            } catch {
                logger.error("cannot save leases to \(path): \(error)")
            }
        }
        publishLeaseNames(now: now)
        reportLeaseChanges(now: now)
    }

    /// Lease events for the embedder: a binding that is gone (released, declined or expired) since the last look.
    /// Grants and renewals are reported as they are ACKed (`leaseGranted`).
    func reportLeaseChanges(now: Instant) {
        guard let sink = leaseEventSink, let gw = gateway else { return }
        var current: [MACAddress: DHCPLease] = [:]
        for l in gw.dhcp.leases(now: now) where l.remainingSeconds > 0 { current[l.mac] = l }
        for (mac, l) in reportedLeases where current[mac] == nil { sink(.released(l)) }
        reportedLeases = current
    }

    func leaseGranted(address: IPv4Address, mac: MACAddress) {
        control?.publish("LEASE_GRANTED", data: ["address": address.description, "mac": mac.description])
        guard let sink = leaseEventSink, let gw = gateway else { return }
        let now = Instant(nanoseconds: Sys.monotonicNanoseconds())
        let lease = gw.dhcp.leases(now: now).first { $0.mac == mac && $0.address == address }
            ?? DHCPLease(mac: mac, address: address, hostName: nil, remainingSeconds: 0, isStatic: false)
        reportedLeases[mac] = lease
        sink(.granted(lease))
    }

    func publishLeaseNames(now: Instant) {
        guard let gw = gateway else { return }
        var current: [String: IPv4Address] = [:]
        for (n, a) in gw.dhcp.boundNames(now: now) { current[n] = a }
        for (n, a) in options.staticNames { current[n] = a }
        guard current != publishedNames else { return }
        gw.setLeaseNames(current)
        publishedNames = current
    }

    // MARK: Loop

    public func describeStartup() -> [String] {
        var lines: [String] = []
        if let g = gateway?.config {
            lines.append("vnet: nat network \(g.network), gateway \(g.gatewayAddress), dns \(g.dnsAddress), dhcp \(g.dhcpStart)+\(g.dhcpPoolSize), mtu \(options.mtu)")
            lines.append("vnet: guest traffic to \(g.gatewayAddress) reaches host loopback 127.0.0.1"
                         + (g.mapGatewayToHostLoopback ? "" : " (off)"))
            lines.append(g.ipv6Enabled
                ? "vnet: ipv6 prefix \(g.ipv6Prefix) (SLAAC), router fe80::2, gateway \(g.ipv6GatewayAddress) (host ::1), dns \(g.ipv6DNSAddress)"
                : "vnet: ipv6 off")
            if let f = options.leasesFile { lines.append("vnet: leases kept in \(f)") }
        } else {
            lines.append("vnet: switch, \(options.maximumPorts) ports, mtu \(options.mtu)")
        }
        for l in listeners { lines.append("vnet: listening \(l.description) (\(l.policy))") }
        for h in hubs { lines.append("vnet: datagrams \(h.description) (\(h.policy))") }
        for case let l? in links {
            lines.append("vnet: port \(l.switchPort): \(l.description) (\(fabric.ports[l.switchPort]?.policy.description ?? ""))")
            if case .transport(let t) = l.port.kind { lines += t.startupLines }
        }
        if let c = options.controlPath { lines.append("vnet: control socket \(c) (vnet ctl \(c) help)") }
        for (_, m) in portMaps.active { lines.append("vnet: port map \(m.rule.proto.rawValue) \(m.bound) -> \(m.rule.targetDescription):\(m.rule.guestPort)") }
        return lines
    }

    public func run(extraStartupLines extra: [String] = []) throws {
        var sandboxLines: [String] = []
        if options.sandbox {
            do { sandboxLines = try Sandbox.enter(refusing: "pcap-start (new files)") } catch { throw RuntimeError("\(error)") }
            sandboxed = true
            portMaps.mayUnlink = false
        }
        startupLines = describeStartup() + sandboxLines + extra
        if options.announce {
            for l in startupLines { Sys.writeLine(1, l) }
            Sys.writeLine(1, "vnet: ready")
        }
        publishLeaseNames(now: Instant(nanoseconds: Sys.monotonicNanoseconds()))
        loop.onSignal = { [unowned self] sig in
            switch sig {
            case SIGUSR1: self.printCounters()
            case SIGHUP:
                if let w = self.resolvWatcher, let gw = self.gateway, let s = w.poll(nowNanoseconds: Sys.monotonicNanoseconds(), force: true) {
                    gw.replaceDNSUpstreams(s.map { ($0, 53) })
                }
            default: break
            }
        }
        loop.busyPollNanoseconds = UInt64(options.busyPollMicroseconds) * 1000
        var ackWait = AckWait()
        try loop.run(turn: { now in
            let instant = Instant(nanoseconds: now)
            var deadline = now + 1_000_000_000
            if let gw = gateway {
                gw.poll(now: instant)
                if let w = resolvWatcher, let servers = w.poll(nowNanoseconds: now) { gw.replaceDNSUpstreams(servers.map { ($0, 53) }) }
                leasesChanged(now: instant)
                limitReporter.report(now: now, counters: gw.counters, controlRejected: control?.rejectedClients ?? 0, logger: logger)
            }
            if now &- lastExpiry >= 1_000_000_000 {
                lastExpiry = now
                fabric.expire(now: instant)
                if leaseEventSink != nil { reportLeaseChanges(now: instant) }   // expiries do not bump the generation
            }
            for case let l? in links {
                if case .streamConnector = l.port.kind, l.port.fd >= 0 { continue }
                let next = l.port.tick(now: now)
                if case .streamConnector = l.port.kind, l.port.fd >= 0, !l.port.connecting { fabric.forgetMACs(of: l.switchPort) }
                if let next { deadline = min(deadline, next) }
            }
            pump(now: now)
            if let gw = gateway { deadline = min(deadline, gw.nextDeadline.nanoseconds) }
            return deadline
        }, dispatch: { kind, index, events, now in
            dispatch(kind, index, events: events, now: now)
        }, afterEvents: {
            if let gw = gateway, loop.busyPollNanoseconds > 0 { ackWait.afterTurn(gw) }
            pump(now: Sys.monotonicNanoseconds())
            pcap?.flush()
        }, beforeSleep: {
            guard let gw = gateway, loop.busyPollNanoseconds > 0, gw.hasPendingAcks else { return }
            gw.flushPendingAcks()
            pump(now: Sys.monotonicNanoseconds())
        })
        logger.info("stopping")
        control = nil
        metricsEndpoint = nil
        pcap?.close()
        if let gw = gateway, let path = options.leasesFile {
            try? LeaseFile.write(gw.dhcp.leases(now: Instant(nanoseconds: Sys.monotonicNanoseconds())), path: path)
        }
        commands.close { $0(self) }
        for p in pathsToRemove { Sys.unlink(p) }   // the socket files go with the loop, not with the object
        portMaps.removeSocketFiles()
        pathsToRemove = []
        if options.announce { printCounters() }
    }

    /// Ends `run` after the current iteration (call on the loop's thread, e.g. through `commands`).
    public func stop() { loop.stop() }

    /// Moves the gateway's frames into the switch (while their ports have room), then flushes every link.
    func pump(now: UInt64) {
        for _ in 0 ..< 8 {
            drainGateway(now: now)
            for case let l? in links where !l.queue.isEmpty || l.port.writeArmed {
                l.port.flush(queue: l.queue, now: now)
                if l.hub == nil, l.port.fd < 0, l.port.isStream || l.port.connectedDatagram {
                    if case .streamConnector = l.port.kind { continue }   // it reconnects
                    removeLink(l.switchPort, reason: "write failed")
                }
            }
            guard let gw = gateway, gw.hasFlowsBlockedOnQueue || !gw.toGuest.isEmpty else { return }
            let before = gw.toGuest.frameCount
            gw.resumeFlowsBlockedOnQueue(now: Instant(nanoseconds: now))
            drainGateway(now: now)
            if gw.toGuest.frameCount >= before && !gw.toGuest.isEmpty { return }   // waiting for a slow port
        }
    }

    func drainGateway(now: UInt64) {
        guard let gw = gateway else { return }
        let instant = Instant(nanoseconds: now)
        let headerLength = gw.toGuest.frameHeaderLength
        while let stored = gw.toGuest.firstFrame {
            guard stored.count >= headerLength + 14 else { gw.toGuest.removeFirstFrame(); continue }
            let offload = headerLength > 0 ? try? VirtioNetHeader.parse(stored) : nil
            let frame = stored.slice(headerLength ..< stored.count)
            let dst = MACAddress(reading: frame, at: 0)
            guard fabric.hasRoom(for: frame.count, destination: dst, from: gatewaySwitchPort, now: instant) else { return }
            pcap?.record(frame)
            fabric.receive(from: gatewaySwitchPort, frame: frame, offload: offload, now: instant)
            gw.toGuest.removeFirstFrame()
        }
    }

    /// A frame the switch hands the gateway. `held`: the port keeps the bytes in place until its next read (a
    /// stream port), so TCP data may be gathered across frames, unless the switch handed over a copy.
    @inline(__always)
    func deliverLocal(_ frame: UnsafeRawBufferPointer, _ delivery: LocalDelivery, held: Bool, now: Instant) {
        gateway?.ingressGroup = fabric.currentIngress   // DHCP: at most 8 unconfirmed offers per switch port
        gateway?.handleGuestFrame(frame, now: now, checksumPartial: delivery.checksumPartial, held: held && delivery.inPlace)
    }

    /// After a read of a port: gathered TCP data and UDP datagrams go out, then the ACKs that wait for them.
    func flushGatewaySends() {
        guard let gw = gateway else { return }
        gw.flushGuestSends()
        if loop.busyPollNanoseconds == 0 { gw.flushPendingAcks() }
    }

    func readLink(_ i: Int, now: UInt64) {
        guard let l = links[i] else { return }
        let instant = Instant(nanoseconds: now)
        let wasConnected = l.port.isConnected
        let held = l.port.holdsFramesUntilNextRead
        l.port.readFrames(now: now, queue: l.queue, beforeReuse: { self.gateway?.flushGuestSends() }) { frame, offload in
            self.pcap?.record(frame)
            self.fabric.receive(from: l.switchPort, frame: frame, offload: offload, now: instant) { self.deliverLocal($0, $1, held: held, now: instant) }
        }
        flushGatewaySends()
        if l.port.fd < 0 {
            if case .streamConnector = l.port.kind {
                guestsDeparted(l, reason: "disconnected")
            } else {
                removeLink(i, reason: "disconnected")
            }
        } else if !wasConnected && l.port.isConnected {
            guestsDeparted(l, reason: "a new peer connected")
        }
    }

    func accept(_ li: Int) {
        let listener = listeners[li]
        while true {
            let c: Int32
            do throws(SyscallError) { c = try Sys.accept(listener.fd) } catch {
                epoll.pauseListenerIfShort(listener.fd, error: error.errno, tag: EventKind.portListener.tag(li))
                return
            }
            let gp = GuestPort(kind: .streamListener(listenFD: -1), epoll: epoll, mtu: options.mtu, logger: logger)
            gp.fd = c
            do {
                let i = try addLink(gp, listener.policy, "\(listener.description) peer")
                try epoll.add(c, events: Epoll.readable | Epoll.hangup, tag: EventKind.port.tag(i))
                logger.info("port \(i): a peer connected on \(listener.description)")
                publishPort(i, connected: true, description: listener.description)
            } catch {
                logger.warning("refused a peer on \(listener.description): \(error)")
                Sys.close(c)
            }
        }
    }

    func readHub(_ h: Int, now: UInt64) {
        let instant = Instant(nanoseconds: now)
        for _ in 0 ..< 64 {
            var from = SocketAddress()
            guard case .done(let n) = Sys.receiveFrom(hubs[h].fd, into: receiveBuffer, from: &from) else { return }
            guard from.length > 0 else { continue }
            var link = hubs[h].peers.first { SwitchRuntime.same($0.address, from) }?.link
            if hubs[h].vfkit, n == VfkitFraming.magic.count, VfkitFraming.isMagic(UnsafeRawBufferPointer(receiveBuffer.slice(0 ..< n))) {
                // A (re)starting vfkit announces itself: a fresh port, or a known one whose MACs are forgotten.
                if let i = link, let l = links[i] { guestsDeparted(l, reason: "vfkit restarted"); continue }
            }
            if link == nil {
                let gp = GuestPort(kind: .datagram(peer: from), epoll: epoll, mtu: options.mtu, logger: logger)
                gp.fd = hubs[h].fd
                guard let i = try? addLink(gp, hubs[h].policy, "\(hubs[h].description) peer \(from)", hub: h) else { continue }
                hubs[h].peers.append((from, i))
                link = i
                logger.info("port \(i): datagram peer \(from) on \(hubs[h].description)")
                publishPort(i, connected: true, description: "\(hubs[h].description) peer \(from)")
            }
            guard let i = link, let l = links[i] else { continue }
            if hubs[h].vfkit, n == VfkitFraming.magic.count, VfkitFraming.isMagic(UnsafeRawBufferPointer(receiveBuffer.slice(0 ..< n))) { continue }
            l.port.deliverWhole(received: n, truncated: n > receiveBuffer.count - 1, from: receiveBuffer) { frame, _ in
                self.pcap?.record(frame)
                self.fabric.receive(from: l.switchPort, frame: frame, now: instant) { self.deliverLocal($0, $1, held: false, now: instant) }
            }
        }
        flushGatewaySends()
    }

    func readMulticast(_ g: Int, now: UInt64) {
        let group = groups[g]
        guard let l = links[group.link] else { return }
        let instant = Instant(nanoseconds: now)
        for _ in 0 ..< 64 {
            var from = SocketAddress()
            guard case .done(let n) = Sys.receiveFrom(group.receiveFD, into: receiveBuffer, from: &from) else { break }
            if let (_, p) = from.ipv4, p == group.ownSourcePort { continue }   // our own datagram, looped back
            l.port.deliverWhole(received: n, truncated: n > receiveBuffer.count - 1, from: receiveBuffer) { frame, _ in
                self.pcap?.record(frame)
                self.fabric.receive(from: l.switchPort, frame: frame, now: instant) { self.deliverLocal($0, $1, held: false, now: instant) }
            }
        }
        flushGatewaySends()
    }

    static func same(_ a: SocketAddress, _ b: SocketAddress) -> Bool {
        guard a.length == b.length else { return false }
        var x = a.storage, y = b.storage
        return withUnsafeBytes(of: &x) { xa in withUnsafeBytes(of: &y) { ya in memcmp(xa.baseAddress!, ya.baseAddress!, Int(a.length)) == 0 } }
    }

    func dispatch(_ kind: EventKind, _ low: Int, events: UInt32, now: UInt64) {
        let instant = Instant(nanoseconds: now)
        switch kind {
        case .udpFlow, .icmpFlow, .tcpFlow:
            guard let flow = FlowTag(rawValue: kind.tag(low)), let gw = gateway, let h = host else { return }
            h.eventHadError = events & Epoll.error != 0
            if events & Epoll.writable != 0 { gw.hostWritable(flow, now: instant) }
            if events & (Epoll.readable | Epoll.hangup | Epoll.error) != 0 {
                gw.hostReadable(flow, now: instant, peerClosing: events & (Epoll.hangup | Epoll.error) != 0)
            }
        case .portListener: accept(low)
        case .port:
            guard low < links.count, let l = links[low] else { return }
            if events & (Epoll.readable | Epoll.hangup | Epoll.error) != 0 || l.port.connecting { readLink(low, now: now) }
            if events & Epoll.writable != 0, let l2 = links[low], !l2.port.connecting { l2.port.flush(queue: l2.queue, now: now) }
        case .datagramHub:
            if events & (Epoll.readable | Epoll.error) != 0 { readHub(low, now: now) }
            if events & Epoll.writable != 0, low < hubs.count {
                for p in hubs[low].peers { if let l = links[p.link] { l.port.flush(queue: l.queue, now: now) } }
            }
        case .multicastGroup: readMulticast(low, now: now)
        case .transport:
            let (slot, token) = PortContext.split(low)
            guard slot < links.count, let l = links[slot], case .transport(let t) = l.port.kind else { return }
            t.handle(token: token, events: events, now: now)
        case .command: commands.drain { $0(self) }
        case .forwardTCP, .forwardUDP: acceptPortMap(low, now: now)
        case .control, .controlClient: control?.handle(tag: kind.tag(low), events: events, isListener: kind == .control)
        case .metrics, .metricsClient: metricsEndpoint?.handle(tag: kind.tag(low), events: events, isListener: kind == .metrics)
        default: break
        }
    }

    // MARK: Status

    /// Counters, one `name value` per line: the switch, each port, then the gateway's.
    public var counterLines: [String] {
        var lines: [String] = []
        let c = fabric.counters
        for r in SwitchDropReason.allCases where c[r] > 0 { lines.append("switch_drop_\(r.name) \(c[r])") }
        lines.append("switch_forwarded \(c.forwarded)")
        lines.append("switch_flooded \(c.flooded)")
        if c.learnRefusedTableFull > 0 { lines.append("switch_learn_refused_table_full \(c.learnRefusedTableFull)") }
        if c.learnRefusedPortQuota > 0 { lines.append("switch_learn_refused_port_quota \(c.learnRefusedPortQuota)") }
        if refusedPeers > 0 { lines.append("switch_refused_peers \(refusedPeers)") }
        if fabric.softwareSegmented > 0 { lines.append("switch_software_segmented \(fabric.softwareSegmented)") }
        if fabric.softwareSegments > 0 { lines.append("switch_software_segments \(fabric.softwareSegments)") }
        if fabric.softwareChecksums > 0 { lines.append("switch_software_checksums \(fabric.softwareChecksums)") }
        if fabric.directWrites > 0 { lines.append("switch_direct_writes \(fabric.directWrites)") }
        lines.append("switch_macs \(fabric.fdb.count)")
        for (i, p) in fabric.ports.enumerated() {
            guard let p else { continue }
            let k = p.counters
            lines.append("port\(i)_rx_packets \(k.rxPackets)")
            lines.append("port\(i)_rx_bytes \(k.rxBytes)")
            lines.append("port\(i)_rx_drops \(k.rxDrops)")
            lines.append("port\(i)_tx_packets \(k.txPackets)")
            lines.append("port\(i)_tx_bytes \(k.txBytes)")
            lines.append("port\(i)_tx_drops \(k.txDrops)")
            if let l = links[i] {
                l.port.syncCounters()
                let t = l.port.counters
                if t.droppedShort > 0 { lines.append("port\(i)_drop_frame_too_short \(t.droppedShort)") }
                if t.droppedOversize > 0 { lines.append("port\(i)_drop_frame_too_long \(t.droppedOversize)") }
                if t.sendErrors > 0 { lines.append("port\(i)_send_errors \(t.sendErrors)") }
                if t.superSegmentsIn > 0 { lines.append("port\(i)_super_segments_in \(t.superSegmentsIn)") }
                if case .transport(let tr) = l.port.kind { for (n, v) in tr.extraCounters { lines.append("port\(i)_\(n) \(v)") } }
            }
        }
        if let gw = gateway { lines += gw.counters.report }
        return lines
    }

    func printCounters() { printCounterBlock(counterLines) }
}
