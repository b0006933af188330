// Retransmission of host -> guest data: go-back-N on RTO (the peek offset rewinds to the acknowledged point; the
// congestion window restarts at one segment), single-segment fast retransmit on three duplicate ACKs with NewReno's
// recovery point and partial ACKs, and ACKs for data sent before a rewind. GatewayTCPCongestionTests covers the
// congestion window itself.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway TCP retransmission")
struct TCPRetransmitTests {
    @Test("RTO without an ACK: go-back-N from one segment, the same bytes at the same sequence numbers, with backoff")
    func rtoGoBackN() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: 1000, wscale: 0, ackWindow: 65535)
        let data = pattern(2500, seed: 11)
        h.host.remoteSends(c.handle, data)
        h.readable(c)
        let original = try h.segments()
        #expect(original.map(\.payload.count) == [1000, 1000, 500])

        h.advance(ms: 999); h.poll()
        #expect(h.drain().isEmpty)
        h.advance(ms: 1); h.poll()
        let again = try h.segments()
        #expect(again.map(\.seq) == [original[0].seq], "one segment: the window after a timeout")
        #expect(again.map(\.payload) == [original[0].payload], "identical payload")
        #expect(again.allSatisfy { $0.ack == c.seq })
        #expect(h.counters[.tcpRetransmits] == 1)
        #expect(try h.host.socket(c.handle).receiveQueue == data, "nothing discarded")

        h.advance(ms: 1999); h.poll()
        #expect(h.drain().isEmpty, "backed off to 2 s")
        h.advance(ms: 1); h.poll()
        #expect(try h.segments().flatMap(\.payload) == Array(data[..<1000]))
        #expect(h.counters[.tcpRetransmits] == 2)

        // Its ACK opens the window (slow start): the rest goes again at once, at the same sequence numbers.
        h.guestAcks(c, upTo: 1000)
        let rest = try h.segments()
        #expect(rest.map(\.seq) == [c.ourSeq(1000), c.ourSeq(2000)])
        #expect(rest.flatMap(\.payload) == Array(data[1000...]))

        h.guestAcks(c, upTo: 2500)
        h.advance(.seconds(60)); h.poll()
        #expect(try h.segments().isEmpty, "nothing left to retransmit")
        #expect(try h.host.socket(c.handle).receiveQueue.isEmpty)
    }

    @Test("an RTO rewinds only to what the guest acknowledged; new data follows the retransmission")
    func rtoThenNewData() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: 1000, wscale: 0, ackWindow: 65535)
        h.host.remoteSends(c.handle, pattern(1500))
        h.readable(c)
        _ = try h.segments()
        h.guestAcks(c, upTo: 1000)
        h.host.remoteSends(c.handle, pattern(700, seed: 1))
        h.readable(c)
        let more = try h.segments()
        #expect(more.map(\.seq) == [c.ourSeq(1500)])
        h.advance(ms: 1000); h.poll()
        let resent = try h.segments()
        let unacknowledged = Array(pattern(1500)[1000...]) + pattern(700, seed: 1)
        #expect(resent.map(\.seq) == [c.ourSeq(1000)])
        #expect(resent.flatMap(\.payload) == Array(unacknowledged[..<1000]))
        h.guestAcks(c, upTo: 2000)
        #expect(try h.segments().flatMap(\.payload) == Array(unacknowledged[1000...]))
    }

    /// Opens connections until our ISS satisfies `predicate` (the ISS is a keyed hash, so this picks the half
    /// of the sequence space under test).
    func connection(_ h: TCPHarness, where predicate: (UInt32) -> Bool, sourceLocation: SourceLocation = #_sourceLocation)
        throws -> GuestConn {
        for port in UInt16(40_000) ..< 40_200 {
            let c = try h.connect(from: port, mss: 1000, wscale: 0, ackWindow: 65535, sourceLocation: sourceLocation)
            if predicate(c.iss) { return c }
            h.send(h.frame(c, flags: .rst))
        }
        throw CancellationError()
    }

    @Test("three duplicate ACKs: fast retransmit of the first unacknowledged segment only, once",
          arguments: [true, false])
    func fastRetransmit(highISS: Bool) throws {
        let h = TCPHarness()
        // Our first unacknowledged byte in the upper or lower half of the sequence space.
        let c = try connection(h) { (Int32(bitPattern: $0 &+ 1001) < 0) == highISS }
        let data = pattern(4000, seed: 7)
        h.host.remoteSends(c.handle, data)
        h.readable(c)
        #expect(try h.segments().count == 4)
        h.guestAcks(c, upTo: 1000)   // new data acknowledged: not a duplicate
        #expect(try h.segments().isEmpty)
        for i in 1 ... 2 {
            h.guestAcks(c, upTo: 1000)
            #expect(try h.segments().isEmpty, "duplicate ACK \(i)")
        }
        h.guestAcks(c, upTo: 1000)
        let fast = try h.oneSegment("fast retransmit after the third duplicate")
        #expect(fast.seq == c.ourSeq(1000))
        #expect(fast.payload == Array(data[1000 ..< 2000]))
        #expect(h.counters[.tcpRetransmits] == 1)
        for i in 4 ... 6 {
            h.guestAcks(c, upTo: 1000)
            #expect(try h.segments().isEmpty, "duplicate ACK \(i): no more retransmissions")
        }
        // The congestion window was halved (to 2000: half of 3000 in flight, at least two segments) and 3000
        // bytes are still in flight: new data waits.
        h.host.remoteSends(c.handle, pattern(300, seed: 8))
        h.readable(c)
        #expect(try h.segments().isEmpty, "the halved window is full")
        // A partial ACK (below the recovery point): NewReno resends the next hole at once, without waiting for
        // duplicates or the timer; three duplicates of it do not fast retransmit again.
        h.guestAcks(c, upTo: 2000)
        let hole = try h.oneSegment("the next hole after a partial ACK")
        #expect(hole.seq == c.ourSeq(2000) && hole.payload == Array(data[2000 ..< 3000]))
        #expect(h.counters[.tcpRetransmits] == 2)
        for _ in 0 ..< 3 { h.guestAcks(c, upTo: 2000) }
        #expect(try h.segments().isEmpty)
        #expect(h.counters[.tcpRetransmits] == 2)
        // The recovery point acknowledged: recovery ends, and the peek offset went back where it was, so new
        // data continues after what was sent.
        h.guestAcks(c, upTo: 4000)
        let next = try h.oneSegment()
        #expect(next.seq == c.ourSeq(4000) && next.payload == pattern(300, seed: 8))
        h.guestAcks(c, upTo: 4300)
        #expect(try h.host.socket(c.handle).receiveQueue.isEmpty)
    }

    @Test("duplicate ACKs that change the window or carry data are not counted")
    func notDuplicates() throws {
        let h = TCPHarness()
        var c = try h.connect(mss: 1000, wscale: 0, ackWindow: 65535)
        h.host.remoteSends(c.handle, pattern(3000))
        h.readable(c)
        _ = try h.segments()
        h.guestAcks(c, upTo: 0, window: 65535)                  // duplicate 1
        h.guestAcks(c, upTo: 0, window: 65535)                  // duplicate 2
        h.guestAcks(c, upTo: 0, window: 65000)                  // a window update, not a duplicate
        h.guestSends(&c, ack: c.ourSeq(0), window: 65000, [1])  // data, not a duplicate
        h.flush()
        #expect(try h.segments().allSatisfy { $0.isPureAck && $0.seq == c.ourSeq(3000) })
        #expect(h.counters[.tcpRetransmits] == 0)
    }

    @Test("an ACK beyond what was resent after a rewind (data sent before it) is accepted, and sending continues from there")
    func ackAfterRewind() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: 1000, wscale: 0, ackWindow: 65535)
        let s = try h.host.socket(c.handle)
        let data = pattern(3000, seed: 4)
        h.host.remoteSends(c.handle, data)
        h.readable(c)
        #expect(try h.segments().count == 3)
        // The guest shrinks its window to 1000: the RTO resends only the first segment.
        h.guestAcks(c, upTo: 0, window: 1000)
        h.advance(ms: 1000); h.poll()
        let resent = try h.segments()
        #expect(resent.map(\.seq) == [c.ourSeq(0)])
        // Now the guest's ACK for all 3000 bytes (sent before the rewind) arrives.
        let before = h.counters
        h.guestAcks(c, upTo: 3000, window: 65535)
        #expect(dropDelta(before, h.counters) == [:], "not a bad ACK")
        #expect(h.host.discards(c.handle) == [3000])
        #expect(s.receiveQueue.isEmpty)
        #expect(try h.segments().isEmpty)
        h.host.remoteSends(c.handle, pattern(100, seed: 5))
        h.readable(c)
        let next = try h.oneSegment()
        #expect(next.seq == c.ourSeq(3000) && next.payload == pattern(100, seed: 5))
        h.advance(.seconds(1)); h.poll()
        #expect(try h.oneSegment().seq == c.ourSeq(3000), "the RTO now covers only the new bytes")
    }

    @Test("an ACK that falls inside the resent part after a rewind moves on without resending acknowledged bytes")
    func partialAckAfterRewind() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: 1000, wscale: 0, ackWindow: 65535)
        let data = pattern(3000, seed: 6)
        h.host.remoteSends(c.handle, data)
        h.readable(c)
        _ = try h.segments()
        h.guestAcks(c, upTo: 0, window: 1500)
        h.advance(ms: 1000); h.poll()
        #expect(try h.segments().map(\.payload.count) == [1000], "one segment after a timeout")
        h.guestAcks(c, upTo: 2000, window: 1500)
        #expect(h.host.discards(c.handle) == [2000])
        let next = try h.segments()
        #expect(next.map(\.seq) == [c.ourSeq(2000)])
        #expect(next.flatMap(\.payload) == Array(data[2000...]))
    }
}
