// BAD-INPUTS 21: frames the gateway emits are at least 60 bytes, and padding is zeros, never stale bytes.
// The queue's storage is filled with 0xAA first, so any byte the gateway does not write would show.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Zero padding")
struct PaddingTests {
    func dirtyHarness() -> GatewayHarness {
        let h = GatewayHarness()
        dirty(h.gateway.toGuest)
        // The storage really is dirty where the next frame will go.
        let peek = h.gateway.toGuest.reserve(maximumLength: 200)!
        #expect(peek.allSatisfy { $0 == 0xAA })
        return h
    }

    @Test("ARP reply (42 bytes of content)")
    func arp() throws {
        let h = dirtyHarness()
        let f = try #require(h.exchange(FrameBuilder.arpFrame(targetIP: gatewayIP)).first)
        #expect(f.count == 60 && f[42...].allSatisfy { $0 == 0 })
    }

    @Test("ICMP echo reply with no data (42 bytes of content)")
    func echo() throws {
        let h = dirtyHarness()
        let f = try #require(h.exchange(FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 1, seq: 1, [])).first)
        #expect(f.count == 60 && f[42...].allSatisfy { $0 == 0 })
    }

    @Test("UDP reply of one byte (43 bytes of content)")
    func udp() throws {
        let h = dirtyHarness()
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, [1]))
        let open = try h.lastOpen()
        h.host.queue(open.handle, .datagram([0x42]))
        h.hostReadable(open.tag)
        let f = try #require(h.drain().first)
        #expect(f.count == 60 && f[43...].allSatisfy { $0 == 0 })
        #expect(try expectUDP(f, src: externalIP, srcPort: 7, dstPort: 40_000) == [0x42])
    }

    @Test("TCP RST (54 bytes of content)")
    func rst() throws {
        let h = dirtyHarness()
        h.send(FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 1, flags: .syn))
        let f = try #require(h.drain().first)
        #expect(f.count == 60 && f[54...].allSatisfy { $0 == 0 })
    }

    @Test("a last IP fragment shorter than 60 bytes is padded with zeros")
    func shortLastFragment() throws {
        let h = dirtyHarness()
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, [1]))
        let open = try h.lastOpen()
        h.host.queue(open.handle, .datagram(pattern(1480 - 8 + 1, seed: 0xAA)))   // one byte into a second fragment
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 2)
        #expect(frames[1].count == 60 && frames[1][35...].allSatisfy { $0 == 0 })
    }

    @Test("many short frames in a row over dirty storage")
    func manyShortFrames() {
        let h = dirtyHarness()
        for i in 0 ..< 500 {
            h.send(i % 2 == 0 ? FrameBuilder.arpFrame(targetIP: dnsIP) : FrameBuilder.echoRequestFrame(dst: dnsIP, id: 1, seq: UInt16(i), [0xAA]))
            if i % 7 == 0 { _ = h.drain() }   // drain sometimes, so frames land at many offsets
        }
        _ = h.drain()   // every frame checked by the harness
        #expect(h.counters[.framesToGuest] == 500)
    }
}
