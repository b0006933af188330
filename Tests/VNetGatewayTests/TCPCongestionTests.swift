// The congestion window of host -> guest data (GatewayTCPCongestion.swift): open until a loss, halved by a fast
// retransmit, one segment after a timeout, regrown by slow start and congestion avoidance. Regression for QEMU NICs
// with small receive rings (rtl8139 in C+ mode, ne2k_pci, pcnet, tulip), which drop the tail of a whole-window
// burst: without it every such loss waited for the 1 s retransmission timer (8 MiB took a minute on rtl8139).

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway TCP congestion window")
struct TCPCongestionTests {
    @Test("before any loss a whole guest window goes out at once (no slow start on a virtual link)")
    func openBeforeLoss() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: 1000, wscale: 0, ackWindow: 65535)
        h.host.remoteSends(c.handle, pattern(30_000, seed: 3))
        h.readable(c)
        #expect(try h.segments().flatMap(\.payload) == pattern(30_000, seed: 3))
    }

    @Test("a ring that dropped the tail of a burst: fast retransmit halves what is in flight, then it regrows by a segment per window")
    func halvedAfterFastRetransmitThenRegrows() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: 1000, wscale: 0, ackWindow: 65535)
        let data = pattern(60_000, seed: 9)
        h.host.remoteSends(c.handle, Array(data[..<8000]))
        h.readable(c)
        #expect(try h.segments().count == 8)
        // The NIC kept the first segment and the last three (after the ring drained), not the four between.
        h.guestAcks(c, upTo: 1000)
        for _ in 0 ..< 3 { h.guestAcks(c, upTo: 1000) }
        let fast = try h.oneSegment("fast retransmit")
        #expect(fast.seq == c.ourSeq(1000))
        // Partial ACKs fill the remaining holes one by one, each at once.
        for hole in stride(from: 2000, to: 5000, by: 1000) {
            h.guestAcks(c, upTo: hole)
            let s = try h.oneSegment("hole at \(hole)")
            #expect(s.seq == c.ourSeq(hole) && s.payload == Array(data[hole ..< hole + 1000]))
        }
        #expect(h.counters[.tcpRetransmits] == 4)
        // The ACK of everything ends recovery. The window is now half of the 7000 bytes that were in flight.
        h.guestAcks(c, upTo: 8000)
        h.host.remoteSends(c.handle, Array(data[8000...]))
        h.readable(c)
        let burst = try h.segments()
        #expect(burst.flatMap(\.payload) == Array(data[8000 ..< 11_500]), "3500 bytes, not the guest's 65535")
        // Its ACK grows the window by one segment (congestion avoidance): the next burst is 4500 bytes.
        h.guestAcks(c, upTo: 11_500)
        #expect(try h.segments().flatMap(\.payload) == Array(data[11_500 ..< 16_000]))
        #expect(h.counters[.tcpRetransmits] == 4, "no timer fired")
    }

    @Test("after a timeout: one segment, then slow start doubles per window up to half the old flight")
    func slowStartAfterTimeout() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: 1000, wscale: 0, ackWindow: 65535)
        let data = pattern(20_000, seed: 5)
        h.host.remoteSends(c.handle, data)
        h.readable(c)
        #expect(try h.segments().count == 20)
        h.advance(ms: 1000); h.poll()
        #expect(try h.segments().map(\.seq) == [c.ourSeq(0)])
        h.guestAcks(c, upTo: 1000)
        #expect(try h.segments().map(\.seq) == [c.ourSeq(1000), c.ourSeq(2000)])
        h.guestAcks(c, upTo: 3000)
        #expect(try h.segments().map(\.payload.count) == [1000, 1000, 1000, 1000])
        // ssthresh is 10000 (half of 20000): the window stops doubling there.
        h.guestAcks(c, upTo: 7000)
        #expect(try h.segments().flatMap(\.payload) == Array(data[7000 ..< 15_000]))
        h.guestAcks(c, upTo: 15_000)
        #expect(try h.segments().flatMap(\.payload) == Array(data[15_000...]))
    }
}
