// VNetRuntime: `vnet user` wired together: one guest port, the gateway, real host sockets, one epoll loop.
//
// Theory of Operation
// -------------------
// Single thread, single epoll set. Every registered fd carries a 64-bit tag: the top byte says what it is
// (gateway flow socket, guest listener/connection/datagram/TAP, signalfd) and the low bits name a flow
// index, so dispatch is a switch with no lookup. Time is read once per iteration and passed down. Each
// iteration: run timers (flow expiry, resolv.conf check, reconnect), wait for events (timeout = the next
// timer, at most 1 s), dispatch them, then flush everything the gateway queued for the guest in one go.
// SIGINT/SIGTERM stop the loop cleanly (the socket file is removed); SIGHUP re-reads resolv.conf; SIGUSR1
// prints the counters to stderr. The control socket, the packet capture and the metrics endpoint (all
// optional) live on the same loop; their wiring is in UserNetControl.swift.

import CVNetShim
import Logging
import VNetBuffers
import VNetGateway
import VNetHost
import VNetTransport
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
    let epoll: Epoll
    let host: RealHost
    public let gateway: Gateway<RealHost>
    let port: GuestPort
    let signalFD: Int32
    let resolvWatcher: ResolvConfWatcher?
    var running = true
    /// hostfwd rules with their listening sockets; a removed rule leaves its slot empty (slots are epoll tags).
    var forwards: [ActiveForward?] = []
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
    /// Accepts on a listener that failed for want of fds (the listener pauses, see Epoll), hostfwd's counted apart,
    /// and what the last report said.
    var acceptPauses: UInt64 = 0
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
                tapFD = try UserNetRuntime.openTapInNamespace(netns: netns, name: name, mtu: options.gateway.mtu, offload: options.tapOffload)
            }
        }
        var gatewayConfig = options.gateway
        gatewayConfig.guestOffloads = tapFD >= 0 && tapOffload
        epoll = try Epoll()
        host = RealHost(epoll: epoll)
        // Tests exercise both host-read paths; kernels before 6.9 take the fallback on their own.
        if let v = getenv("VNET_FORCE_PEEK_FALLBACK"), String(cString: v) == "1" { host.forcePeekFallback = true }
        gateway = Gateway(config: gatewayConfig, host: host)
        // dispatch() calls flushGuestSends after every read of the guest port (GatewayUDPBatch.swift).
        gateway.gathersGuestDatagrams = true
        if let root = gatewayConfig.tftpRoot { gateway.enableTFTP(files: try HostTFTPFiles(directory: root)) }
        let sfd = vnet_signalfd()
        guard sfd >= 0 else { throw RuntimeError("signalfd: \(Sys.errnoString(-sfd))") }
        signalFD = sfd
        try epoll.add(sfd, events: Epoll.readable, tag: LoopTag.signal.tag)

        if let up = options.dnsUpstream {
            guard let a = IPAddress(text: up.address) else { throw RuntimeError("--dns-upstream: '\(up.address)' is not an IP address") }
            gateway.setDNSUpstreams([(a, up.port)])
            resolvWatcher = nil
        } else {
            resolvWatcher = ResolvConfWatcher(path: options.resolvConfPath)
        }

        let mtu = options.gateway.mtu
        switch options.transport {
        case .unixListen(let path):
            let fd = try UserNetRuntime.listenUnix(path: path)
            socketPathToRemove = path
            port = GuestPort(kind: .streamListener(listenFD: fd), epoll: epoll, mtu: mtu, logger: logger)
            try epoll.add(fd, events: Epoll.readable, tag: LoopTag.listener.tag)
            port.boundDescription = "unix:\(path)"
        case .tcpListen(let h, let p):
            guard let a = IPv4Address(h) else { throw RuntimeError("--listen: '\(h)' is not an IPv4 address") }
            let fd = try Sys.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            try Sys.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            try Sys.bind(fd, SocketAddress(ipv4: a.rawValue, port: p))
            try Sys.listen(fd)
            port = GuestPort(kind: .streamListener(listenFD: fd), epoll: epoll, mtu: mtu, logger: logger)
            try epoll.add(fd, events: Epoll.readable, tag: LoopTag.listener.tag)
            port.boundDescription = "tcp:\(Sys.localAddress(fd)?.description ?? "\(h):\(p)")"
        case .connectUnix(let path):
            guard let a = SocketAddress(unixPath: path) else { throw RuntimeError("--connect: unix path too long") }
            port = GuestPort(kind: .streamConnector(address: a), epoll: epoll, mtu: mtu, logger: logger)
            port.boundDescription = "connect unix:\(path)"
        case .connectTCP(let h, let p):
            guard let a = IPv4Address(h) else { throw RuntimeError("--connect: '\(h)' is not an IPv4 address") }
            port = GuestPort(kind: .streamConnector(address: SocketAddress(ipv4: a.rawValue, port: p)), epoll: epoll, mtu: mtu, logger: logger)
            port.boundDescription = "connect tcp:\(h):\(p)"
        case .dgramUnix(let path, let peerPath):
            var peer: SocketAddress? = nil
            if let pp = peerPath {
                guard let pa = SocketAddress(unixPath: pp) else { throw RuntimeError("--dgram-peer: unix path too long") }
                peer = pa
            }
            try UserNetRuntime.removeStaleSocket(path)
            guard let a = SocketAddress(unixPath: path) else { throw RuntimeError("--dgram: unix path too long") }
            let fd = try Sys.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            try Sys.bindPrivate(fd, a)
            try? Sys.setOption(fd, SOL_SOCKET, SO_SNDBUF, 1 << 20)
            try? Sys.setOption(fd, SOL_SOCKET, SO_RCVBUF, 4 << 20)
            socketPathToRemove = path
            port = GuestPort(kind: .datagram(peer: peer), epoll: epoll, mtu: mtu, logger: logger)
            port.fd = fd
            try epoll.add(fd, events: Epoll.readable, tag: LoopTag.datagram.tag)
            port.boundDescription = options.vfkitHandshake ? "vfkit unixgram:\(path)" : "dgram unix:\(path)"
            port.vfkitHandshake = options.vfkitHandshake
        case .dgramUDP(let h, let p, let ph, let pp):
            guard let a = IPv4Address(h) else { throw RuntimeError("--dgram: '\(h)' is not an IPv4 address") }
            var peer: SocketAddress? = nil
            if let ph, let pp {
                guard let pa = IPv4Address(ph) else { throw RuntimeError("--dgram-peer: '\(ph)' is not an IPv4 address") }
                peer = SocketAddress(ipv4: pa.rawValue, port: pp)
            }
            let fd = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            try Sys.bind(fd, SocketAddress(ipv4: a.rawValue, port: p))
            port = GuestPort(kind: .datagram(peer: peer), epoll: epoll, mtu: mtu, logger: logger)
            port.fd = fd
            try epoll.add(fd, events: Epoll.readable, tag: LoopTag.datagram.tag)
            port.boundDescription = "dgram udp:\(Sys.localAddress(fd)?.description ?? "\(h):\(p)")"
        case .tap(let netns, let name):
            port = GuestPort(kind: .tap(virtioHeader: gatewayConfig.guestOffloads), epoll: epoll, mtu: mtu, logger: logger)
            port.fd = tapFD
            try epoll.add(tapFD, events: Epoll.readable, tag: LoopTag.tap.tag)
            port.boundDescription = "tap \(name) in netns \(netns)"
        }
        if case .streamListener = port.kind {
            // A QEMU that connected to us and went away (exit, kill, crash) is gone for good: the next connection
            // is a new guest. Its flows and host sockets go at once instead of lingering until they time out.
            // In --connect mode QEMU is the server and outlives a lost connection, so its flows are kept.
            port.disconnectHandler = { [unowned self] in
                let n = self.gateway.closeAllFlows()
                if n > 0 { self.logger.info("closed \(n) flows of the disconnected guest") }
            }
        }
        try openForwards()
        try startObservability()
    }

    deinit {
        // In the sandbox unlink is not allowed: the file stays, and the next start removes it as stale.
        if let p = socketPathToRemove, !sandboxed { unlink(p) }
        removeUnixForwardFiles()
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
        let report: Sandbox.Report
        do { report = try Sandbox.enter() } catch { throw RuntimeError("--sandbox: \(error)") }
        sandboxed = true
        var lines = ["vnet: sandbox: capabilities dropped\(report.boundingSetDropped ? " (bounding set too)" : " (bounding set kept: no CAP_SETPCAP)"), no_new_privs, seccomp filter of \(report.filterLength) instructions (other syscalls fail with EPERM)",
                     "vnet: sandbox: refused from now on: pcap-start (new files), hostfwd_add below port \(sandboxPortStart); socket files stay behind on exit"]
        if host.echoMode == .raw {
            host.echoMode = .unavailable
            lines.append("vnet: sandbox: icmp echo to the outside is off (it needs a raw socket and CAP_NET_RAW); 10.0.2.2 and the DNS address still answer ping")
        }
        return lines
    }

    struct ActiveForward {
        var rule: HostForward
        var fd: Int32
        /// The address actually bound (port 0 becomes the kernel's choice).
        var bound: String
    }

    /// Binds every hostfwd listener (an address of 0.0.0.0 binds all, as in QEMU).
    func openForwards() throws {
        for rule in options.gateway.hostForwards { try openForward(rule) }
    }

    /// Binds one hostfwd listener (at start, or hostfwd_add at run time) and returns its slot.
    @discardableResult
    func openForward(_ rule: HostForward) throws -> Int {
        if let path = rule.unixPath { return try openUnixForward(rule, path: path) }
        let slot = forwards.firstIndex(where: { $0 == nil }) ?? forwards.count
        let type = rule.proto == .tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)
        let v6 = !rule.hostAddress.isIPv4
        let fd = try Sys.socket(v6 ? AF_INET6 : AF_INET, type, 0)
        do {
            try Sys.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            // [::] binds IPv6 only, so an IPv4 rule for the same port can sit beside it.
            if v6 { try Sys.setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
            try Sys.bind(fd, RealHost.socketAddress(rule.hostAddress, port: rule.hostPort))
            if rule.proto == .tcp { try Sys.listen(fd, backlog: 128) }
            let tag = (rule.proto == .tcp ? LoopTag.forwardTCP : LoopTag.forwardUDP).tag | UInt64(slot)
            try epoll.add(fd, events: Epoll.readable, tag: tag)
        } catch {
            Sys.close(fd)
            throw RuntimeError("hostfwd \(rule.proto.rawValue):\(rule.hostAddress.bracketed):\(rule.hostPort): \(error)")
        }
        let bound = Sys.localAddress(fd).flatMap(UserNetRuntime.peer).map { "\($0.0.bracketed):\($0.1)" }
            ?? "\(rule.hostAddress.bracketed):\(rule.hostPort)"
        let active = ActiveForward(rule: rule, fd: fd, bound: bound)
        if slot == forwards.count { forwards.append(active) } else { forwards[slot] = active }
        return slot
    }

    /// Closes the listener in `slot` (hostfwd_remove). Connections it already made go on, as in QEMU; UDP
    /// flows answering through it are forgotten.
    func closeForward(_ slot: Int) {
        guard slot < forwards.count, let f = forwards[slot] else { return }
        epoll.remove(f.fd)
        if f.rule.proto == .udp { gateway.forgetForwardedUDP(listener: f.fd) }
        Sys.close(f.fd)
        removeUnixForwardFile(f.rule)
        forwards[slot] = nil
    }

    func acceptForwards(_ i: Int, now: UInt64) {
        guard i < forwards.count, let active = forwards[i] else { return }
        let (rule, fd) = (active.rule, active.fd)
        let instant = Instant(nanoseconds: now)
        if rule.proto == .tcp {
            for _ in 0 ..< 64 {
                var from = SocketAddress()
                guard let c = Sys.accept(fd, from: &from) else {
                    if epoll.pauseListenerIfShort(fd, error: errno, tag: LoopTag.forwardTCP.tag | UInt64(i)) { acceptPauses &+= 1 }
                    return
                }
                guard let (a, p) = rule.unixPath == nil ? UserNetRuntime.peer(from) : UserNetRuntime.unixClientEndpoint(),
                      gateway.acceptForwardedTCP(handle: c, from: a, port: p, to: rule.guestAddress,
                                                 port: rule.guestPort, now: instant) else {
                    vnet_abort_close(c)
                    continue
                }
            }
        } else {
            for _ in 0 ..< 64 {
                var from = SocketAddress()
                let buf = gateway.forwardReceiveBuffer
                guard case .done(let n) = Sys.receiveFrom(fd, into: buf, from: &from) else { return }
                guard n <= buf.count, let (a, p) = UserNetRuntime.peer(from) else { continue }
                gateway.forwardedUDPDatagram(listener: fd, from: a, port: p, to: rule.guestAddress,
                                             port: rule.guestPort, length: n, now: instant)
            }
        }
    }

    /// A peer's address and port, of either family.
    static func peer(_ a: SocketAddress) -> (IPAddress, UInt16)? {
        if let (v4, p) = a.ipv4 { return (IPAddress(IPv4Address(rawValue: v4)), p) }
        if let (v6, p) = a.ipv6 {
            let addr = IPv6Address(bytes: v6)
            return (addr.isIPv4Mapped ? IPAddress(IPv4Address(rawValue: UInt32(truncatingIfNeeded: addr.low))) : IPAddress(addr), p)
        }
        return nil
    }

    // MARK: Set-up helpers

    /// Removes a leftover unix socket at `path` if nothing listens on it; refuses to touch anything else.
    static func removeStaleSocket(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw RuntimeError("\(path) exists and is not a socket") }
        if let a = SocketAddress(unixPath: path), let probe = try? Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0) {
            defer { Sys.close(probe) }
            if (try? Sys.connect(probe, a)) != nil { throw RuntimeError("\(path) is in use by another process") }
        }
        unlink(path)
    }

    static func listenUnix(path: String) throws -> Int32 {
        guard let a = SocketAddress(unixPath: path) else { throw RuntimeError("socket path too long: \(path)") }
        try removeStaleSocket(path)
        let fd = try Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        do {
            try Sys.bindPrivate(fd, a)
            try Sys.listen(fd)
        } catch {
            Sys.close(fd)
            throw error
        }
        return fd
    }

    /// Creates (or attaches) the TAP `name` inside the network namespace at `netns` (a path, or a PID),
    /// brings it up with `mtu`, and returns to the original namespace. The fd keeps working from here.
    /// With `offload`, the TAP carries a virtio-net header per frame (IFF_VNET_HDR) and the kernel may hand
    /// over partial checksums and 64 KiB TCP super-segments, and take them from us: the kernel side of the link
    /// then costs one frame per 64 KiB instead of one per MSS, as with QEMU's vnet_hdr=on.
    static func openTapInNamespace(netns: String, name: String, mtu: Int, offload: Bool) throws -> Int32 {
        guard !name.isEmpty, name.utf8.count < 16 else { throw RuntimeError("--tap: interface name must be 1-15 bytes") }
        let nsPath = netns.allSatisfy(\.isNumber) ? "/proc/\(netns)/ns/net" : netns
        let target = open(nsPath, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw RuntimeError("--netns: cannot open \(nsPath): \(Sys.errnoString(errno))") }
        defer { Glibc.close(target) }
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else { throw RuntimeError("cannot open own netns: \(Sys.errnoString(errno))") }
        defer { Glibc.close(original) }
        guard vnet_setns_net(target) == 0 else { throw RuntimeError("setns(\(nsPath)): \(Sys.errnoString(errno))") }
        let fd = vnet_tap_open(name, offload ? Int32(IFF_VNET_HDR) : 0)
        let offloaded = fd >= 0 && offload ? vnet_tap_enable_offload(fd) : 0
        let up = fd >= 0 ? vnet_link_up(name, Int32(mtu)) : 0
        guard vnet_setns_net(original) == 0 else { fatalError("cannot return to the original network namespace") }
        guard fd >= 0 else { throw RuntimeError("--tap \(name): \(Sys.errnoString(-fd))") }
        guard up == 0 else { Glibc.close(fd); throw RuntimeError("--tap \(name): bringing it up: \(Sys.errnoString(-up))") }
        guard offloaded == 0 else { Glibc.close(fd); throw RuntimeError("--tap \(name): TUNSETOFFLOAD: \(Sys.errnoString(-offloaded)) (try --no-tap-offload)") }
        return fd
    }

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
        for case let f? in forwards {
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

    func writeStdout(_ s: String) {
        var line = s
        line.append("\n")
        line.withUTF8 { b in _ = Glibc.write(announceFD, b.baseAddress, b.count) }
    }

    /// Prints the start-up lines (plus `extra`), then `vnet: ready`, then serves until a signal stops it.
    public func run(extraStartupLines extra: [String] = []) throws {
        let sandboxLines = options.sandbox ? try enterSandbox() : []
        startupLines = describeStartup() + sandboxLines + extra
        for l in startupLines { writeStdout(l) }
        writeStdout("vnet: ready")
        while running {
            let now = Sys.monotonicNanoseconds()
            let instant = Instant(nanoseconds: now)
            gateway.poll(now: instant)
            if let w = resolvWatcher, let servers = w.poll(nowNanoseconds: now) {
                applyResolvers(servers)
            }
            port.tryConnect(now: now)
            reportLimits(now: now)
            port.flush(queue: gateway.toGuest, now: now)
            var timeout = Int32(clamping: max(0, Int64(gateway.nextDeadline.nanoseconds) - Int64(now)) / 1_000_000)
            timeout = min(max(timeout, 1), 1000)
            if case .streamConnector = port.kind, port.fd < 0 {
                timeout = min(timeout, Int32(clamping: max(0, Int64(port.reconnectAt) - Int64(now)) / 1_000_000))
            }
            try epoll.wait(timeoutMilliseconds: timeout) { tag, events in
                self.dispatch(tag: tag, events: events, now: Sys.monotonicNanoseconds())
            }
            flushToGuest()
            pcap?.flush()
        }
        logger.info("stopping")
        printCounters()
        stopObservability()
    }

    /// Ends `run` once `fd` becomes readable (or hangs up): `vnet run` passes QEMU's pidfd.
    public func stopWhenReadable(_ fd: Int32) throws {
        try epoll.add(fd, events: Epoll.readable, tag: LoopTag.stopWatch.tag)
    }

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
            logger.warning("out of file descriptors: accepts paused x\(epoll.listenerPauses - acceptPausesReported) since the last report (hostfwd \(acceptPauses) in all); new connections wait in the backlog (raise the fd limit, ulimit -n)")
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

    func dispatch(tag: UInt64, events: UInt32, now: UInt64) {
        let instant = Instant(nanoseconds: now)
        if let flow = FlowTag(rawValue: tag) {
            host.eventHadError = events & Epoll.error != 0
            if events & Epoll.writable != 0 { gateway.hostWritable(flow, now: instant) }
            if events & (Epoll.readable | Epoll.hangup | Epoll.error) != 0 {
                gateway.hostReadable(flow, now: instant, peerClosing: events & (Epoll.hangup | Epoll.error) != 0)
            }
            return
        }
        switch LoopTag(rawValue: UInt8(truncatingIfNeeded: tag >> 56)) {
        case .listener:
            port.accept(queue: gateway.toGuest, listenerTag: LoopTag.listener.tag)
        case .forwardTCP, .forwardUDP:
            acceptForwards(Int(UInt32(truncatingIfNeeded: tag)), now: now)
        case .connection, .datagram, .tap, .connector:
            if events & (Epoll.readable | Epoll.hangup | Epoll.error) != 0 || port.connecting {
                let held = port.holdsFramesUntilNextRead
                port.readFrames(now: now, queue: gateway.toGuest, beforeReuse: { self.gateway.flushGuestSends() }) { frame, checksumPartial in
                    if let capture = self.pcap { capture.record(frame) }
                    self.gateway.handleGuestFrame(frame, now: instant, checksumPartial: checksumPartial, held: held)
                }
                gateway.flushGuestSends()
                gateway.flushPendingAcks()
            }
            if events & Epoll.writable != 0 { flushToGuest() }
        case .stopWatch:
            running = false
        case .watcher:
            let slot = Int(UInt32(truncatingIfNeeded: tag))
            if slot < watchers.count { watchers[slot]?() }
        case .control, .controlClient, .metrics, .metricsClient:
            observabilityEvent(tag: tag, events: events)
        case .signal:
            while case let sig = vnet_signalfd_read(signalFD), sig != 0 {
                switch sig {
                case SIGINT, SIGTERM: running = false
                case SIGHUP:
                    if let w = resolvWatcher, let servers = w.poll(nowNanoseconds: now, force: true) { applyResolvers(servers) }
                case SIGUSR1: printCounters()
                default: break
                }
            }
        case .none:
            break
        }
    }

    /// All counters, one `name value` per line: gateway served/dropped, then the guest port's.
    public var counterLines: [String] {
        let p = port.counters
        var lines = gateway.counters.report
        let portLines: [(String, UInt64)] = [
            ("port_frames_in", p.framesIn), ("port_frames_out", p.framesOut), ("port_super_segments_in", p.superSegmentsIn),
            ("drop_port_frame_too_short", p.droppedShort), ("drop_port_frame_too_long", p.droppedOversize),
            ("port_desync_resets", p.desyncResets), ("port_connections", p.connections),
            ("port_rejected_connections", p.rejectedConnections), ("drop_port_send_errors", p.sendErrors),
            ("drop_tx_queue_refused", gateway.toGuest.refused), ("hostfwd_accept_pauses", acceptPauses), ("accept_pauses", epoll.listenerPauses), ("udp_gso_fallbacks", UInt64(host.udpSegmentationFallbacks)),
            ("drop_control_clients_full", control?.rejectedClients ?? 0),
        ]
        lines += portLines.filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }
        return lines
    }

    func printCounters() {
        var text = "vnet: counters\n"
        for l in counterLines { text += "  \(l)\n" }
        text += "vnet: end of counters\n"   // readers wait for this line, so an empty block is unambiguous
        text.withUTF8 { b in _ = Glibc.write(2, b.baseAddress, b.count) }
    }
}
