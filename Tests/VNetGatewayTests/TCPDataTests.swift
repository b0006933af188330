// Guest -> host data: written straight to the host socket and acknowledged only as far as the socket took
// it; the advertised window is the socket's free send space. Out-of-order (more in TCPReorderTests), duplicate
// and overlapping segments.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway TCP guest -> host data")
struct TCPDataTests {
    @Test("in-order data is written to the socket and acknowledged once per batch, with the scaled free space as window")
    func inOrder() throws {
        let h = TCPHarness(sendCapacity: 100_000)
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.guestSends(&c, ack: c.ourSeq(0), pattern(1000, seed: 1))
        h.guestSends(&c, ack: c.ourSeq(0), flags: [.ack, .psh], pattern(500, seed: 2))
        #expect(s.written == pattern(1000, seed: 1) + pattern(500, seed: 2))
        #expect(h.drain().isEmpty, "ACKs wait for the end of the batch")
        h.flush()
        let ack = try h.oneSegment("one ACK for the batch")
        #expect(ack.isPureAck)
        #expect(ack.ack == c.seq && ack.seq == c.ourSeq(0))
        #expect(ack.tcp.window == UInt16((100_000 - 1500) >> 7))
        h.flush()
        #expect(h.drain().isEmpty, "no second ACK")
        #expect(h.counters.totalDrops == 0)
    }

    @Test("sequence numbers wrap around 2^32", arguments: [0xFFFF_FF00 as UInt32, 0x7FFF_FFF0])
    func wraparound(isn: UInt32) throws {
        let h = TCPHarness()
        var c = try h.connect(isn: isn)
        for i in 0 ..< 4 { h.guestSends(&c, ack: c.ourSeq(0), pattern(100, seed: UInt8(i))) }
        h.flush()
        #expect(try h.host.socket(c.handle).written == (0 ..< 4).flatMap { pattern(100, seed: UInt8($0)) })
        #expect(try h.oneSegment().ack == isn &+ 401)
    }

    @Test("a socket that takes only part: the ACK covers what it took, the window shrinks, and drained space brings a window update")
    func partialWrite() throws {
        let h = TCPHarness(sendCapacity: 3000)
        var c = try h.connect(wscale: nil)   // unscaled windows: exact byte counts; our MSS 1460
        let s = try h.host.socket(c.handle)
        let data = pattern(4380)
        h.guestSends(&c, ack: c.ourSeq(0), Array(data[0 ..< 1460]))
        h.flush()
        let a1 = try h.oneSegment()
        #expect(a1.ack == c.guestSeq(1460) && a1.tcp.window == 1540)
        #expect(s.interest.map { $0.writable } == false, "a window of at least an MSS needs no EPOLLOUT")

        h.guestSends(&c, ack: c.ourSeq(0), Array(data[1460 ..< 2920]))
        h.send(h.frame(c, ack: c.ourSeq(0), Array(data[2920 ..< 4380])))
        h.flush()
        let a2 = try h.oneSegment()
        #expect(a2.ack == c.guestSeq(3000), "only the 80 bytes taken of the last segment are acknowledged")
        #expect(a2.tcp.window == 0)
        #expect(s.written == Array(data[0 ..< 3000]))
        #expect(s.interest.map { $0.writable } == true, "waits for send space")

        // The guest's retransmission while the socket is full: nothing written, ACK unchanged, window 0.
        c.seq = c.guestSeq(3000)
        h.send(h.frame(c, ack: c.ourSeq(0), Array(data[3000 ..< 4380])))
        h.flush()
        let a3 = try h.oneSegment()
        #expect(a3.ack == c.guestSeq(3000) && a3.tcp.window == 0)
        #expect(s.written.count == 3000)

        // The remote reads 1000 bytes: less than an MSS of room, no update yet, still armed.
        h.host.remoteReads(c.handle, 1000)
        h.writable(c.tag)
        #expect(h.drain().isEmpty)
        #expect(s.interest.map { $0.writable } == true)
        // Another 1000: the window update goes out.
        h.host.remoteReads(c.handle, 1000)
        h.writable(c.tag)
        let update = try h.oneSegment("window update")
        #expect(update.isPureAck && update.ack == c.guestSeq(3000) && update.tcp.window == 2000)
        #expect(s.interest.map { $0.readable && !$0.writable } == true)
        h.writable(c.tag)
        #expect(h.drain().isEmpty, "one update per wait")

        h.send(h.frame(c, ack: c.ourSeq(0), Array(data[3000 ..< 4380])))
        h.flush()
        let a4 = try h.oneSegment()
        #expect(a4.ack == c.guestSeq(4380) && a4.tcp.window == 620)
        #expect(s.written == data)
    }

    @Test("an out-of-order segment is held, not written, and answered with a duplicate ACK; with no store it is dropped", arguments: [true, false])
    func outOfOrder(store: Bool) throws {
        let h = TCPHarness { if !store { $0.tcpReorderSlots = 0 } }
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        let data = pattern(300)
        h.guestSends(&c, ack: c.ourSeq(0), Array(data[0 ..< 100]))
        h.flush()
        #expect(try h.oneSegment().ack == c.seq)
        let before = h.counters
        h.send(h.frame(c, seq: c.seq &+ 100, ack: c.ourSeq(0), Array(data[200 ..< 300])))
        #expect(dropDelta(before, h.counters) == (store ? [:] : [.tcpOutOfOrder: 1]))
        #expect(h.counters[.tcpOutOfOrderKept] - before[.tcpOutOfOrderKept] == (store ? 1 : 0))
        h.flush()
        let dup = try h.oneSegment("duplicate ACK")
        #expect(dup.isPureAck && dup.ack == c.seq)
        #expect(s.written == Array(data[0 ..< 100]))
        // The gap, then the retransmitted tail.
        h.guestSends(&c, ack: c.ourSeq(0), Array(data[100 ..< 200]))
        h.guestSends(&c, ack: c.ourSeq(0), Array(data[200 ..< 300]))
        h.flush()
        #expect(try h.oneSegment().ack == c.seq)
        #expect(s.written == data)
    }

    @Test("a retransmitted segment is not written twice, and is re-acknowledged")
    func duplicate() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        let first = h.frame(c, ack: c.ourSeq(0), pattern(100))
        h.send(first)
        c.seq &+= 100
        h.flush()
        _ = try h.oneSegment()
        h.send(first)
        h.flush()
        let reack = try h.oneSegment()
        #expect(reack.isPureAck && reack.ack == c.seq)
        #expect(s.written == pattern(100))
        #expect(h.counters.totalDrops == 0)
    }

    @Test("an overlapping segment is trimmed: only the new bytes are written")
    func overlap() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        let data = pattern(150, seed: 9)
        h.guestSends(&c, ack: c.ourSeq(0), Array(data[0 ..< 100]))
        h.send(h.frame(c, seq: c.seq &- 50, ack: c.ourSeq(0), Array(data[50 ..< 150])))
        c.seq &+= 50
        h.flush()
        #expect(s.written == data)
        #expect(try h.oneSegment().ack == c.seq)
    }

    @Test("FIN with data: the data is written, then shutdown(SHUT_WR); the ACK covers data + 1 and the window closes")
    func finWithData() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.guestSends(&c, ack: c.ourSeq(0), flags: [.fin, .ack, .psh], pattern(100))
        #expect(s.written == pattern(100))
        #expect(s.shutdownWrite)
        let calls = h.host.calls(c.handle)
        let sendAt = try #require(calls.firstIndex(of: .send(c.handle, 100)))
        let shutAt = try #require(calls.firstIndex(of: .shutdownWrite(c.handle)))
        #expect(sendAt < shutAt)
        h.flush()
        let ack = try h.oneSegment()
        #expect(ack.ack == c.seq && c.seq == c.guestSeq(101))
        #expect(ack.tcp.window == 0)
        // A retransmitted FIN: re-acknowledged, no second shutdown, nothing written.
        h.send(h.frame(c, seq: c.seq &- 1, ack: c.ourSeq(0), flags: [.fin, .ack]))
        h.flush()
        #expect(try h.oneSegment().ack == c.seq)
        #expect(h.host.calls(c.handle).filter { $0 == .shutdownWrite(c.handle) }.count == 1)
        #expect(s.written.count == 100)
        #expect(h.gateway.tcpFlowCount == 1, "the host side is still open")
    }

    @Test("a closed window reopens by the 1 ms watch when the kernel sends no writable edge")
    func windowWatchWithoutWritableEdge() throws {
        let h = TCPHarness(sendCapacity: 3000)
        var c = try h.connect(wscale: nil)
        let data = pattern(3000)
        h.guestSends(&c, ack: c.ourSeq(0), Array(data[0 ..< 1460]))
        h.guestSends(&c, ack: c.ourSeq(0), Array(data[1460 ..< 2920]))
        h.flush()
        #expect(try h.oneSegment().tcp.window == 80)
        h.poll()
        h.host.remoteReads(c.handle, 2000)   // space frees, but no EPOLLOUT edge is delivered
        h.advance(ms: 1)
        #expect(h.gateway.nextDeadline <= h.now, "the watch is due")
        h.poll()
        let update = try h.oneSegment("window update from the watch")
        #expect(update.isPureAck && update.ack == c.guestSeq(2920) && update.tcp.window == 2080)
        h.advance(ms: 1)
        h.poll()
        #expect(h.drain().isEmpty, "one update; the flow left the watch")
        #expect(h.gateway.nextDeadline.nanoseconds > h.now.nanoseconds + 500_000_000, "no 1 ms timer is left running")
    }

    @Test("FIN with data the socket takes only part of: the FIN waits, no shutdown")
    func finWithPartialData() throws {
        let h = TCPHarness(sendCapacity: 2000)
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        let data = pattern(2460)
        h.guestSends(&c, ack: c.ourSeq(0), Array(data[0 ..< 1460]))
        h.send(h.frame(c, ack: c.ourSeq(0), flags: [.fin, .ack], Array(data[1460...])))
        h.flush()
        #expect(try h.oneSegment().ack == c.seq &+ 540)
        #expect(!s.shutdownWrite)
        c.seq &+= 540
        h.host.remoteReads(c.handle, 2000)
        h.writable(c.tag)
        #expect(try h.oneSegment("window update").tcp.window == UInt16(2000 >> 7))
        h.send(h.frame(c, ack: c.ourSeq(0), flags: [.fin, .ack], Array(data[2000...])))
        h.flush()
        #expect(try h.oneSegment().ack == c.seq &+ 461)
        #expect(s.shutdownWrite && s.written == data)
    }

    @Test("a zero-window probe from the guest (seq = rcvNxt - 1, no data) is answered with an ACK")
    func guestWindowProbe() throws {
        let h = TCPHarness()
        var c = try h.connect()
        h.guestSends(&c, ack: c.ourSeq(0), pattern(10))
        h.flush()
        _ = try h.segments()
        let before = h.counters
        h.send(h.frame(c, seq: c.seq &- 1, ack: c.ourSeq(0)))
        h.flush()
        let ack = try h.oneSegment()
        #expect(ack.isPureAck && ack.ack == c.seq)
        #expect(dropDelta(before, h.counters) == [:])
        #expect(try h.host.socket(c.handle).written == pattern(10))
        // A plain ACK at rcvNxt is not answered.
        h.send(h.frame(c, ack: c.ourSeq(0)))
        h.flush()
        #expect(h.drain().isEmpty)
    }

    @Test("the socket failing a write resets the flow")
    func sendReset() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        s.sendOverride = .reset
        h.guestSends(&c, ack: c.ourSeq(0), pattern(10))
        let rst = try h.oneSegment()
        #expect(rst.flags.contains(.rst))
        #expect(s.aborted)
        #expect(h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpResetsToGuest] == 1)
    }

    @Test("an ACK for data never sent is answered with an ACK, and later data is still acknowledged")
    func ackBeyondSent() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let before = h.counters
        h.send(h.frame(c, ack: c.ourSeq(5000)))
        #expect(dropDelta(before, h.counters) == [.tcpBadAck: 1])
        h.flush()
        let challenge = try h.oneSegment("ACK answering the bad ACK")
        #expect(challenge.isPureAck && challenge.ack == c.seq && challenge.seq == c.ourSeq(0))
        h.guestSends(&c, ack: c.ourSeq(0), pattern(10))
        h.flush()
        let ack = try h.oneSegment("data after it is still acknowledged")
        #expect(ack.ack == c.seq)
        #expect(try h.host.socket(c.handle).written == pattern(10))
    }

    @Test("a segment without ACK on an established flow is dropped as tcpNoAck")
    func noAck() throws {
        let h = TCPHarness()
        let c = try h.connect()
        let before = h.counters
        h.send(h.frame(c, flags: .psh, pattern(10)))
        #expect(dropDelta(before, h.counters) == [.tcpNoAck: 1])
        #expect(try h.host.socket(c.handle).written.isEmpty)
    }

    @Test("a segment with a bad TCP checksum is dropped before it reaches the flow")
    func badChecksum() throws {
        let h = TCPHarness()
        let c = try h.connect()
        var f = h.frame(c, ack: c.ourSeq(0), pattern(10))
        f[14 + 20 + 16] ^= 0x01
        let before = h.counters
        h.send(f)
        #expect(dropDelta(before, h.counters) == [.tcpBadChecksum: 1])
        #expect(try h.host.socket(c.handle).written.isEmpty)
    }
}
