// The gateway's view of host sockets. The runtime implements it with real syscalls and an epoll loop; tests
// implement it with a fake. Handles are opaque Int32s (file descriptors in the real one). Each open call
// carries the `FlowTag` the event loop hands back to `Gateway.hostReadable` when the handle becomes readable.

import VNetBuffers
import VNetWire

/// Identifies a flow to the event loop: its `EventKind` (the registry) in the high byte, index in the low 32 bits.
public struct FlowTag: Hashable, Sendable {
    public enum Kind: Sendable {
        case udp, icmp, tcp
        public var eventKind: EventKind {
            switch self {
            case .udp: .udpFlow
            case .icmp: .icmpFlow
            case .tcp: .tcpFlow
            }
        }
    }
    public var kind: Kind
    public var index: Int
    public init(kind: Kind, index: Int) { self.kind = kind; self.index = index }
    public var rawValue: UInt64 { kind.eventKind.tag(index) }
    public init?(rawValue: UInt64) {
        switch EventKind.of(rawValue) {
        case (.udpFlow, let i)?: self.init(kind: .udp, index: i)
        case (.icmpFlow, let i)?: self.init(kind: .icmp, index: i)
        case (.tcpFlow, let i)?: self.init(kind: .tcp, index: i)
        default: return nil
        }
    }
}

public enum HostReceive: Equatable, Sendable {
    /// A datagram (UDP payload, or ICMP echo payload after its 8-byte header) of `length` bytes.
    case datagram(length: Int)
    /// An ICMP echo reply: `identifier` is nil when the host socket already matched it to this flow.
    case echoReply(identifier: UInt16?, sequence: UInt16, length: Int)
    /// An ICMP error the host received for this flow's traffic; `length` bytes of the original payload were
    /// written into the buffer.
    case icmpError(type: UInt8, code: UInt8, offender: IPv4Address, length: Int)
    /// The same for an IPv6 flow: an ICMPv6 error (IPV6_RECVERR).
    case icmp6Error(type: UInt8, code: UInt8, offender: IPv6Address, length: Int)
    /// Something arrived that is not for the guest (e.g. another flow's echo on a raw socket); skip it.
    case ignored
    case wouldBlock
    case failed
}

public protocol HostIO: AnyObject, HostTCP {
    /// A connected UDP socket to `destination:port`, registered for readability under `tag`.
    func openUDP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32?
    /// An ICMP echo socket (ping socket, or raw when that is all there is) aimed at `destination`.
    func openICMPEcho(destination: IPv4Address, tag: FlowTag) -> Int32?
    func setTTL(_ handle: Int32, ttl: UInt8)
    func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer) -> Bool
    /// Sends `datagrams` as consecutive datagrams of `segmentSize` bytes (the last may be shorter) on a
    /// connected UDP socket; returns how many went out (UDP GSO where the kernel has it).
    func sendUDPSegments(_ handle: Int32, _ datagrams: UnsafeRawBufferPointer, segmentSize: Int) -> Int
    func sendICMPEcho(_ handle: Int32, identifier: UInt16, sequence: UInt16, payload: UnsafeRawBufferPointer) -> Bool
    func receiveUDP(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive
    func receiveICMPEcho(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive
    func close(_ handle: Int32)

    /// Either family: a connected UDP socket (IPv4 ones go to `openUDP(destination:)` by default).
    func openUDP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32?
    /// Either family: an ICMP or ICMPv6 echo socket (IPv4 ones go to `openICMPEcho(destination:)` by default).
    func openICMPEcho(to destination: IPAddress, tag: FlowTag) -> Int32?
}

extension HostIO {
    /// One `sendUDP` per datagram.
    public func sendUDPSegments(_ handle: Int32, _ datagrams: UnsafeRawBufferPointer, segmentSize: Int) -> Int {
        sendUDPOneByOne(handle, datagrams, segmentSize: segmentSize)
    }

    /// `datagrams` cut into `segmentSize` pieces, one `sendUDP` each; returns how many went out.
    public func sendUDPOneByOne(_ handle: Int32, _ datagrams: UnsafeRawBufferPointer, segmentSize: Int) -> Int {
        var sent = 0
        var offset = 0
        while offset < datagrams.count {
            let end = min(offset + segmentSize, datagrams.count)
            if sendUDP(handle, UnsafeRawBufferPointer(rebasing: datagrams[offset ..< end])) { sent += 1 }
            offset = end
        }
        return sent
    }

    public func openUDP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32? {
        guard let v4 = destination.v4 else { return nil }
        return openUDP(destination: v4, port: port, tag: tag)
    }

    public func openICMPEcho(to destination: IPAddress, tag: FlowTag) -> Int32? {
        guard let v4 = destination.v4 else { return nil }
        return openICMPEcho(destination: v4, tag: tag)
    }
}

public enum TCPIOResult: Equatable, Sendable {
    case done(Int)
    /// Peek only: the peer closed its side and every byte before the FIN has been peeked.
    case endOfStream
    case wouldBlock
    case reset
    case failed
}

/// TCP host sockets (passt-style: no buffers of our own) and forwarding helpers. Default implementations
/// fail, so a HostIO without them (a small fake) still compiles and every TCP flow is refused with RST.
public protocol HostTCP {
    /// Starts a non-blocking connect; readiness (connected or failed) arrives as a writable event for `tag`.
    func openTCP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32?
    /// 0 when the connect completed, else the errno it failed with.
    func tcpConnectError(_ handle: Int32) -> Int32
    func tcpSend(_ handle: Int32, _ bytes: UnsafeRawBufferPointer) -> TCPIOResult
    /// Sends `parts` in order as one stream write (sendmsg); `.done(n)` may stop short, as `tcpSend` may.
    func tcpSendGather(_ handle: Int32, _ parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> TCPIOResult
    /// Peeks the next bytes after those already peeked (the socket keeps them until `tcpDiscard`).
    func tcpPeek(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> TCPIOResult
    /// Drops `count` acknowledged bytes from the head of the receive queue.
    func tcpDiscard(_ handle: Int32, count: Int)
    /// True when a peek that says "would block" means the socket holds nothing unpeeked, so only a readable
    /// event can bring more (SO_PEEK_OFF). False for a peek-and-skip fallback: its view of the socket also
    /// moves when acknowledged bytes are discarded (a cap on bytes in flight, or a FIN behind peeked data).
    var tcpDrainedPeekIsFinal: Bool { get }
    /// Sets where the next peek starts, in bytes from the head of the receive queue (0: retransmit all).
    func tcpSetPeekOffset(_ handle: Int32, offset: Int)
    /// Free space in the socket's send buffer, in bytes.
    func tcpSendSpace(_ handle: Int32) -> Int
    func tcpShutdownWrite(_ handle: Int32)
    /// Closes with RST (SO_LINGER 0).
    func tcpAbort(_ handle: Int32)
    /// A stream wired to a child process's stdin/stdout (`guestfwd …-cmd:`), used like a connected socket.
    func openCommand(_ command: String, tag: FlowTag) -> Int32?
    /// Takes over an accepted connection (hostfwd) for the flow `tag`; no events until `tcpSetInterest`.
    func adoptTCP(_ handle: Int32, tag: FlowTag) -> Bool
    /// Sends on an unconnected (hostfwd listener) UDP socket.
    func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer, to address: IPv4Address, port: UInt16) -> Bool
    /// Which events the loop should report for this socket.
    func tcpSetInterest(_ handle: Int32, tag: FlowTag, readable: Bool, writable: Bool)
    /// Either family: starts a non-blocking connect (IPv4 goes to `openTCP(destination:)` by default).
    func openTCP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32?
    /// Either family: sends on an unconnected (hostfwd listener) UDP socket.
    func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer, to address: IPAddress, port: UInt16) -> Bool
}

extension HostTCP {
    public func openTCP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? { nil }
    public func tcpConnectError(_ handle: Int32) -> Int32 { 111 }
    public func tcpSend(_ handle: Int32, _ bytes: UnsafeRawBufferPointer) -> TCPIOResult { .failed }
    /// One `tcpSend` per part, stopping where the socket stops taking bytes.
    public func tcpSendGather(_ handle: Int32, _ parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> TCPIOResult {
        var total = 0
        for part in parts {
            switch tcpSend(handle, part) {
            case .done(let n):
                total += n
                if n < part.count { return .done(total) }
            case .wouldBlock:
                return total > 0 ? .done(total) : .wouldBlock
            case let other:
                return total > 0 ? .done(total) : other
            }
        }
        return .done(total)
    }
    public func tcpPeek(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> TCPIOResult { .failed }
    public func tcpDiscard(_ handle: Int32, count: Int) {}
    public var tcpDrainedPeekIsFinal: Bool { false }
    public func tcpSetPeekOffset(_ handle: Int32, offset: Int) {}
    public func tcpSendSpace(_ handle: Int32) -> Int { 0 }
    public func tcpShutdownWrite(_ handle: Int32) {}
    public func tcpAbort(_ handle: Int32) {}
    public func tcpSetInterest(_ handle: Int32, tag: FlowTag, readable: Bool, writable: Bool) {}
    public func openCommand(_ command: String, tag: FlowTag) -> Int32? { nil }
    public func adoptTCP(_ handle: Int32, tag: FlowTag) -> Bool { false }
    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer, to address: IPv4Address, port: UInt16) -> Bool { false }
    public func openTCP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32? {
        guard let v4 = destination.v4 else { return nil }
        return openTCP(destination: v4, port: port, tag: tag)
    }
    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer, to address: IPAddress, port: UInt16) -> Bool {
        guard let v4 = address.v4 else { return false }
        return sendUDP(handle, payload, to: v4, port: port)
    }
}
