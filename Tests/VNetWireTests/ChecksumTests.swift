// InternetChecksum (RFC 1071) and its incremental update (RFC 1624), against published vectors and a
// reference implementation written here the obvious way (16-bit words, end-around carry).

import Testing
@testable import VNetWire

@Suite struct ChecksumTests {
    // RFC 1071 §3, "Numerical Examples": bytes 00 01 f2 03 f4 f5 f6 f7 sum (one's complement) to ddf2.
    @Test func rfc1071NumericalExample() {
        let data: [UInt8] = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]
        data.withUnsafeBytes { b in
            #expect(InternetChecksum.finish(InternetChecksum.add(b)) == ~UInt16(0xddf2))
            #expect(InternetChecksum.of(b) == 0x220d)
        }
        #expect(referenceSum(data) == 0xddf2)
    }

    // The IPv4 header used as the worked example in most textbooks (and Wikipedia): checksum b861.
    @Test func ipv4HeaderExample() {
        var header = bytes(hex: "4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7")
        header.withUnsafeBytes { #expect(InternetChecksum.of($0) == 0xb861) }
        header[10] = 0xb8; header[11] = 0x61
        header.withUnsafeBytes { #expect(InternetChecksum.of($0) == 0) }
    }

    // An odd final byte is the high byte of a word whose low byte is zero (RFC 1071 §4.1's "add left-over byte").
    @Test(arguments: [
        ([UInt8](), UInt16(0xffff)),
        ([0x01], 0xfeff),
        ([0xff], 0x00ff),
        ([0xab, 0xcd, 0xef], 0x6531),              // abcd + ef00 = 1_9acd -> 9ace -> ~ = 6531
        ([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0x01], 0x210d),  // ddf2 + 0100 = def2 -> ~ = 210d
    ] as [([UInt8], UInt16)])
    func oddLengths(data: [UInt8], expected: UInt16) {
        data.withUnsafeBytes { #expect(InternetChecksum.of($0) == expected) }
        #expect(referenceChecksum(data) == expected)
    }

    static let patterns: [String] = ["random", "ones", "zeros", "alternating"]

    static func pattern(_ name: String, _ n: Int) -> [UInt8] {
        var rng = SplitMix64(seed: 0x1071 &+ UInt64(n))
        switch name {
        case "ones": return [UInt8](repeating: 0xFF, count: n)
        case "zeros": return [UInt8](repeating: 0, count: n)
        case "alternating": return (0 ..< n).map { $0 % 2 == 0 ? 0xFF : 0x01 }
        default: return rng.bytes(n)
        }
    }

    // Every length 0...100 (covers the 32- and 8-byte loops, the 2-byte tail and the odd byte in every combination), at
    // every start offset 0..<8 inside a larger buffer, so the unaligned 8-byte loads are exercised.
    @Test(arguments: patterns)
    func everyLengthAndOffsetMatchesReference(pattern: String) {
        for n in 0 ... 100 {
            let data = Self.pattern(pattern, n)
            let expected = referenceChecksum(data)
            for offset in 0 ..< 8 {
                let backing = [UInt8](repeating: 0xA5, count: offset) + data + [0x5A, 0x5A, 0x5A]
                backing.withUnsafeBytes { b in
                    let got = InternetChecksum.of(b.slice(offset ..< offset + n))
                    #expect(got == expected, "n=\(n) offset=\(offset)")
                }
            }
        }
    }

    // Long buffers: many 8-byte iterations, including the largest IPv4 datagram of all-ones (worst-case carries).
    @Test(arguments: [65, 127, 1500, 2960, 9001, 65535])
    func longBuffersMatchReference(length: Int) {
        for p in Self.patterns {
            let data = Self.pattern(p, length)
            data.withUnsafeBytes { #expect(InternetChecksum.of($0) == referenceChecksum(data), "\(p)") }
        }
    }

    // A sum built piece by piece (even-length pieces, odd only at the end) equals the sum of the whole.
    @Test func piecewiseAddEqualsWhole() {
        var rng = SplitMix64(seed: 42)
        for _ in 0 ..< 200 {
            let n = Int.random(in: 0 ... 300, using: &rng)
            let data = rng.bytes(n)
            let cut = Int.random(in: 0 ... n / 2, using: &rng) * 2
            data.withUnsafeBytes { b in
                let whole = InternetChecksum.of(b)
                let s = InternetChecksum.add(b.slice(cut ..< n), to: InternetChecksum.add(b.slice(0 ..< cut)))
                #expect(InternetChecksum.finish(s) == whole, "n=\(n) cut=\(cut)")
            }
        }
    }

    @Test func add16AndAdd32MatchTheirBytes() {
        var rng = SplitMix64(seed: 16)
        for _ in 0 ..< 100 {
            let a = UInt16.random(in: .min ... .max, using: &rng), b = UInt32.random(in: .min ... .max, using: &rng)
            let asBytes: [UInt8] = [UInt8(a >> 8), UInt8(a & 0xFF), UInt8(b >> 24), UInt8((b >> 16) & 0xFF), UInt8((b >> 8) & 0xFF), UInt8(b & 0xFF)]
            let s = InternetChecksum.add32(b, to: InternetChecksum.add16(a, to: 0))
            #expect(InternetChecksum.finish(s) == referenceChecksum(asBytes))
        }
    }

    @Test func pseudoHeaderMatchesItsBytes() {
        let src = IPv4Address(10, 0, 2, 15), dst = IPv4Address(255, 255, 255, 255)
        for (proto, len) in [(UInt8(17), 308), (6, 40), (6, 2940), (17, 65535)] {
            let s = InternetChecksum.pseudoHeader(source: src, destination: dst, protocolNumber: proto, length: len)
            #expect(InternetChecksum.finish(s) == referenceChecksum(pseudoHeaderBytes(src, dst, proto: proto, length: len)))
        }
    }

    // RFC 1624 §4: m = 5555 changes to 3285 where the rest sums to cd7a; HC = dd2f. Eqn. 3 gives 0000, which is
    // what recomputation gives (eqn. 2 of RFC 1141 would give ffff).
    @Test func rfc1624Example() {
        #expect(InternetChecksum.update(0xdd2f, old: UInt16(0x5555), new: UInt16(0x3285)) == 0x0000)
        #expect(~UInt16(0xcd7a &+ 0x3285) == 0x0000)
    }

    // Incremental update equals a full recompute: random IPv4 headers, a random 16-bit field (never the checksum
    // itself) changed to a random value; and 32-bit changes (an address rewritten, as NAT does).
    @Test func incrementalUpdateEqualsRecompute16() {
        var rng = SplitMix64(seed: 1624)
        for _ in 0 ..< 2000 {
            var h = [0x45] + rng.bytes(19)       // version/IHL keep the header non-zero
            h[10] = 0; h[11] = 0
            let c0 = referenceChecksum(h)
            let word = [0, 1, 2, 3, 4, 6, 7, 8, 9].randomElement(using: &rng)!
            let old = UInt16(h[2 * word]) << 8 | UInt16(h[2 * word + 1])
            let new = UInt16.random(in: .min ... .max, using: &rng)
            h[2 * word] = UInt8(new >> 8); h[2 * word + 1] = UInt8(new & 0xFF)
            #expect(InternetChecksum.update(c0, old: old, new: new) == referenceChecksum(h), "word \(word): \(old) -> \(new)")
        }
    }

    @Test func incrementalUpdateEqualsRecompute32() {
        var rng = SplitMix64(seed: 3022)
        for _ in 0 ..< 2000 {
            var h = [0x45] + rng.bytes(19)
            h[10] = 0; h[11] = 0
            let c0 = referenceChecksum(h)
            let at = Bool.random(using: &rng) ? 12 : 16
            let old = h.withUnsafeBytes { IPv4Address(reading: $0, at: at) }.rawValue
            let new = UInt32.random(in: .min ... .max, using: &rng)
            h.withUnsafeMutableBytes { IPv4Address(rawValue: new).write(to: $0, at: at) }
            #expect(InternetChecksum.update(c0, old: old, new: new) == referenceChecksum(h))
        }
    }

    // The same for a real UDP checksum, which covers the pseudo-header: rewriting the source address of the
    // DNS response (1.1.1.1 -> 10.0.2.3, as a NAT would) and updating incrementally equals recomputing.
    @Test func incrementalUpdateOfCorpusUDPChecksumAfterNAT() throws {
        let d = try dissect(try Corpus.frame(Corpus.dns4, 2))
        let f = try Corpus.frame(Corpus.dns4, 2)
        let ip = try #require(d.ipv4), l4 = try #require(d.l4)
        let segment = Array(f.captured[l4])
        let stored = u16(segment, 6)
        #expect(stored == 0x1ffd)
        let newSource = IPv4Address(10, 0, 2, 3)
        let updated = InternetChecksum.update(stored, old: ip.source.rawValue, new: newSource.rawValue)
        #expect(updated == referenceTransportChecksum(segment, checksumOffset: 6, src: newSource, dst: ip.destination, proto: 17))
    }
}
