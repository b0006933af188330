// VNetRuntime: `vnet user` wired together: one guest port, the gateway, real host sockets, one epoll loop.
//
// Theory of Operation
// -------------------
// Runs on the one `EventLoop` (VNetHost), tags from the one registry (`EventKind`). Each turn: run timers
// (flow expiry, resolv.conf check, reconnect), wait for events (until the next timer, at most 1 s),
// dispatch them, then flush everything the gateway queued for the guest in one go.
// SIGINT/SIGTERM stop the loop cleanly (the socket file is removed); SIGHUP re-reads resolv.conf; SIGUSR1
// prints the counters to stderr. The control socket, the packet capture and the metrics endpoint (all
// optional) live on the same loop; their wiring is in UserNetControl.swift.

import CVNetShim
import Logging
import VNetBuffers
import VNetGateway
import VNetHost
import VNetTransport
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public struct RuntimeError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

public final class UserNetRuntime {
    public let options: RuntimeOptions
    let logger: Logger
    let loop: EventLoop
    var epoll: Epoll { loop.epoll }
    let host: RealHost
    public let gateway: Gateway<RealHost>
    let port: GuestPort
    let resolvWatcher: ResolvConfWatcher?
    /// hostfwd rules with their listening sockets.
    let forwards: ForwardListeners
    var control: ControlServer?
    var pcap: PcapWriter?
    var metricsEndpoint: MetricsEndpoint?
    let metrics = RuntimeMetrics()
    var socketPathToRemove: String?
    /// Set once `--sandbox` took effect (see `enterSandbox`); the lowest port hostfwd_add may still bind.
    public private(set) var sandboxed = false
    var sandboxPortStart = 1024
    var limitReporter = LimitReporter()
    /// Fds served for a front end (`watch`, UserNetWatchers.swift); a slot is nil once unwatched.
    var watchers: [(() -> Void)?] = []
    /// What the last report of accept pauses (listeners out of fds, see Epoll) said.
    var acceptPausesReported: UInt64 = 0
    var nextAcceptPauseReport: UInt64 = 0
    static let limitReportInterval: UInt64 = 10_000_000_000
    /// Lines printed on stdout at start-up (also returned for tests).
    public private(set) var startupLines: [String] = []
    /// Where the start-up lines go (`vnet run` leaves stdout to QEMU and uses stderr).
    public var announceFD: Int32 = 1

    public init(options: RuntimeOptions, logger: Logger) throws {
        self.options = options
        self.logger = logger
        if options.sandbox { try UserNetRuntime.checkSandboxable(options) }
        // The TAP must be opened first, while no other socket exists: it switches this thread's netns.
        var tapFD: Int32 = -1
        var tapOffload = options.tapOffload
        if case .tap(let netns, let name) = options.transport {
            if let open = options.openTap {
                (tapFD, tapOffload) = try open()
            } else {
                tapFD = try Sys.openTap(inNamespace: netns, name: name, mtu: options.gateway.mtu, offload: options.tapOffload)
            }
        }
        var gatewayConfig = options.gateway
        gatewayConfig.guestOffloads = tapFD >= 0 && tapOffload
        if case .transport(let plugged) = options.transport { gatewayConfig.guestOffloads = plugged.factory.carriesOffloads }
        loop = try EventLoop(signals: .all)
        host = RealHost(epoll: loop.epoll)
        forwards = ForwardListeners(epoll: loop.epoll)
        // Tests exercise both host-read paths; kernels before 6.9 take the fallback on their own.
        if let v = getenv("VNET_FORCE_PEEK_FALLBACK"), String(cString: v) == "1" { host.forcePeekFallback = true }
        gateway = Gateway(config: gatewayConfig, host: host)
        // dispatch() calls flushGuestSends after every read of the guest port (GatewayUDPBatch.swift).
        gateway.gathersGuestDatagrams = true
        if let root = gatewayConfig.tftpRoot { gateway.enableTFTP(files: try HostTFTPFiles(directory: root)) }

        if let up = options.dnsUpstream {
            guard let a = IPAddress(text: up.address) else { throw RuntimeError("--dns-upstream: '\(up.address)' is not an IP address") }
            gateway.setDNSUpstreams([(a, up.port)])
            resolvWatcher = nil
        } else {
            resolvWatcher = ResolvConfWatcher(path: options.resolvConfPath)
        }

        let mtu = options.gateway.mtu
        let epoll = loop.epoll
        switch options.transport {
        case .unixListen(let path):
            let fd = try Sys.listenUnix(path: path)
            socketPathToRemove = path
            port = GuestPort(kind: .streamListener(listenFD: fd), epoll: epoll, mtu: mtu, logger: logger)
            try epoll.add(fd, events: Epoll.readable, tag: EventKind.portListener.tag())
            port.boundDescription = "unix:\(path)"
        case .tcpListen(let h, let p):
            let (fd, description) = try Endpoints.listenTCP(host: h, port: p)
            port = GuestPort(kind: .streamListener(listenFD: fd), epoll: epoll, mtu: mtu, logger: logger)
            try epoll.add(fd, events: Epoll.readable, tag: EventKind.portListener.tag())
            port.boundDescription = description
        case .connectUnix(let path):
            port = GuestPort(kind: .streamConnector(address: try Endpoints.connectAddress(unixPath: path)), epoll: epoll, mtu: mtu, logger: logger)
            port.boundDescription = "connect unix:\(path)"
        case .connectTCP(let h, let p):
            port = GuestPort(kind: .streamConnector(address: try Endpoints.connectAddress(host: h, port: p)), epoll: epoll, mtu: mtu, logger: logger)
            port.boundDescription = "connect tcp:\(h):\(p)"
        case .dgramUnix(let path, let peerPath):
            var peer: SocketAddress? = nil
            if let pp = peerPath {
                guard let pa = SocketAddress(unixPath: pp) else { throw RuntimeError("--dgram-peer: unix path too long") }
                peer = pa
            }
            let fd = try Endpoints.bindDatagram(unixPath: path, flag: options.vfkitHandshake ? "--vfkit" : "--dgram")
            socketPathToRemove = path
            port = GuestPort(kind: .datagram(peer: peer), epoll: epoll, mtu: mtu, logger: logger)
            port.fd = fd
            try epoll.add(fd, events: Epoll.readable, tag: EventKind.port.tag())
            port.boundDescription = options.vfkitHandshake ? "vfkit unixgram:\(path)" : "dgram unix:\(path)"
            port.vfkitHandshake = options.vfkitHandshake
        case .dgramUDP(let h, let p, let ph, let pp):
            var peer: SocketAddress? = nil
            if let ph, let pp {
                guard let pa = IPv4Address(ph) else { throw RuntimeError("--dgram-peer: '\(ph)' is not an IPv4 address") }
                peer = SocketAddress(ipv4: pa.rawValue, port: pp)
            }
            let (fd, description) = try Endpoints.bindDatagram(host: h, port: p)
            port = GuestPort(kind: .datagram(peer: peer), epoll: epoll, mtu: mtu, logger: logger)
            port.fd = fd
            try epoll.add(fd, events: Epoll.readable, tag: EventKind.port.tag())
            port.boundDescription = description
        case .tap(let netns, let name):
            port = GuestPort(kind: .tap(virtioHeader: gatewayConfig.guestOffloads), epoll: epoll, mtu: mtu, logger: logger)
            port.fd = tapFD
            try epoll.add(tapFD, events: Epoll.readable, tag: EventKind.port.tag())
            port.boundDescription = "tap \(name) in netns \(netns)"
        case .transport(let plugged):
            let t = try plugged.factory.make(logger: logger)
            port = GuestPort(kind: .transport(t), epoll: epoll, mtu: mtu, logger: logger)
            port.boundDescription = plugged.description
        }
        switch port.kind {
        case .streamListener, .transport:
            // A QEMU that connected to us and went away (exit, kill, crash) is gone for good: the next connection
            // is a new guest. Its flows and host sockets go at once instead of lingering until they time out.
            // In --connect mode QEMU is the server and outlives a lost connection, so its flows are kept.
            port.disconnectHandler = { [unowned self] in
                let n = self.gateway.closeAllFlows()
                if n > 0 { self.logger.info("closed \(n) flows of the disconnected guest") }
            }
        default:
            break
        }
        try openForwards()
        try startObservability()
        if case .transport(let t) = port.kind { try startTransport(t) }
    }

    /// Wires a transport with a protocol of its own straight to the gateway (PortTransport.swift).
    func startTransport(_ t: PortTransport) throws {
        let context = PortContext(queue: gateway.toGuest, mtu: options.gateway.mtu, logger: logger, epoll: epoll, slot: 0, deliver: { [unowned self] frame, offload in
            if let capture = self.pcap { capture.record(frame) }
            self.gateway.handleGuestFrame(frame, now: Instant(nanoseconds: Sys.monotonicNanoseconds()),
                                          checksumPartial: offload?.flags.contains(.needsChecksum) ?? false, held: t.holdsFrames)
        }, endBatch: { [unowned self] in
            self.gateway.flushGuestSends()
            if self.loop.busyPollNanoseconds == 0 { self.gateway.flushPendingAcks() }
        }, peerNews: { [unowned self] connected, peer, reason in
            self.port.stateObserver?(connected, connected ? peer : reason)
            if !connected { self.port.disconnectHandler?() }
        }, tooBig: { [unowned self] frame, mtu in self.gateway.answerFrameTooBig(frame, mtu: mtu) })
        try t.start(context)
    }

    deinit {
        if case .transport(let t) = port.kind { t.close() }
        // In the sandbox unlink is not allowed: the file stays, and the next start removes it as stale.
        if let p = socketPathToRemove, !sandboxed { Sys.unlink(p) }
        forwards.removeSocketFiles()
    }

    // MARK: Sandbox

    /// Refuses, before anything is opened, the options that need a child process or new files after start-up.
    static func checkSandboxable(_ options: RuntimeOptions) throws {
        for g in options.gateway.guestForwards {
            if case .command = g.target {
                throw RuntimeError("--sandbox: guestfwd \(g) runs a command per connection, and the sandbox forbids starting processes; forward to HOST:PORT instead, or drop --sandbox")
            }
        }
        if options.pcapRotateBytes != nil {
            throw RuntimeError("--sandbox: --pcap-rotate creates new files while running, which the sandbox forbids; use --pcap FILE without rotation, or drop --sandbox")
        }
    }

    /// Drops capabilities and installs the seccomp filter (everything is set up by now). Returns the start-up
    /// lines that say what changed.
    func enterSandbox() throws -> [String] {
        sandboxPortStart = Sandbox.unprivilegedPortStart()
        var lines: [String]
        do { lines = try Sandbox.enter(refusing: "pcap-start (new files), hostfwd_add below port \(sandboxPortStart)") } catch {
            throw RuntimeError("\(error)")
        }
        sandboxed = true
        forwards.mayUnlink = false
        if host.echoMode == .raw {
            host.echoMode = .unavailable
            lines.append("vnet: sandbox: icmp echo to the outside is off (it needs a raw socket and CAP_NET_RAW); 10.0.2.2 and the DNS address still answer ping")
        }
        return lines
    }

    typealias ActiveForward = ForwardListeners.Entry

    /// Binds every hostfwd listener (an address of 0.0.0.0 binds all, as in QEMU).
    func openForwards() throws {
        for rule in options.gateway.hostForwards { try openForward(rule) }
    }

    /// Binds one hostfwd listener (at start, or hostfwd_add at run time) and returns its slot.
    @discardableResult
    func openForward(_ rule: HostForward) throws -> Int {
        do { return try forwards.open(rule) } catch {
            throw RuntimeError("hostfwd \(rule.unixPath.map { "unix:\($0)" } ?? "\(rule.proto.rawValue):\(rule.hostAddress.bracketed):\(rule.hostPort)"): \(error)")
        }
    }

    // MARK: Set-up helpers

    // MARK: Loop

    func describeStartup() -> [String] {
        var lines: [String] = []
        let c = options.gateway
        lines.append("vnet: user network \(c.network), gateway \(c.gatewayAddress), dns \(c.dnsAddress), dhcp \(c.dhcpStart)+\(c.dhcpPoolSize), mtu \(c.mtu)")
        if c.ipv6Enabled {
            lines.append("vnet: ipv6 prefix \(c.ipv6Prefix) (SLAAC), router fe80::2, gateway \(c.ipv6GatewayAddress), dns \(c.ipv6DNSAddress)")
        } else {
            lines.append("vnet: ipv6 off")
        }
        lines.append("vnet: guest port: \(port.boundDescription)")
        if case .transport(let t) = port.kind { lines += t.startupLines }
        if c.mapGatewayToHostLoopback {
            lines.append("vnet: guest traffic to \(c.gatewayAddress) reaches host loopback 127.0.0.1 (--no-map-host-loopback turns this off)")
            if c.ipv6Enabled { lines.append("vnet: guest traffic to \(c.ipv6GatewayAddress) reaches host loopback ::1") }
        } else {
            lines.append("vnet: guest traffic to \(c.gatewayAddress) does not reach host loopback")
        }
        lines.append("vnet: egress: " + c.egress.summary)
        lines.append("vnet: limits: " + c.limitsSummary)
        if let up = options.dnsUpstream {
            lines.append("vnet: dns upstream \(IPAddress(text: up.address)?.bracketed ?? up.address):\(up.port)")
        } else {
            lines.append("vnet: dns upstreams from \(options.resolvConfPath) (re-read on change)")
        }
        lines.append("vnet: icmp echo via \(host.echoMode.rawValue)")
        lines.append(host.usePeekOffset ? "vnet: tcp host reads via MSG_PEEK with SO_PEEK_OFF"
                                        : "vnet: tcp host reads via MSG_PEEK with skipping (no SO_PEEK_OFF)")
        for (_, f) in forwards.active {
            lines.append("vnet: hostfwd \(forwardDescription(f))")
        }
        for g in c.guestForwards { lines.append("vnet: guestfwd \(g)") }
        if let root = c.tftpRoot { lines.append("vnet: tftp \(c.gatewayAddress):69 serves \(root) read-only") }
        if let b = c.bootfile { lines.append("vnet: dhcp bootfile \(b) from \(c.gatewayAddress)") }
        if c.restricted {
            lines.append("vnet: restrict=on: the guest reaches only DHCP, ARP, ping of \(c.gatewayAddress)/\(c.dnsAddress)\(c.tftpRoot != nil ? ", TFTP" : ""), guestfwd targets and hostfwd connections")
        }
        return lines
    }

    /// Prints the start-up lines (plus `extra`), then `vnet: ready`, then serves until a signal stops it.
    public func run(extraStartupLines extra: [String] = []) throws {
        let sandboxLines = options.sandbox ? try enterSandbox() : []
        startupLines = describeStartup() + sandboxLines + extra
        for l in startupLines { Sys.writeLine(announceFD, l) }
        Sys.writeLine(announceFD, "vnet: ready")
        loop.onSignal = { [unowned self] sig in
            switch sig {
            case SIGHUP:
                if let w = self.resolvWatcher, let servers = w.poll(nowNanoseconds: Sys.monotonicNanoseconds(), force: true) {
                    self.applyResolvers(servers)
                }
            case SIGUSR1: self.printCounters()
            default: break
            }
        }
        loop.busyPollNanoseconds = UInt64(options.busyPollMicroseconds) * 1000
        var ackWait = AckWait()
        try loop.run(turn: { now in
            gateway.poll(now: Instant(nanoseconds: now))
            if let w = resolvWatcher, let servers = w.poll(nowNanoseconds: now) { applyResolvers(servers) }
            let portDeadline = port.tick(now: now)
            reportLimits(now: now)
            port.flush(queue: gateway.toGuest, now: now)
            return min(gateway.nextDeadline.nanoseconds, portDeadline ?? .max)
        }, dispatch: { kind, index, events, now in
            dispatch(kind, index, events: events, now: now)
        }, afterEvents: {
            if loop.busyPollNanoseconds > 0 { ackWait.afterTurn(gateway) }
            flushToGuest()
            pcap?.flush()
        }, beforeSleep: {
            guard loop.busyPollNanoseconds > 0, gateway.hasPendingAcks else { return }
            gateway.flushPendingAcks()
            flushToGuest()
        })
        logger.info("stopping")
        printCounters()
        stopObservability()
    }

    /// Ends `run` once `fd` becomes readable (or hangs up): `vnet run` passes QEMU's pidfd.
    public func stopWhenReadable(_ fd: Int32) throws { try loop.stopWhenReadable(fd) }

    /// Drains the gateway's queue to the guest, letting flows that waited for room refill it, a few rounds.
    func flushToGuest() {
        for _ in 0 ..< 8 {
            let now = Sys.monotonicNanoseconds()
            port.flush(queue: gateway.toGuest, now: now)
            guard !port.writeArmed, gateway.hasFlowsBlockedOnQueue else { return }
            gateway.resumeFlowsBlockedOnQueue(now: Instant(nanoseconds: now))
        }
    }

    /// Logs each limit that bit since the last report (LimitReporter.swift).
    func reportLimits(now: UInt64) {
        limitReporter.report(now: now, counters: gateway.counters, controlRejected: control?.rejectedClients ?? 0, logger: logger)
        if epoll.listenerPauses > acceptPausesReported && now >= nextAcceptPauseReport {
            nextAcceptPauseReport = now + UserNetRuntime.limitReportInterval
            logger.warning("out of file descriptors: accepts paused x\(epoll.listenerPauses - acceptPausesReported) since the last report (hostfwd \(forwards.acceptPauses) in all); new connections wait in the backlog (raise the fd limit, ulimit -n)")
            acceptPausesReported = epoll.listenerPauses
        }
    }

    func applyResolvers(_ servers: [IPAddress]) {
        gateway.replaceDNSUpstreams(servers.map { ($0, 53) })
        if servers.isEmpty {
            logger.warning("no usable nameserver in \(options.resolvConfPath): DNS queries get SERVFAIL")
        } else {
            logger.info("dns upstreams: \(servers.map(\.description).joined(separator: ", "))")
        }
    }

    func dispatch(_ kind: EventKind, _ index: Int, events: UInt32, now: UInt64) {
        let instant = Instant(nanoseconds: now)
        switch kind {
        case .udpFlow, .icmpFlow, .tcpFlow:
            guard let flow = FlowTag(rawValue: kind.tag(index)) else { return }
            host.eventHadError = events & Epoll.error != 0
            if events & Epoll.writable != 0 { gateway.hostWritable(flow, now: instant) }
            if events & (Epoll.readable | Epoll.hangup | Epoll.error) != 0 {
                gateway.hostReadable(flow, now: instant, peerClosing: events & (Epoll.hangup | Epoll.error) != 0)
            }
        case .portListener:
            port.accept(queue: gateway.toGuest, listenerTag: EventKind.portListener.tag())
        case .forwardTCP, .forwardUDP:
            forwards.accept(index, gateway: gateway, now: now, target: { $0.guestAddress })
        case .port:
            if events & (Epoll.readable | Epoll.hangup | Epoll.error) != 0 || port.connecting {
                let held = port.holdsFramesUntilNextRead
                port.readFrames(now: now, queue: gateway.toGuest, beforeReuse: { self.gateway.flushGuestSends() }) { frame, offload in
                    if let capture = self.pcap { capture.record(frame) }
                    self.gateway.handleGuestFrame(frame, now: instant, checksumPartial: offload?.flags.contains(.needsChecksum) ?? false, held: held)
                }
                gateway.flushGuestSends()
                if loop.busyPollNanoseconds == 0 { gateway.flushPendingAcks() }
            }
            if events & Epoll.writable != 0 { flushToGuest() }
        case .transport:
            if case .transport(let t) = port.kind { t.handle(token: PortContext.split(index).token, events: events, now: now) }
        case .watcher:
            if index < watchers.count { watchers[index]?() }
        case .control, .controlClient:
            control?.handle(tag: kind.tag(index), events: events, isListener: kind == .control)
        case .metrics, .metricsClient:
            metricsEndpoint?.handle(tag: kind.tag(index), events: events, isListener: kind == .metrics)
        default:
            break
        }
    }

    /// All counters, one `name value` per line: gateway served/dropped, then the guest port's.
    public var counterLines: [String] {
        let p = port.currentCounters
        var lines = gateway.counters.report
        let portLines: [(String, UInt64)] = [
            ("port_frames_in", p.framesIn), ("port_frames_out", p.framesOut), ("port_super_segments_in", p.superSegmentsIn),
            ("drop_port_frame_too_short", p.droppedShort), ("drop_port_frame_too_long", p.droppedOversize),
            ("port_desync_resets", p.desyncResets), ("port_connections", p.connections),
            ("port_rejected_connections", p.rejectedConnections), ("drop_port_send_errors", p.sendErrors),
            ("drop_tx_queue_refused", gateway.toGuest.refused), ("hostfwd_accept_pauses", forwards.acceptPauses), ("accept_pauses", epoll.listenerPauses), ("udp_gso_fallbacks", UInt64(host.udpSegmentationFallbacks)),
            ("drop_control_clients_full", control?.rejectedClients ?? 0), ("busy_poll_catches", loop.busyPollCatches),
        ]
        lines += portLines.filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }
        if case .transport(let t) = port.kind { lines += t.extraCounters.map { "port_\($0.0) \($0.1)" } }
        return lines
    }

    func printCounters() { printCounterBlock(counterLines) }
}
