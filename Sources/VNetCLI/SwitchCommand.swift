// `vnet switch`: a learning L2 switch joining many VMs (and TAPs), with VLANs and per-port counters.
// `SwitchPortFlags` is shared with `vnet nat`, which is the same switch plus the built-in gateway.

import ArgumentParser
import Logging
import Dispatch
import ServiceLifecycle
import VNet
import VNetRuntime
import VNetSwitch
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

struct SwitchPortFlags: ParsableArguments {
    @Option(name: .customLong("socket"), help: "Unix socket for QEMU stream clients, one port each (PATH[,vlan=N|,trunk=A:B-C[,native=N]]). Repeatable.")
    var sockets: [String] = []

    @Option(name: .customLong("listen"), help: "TCP address for QEMU stream/socket clients (HOST:PORT[,vlan…]). Repeatable.")
    var listens: [String] = []

    @Option(name: .customLong("connect"), help: "A listening QEMU (server=on) to connect to and reconnect (unix:PATH or HOST:PORT[,vlan…]). Repeatable.")
    var connects: [String] = []

    @Option(name: .customLong("dgram"), help: "Datagram socket for -netdev dgram peers, one port per peer (PATH or HOST:PORT[,vlan…]). Repeatable.")
    var dgrams: [String] = []

    @Option(name: .customLong("vfkit"), help: "A unixgram socket for vfkit/krunkit peers (\"VFKT\" handshake, then one frame per datagram), one port per peer (PATH[,vlan…]). Repeatable.")
    var vfkits: [String] = []

    @Option(name: .customLong("mcast"), help: "A -netdev socket,mcast= group (GROUP:PORT[,localaddr=IP][,vlan…]). Repeatable.")
    var mcasts: [String] = []

    @Option(name: .customLong("tap"), help: "A TAP device created in a network namespace (NAME,netns=PATH|PID[,vlan…]). Repeatable.")
    var taps: [String] = []

    @Flag(name: .customLong("no-tap-offload"), help: "Open --tap ports without IFF_VNET_HDR: no checksum or TCP segmentation offload.")
    var noTapOffload = false
    @Option(name: .customLong("busy-poll"), help: ArgumentHelp("After a turn with events, keep polling this long before sleeping, and let ACKs wait for the reply that carries them: lower latency for request/response traffic at the cost of CPU (0: off).", valueName: "USEC"))
    var busyPoll = 0

    @Option(name: .customLong("control"), help: "A control socket (unix, mode 0600) for `vnet ctl PATH …`: ports, mac-table, leases, dns-*, stats.")
    var controlPath: String?

    @Option(name: .customLong("metrics"), help: "Serve Prometheus metrics over HTTP on [ADDR:]PORT (ADDR defaults to 127.0.0.1).")
    var metricsAddress: String?

    @Flag(name: .customLong("sandbox"), help: "After set-up, drop all capabilities and confine vnet with a seccomp allow-list (Linux; vnet switch only: vnet nat writes its lease file while running).")
    var sandbox = false

    @Option(name: .customLong("pcap"), help: "Capture every frame entering the switch, from any port, to FILE (classic pcap, Ethernet).")
    var pcapPath: String?

    @Option(name: .customLong("max-ports"), help: "Most ports at once; peers beyond are refused (default 64).")
    var maximumPorts: Int = 64

    @Option(name: .customLong("mac-quota"), help: "Most MAC addresses learned per port (default 256).")
    var macQuota: Int = 256

    @Option(name: .customLong("fdb-size"), help: "Size of the MAC table (default 8192).")
    var fdbSize: Int = 8192

    @Option(name: .customLong("ageing"), help: "Seconds a learned MAC is kept without traffic (default 300).")
    var ageing: UInt64 = 300

    @Option(name: .customLong("mtu"), help: "Largest IP packet on the segment (576-65520, default 1500).")
    var mtu: Int = 1500

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "notice"

    var hasPorts: Bool { !(sockets.isEmpty && listens.isEmpty && connects.isEmpty && dgrams.isEmpty && vfkits.isEmpty && mcasts.isEmpty && taps.isEmpty) }

    /// The switch part of the options; `defaultName` names the default socket when no port is given.
    func apply(to o: inout SwitchOptions, defaultName: String) throws -> [String] {
        guard (576 ... 65520).contains(mtu) else { throw ValidationError("--mtu must be between 576 and 65520") }
        guard (2 ... 4096).contains(maximumPorts) else { throw ValidationError("--max-ports must be between 2 and 4096") }
        guard macQuota >= 1, fdbSize >= 1, ageing >= 1 else { throw ValidationError("--mac-quota, --fdb-size and --ageing must be at least 1") }
        o.mtu = mtu
        o.maximumPorts = maximumPorts
        o.macQuotaPerPort = macQuota
        o.fdbCapacity = fdbSize
        o.ageingSeconds = ageing
        o.controlPath = controlPath
        o.pcapPath = pcapPath
        o.sandbox = sandbox
        o.tapOffload = !noTapOffload
        guard (0 ... 1000).contains(busyPoll) else { throw ValidationError("--busy-poll must be between 0 and 1000 microseconds") }
        o.busyPollMicroseconds = busyPoll
        for (flag, values) in [("socket", sockets), ("listen", listens), ("connect", connects), ("dgram", dgrams), ("vfkit", vfkits), ("mcast", mcasts), ("tap", taps)] {
            for v in values {
                switch SwitchPortSpec.parse(flag: flag, v) {
                case .success(let s): o.ports.append(s)
                case .failure(let e): throw ValidationError(e.description)
                }
            }
        }
        var extra: [String] = []
        if o.ports.isEmpty {
            let path = try DefaultSocket.path(id: defaultName)
            o.ports.append(SwitchPortSpec(endpoint: .unixListen(path: path)))
            o.socketIsDefault = true
        }
        // The arguments for the next VM, with a MAC of its own (52:54:00 is QEMU's locally administered prefix).
        if let first = o.ports.first(where: { if case .unixListen = $0.endpoint { true } else { false } }),
           case .unixListen(let path) = first.endpoint {
            extra.append("vnet: start each QEMU with: -netdev stream,id=n0,server=off,addr.type=unix,addr.path=\(path) -device virtio-net-pci,netdev=n0,mac=\(Self.freshMAC())")
            extra.append(NICModels.pickHint(netdev: "n0"))
        }
        return extra
    }

    static func freshMAC() -> String {
        var rng = SystemRandomNumberGenerator()
        let v = UInt32.random(in: 0 ... 0xFF_FFFF, using: &rng)
        return MACAddress(0x52, 0x54, 0x00, UInt8(v >> 16), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)).description
    }

    /// Bootstraps logging (and, with --metrics, the Prometheus backend), then builds the runtime; adds the
    /// metrics address to the start-up lines.
    func makeRuntime(_ options: SwitchOptions, extra: inout [String]) throws -> VirtualNetwork {
        var o = options
        // SIGINT/SIGTERM go to the ServiceGroup (runNetwork); a sandboxed switch runs its loop on the main thread and
        // takes them itself (see SwitchCommand.run).
        o.stopSignalsElsewhere = !o.sandbox
        if let m = metricsAddress {
            var host = "127.0.0.1", port: UInt16
            if let c = m.lastIndex(of: ":") {
                host = String(m[..<c])
                guard let p = UInt16(m[m.index(after: c)...]) else { throw ValidationError("--metrics: expected [ADDR:]PORT, got '\(m)'") }
                port = p
            } else {
                guard let p = UInt16(m) else { throw ValidationError("--metrics: expected [ADDR:]PORT, got '\(m)'") }
                port = p
            }
            guard let render = CLIBootstrap.metrics() else { throw ValidationError("--metrics: this build has no metrics backend") }
            o.metrics = MetricsOptions(host: host, port: port, render: render)
        }
        let logger = bootstrapLogging()
        let network: VirtualNetwork
        do { network = try VirtualNetwork(options: o, logger: logger) } catch let e as VirtualNetworkError { throw RuntimeError(e.description) }
        if let a = network.runtime.metricsAddress { extra.append("vnet: metrics on http://\(a)/metrics") }
        return network
    }

    /// Runs the network in a ServiceGroup until SIGTERM or SIGINT, which shut it down gracefully (the loop
    /// stops, the lease file is written, the counters are printed, socket files are removed).
    func runNetwork(_ network: VirtualNetwork, extra: [String]) throws {
        network.extraStartupLines = extra
        let logger = Logger(label: "vnet")
        let group = ServiceGroup(configuration: .init(services: [.init(service: network)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        let done = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        Task {
            do { try await group.run() } catch { outcome.failure = error }
            done.signal()
        }
        done.wait()   // the main thread, not a thread of the cooperative pool
        if let e = outcome.failure {
            if let s = e as? ServiceGroupError { throw RuntimeError("\(s)") }
            throw e
        }
    }

    func bootstrapLogging() -> Logger {
        CLIBootstrap.logging(Logger.Level(rawValue: logLevel) ?? .notice)
        return Logger(label: "vnet")
    }
}

struct SwitchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switch",
        abstract: "A learning L2 switch for many VMs (QEMU stream/dgram/mcast peers, TAPs), with VLANs.",
        discussion: """
        Every port flag takes an address and, optionally, VLAN membership: ',vlan=N' (access, the default is \
        VLAN 1) or ',trunk=A:B-C[,native=N]' (tagged). Without any port flag, vnet listens on \
        $XDG_RUNTIME_DIR/vnet/switch.sock. SIGUSR1 prints per-port counters.
        """)

    @OptionGroup var ports: SwitchPortFlags

    func run() throws {
        guard Logger.Level(rawValue: ports.logLevel) != nil else { throw ValidationError("--log-level: unknown level '\(ports.logLevel)'") }
        var o = SwitchOptions()
        var extra = try ports.apply(to: &o, defaultName: "switch")
        let network = try ports.makeRuntime(o, extra: &extra)
        guard !o.sandbox else {
            // Capabilities are per thread: the sandbox must be entered by the only thread there is, so the loop runs
            // here, on the main thread, with its own SIGINT/SIGTERM handling, instead of under a ServiceGroup.
            try network.runtime.run(extraStartupLines: extra)
            return
        }
        try ports.runNetwork(network, extra: extra)
    }
}

/// What the ServiceGroup's task reports back to the waiting main thread (written before the semaphore is
/// signalled, read after it is waited on).
final class Outcome: @unchecked Sendable {
    var failure: Error?
}
