// An ACK owed to the guest that the host's reply carries: a request/response round trip costs the guest one
// segment instead of two when the runtime lets ACKs wait (`--busy-poll`, AckWait.swift), and the ACK is
// never lost when no reply comes.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway TCP ACK folding")
struct TCPAckFoldTests {
    @Test("the reply's data segment carries the owed ACK: one segment, counted as folded, no pure ACK after it")
    func replyCarriesTheAck() throws {
        let h = TCPHarness()
        var c = try h.connect()
        h.guestSends(&c, ack: c.ourSeq(0), flags: [.ack, .psh], pattern(100, seed: 3))
        #expect(h.gateway.hasPendingAcks)
        // The host answers before the runtime flushed the ACKs (it polled instead of sleeping).
        h.host.remoteSends(c.handle, pattern(200, seed: 4))
        h.readable(c)
        let reply = try h.oneSegment("the reply alone")
        #expect(reply.payload == pattern(200, seed: 4))
        #expect(reply.ack == c.seq, "it acknowledges the request")
        #expect(h.counters[.tcpAcksFolded] == 1)
        h.flush()
        #expect(h.drain().isEmpty, "no pure ACK after the reply")
    }

    @Test("with no reply, the owed ACK goes out as a pure ACK when the runtime flushes")
    func noReplyStillAcked() throws {
        let h = TCPHarness()
        var c = try h.connect()
        h.guestSends(&c, ack: c.ourSeq(0), pattern(100, seed: 5))
        h.flush()
        let ack = try h.oneSegment()
        #expect(ack.isPureAck && ack.ack == c.seq)
        #expect(h.counters[.tcpAcksFolded] == 0)
        #expect(!h.gateway.hasPendingAcks)
    }
}
