// Found by the DHCP flood e2e test (tests/e2e/test_floods.py): a bulk download filled the guest queue to the
// last byte after every drain, so the gateway's own answers arriving in between (DHCP offers there; ARP, ICMP,
// RSTs alike) were dropped as tx_queue_full. Host TCP data now leaves `guestQueueHeadroom` free.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Guest queue headroom")
struct QueueHeadroomTests {
    @Test("a queue filled by bulk host data still takes ARP, ICMP and RST replies", arguments: [0, 1 << 20])
    func headroom(capacity: Int) throws {
        let h = TCPHarness(queueCapacity: capacity)
        let c = try h.connect(mss: 1460, wscale: 7, ackWindow: 65535)   // window about 8 MB: the queue is the limit
        h.host.remoteSends(c.handle, pattern(4 << 20, seed: 1))
        h.readable(c)
        #expect(h.gateway.hasFlowsBlockedOnQueue)
        let headroom = h.gateway.guestQueueHeadroom
        #expect(headroom >= 4096 && h.gateway.toGuest.freeSpace >= headroom)
        let before = h.counters
        h.send(FrameBuilder.arpFrame(targetIP: gatewayIP))
        h.send(FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 7, seq: 1, pattern(56)))
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 40_000, dstPort: 80, seq: 5, ack: 9, flags: .ack, window: 100))
        #expect(dropDelta(before, h.counters) == [.tcpNoFlow: 1], "nothing dropped for want of queue space")
        let frames = h.drain()
        #expect(frames.contains { $0[12] == 0x08 && $0[13] == 0x06 }, "ARP reply")
        #expect(frames.contains { $0[12] == 0x08 && $0[13] == 0x00 && $0[23] == 1 && $0[34] == 0 }, "echo reply")
        #expect(frames.contains { $0[23] == 6 && $0[36] == 0x9C && $0[37] == 0x40 && $0[47] & 0x04 != 0 }, "RST to port 40000")
    }
}

// Found by the hostfwd connection storm e2e test: after a vnet restart, client ports are reused while the guest
// still holds TIME-WAIT for the same 4-tuple; the new ISN is not above the old one half the time, so the guest
// answers our SYN with an ACK. We dropped that ACK, so the connection waited out TIME-WAIT (60 s) through SYN
// retransmissions. RFC 9293 §3.10.7.3: answer with <SEQ=SEG.ACK><CTL=RST>, then send the SYN again.
@Suite("hostfwd SYN answered by an old connection's ACK")
struct StaleGuestStateTests {
    @Test("the ACK is reset, the SYN goes again at once (once), and the guest's SYN-ACK then connects")
    func staleAck() throws {
        let h = TCPHarness()
        h.introduceGuest()
        #expect(h.gateway.acceptForwardedTCP(handle: 77, from: .loopback, port: 45_678, to: guestIP, port: 22, now: h.now))
        let syn = try h.oneSegment("SYN to the guest")
        #expect(syn.flags == .syn)
        let stale: UInt32 = syn.seq &+ 123_456   // what the guest's TIME-WAIT acknowledges
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 22, dstPort: 45_678, seq: 9_999, ack: stale, flags: .ack, window: 500))
        let out = try h.segments()
        try #require(out.count == 2, "\(out.map(describe))")
        #expect(out[0].flags == .rst && out[0].seq == stale, "RST <SEQ=SEG.ACK>")
        #expect(out[1].flags == .syn && out[1].seq == syn.seq, "the same SYN again")
        #expect(h.counters[.tcpBadAck] == 1)
        // A second stale ACK is reset too, but the SYN waits for its timer.
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 22, dstPort: 45_678, seq: 9_999, ack: stale, flags: .ack, window: 500))
        let again = try h.segments()
        #expect(again.count == 1 && again.first?.flags == .rst)
        // The guest, its old connection gone, accepts the SYN.
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 22, dstPort: 45_678, seq: 5_000, ack: syn.seq &+ 1,
                                            flags: [.syn, .ack], window: 64_000, mss: 1460, wscale: 7))
        let ack = try h.oneSegment("ACK of the SYN-ACK")
        #expect(ack.isPureAck && ack.ack == 5_001)
        #expect(h.gateway.tcpHalfOpenFlowCount == 0 && h.gateway.tcpFlowCount == 1)
        #expect(try h.host.socket(77).isOpen)
    }
}
