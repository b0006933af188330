// Guest TCP data that arrives out of order (a VXLAN uplink reorders): held in the bounded store of
// GatewayTCPReorder.swift until the hole fills, then written to the host socket in order, exactly once.
// Overlaps and duplicates, the store's caps against a hostile guest, release when a flow goes, a socket that
// takes only part, a FIN out of order, held (gathered) frames, and a randomized reordering guest.

import Testing
@testable import VNetGateway
import VNetWire

/// Bytes that differ everywhere (a misplaced or repeated range shows in the comparison).
func noise(_ n: Int, seed: UInt64) -> [UInt8] {
    var g = SplitMix64(seed: seed)
    return (0 ..< n).map { _ in UInt8(truncatingIfNeeded: g.next()) }
}

extension TCPHarness {
    var reorder: TCPReorderStore { gateway.tcpEngine.reorder }
    func held(_ c: GuestConn) -> Int { reorder.heldRanges(flow: c.tag.index) }
    /// The guest sends `data[range]` at its place in the stream, whatever its own next sequence number is.
    func guestSendsRange(_ c: GuestConn, _ data: [UInt8], _ range: Range<Int>, flags: TCPFlags = .ack, held: Bool = false) {
        let f = frame(c, seq: c.guestSeq(range.lowerBound), ack: c.ourSeq(0), flags: flags, Array(data[range]))
        if held { sendHeld(f) } else { send(f) }
    }
}

@Suite("Gateway TCP out-of-order guest data")
struct TCPReorderTests {
    @Test("segments 3, 1, 2: held, then written in order exactly once; each out-of-order one is answered by a duplicate ACK")
    func threeOneTwo() throws {
        let h = TCPHarness()
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        let data = noise(3000, seed: 1)
        let before = h.counters
        h.guestSendsRange(c, data, 2000 ..< 3000)
        h.flush()
        let dup = try h.oneSegment("duplicate ACK")
        #expect(dup.isPureAck && dup.ack == c.guestSeq(0))
        #expect(s.written.isEmpty && h.held(c) == 1)
        #expect(h.counters[.tcpOutOfOrderKept] == before[.tcpOutOfOrderKept] + 1)

        h.guestSendsRange(c, data, 0 ..< 1000)
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(1000), "the held segment does not continue the stream yet")
        #expect(s.written == Array(data[0 ..< 1000]))

        h.guestSendsRange(c, data, 1000 ..< 2000)
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(3000))
        #expect(s.written == data)
        #expect(h.held(c) == 0 && h.reorder.heldRanges == 0 && h.reorder.heldBytes == 0)
        #expect(dropDelta(before, h.counters) == [:])
    }

    @Test("a hole filled last: everything behind it goes with one gather send", arguments: [0xFFFF_F000 as UInt32, 1000])
    func holeFilledLast(isn: UInt32) throws {
        let h = TCPHarness()
        let c = try h.connect(isn: isn)
        let s = try h.host.socket(c.handle)
        let data = noise(7 * 1400, seed: 2)
        for k in [3, 1, 6, 2, 5, 4] { h.guestSendsRange(c, data, k * 1400 ..< (k + 1) * 1400) }
        #expect(s.written.isEmpty && h.held(c) == 6)
        h.flush()
        _ = try h.segments()
        h.guestSendsRange(c, data, 0 ..< 1400)
        #expect(s.written == data)
        #expect(h.host.gathers(c.handle).map(\.parts) == [6])
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(data.count))
        #expect(h.reorder.heldRanges == 0)
        #expect(h.counters[.tcpOutOfOrderKept] == 6 && h.counters.totalDrops == 0)
    }

    @Test("overlapping and duplicate out-of-order segments: only new bytes are held, the held copy wins, the stream is exact")
    func overlapsAndDuplicates() throws {
        let h = TCPHarness()
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        let data = noise(1000, seed: 3)
        h.guestSendsRange(c, data, 400 ..< 500)
        h.guestSendsRange(c, data, 300 ..< 600)   // overlaps both sides: 300..400 and 500..600 are new
        #expect(h.reorder.ranges(flow: c.tag.index).map { $0.length } == [100, 100, 100])
        let kept = h.counters[.tcpOutOfOrderKept]
        h.guestSendsRange(c, data, 400 ..< 500)   // an exact duplicate: nothing new
        h.guestSendsRange(c, data, 350 ..< 450)   // inside what is held
        #expect(h.counters[.tcpOutOfOrderKept] == kept && h.counters.totalDrops == 0)
        // A duplicate carrying other bytes does not replace what is held (as in order: the first copy is kept).
        var forged = data
        for k in 420 ..< 480 { forged[k] ^= 0xFF }
        h.guestSendsRange(c, forged, 420 ..< 480)
        h.guestSendsRange(c, data, 700 ..< 800)
        h.guestSendsRange(c, data, 650 ..< 750)
        h.guestSendsRange(c, data, 0 ..< 320)     // reaches into the held data
        #expect(s.written == Array(data[0 ..< 600]))
        h.guestSendsRange(c, data, 600 ..< 1000)
        #expect(s.written == data)
        #expect(h.reorder.heldRanges == 0 && h.reorder.heldBytes == 0)
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(1000))
    }

    @Test("the per-flow cap and the global cap: what does not fit is dropped and counted, the rest is held")
    func caps() throws {
        let h = TCPHarness { $0.tcpReorderSlots = 6; $0.tcpReorderSlotsPerFlow = 4 }
        let a = try h.connect(from: 50_001)
        let b = try h.connect(from: 50_002)
        let data = noise(20 * 100, seed: 4)
        var before = h.counters
        for k in 1 ..< 11 { h.guestSendsRange(a, data, k * 100 ..< (k + 1) * 100) }
        #expect(h.held(a) == 4)
        #expect(dropDelta(before, h.counters) == [.tcpOutOfOrder: 6])
        #expect(h.counters[.tcpOutOfOrderKept] - before[.tcpOutOfOrderKept] == 4)
        before = h.counters
        for k in 1 ..< 5 { h.guestSendsRange(b, data, k * 100 ..< (k + 1) * 100) }
        #expect(h.held(b) == 2 && h.reorder.heldRanges == 6 && h.reorder.freeCount == 0)
        #expect(dropDelta(before, h.counters) == [.tcpOutOfOrder: 2])
        // The guest fills the hole and sends the rest again: the stream is whole.
        h.guestSendsRange(a, data, 0 ..< 100)
        #expect(try h.host.socket(a.handle).written == Array(data[0 ..< 500]))
        #expect(h.held(a) == 0 && h.held(b) == 2)
        h.guestSendsRange(a, data, 500 ..< 2000)
        #expect(try h.host.socket(a.handle).written == data)
    }

    @Test("a hostile guest: thousands of segments far ahead, out of the window, or everywhere in it never pass the caps")
    func hostileGuest() throws {
        let h = TCPHarness(sendCapacity: 64 * 1024) { $0.tcpReorderSlots = 64; $0.tcpReorderSlotsPerFlow = 16 }
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        var g = SplitMix64(seed: 5)
        let before = h.counters
        for k in 0 ..< 3000 {
            let ahead = k % 2 == 0 ? UInt32(70_000 + Int(g.next() % 2_000_000_000)) : UInt32(1 + g.next() % 60_000)
            let length = 1 + Int(g.next() % 3000)
            h.send(h.frame(c, seq: c.guestSeq(0) &+ ahead, ack: c.ourSeq(0), pattern(length, seed: UInt8(k & 0xFF))))
            #expect(h.reorder.heldRanges <= 16)
        }
        h.flush()
        _ = try h.segments()
        #expect(s.written.isEmpty)
        #expect(h.held(c) == 16 && h.reorder.heldRanges == 16)
        #expect(dropDelta(before, h.counters)[.tcpOutOfOrder]! >= 1500, "every segment outside the window is dropped")
        // The far-ahead ones could never have been kept: they lie beyond the window.
        for r in h.reorder.ranges(flow: c.tag.index) { #expect(r.sequence &- c.guestSeq(0) < 65_536 + 3000) }
        #expect(try h.host.socket(c.handle).isOpen)
    }

    @Test("the window: data up to the furthest edge we advertised is held after the window shrank, data beyond it is dropped")
    func windowEdge() throws {
        let h = TCPHarness(sendCapacity: 200_000)
        var c = try h.connect()
        let s = try h.host.socket(c.handle)
        h.guestSends(&c, ack: c.ourSeq(0), pattern(1000))
        h.flush()
        let open = try h.oneSegment()
        #expect(open.ack == c.guestSeq(1000) && Int(open.tcp.window) << 7 > 190_000, "the edge: about guest byte 200 000")
        // The socket's room shrinks by more than what was written (a kernel counts its overhead too): the next
        // measure offers less than the edge already offered.
        s.sendCapacity = 150_000
        for _ in 0 ..< 100 { h.guestSends(&c, ack: c.ourSeq(0), pattern(1000)) }
        h.flush()
        let shrunk = try h.oneSegment()
        #expect(shrunk.ack == c.guestSeq(101_000) && Int(shrunk.tcp.window) << 7 <= 49_000)
        let before = h.counters
        h.send(h.frame(c, seq: c.guestSeq(180_000), ack: c.ourSeq(0), pattern(1000)))
        #expect(h.held(c) == 1, "inside the window offered before it shrank")
        #expect(dropDelta(before, h.counters) == [:])
        h.send(h.frame(c, seq: c.guestSeq(201_000), ack: c.ourSeq(0), pattern(1000)))
        #expect(h.held(c) == 1)
        #expect(dropDelta(before, h.counters) == [.tcpOutOfOrder: 1], "beyond every window we offered")
    }

    @Test("a flow that goes away releases what it holds: guest RST, idle expiry, the guest gone, a gateway reset")
    func releaseOnFlowEnd() throws {
        let h = TCPHarness()
        let data = noise(3000, seed: 6)
        var c = try h.connect(from: 50_001)
        h.guestSendsRange(c, data, 1000 ..< 3000)
        #expect(h.held(c) == 1 && h.reorder.heldBytes == 2000)
        h.send(h.frame(c, seq: c.guestSeq(0), ack: c.ourSeq(0), flags: .rst))
        #expect(h.gateway.tcpFlowCount == 0 && h.reorder.heldRanges == 0 && h.reorder.heldBytes == 0)

        h.flush()
        _ = h.drain()
        c = try h.connect(from: 50_002)
        h.guestSendsRange(c, data, 1000 ..< 2000)
        h.advance(.seconds(3 * 3600))
        h.poll()
        #expect(h.gateway.tcpFlowCount == 0 && h.reorder.heldRanges == 0)

        h.flush()
        _ = h.drain()
        c = try h.connect(from: 50_003)
        h.guestSendsRange(c, data, 1000 ..< 2000)
        #expect(h.gateway.closeAllFlows() == 1)
        #expect(h.reorder.heldRanges == 0)

        h.flush()
        _ = h.drain()
        c = try h.connect(from: 50_004)
        h.guestSendsRange(c, data, 1000 ..< 2000)
        h.gateway.reset()
        #expect(h.reorder.heldRanges == 0 && h.reorder.freeCount == h.reorder.slotCount && h.reorder.heldBytes == 0)
        // A new flow in the same table slot starts empty.
        h.flush()
        _ = h.drain()
        c = try h.connect(from: 50_005)
        #expect(h.held(c) == 0)
        h.guestSendsRange(c, data, 0 ..< 1000)
        #expect(try h.host.socket(c.handle).written == Array(data[0 ..< 1000]))
    }

    @Test("the socket takes only part of the held data: the rest stays held, is acknowledged only once written, and the stream stays exact")
    func socketTakesPart() throws {
        let h = TCPHarness(sendCapacity: 2500)
        let c = try h.connect(wscale: nil)
        let s = try h.host.socket(c.handle)
        let data = noise(4000, seed: 7)
        h.guestSendsRange(c, data, 1000 ..< 2000)
        h.guestSendsRange(c, data, 2000 ..< 2400)
        h.flush()
        _ = try h.segments()
        h.guestSendsRange(c, data, 0 ..< 1000)
        // 1000 in order, then the 1400 held bytes (1500 of room left): the socket then holds 2400.
        #expect(s.written == Array(data[0 ..< 2400]))
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(2400))

        // 100 bytes of room left: 3000..4000 is held, 2400..3000 comes in order in two parts.
        h.guestSendsRange(c, data, 3000 ..< 4000)
        h.guestSendsRange(c, data, 2400 ..< 2450)   // in order: 50 bytes taken, 50 room left for the held ones
        #expect(s.written == Array(data[0 ..< 2450]), "3000.. does not continue the stream")
        h.guestSendsRange(c, data, 2450 ..< 3000)   // 50 taken of 550: the segment's rest is refused
        #expect(s.written == Array(data[0 ..< 2500]))
        #expect(h.held(c) == 1, "the held segment stays")
        h.flush()
        let ack = try h.oneSegment()
        #expect(ack.ack == c.guestSeq(2500) && ack.tcp.window == 0)

        h.host.remoteReads(c.handle, 2500)
        h.writable(c.tag)
        _ = try h.segments()
        // The guest sends again from the acknowledged point: 2500..3000, and the held 3000..4000 follows.
        h.guestSendsRange(c, data, 2500 ..< 3000)
        #expect(s.written == data)
        #expect(h.held(c) == 0)
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(4000))
    }

    @Test("held data the socket takes in part: the untaken tail stays held and the guest's retransmission of it is written once")
    func heldDataTakenInPart() throws {
        let h = TCPHarness(sendCapacity: 1500)
        let c = try h.connect(wscale: nil)
        let s = try h.host.socket(c.handle)
        let data = noise(2000, seed: 8)
        h.guestSendsRange(c, data, 500 ..< 1300)
        h.guestSendsRange(c, data, 0 ..< 500)
        #expect(s.written == Array(data[0 ..< 1300]))
        h.guestSendsRange(c, data, 1400 ..< 2000)
        h.guestSendsRange(c, data, 1300 ..< 1400)
        #expect(s.written == Array(data[0 ..< 1500]), "the socket took 100 in order and 100 of the held 600")
        #expect(h.reorder.ranges(flow: c.tag.index).map { $0.length } == [500])
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(1500))
        h.host.remoteReads(c.handle, 1500)
        h.writable(c.tag)
        _ = try h.segments()
        h.guestSendsRange(c, data, 1500 ..< 2000)
        #expect(s.written == data)
        #expect(h.held(c) == 0)
    }

    @Test("a FIN out of order: its data is held, its FIN is not; the guest's FIN sent again closes after every byte")
    func finOutOfOrder() throws {
        let h = TCPHarness()
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        let data = noise(1500, seed: 9)
        h.guestSendsRange(c, data, 1000 ..< 1500, flags: [.ack, .fin])
        #expect(h.held(c) == 1 && !s.shutdownWrite)
        h.guestSendsRange(c, data, 0 ..< 1000)
        #expect(s.written == data && !s.shutdownWrite)
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(1500), "the FIN is not acknowledged")
        h.guestSendsRange(c, data, 1000 ..< 1500, flags: [.ack, .fin])
        #expect(s.shutdownWrite && s.written == data)
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(1501))
        // Data past a FIN is never held.
        h.send(h.frame(c, seq: c.guestSeq(3000), ack: c.ourSeq(0), pattern(100)))
        #expect(h.held(c) == 0)
    }

    @Test("held frames: out-of-order segments among gathered ones; the batch goes first, held data follows at the flush")
    func withGatheredFrames() throws {
        let h = TCPHarness()
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        let data = noise(5000, seed: 10)
        h.guestSendsRange(c, data, 0 ..< 1000, held: true)
        h.guestSendsRange(c, data, 2000 ..< 3000, held: true)   // a gap: the batch goes, this is held
        #expect(s.written == Array(data[0 ..< 1000]))
        h.guestSendsRange(c, data, 1000 ..< 2000, held: true)   // in order: gathered
        h.guestSendsRange(c, data, 4000 ..< 5000, held: true)   // not next: the batch goes, and 2000..3000 behind it
        #expect(s.written == Array(data[0 ..< 3000]))
        h.guestSendsRange(c, data, 3000 ..< 4000, held: true)
        h.releaseHeld()
        #expect(s.written == data, "no byte comes from a released frame")
        #expect(h.held(c) == 0)
        h.flush()
        #expect(try h.oneSegment().ack == c.guestSeq(5000))
    }

    @Test("a guest reordering at random, with overlaps, duplicates and retransmissions: the stream arrives exact", arguments: [11 as UInt64, 12, 13])
    func randomReordering(seed: UInt64) throws {
        let h = TCPHarness(sendCapacity: 48 * 1024) { $0.tcpReorderSlots = 24; $0.tcpReorderSlotsPerFlow = 12 }
        let c = try h.connect()
        let s = try h.host.socket(c.handle)
        let data = noise(120_000, seed: seed)
        var g = SplitMix64(seed: seed)
        var rounds = 0
        while s.written.count < data.count && rounds < 2000 {
            rounds += 1
            // The guest sends a window's worth from what was acknowledged, cut at random, shuffled a little.
            let base = s.written.count
            var pieces: [Range<Int>] = []
            var at = base
            while at < min(data.count, base + 30_000) {
                let n = min(data.count - at, 1 + Int(g.next() % 2500))
                let start = max(base, at - (g.next() % 4 == 0 ? Int(g.next() % 300) : 0))
                pieces.append(start ..< at + n)
                at += n
            }
            for k in pieces.indices.reversed() where g.next() % 3 == 0 {
                pieces.swapAt(k, Int(g.next() % UInt64(k + 1)))
            }
            // A port holds all of a read's frames or none (a stream port or a datagram one).
            let held = g.next() % 2 == 0
            for r in pieces where g.next() % 10 != 0 { h.guestSendsRange(c, data, r, held: held) }
            h.releaseHeld()
            h.flush()
            _ = h.drain()
            #expect(h.reorder.heldRanges <= 12)
            if s.sendBuffered > 16 * 1024 {
                h.host.remoteReads(c.handle, s.sendBuffered)
                h.writable(c.tag)
                _ = h.drain()
            }
        }
        #expect(s.written.count == data.count)
        #expect(s.written == data)
        #expect(h.counters[.tcpOutOfOrderKept] > 0)
    }
}
