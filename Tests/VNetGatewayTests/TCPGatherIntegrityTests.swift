// The integrity guard of the stream TCP gather: the end-to-end tests (tests/e2e/test_integrity.py) compare the
// SHA-256 of what the guest sent with what the host socket received. The gateway checks each segment's TCP
// checksum when the frame arrives, before it holds it; a byte that changes afterwards (a runtime that reuses
// its read buffer too early, a gather pointing at the wrong place) passes every check inside vnet. These
// tests corrupt a held buffer on purpose and show that the digest comparison catches it, where it is.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway TCP gather: a corrupted held buffer is caught by the digest check")
struct TCPGatherIntegrityTests {
    static let segments = 8, size = 1448

    func payloads() -> [[UInt8]] {
        var rng = SplitMix64(seed: 0x1D7E_6A11)
        return (0 ..< Self.segments).map { _ in (0 ..< Self.size).map { _ in UInt8.random(in: 0 ... 255, using: &rng) } }
    }

    @Test("SHA-256 of this test support matches FIPS 180-4's examples")
    func digestKnownAnswers() {
        #expect(SHA256Digest(of: Array("abc".utf8)).description == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256Digest(of: []).description == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256Digest(of: Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)).description
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test("intact held frames: one gather send, and the digests match")
    func intactPathPasses() throws {
        let h = TCPHarness(sendCapacity: 1 << 20)
        var c = try h.connect()
        let sent = payloads()
        for p in sent { h.guestSendsHeld(&c, ack: c.ourSeq(0), p) }
        h.releaseHeld()
        let received = try h.host.socket(c.handle).written
        #expect(h.host.gathers(c.handle).map(\.parts) == [Self.segments], "the gather path ran")
        #expect(SHA256Digest(of: received) == SHA256Digest(of: sent.flatMap { $0 }))
    }

    @Test("one byte of a held frame changed after the gateway took it: the digests differ, at that byte",
          arguments: [0, 3, 7])
    func corruptedHeldBufferIsCaught(frame index: Int) throws {
        let h = TCPHarness(sendCapacity: 1 << 20)
        var c = try h.connect()
        let sent = payloads()
        for p in sent { h.guestSendsHeld(&c, ack: c.ourSeq(0), p) }
        // The payload is the frame's tail: 100 bytes before the end of frame `index` is its byte size-100.
        let frameLength = try #require(h.heldFrameLengths.dropFirst(index).first)
        let original = sent[index][Self.size - 100]
        h.corruptHeld(frame: index, at: frameLength - 100, with: original ^ 0x01)
        h.releaseHeld()
        let received = try h.host.socket(c.handle).written
        let expected = sent.flatMap { $0 }
        #expect(h.counters.totalDrops == 0, "nothing inside vnet noticed")
        #expect(received.count == expected.count)
        #expect(SHA256Digest(of: received) != SHA256Digest(of: expected), "the digest check catches the corruption")
        let firstDifference = zip(received, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(firstDifference == index * Self.size + Self.size - 100)
    }
}
