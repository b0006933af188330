// Guest -> host data from held frames (a stream port's read buffer): in-order segments of one flow gathered
// into one send, acknowledged only as far as the socket took them, and never sent from memory that was
// released (GatewayTCPBatch.swift).

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway TCP: guest data gathered across held frames")
struct TCPGatherTests {
    @Test("in-order segments of a read go out in one send; the one ACK after it covers them all")
    func oneSendPerRead() throws {
        let h = TCPHarness(sendCapacity: 100_000)
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        let parts = (0 ..< 5).map { pattern(1448, seed: UInt8($0)) }
        for p in parts { h.guestSendsHeld(&c, ack: c.ourSeq(0), flags: [.ack, .psh], p) }
        #expect(s.written.isEmpty, "nothing is sent before the read ends")
        h.releaseHeld()
        #expect(s.written == parts.flatMap { $0 })
        #expect(h.host.gathers(c.handle).map(\.parts) == [5])
        h.flush()
        let ack = try h.oneSegment("one ACK for the read")
        #expect(ack.ack == c.guestSeq(5 * 1448))
        #expect(h.counters.totalDrops == 0)
    }

    @Test("a socket that takes part of the batch: the ACK says what it took and the rest comes again")
    func partialSend() throws {
        let h = TCPHarness(sendCapacity: 3000)
        var c = try h.connect(wscale: nil)
        let s = try h.host.socket(c.handle)
        let data = pattern(4 * 1000)
        for k in 0 ..< 4 { h.guestSendsHeld(&c, ack: c.ourSeq(0), Array(data[k * 1000 ..< (k + 1) * 1000])) }
        h.releaseHeld()
        h.flush()
        let a = try h.oneSegment()
        #expect(a.ack == c.guestSeq(3000) && a.tcp.window == 0)
        #expect(s.written == Array(data[0 ..< 3000]))
        #expect(s.interest.map { $0.writable } == true, "waits for send space")

        // The guest retransmits from the acknowledged point once the socket drains.
        h.host.remoteReads(c.handle, 3000)
        c.seq = c.guestSeq(3000)
        h.guestSendsHeld(&c, ack: c.ourSeq(0), Array(data[3000 ..< 4000]))
        h.releaseHeld()
        #expect(s.written == data)
    }

    @Test("a FIN behind gathered data: the data goes out first, then shutdown; the ACK covers both")
    func finAfterGatheredData() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.guestSendsHeld(&c, ack: c.ourSeq(0), pattern(500, seed: 1))
        h.guestSendsHeld(&c, ack: c.ourSeq(0), pattern(500, seed: 2))
        h.guestSendsHeld(&c, ack: c.ourSeq(0), flags: [.ack, .fin], pattern(10, seed: 3))
        #expect(s.written == pattern(500, seed: 1) + pattern(500, seed: 2) + pattern(10, seed: 3))
        #expect(s.shutdownWrite)
        let calls = h.host.calls(c.handle)
        let gather = try #require(calls.firstIndex { if case .gather = $0 { true } else { false } })
        let shut = try #require(calls.firstIndex(of: .shutdownWrite(c.handle)))
        #expect(gather < shut)
        h.releaseHeld()
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(1011))
    }

    @Test("segments of two flows interleaved: each flow's bytes arrive whole and in order")
    func twoFlowsInterleaved() throws {
        let h = TCPHarness()
        var a = try h.connect(from: 50_001)
        var b = try h.connect(from: 50_002)
        for k in 0 ..< 3 {
            h.guestSendsHeld(&a, ack: a.ourSeq(0), pattern(700, seed: UInt8(k)))
            h.guestSendsHeld(&a, ack: a.ourSeq(0), pattern(300, seed: UInt8(10 + k)))
            h.guestSendsHeld(&b, ack: b.ourSeq(0), pattern(900, seed: UInt8(20 + k)))
        }
        h.releaseHeld()
        #expect(try h.host.socket(a.handle).written == (0 ..< 3).flatMap { pattern(700, seed: UInt8($0)) + pattern(300, seed: UInt8(10 + $0)) })
        #expect(try h.host.socket(b.handle).written == (0 ..< 3).flatMap { pattern(900, seed: UInt8(20 + $0)) })
        #expect(h.host.gathers(a.handle).map(\.parts) == [2, 2, 2])
        h.flush()
        let acks = try h.segments()
        #expect(Set(acks.map(\.ack)) == [a.guestSeq(3000), b.guestSeq(2700)])
    }

    @Test("a gap or a duplicate while gathering: the gathered data goes out, the gap is held, the duplicate re-acknowledged")
    func outOfOrderWhileGathering() throws {
        let h = TCPHarness()
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        let before = h.counters
        h.guestSendsHeld(&c, ack: c.ourSeq(0), pattern(1000, seed: 1))
        h.sendHeld(h.frame(c, seq: c.seq &+ 500, ack: c.ourSeq(0), pattern(100)))  // a gap: held, then a duplicate
        h.sendHeld(h.frame(c, seq: c.guestSeq(0), ack: c.ourSeq(0), pattern(1000, seed: 1)))  // a duplicate
        h.guestSendsHeld(&c, ack: c.ourSeq(0), pattern(1000, seed: 2))
        h.releaseHeld()
        #expect(s.written == pattern(1000, seed: 1) + pattern(1000, seed: 2))
        #expect(dropDelta(before, h.counters) == [:] && h.counters[.tcpOutOfOrderKept] - before[.tcpOutOfOrderKept] == 1)
        #expect(h.gateway.tcpEngine.reorder.heldRanges == 0, "the held copy was freed once the stream passed it")
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(2000))
    }

    @Test("a flow closed while it has gathered data: nothing reaches its socket, or the next flow's in that slot")
    func closedFlowDropsItsBatch() throws {
        let h = TCPHarness()
        h.host.reuseClosedHandles = true
        var c = try h.connect()
        h.guestSendsHeld(&c, ack: c.ourSeq(0), pattern(1000))
        #expect(h.gateway.closeFlows(ofGuests: [guestMAC]) == 1)
        let next = try h.connect(from: 50_010)
        #expect(next.handle == c.handle && next.tag == c.tag, "the same fd in the same slot")
        h.releaseHeld()
        #expect(try h.host.socket(next.handle).written.isEmpty)
    }

    @Test("frames that are not held are sent at once, one send each")
    func notHeldIsImmediate() throws {
        let h = TCPHarness()
        var c = try h.connect()
        h.guestSends(&c, ack: c.ourSeq(0), pattern(1000, seed: 1))
        h.guestSends(&c, ack: c.ourSeq(0), pattern(1000, seed: 2))
        #expect(try h.host.socket(c.handle).written == pattern(1000, seed: 1) + pattern(1000, seed: 2))
        #expect(h.host.gathers(c.handle).isEmpty)
    }
}
