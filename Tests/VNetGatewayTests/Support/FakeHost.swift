// A HostIO that records every call and hands out scripted receive results per handle. Nothing touches the
// network. TCP is left to HostTCP's defaults (every connect fails).

import VNetGateway
import VNetWire

final class FakeHost: HostIO {
    struct Open: Equatable {
        var kind: FlowTag.Kind
        var destination: IPv4Address
        var port: UInt16?
        var tag: FlowTag
        var handle: Int32
        /// Set for IPv6 opens (then `destination` is 0.0.0.0).
        var destination6: IPv6Address? = nil
    }

    struct Sent: Equatable {
        var handle: Int32
        var bytes: [UInt8]
    }

    struct EchoSent: Equatable {
        var handle: Int32
        var identifier: UInt16
        var sequence: UInt16
        var payload: [UInt8]
    }

    struct TTLSet: Equatable {
        var handle: Int32
        var ttl: UInt8
    }

    /// One scripted result of a receive call.
    enum Reply {
        case datagram([UInt8])
        case echoReply(identifier: UInt16?, sequence: UInt16, payload: [UInt8])
        case icmpError(type: UInt8, code: UInt8, offender: IPv4Address, quoted: [UInt8])
        case result(HostReceive)
    }

    private(set) var opens: [Open] = []
    private(set) var sent: [Sent] = []
    private(set) var echoes: [EchoSent] = []
    private(set) var closed: [Int32] = []
    private(set) var ttlSets: [TTLSet] = []
    var failOpen = false
    var failSend = false
    private var nextHandle: Int32 = 100
    private var pending: [Int32: [Reply]] = [:]

    var openHandles: Set<Int32> { Set(opens.map(\.handle)).subtracting(closed) }

    /// Queues results for the next receive calls on `handle`; an empty queue answers `.wouldBlock`.
    func queue(_ handle: Int32, _ replies: Reply...) { pending[handle, default: []] += replies }

    private func open(_ kind: FlowTag.Kind, _ destination: IPv4Address, _ port: UInt16?, _ tag: FlowTag) -> Int32? {
        guard !failOpen else { return nil }
        nextHandle += 1
        opens.append(Open(kind: kind, destination: destination, port: port, tag: tag, handle: nextHandle))
        return nextHandle
    }

    func openUDP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? { open(.udp, destination, port, tag) }
    func openUDP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32? {
        if let v4 = destination.v4 { return open(.udp, v4, port, tag) }
        return open6(.udp, destination.v6, port, tag)
    }
    func openICMPEcho(to destination: IPAddress, tag: FlowTag) -> Int32? {
        if let v4 = destination.v4 { return open(.icmp, v4, nil, tag) }
        return open6(.icmp, destination.v6, nil, tag)
    }
    private func open6(_ kind: FlowTag.Kind, _ destination: IPv6Address, _ port: UInt16?, _ tag: FlowTag) -> Int32? {
        guard !failOpen else { return nil }
        nextHandle += 1
        opens.append(Open(kind: kind, destination: .any, port: port, tag: tag, handle: nextHandle, destination6: destination))
        return nextHandle
    }
    func openICMPEcho(destination: IPv4Address, tag: FlowTag) -> Int32? { open(.icmp, destination, nil, tag) }
    func setTTL(_ handle: Int32, ttl: UInt8) {
        ttlSets.append(TTLSet(handle: handle, ttl: ttl))
        log.append("ttl \(ttl)")
    }

    func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer) -> Bool {
        sent.append(Sent(handle: handle, bytes: Array(payload)))
        log.append("send")
        return !failSend
    }

    /// Every sendUDPSegments call: (handle, segment size, datagrams); its datagrams also land in `sent`.
    private(set) var segmentSends: [(handle: Int32, segmentSize: Int, count: Int)] = []
    /// Events in order: "send" per datagram sent alone, "gso N" per batch, "ttl T" per TTL change.
    private(set) var log: [String] = []

    func sendUDPSegments(_ handle: Int32, _ datagrams: UnsafeRawBufferPointer, segmentSize: Int) -> Int {
        var n = 0
        var offset = 0
        while offset < datagrams.count {
            let end = min(offset + segmentSize, datagrams.count)
            sent.append(Sent(handle: handle, bytes: Array(datagrams[offset ..< end])))
            n += 1
            offset = end
        }
        segmentSends.append((handle, segmentSize, n))
        log.append("gso \(n)")
        return failSend ? 0 : n
    }

    func sendICMPEcho(_ handle: Int32, identifier: UInt16, sequence: UInt16, payload: UnsafeRawBufferPointer) -> Bool {
        echoes.append(EchoSent(handle: handle, identifier: identifier, sequence: sequence, payload: Array(payload)))
        return !failSend
    }

    func receiveUDP(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive { receive(handle, into: buffer) }
    func receiveICMPEcho(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive { receive(handle, into: buffer) }

    func close(_ handle: Int32) { closed.append(handle) }

    private func receive(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive {
        precondition(!closed.contains(handle), "receive on closed handle \(handle)")
        guard var q = pending[handle], !q.isEmpty else { return .wouldBlock }
        let r = q.removeFirst()
        pending[handle] = q
        switch r {
        case .datagram(let b):
            buffer.copyBytes(from: b)
            return .datagram(length: b.count)
        case .echoReply(let id, let seq, let b):
            buffer.copyBytes(from: b)
            return .echoReply(identifier: id, sequence: seq, length: b.count)
        case .icmpError(let type, let code, let offender, let b):
            buffer.copyBytes(from: b)
            return .icmpError(type: type, code: code, offender: offender, length: b.count)
        case .result(let x):
            return x
        }
    }
}
