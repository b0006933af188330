// The advertised window without a syscall per segment: the gateway measures the host socket's free send space,
// then advertises the measure less what it wrote to the socket since (a lower bound: only the host peer's ACKs
// free space), and measures again once that bound falls under half of the measure or under four segments.
// Invariants checked on every segment: the window never promises more than the socket can take, and its right
// edge (ACK + window) never moves left by more than the window scale's rounding.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("TCP window estimate")
struct TCPWindowEstimateTests {
    /// Checks one segment's window against the socket's real space and the previous right edge.
    func check(_ s: Segment, _ c: GuestConn, _ h: TCPHarness, rightEdge: inout UInt32, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let window = UInt32(s.tcp.window) << UInt32(c.ourWScale)
        let space = try h.host.socket(c.handle).sendSpace
        #expect(Int(window) <= space, "window \(window) beyond the socket's space \(space)", sourceLocation: sourceLocation)
        // The scaled window field rounds down to 1 << scale bytes: the edge may step back by less than that.
        let edge = s.ack &+ window
        let granule = UInt32(1) << UInt32(c.ourWScale)
        #expect(seqLT(rightEdge, edge &+ granule), "right edge moved left: \(rightEdge) -> \(edge)", sourceLocation: sourceLocation)
        if seqLT(rightEdge, edge) { rightEdge = edge }
    }

    @Test("request/response: one measure serves many segments, and every window is within the socket's space")
    func pingPongMeasuresRarely() throws {
        let h = TCPHarness(sendCapacity: 256 * 1024)
        var c = try h.connect()
        var edge = c.guestSeq(0)
        let before = h.host.sendSpaceQueries
        var ours = 0
        for round in 0 ..< 50 {
            h.guestSends(&c, ack: c.ourSeq(ours), flags: [.ack, .psh], pattern(100, seed: UInt8(round)))
            h.flush()
            for s in try h.segments() { try check(s, c, h, rightEdge: &edge) }
            h.host.remoteReads(c.handle, 100)            // the host peer takes the request
            h.host.remoteSends(c.handle, pattern(100, seed: UInt8(round + 100)))
            h.readable(c)
            let reply = try h.oneSegment("reply \(round)")
            #expect(reply.payload == pattern(100, seed: UInt8(round + 100)))
            try check(reply, c, h, rightEdge: &edge)
            ours += 100
        }
        // 50 rounds of 100 bytes against 128 KiB of measured space: the bound never nears half of it.
        #expect(h.host.sendSpaceQueries - before <= 2, "\(h.host.sendSpaceQueries - before) send-space queries")
        #expect(try h.host.socket(c.handle).written.count == 5000)
    }

    @Test("a host peer that stops reading: the window closes on measures, never on the estimate alone, and reopens")
    func stalledPeerClosesAndReopens() throws {
        let h = TCPHarness(sendCapacity: 64 * 1024)
        var c = try h.connect()
        var edge = c.guestSeq(0)
        var sent = 0
        var sawZeroWindow = false
        var expected: [UInt8] = []
        // The guest sends as its window allows; the host peer reads nothing.
        while sent < 200_000 {
            let space = try h.host.socket(c.handle).sendSpace
            guard space > 0 else { break }
            let n = min(1460, space)
            let bytes = pattern(n, seed: UInt8(truncatingIfNeeded: sent / 1460))
            h.guestSends(&c, ack: c.ourSeq(0), bytes)
            expected += bytes
            sent += n
            h.flush()
            for s in try h.segments() {
                try check(s, c, h, rightEdge: &edge)
                if s.tcp.window == 0 { sawZeroWindow = true }
            }
        }
        #expect(try h.host.socket(c.handle).sendSpace == 0)
        #expect(sawZeroWindow || edge == c.seq, "the window closed at the data's end")
        #expect(h.host.sendSpaceQueries > 2, "the shrinking bound was measured again")
        // The peer drains the socket: the window update follows the writable event and is a real measure.
        h.host.remoteReads(c.handle, 64 * 1024)
        h.writable(c.tag)
        let update = try h.oneSegment("window update")
        try check(update, c, h, rightEdge: &edge)
        #expect(UInt32(update.tcp.window) << UInt32(c.ourWScale) >= 1460)
        #expect(try h.host.socket(c.handle).written == expected, "every byte the guest sent reached the socket once, in order")
    }
}
