// The gateway's view of host sockets. The runtime implements it with real syscalls and an epoll loop; tests
// implement it with a fake. Handles are opaque Int32s (file descriptors in the real one). Each open call
// carries the `FlowTag` the event loop hands back to `Gateway.hostReadable` when the handle becomes readable.

import VNetWire

/// Identifies a flow to the event loop: kind in the high byte, index in the low 32 bits.
public struct FlowTag: Hashable, Sendable {
    public enum Kind: UInt8, Sendable { case udp = 1, icmp = 2 }
    public var kind: Kind
    public var index: Int
    public init(kind: Kind, index: Int) { self.kind = kind; self.index = index }
    public var rawValue: UInt64 { UInt64(kind.rawValue) << 56 | UInt64(UInt32(truncatingIfNeeded: index)) }
    public init?(rawValue: UInt64) {
        guard let k = Kind(rawValue: UInt8(truncatingIfNeeded: rawValue >> 56)) else { return nil }
        kind = k
        index = Int(UInt32(truncatingIfNeeded: rawValue))
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
    /// Something arrived that is not for the guest (e.g. another flow's echo on a raw socket); skip it.
    case ignored
    case wouldBlock
    case failed
}

public protocol HostIO: AnyObject {
    /// A connected UDP socket to `destination:port`, registered for readability under `tag`.
    func openUDP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32?
    /// An ICMP echo socket (ping socket, or raw when that is all there is) aimed at `destination`.
    func openICMPEcho(destination: IPv4Address, tag: FlowTag) -> Int32?
    func setTTL(_ handle: Int32, ttl: UInt8)
    func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer) -> Bool
    func sendICMPEcho(_ handle: Int32, identifier: UInt16, sequence: UInt16, payload: UnsafeRawBufferPointer) -> Bool
    func receiveUDP(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive
    func receiveICMPEcho(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive
    func close(_ handle: Int32)
}
