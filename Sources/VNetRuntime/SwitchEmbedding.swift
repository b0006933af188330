// What the library API (target VNet) needs from `SwitchRuntime`: a command queue other threads post to, ports
// attached at run time (an fd with a framing, or a listening path), and snapshots of its tables.
//
// Theory of Operation
// -------------------
// The runtime stays single-threaded: only the loop's thread touches it. Another thread posts a closure to
// `SwitchCommandQueue` (a locked array plus an eventfd in the loop's epoll set); the loop drains the queue
// when the eventfd is readable, runs each closure with the runtime, and the closure answers its caller (the
// library resumes a continuation). Before the loop runs, and after it ended, the owner may call the runtime
// directly on its own thread. When the loop ends, closures still queued run once more, so every caller hears
// back. All of this is control plane: the data path never takes the lock.

import CVNetShim
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

/// Closures for the loop's thread, posted from any thread.
public final class SwitchCommandQueue: @unchecked Sendable {
    public typealias Command = (SwitchRuntime) -> Void
    let fd: Int32
    private var mutex = pthread_mutex_t()
    private var pending: [Command] = []
    private var closed = false

    init() throws {
        fd = try Sys.eventFD()
        pthread_mutex_init(&mutex, nil)
    }

    deinit {
        Sys.close(fd)
        pthread_mutex_destroy(&mutex)
    }

    /// Queues `command` and wakes the loop; false (and nothing queued) once the loop has ended.
    @discardableResult
    public func post(_ command: @escaping Command) -> Bool {
        pthread_mutex_lock(&mutex)
        guard !closed else { pthread_mutex_unlock(&mutex); return false }
        pending.append(command)
        pthread_mutex_unlock(&mutex)
        Sys.signalEvent(fd)
        return true
    }

    func take() -> [Command] {
        Sys.clearEvent(fd)
        pthread_mutex_lock(&mutex)
        let work = pending
        pending = []
        pthread_mutex_unlock(&mutex)
        return work
    }

    func drain(_ run: (Command) -> Void) { for c in take() { run(c) } }

    /// Refuses further posts, then runs what was queued.
    func close(_ run: (Command) -> Void) {
        pthread_mutex_lock(&mutex)
        closed = true
        pthread_mutex_unlock(&mutex)
        drain(run)
    }
}

/// A lease change, told to `SwitchRuntime.leaseEventSink`.
public enum LeaseChange: Sendable {
    /// A DHCP ACK: a new binding or a renewal.
    case granted(DHCPLease)
    /// A binding that is gone: released or declined by the guest, or expired.
    case released(DHCPLease)
}

/// How frames travel over an fd attached at run time.
public enum FrameTransport: Sendable, Equatable {
    /// One frame per datagram on a connected socket (a socketpair end).
    case datagram
    /// QEMU's stream framing: a 4-byte big-endian length, then the frame.
    case qemuStream
    /// vfkit's unixgram framing: the "VFKT" datagram first, then one frame per datagram.
    case vfkit
    /// One frame per read and write, no header (a TAP fd without IFF_VNET_HDR).
    case tap
}

/// One switch port's counters, for the library's stats.
public struct SwitchPortSnapshot: Sendable {
    public var port: Int
    public var name: String
    public var isGateway: Bool
    public var connected: Bool
    public var rxPackets: UInt64, rxBytes: UInt64, rxDrops: UInt64
    public var txPackets: UInt64, txBytes: UInt64, txDrops: UInt64
}

extension SwitchRuntime {
    /// Adds a port for an fd the caller owned (now the runtime's); returns the switch port.
    public func attach(fd: Int32, transport: FrameTransport, description: String) throws -> Int {
        do { try Sys.adopt(fd) } catch { throw RuntimeError("attach: fd \(fd): \(Sys.errnoString(error.errno))") }
        let gp: GuestPort
        switch transport {
        case .datagram, .vfkit:
            try? Sys.setOption(fd, SOL_SOCKET, SO_SNDBUF, 1 << 20)
            try? Sys.setOption(fd, SOL_SOCKET, SO_RCVBUF, 4 << 20)
            gp = GuestPort(kind: .datagram(peer: nil), epoll: epoll, mtu: options.mtu, logger: logger)
            gp.connectedDatagram = true
            gp.vfkitHandshake = transport == .vfkit
        case .qemuStream:
            gp = GuestPort(kind: .streamListener(listenFD: -1), epoll: epoll, mtu: options.mtu, logger: logger)
        case .tap:
            gp = GuestPort(kind: .tap(virtioHeader: false), epoll: epoll, mtu: options.mtu, logger: logger)
        }
        gp.fd = fd
        let i = try addLink(gp, .access(options.gatewayVLAN), description)
        do {
            try epoll.add(fd, events: Epoll.readable | (transport == .qemuStream ? Epoll.hangup : 0), tag: EventKind.port.tag(i))
        } catch {
            gp.fd = -1
            removeLink(i, reason: "epoll: \(error)")
            throw error
        }
        publishPort(i, connected: true, description: description)
        return i
    }

    /// Listens on a unix path: stream clients (one port each), or datagram/vfkit peers (one port per address).
    public func listen(unixPath path: String, transport: FrameTransport) throws {
        let endpoint: SwitchEndpoint
        switch transport {
        case .qemuStream: endpoint = .unixListen(path: path)
        case .datagram: endpoint = .dgramUnix(path: path)
        case .vfkit: endpoint = .vfkitUnix(path: path)
        case .tap: throw RuntimeError("listen: a TAP is not something to listen on; attach its fd")
        }
        try open(SwitchPortSpec(endpoint: endpoint, vlan: .access(options.gatewayVLAN)), tapFD: nil)
    }

    /// Removes a port (closing its fd); false when there is none.
    @discardableResult
    public func detach(port i: Int) -> Bool {
        guard i >= 0, i < links.count, links[i] != nil else { return false }
        removeLink(i, reason: "detached")
        return true
    }

    /// Every switch port with its counters (the gateway's included).
    public var portSnapshots: [SwitchPortSnapshot] {
        fabric.ports.enumerated().compactMap { i, p in
            guard let p else { return nil }
            let k = p.counters
            var rxDrops = k.rxDrops
            if let l = links[i] {
                if l.port.isStream { l.port.syncCounters() }
                rxDrops &+= l.port.counters.droppedShort &+ l.port.counters.droppedOversize
            }
            return SwitchPortSnapshot(port: i, name: p.name, isGateway: i == gatewaySwitchPort,
                                      connected: i == gatewaySwitchPort || (links[i]?.port.isConnected ?? false),
                                      rxPackets: k.rxPackets, rxBytes: k.rxBytes, rxDrops: rxDrops,
                                      txPackets: k.txPackets, txBytes: k.txBytes, txDrops: k.txDrops)
        }
    }

    /// The learned MAC addresses: VLAN, MAC, port, seconds since last seen.
    public var macTableSnapshot: [(vlan: UInt16, mac: MACAddress, port: Int, secondsSinceSeen: UInt64)] {
        let t = Instant(nanoseconds: Sys.monotonicNanoseconds())
        return fabric.fdb.entries.map { (k, e) in (k.vlan, k.mac, e.port, (t - e.lastSeen).seconds) }
            .sorted { ($0.vlan, $0.mac.rawValue) < ($1.vlan, $1.mac.rawValue) }
    }

    /// The DHCP leases now.
    public var leaseSnapshot: [DHCPLease] {
        gateway?.dhcp.leases(now: Instant(nanoseconds: Sys.monotonicNanoseconds())) ?? []
    }

    /// Names the gateway's DNS answers beside the records (`--host`); lease names are added as leases come.
    public func setStaticName(_ name: String, address: IPv4Address?) {
        options.staticNames[name] = address
        publishedNames = [:]
        publishLeaseNames(now: Instant(nanoseconds: Sys.monotonicNanoseconds()))
    }
}
