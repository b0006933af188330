// TCP headers (RFC 9293) and the options vnet reads: MSS, window scale (RFC 7323), SACK-permitted (RFC 2018).
// Field values from `tshark -r FILE -V`; checksums from tshark with `-o tcp.check_checksum:TRUE`
// (`tcp.checksum`, `tcp.checksum_calculated`). In tcp_qemucapt-41b49cb5 the guest's segments were captured
// before checksum offload; QEMU's 2974-byte frame (#10, before segmentation offload) also carries a stale one.

import Testing
@testable import VNetWire

@Suite struct TCPTests {
    struct Oracle: Sendable, CustomTestStringConvertible {
        var file: String, frame: Int, stored: UInt16, calculated: UInt16
        var offloaded: Bool { stored != calculated }
        var testDescription: String { "\(file)#\(frame)" }
    }

    static let oracle: [Oracle] = [
        Oracle(file: Corpus.nc8080, frame: 1, stored: 0x4a5e, calculated: 0x4a5e),
        Oracle(file: Corpus.nc8080, frame: 2, stored: 0xd46b, calculated: 0xd46b),
        Oracle(file: Corpus.nc8080, frame: 3, stored: 0x1138, calculated: 0x1138),
        Oracle(file: Corpus.nc8080, frame: 4, stored: 0xcd4d, calculated: 0xcd4d),
        Oracle(file: Corpus.nc8080, frame: 5, stored: 0xe9ea, calculated: 0xe9ea),
        Oracle(file: Corpus.nc8080, frame: 8, stored: 0x9bf6, calculated: 0x9bf6),
        Oracle(file: Corpus.nc8080, frame: 9, stored: 0x1132, calculated: 0x1132),
        Oracle(file: Corpus.nc8080, frame: 10, stored: 0x1131, calculated: 0x1131),
        Oracle(file: Corpus.nc8080, frame: 11, stored: 0xe9e3, calculated: 0xe9e3),
        Oracle(file: Corpus.nc8080, frame: 12, stored: 0xe9df, calculated: 0xe9df),
        Oracle(file: Corpus.ncIdent, frame: 1, stored: 0x9517, calculated: 0x9517),
        Oracle(file: Corpus.ncIdent, frame: 2, stored: 0x63d4, calculated: 0x63d4),
        Oracle(file: Corpus.ncIdent, frame: 3, stored: 0x9b35, calculated: 0x9b35),
        Oracle(file: Corpus.ncIdent, frame: 4, stored: 0x63cb, calculated: 0x63cb),
        Oracle(file: Corpus.tcp4, frame: 1, stored: 0x1842, calculated: 0xb09c),
        Oracle(file: Corpus.tcp4, frame: 2, stored: 0x6073, calculated: 0x6073),
        Oracle(file: Corpus.tcp4, frame: 3, stored: 0x182e, calculated: 0xfab7),
        Oracle(file: Corpus.tcp4, frame: 4, stored: 0x1de2, calculated: 0xe0ef),
        Oracle(file: Corpus.tcp4, frame: 5, stored: 0x1de2, calculated: 0xdb3b),
        Oracle(file: Corpus.tcp4, frame: 6, stored: 0x1c66, calculated: 0x456a),
        Oracle(file: Corpus.tcp4, frame: 7, stored: 0x727c, calculated: 0x727c),
        Oracle(file: Corpus.tcp4, frame: 8, stored: 0x6cc8, calculated: 0x6cc8),
        Oracle(file: Corpus.tcp4, frame: 9, stored: 0x6890, calculated: 0x6890),
        Oracle(file: Corpus.tcp4, frame: 10, stored: 0x2396, calculated: 0x3500),
        Oracle(file: Corpus.tcp4, frame: 11, stored: 0x182e, calculated: 0xe563),
        Oracle(file: Corpus.tcp4, frame: 12, stored: 0xb342, calculated: 0xb342),
        Oracle(file: Corpus.tcp4, frame: 13, stored: 0x182e, calculated: 0xe12b),
        Oracle(file: Corpus.tcp4, frame: 14, stored: 0x182e, calculated: 0xe127),
    ]

    static var tcpFrames: [PcapFrame] { Corpus.allFrames.filter { (try? dissect($0))?.tcp != nil } }

    @Test func oracleCoversEveryIPv4Segment() {
        #expect(Self.tcpFrames.filter { $0.etherType == EtherType.ipv4.rawValue }.map(\.testDescription) == Self.oracle.map(\.testDescription))
        #expect(Self.tcpFrames.count == 28 + 19)
    }

    struct Expected: Sendable, CustomTestStringConvertible {
        var file: String, frame: Int
        var src: UInt16, dst: UInt16, seq: UInt32, ack: UInt32, headerLength: Int, flags: TCPFlags, window: UInt16, checksum: UInt16
        var mss: UInt16?, wscale: UInt8?, sack: Bool
        var testDescription: String { "\(file)#\(frame)" }
    }

    static let expected: [Expected] = [
        // Linux guest SYNs: MSS, SACK_PERM, Timestamps, NOP, WS (40-byte header).
        Expected(file: Corpus.nc8080, frame: 1, src: 53482, dst: 8080, seq: 1_189_523_939, ack: 0, headerLength: 40, flags: .syn,
                 window: 64240, checksum: 0x4a5e, mss: 1460, wscale: 7, sack: true),
        Expected(file: Corpus.ncIdent, frame: 1, src: 55066, dst: 113, seq: 1_833_016_229, ack: 0, headerLength: 40, flags: .syn,
                 window: 64240, checksum: 0x9517, mss: 1460, wscale: 7, sack: true),
        Expected(file: Corpus.tcp4, frame: 1, src: 34322, dst: 1234, seq: 3_565_076_652, ack: 0, headerLength: 40, flags: .syn,
                 window: 32120, checksum: 0x1842, mss: 1460, wscale: 7, sack: true),
        Expected(file: Corpus.tcp6, frame: 1, src: 59172, dst: 7, seq: 2_447_955_053, ack: 0, headerLength: 40, flags: .syn,
                 window: 64800, checksum: 0x90cb, mss: 1440, wscale: 7, sack: true),
        // libslirp SYN-ACKs: MSS only (24-byte header), no window scaling.
        Expected(file: Corpus.nc8080, frame: 2, src: 8080, dst: 53482, seq: 6_464_001, ack: 1_189_523_940, headerLength: 24,
                 flags: [.syn, .ack], window: 8192, checksum: 0xd46b, mss: 1460, wscale: nil, sack: false),
        Expected(file: Corpus.tcp4, frame: 2, src: 1234, dst: 34322, seq: 125_696_001, ack: 3_565_076_653, headerLength: 24,
                 flags: [.syn, .ack], window: 65535, checksum: 0x6073, mss: 1460, wscale: nil, sack: false),
        Expected(file: Corpus.tcp6, frame: 2, src: 7, dst: 59172, seq: 9_792_001, ack: 2_447_955_054, headerLength: 24,
                 flags: [.syn, .ack], window: 65535, checksum: 0x4f74, mss: 1440, wscale: nil, sack: false),
        // The 2974-byte frame: 2920 bytes of data.
        Expected(file: Corpus.tcp4, frame: 10, src: 1234, dst: 34322, seq: 125_696_002, ack: 3_565_080_653, headerLength: 20,
                 flags: .ack, window: 65535, checksum: 0x2396, mss: nil, wscale: nil, sack: false),
        Expected(file: Corpus.nc8080, frame: 4, src: 53482, dst: 8080, seq: 1_189_523_940, ack: 6_464_002, headerLength: 20,
                 flags: [.psh, .ack], window: 64240, checksum: 0xcd4d, mss: nil, wscale: nil, sack: false),
        Expected(file: Corpus.nc8080, frame: 12, src: 8080, dst: 53482, seq: 6_464_008, ack: 1_189_523_947, headerLength: 20,
                 flags: [.rst, .ack], window: 8760, checksum: 0xe9df, mss: nil, wscale: nil, sack: false),
    ]

    @Test(arguments: expected)
    func fieldsMatchTshark(_ e: Expected) throws {
        let d = try dissect(try Corpus.frame(e.file, e.frame))
        let h = try #require(d.tcp)
        #expect(h.sourcePort == e.src)
        #expect(h.destinationPort == e.dst)
        #expect(h.sequence == e.seq)
        #expect(h.acknowledgment == e.ack)
        #expect(h.headerLength == e.headerLength)
        #expect(h.flags == e.flags)
        #expect(h.window == e.window)
        #expect(h.checksum == e.checksum)
        #expect(h.urgentPointer == 0)
        #expect(h.maxSegmentSize == e.mss)
        #expect(h.windowScale == e.wscale)
        #expect(h.sackPermitted == e.sack)
    }

    @Test func bigFrameCarries2920Bytes() throws {
        let d = try dissect(try Corpus.frame(Corpus.tcp4, 10))
        let h = try #require(d.tcp)
        #expect(try #require(d.l4).count - h.headerLength == 2920)
    }

    // VNetWire's checksum arithmetic over each real segment equals tshark's calculated value (1500- and
    // 2960-byte packets included): the checksum field is zeroed and summed with the pseudo-header.
    @Test(arguments: oracle)
    func checksumAgreesWithTshark(_ o: Oracle) throws {
        let f = try Corpus.frame(o.file, o.frame)
        let d = try dissect(f)
        let ip = try #require(d.ipv4), h = try #require(d.tcp)
        var seg = Array(f.captured[try #require(d.l4)])
        #expect(h.checksum == o.stored)
        seg[16] = 0; seg[17] = 0
        let sum = seg.withUnsafeBytes {
            InternetChecksum.add($0, to: InternetChecksum.pseudoHeader(source: ip.source, destination: ip.destination, protocolNumber: 6, length: seg.count))
        }
        #expect(InternetChecksum.finish(sum) == o.calculated)
        #expect(referenceTransportChecksum(seg, checksumOffset: 16, src: ip.source, dst: ip.destination, proto: 6) == o.calculated)
    }

    // parse -> emit into a fresh buffer (payload copied after the header, header emitted over junk).
    // Segments whose options emit reproduces (none, or MSS alone as libslirp sends): every byte is compared
    // except 16..<18 where the capture left the checksum to offload; there the emitted checksum must equal
    // tshark's calculated one. Linux SYNs carry Timestamps, which vnet does not emit: for those the fixed
    // header (except data offset and checksum) is compared, options are compared as values, and the emitted
    // checksum must validate.
    @Test(arguments: oracle)
    func roundTrip(_ o: Oracle) throws {
        let f = try Corpus.frame(o.file, o.frame)
        let d = try dissect(f)
        let ip = try #require(d.ipv4), h = try #require(d.tcp)
        let seg = Array(f.captured[try #require(d.l4)])
        let payload = seg[h.headerLength...]
        let len = h.emittedLength + payload.count
        var n = 0
        let out = build(len, fill: 0xEE) { b in
            b.slice(h.emittedLength ..< len).copyBytes(from: payload)
            n = h.emit(into: b, segmentLength: len, source: ip.source, destination: ip.destination)
        }
        #expect(n == h.emittedLength)
        #expect(referenceTransportChecksum(out, checksumOffset: 16, src: ip.source, dst: ip.destination, proto: 6) == u16(out, 16))
        if h.emittedLength == h.headerLength {
            #expect(Array(out[0 ..< 16]) == Array(seg[0 ..< 16]))
            #expect(Array(out[18...]) == Array(seg[18...]))
            #expect(u16(out, 16) == o.calculated)
            if !o.offloaded { #expect(out == seg) }
        } else {
            #expect(h.headerLength == 40 && h.emittedLength == 32)
            #expect(Array(out[0 ..< 12]) == Array(seg[0 ..< 12]))
            #expect(out[12] == 0x80)
            #expect(Array(out[13 ..< 16]) == Array(seg[13 ..< 16]))
            #expect(Array(out[18 ..< 20]) == Array(seg[18 ..< 20]))
            #expect(Array(out[20 ..< 32]) == [2, 4, 0x05, 0xb4, 1, 3, 3, 7, 1, 1, 4, 2])
            let back = try parseOK(out, TCPHeader.parse)
            #expect(back.maxSegmentSize == h.maxSegmentSize && back.windowScale == h.windowScale && back.sackPermitted == h.sackPermitted)
        }
    }

    // Every prefix of the segment shorter than its header is malformed; from there it parses the same.
    @Test(arguments: tcpFrames)
    func everyPrefix(_ f: PcapFrame) throws {
        let d = try dissect(f)
        let full = try #require(d.tcp)
        let seg = f.captured[try #require(d.l4)]
        for n in 0 ... seg.count {
            let r = parseExact(seg.prefix(n), TCPHeader.parse)
            if n < full.headerLength { #expect(r.isMalformed, "n=\(n)") } else { #expect(r.value == full, "n=\(n)") }
        }
    }

    @Test func emitThenParseRandomHeaders() throws {
        var rng = SplitMix64(seed: 9293)
        let src = IPv4Address(10, 0, 2, 2), dst = IPv4Address(10, 0, 2, 15)
        for _ in 0 ..< 300 {
            var h = TCPHeader(sourcePort: .random(in: 1 ... .max, using: &rng), destinationPort: .random(in: 1 ... .max, using: &rng),
                              sequence: .random(in: .min ... .max, using: &rng), acknowledgment: .random(in: .min ... .max, using: &rng),
                              flags: TCPFlags(rawValue: .random(in: 0 ... 0x3F, using: &rng)), window: .random(in: .min ... .max, using: &rng),
                              urgentPointer: .random(in: .min ... .max, using: &rng),
                              maxSegmentSize: Bool.random(using: &rng) ? .random(in: .min ... .max, using: &rng) : nil,
                              windowScale: Bool.random(using: &rng) ? .random(in: 0 ... 14, using: &rng) : nil,
                              sackPermitted: .random(using: &rng))
            let payload = rng.bytes(.random(in: 0 ... 41, using: &rng))
            let len = h.emittedLength + payload.count
            let out = build(len, fill: 0xEE) { b in
                b.slice(h.emittedLength ..< len).copyBytes(from: payload)
                h.emit(into: b, segmentLength: len, source: src, destination: dst)
            }
            let back = try parseOK(out, TCPHeader.parse)
            #expect(referenceTransportChecksum(out, checksumOffset: 16, src: src, dst: dst, proto: 6) == back.checksum)
            h.headerLength = h.emittedLength
            h.checksum = back.checksum
            #expect(back == h)
            #expect(Array(out[h.emittedLength...]) == payload)
        }
    }

    // MARK: BAD-INPUTS item 15

    /// A 20-byte header from the corpus (nc #3, a bare ACK) with `options` appended and the data offset set to
    /// cover them (`offset` overrides it).
    static func segment(options: [UInt8] = [], offset: Int? = nil, payload: Int = 0) throws -> [UInt8] {
        let f = try Corpus.frame(Corpus.nc8080, 3)
        let d = try dissect(f)
        var s = Array(f.captured[try #require(d.l4)].prefix(20)) + options + [UInt8](repeating: 0x61, count: payload)
        s[12] = UInt8(offset ?? (20 + options.count) / 4) << 4
        return s
    }

    @Test(arguments: 0 ..< 5)
    func dataOffsetBelowFiveIsMalformed(offset: Int) throws {
        #expect(parseExact(try Self.segment(offset: offset, payload: 40), TCPHeader.parse).isMalformed)
    }

    @Test(arguments: 6 ... 15)
    func dataOffsetPastSegmentIsMalformed(offset: Int) throws {
        // The segment holds offset*4 - 1 bytes: one short of the header it claims.
        let s = try Self.segment(offset: offset, payload: offset * 4 - 21)
        #expect(s.count == offset * 4 - 1)
        #expect(parseExact(s, TCPHeader.parse).isMalformed)
        #expect(parseExact(s + [0], TCPHeader.parse).value?.headerLength == offset * 4)
    }

    struct OptionCase: Sendable, CustomTestStringConvertible {
        var name: String, options: [UInt8], mss: UInt16?, wscale: UInt8?, sack: Bool
        var testDescription: String { name }
    }

    // A malformed option ends the walk; options before it are kept, nothing after it is read.
    static let optionCases: [OptionCase] = [
        OptionCase(name: "length 0 after MSS", options: [2, 4, 0x05, 0xb4, 254, 0, 3, 3, 7, 4, 2, 0], mss: 1460, wscale: nil, sack: false),
        OptionCase(name: "length 1 after MSS", options: [2, 4, 0x05, 0xb4, 254, 1, 3, 3, 7, 4, 2, 0], mss: 1460, wscale: nil, sack: false),
        OptionCase(name: "MSS length 0", options: [2, 0, 0x05, 0xb4, 3, 3, 7, 0], mss: nil, wscale: nil, sack: false),
        OptionCase(name: "WS length 1", options: [3, 1, 7, 1, 2, 4, 0x05, 0xb4], mss: nil, wscale: nil, sack: false),
        OptionCase(name: "length past header", options: [4, 2, 8, 10, 0, 0, 0, 0], mss: nil, wscale: nil, sack: true),
        OptionCase(name: "MSS running into the payload", options: [1, 1, 2, 4], mss: nil, wscale: nil, sack: false),
        OptionCase(name: "length 255", options: [3, 3, 7, 2, 255, 0, 0, 0], mss: nil, wscale: 7, sack: false),
        OptionCase(name: "kind in the last byte", options: [3, 3, 7, 2], mss: nil, wscale: 7, sack: false),
        OptionCase(name: "EOL ends the list", options: [1, 0, 0, 0, 2, 4, 0x05, 0xb4], mss: nil, wscale: nil, sack: false),
        OptionCase(name: "unknown kind is skipped", options: [254, 4, 0xaa, 0xbb, 2, 4, 0x05, 0xb4], mss: 1460, wscale: nil, sack: false),
        OptionCase(name: "MSS of wrong length is ignored", options: [2, 3, 5, 3, 3, 7, 1, 1], mss: nil, wscale: 7, sack: false),
        OptionCase(name: "WS of wrong length is ignored", options: [3, 4, 7, 0, 2, 4, 0x05, 0xb4], mss: 1460, wscale: nil, sack: false),
        OptionCase(name: "SACK-permitted of wrong length is ignored", options: [4, 3, 0, 4, 2, 1, 1, 1], mss: nil, wscale: nil, sack: true),
        OptionCase(name: "timestamps skipped", options: [1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 2, 4, 0x02, 0x18], mss: 536, wscale: nil, sack: false),
        OptionCase(name: "all NOPs", options: [UInt8](repeating: 1, count: 40), mss: nil, wscale: nil, sack: false),
    ]

    @Test(arguments: optionCases)
    func optionWalk(_ c: OptionCase) throws {
        let s = try Self.segment(options: c.options, payload: 16)
        let h = try parseOK(s, TCPHeader.parse)
        #expect(h.headerLength == 20 + c.options.count)
        #expect(h.maxSegmentSize == c.mss)
        #expect(h.windowScale == c.wscale)
        #expect(h.sackPermitted == c.sack)
    }

    // Urgent pointer past the data is carried, not judged: that is the TCP layer's business.
    @Test func urgentPointerPastDataIsCarried() throws {
        var s = try Self.segment(payload: 3)
        s[13] |= TCPFlags.urg.rawValue
        s[18] = 0xFF; s[19] = 0xFF
        let h = try parseOK(s, TCPHeader.parse)
        #expect(h.flags.contains(.urg))
        #expect(h.urgentPointer == 0xFFFF)
    }
}
