// RealHost: the gateway's HostIO over real sockets, registered in the runtime's epoll set.
//
// UDP flows use connected sockets with IP_RECVERR, so ICMP errors for a flow arrive on that flow's socket
// (errno on recv, details in the error queue). ICMP echo uses unprivileged ping sockets when
// net.ipv4.ping_group_range admits our group, and otherwise a raw ICMP socket (root), probed once at start.
// A raw socket sees every echo reply from its peer, so replies are matched by identifier in the gateway.

import CVNetShim
import VNetGateway
import VNetHost
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public final class RealHost: HostIO {
    public enum EchoMode: String, Sendable { case pingSocket = "ping socket", raw = "raw socket", unavailable }

    let epoll: Epoll
    /// `--sandbox` turns `.raw` into `.unavailable`: raw sockets need CAP_NET_RAW, which the drop removes.
    public internal(set) var echoMode: EchoMode
    /// Set by the loop before `Gateway.hostReadable`: whether the event included EPOLLERR.
    var eventHadError = false
    var ttlCache: [Int32: UInt8] = [:]

    public let echoMode6: EchoMode
    /// Host sockets of IPv6 flows (their options, echo headers and error queues differ).
    var ipv6Handles: Set<Int32> = []

    init(epoll: Epoll) {
        self.epoll = epoll
        echoMode = RealHost.probeEchoMode(family: AF_INET, proto: Int32(IPPROTO_ICMP))
        echoMode6 = RealHost.probeEchoMode(family: AF_INET6, proto: Int32(IPPROTO_ICMPV6))
    }

    deinit {
        gatherVectors.deallocate()
        echoBuffer.deallocate()
    }

    static func probeEchoMode(family: Int32, proto: Int32) -> EchoMode {
        if let fd = try? Sys.socket(family, Int32(SOCK_DGRAM.rawValue), proto) { Sys.close(fd); return .pingSocket }
        if let fd = try? Sys.socket(family, Int32(SOCK_RAW.rawValue), proto) { Sys.close(fd); return .raw }
        return .unavailable
    }

    static func socketAddress(_ a: IPAddress, port: UInt16) -> SocketAddress {
        if let v4 = a.v4 { return SocketAddress(ipv4: v4.rawValue, port: port) }
        return SocketAddress(ipv6: a.v6.bytes, port: port)
    }

    /// A connected UDP socket of either family, errors reported through the error queue.
    public func openUDP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32? {
        if let v4 = destination.v4 { return openUDP(destination: v4, port: port, tag: tag) }
        guard let fd = try? Sys.socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0) else { return nil }
        do {
            try Sys.setOption(fd, Int32(IPPROTO_IPV6), IPV6_RECVERR, 1)
            _ = try Sys.connect(fd, RealHost.socketAddress(destination, port: port))
        } catch {
            Sys.close(fd)
            return nil
        }
        ipv6Handles.insert(fd)
        return register(fd, tag: tag)
    }

    public func openICMPEcho(to destination: IPAddress, tag: FlowTag) -> Int32? {
        if let v4 = destination.v4 { return openICMPEcho(destination: v4, tag: tag) }
        let type: Int32
        switch echoMode6 {
        case .pingSocket: type = Int32(SOCK_DGRAM.rawValue)
        case .raw: type = Int32(SOCK_RAW.rawValue)
        case .unavailable: return nil
        }
        guard let fd = try? Sys.socket(AF_INET6, type, Int32(IPPROTO_ICMPV6)) else { return nil }
        do {
            try Sys.setOption(fd, Int32(IPPROTO_IPV6), IPV6_RECVERR, 1)
            _ = try Sys.connect(fd, RealHost.socketAddress(destination, port: 0))
        } catch {
            Sys.close(fd)
            return nil
        }
        ipv6Handles.insert(fd)
        return register(fd, tag: tag)
    }

    public func openTCP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32? {
        if let v4 = destination.v4 { return openTCP(destination: v4, port: port, tag: tag) }
        guard let fd = try? Sys.socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0) else { return nil }
        var locked = false
        do {
            try Sys.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            locked = RealHost.sizeSendBuffer(fd)
            if usePeekOffset { try Sys.setOption(fd, SOL_SOCKET, SO_PEEK_OFF, 0) } else { fallbackPeeked[fd] = 0 }
            _ = try Sys.connect(fd, RealHost.socketAddress(destination, port: port))
            try epoll.add(fd, events: Epoll.writable | Epoll.edgeTriggered, tag: tag.rawValue)
        } catch {
            Sys.close(fd)
            fallbackPeeked[fd] = nil
            return nil
        }
        ipv6Handles.insert(fd)
        if locked { rememberSendBuffer(fd) }
        return fd
    }

    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer, to address: IPAddress, port: UInt16) -> Bool {
        if case .done = Sys.sendTo(handle, payload, RealHost.socketAddress(address, port: port)) { return true }
        return false
    }

    func register(_ fd: Int32, tag: FlowTag) -> Int32? {
        do {
            try epoll.add(fd, events: Epoll.readable, tag: tag.rawValue)
            return fd
        } catch {
            Sys.close(fd)
            return nil
        }
    }

    public func openUDP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? {
        guard let fd = try? Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0) else { return nil }
        do {
            try Sys.setOption(fd, Int32(IPPROTO_IP), IP_RECVERR, 1)
            _ = try Sys.connect(fd, SocketAddress(ipv4: destination.rawValue, port: port))
        } catch {
            Sys.close(fd)
            return nil
        }
        return register(fd, tag: tag)
    }

    public func openICMPEcho(destination: IPv4Address, tag: FlowTag) -> Int32? {
        let type: Int32
        switch echoMode {
        case .pingSocket: type = Int32(SOCK_DGRAM.rawValue)
        case .raw: type = Int32(SOCK_RAW.rawValue)
        case .unavailable: return nil
        }
        guard let fd = try? Sys.socket(AF_INET, type, Int32(IPPROTO_ICMP)) else { return nil }
        do {
            try Sys.setOption(fd, Int32(IPPROTO_IP), IP_RECVERR, 1)
            _ = try Sys.connect(fd, SocketAddress(ipv4: destination.rawValue, port: 0))
        } catch {
            Sys.close(fd)
            return nil
        }
        return register(fd, tag: tag)
    }

    public func setTTL(_ handle: Int32, ttl: UInt8) {
        if ipv6Handles.contains(handle) {
            try? Sys.setOption(handle, Int32(IPPROTO_IPV6), IPV6_UNICAST_HOPS, Int32(max(ttl, 1)))
            return
        }
        try? Sys.setOption(handle, Int32(IPPROTO_IP), IP_TTL, Int32(max(ttl, 1)))
    }

    /// False once the kernel refused UDP_SEGMENT as unknown (pre-4.18): every batch is then sent datagram by datagram.
    var udpSegmentationWorks = true
    /// Batches the kernel refused (EINVAL/EIO: a path MTU under the segment size, no checksum offload, ...).
    public private(set) var udpSegmentationFallbacks = 0

    public func sendUDPSegments(_ handle: Int32, _ datagrams: UnsafeRawBufferPointer, segmentSize: Int) -> Int {
        let count = (datagrams.count + segmentSize - 1) / segmentSize
        if count > 1 && udpSegmentationWorks {
            let n = vnet_send_udp_segments(handle, datagrams.baseAddress, UInt(datagrams.count), UInt16(segmentSize))
            if n >= 0 { return count }
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS || e == ECONNREFUSED { return 0 }
            if e == ENOPROTOOPT { udpSegmentationWorks = false }
            udpSegmentationFallbacks &+= 1
        }
        return sendUDPOneByOne(handle, datagrams, segmentSize: segmentSize)
    }

    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer) -> Bool {
        if case .done = Sys.send(handle, payload) { return true }
        return false
    }

    /// Echo request scratch: header + payload, reused.
    let echoBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)

    public func sendICMPEcho(_ handle: Int32, identifier: UInt16, sequence: UInt16, payload: UnsafeRawBufferPointer) -> Bool {
        let length = 8 + payload.count
        guard length <= echoBuffer.count else { return false }
        echoBuffer.copy(payload, to: 8)
        if ipv6Handles.contains(handle) {
            // The kernel fills in an ICMPv6 socket's checksum (and a ping socket's identifier).
            let b = echoBuffer
            b.put8(0, ICMPv6Header.echoRequest); b.put8(1, 0); b.put16(2, 0)
            b.put16(4, identifier); b.put16(6, sequence)
            if case .done = Sys.send(handle, UnsafeRawBufferPointer(echoBuffer.slice(0 ..< length))) { return true }
            return false
        }
        ICMPv4Header(type: ICMPv4Header.echoRequest, code: 0, restOfHeader: UInt32(identifier) << 16 | UInt32(sequence))
            .emit(into: echoBuffer.slice(0 ..< length), messageLength: length)
        if case .done = Sys.send(handle, UnsafeRawBufferPointer(echoBuffer.slice(0 ..< length))) { return true }
        return false
    }

    func readError(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive? {
        var type: UInt8 = 0, code: UInt8 = 0
        if ipv6Handles.contains(fd) {
            var offender = [UInt8](repeating: 0, count: 16)
            var length: Int32 = 0
            let r = vnet_read_icmp6_error(fd, &type, &code, &offender, buffer.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                          Int32(min(buffer.count, Int(Int32.max))), &length)
            guard r == 0 else { return nil }
            return .icmp6Error(type: type, code: code, offender: IPv6Address(bytes: offender), length: Int(length))
        }
        var offender: UInt32 = 0
        var length: Int32 = 0
        let r = vnet_read_icmp_error(fd, &type, &code, &offender, buffer.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                     Int32(min(buffer.count, Int(Int32.max))), &length)
        guard r == 0 else { return nil }
        return .icmpError(type: type, code: code, offender: IPv4Address(rawValue: UInt32(bigEndian: offender)), length: Int(length))
    }

    public func receiveUDP(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive {
        switch Sys.receive(handle, into: buffer) {
        case .done(let n):
            return n <= buffer.count ? .datagram(length: n) : .ignored
        case .wouldBlock, .closed:
            if eventHadError, let e = readError(handle, into: buffer) { return e }
            return .wouldBlock
        case .failed:
            return readError(handle, into: buffer) ?? .failed
        }
    }

    public func receiveICMPEcho(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive {
        switch Sys.receive(handle, into: buffer) {
        case .done(let n):
            guard n <= buffer.count else { return .ignored }
            let raw = UnsafeRawBufferPointer(buffer)
            var offset = 0
            let v6 = ipv6Handles.contains(handle)
            // A raw IPv4 socket hands over the IP header; a raw ICMPv6 socket does not.
            if echoMode == .raw && !v6 {
                guard n >= 20 else { return .ignored }
                offset = Int(raw[0] & 0x0F) * 4
            }
            let mode = v6 ? echoMode6 : echoMode
            guard n >= offset + 8, raw[offset] == (v6 ? ICMPv6Header.echoReply : ICMPv4Header.echoReply) else { return .ignored }
            let id = UInt16(raw[offset + 4]) << 8 | UInt16(raw[offset + 5])
            let seq = UInt16(raw[offset + 6]) << 8 | UInt16(raw[offset + 7])
            let length = n - offset - 8
            if length > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + offset + 8, byteCount: length) }
            return .echoReply(identifier: mode == .raw ? id : nil, sequence: seq, length: length)
        case .wouldBlock, .closed:
            if eventHadError, let e = readError(handle, into: buffer) { return e }
            return .wouldBlock
        case .failed:
            return readError(handle, into: buffer) ?? .failed
        }
    }

    // MARK: TCP

    /// Whether SO_PEEK_OFF works on TCP sockets here (Linux 6.9+); probed once.
    public let tcpPeekOffset: Bool = RealHost.probePeekOffset()
    /// Fallback when SO_PEEK_OFF is missing: bytes already peeked per fd, and a discard buffer to skip them.
    var fallbackPeeked: [Int32: Int] = [:]
    lazy var discardBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: RealHost.fallbackMaximumInFlight, alignment: 16)
    static let fallbackMaximumInFlight = 4 << 20
    /// Forces the fallback path (tests of both paths).
    public var forcePeekFallback = false
    public var usePeekOffset: Bool { tcpPeekOffset && !forcePeekFallback }

    static func probePeekOffset() -> Bool {
        guard let fd = try? Sys.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) else { return false }
        defer { Sys.close(fd) }
        return (try? Sys.setOption(fd, SOL_SOCKET, SO_PEEK_OFF, 0)) != nil
    }

    public func openTCP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? {
        guard let fd = try? Sys.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) else { return nil }
        var locked = false
        do {
            try Sys.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            locked = RealHost.sizeSendBuffer(fd)
            if usePeekOffset { try Sys.setOption(fd, SOL_SOCKET, SO_PEEK_OFF, 0) } else { fallbackPeeked[fd] = 0 }
            _ = try Sys.connect(fd, SocketAddress(ipv4: destination.rawValue, port: port))
            try epoll.add(fd, events: Epoll.writable | Epoll.edgeTriggered, tag: tag.rawValue)
        } catch {
            Sys.close(fd)
            fallbackPeeked[fd] = nil
            return nil
        }
        if locked { rememberSendBuffer(fd) }
        return fd
    }

    /// The send buffer is the window we offer the guest, so it starts large (as passt does) instead of at
    /// tcp_wmem's 16 KiB default: autotuning would never grow it, since the guest can only send what the
    /// window allows and the socket is then never cwnd-limited. The kernel caps the value at wmem_max; the
    /// memory is only used while data is queued.
    /// True when the size was set (the kernel then locks it: SOCK_SNDBUF_LOCK).
    @discardableResult
    static func sizeSendBuffer(_ fd: Int32) -> Bool {
        (try? Sys.setOption(fd, SOL_SOCKET, SO_SNDBUF, 4 << 20)) != nil
    }

    public func tcpConnectError(_ handle: Int32) -> Int32 { Sys.socketError(handle) }

    public func openCommand(_ command: String, tag: FlowTag) -> Int32? {
        let fd = vnet_spawn_command(command)
        guard fd >= 0 else { return nil }
        do {
            if usePeekOffset { try Sys.setOption(fd, SOL_SOCKET, SO_PEEK_OFF, 0) } else { fallbackPeeked[fd] = 0 }
            // Writable at once: the loop reports it and the flow answers the guest's SYN.
            try epoll.add(fd, events: Epoll.writable | Epoll.edgeTriggered, tag: tag.rawValue)
        } catch {
            Sys.close(fd)
            return nil
        }
        commandHandles.insert(fd)
        return fd
    }

    public func adoptTCP(_ handle: Int32, tag: FlowTag) -> Bool {
        // A unix-socket forward's client (UserNetUnixForwards.swift) is a stream like a command's: no TCP options,
        // and acknowledged bytes are dropped by reading them.
        var domain: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        let isUnix = getsockopt(handle, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0 && domain == AF_UNIX
        do {
            try Sys.setNonBlocking(handle)
            if !isUnix { try Sys.setOption(handle, Int32(IPPROTO_TCP), TCP_NODELAY, 1) }
            let locked = RealHost.sizeSendBuffer(handle)
            if usePeekOffset { try Sys.setOption(handle, SOL_SOCKET, SO_PEEK_OFF, 0) } else { fallbackPeeked[handle] = 0 }
            try epoll.add(handle, events: Epoll.edgeTriggered, tag: tag.rawValue)
            if locked { rememberSendBuffer(handle) }
            if isUnix { commandHandles.insert(handle) }
            return true
        } catch {
            return false
        }
    }

    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer, to address: IPv4Address, port: UInt16) -> Bool {
        if case .done = Sys.sendTo(handle, payload, SocketAddress(ipv4: address.rawValue, port: port)) { return true }
        return false
    }

    /// iovecs for `tcpSendGather`, allocated once (the gateway gathers at most GuestSendBatch.capacity parts).
    let gatherVectors = UnsafeMutablePointer<iovec>.allocate(capacity: 1024)

    public func tcpSendGather(_ handle: Int32, _ parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> TCPIOResult {
        if parts.count == 1 { return tcpSend(handle, parts[0]) }
        let n = min(parts.count, 1024)
        for k in 0 ..< n {
            gatherVectors[k] = iovec(iov_base: UnsafeMutableRawPointer(mutating: parts[k].baseAddress), iov_len: parts[k].count)
        }
        switch Sys.sendGather(handle, gatherVectors, count: n) {
        case .done(let sent): return .done(sent)
        case .wouldBlock: return .wouldBlock
        case .closed: return .reset
        case .failed(let e): return e == ECONNRESET || e == EPIPE ? .reset : .failed
        }
    }

    public func tcpSend(_ handle: Int32, _ bytes: UnsafeRawBufferPointer) -> TCPIOResult {
        switch Sys.send(handle, bytes) {
        case .done(let n): return .done(n)
        case .wouldBlock: return .wouldBlock
        case .closed: return .reset
        case .failed(let e): return e == ECONNRESET || e == EPIPE ? .reset : .failed
        }
    }

    public func tcpPeek(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> TCPIOResult {
        let n: Int
        if usePeekOffset {
            switch Sys.receive(handle, into: buffer.baseAddress, count: buffer.count, flags: Int32(MSG_PEEK) | Int32(MSG_DONTWAIT)) {
            case .done(let k): n = k
            case .wouldBlock: return .wouldBlock
            case .closed: return .endOfStream
            case .failed(let e): return mapPeekError(e)
            }
        } else {
            let skip = fallbackPeeked[handle] ?? 0
            guard skip < RealHost.fallbackMaximumInFlight else { return .wouldBlock }
            let room = min(buffer.count, RealHost.fallbackMaximumInFlight - skip)
            let r = vnet_peek_skipping(handle, discardBuffer.baseAddress, skip, buffer.baseAddress, room)
            if r < 0 { return mapPeekError(Int32(-r)) }
            n = r
            fallbackPeeked[handle] = skip + n
        }
        return n == 0 ? .endOfStream : .done(n)
    }

    func mapPeekError(_ e: Int32) -> TCPIOResult {
        if e == EAGAIN || e == EWOULDBLOCK || e == EINTR { return .wouldBlock }
        return e == ECONNRESET || e == EPIPE || e == ETIMEDOUT ? .reset : .failed
    }

    /// Command streams (unix sockets): acknowledged bytes are read into this buffer to drop them, since
    /// MSG_TRUNC discards only on TCP.
    var commandHandles: Set<Int32> = []
    let discardScratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)

    public var tcpDrainedPeekIsFinal: Bool { usePeekOffset }

    public func tcpDiscard(_ handle: Int32, count: Int) {
        var left = count
        let isCommand = commandHandles.contains(handle)
        while left > 0 {
            let r = isCommand
                ? Sys.receive(handle, into: discardScratch.baseAddress, count: min(left, discardScratch.count), flags: Int32(MSG_DONTWAIT))
                : Sys.receive(handle, into: nil, count: left, flags: Int32(MSG_TRUNC) | Int32(MSG_DONTWAIT))
            guard case .done(let n) = r, n > 0 else { break }
            left -= n
        }
        if !usePeekOffset, let p = fallbackPeeked[handle] { fallbackPeeked[handle] = max(0, p - (count - left)) }
    }

    public func tcpSetPeekOffset(_ handle: Int32, offset: Int) {
        if usePeekOffset {
            try? Sys.setOption(handle, SOL_SOCKET, SO_PEEK_OFF, Int32(clamping: offset))
        } else {
            fallbackPeeked[handle] = offset
        }
    }

    /// SO_SNDBUF of the TCP sockets whose buffer vnet set (locked by the kernel from then on, so it never changes):
    /// read once instead of once per window computation.
    var sendBufferSizes: [Int32: Int32] = { var d = [Int32: Int32](); d.reserveCapacity(16_384); return d }()

    func rememberSendBuffer(_ fd: Int32) {
        var size: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &len) == 0 { sendBufferSizes[fd] = size }
    }

    public func tcpSendSpace(_ handle: Int32) -> Int {
        var size: Int32 = 0
        if let known = sendBufferSizes[handle] {
            size = known
        } else {
            var len = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(handle, SOL_SOCKET, SO_SNDBUF, &size, &len) == 0 else { return 0 }
        }
        let queued = vnet_outq(handle)
        guard queued >= 0 else { return 0 }
        // SO_SNDBUF reports twice the payload room (bookkeeping overhead); count half of it as data room.
        return max(0, Int(size) / 2 - Int(queued))
    }

    public func tcpShutdownWrite(_ handle: Int32) { Sys.shutdownWrite(handle) }

    public func tcpAbort(_ handle: Int32) {
        ipv6Handles.remove(handle)
        sendBufferSizes[handle] = nil
        epoll.remove(handle)
        fallbackPeeked[handle] = nil
        commandHandles.remove(handle)
        vnet_abort_close(handle)
    }

    public func tcpSetInterest(_ handle: Int32, tag: FlowTag, readable: Bool, writable: Bool) {
        var mask = Epoll.edgeTriggered
        if readable { mask |= Epoll.readable | Epoll.hangup }
        if writable { mask |= Epoll.writable }
        try? epoll.modify(handle, events: mask, tag: tag.rawValue)
    }

    public func close(_ handle: Int32) {
        ipv6Handles.remove(handle)
        sendBufferSizes[handle] = nil
        fallbackPeeked[handle] = nil
        commandHandles.remove(handle)
        epoll.remove(handle)
        Sys.close(handle)
    }
}
