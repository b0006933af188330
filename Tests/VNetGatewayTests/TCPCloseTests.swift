// Closing: FINs both ways (either side first), RSTs both ways (window-checked from the guest), idle timeouts.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway TCP close")
struct TCPCloseTests {
    @Test("host EOF after data: FIN right after the last byte (seq = finSeq); guest ACK of it and guest FIN close the flow")
    func hostClosesFirst() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.host.remoteSends(c.handle, Array("hello world".utf8))
        h.host.remoteCloses(c.handle)
        h.readable(c)
        var segs = try h.segments()
        let dataSeg = try #require(segs.first)
        #expect(dataSeg.payload == Array("hello world".utf8) && dataSeg.seq == c.ourSeq(0))
        // The FIN may ride with this batch or follow the guest's ACK of the data; either way exactly one.
        h.guestAcks(c, upTo: 11)
        segs += try h.segments()
        let fins = segs.filter { $0.flags.contains(.fin) }
        try #require(fins.count == 1, "\(segs.map(describe))")
        #expect(fins[0].flags == [.fin, .ack] && fins[0].seq == c.ourSeq(11) && fins[0].payload.isEmpty)
        #expect(segs.firstIndex { $0.flags.contains(.fin) }! > segs.firstIndex { !$0.payload.isEmpty }!)
        #expect(s.receiveQueue.isEmpty, "acknowledged data discarded; the FIN is not a byte")

        // The guest acknowledges our FIN: the flow waits for the guest's own FIN.
        h.guestAcks(c, upTo: 12)
        #expect(try h.segments().isEmpty)
        #expect(h.gateway.tcpFlowCount == 1 && s.isOpen)
        #expect(h.host.discards(c.handle) == [11], "the FIN's sequence number is never discarded as a byte")

        h.guestSends(&c, ack: c.ourSeq(12), flags: [.fin, .ack])
        let last = try h.oneSegment("ACK of the guest's FIN")
        #expect(last.isPureAck && last.ack == c.seq && last.seq == c.ourSeq(12))
        #expect(s.shutdownWrite && s.closed && !s.aborted)
        #expect(h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpFlowsClosed] == 1)
        h.flush()
        #expect(h.drain().isEmpty, "no second ACK")
    }

    @Test("the guest closes first: shutdown(SHUT_WR), then host EOF sends our FIN, and its ACK closes the flow")
    func guestClosesFirst() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.guestSends(&c, ack: c.ourSeq(0), flags: [.fin, .ack])
        #expect(s.shutdownWrite)
        h.flush()
        let ack = try h.oneSegment()
        #expect(ack.ack == c.seq && ack.isPureAck)
        // The host still sends, then closes.
        h.host.remoteSends(c.handle, pattern(50))
        h.readable(c)
        h.host.remoteCloses(c.handle)
        h.readable(c)
        let segs = try h.segments()
        #expect(segs.flatMap(\.payload) == pattern(50))
        let fin = try #require(segs.last)
        #expect(fin.flags.contains(.fin) && fin.seq == c.ourSeq(50))
        #expect(h.gateway.tcpFlowCount == 1)
        h.guestAcks(c, upTo: 51)
        #expect(s.closed && h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpFlowsClosed] == 1)
    }

    @Test("an unacknowledged FIN is resent on RTO with the same sequence number")
    func finRetransmitted() throws {
        let h = TCPHarness()
        let c = try h.connect()
        h.host.remoteCloses(c.handle)
        h.readable(c)
        let fin = try h.oneSegment()
        #expect(fin.flags == [.fin, .ack] && fin.seq == c.ourSeq(0))
        h.advance(ms: 1000); h.poll()
        let again = try h.oneSegment()
        #expect(again.flags == [.fin, .ack] && again.seq == c.ourSeq(0))
        h.guestAcks(c, upTo: 1)
        h.advance(.seconds(10)); h.poll()
        #expect(h.drain().isEmpty)
        #expect(try h.host.socket(c.handle).isOpen, "half-closed: waiting for the guest's FIN")
    }

    @Test("a FIN lost among unacknowledged data is resent after the data on RTO")
    func finAfterDataRetransmitted() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: 1000, wscale: 0)
        h.host.remoteSends(c.handle, pattern(1500))
        h.host.remoteCloses(c.handle)
        h.readable(c)
        h.readable(c)
        let first = try h.segments()
        #expect(first.map(\.seq) == [c.ourSeq(0), c.ourSeq(1000), c.ourSeq(1500)])
        #expect(first.last?.flags.contains(.fin) == true)
        // The RTO resends one segment (the congestion window is one segment after a timeout); the guest's ACK of
        // it lets the rest and the FIN follow.
        h.advance(ms: 1000); h.poll()
        let again = try h.segments()
        #expect(again.map(\.seq) == [first[0].seq])
        #expect(again.map(\.payload) == [first[0].payload])
        h.guestAcks(c, upTo: 1000)
        let rest = try h.segments()
        #expect(rest.map(\.seq) == [c.ourSeq(1000), c.ourSeq(1500)])
        #expect(rest.map(\.payload) == Array(first.map(\.payload)[1...]))
        #expect(rest.last?.flags.contains(.fin) == true)
    }

    @Test("a guest RST inside the window aborts the host socket and frees the flow", arguments: [0, 1000, 60_000])
    func guestReset(offset: UInt32) throws {
        let h = TCPHarness()
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.send(h.frame(c, seq: c.seq &+ offset, flags: .rst))
        #expect(s.aborted && !s.closed)
        #expect(h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpResetsFromGuest] == 1)
        #expect(h.drain().isEmpty, "an RST is never answered")
    }

    @Test("a guest RST outside the window is ignored and counted", arguments: [200_000 as UInt32, 0xFFFF_FFFF])
    func guestResetOutOfWindow(offset: UInt32) throws {
        let h = TCPHarness(sendCapacity: 4096)
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        let before = h.counters
        h.send(h.frame(c, seq: c.seq &+ offset, ack: c.ourSeq(0), flags: [.rst, .ack]))
        #expect(dropDelta(before, h.counters) == [.tcpRstOutOfWindow: 1])
        #expect(s.isOpen && h.gateway.tcpFlowCount == 1)
        #expect(h.drain().isEmpty)
        h.guestSends(&c, ack: c.ourSeq(0), [1, 2, 3])
        #expect(s.written == [1, 2, 3], "the flow goes on")
    }

    @Test("a guest RST while the connect is pending aborts the socket")
    func resetWhileConnecting() throws {
        let h = TCPHarness()
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 50_000, dstPort: 80, seq: 10, ack: 0, flags: .syn, window: 65535))
        let s = try #require(h.host.lastSocket)
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 50_000, dstPort: 80, seq: 11, ack: 0, flags: .rst, window: 0))
        #expect(s.aborted && h.gateway.tcpFlowCount == 0)
        h.writable(s.tag)   // the connect completing afterwards is ignored
        #expect(h.drain().isEmpty)
    }

    @Test("a host reset during the peek sends RST|ACK to the guest and frees the flow")
    func hostReset() throws {
        let h = TCPHarness()
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        s.resetOnPeek = true
        h.readable(c)
        let rst = try h.oneSegment()
        #expect(rst.flags == [.rst, .ack] && rst.seq == c.ourSeq(0) && rst.ack == c.seq)
        #expect(rst.tcp.window == 0)
        #expect(s.aborted && h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpResetsToGuest] == 1)
        // Later segments of the flow get a plain RST.
        h.send(h.frame(c, ack: c.ourSeq(0), pattern(5)))
        let late = try h.oneSegment()
        #expect(late.flags == .rst && late.seq == c.ourSeq(0))
    }

    @Test("an established flow idle for tcpIdleTimeout is reset; traffic keeps it alive")
    func idleTimeout() throws {
        let h = TCPHarness { $0.tcpIdleTimeout = .seconds(10) }
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.advance(.seconds(6)); h.poll()
        h.guestSends(&c, ack: c.ourSeq(0), [1])
        h.flush()
        _ = try h.segments()
        h.advance(.seconds(9)); h.poll()
        #expect(h.drain().isEmpty)
        #expect(h.gateway.tcpFlowCount == 1, "activity 9 s ago")
        h.advance(.seconds(1)); h.poll()
        let rst = try h.oneSegment()
        #expect(rst.flags == [.rst, .ack] && rst.seq == c.ourSeq(0) && rst.ack == c.seq)
        #expect(s.aborted && h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpFlowsExpired] == 1)
    }

    @Test("a half-closed flow uses the closing timeout, not the idle timeout")
    func closingTimeout() throws {
        let h = TCPHarness { $0.tcpIdleTimeout = .seconds(10) }
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.guestSends(&c, ack: c.ourSeq(0), flags: [.fin, .ack])
        h.flush()
        _ = try h.segments()
        h.advance(.seconds(60)); h.poll()
        #expect(s.isOpen)
        h.advance(.seconds(60)); h.poll()
        #expect(s.aborted && h.gateway.tcpFlowCount == 0)
        #expect(try h.oneSegment().flags.contains(.rst))
    }

    @Test("a connect that never completes is given up after the connect timeout, without a word to the guest")
    func connectTimeout() throws {
        let h = TCPHarness()
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 50_000, dstPort: 80, seq: 10, ack: 0, flags: .syn, window: 65535))
        let s = try #require(h.host.lastSocket)
        h.advance(.seconds(74)); h.poll()
        #expect(s.isOpen)
        h.advance(.seconds(1)); h.poll()
        #expect(s.closed && h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpFlowsExpired] == 1)
    }
}
