// Kernel NAT's DNS forwarder at the bridge's gateway address: UDP and TCP, any number of upstreams of either
// family, with the same failover as the gateway's forwarder (VNetServices/DNSUpstreams.swift).
//
// Theory of Operation
// -------------------
// UDP: a socket on GATEWAY:53 takes the clients' queries. Each upstream has one connected socket; a query
// goes to the current upstream with its id replaced by a fresh one, and the answer gets the client's id
// back. A query unanswered within `failoverNanoseconds`, or an upstream socket that reports an error (an ICMP
// port or host unreachable), marks that upstream failed: later queries go to the next one, and the client's
// own retry finds it. At most `pendingCapacity` queries are outstanding.
// TCP: a listener on GATEWAY:53 accepts up to `relayCapacity` clients; each is relayed byte for byte to the
// current upstream's TCP port (a failed connect marks the upstream failed and drops the client, whose retry
// goes to the next), through two bounded buffers, until either side closes or it idles out.
// Every datagram shorter than a DNS header, every answer nobody asked for, every refused client is dropped
// and counted. All fds live on the one `EventLoop`, under the registry's `dnsSocket` (index 0 UDP, 1 TCP),
// `dnsUpstream` (index: the upstream) and `dnsRelay` (index: relay slot << 1 | side) kinds.

import CVNetShim
import VNetBuffers
import VNetHost
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

final class KernelNatDNS {
    struct Counters {
        var forwarded = 0, answered = 0, dropped = 0, failovers = 0, tcpRelayed = 0, tcpRefused = 0
    }

    struct Pending {
        var client: SocketAddress
        var clientID: UInt16
        var upstream: Int
        var deadline: UInt64
    }

    /// One TCP client and its connection to an upstream, with a buffer each way.
    final class Relay {
        let client: Int32
        let upstream: Int32
        let upstreamIndex: Int
        var connecting = true
        var lastActive: UInt64
        /// [0]: client -> upstream, [1]: upstream -> client; bytes in start ..< end.
        let buffers: [UnsafeMutableRawBufferPointer]
        var start = [0, 0], end = [0, 0]
        var readClosed = [false, false]
        init(client: Int32, upstream: Int32, upstreamIndex: Int, now: UInt64) {
            self.client = client
            self.upstream = upstream
            self.upstreamIndex = upstreamIndex
            lastActive = now
            buffers = [.allocate(byteCount: KernelNatDNS.relayBuffer, alignment: 8), .allocate(byteCount: KernelNatDNS.relayBuffer, alignment: 8)]
        }
        deinit {
            Sys.close(client)
            Sys.close(upstream)
            for b in buffers { b.deallocate() }
        }
        func fd(_ side: Int) -> Int32 { side == 0 ? client : upstream }
    }

    static let pendingCapacity = 1024
    static let relayCapacity = 32
    static let relayBuffer = 65_538
    static let failoverNanoseconds: UInt64 = 2_000_000_000
    static let relayIdleNanoseconds: UInt64 = 30_000_000_000

    var upstreams: DNSUpstreams
    let udpSocket: Int32
    let tcpListener: Int32
    /// One connected UDP socket per upstream, in the upstreams' order.
    let upstreamSockets: [Int32]
    var pending: [UInt16: Pending] = [:]
    var nextID: UInt16 = UInt16(truncatingIfNeeded: getpid())
    var relays: [Relay?] = Array(repeating: nil, count: KernelNatDNS.relayCapacity)
    var counters = Counters()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
    weak var loop: EventLoop?

    init(gateway: IPv4Address, upstreams list: [(IPAddress, UInt16)]) throws {
        upstreams = DNSUpstreams(list)
        udpSocket = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        tcpListener = try Sys.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var sockets: [Int32] = []
        do {
            try Sys.setOption(tcpListener, SOL_SOCKET, SO_REUSEADDR, 1)
            do {
                try Sys.bind(udpSocket, SocketAddress(ipv4: gateway.rawValue, port: 53))
                try Sys.bind(tcpListener, SocketAddress(ipv4: gateway.rawValue, port: 53))
                try Sys.listen(tcpListener, backlog: 64)
            } catch let e as SyscallError {
                throw KernelError("listen for DNS on \(gateway):53", errno: e.errno)
            }
            for (address, port) in list {
                let family = address.isIPv4 ? AF_INET : AF_INET6
                let u = try Sys.socket(family, Int32(SOCK_DGRAM.rawValue), 0)
                sockets.append(u)
                _ = try Sys.connect(u, KernelNatDNS.socketAddress(address, port))
            }
        } catch {
            for s in sockets { Sys.close(s) }
            Sys.close(udpSocket)
            Sys.close(tcpListener)
            throw error
        }
        upstreamSockets = sockets
    }

    deinit {
        relays = []
        for s in upstreamSockets { Sys.close(s) }
        Sys.close(udpSocket)
        Sys.close(tcpListener)
        buffer.deallocate()
    }

    static func socketAddress(_ a: IPAddress, _ port: UInt16) -> SocketAddress {
        if let v4 = a.v4 { return SocketAddress(ipv4: v4.rawValue, port: port) }
        return SocketAddress(ipv6: a.v6.bytes, port: port)
    }

    func register(on loop: EventLoop) throws {
        self.loop = loop
        try loop.add(udpSocket, events: Epoll.readable, kind: .dnsSocket, index: 0)
        try loop.add(tcpListener, events: Epoll.readable, kind: .dnsSocket, index: 1)
        for (i, u) in upstreamSockets.enumerated() { try loop.add(u, events: Epoll.readable, kind: .dnsUpstream, index: i) }
    }

    // MARK: UDP

    func forwardQueries(now: UInt64) {
        var from = SocketAddress()
        while case .done(let n) = Sys.receiveFrom(udpSocket, into: buffer, from: &from) {
            guard n >= 12, n <= buffer.count, pending.count < Self.pendingCapacity, let up = upstreams.current,
                  let slot = upstreams.servers.firstIndex(where: { $0.address == up.address && $0.port == up.port }) else {
                counters.dropped += 1
                continue
            }
            var id = nextID
            while pending[id] != nil { id &+= 1 }
            nextID = id &+ 1
            let clientID = UInt16(buffer[0]) << 8 | UInt16(buffer[1])
            buffer[0] = UInt8(id >> 8); buffer[1] = UInt8(id & 0xFF)
            pending[id] = Pending(client: from, clientID: clientID, upstream: slot, deadline: now + Self.failoverNanoseconds)
            if case .done = Sys.send(upstreamSockets[slot], UnsafeRawBufferPointer(rebasing: buffer[0 ..< n])) {
                counters.forwarded += 1
            } else {
                pending[id] = nil
                counters.dropped += 1
                failed(slot)
            }
        }
    }

    func returnAnswers(from slot: Int) {
        guard slot < upstreamSockets.count else { return }
        while true {
            switch Sys.receive(upstreamSockets[slot], into: buffer) {
            case .done(let n):
                guard n >= 12, n <= buffer.count else { counters.dropped += 1; continue }
                let id = UInt16(buffer[0]) << 8 | UInt16(buffer[1])
                guard let p = pending[id], p.upstream == slot else { counters.dropped += 1; continue }
                pending[id] = nil
                buffer[0] = UInt8(p.clientID >> 8); buffer[1] = UInt8(p.clientID & 0xFF)
                if case .done = Sys.sendTo(udpSocket, UnsafeRawBufferPointer(rebasing: buffer[0 ..< n]), p.client) {
                    counters.answered += 1
                } else {
                    counters.dropped += 1
                }
            case .failed:
                failed(slot)   // an ICMP error for a query to this upstream
            default:
                return
            }
        }
    }

    func failed(_ slot: Int) {
        if upstreams.failed(upstreams.servers[slot].address) { counters.failovers += 1 }
    }

    // MARK: TCP

    func acceptClients(now: UInt64) {
        while true {
            let c: Int32
            do throws(SyscallError) { c = try Sys.accept(tcpListener) } catch {
                _ = loop?.epoll.pauseListenerIfShort(tcpListener, error: error.errno, tag: EventKind.dnsSocket.tag(1))
                return
            }
            guard let free = relays.firstIndex(where: { $0 == nil }), let up = upstreams.current,
                  let slot = upstreams.servers.firstIndex(where: { $0.address == up.address && $0.port == up.port }) else {
                counters.tcpRefused += 1
                Sys.close(c)
                continue
            }
            let u: Int32
            do {
                u = try Sys.socket(up.address.isIPv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
                _ = try Sys.connect(u, KernelNatDNS.socketAddress(up.address, up.port))
            } catch {
                counters.tcpRefused += 1
                failed(slot)
                Sys.close(c)
                continue
            }
            let r = Relay(client: c, upstream: u, upstreamIndex: slot, now: now)
            relays[free] = r
            do {
                try loop?.add(c, events: Epoll.readable | Epoll.hangup, kind: .dnsRelay, index: free << 1)
                try loop?.add(u, events: Epoll.writable, kind: .dnsRelay, index: free << 1 | 1)
                counters.tcpRelayed += 1
            } catch {
                relays[free] = nil
                counters.tcpRefused += 1
            }
        }
    }

    /// An event on side `side` (0 client, 1 upstream) of relay `slot`.
    func relayEvent(_ index: Int, events: UInt32, now: UInt64) {
        let slot = index >> 1, side = index & 1
        guard slot < relays.count, let r = relays[slot] else { return }
        r.lastActive = now
        if side == 1 && r.connecting {
            let e = Sys.socketError(r.upstream)
            guard e == 0 else {
                failed(r.upstreamIndex)
                return endRelay(slot)
            }
            r.connecting = false
        }
        // Read from this side into its buffer, then write every buffer that has bytes.
        if events & (Epoll.readable | Epoll.hangup | Epoll.error) != 0 && !r.readClosed[side] {
            let b = r.buffers[side]
            reading: while r.end[side] < b.count {
                switch Sys.read(r.fd(side), into: UnsafeMutableRawBufferPointer(rebasing: b[r.end[side]...])) {
                case .done(let n): r.end[side] += n
                case .closed: r.readClosed[side] = true; break reading
                case .wouldBlock: break reading
                case .failed: return endRelay(slot)
                }
            }
        }
        for from in 0 ... 1 {
            let to = 1 - from
            if to == 1 && r.connecting { continue }
            writing: while r.start[from] < r.end[from] {
                switch Sys.send(r.fd(to), UnsafeRawBufferPointer(rebasing: r.buffers[from][r.start[from] ..< r.end[from]])) {
                case .done(let n): r.start[from] += n
                case .wouldBlock: break writing
                default: return endRelay(slot)
                }
            }
            if r.start[from] == r.end[from] {
                r.start[from] = 0
                r.end[from] = 0
                if r.readClosed[from] { Sys.shutdownWrite(r.fd(to)) }
            }
        }
        if r.readClosed[0] && r.readClosed[1] && r.end == [0, 0] { return endRelay(slot) }
        // Interest: read while there is room and the side is open; write while bytes wait for it.
        for side in 0 ... 1 {
            let other = 1 - side
            var mask: UInt32 = 0
            if !r.readClosed[side] && r.end[side] < r.buffers[side].count && !(side == 1 && r.connecting) { mask |= Epoll.readable }
            if r.end[other] > r.start[other] || (side == 1 && r.connecting) { mask |= Epoll.writable }
            try? loop?.epoll.modify(r.fd(side), events: mask, tag: EventKind.dnsRelay.tag(slot << 1 | side))
        }
    }

    func endRelay(_ slot: Int) {
        guard let r = relays[slot] else { return }
        loop?.epoll.remove(r.client)
        loop?.epoll.remove(r.upstream)
        relays[slot] = nil
    }

    // MARK: Timers

    func expire(now: UInt64) {
        if !pending.isEmpty {
            for (id, p) in pending where p.deadline <= now {
                pending[id] = nil
                failed(p.upstream)
            }
        }
        for (i, r) in relays.enumerated() where r != nil && now &- r!.lastActive >= Self.relayIdleNanoseconds { endRelay(i) }
    }
}
