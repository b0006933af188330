// Shared by every fuzz target: a stub HostIO (every socket opens, every send succeeds, receives are scripted by
// the input), a small gateway factory, and helpers that wrap fuzzed bytes into frames with correct checksums
// so the input reaches the handlers behind the checksum checks.
//
// Theory of Operation
// -------------------
// Each target's `LLVMFuzzerTestOneInput` takes the process's one gateway (small tables), reset to the state a
// fresh one has (`Gateway.reset`, GatewayReset.swift: inputs do not leak state into each other), feeds it,
// drains what it queued for the guest and checks the invariants a crash would not show: every frame to the
// guest is at least 60 bytes and its padding is zero. Building a fresh gateway per input (VNET_FUZZ_FRESH=1)
// costs ~650 KiB of zeroed buffers and held the targets to 1-2 thousand inputs a second under ASan.

import CFuzzDriver
#if canImport(Glibc)
import Glibc
#endif
@_exported import VNetBuffers
@_exported import VNetGateway
@_exported import VNetServices
@_exported import VNetTransport
@_exported import VNetWire

public let guestMAC = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)
public let gatewayMAC = MACAddress(0x52, 0x55, 0x0A, 0x00, 0x02, 0x02)
public let guestIP = IPv4Address(10, 0, 2, 15)
public let gatewayIP = IPv4Address(10, 0, 2, 2)
public let dnsIP = IPv4Address(10, 0, 2, 3)
public let externalIP = IPv4Address(192, 0, 2, 1)

/// A HostIO with no sockets behind it. Handles count up; receives answer from `pending` (set by the whole-gateway
/// target), else would-block. TCP sockets accept every byte and hold `peerBytes` for peeks.
public final class FuzzHost: HostIO {
    public var nextHandle: Int32 = 100
    public var failOpen = false
    /// Datagrams (or echo replies, or errors) the next receive returns, per call.
    public var pending: [HostReceiveScript] = []
    public var peerBytes: [UInt8] = []
    public var peerClosed = false
    public var connectError: Int32 = 0
    public var sendSpace = 65_536

    public init() {}

    /// Back to the state `init` left (for the gateway reused between inputs).
    public func reset() {
        nextHandle = 100; failOpen = false; pending = []; peerBytes = []; peerClosed = false; connectError = 0
        sendSpace = 65_536; peekOffset = 0
    }

    func open() -> Int32? {
        guard !failOpen else { return nil }
        nextHandle &+= 1
        return nextHandle
    }

    public func openUDP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? { open() }
    public func openICMPEcho(destination: IPv4Address, tag: FlowTag) -> Int32? { open() }
    // IPv6 flows get stub sockets too, so their NAT paths are reached.
    public func openUDP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32? { open() }
    public func openICMPEcho(to destination: IPAddress, tag: FlowTag) -> Int32? { open() }
    public func openTCP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32? { open() }
    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer, to address: IPAddress, port: UInt16) -> Bool { touch(payload); return true }
    public func setTTL(_ handle: Int32, ttl: UInt8) {}
    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer) -> Bool { touch(payload); return true }
    public func sendICMPEcho(_ handle: Int32, identifier: UInt16, sequence: UInt16, payload: UnsafeRawBufferPointer) -> Bool { true }
    public func receiveUDP(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive { receive(into: buffer) }
    public func receiveICMPEcho(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive { receive(into: buffer) }
    public func close(_ handle: Int32) {}

    func receive(into buffer: UnsafeMutableRawBufferPointer) -> HostReceive {
        guard !pending.isEmpty else { return .wouldBlock }
        let s = pending.removeFirst()
        let n = min(s.bytes.count, buffer.count)
        s.bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        switch s.kind {
        case 0: return .datagram(length: n)
        case 1: return .echoReply(identifier: s.identifier, sequence: s.sequence, length: n)
        case 2: return .icmpError(type: UInt8(truncatingIfNeeded: s.sequence >> 8), code: UInt8(truncatingIfNeeded: s.sequence),
                                  offender: s.offender, length: n)
        case 3: return .icmp6Error(type: UInt8(truncatingIfNeeded: s.sequence >> 8), code: UInt8(truncatingIfNeeded: s.sequence),
                                   offender: s.offender == .loopback ? .loopback : IPv6Address(high: 0x2001_0db8_0000_0000, low: UInt64(s.offender.rawValue)),
                                   length: n)
        default: return .ignored
        }
    }

    // TCP: a socket that takes everything and holds `peerBytes`.
    var peekOffset = 0
    public func openTCP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? { open() }
    public func tcpConnectError(_ handle: Int32) -> Int32 { connectError }
    public func tcpSend(_ handle: Int32, _ bytes: UnsafeRawBufferPointer) -> TCPIOResult {
        let n = min(bytes.count, sendSpace)
        touch(UnsafeRawBufferPointer(rebasing: bytes[..<n]))
        return .done(n)
    }
    /// Every byte a send hands to a host socket is read, so ASan sees a send from memory that was freed (a held
    /// frame's read buffer released before the gather went out) or from past a buffer's end.
    public var sentBytesFold: UInt8 = 0
    func touch(_ b: UnsafeRawBufferPointer) { for x in b { sentBytesFold ^= x } }
    public func tcpPeek(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> TCPIOResult {
        let available = peerBytes.count - peekOffset
        guard available > 0, !buffer.isEmpty else { return peerClosed ? .endOfStream : .wouldBlock }
        let n = min(available, buffer.count)
        peerBytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[peekOffset ..< peekOffset + n])) }
        peekOffset += n
        return .done(n)
    }
    public func tcpDiscard(_ handle: Int32, count: Int) {
        let n = max(0, min(count, peerBytes.count))
        peerBytes.removeFirst(n)
        peekOffset = max(0, peekOffset - n)
    }
    public var tcpDrainedPeekIsFinal: Bool { true }
    public func tcpSetPeekOffset(_ handle: Int32, offset: Int) { peekOffset = max(0, min(offset, peerBytes.count)) }
    public func tcpSendSpace(_ handle: Int32) -> Int { sendSpace }
    public func tcpShutdownWrite(_ handle: Int32) {}
    public func tcpAbort(_ handle: Int32) {}
    public func tcpSetInterest(_ handle: Int32, tag: FlowTag, readable: Bool, writable: Bool) {}
    public func openCommand(_ command: String, tag: FlowTag) -> Int32? { open() }
    public func adoptTCP(_ handle: Int32, tag: FlowTag) -> Bool { true }
    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer, to address: IPv4Address, port: UInt16) -> Bool { true }
}

public struct HostReceiveScript {
    public var kind: UInt8
    public var identifier: UInt16?
    public var sequence: UInt16
    public var offender: IPv4Address
    public var bytes: [UInt8]
    public init(kind: UInt8, identifier: UInt16?, sequence: UInt16, offender: IPv4Address, bytes: [UInt8]) {
        self.kind = kind
        self.identifier = identifier
        self.sequence = sequence
        self.offender = offender
        self.bytes = bytes
    }
}

/// A gateway with small tables, DNS upstreams set, one hostfwd-like guestfwd, for one fuzz input.
public func makeGateway(host: FuzzHost) -> Gateway<FuzzHost> {
    var c = GatewayConfig()
    c.udpFlowCapacity = 32
    c.icmpFlowCapacity = 16
    c.tcpFlowCapacity = 32
    c.tcpHalfOpenCapacity = 16
    c.guestUDPFlowCapacity = 24   // below the tables, so both the per-guest and the table-full refusals are reachable
    c.guestTCPFlowCapacity = 24
    c.dnsFlowCapacity = 8
    c.fragmentSlots = 4
    c.guestForwards = [GuestForward(serverAddress: IPv4Address(10, 0, 2, 100), serverPort: 4444, target: .command("true"))]
    let g = Gateway(config: c, host: host, queueCapacity: 0)
    g.setDNSUpstreams(fuzzDNSUpstreams)
    return g
}

nonisolated(unsafe) var sharedGateway: (FuzzHost, Gateway<FuzzHost>)?   // libFuzzer calls in on one thread
let freshPerInput: Bool = {
    guard let v = getenv("VNET_FUZZ_FRESH") else { return false }
    return String(cString: v) == "1"
}()

/// The gateway for this input: the process's one gateway and host, reset (see the Theory of Operation), or a
/// fresh pair with VNET_FUZZ_FRESH=1 (to check that a crash does not depend on reuse).
public func reusedGateway() -> (FuzzHost, Gateway<FuzzHost>) {
    if !freshPerInput, let (h, g) = sharedGateway {
        h.reset()
        g.reset()
        g.setDNSUpstreams(fuzzDNSUpstreams)
        return (h, g)
    }
    let h = FuzzHost()
    let g = makeGateway(host: h)
    if !freshPerInput { sharedGateway = (h, g) }
    return (h, g)
}

nonisolated(unsafe) var sharedDeframer: StreamDeframer?

/// A stream deframer (MTU 1500, 128 KiB) for this input: the process's one, reset (or fresh with VNET_FUZZ_FRESH=1).
public func reusedDeframer() -> StreamDeframer {
    if !freshPerInput, let d = sharedDeframer { d.reset(); return d }
    let d = StreamDeframer(mtu: 1500, capacity: 1 << 17)
    if !freshPerInput { sharedDeframer = d }
    return d
}

let fuzzDNSUpstreams = [(IPv4Address(192, 0, 2, 53), UInt16(53)), (IPv4Address(198, 51, 100, 53), UInt16(53))]

public let startTime = Instant(nanoseconds: 1_000_000_000_000)

/// Drains the guest queue, trapping on a frame shorter than 60 bytes or with non-zero padding. `observe` sees
/// each frame first (without the queue's per-frame header).
public func drainAndCheck<H: HostIO>(_ g: Gateway<H>, observe: ((UnsafeRawBufferPointer) -> Void)? = nil) {
    let q = g.toGuest
    while let f = q.firstFrame {
        let frame = UnsafeRawBufferPointer(rebasing: f[q.frameHeaderLength...])
        observe?(frame)
        precondition(frame.count >= 60, "frame to the guest shorter than 60 bytes")
        let type = frame.u16(12)
        var content = frame.count
        if type == EtherType.arp.rawValue { content = 14 + ARPPacket.length }
        if type == EtherType.ipv4.rawValue { content = 14 + Int(frame.u16(16)) }
        if type == EtherType.ipv6.rawValue { content = 14 + 40 + Int(frame.u16(18)) }
        precondition(content <= frame.count, "IP length past the frame")
        for i in content ..< frame.count { precondition(frame[i] == 0, "non-zero padding in a frame to the guest") }
        q.removeFirstFrame()
    }
}

/// An Ethernet frame from the guest to the gateway: header + `body` (bytes array).
public func ethernetFrame(type: EtherType, dst: MACAddress = gatewayMAC, _ body: [UInt8]) -> [UInt8] {
    var f = [UInt8](repeating: 0, count: 14) + body
    f.withUnsafeMutableBytes { _ = EthernetHeader(destination: dst, source: guestMAC, etherType: type).emit(into: $0) }
    return f
}

/// An IPv4 packet (20-byte header, valid checksum) around `l4`, from the guest.
public func ipv4Packet(src: IPv4Address = guestIP, dst: IPv4Address, proto: IPProtocol, flags: UInt16 = 0x4000, id: UInt16 = 1,
                       _ l4: [UInt8]) -> [UInt8] {
    var h = [UInt8](repeating: 0, count: 20)
    let total = min(20 + l4.count, 65_535)
    h.withUnsafeMutableBytes {
        _ = IPv4Header(totalLength: total, identification: id, flagsFragmentOffset: flags, protocolNumber: proto, source: src,
                       destination: dst).emit(into: $0)
    }
    return h + l4.prefix(total - 20)
}

/// Sets the layer-4 checksum of `l4` (UDP/TCP at `offset`, ICMP with no pseudo-header) so it verifies.
public func fixChecksum(_ l4: inout [UInt8], proto: IPProtocol, src: IPv4Address, dst: IPv4Address) {
    let offset: Int
    switch proto {
    case .udp: offset = 6
    case .tcp: offset = 16
    case .icmp: offset = 2
    default: return
    }
    guard l4.count >= offset + 2 else { return }
    l4[offset] = 0; l4[offset + 1] = 0
    let sum: UInt16 = l4.withUnsafeBytes { b in
        if proto == .icmp { return InternetChecksum.of(b) }
        return InternetChecksum.finish(InternetChecksum.add(b, to: InternetChecksum.pseudoHeader(
            source: src, destination: dst, protocolNumber: proto.rawValue, length: b.count)))
    }
    l4[offset] = UInt8(sum >> 8); l4[offset + 1] = UInt8(sum & 0xFF)
}

/// Hands one frame to the gateway.
public func deliver<H: HostIO>(_ g: Gateway<H>, _ frame: [UInt8], now: Instant) {
    frame.withUnsafeBytes { g.handleGuestFrame($0, now: now) }
    g.flushPendingAcks()
}

/// Reads fuzz input as a sequence of records: one byte of selector, two of length, then the bytes.
public struct RecordReader {
    let data: UnsafeRawBufferPointer
    var offset = 0
    public init(_ data: UnsafeRawBufferPointer) { self.data = data }
    public mutating func next() -> (selector: UInt8, bytes: [UInt8])? {
        guard offset + 3 <= data.count else { return nil }
        let selector = data[offset]
        let n = min(Int(data[offset + 1]) << 8 | Int(data[offset + 2]), data.count - offset - 3)
        let bytes = Array(data[offset + 3 ..< offset + 3 + n])
        offset += 3 + n
        return (selector, bytes)
    }
}

/// Makes a fuzzed IPv4 frame pass the checksum checks where its lengths allow: the IPv4 header checksum, then
/// the UDP/TCP/ICMP checksum over the IP payload (the UDP length field's span for UDP).
public func fixupFrame(_ f: inout [UInt8]) {
    guard f.count >= 34, f[12] == 0x08, f[13] == 0x00 else { return }
    let ihl = Int(f[14] & 0x0F) * 4
    let total = Int(f[16]) << 8 | Int(f[17])
    guard ihl >= 20, 14 + ihl <= f.count else { return }
    f[24] = 0; f[25] = 0
    let sum = f.withUnsafeBytes { InternetChecksum.of(UnsafeRawBufferPointer(rebasing: $0[14 ..< 14 + ihl])) }
    f[24] = UInt8(sum >> 8); f[25] = UInt8(sum & 0xFF)
    guard total >= ihl, 14 + total <= f.count else { return }
    let src = IPv4Address(rawValue: UInt32(f[26]) << 24 | UInt32(f[27]) << 16 | UInt32(f[28]) << 8 | UInt32(f[29]))
    let dst = IPv4Address(rawValue: UInt32(f[30]) << 24 | UInt32(f[31]) << 16 | UInt32(f[32]) << 8 | UInt32(f[33]))
    var l4 = Array(f[14 + ihl ..< 14 + total])
    let proto = IPProtocol(rawValue: f[23])
    if proto == .udp, l4.count >= 8 {
        let len = Int(l4[4]) << 8 | Int(l4[5])
        if len >= 8 && len <= l4.count {
            var d = Array(l4[..<len])
            fixChecksum(&d, proto: .udp, src: src, dst: dst)
            l4.replaceSubrange(0 ..< len, with: d)
        }
    } else {
        fixChecksum(&l4, proto: proto, src: src, dst: dst)
    }
    f.replaceSubrange(14 + ihl ..< 14 + total, with: l4)
}

/// Wraps `l4` from the guest to `dst` into a whole frame with every checksum right.
public func guestFrame(dst: IPv4Address, proto: IPProtocol, _ l4: [UInt8], src: IPv4Address = guestIP,
                       ethDst: MACAddress = gatewayMAC) -> [UInt8] {
    var f = ethernetFrame(type: .ipv4, dst: ethDst, ipv4Packet(src: src, dst: dst, proto: proto, l4))
    fixupFrame(&f)
    return f
}

/// Runs libFuzzer with `callback` as LLVMFuzzerTestOneInput (see CFuzzDriver.h for why each target has its own main).
public func runFuzzer(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                      _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32 {
    var count = argc
    var vector = argv
    return withUnsafeMutablePointer(to: &vector) { v in
        LLVMFuzzerRunDriver(&count, v, callback)
    }
}
