// A gateway wired to a FakeHost and a fake clock, plus composable checkers for what it sends the guest.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

final class GatewayHarness {
    let host = FakeHost()
    let gateway: Gateway<FakeHost>
    var now = Instant(nanoseconds: 1_000 * 1_000_000_000)

    init(queueCapacity: Int = 0, _ configure: (inout GatewayConfig) -> Void = { _ in }) {
        var c = GatewayConfig()
        c.tcpFlowCapacity = 64   // keeps each gateway small; TCP is not under test here
        configure(&c)
        gateway = Gateway(config: c, host: host, queueCapacity: queueCapacity)
    }

    var counters: GatewayCounters { gateway.counters }

    func send(_ frame: [UInt8]) { frame.withUnsafeBytes { gateway.handleGuestFrame($0, now: now) } }
    func advance(_ d: Instant.Duration) { now = now + d }
    func poll() { gateway.poll(now: now) }
    func hostReadable(_ tag: FlowTag) { gateway.hostReadable(tag, now: now) }

    /// Everything queued for the guest; each frame is checked for length and zero padding.
    func drain(sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
        let frames = drainFrames(gateway.toGuest)
        for f in frames { expectWellFormedPadding(f, sourceLocation: sourceLocation) }
        return frames
    }

    /// Sends one frame and returns what it produced, checking that it dropped nothing.
    func exchange(_ frame: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
        let before = counters
        send(frame)
        #expect(dropDelta(before, counters) == [:], sourceLocation: sourceLocation)
        return drain(sourceLocation: sourceLocation)
    }

    /// Sends one frame that must be dropped under exactly `reason` (and only it), with nothing sent to the
    /// guest unless `allowReply`, and no host socket opened.
    func expectDrop(_ reason: DropReason, _ frame: [UInt8], allowReply: Bool = false, _ comment: Comment? = nil,
                    sourceLocation: SourceLocation = #_sourceLocation) {
        let before = counters
        let opened = host.opens.count
        send(frame)
        #expect(counters.totalDrops - before.totalDrops == 1, comment, sourceLocation: sourceLocation)
        #expect(dropDelta(before, counters) == [reason: 1], comment, sourceLocation: sourceLocation)
        #expect(host.opens.count == opened, comment, sourceLocation: sourceLocation)
        let frames = drain(sourceLocation: sourceLocation)
        if !allowReply { #expect(frames.isEmpty, comment, sourceLocation: sourceLocation) }
    }

    /// The last host socket opened (fails the test when there is none).
    func lastOpen(sourceLocation: SourceLocation = #_sourceLocation) throws -> FakeHost.Open {
        try #require(host.opens.last, sourceLocation: sourceLocation)
    }
}

/// Drop counters that changed, with how much.
func dropDelta(_ before: GatewayCounters, _ after: GatewayCounters) -> [DropReason: UInt64] {
    var d: [DropReason: UInt64] = [:]
    for r in DropReason.allCases where after[r] != before[r] { d[r] = after[r] &- before[r] }
    return d
}

/// Empties a queue through firstFrame/removeFirstFrame.
/// Every queued frame, oldest first, without the queue's per-frame (virtio-net) header.
func drainFrames(_ q: FrameQueue) -> [[UInt8]] {
    var out: [[UInt8]] = []
    while let f = q.firstFrame {
        out.append(Array(f[q.frameHeaderLength...]))
        q.removeFirstFrame()
    }
    return out
}

/// Every queued frame with its virtio-net header (a queue built with `guestOffloads`).
func drainOffloadedFrames(_ q: FrameQueue) throws -> [(header: VirtioNetHeader, frame: [UInt8])] {
    try #require(q.frameHeaderLength == VirtioNetHeader.length)
    var out: [(VirtioNetHeader, [UInt8])] = []
    while let f = q.firstFrame {
        out.append((try VirtioNetHeader.parse(f), Array(f[VirtioNetHeader.length...])))
        q.removeFirstFrame()
    }
    return out
}

/// Fills the queue's whole storage with `byte` (one giant frame, then drained), so stale bytes would show in
/// any padding that is not written.
func dirty(_ q: FrameQueue, with byte: UInt8 = 0xAA) {
    let out = q.reserve(maximumLength: q.capacity - FrameQueue.prefixLength)!
    out.initializeMemory(as: UInt8.self, repeating: byte)
    q.commit(length: out.count)
    q.removeFirstFrame()
}

/// A frame for the guest is at least 60 bytes, and every byte after its real content is zero.
func expectWellFormedPadding(_ f: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(f.count >= 60, "frame of \(f.count) bytes", sourceLocation: sourceLocation)
    guard f.count >= 14 else { return }
    let type = UInt16(f[12]) << 8 | UInt16(f[13])
    let content: Int
    switch type {
    case EtherType.arp.rawValue: content = 14 + ARPPacket.length
    case EtherType.ipv4.rawValue where f.count >= 18: content = 14 + (Int(f[16]) << 8 | Int(f[17]))
    case EtherType.ipv6.rawValue where f.count >= 20: content = 14 + 40 + (Int(f[18]) << 8 | Int(f[19]))
    default:
        Issue.record("unexpected ethertype \(type)", sourceLocation: sourceLocation)
        return
    }
    #expect(content <= f.count, sourceLocation: sourceLocation)
    #expect(f.count == max(60, content), "frame longer than its content", sourceLocation: sourceLocation)
    if content < f.count {
        #expect(f[content...].allSatisfy { $0 == 0 }, "padding is not zero: \(Array(f[content...]))", sourceLocation: sourceLocation)
    }
}

// MARK: - Checkers

struct IPv4Packet {
    var ethernet: EthernetHeader
    var header: IPv4Header
    /// Exactly the IP payload (total length minus header), never the padding.
    var payload: [UInt8]
}

/// Checks a frame from the gateway to `mac` carrying IPv4 (`src`/`dst`/`proto` when given, valid header
/// checksum) and returns its parts.
@discardableResult
func expectIPv4(_ f: [UInt8], src: IPv4Address? = nil, dst: IPv4Address? = nil, proto: IPProtocol? = nil,
                toMAC mac: MACAddress = guestMAC, sourceLocation: SourceLocation = #_sourceLocation) throws -> IPv4Packet {
    let eth = try #require(parsed(f) { try EthernetHeader.parse($0) }, sourceLocation: sourceLocation)
    #expect(eth.source == gatewayMAC, sourceLocation: sourceLocation)
    #expect(eth.destination == mac, sourceLocation: sourceLocation)
    try #require(eth.etherType == .ipv4 && eth.vlanTag == nil, sourceLocation: sourceLocation)
    let body = Array(f[14...])
    let ip = try #require(parsed(body) { try IPv4Header.parse($0) }, sourceLocation: sourceLocation)
    #expect(body.withUnsafeBytes { IPv4Header.headerChecksumValid($0, headerLength: ip.headerLength) }, "IPv4 checksum",
            sourceLocation: sourceLocation)
    if let src { #expect(ip.source == src, sourceLocation: sourceLocation) }
    if let dst { #expect(ip.destination == dst, sourceLocation: sourceLocation) }
    if let proto { #expect(ip.protocolNumber == proto, sourceLocation: sourceLocation) }
    #expect(ip.ttl > 0, sourceLocation: sourceLocation)
    return IPv4Packet(ethernet: eth, header: ip, payload: Array(body[ip.payloadRange]))
}

/// Checks an unfragmented UDP datagram to the guest (ports, length, a valid non-zero checksum) and returns its payload.
@discardableResult
func expectUDP(_ f: [UInt8], src: IPv4Address, srcPort: UInt16, dst: IPv4Address = guestIP, dstPort: UInt16,
               toMAC mac: MACAddress = guestMAC, sourceLocation: SourceLocation = #_sourceLocation) throws -> [UInt8] {
    let p = try expectIPv4(f, src: src, dst: dst, proto: .udp, toMAC: mac, sourceLocation: sourceLocation)
    #expect(!p.header.isFragment, sourceLocation: sourceLocation)
    let udp = try #require(parsed(p.payload) { try UDPHeader.parse($0) }, sourceLocation: sourceLocation)
    #expect(udp.sourcePort == srcPort && udp.destinationPort == dstPort, "ports \(udp.sourcePort) -> \(udp.destinationPort)",
            sourceLocation: sourceLocation)
    #expect(udp.length == p.payload.count, sourceLocation: sourceLocation)
    #expect(udp.checksum != 0, "UDP checksum missing", sourceLocation: sourceLocation)
    #expect(p.payload.withUnsafeBytes { UDPHeader.checksumValid($0, source: src, destination: dst) }, "UDP checksum",
            sourceLocation: sourceLocation)
    return Array(p.payload[8...])
}

/// Checks an ICMP message to the guest (type, code, valid checksum) and returns its header and body.
@discardableResult
func expectICMP(_ f: [UInt8], src: IPv4Address, dst: IPv4Address = guestIP, type: UInt8, code: UInt8 = 0,
                sourceLocation: SourceLocation = #_sourceLocation) throws -> (header: ICMPv4Header, body: [UInt8]) {
    let p = try expectIPv4(f, src: src, dst: dst, proto: .icmp, sourceLocation: sourceLocation)
    let h = try #require(parsed(p.payload) { try ICMPv4Header.parse($0) }, sourceLocation: sourceLocation)
    #expect(h.type == type && h.code == code, "ICMP \(h.type)/\(h.code)", sourceLocation: sourceLocation)
    #expect(p.payload.withUnsafeBytes { ICMPv4Header.checksumValid($0) }, "ICMP checksum", sourceLocation: sourceLocation)
    return (h, Array(p.payload[8...]))
}

/// A recognisable payload.
func pattern(_ n: Int, seed: UInt8 = 0) -> [UInt8] { (0 ..< n).map { UInt8(truncatingIfNeeded: $0 &* 3 &+ Int(seed)) } }

struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
