// Rigs for the BAD-INPUTS regression tests (BadInputTests.swift). Each wraps a gateway harness and keeps one
// healthy flow open beside the hostile input, so every case can check the four things the issue asks:
// - the RFC behaviour (the case's own expectations);
// - the drop is counted under a named reason (`expectDrop`: exactly one drop, under that reason);
// - a healthy flow keeps running at the same time (`healthy()`: one message each way, nothing dropped);
// - the guest receives no byte vnet did not produce (`finish()`: every frame to the guest comes from the
//   gateway's MAC with zero padding, and none carries the canary that hostile frames are stuffed with).
// `BadInputRig` uses FakeHost and a UDP flow (guest 41000 -> 192.0.2.1:7) as the healthy flow; `TCPBadInputRig`
// uses FakeTCPHost and an established TCP connection.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

/// Bytes hostile frames carry where vnet must never look (padding, bytes past a length field). A frame to the
/// guest holding any 4 consecutive bytes of this cycle was built from guest bytes it should not have used.
let canary: [UInt8] = [0xC4, 0x7A, 0x11, 0x9E, 0x5D, 0x3B, 0xE0, 0x42]

func canaryBytes(_ n: Int) -> [UInt8] { (0 ..< max(0, n)).map { canary[$0 % canary.count] } }

extension Array where Element == UInt8 {
    /// The frame stuffed with canary bytes up to `length` (Ethernet padding vnet must ignore).
    func canaryPadded(to length: Int) -> [UInt8] { self + canaryBytes(length - count) }
}

func containsCanary(_ f: [UInt8]) -> Bool {
    guard f.count >= 4 else { return false }
    for i in 0 ... f.count - 4 {
        for k in 0 ..< canary.count where f[i] == canary[k] {
            if f[i + 1] == canary[(k + 1) % 8] && f[i + 2] == canary[(k + 2) % 8] && f[i + 3] == canary[(k + 3) % 8] { return true }
        }
    }
    return false
}

/// Every frame came from the gateway and none carries canary bytes (padding is checked by the harness drain).
func expectNoForeignBytes(_ frames: [[UInt8]], sourceLocation: SourceLocation = #_sourceLocation) {
    for (i, f) in frames.enumerated() {
        #expect(f.count >= 14 && MACAddress(f[6], f[7], f[8], f[9], f[10], f[11]) == gatewayMAC, "frame \(i) not from the gateway",
                sourceLocation: sourceLocation)
        #expect(!containsCanary(f), "frame \(i) to the guest carries bytes vnet did not produce: \(f)", sourceLocation: sourceLocation)
    }
}

extension Array where Element == UInt8 {
    /// Recomputes the TCP checksum of a frame (IPv4 at 14 with a 20-byte header, TCP at 34) after an edit.
    mutating func fixTCPChecksum(source: IPv4Address = guestIP, destination: IPv4Address) {
        self[50] = 0; self[51] = 0
        let sum = self.withUnsafeBytes { b -> UInt16 in
            let seg = UnsafeRawBufferPointer(rebasing: b[34...])
            return InternetChecksum.finish(InternetChecksum.add(seg, to: InternetChecksum.pseudoHeader(
                source: source, destination: destination, protocolNumber: 6, length: seg.count)))
        }
        self[50] = UInt8(sum >> 8); self[51] = UInt8(sum & 0xFF)
    }
}

final class BadInputRig {
    static let healthyPort: UInt16 = 41_000
    let h: GatewayHarness
    private(set) var healthyHandle: Int32 = -1
    private(set) var healthyTag = FlowTag(kind: .udp, index: 0)
    private var round: UInt8 = 0
    /// Every frame the guest received so far.
    private(set) var received: [[UInt8]] = []

    init(_ configure: (inout GatewayConfig) -> Void = { _ in }, sourceLocation: SourceLocation = #_sourceLocation) throws {
        h = GatewayHarness(configure)
        h.send(FrameBuilder.udpFrame(dst: externalIP, srcPort: Self.healthyPort, dstPort: 7, [0]))
        let open = try #require(h.host.opens.last, "healthy flow not opened", sourceLocation: sourceLocation)
        healthyHandle = open.handle
        healthyTag = open.tag
        try healthy(sourceLocation: sourceLocation)
    }

    var gateway: Gateway<FakeHost> { h.gateway }
    var host: FakeHost { h.host }
    var counters: GatewayCounters { h.counters }

    /// Everything queued for the guest (each frame checked for length and zero padding), remembered.
    @discardableResult
    func collect(sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
        let f = h.drain(sourceLocation: sourceLocation)
        received += f
        return f
    }

    /// Sends one guest frame and returns what the guest got back.
    @discardableResult
    func send(_ f: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
        h.send(f)
        return collect(sourceLocation: sourceLocation)
    }

    /// Sends a frame that must be dropped under exactly `reason` (one drop, no other), reaching no host socket
    /// (none opened, nothing sent) and, unless `reply`, sending nothing to the guest.
    @discardableResult
    func expectDrop(_ reason: DropReason, _ f: [UInt8], reply: Bool = false, _ comment: Comment? = nil,
                    sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
        let before = h.counters
        let opens = host.opens.count, sent = host.sent.count, echoes = host.echoes.count
        let out = send(f, sourceLocation: sourceLocation)
        #expect(dropDelta(before, h.counters) == [reason: 1], comment, sourceLocation: sourceLocation)
        #expect(host.opens.count == opens && host.sent.count == sent && host.echoes.count == echoes, "reached a host socket", sourceLocation: sourceLocation)
        if !reply { #expect(out.isEmpty, comment, sourceLocation: sourceLocation) }
        return out
    }

    /// Sends a frame that must be served without any drop; returns what the guest got.
    @discardableResult
    func expectServed(_ f: [UInt8], _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
        let before = h.counters
        let out = send(f, sourceLocation: sourceLocation)
        #expect(dropDelta(before, h.counters) == [:], comment, sourceLocation: sourceLocation)
        return out
    }

    /// The healthy flow carries one datagram each way, intact, with nothing dropped.
    func healthy(sourceLocation: SourceLocation = #_sourceLocation) throws {
        round &+= 1
        let before = h.counters
        let out = pattern(20, seed: round)
        h.send(FrameBuilder.udpFrame(dst: externalIP, srcPort: Self.healthyPort, dstPort: 7, out))
        #expect(host.sent.last == FakeHost.Sent(handle: healthyHandle, bytes: out), "healthy flow: guest -> host", sourceLocation: sourceLocation)
        let back = pattern(30, seed: round &+ 0x80)
        host.queue(healthyHandle, .datagram(back))
        h.hostReadable(healthyTag)
        let frames = collect(sourceLocation: sourceLocation)
        try #require(frames.count == 1, "healthy flow: host -> guest", sourceLocation: sourceLocation)
        #expect(try expectUDP(frames[0], src: externalIP, srcPort: 7, dstPort: Self.healthyPort, sourceLocation: sourceLocation) == back,
                sourceLocation: sourceLocation)
        #expect(dropDelta(before, h.counters) == [:], "healthy flow dropped", sourceLocation: sourceLocation)
    }

    /// Moves the clock on in 30 s steps, polling, with the healthy flow used at every step (so it stays alive
    /// and is shown to work throughout).
    func advance(_ d: Instant.Duration, sourceLocation: SourceLocation = #_sourceLocation) throws {
        var left = d.nanoseconds
        while left > 0 {
            let step = min(left, Instant.Duration.seconds(30).nanoseconds)
            h.advance(Instant.Duration(nanoseconds: step))
            h.poll()
            collect(sourceLocation: sourceLocation)
            try healthy(sourceLocation: sourceLocation)
            left -= step
        }
    }

    /// The end of a case: the healthy flow still works and the guest got only bytes vnet produced.
    func finish(sourceLocation: SourceLocation = #_sourceLocation) throws {
        try healthy(sourceLocation: sourceLocation)
        expectNoForeignBytes(received, sourceLocation: sourceLocation)
    }
}

/// The TCP counterpart: the healthy flow is an established connection guest:50000 -> 10.0.2.2:8080.
final class TCPBadInputRig {
    let h: TCPHarness
    var conn: GuestConn
    /// Bytes the remote sent to the guest so far (what the guest has acknowledged).
    private(set) var hostSent = 0
    private var round: UInt8 = 0
    private(set) var received: [[UInt8]] = []

    init(_ configure: (inout GatewayConfig) -> Void = { _ in }, sourceLocation: SourceLocation = #_sourceLocation) throws {
        h = TCPHarness(configure)
        h.introduceGuest()
        conn = try h.connect(to: gatewayIP, port: 8080, from: 50_000, sourceLocation: sourceLocation)
        try healthy(sourceLocation: sourceLocation)
    }

    var host: FakeTCPHost { h.host }
    var counters: GatewayCounters { h.counters }

    @discardableResult
    func collect(sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
        let f = h.drain(sourceLocation: sourceLocation)
        received += f
        return f
    }

    /// Sends one guest frame (then the batch's ACKs) and returns the segments the guest got.
    @discardableResult
    func send(_ f: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws -> [Segment] {
        h.send(f)
        h.flush()
        return try collect(sourceLocation: sourceLocation).map { try expectSegment($0, sourceLocation: sourceLocation) }
    }

    /// Sends a frame that must be dropped under exactly `reason`, opening no host socket.
    @discardableResult
    func expectDrop(_ reason: DropReason, _ f: [UInt8], _ comment: Comment? = nil,
                    sourceLocation: SourceLocation = #_sourceLocation) throws -> [Segment] {
        let before = h.counters
        let sockets = host.order.count
        let out = try send(f, sourceLocation: sourceLocation)
        #expect(dropDelta(before, h.counters) == [reason: 1], comment, sourceLocation: sourceLocation)
        #expect(host.order.count == sockets, "a host socket was opened", sourceLocation: sourceLocation)
        return out
    }

    /// The healthy connection moves data both ways, with nothing dropped.
    func healthy(sourceLocation: SourceLocation = #_sourceLocation) throws {
        round &+= 1
        let before = h.counters
        let sock = try host.socket(conn.handle, sourceLocation: sourceLocation)
        #expect(sock.isOpen, "healthy connection closed", sourceLocation: sourceLocation)
        let written = sock.written.count
        let data = pattern(10, seed: round)
        h.guestSends(&conn, ack: conn.ourSeq(hostSent), data)
        h.flush()
        #expect(Array(sock.written[written...]) == data, "healthy connection: guest -> host", sourceLocation: sourceLocation)
        let acks = try collect(sourceLocation: sourceLocation).map { try expectSegment($0, sourceLocation: sourceLocation) }
        #expect(acks.contains { $0.ack == conn.seq }, "guest data acknowledged", sourceLocation: sourceLocation)
        let back = pattern(12, seed: round &+ 0x80)
        host.remoteSends(conn.handle, back)
        h.readable(conn)
        let segs = try collect(sourceLocation: sourceLocation).map { try expectSegment($0, sourceLocation: sourceLocation) }
        try #require(segs.count == 1, "healthy connection: host -> guest", sourceLocation: sourceLocation)
        #expect(segs[0].payload == back && segs[0].seq == conn.ourSeq(hostSent), sourceLocation: sourceLocation)
        hostSent += back.count
        h.guestAcks(conn, upTo: hostSent)
        h.flush()
        collect(sourceLocation: sourceLocation)
        #expect(dropDelta(before, h.counters) == [:], "healthy connection dropped", sourceLocation: sourceLocation)
    }

    func finish(sourceLocation: SourceLocation = #_sourceLocation) throws {
        try healthy(sourceLocation: sourceLocation)
        expectNoForeignBytes(received, sourceLocation: sourceLocation)
    }
}
