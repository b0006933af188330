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
