// DHCP and DNS forwarding on a kernel NAT bridge, over ordinary UDP sockets.
//
// Theory of Operation
// -------------------
// DHCP: a socket on 0.0.0.0:67 bound to the bridge (SO_BINDTODEVICE) hands each request to the same pure
// DHCPServer the user-mode gateway uses. Clients without an address get their replies by broadcast
// (255.255.255.255:68 out of the bridge), so no ARP entry has to be forced; a client that already has its
// address (renewal) gets a unicast reply.
//
// DNS: a socket on GATEWAY:53 forwards each query to one upstream server through one connected socket,
// with the query's id replaced by a fresh one; the answer gets the client's id back and goes to the client.
// At most `pendingCapacity` queries are outstanding; each is forgotten after `queryTimeout`. A query or answer
// shorter than a DNS header, or an answer nobody asked for, is dropped and counted.
//
// The sockets are served on the one `EventLoop` (VNetHost), under the registry's `dhcpSocket`, `dnsSocket` and
// `dnsUpstream` kinds, beside whatever else the caller registered (the control socket); buffers are allocated
// once.

import CVNetShim
import VNetBuffers
import VNetHost
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public final class KernelNatServices {
    public struct Counters: Sendable {
        public var dhcpReplies = 0
        public var dhcpDropped = 0
        public var dnsForwarded = 0
        public var dnsAnswered = 0
        public var dnsDropped = 0
    }

    struct Pending {
        var client: SocketAddress
        var clientID: UInt16
        var deadline: UInt64
    }

    public static let pendingCapacity = 1024
    static let queryTimeoutNanoseconds: UInt64 = 10_000_000_000

    var dhcp: DHCPServer
    let bridge: String
    let dhcpSocket: Int32
    let dnsSocket: Int32?
    let upstreamSocket: Int32?
    var pending: [UInt16: Pending] = [:]
    var nextID: UInt16 = UInt16(truncatingIfNeeded: getpid())
    public private(set) var counters = Counters()
    /// Called for every DHCP ACK that binds an address (for the control socket's LEASE_GRANTED event).
    public var onLease: ((IPv4Address, MACAddress) -> Void)?
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
    let replyBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1500, alignment: 8)

    /// `dnsUpstream` nil: no DNS service (the DHCP replies still name the gateway).
    public init(bridge: String, dhcpConfig: DHCPConfig, gateway: IPv4Address, dnsUpstream: (IPv4Address, UInt16)?) throws {
        self.bridge = bridge
        dhcp = DHCPServer(config: dhcpConfig)
        dhcpSocket = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try Sys.setOption(dhcpSocket, SOL_SOCKET, SO_REUSEADDR, 1)
        try Sys.setOption(dhcpSocket, SOL_SOCKET, SO_BROADCAST, 1)
        try Self.bindToDevice(dhcpSocket, bridge)
        do { try Sys.bind(dhcpSocket, SocketAddress(ipv4: 0, port: 67)) } catch let e as SyscallError {
            throw KernelError("listen for DHCP on \(bridge) (port 67)", errno: e.errno)
        }
        if let (addr, port) = dnsUpstream {
            let s = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            do { try Sys.bind(s, SocketAddress(ipv4: gateway.rawValue, port: 53)) } catch let e as SyscallError {
                throw KernelError("listen for DNS on \(gateway):53", errno: e.errno)
            }
            dnsSocket = s
            let u = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            _ = try Sys.connect(u, SocketAddress(ipv4: addr.rawValue, port: port))
            upstreamSocket = u
        } else {
            dnsSocket = nil
            upstreamSocket = nil
        }
    }

    deinit {
        Sys.close(dhcpSocket)
        if let s = dnsSocket { Sys.close(s) }
        if let s = upstreamSocket { Sys.close(s) }
        buffer.deallocate()
        replyBuffer.deallocate()
    }

    static func bindToDevice(_ fd: Int32, _ name: String) throws {
        let r = name.withCString { setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, $0, socklen_t(strlen($0) + 1)) }
        guard r == 0 else { throw KernelError("bind the DHCP socket to \(name)", errno: errno) }
    }

    /// Serves on `loop` until it stops (a stop signal); returns the signal number. Events of other kinds (the
    /// control socket's) go to `other`.
    public func run(on loop: EventLoop, other: (EventKind, Int, UInt32) -> Void = { _, _, _ in }) throws -> Int32 {
        try loop.add(dhcpSocket, events: Epoll.readable, kind: .dhcpSocket)
        if let d = dnsSocket, let u = upstreamSocket {
            try loop.add(d, events: Epoll.readable, kind: .dnsSocket)
            try loop.add(u, events: Epoll.readable, kind: .dnsUpstream)
        }
        try loop.run(turn: { _ in
            expirePending()
            return nil
        }, dispatch: { kind, index, events, _ in
            switch kind {
            case .dhcpSocket: serveDHCP()
            case .dnsSocket: forwardQueries()
            case .dnsUpstream: returnAnswers()
            default: other(kind, index, events)
            }
        })
        return loop.stopSignal
    }

    /// Every binding the DHCP server knows, for status output.
    public var leases: [DHCPLease] { dhcp.leases(now: Instant(nanoseconds: Sys.monotonicNanoseconds())) }

    func serveDHCP() {
        var from = SocketAddress()
        while case .done(let n) = Sys.receiveFrom(dhcpSocket, into: buffer, from: &from) {
            guard n <= buffer.count, let m = try? DHCPMessage.parse(UnsafeRawBufferPointer(rebasing: buffer[0 ..< n])) else {
                counters.dhcpDropped += 1
                continue
            }
            let now = Instant(nanoseconds: Sys.monotonicNanoseconds())
            guard case .reply(let reply) = dhcp.handle(m, now: now, into: replyBuffer) else {
                counters.dhcpDropped += 1
                continue
            }
            let unicast = !reply.broadcast && !m.clientAddress.isUnspecified
            let to = SocketAddress(ipv4: unicast ? m.clientAddress.rawValue : 0xFFFF_FFFF, port: DHCPMessage.clientPort)
            if reply.type == .ack, !reply.yourAddress.isUnspecified { onLease?(reply.yourAddress, m.clientMAC) }
            if case .done = Sys.sendTo(dhcpSocket, UnsafeRawBufferPointer(rebasing: replyBuffer[0 ..< reply.length]), to) {
                counters.dhcpReplies += 1
            } else {
                counters.dhcpDropped += 1
            }
        }
    }

    func forwardQueries() {
        guard let d = dnsSocket, let u = upstreamSocket else { return }
        var from = SocketAddress()
        while case .done(let n) = Sys.receiveFrom(d, into: buffer, from: &from) {
            guard n >= 12, n <= buffer.count, pending.count < Self.pendingCapacity else { counters.dnsDropped += 1; continue }
            var id = nextID
            while pending[id] != nil { id &+= 1 }
            nextID = id &+ 1
            let clientID = UInt16(buffer[0]) << 8 | UInt16(buffer[1])
            buffer[0] = UInt8(id >> 8); buffer[1] = UInt8(id & 0xFF)
            pending[id] = Pending(client: from, clientID: clientID, deadline: Sys.monotonicNanoseconds() + Self.queryTimeoutNanoseconds)
            if case .done = Sys.send(u, UnsafeRawBufferPointer(rebasing: buffer[0 ..< n])) {
                counters.dnsForwarded += 1
            } else {
                pending[id] = nil
                counters.dnsDropped += 1
            }
        }
    }

    func returnAnswers() {
        guard let d = dnsSocket, let u = upstreamSocket else { return }
        while case .done(let n) = Sys.receive(u, into: buffer) {
            guard n >= 12, n <= buffer.count else { counters.dnsDropped += 1; continue }
            let id = UInt16(buffer[0]) << 8 | UInt16(buffer[1])
            guard let p = pending.removeValue(forKey: id) else { counters.dnsDropped += 1; continue }
            buffer[0] = UInt8(p.clientID >> 8); buffer[1] = UInt8(p.clientID & 0xFF)
            if case .done = Sys.sendTo(d, UnsafeRawBufferPointer(rebasing: buffer[0 ..< n]), p.client) {
                counters.dnsAnswered += 1
            } else {
                counters.dnsDropped += 1
            }
        }
    }

    func expirePending() {
        guard !pending.isEmpty else { return }
        let now = Sys.monotonicNanoseconds()
        for (id, p) in pending where p.deadline <= now { pending[id] = nil }
    }
}
