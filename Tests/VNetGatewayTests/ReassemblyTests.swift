// Guest IPv4 fragments (BAD-INPUTS 11-13): reassembled in any order, duplicates tolerated, conflicting
// overlaps and impossible lengths dropped, memory bounded, unfinished datagrams time out.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("IPv4 reassembly")
struct ReassemblyTests {
    /// The fragments of one UDP datagram to `externalIP:9`, cut into `size`-byte pieces (a multiple of 8).
    static func fragments(payload: [UInt8], id: UInt16, size: Int = 1480) -> [[UInt8]] {
        let l4 = FrameBuilder.udp(src: guestIP, dst: externalIP, srcPort: 40_000, dstPort: 9, payload)
        var out: [[UInt8]] = []
        var offset = 0
        while offset < l4.count {
            let n = min(size, l4.count - offset)
            let more: UInt16 = offset + n < l4.count ? 0x2000 : 0
            out.append(FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: externalIP, proto: .udp, id: id,
                                                                            flags: more | UInt16(offset / 8), Array(l4[offset ..< offset + n]))))
            offset += n
        }
        return out
    }

    @Test("fragments in order, reversed and shuffled give the datagram exactly once", arguments: ["in order", "reversed", "shuffled"])
    func orders(order: String) {
        let h = GatewayHarness()
        let payload = pattern(4000, seed: 7)
        var frags = Self.fragments(payload: payload, id: 0x4242)
        #expect(frags.count == 3)
        if order == "reversed" { frags.reverse() }
        if order == "shuffled" { frags = [frags[1], frags[2], frags[0]] }
        for f in frags { h.send(f) }
        #expect(h.host.sent.count == 1)
        #expect(h.host.sent.first?.bytes == payload)
        #expect(h.counters[.datagramsReassembled] == 1)
        #expect(h.counters.totalDrops == 0)
    }

    @Test("an exact duplicate fragment is tolerated")
    func duplicate() {
        let h = GatewayHarness()
        let payload = pattern(3000)
        let frags = Self.fragments(payload: payload, id: 7)
        h.send(frags[0]); h.send(frags[0]); h.send(frags[1]); h.send(frags[1]); h.send(frags[2])
        #expect(h.host.sent.map(\.bytes) == [payload])
        #expect(h.counters.totalDrops == 0)
    }

    @Test("a fragment rewriting bytes already received drops the whole datagram")
    func conflictingOverlap() {
        let h = GatewayHarness()
        let payload = pattern(3000)
        var frags = Self.fragments(payload: payload, id: 8)
        h.send(frags[0])
        var evil = frags[0]
        evil[60] ^= 0xFF
        // Recompute nothing: the IP header is intact, only the data differs.
        h.send(evil)
        #expect(h.counters[.ipv4FragmentOverlap] == 1)
        frags.removeFirst()
        for f in frags { h.send(f) }
        #expect(h.host.sent.isEmpty, "the datagram was dropped, the rest cannot complete it")
    }

    @Test("a fragment contained in another with the same bytes is fine")
    func containedSameBytes() {
        let h = GatewayHarness()
        let payload = pattern(3000)
        let big = Self.fragments(payload: payload, id: 9, size: 1480)
        let small = Self.fragments(payload: payload, id: 9, size: 736)
        h.send(big[0]); h.send(small[1]); h.send(big[1]); h.send(big[2])
        #expect(h.host.sent.map(\.bytes) == [payload])
    }

    @Test("unfinished datagrams time out, and memory stays bounded by the slot count")
    func timeoutAndEviction() {
        let h = GatewayHarness()
        for id in 0 ..< 40 { h.send(Self.fragments(payload: pattern(3000), id: UInt16(id))[0]) }
        #expect(h.gateway.reassembler.activeCount == 16)
        #expect(h.counters[.ipv4FragmentTimeout] == 24, "the oldest were evicted")
        h.advance(.seconds(31))
        h.poll()
        #expect(h.gateway.reassembler.activeCount == 0)
        #expect(h.counters[.ipv4FragmentTimeout] == 40)
        // Service goes on.
        for f in Self.fragments(payload: pattern(2000), id: 77) { h.send(f) }
        #expect(h.host.sent.count == 1)
    }

    @Test("two different last fragments for one datagram drop it")
    func conflictingLength() {
        let h = GatewayHarness()
        let a = Self.fragments(payload: pattern(3000), id: 5)
        let b = Self.fragments(payload: pattern(3100), id: 5)
        h.send(a[2]); h.send(b[2])
        #expect(h.counters[.ipv4FragmentInvalid] == 1)
    }
}
