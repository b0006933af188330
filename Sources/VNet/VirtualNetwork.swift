// VNet: the embeddable network. One `VirtualNetwork` is `vnet nat`'s machinery (a learning switch with the
// built-in gateway: DHCP, DNS, NAT to host sockets, port forwards) behind a small, Sendable, async API.
//
// Theory of Operation
// -------------------
// The network owns a `SwitchRuntime` (VNetRuntime). Its data path runs on one thread of its own, started by
// `run()` (the `Service` entry point): one epoll set, no locks and no allocation per packet. Async callers
// never touch the runtime: `perform` posts a closure to the runtime's command queue (an eventfd in the epoll
// set plus a locked array) and awaits a continuation that the loop resumes. Before `run()` starts the loop
// (and after it ended) no other thread uses the runtime, so `perform` runs the closure on the caller's thread,
// under the state lock. `run()` returns when the loop stops: on graceful shutdown (a ServiceGroup on SIGTERM),
// on task cancellation, or on `shutdown()`. Lease events are produced on the loop's thread and fanned out to
// every `leaseEvents()` stream. The runtime installs no signal handler here (it only ignores SIGPIPE, so a
// peer that goes away cannot kill the process) and prints nothing: the embedder owns the process.
// `run()` needs one task to start the thread; after that the cooperative pool is never used by the data path.
//
// Both families: guests get IPv4 by DHCP and IPv6 by SLAAC (`Configuration.ipv6Prefix`); port forwards listen on
// either family and reach a guest's IPv4 or IPv6 address, and so may upstream DNS servers; static leases are IPv4.

import Foundation
import Logging
import ServiceLifecycle
import VNetGateway
import VNetHost
import VNetRuntime
import VNetServices
import VNetSwitch
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

/// A virtual Ethernet network for VMs: a learning switch joined to vnet's gateway (DHCP, DNS, NAT to the
/// host, port forwards), run as a swift-service-lifecycle `Service`.
///
/// Create it with a ``Configuration``, attach VMs (``attachDatagramPair(mac:)``, ``attach(fd:framing:name:)``,
/// ``listen(unixPath:framing:)``), then run it in a `ServiceGroup`. The data path runs on a thread of its own;
/// every method is safe to call from any task.
public final class VirtualNetwork: Service, @unchecked Sendable {
    enum State { case idle, running, finished }

    package let runtime: SwitchRuntime
    /// Lines the CLI prints after the runtime's own start-up lines.
    package var extraStartupLines: [String] = []
    let logger: Logger
    private let lock = NSRecursiveLock()   // perform() holds it while a closure runs before the loop starts
    private var state = State.idle
    private var subscribers: [UInt64: AsyncStream<LeaseEvent>.Continuation] = [:]
    private var nextSubscriber: UInt64 = 0

    /// Opens the network's sockets (port forwards, listeners in the configuration) and validates the
    /// configuration. Nothing runs until ``run()``.
    /// - Parameters:
    ///   - configuration: addressing, DHCP, DNS and MTU.
    ///   - logger: where the network logs; the library never bootstraps a logging backend.
    public convenience init(configuration: Configuration = Configuration(), logger: Logger) throws {
        try self.init(options: try configuration.switchOptions(), logger: logger)
        if configuration.upstreamDNS.count > 1 {   // the options carry one; the gateway fails over between all
            runtime.gateway?.setDNSUpstreams(configuration.upstreamDNS.map { ($0.wire, UInt16(53)) })
        }
    }

    /// A network from the runtime's own options (the CLI's `vnet switch` and `vnet nat`, which have more knobs:
    /// VLANs, listeners, TAPs, a control socket, metrics, a capture).
    package init(options: SwitchOptions, logger: Logger) throws {
        self.logger = logger
        do {
            runtime = try SwitchRuntime(options: options, logger: logger)
        } catch let e as RuntimeError {
            throw VirtualNetworkError.system(e.description)
        }
        runtime.leaseEventSink = { [unowned self] change in self.publish(change) }
    }

    // MARK: Service

    /// Runs the data path on a thread of its own until graceful shutdown, cancellation or ``shutdown()``.
    ///
    /// Call it once (a `ServiceGroup` does). Lease event streams finish when it returns.
    public func run() async throws {
        let starting = lock.withLock { () -> Bool in
            guard state == .idle else { return false }
            state = .running
            return true
        }
        guard starting else { throw VirtualNetworkError.notRunning }
        nonisolated(unsafe) let runtime = self.runtime
        let extra = extraStartupLines   // used by the loop thread only, from here on
        let failure: String? = await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (done: CheckedContinuation<String?, Never>) in
                    let thread = Thread {
                        var failure: String? = nil
                        do { try runtime.run(extraStartupLines: extra) } catch { failure = "\(error)" }
                        done.resume(returning: failure)
                    }
                    thread.name = "vnet-loop"
                    thread.stackSize = 1 << 20
                    thread.start()
                }
            } onCancel: {
                self.shutdown()
            }
        } onGracefulShutdown: {
            self.shutdown()
        }
        let open = lock.withLock { () -> [UInt64: AsyncStream<LeaseEvent>.Continuation] in
            state = .finished
            defer { subscribers = [:] }
            return subscribers
        }
        for (_, c) in open { c.finish() }
        if let failure { throw VirtualNetworkError.system(failure) }
    }

    /// Asks the data path to stop; ``run()`` then returns. Safe from any thread, and more than once.
    public func shutdown() {
        runtime.commands.post { $0.stop() }
    }

    /// Runs `body` with the runtime on the loop's thread (or on this one while the loop is not running).
    func perform<T: Sendable>(_ body: @escaping @Sendable (SwitchRuntime) throws -> T) async throws -> T {
        if let direct = lock.withLock({ () -> Result<T, Error>? in state != .running ? Result { try body(runtime) } : nil }) {
            return try direct.get()
        }
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            let posted = runtime.commands.post { rt in c.resume(with: Result { try body(rt) }) }
            if !posted { c.resume(throwing: VirtualNetworkError.notRunning) }
        }
    }

    // MARK: Attaching VMs

    /// Makes a connected datagram socket pair, keeps one end as a new port and returns the other for a VM
    /// (one Ethernet frame per datagram: Virtualization.framework's file-handle attachment, krunkit).
    ///
    /// Both ends have 1 MiB send and 4 MiB receive buffers. The caller owns the returned descriptor.
    /// - Parameter mac: the VM NIC's address; nil picks a random 52:54:00 one. It names the port; the switch
    ///   learns addresses from traffic and does not enforce it.
    public func attachDatagramPair(mac: EthernetAddress? = nil) async throws -> DatagramAttachment {
        let mac = mac ?? .random()
        let (ours, theirs): (Int32, Int32)
        do throws(SyscallError) { (ours, theirs) = try Sys.socketPair(Int32(SOCK_DGRAM.rawValue)) } catch {
            throw VirtualNetworkError.system("socketpair: \(Sys.errnoString(error.errno))")
        }
        for fd in [ours, theirs] { Sys.setBufferSizes(fd, send: 1 << 20, receive: 4 << 20) }
        do {
            let port = try await attach(fd: ours, framing: .datagram, name: "vm \(mac)")
            return DatagramAttachment(fileDescriptor: theirs, port: port, mac: mac)
        } catch {
            close(theirs)
            throw error
        }
    }

    /// Adds a port for an open descriptor, which the network then owns (and closes when the port goes).
    /// - Parameters:
    ///   - fd: a connected datagram or stream socket, or a TAP fd.
    ///   - framing: how frames travel over it.
    ///   - name: a label for logs and ``portStatistics()``.
    @discardableResult
    public func attach(fd: Int32, framing: Framing, name: String? = nil) async throws -> PortID {
        let label = name ?? "fd \(fd) (\(framing))"
        return try await perform { rt in
            do {
                return PortID(rawValue: try rt.attach(fd: fd, transport: framing.transport, description: label))
            } catch {
                close(fd)
                throw VirtualNetworkError.system("\(error)")
            }
        }
    }

    /// Listens on a unix socket path (mode 0600; a stale socket file is replaced).
    ///
    /// With `.qemuStream`, each client connection is a port (`-netdev stream,addr.type=unix,...`). With
    /// `.datagram` or `.vfkit`, the path is a unixgram socket and each peer address is a port (vfkit's
    /// `--device virtio-net,unixSocketPath=PATH`). `.tap` cannot be listened on.
    public func listen(unixPath: String, framing: Framing) async throws {
        try await perform { rt in
            do { try rt.listen(unixPath: unixPath, transport: framing.transport) } catch { throw VirtualNetworkError.system("\(error)") }
        }
    }

    /// Removes a port and closes its descriptor; false when there was no such port.
    @discardableResult
    public func detach(_ port: PortID) async throws -> Bool {
        try await perform { $0.detach(port: port.rawValue) }
    }


    // MARK: Port forwards

    /// Forwards a host address and port to a guest. Host port 0 picks a free port (see the result).
    ///
    /// - Throws: ``VirtualNetworkError/unsupported(_:)`` for IPv6 addresses (not yet supported),
    ///   ``VirtualNetworkError/invalid(_:)`` for a bad rule, ``VirtualNetworkError/system(_:)`` when the host
    ///   port cannot be bound.
    @discardableResult
    public func addPortForward(_ forward: PortForward) async throws -> PortForward {
        let map = try forward.portMap()
        return try await perform { rt in
            do {
                let slot = try rt.addPortMap(map)
                let bound = rt.activePortMaps.first { $0.slot == slot }?.bound ?? ""
                var f = forward
                if let c = bound.lastIndex(of: ":"), let p = UInt16(bound[bound.index(after: c)...]) { f.hostPort = p }
                return f
            } catch {
                throw VirtualNetworkError.system("\(error)")
            }
        }
    }

    /// Stops forwarding `forward` (matched by protocol, host address and host port); false when none matched.
    @discardableResult
    public func removePortForward(_ forward: PortForward) async throws -> Bool {
        try await perform { rt in
            for m in rt.activePortMaps where PortForward(m.map, bound: m.bound).matches(forward) {
                return rt.removePortMap(slot: m.slot)
            }
            return false
        }
    }

    /// The port forwards in place, with the host ports actually bound.
    public func portForwards() async throws -> [PortForward] {
        try await perform { rt in rt.activePortMaps.map { PortForward($0.map, bound: $0.bound) } }
    }

    // MARK: DNS, leases

    /// Answers `record` from the gateway's DNS, before lease names and before anything is forwarded upstream.
    public func addDNSRecord(_ record: DNSRecord) async throws {
        try await perform { rt in
            guard let gw = rt.gateway else { throw VirtualNetworkError.notRunning }
            do { try gw.localDNS.add(name: record.name, type: record.type.local, value: record.value, ttl: record.ttl) } catch {
                throw VirtualNetworkError.invalid("DNS record \(record.name): \(error)")
            }
        }
    }

    /// Removes the records of `name` (of one type, when given); returns how many went.
    @discardableResult
    public func removeDNSRecords(name: String, type: DNSRecord.RecordType? = nil) async throws -> Int {
        try await perform { rt in rt.gateway?.localDNS.remove(name: name, type: type?.local) ?? 0 }
    }

    /// The local DNS records (lease names are not included).
    public func dnsRecords() async throws -> [DNSRecord] {
        try await perform { rt in
            (rt.gateway?.localDNS.records ?? []).compactMap { r in
                DNSRecord.RecordType(r.type).map { DNSRecord(name: r.name, type: $0, value: r.value, ttl: r.ttl) }
            }
        }
    }

    /// Reserves an address in the DHCP range for a MAC (replacing a static lease of the same MAC).
    public func addStaticLease(_ lease: StaticLease) async throws {
        try await perform { rt in
            guard let gw = rt.gateway else { throw VirtualNetworkError.notRunning }
            let s = try VirtualNetwork.Configuration.check(lease, first: gw.config.dhcpStart.rawValue,
                                                           last: gw.config.dhcpStart.rawValue &+ UInt32(gw.config.dhcpPoolSize - 1))
            var all = gw.dhcp.config.staticLeases.filter { $0.mac != s.mac }
            guard !all.contains(where: { $0.address == s.address }) else {
                throw VirtualNetworkError.invalid("static lease \(lease.address): that address is reserved for another MAC")
            }
            all.append(s)
            gw.setStaticLeases(all)
        }
    }

    /// Drops the static lease of a MAC; false when it had none.
    @discardableResult
    public func removeStaticLease(mac: EthernetAddress) async throws -> Bool {
        try await perform { rt in
            guard let gw = rt.gateway else { return false }
            let before = gw.dhcp.config.staticLeases
            let after = before.filter { $0.mac.rawValue != mac.rawValue }
            guard after.count != before.count else { return false }
            gw.setStaticLeases(after)
            return true
        }
    }

    /// The DHCP leases now, dynamic and static.
    public func leases() async throws -> [Lease] {
        try await perform { rt in rt.leaseSnapshot.map(Lease.init) }
    }

    /// A stream of lease events: a guest got or renewed a lease, or one is gone (released or expired).
    ///
    /// Each call makes a new subscriber; events from before the call are not replayed. The stream finishes
    /// when the network stops.
    public func leaseEvents() -> AsyncStream<LeaseEvent> {
        let (stream, continuation) = AsyncStream<LeaseEvent>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        lock.lock()
        if state == .finished {
            lock.unlock()
            continuation.finish()
            return stream
        }
        let id = nextSubscriber
        nextSubscriber &+= 1
        subscribers[id] = continuation
        lock.unlock()
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            self.lock.lock()
            self.subscribers[id] = nil
            self.lock.unlock()
        }
        return stream
    }

    func publish(_ change: LeaseChange) {
        let event: LeaseEvent
        switch change {
        case .granted(let l): event = .granted(Lease(l))
        case .released(let l): event = .released(Lease(l))
        }
        lock.lock()
        let targets = Array(subscribers.values)
        lock.unlock()
        for c in targets { c.yield(event) }
    }

    // MARK: Tables and counters

    /// Every port of the switch with its counters; the gateway's port is included.
    public func portStatistics() async throws -> [PortStatistics] {
        try await perform { rt in rt.portSnapshots.map(PortStatistics.init) }
    }

    /// The switch's learned MAC addresses.
    public func macTable() async throws -> [MACTableEntry] {
        try await perform { rt in
            rt.macTableSnapshot.map { MACTableEntry(vlan: $0.vlan, mac: EthernetAddress(rawValue: $0.mac.rawValue), port: PortID(rawValue: $0.port),
                                                    secondsSinceSeen: $0.secondsSinceSeen) }
        }
    }

    /// Every counter (switch, ports, gateway drops by reason) as `name value` pairs, as `vnet ctl stats` prints.
    public func counters() async throws -> [(name: String, value: UInt64)] {
        try await perform { rt in
            rt.counterLines.compactMap { line in
                let p = line.split(separator: " ")
                guard p.count == 2, let v = UInt64(p[1]) else { return nil }
                return (String(p[0]), v)
            }
        }
    }
}

/// What can go wrong with a ``VirtualNetwork`` call.
public enum VirtualNetworkError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The configuration or an argument is not valid.
    case invalid(String)
    /// The network cannot do this yet (for now: anything IPv6).
    case unsupported(String)
    /// A system call failed (a port in use, no permission, too many ports).
    case system(String)
    /// The network has stopped, or ``VirtualNetwork/run()`` was called twice.
    case notRunning

    /// One line.
    public var description: String {
        switch self {
        case .invalid(let s): "invalid: \(s)"
        case .unsupported(let s): "unsupported: \(s)"
        case .system(let s): s
        case .notRunning: "the network is not running"
        }
    }
}
