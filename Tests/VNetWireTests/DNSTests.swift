// DNS headers (RFC 1035 §4.1.1), the SERVFAIL rewrite vnet answers with when no resolver is reachable, and
// uncompressed name encoding (RFC 1035 §3.1, as DHCP option 119 carries it). Values from `tshark -r FILE -V`.

import Testing
@testable import VNetWire

@Suite struct DNSTests {
    /// The DNS message (UDP payload) of a corpus frame.
    static func message(_ file: String, _ n: Int) throws -> [UInt8] {
        let f = try Corpus.frame(file, n)
        return Array(f.captured[try #require(try dissect(f).app)])
    }

    /// "freedesktop.org" as labels: 11 f r e e d e s k t o p 3 o r g 0.
    static let freedesktop: [UInt8] = [11] + Array("freedesktop".utf8) + [3] + Array("org".utf8) + [0]

    @Test(arguments: [
        (Corpus.dns4, 1, UInt16(0x55c5), UInt16(0x0120), UInt16(0), 56),
        (Corpus.dns4, 2, 0x55c5, 0x8180, 1, 60),
        (Corpus.dns6, 1, 0x4241, 0x0120, 0, 56),
        (Corpus.dns6, 2, 0x4241, 0x8180, 1, 60),
    ])
    func headerFields(file: String, frame: Int, id: UInt16, flags: UInt16, answers: UInt16, length: Int) throws {
        let m = try Self.message(file, frame)
        #expect(m.count == length)
        let h = try parseOK(m, DNSHeader.parse)
        #expect(h.id == id)
        #expect(h.flags == flags)
        #expect(h.isResponse == (flags & 0x8000 != 0))
        #expect(h.opcode == 0 && h.responseCode == 0)
        #expect(h.questionCount == 1 && h.answerCount == answers && h.authorityCount == 0 && h.additionalCount == 1)
        // The question (freedesktop.org, A, IN) ends at offset 33 in all four messages.
        #expect(Array(m[12 ..< 29]) == Self.freedesktop)
        #expect(Array(m[29 ..< 33]) == [0, 1, 0, 1])
        #expect(m.withUnsafeBytes { DNSReplies.questionEnd($0) } == 33)
        // parse -> emit: all 12 header bytes compared.
        #expect(build(12) { h.emit(into: $0) } == Array(m[0 ..< 12]))
    }

    @Test func headerPrefixes() throws {
        let m = try Self.message(Corpus.dns4, 1)
        let full = try parseOK(m, DNSHeader.parse)
        for n in 0 ... m.count {
            let r = parseExact(m.prefix(n), DNSHeader.parse)
            if n < 12 { #expect(r.isMalformed, "n=\(n)") } else { #expect(r.value == full, "n=\(n)") }
            let q = m.prefix(n).withUnsafeBytes { DNSReplies.questionEnd($0) }
            #expect(q == (n < 33 ? nil : 33), "n=\(n)")
        }
    }

    @Test func flagAccessors() {
        let h = DNSHeader(id: 1, flags: 0xA985, questionCount: 1)    // QR, opcode 5 (UPDATE), RD, RA, rcode 5
        #expect(h.isResponse && h.opcode == 5 && h.responseCode == 5)
    }

    // MARK: DNSReplies.failure

    /// Runs `failure` over `m` placed at the start of a larger junk-filled buffer.
    static func fail(_ m: [UInt8], rcode: UInt8 = 2) -> (Int?, [UInt8]) {
        var result: Int? = nil
        let out = build(m.count + 64, fill: 0xEE) { b in
            b.slice(0 ..< m.count).copyBytes(from: m)
            result = DNSReplies.failure(b, length: m.count, rcode: rcode)
        }
        return (result, out)
    }

    // The corpus queries (v4 and v6) become SERVFAIL: same id, QR+RD+RA, rcode 2, one question kept byte for
    // byte, the EDNS OPT record (ARCOUNT 1) and everything after the question dropped.
    @Test(arguments: [Corpus.dns4, Corpus.dns6])
    func servfailKeepsIdAndQuestion(file: String) throws {
        let q = try Self.message(file, 1)
        let id = try parseOK(q, DNSHeader.parse).id
        let (n, out) = Self.fail(q)
        #expect(n == 33)
        let h = try parseOK(out.prefix(33), DNSHeader.parse)
        #expect(h.id == id)
        #expect(h.flags == 0x8182)                 // 0x0120 -> QR | RD | RA | SERVFAIL; AD is not echoed
        #expect(h.isResponse && h.responseCode == 2 && h.opcode == 0)
        #expect(h.questionCount == 1 && h.answerCount == 0 && h.authorityCount == 0 && h.additionalCount == 0)
        #expect(Array(out[12 ..< 33]) == Array(q[12 ..< 33]))
        #expect(out[q.count...].allSatisfy { $0 == 0xEE })          // nothing written past the message
    }

    @Test(arguments: [(UInt8(0), UInt16(0x8180)), (3, 0x8183), (5, 0x8185), (0x12, 0x8182), (0xFF, 0x818F)])
    func rcodeIsMaskedToFourBits(rcode: UInt8, flags: UInt16) throws {
        let (n, out) = Self.fail(try Self.message(Corpus.dns4, 1), rcode: rcode)
        #expect(n == 33)
        #expect(u16(out, 2) == flags)
    }

    // Opcode and RD are kept; AA, TC, Z, AD, CD and the old rcode are cleared; QR and RA are set.
    @Test(arguments: [(UInt16(0x7F7F), UInt16(0xF982)), (0x0000, 0x8082), (0x0100, 0x8182), (0x2800, 0xA882), (0x0670, 0x8082)])
    func flagsRewrite(queryFlags: UInt16, replyFlags: UInt16) throws {
        var q = try Self.message(Corpus.dns4, 1)
        q[2] = UInt8(queryFlags >> 8); q[3] = UInt8(queryFlags & 0xFF)
        let (n, out) = Self.fail(q)
        #expect(n == 33)
        #expect(u16(out, 2) == replyFlags)
    }

    @Test func responsesAreNotRewritten() throws {
        let r = try Self.message(Corpus.dns4, 2)
        let (n, out) = Self.fail(r)
        #expect(n == nil)
        #expect(Array(out.prefix(r.count)) == r)
    }

    @Test(arguments: [0, 2, 0xFFFF] as [UInt16])
    func onlySingleQuestionQueries(count: UInt16) throws {
        var q = try Self.message(Corpus.dns4, 1)
        q[4] = UInt8(count >> 8); q[5] = UInt8(count & 0xFF)
        let (n, out) = Self.fail(q)
        #expect(n == nil)
        #expect(Array(out.prefix(q.count)) == q)
    }

    // Every truncation of the query short of the question's end is refused and leaves the buffer alone.
    @Test func truncatedQuestionsAreRejected() throws {
        let q = try Self.message(Corpus.dns4, 1)
        for n in 0 ..< 33 {
            let (r, out) = Self.fail(Array(q.prefix(n)))
            #expect(r == nil, "n=\(n)")
            #expect(Array(out.prefix(n)) == Array(q.prefix(n)), "n=\(n)")
        }
        #expect(Self.fail(Array(q.prefix(33))).0 == 33)
    }

    static func query(name: [UInt8]) -> [UInt8] {
        [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0] + name + [0, 1, 0, 1]
    }

    // A query never needs compression: a pointer (0xC0) or a reserved label type (0x40, 0x80) is refused.
    @Test(arguments: [
        [0xC0, 0x0C],
        [3] + Array("www".utf8) + [0xC0, 0x0C],
        [0x40] + [UInt8](repeating: 0x61, count: 64) + [0],
        [0x80, 0x00],
        [0xFF] + [UInt8](repeating: 0x61, count: 70) + [0],
    ] as [[UInt8]])
    func compressedOrReservedLabelsAreRejected(name: [UInt8]) {
        let (n, _) = Self.fail(Self.query(name: name))
        #expect(n == nil)
    }

    @Test func labelClaimingBytesPastTheEndIsRejected() {
        let (n, _) = Self.fail([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 63, 0x61, 0x62, 0, 0, 1, 0, 1])
        #expect(n == nil)
    }

    @Test func rootAndLongestLabelAreAccepted() {
        #expect(Self.fail(Self.query(name: [0])).0 == 12 + 1 + 4)
        let longest = [63] + [UInt8](repeating: 0x61, count: 63) + [0]
        #expect(Self.fail(Self.query(name: longest)).0 == 12 + 65 + 4)
    }

    // MARK: DNSNameEncoding

    @Test func encodesTheCorpusName() {
        #expect(DNSNameEncoding.encode(["freedesktop.org"]) == Self.freedesktop)
        #expect(DNSNameEncoding.encode(["freedesktop.org."]) == Self.freedesktop)
    }

    @Test func encodesSeveralDomainsBackToBack() {
        let a: [UInt8] = [7] + Array("example".utf8) + [3] + Array("com".utf8) + [0]
        let b: [UInt8] = [4] + Array("corp".utf8) + [7] + Array("example".utf8) + [3] + Array("com".utf8) + [0]
        #expect(DNSNameEncoding.encode(["example.com", "corp.example.com."]) == a + b)
        #expect(DNSNameEncoding.encode([]) == [])
        #expect(DNSNameEncoding.encode(["localdomain"]) == [11] + Array("localdomain".utf8) + [0])
    }

    @Test func labelLengthLimit() {
        let l63 = String(repeating: "a", count: 63), l64 = String(repeating: "a", count: 64)
        #expect(DNSNameEncoding.encode([l63 + ".com"])?.first == 63)
        #expect(DNSNameEncoding.encode([l64 + ".com"]) == nil)
        #expect(DNSNameEncoding.encode(["ok.com", "x." + l64]) == nil)
    }

    @Test(arguments: ["", ".", "a..b", ".a", "a.b..", "..", "example.com", "with-dash.example"])
    func emptyLabelsAreRejected(name: String) {
        let valid = ["example.com", "with-dash.example"].contains(name)
        #expect((DNSNameEncoding.encode([name]) != nil) == valid, "\(name)")
    }

    // Encoded names are what questionEnd walks: a query built around each encoding ends where expected.
    @Test(arguments: ["a", "freedesktop.org", "a.b.c.d.e.f.g", String(repeating: "x", count: 63) + ".example"])
    func encodingIsWalkable(name: String) throws {
        let encoded = try #require(DNSNameEncoding.encode([name]))
        let q = Self.query(name: encoded)
        #expect(q.withUnsafeBytes { DNSReplies.questionEnd($0) } == q.count)
    }
}
