// Host -> guest data: peeked from the socket's receive queue into MSS-sized segments within the guest's
// (scaled) window, discarded from the queue only when the guest acknowledges it; flows blocked on a full
// guest queue resume after the flush.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway TCP host -> guest data")
struct TCPHostDataTests {
    @Test("host bytes go out in segments of at most the guest's MSS, within its scaled window; its ACK discards exactly what it acknowledged")
    func segmentationAndWindow() throws {
        let h = TCPHarness()
        // MSS 1000, window scale 2: a window field of 1000 is 4000 bytes.
        let c = try h.connect(mss: 1000, wscale: 2, ackWindow: 1000)
        let s = try h.host.socket(c.handle)
        let data = pattern(10_000, seed: 5)
        h.host.remoteSends(c.handle, data)
        h.readable(c)
        let first = try h.segments()
        #expect(first.map(\.payload.count) == [1000, 1000, 1000, 1000])
        #expect(first.map(\.seq) == (0 ..< 4).map { c.ourSeq($0 * 1000) })
        #expect(first.allSatisfy { $0.ack == c.seq && $0.flags.contains(.ack) && $0.source == gatewayIP && $0.tcp.sourcePort == 8080 })
        #expect(first.flatMap(\.payload) == Array(data[0 ..< 4000]))
        #expect(first.last?.flags.contains(.psh) == true)
        #expect(s.receiveQueue.count == 10_000, "nothing is discarded before the guest acknowledges it")
        #expect(h.host.discards(c.handle).isEmpty)

        h.guestAcks(c, upTo: 2000, window: 1000)
        #expect(h.host.discards(c.handle) == [2000])
        #expect(s.receiveQueue.count == 8000)
        let next = try h.segments()
        #expect(next.map(\.seq) == [c.ourSeq(4000), c.ourSeq(5000)], "2000 bytes of room again")
        #expect(next.flatMap(\.payload) == Array(data[4000 ..< 6000]))

        // A larger window (field 2000 -> 8000 bytes) lets out everything that is left.
        h.guestAcks(c, upTo: 6000, window: 2000)
        #expect(h.host.discards(c.handle) == [2000, 4000])
        let rest = try h.segments()
        #expect(rest.flatMap(\.payload) == Array(data[6000...]))
        #expect(rest.allSatisfy { $0.payload.count <= 1000 })
        h.guestAcks(c, upTo: 10_000, window: 2000)
        #expect(s.receiveQueue.isEmpty && s.peekOffset == 0)
        #expect(try h.segments().isEmpty)
    }

    @Test("our MSS caps segments even when the guest's MSS is larger", arguments: [1500, 1280])
    func mtuCapsSegments(mtu: Int) throws {
        let h = TCPHarness { $0.mtu = mtu }
        let c = try h.connect(mss: 9000, wscale: 7)
        h.host.remoteSends(c.handle, pattern(5000))
        h.readable(c)
        let segs = try h.segments()
        #expect(segs.dropLast().allSatisfy { $0.payload.count == mtu - 40 })
        #expect(segs.flatMap(\.payload) == pattern(5000))
    }

    @Test("a guest without an MSS option gets 536-byte segments")
    func defaultMSS() throws {
        let h = TCPHarness()
        let c = try h.connect(mss: nil)
        h.host.remoteSends(c.handle, pattern(1200))
        h.readable(c)
        #expect(try h.segments().map(\.payload.count) == [536, 536, 128])
    }

    @Test("an ACK with data from the guest both writes its data and discards what it acknowledged")
    func ackWithData() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.host.remoteSends(c.handle, pattern(300))
        h.readable(c)
        _ = try h.segments()
        h.guestSends(&c, ack: c.ourSeq(300), pattern(20))
        #expect(s.receiveQueue.isEmpty)
        #expect(s.written == pattern(20))
        h.flush()
        #expect(try h.oneSegment().ack == c.seq)
    }

    @Test("a zero window: nothing is sent, the RTO sends a probe (seq = sndUna - 1), answers keep the flow alive, a reopened window resumes")
    func zeroWindow() throws {
        let h = TCPHarness()
        let c = try h.connect(ackWindow: 0)
        let s = try h.host.socket(c.handle)
        h.host.remoteSends(c.handle, pattern(500))
        h.readable(c)
        #expect(h.drain().isEmpty)
        #expect(h.host.peeks(c.handle) == 0, "nothing peeked for a closed window")
        h.advance(ms: 999); h.poll()
        #expect(h.drain().isEmpty)
        for round in 0 ..< 15 {   // more than TCPTiming.maximumRetries
            h.advance(ms: 1000); h.poll()
            let probe = try h.oneSegment("probe \(round)")
            #expect(probe.isPureAck && probe.seq == c.ourSeq(0) &- 1 && probe.ack == c.seq, "probe \(round): \(describe(probe))")
            h.guestAcks(c, upTo: 0, window: 0)   // the guest restates its zero window
            #expect(h.drain().isEmpty)
        }
        #expect(h.gateway.tcpFlowCount == 1 && s.isOpen, "the persist timer never gives up on a guest that answers")
        #expect(s.receiveQueue.count == 500)
        h.guestAcks(c, upTo: 0, window: 200)   // window update: 200 << 7
        let resumed = try h.segments()
        #expect(resumed.flatMap(\.payload) == pattern(500))
        #expect(resumed.first?.seq == c.ourSeq(0))
        #expect(h.counters[.tcpRetransmits] == 0, "probes are not retransmissions")
    }

    @Test("zero-window probes that get no answer back off and end with RST")
    func zeroWindowUnanswered() throws {
        let h = TCPHarness()
        let c = try h.connect(ackWindow: 0)
        let s = try h.host.socket(c.handle)
        h.host.remoteSends(c.handle, pattern(10))
        h.readable(c)
        var probes: [Instant] = []
        var reset: Segment?
        for _ in 0 ..< 600 {
            h.advance(ms: 500); h.poll()
            for seg in try h.segments() {
                if seg.flags.contains(.rst) { reset = seg } else { probes.append(h.now) }
            }
            if reset != nil { break }
        }
        #expect(probes.count == TCPTiming.maximumRetries)
        let gaps = zip(probes.dropFirst(), probes).map { ($0 - $1).nanoseconds / 1_000_000 }
        #expect(gaps.prefix(5) == [2000, 4000, 8000, 16_000, 30_000], "exponential backoff, capped at 30 s")
        let rst = try #require(reset)
        #expect(rst.flags == [.rst, .ack] && rst.seq == c.ourSeq(0))
        #expect(s.aborted && h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpFlowsExpired] == 1)
    }

    @Test("a host RST while data waits for the guest: RST to the guest")
    func hostResetWhilePeeking() throws {
        let h = TCPHarness()
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.host.remoteSends(c.handle, pattern(100))
        h.readable(c)
        _ = try h.segments()
        s.resetOnPeek = true
        h.guestAcks(c, upTo: 100)
        h.readable(c)   // the kernel wakes the socket's reader when the reset arrives
        let rst = try h.oneSegment()
        #expect(rst.flags == [.rst, .ack] && rst.seq == c.ourSeq(100) && rst.ack == c.seq)
        #expect(s.aborted && !s.closed)
        #expect(h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpResetsToGuest] == 1)
    }

    @Test("SO_PEEK_OFF: once a peek drains the socket, guest ACKs cost no further peek")
    func noPeekPerAckWhenDrained() throws {
        let h = TCPHarness()
        let c = try h.connect()
        h.host.remoteSends(c.handle, pattern(3000))
        h.readable(c)
        #expect(try h.segments().flatMap(\.payload) == pattern(3000))
        let peeksBefore = h.host.calls.filter { if case .peek = $0 { true } else { false } }.count
        h.guestAcks(c, upTo: 1460)
        h.guestAcks(c, upTo: 3000)
        let peeksAfter = h.host.calls.filter { if case .peek = $0 { true } else { false } }.count
        #expect(peeksAfter == peeksBefore, "no new bytes were announced, so there is nothing to peek")
        h.host.remoteSends(c.handle, pattern(10, seed: 9))
        h.readable(c)
        #expect(try h.segments().flatMap(\.payload) == pattern(10, seed: 9), "the next readable event peeks again")
    }

    @Test("peek-and-skip fallback: a FIN behind peeked data is found once the guest acknowledges the data")
    func fallbackFindsFinAfterDiscard() throws {
        let h = TCPHarness()
        h.host.tcpDrainedPeekIsFinal = false
        let c = try h.connect()
        h.host.remoteSends(c.handle, pattern(100))
        h.readable(c)
        #expect(try h.segments().flatMap(\.payload) == pattern(100))
        h.host.remoteCloses(c.handle)
        h.readable(c)   // the FIN's wakeup: the fallback still sees the 100 unacknowledged bytes first
        #expect(try h.segments().isEmpty)
        h.guestAcks(c, upTo: 100)   // no further wakeup comes; the discard must lead to a new peek
        let fin = try h.oneSegment()
        #expect(fin.flags.contains(.fin) && fin.seq == c.ourSeq(100))
    }

    @Test("a full guest queue blocks the flow; resuming after the drain delivers every byte once, in order")
    func blockedOnGuestQueue() throws {
        let h = TCPHarness()   // the smallest queue the gateway allows (about 70 KB)
        let c = try h.connect(mss: 1460, wscale: 7, ackWindow: 65535)   // window about 8 MB: the queue is the limit
        let data = pattern(300_000, seed: 3)
        h.host.remoteSends(c.handle, data)
        h.readable(c)
        #expect(h.gateway.hasFlowsBlockedOnQueue)
        var got: [UInt8] = []
        var nextSeq = c.ourSeq(0)
        var rounds = 0
        while got.count < data.count && rounds < 100 {
            rounds += 1
            let segs = try h.segments()
            guard !segs.isEmpty else {
                Issue.record("round \(rounds): no progress after \(got.count) bytes")
                break
            }
            for seg in segs {
                #expect(seg.seq == nextSeq, "no gap or repeat at \(got.count)")
                nextSeq = seg.seq &+ UInt32(seg.payload.count)
                got += seg.payload
            }
            h.gateway.resumeFlowsBlockedOnQueue(now: h.now)
        }
        let intact = got == data   // (not inside #expect: it would print 600 KB of bytes)
        #expect(intact, "\(got.count) of \(data.count) bytes, in order: \(intact)")
        #expect(h.counters[.txQueueFull] == 0, "peeks never exceed what the queue can take")
        #expect(!h.gateway.hasFlowsBlockedOnQueue)
        #expect(h.counters[.tcpRetransmits] == 0)
    }
}
