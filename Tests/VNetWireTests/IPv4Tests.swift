// IPv4 headers (RFC 791). Field values from `tshark -r FILE -V`; every IPv4 header checksum in the corpus is
// correct (tshark `ip.checksum.status` == good with validation on), so round trips compare all 20 bytes.

import Testing
@testable import VNetWire

@Suite struct IPv4Tests {
    static var ipv4Frames: [PcapFrame] { Corpus.allFrames.filter { $0.etherType == EtherType.ipv4.rawValue } }

    struct Expected: Sendable, CustomTestStringConvertible {
        var file: String, frame: Int
        var dscp: UInt8, total: Int, id: UInt16, flagsOffset: UInt16, ttl: UInt8, proto: IPProtocol, checksum: UInt16
        var src: IPv4Address, dst: IPv4Address
        var testDescription: String { "\(file)#\(frame)" }
    }

    static let expected: [Expected] = [
        Expected(file: Corpus.ping4, frame: 1, dscp: 0, total: 84, id: 0x033f, flagsOffset: 0x4000, ttl: 64, proto: .icmp,
                 checksum: 0x1f5a, src: IPv4Address(10, 0, 2, 15), dst: IPv4Address(10, 0, 2, 2)),
        Expected(file: Corpus.ping4, frame: 2, dscp: 0, total: 84, id: 0x020c, flagsOffset: 0x4000, ttl: 255, proto: .icmp,
                 checksum: 0x618c, src: IPv4Address(10, 0, 2, 2), dst: IPv4Address(10, 0, 2, 15)),
        Expected(file: Corpus.dhcp, frame: 1, dscp: 0x10, total: 328, id: 0, flagsOffset: 0, ttl: 128, proto: .udp,
                 checksum: 0x3996, src: .any, dst: .broadcast),
        Expected(file: Corpus.dhcp, frame: 2, dscp: 0x10, total: 576, id: 0x0354, flagsOffset: 0, ttl: 64, proto: .udp,
                 checksum: 0x6948, src: IPv4Address(10, 0, 2, 2), dst: .broadcast),
        Expected(file: Corpus.tcp4, frame: 10, dscp: 0, total: 2960, id: 0x0326, flagsOffset: 0, ttl: 64, proto: .tcp,
                 checksum: 0x542f, src: IPv4Address(10, 0, 2, 5), dst: IPv4Address(10, 0, 2, 15)),
        // Linux cooked v2 captures: the IPv4 header follows the 20-byte SLL2 header.
        Expected(file: Corpus.icmpSLL2v4, frame: 1, dscp: 0, total: 84, id: 0xa62f, flagsOffset: 0x4000, ttl: 64, proto: .icmp,
                 checksum: 0xd981, src: IPv4Address(10, 0, 2, 15), dst: IPv4Address(216, 58, 214, 174)),
        Expected(file: Corpus.icmpSLL2v4, frame: 2, dscp: 0, total: 84, id: 0x7c09, flagsOffset: 0, ttl: 118, proto: .icmp,
                 checksum: 0x0da8, src: IPv4Address(216, 58, 214, 174), dst: IPv4Address(10, 0, 2, 15)),
    ]

    @Test(arguments: expected)
    func fieldsMatchTshark(_ e: Expected) throws {
        let f = try Corpus.frame(e.file, e.frame)
        let h = try parseOK(f.network, IPv4Header.parse)
        #expect(h.headerLength == 20)
        #expect(h.dscpECN == e.dscp)
        #expect(h.totalLength == e.total)
        #expect(h.identification == e.id)
        #expect(h.flagsFragmentOffset == e.flagsOffset)
        #expect(h.dontFragment == (e.flagsOffset == 0x4000))
        #expect(!h.isFragment)
        #expect(h.ttl == e.ttl)
        #expect(h.protocolNumber == e.proto)
        #expect(h.checksum == e.checksum)
        #expect(h.source == e.src)
        #expect(h.destination == e.dst)
        #expect(h.payloadRange == 20 ..< e.total)
    }

    // parse -> emit: all 20 header bytes compared, the checksum included (emit computes it afresh, and the
    // capture's were all correct). The emit buffer starts full of junk so a stale checksum would show.
    @Test(arguments: ipv4Frames)
    func roundTrip(_ f: PcapFrame) throws {
        let h = try parseOK(f.network, IPv4Header.parse)
        #expect(f.network.withUnsafeBytes { IPv4Header.headerChecksumValid($0, headerLength: h.headerLength) })
        var n = 0
        let out = build(20, fill: 0xEE) { n = h.emit(into: $0) }
        #expect(n == 20)
        #expect(out == Array(f.network.prefix(20)))
    }

    // Ethernet pads short frames to 60 bytes: tcp_qemucapt-41b49cb5 #2 (total 44 in 46 bytes) and #7-9 (total
    // 40 in 46 bytes), as tshark's eth.padding shows. The padding is outside payloadRange.
    @Test(arguments: [(2, 44), (7, 40), (8, 40), (9, 40)])
    func ethernetPaddingIsExcluded(frame: Int, total: Int) throws {
        let f = try Corpus.frame(Corpus.tcp4, frame)
        #expect(f.captured.count == 60 && f.network.count == 46)
        let h = try parseOK(f.network, IPv4Header.parse)
        #expect(h.totalLength == total)
        #expect(h.payloadRange == 20 ..< total)
        #expect(f.network.dropFirst(total).allSatisfy { $0 == 0 })
    }

    // Any amount of trailing junk leaves the header and payloadRange unchanged.
    @Test(arguments: ipv4Frames)
    func trailingBytesAreIgnored(_ f: PcapFrame) throws {
        let h = try parseOK(f.network, IPv4Header.parse)
        let exact = Array(f.network.prefix(h.totalLength))
        for extra in [1, 2, 17, 64, 1500] {
            let padded = exact + [UInt8](repeating: 0xEE, count: extra)
            let p = try parseOK(padded, IPv4Header.parse)
            #expect(p == h)
            #expect(p.payloadRange.upperBound == exact.count)
        }
    }

    // Every prefix shorter than the total length is malformed; from the total length on it parses the same.
    @Test(arguments: ipv4Frames)
    func everyPrefix(_ f: PcapFrame) throws {
        let full = try parseOK(f.network, IPv4Header.parse)
        for n in 0 ... f.network.count {
            let r = parseExact(f.network.prefix(n), IPv4Header.parse)
            if n < full.totalLength { #expect(r.isMalformed, "n=\(n)") } else { #expect(r.value == full, "n=\(n)") }
        }
    }

    // MARK: BAD-INPUTS item 2

    static func pingPacket() throws -> [UInt8] { Array(try Corpus.frame(Corpus.ping4, 1).network) }

    static func withTotal(_ p: [UInt8], _ total: Int) -> [UInt8] {
        var q = p
        q[2] = UInt8(total >> 8); q[3] = UInt8(total & 0xFF)
        return q
    }

    @Test(arguments: 0 ... 4)
    func ihlBelowFiveIsMalformed(ihl: UInt8) throws {
        var p = try Self.pingPacket()
        p[0] = 0x40 | ihl
        #expect(parseExact(p, IPv4Header.parse).isMalformed)
    }

    @Test(arguments: (0 ... 15).filter { $0 != 4 })
    func versionOtherThanFourIsMalformed(version: UInt8) throws {
        var p = try Self.pingPacket()
        p[0] = version << 4 | 5
        #expect(parseExact(p, IPv4Header.parse).isMalformed)
    }

    // IHL larger than the bytes present (with a total length that fits, and with one that does not).
    @Test(arguments: 6 ... 15)
    func ihlPastTheFrameIsMalformed(ihl: Int) throws {
        let p = try Self.pingPacket()
        let short = Self.withTotal(Array(p.prefix(ihl * 4 - 1)), ihl * 4 - 1)
        var s = short
        s[0] = 0x40 | UInt8(ihl)
        #expect(parseExact(s, IPv4Header.parse).isMalformed, "ihl=\(ihl) in \(s.count) bytes")
    }

    @Test func totalLengthLargerThanFrameIsMalformed() throws {
        let p = try Self.pingPacket()
        for total in [85, 86, 100, 1500, 65535] {
            #expect(parseExact(Self.withTotal(p, total), IPv4Header.parse).isMalformed, "total=\(total)")
        }
        #expect(parseExact(Self.withTotal(p, 84), IPv4Header.parse).value?.totalLength == 84)
    }

    @Test func totalLengthSmallerThanHeaderIsMalformed() throws {
        let p = try Self.pingPacket()
        for total in 0 ..< 20 {
            #expect(parseExact(Self.withTotal(p, total), IPv4Header.parse).isMalformed, "total=\(total)")
        }
        // Exactly a header and nothing else is legal.
        #expect(parseExact(Self.withTotal(p, 20), IPv4Header.parse).value?.payloadRange == 20 ..< 20)
    }

    // A header with options: IHL 6 (one 4-byte option word). The payload starts after the options, and a total
    // length that does not cover the options is malformed.
    @Test func optionsMoveThePayload() throws {
        let p = try Self.pingPacket()
        var q = Array(p[0 ..< 20]) + [0x01, 0x01, 0x01, 0x00] + Array(p[20...])
        q[0] = 0x46
        q = Self.withTotal(q, 88)
        q[10] = 0; q[11] = 0
        let c = referenceChecksum(Array(q[0 ..< 24]))
        q[10] = UInt8(c >> 8); q[11] = UInt8(c & 0xFF)
        let h = try parseOK(q, IPv4Header.parse)
        #expect(h.headerLength == 24)
        #expect(h.payloadRange == 24 ..< 88)
        #expect(q.withUnsafeBytes { IPv4Header.headerChecksumValid($0, headerLength: 24) })
        for total in 20 ..< 24 {
            #expect(parseExact(Self.withTotal(q, total), IPv4Header.parse).isMalformed, "total=\(total)")
        }
        #expect(parseExact(Self.withTotal(q, 24), IPv4Header.parse).value?.payloadRange == 24 ..< 24)
    }

    @Test func corruptedHeaderFailsChecksum() throws {
        var p = try Self.pingPacket()
        #expect(p.withUnsafeBytes { IPv4Header.headerChecksumValid($0, headerLength: 20) })
        for i in 0 ..< 20 {
            p[i] ^= 0x10
            #expect(!p.withUnsafeBytes { IPv4Header.headerChecksumValid($0, headerLength: 20) }, "byte \(i)")
            p[i] ^= 0x10
        }
    }

    @Test(arguments: [
        (UInt16(0x0000), false, false, 0, false),
        (0x4000, true, false, 0, false),
        (0x2000, false, true, 0, true),
        (0x0001, false, false, 8, true),
        (0x2001, false, true, 8, true),
        (0x1FFF, false, false, 65528, true),
        (0x8000, false, false, 0, false),        // the reserved ("evil") bit is not a fragment flag
    ])
    func fragmentFields(raw: UInt16, df: Bool, mf: Bool, offset: Int, isFragment: Bool) {
        let h = IPv4Header(totalLength: 20, flagsFragmentOffset: raw, protocolNumber: .udp, source: .any, destination: .any)
        #expect(h.dontFragment == df)
        #expect(h.moreFragments == mf)
        #expect(h.fragmentOffset == offset)
        #expect(h.isFragment == isFragment)
    }

    @Test func emitThenParse() throws {
        let h = IPv4Header(dscpECN: 0xb8, totalLength: 1500, identification: 0xbeef, flagsFragmentOffset: 0x2010, ttl: 1,
                           protocolNumber: IPProtocol(rawValue: 253), source: IPv4Address(192, 168, 1, 1),
                           destination: IPv4Address(224, 0, 0, 1))
        let out = build(1500, fill: 0x77) { h.emit(into: $0) }
        var back = try parseOK(out, IPv4Header.parse)
        #expect(out.withUnsafeBytes { IPv4Header.headerChecksumValid($0, headerLength: 20) })
        #expect(back.checksum == referenceChecksum(Array(out[0 ..< 10]) + [0, 0] + Array(out[12 ..< 20])))
        back.checksum = 0
        #expect(back == h)
        #expect(back.fragmentOffset == 128 && back.moreFragments)
    }
}
