// `vnet user`: QEMU's `-netdev user` network, served over a unix/TCP stream, a datagram socket or a TAP.

import ArgumentParser
import Logging
import VNetGateway
import VNetRuntime
#if canImport(Glibc)
import Glibc
#endif

struct UserCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user",
        abstract: "Run a user-mode network (QEMU's -netdev user) for one guest.",
        discussion: """
        OPTIONS-STRING is QEMU's -netdev user option string, verbatim, e.g. 'net=10.0.2.0/24,dns=10.0.2.3'
        (a leading 'user,' and 'id=…' are accepted). With no transport flag, vnet listens on a unix socket under
        $XDG_RUNTIME_DIR/vnet/ (or /tmp/vnet-UID/) and prints the QEMU arguments to use.
        """)

    @Argument(help: "QEMU -netdev user options (net=, host=, dhcpstart=, dns=, dnssearch=, domainname=, hostname=, id=, restrict=off, ipv6=off).")
    var optionStrings: [String] = []

    @Option(name: .customLong("socket"), help: "Listen on this unix stream socket (mode 0600) for -netdev stream/socket.")
    var socketPath: String?

    @Option(name: .customLong("listen"), help: "Listen on TCP HOST:PORT for -netdev stream (inet) or -netdev socket,connect=.")
    var listenAddress: String?

    @Option(name: .customLong("connect"), help: "Connect to a listening QEMU (server=on): unix:PATH or HOST:PORT; reconnects.")
    var connectAddress: String?

    @Option(name: .customLong("dgram"), help: "One frame per datagram: a unix socket PATH (or unix:PATH), or udp HOST:PORT to bind.")
    var dgramAddress: String?

    @Option(name: .customLong("dgram-peer"), help: "QEMU's datagram address (PATH or HOST:PORT); learned from its first datagram if omitted.")
    var dgramPeer: String?

    @Option(name: .customLong("vfkit"), help: "A unixgram socket PATH for vfkit/krunkit (--device virtio-net,unixSocketPath=PATH): the \"VFKT\" handshake, then one frame per datagram.")
    var vfkitPath: String?

    @Option(name: .customLong("netns"), help: "Network namespace for --tap: a path such as /run/netns/NAME, or a PID.")
    var netns: String?

    @Option(name: .customLong("tap"), help: "Create a TAP device with this name inside --netns and serve it (as slirp4netns does).")
    var tapName: String?

    @Flag(name: .customLong("no-tap-offload"), help: "Open --tap without IFF_VNET_HDR: no checksum or TCP segmentation offload.")
    var noTapOffload = false
    @Option(name: .customLong("busy-poll"), help: ArgumentHelp("After a turn with events, keep polling this long before sleeping, and let ACKs wait for the reply that carries them: lower latency for request/response traffic at the cost of CPU (0: off).", valueName: "USEC"))
    var busyPoll = 0

    @Option(name: .customLong("mtu"), help: "MTU advertised over DHCP and accepted on frames (576-65520).")
    var mtu: Int = 1500

    @Option(name: .customLong("resolv-conf"), help: "Read upstream DNS servers from this file (re-read on change).")
    var resolvConf: String = "/etc/resolv.conf"

    @Option(name: .customLong("dns-upstream"), help: "Forward DNS to ADDR:PORT instead of resolv.conf's servers.")
    var dnsUpstream: String?

    @Flag(name: .customLong("no-map-host-loopback"), help: "Do not let guest traffic to the gateway address reach host loopback.")
    var noMapHostLoopback = false

    @OptionGroup var policy: GatewayPolicyFlags

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "notice"

    @Option(name: .customLong("control"), help: "Serve the control socket at PATH (unix, mode 0600; JSON lines); drive it with 'vnet ctl'.")
    var controlPath: String?

    @Option(name: .customLong("pcap"), help: "Capture the guest port's frames to FILE (classic pcap, Ethernet) from the start.")
    var pcapPath: String?

    @Option(name: .customLong("pcap-rotate"), help: "With --pcap: once FILE reaches BYTES, rename it to FILE.1 and start a new one.")
    var pcapRotate: UInt64?

    @Option(name: .customLong("metrics"), help: "Serve Prometheus metrics over HTTP on [ADDR:]PORT (ADDR defaults to 127.0.0.1).")
    var metricsAddress: String?

    @Flag(name: .customLong("sandbox"), help: "After set-up, drop all capabilities and confine vnet with a seccomp allow-list (Linux); refuses guestfwd cmd:, --pcap-rotate, pcap-start and low-port hostfwd_add.")
    var sandbox = false

    @Flag(name: .customLong("libvirt"), help: "Print the libvirt <interface> XML for --listen (type='client') or --dgram HOST:PORT (type='udp').")
    var libvirt = false

    func makeOptions() throws -> (RuntimeOptions, [String]) {
        var gw: GatewayConfig
        do {
            gw = try UserNetOptions.parse(optionStrings.joined(separator: ","))
        } catch {
            throw ValidationError(error.message)
        }
        guard (GatewayConfig.minimumMTU ... GatewayConfig.maximumMTU).contains(mtu) else {
            throw ValidationError("--mtu must be between \(GatewayConfig.minimumMTU) and \(GatewayConfig.maximumMTU)")
        }
        gw.mtu = mtu
        gw.mapGatewayToHostLoopback = !noMapHostLoopback
        try policy.apply(to: &gw, singleGuest: true)

        let chosen = [socketPath != nil, listenAddress != nil, connectAddress != nil, dgramAddress != nil, vfkitPath != nil, tapName != nil].filter { $0 }.count
        guard chosen <= 1 else { throw ValidationError("choose one transport: --socket, --listen, --connect, --dgram, --vfkit or --tap") }
        if dgramPeer != nil && dgramAddress == nil { throw ValidationError("--dgram-peer needs --dgram") }
        if (netns != nil) != (tapName != nil) { throw ValidationError("--tap and --netns go together") }

        var extra: [String] = []
        let transport: GuestTransport
        var isDefault = false
        if let p = socketPath {
            transport = .unixListen(path: p)
        } else if let l = listenAddress {
            let (h, port) = try hostPort(l, flag: "--listen")
            transport = .tcpListen(host: h, port: port)
        } else if let c = connectAddress {
            if c.hasPrefix("unix:") {
                transport = .connectUnix(path: String(c.dropFirst(5)))
            } else {
                let (h, port) = try hostPort(c, flag: "--connect")
                transport = .connectTCP(host: h, port: port)
            }
        } else if let d = dgramAddress {
            if d.hasPrefix("unix:") || d.contains("/") || !d.contains(":") {
                let path = d.hasPrefix("unix:") ? String(d.dropFirst(5)) : d
                var peer = dgramPeer
                if let p = peer, p.hasPrefix("unix:") { peer = String(p.dropFirst(5)) }
                transport = .dgramUnix(path: path, peer: peer)
            } else {
                let (h, port) = try hostPort(d, flag: "--dgram")
                var ph: String? = nil, pp: UInt16? = nil
                if let peer = dgramPeer { let (a, b) = try hostPort(peer, flag: "--dgram-peer"); ph = a; pp = b }
                transport = .dgramUDP(host: h, port: port, peerHost: ph, peerPort: pp)
            }
        } else if let v = vfkitPath {
            transport = .dgramUnix(path: v.hasPrefix("unixgram:") ? String(v.dropFirst(9)) : v, peer: nil)
        } else if let t = tapName, let n = netns {
            transport = .tap(netns: n, name: t)
        } else {
            let path = try DefaultSocket.path(id: gw.id)
            transport = .unixListen(path: path)
            isDefault = true
            let id = gw.id ?? "net0"
            extra.append("vnet: start QEMU with: -netdev stream,id=\(id),server=off,addr.type=unix,addr.path=\(path) -device virtio-net-pci,netdev=\(id)")
            extra.append(NICModels.pickHint(netdev: id))
        }
        if libvirt { extra += try LibvirtXML.lines(for: transport) }
        var opts = RuntimeOptions(gateway: gw, transport: transport)
        opts.resolvConfPath = resolvConf
        opts.transportIsDefault = isDefault
        opts.vfkitHandshake = vfkitPath != nil
        opts.tapOffload = !noTapOffload
        guard (0 ... 1000).contains(busyPoll) else { throw ValidationError("--busy-poll must be between 0 and 1000 microseconds") }
        opts.busyPollMicroseconds = busyPoll
        opts.controlPath = controlPath
        opts.pcapPath = pcapPath
        if pcapRotate != nil && pcapPath == nil { throw ValidationError("--pcap-rotate needs --pcap") }
        opts.pcapRotateBytes = pcapRotate
        opts.sandbox = sandbox
        if let m = metricsAddress {
            var (h, p) = ("127.0.0.1", UInt16(0))
            if m.contains(":") { (h, p) = try hostPort(m, flag: "--metrics") } else { p = try metricsPort(m) }
            // A placeholder: `run` installs the backend's renderer (only the executable bootstraps metrics).
            opts.metrics = MetricsOptions(host: h, port: p, render: { [] })
        }
        if let u = dnsUpstream {
            let (h, p) = try hostPort(u, flag: "--dns-upstream", allowIPv6: true)
            opts.dnsUpstream = (h, p)
        }
        return (opts, extra)
    }

    func hostPort(_ s: String, flag: String, allowIPv6: Bool = false) throws -> (String, UInt16) {
        guard let colon = s.lastIndex(of: ":") else { throw ValidationError("\(flag): expected HOST:PORT, got '\(s)'") }
        var h = String(s[..<colon])
        guard let p = UInt16(s[s.index(after: colon)...]) else { throw ValidationError("\(flag): bad port in '\(s)'") }
        if allowIPv6, h.hasPrefix("["), h.hasSuffix("]"), IPv6Address(h.dropFirst().dropLast()) != nil {
            h = String(h.dropFirst().dropLast())
            return (h, p)
        }
        guard IPv4Address(h) != nil else {
            throw ValidationError("\(flag): '\(h)' is not an IPv4 address\(allowIPv6 ? " (an IPv6 one goes in brackets: [::1]:53)" : "")")
        }
        return (h, p)
    }

    func metricsPort(_ s: String) throws -> UInt16 {
        guard let p = UInt16(s) else { throw ValidationError("--metrics: expected [ADDR:]PORT, got '\(s)'") }
        return p
    }

    func run() throws {
        let (options, extra) = try makeOptions()
        let (runtime, lines) = try startRuntime(options, extra: extra)
        try runtime.run(extraStartupLines: lines)
    }

    /// Bootstraps logging and (with --metrics) the Prometheus backend, then builds the runtime. Returns it with
    /// the start-up lines to print. Shared with `vnet run`.
    func startRuntime(_ options: RuntimeOptions, extra: [String]) throws -> (UserNetRuntime, [String]) {
        var options = options, extra = extra
        if var m = options.metrics {
            guard let render = CLIBootstrap.metrics() else { throw ValidationError("--metrics: this build has no metrics backend") }
            m.render = render
            options.metrics = m
        }
        CLIBootstrap.logging(Logger.Level(rawValue: logLevel) ?? .notice)
        let logger = Logger(label: "vnet")
        let runtime = try UserNetRuntime(options: options, logger: logger)
        if let p = options.controlPath { extra.append("vnet: control socket \(p) (vnet ctl \(p) help)") }
        if let p = options.pcapPath { extra.append("vnet: capturing to \(p)") }
        if let a = runtime.metricsAddress { extra.append("vnet: metrics on http://\(a)/metrics") }
        return (runtime, extra)
    }
}

import VNetWire

/// The default unix socket: $XDG_RUNTIME_DIR/vnet/NAME.sock, else /tmp/vnet-UID/NAME.sock (a 0700 folder
/// that must belong to us and must not be a symlink).
enum DefaultSocket {
    static func path(id: String?) throws -> String {
        let name = (id ?? "user") + ".sock"
        guard !name.contains("/") else { throw ValidationError("id must not contain '/'") }
        let dir: String
        if let xdg = getenv("XDG_RUNTIME_DIR"), let s = Optional(String(cString: xdg)), !s.isEmpty {
            dir = s + "/vnet"
        } else {
            dir = "/tmp/vnet-\(getuid())"
        }
        if mkdir(dir, 0o700) != 0 && errno != EEXIST { throw ValidationError("cannot create \(dir): \(String(cString: strerror(errno)))") }
        var st = stat()
        guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == getuid() else {
            throw ValidationError("\(dir) is not a directory owned by this user")
        }
        guard st.st_mode & 0o077 == 0 else { throw ValidationError("\(dir) must not be accessible by others (mode 0700)") }
        return dir + "/" + name
    }
}
