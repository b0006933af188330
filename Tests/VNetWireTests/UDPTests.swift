// UDP headers (RFC 768). Ports and lengths from `tshark -r FILE -V`; checksums from tshark with
// `-o udp.check_checksum:TRUE` (`udp.checksum` and `udp.checksum_calculated`). The guest's own datagrams
// were captured before checksum offload, so their stored checksum is wrong (the placeholder the NIC fills).

import Testing
@testable import VNetWire

@Suite struct UDPTests {
    struct Oracle: Sendable, CustomTestStringConvertible {
        var file: String, frame: Int, stored: UInt16, calculated: UInt16
        var offloaded: Bool { stored != calculated }
        var testDescription: String { "\(file)#\(frame)" }
    }

    /// Every IPv4 UDP datagram in the corpus: stored and tshark-calculated checksum.
    static let oracle: [Oracle] = [
        Oracle(file: Corpus.dns4, frame: 1, stored: 0x0e62, calculated: 0x39c6),
        Oracle(file: Corpus.dns4, frame: 2, stored: 0x1ffd, calculated: 0x1ffd),
        Oracle(file: Corpus.dhcp, frame: 1, stored: 0x3613, calculated: 0x3613),
        Oracle(file: Corpus.dhcp, frame: 2, stored: 0x0e10, calculated: 0x0e10),
        Oracle(file: Corpus.dhcp, frame: 3, stored: 0x2dd1, calculated: 0x2dd1),
        Oracle(file: Corpus.dhcp, frame: 4, stored: 0x0b10, calculated: 0x0b10),
        Oracle(file: Corpus.tftp4, frame: 1, stored: 0x1837, calculated: 0x871e),
        Oracle(file: Corpus.tftp4, frame: 2, stored: 0x3564, calculated: 0x3564),
        Oracle(file: Corpus.tftp4, frame: 3, stored: 0x182e, calculated: 0x3963),
        Oracle(file: Corpus.tftp4, frame: 4, stored: 0x3563, calculated: 0x3563),
        Oracle(file: Corpus.tftp4, frame: 5, stored: 0x182e, calculated: 0x3962),
        Oracle(file: Corpus.tftp4, frame: 6, stored: 0x373a, calculated: 0x373a),
        Oracle(file: Corpus.tftp4, frame: 7, stored: 0x182e, calculated: 0x3961),
        Oracle(file: Corpus.tftpErr4, frame: 1, stored: 0x1842, calculated: 0x7d03),
        Oracle(file: Corpus.tftpErr4, frame: 2, stored: 0x7307, calculated: 0x7307),
    ]

    static var udpFrames: [PcapFrame] { Corpus.allFrames.filter { (try? dissect($0))?.udp != nil } }

    @Test func oracleCoversEveryIPv4Datagram() {
        let v4 = Self.udpFrames.filter { $0.etherType == EtherType.ipv4.rawValue }.map(\.testDescription)
        #expect(v4 == Self.oracle.map(\.testDescription))
        #expect(Self.udpFrames.count == 15 + 2 + 7 + 3)     // plus the IPv6 DNS, TFTP and TFTP-error datagrams
    }

    @Test(arguments: [
        (Corpus.dhcp, 1, UInt16(68), UInt16(67), 308),
        (Corpus.dhcp, 2, 67, 68, 556),
        (Corpus.dns4, 1, 36946, 53, 64),
        (Corpus.dns4, 2, 53, 36946, 68),
        (Corpus.dns6, 1, 37633, 53, 64),
        (Corpus.dns6, 2, 53, 37633, 68),
        (Corpus.tftp4, 1, 44568, 69, 21),
        (Corpus.tftp4, 2, 69, 44568, 524),
    ])
    func portsAndLengths(file: String, frame: Int, src: UInt16, dst: UInt16, length: Int) throws {
        let d = try dissect(try Corpus.frame(file, frame))
        let u = try #require(d.udp)
        #expect(u.sourcePort == src)
        #expect(u.destinationPort == dst)
        #expect(u.length == length)
        #expect(u.payloadRange == 8 ..< length)
        #expect(d.l4?.count == length)          // the UDP length agrees with the IP payload in the corpus
    }

    // Our checksum over each datagram equals tshark's calculated value, and checksumValid agrees with tshark.
    @Test(arguments: oracle)
    func checksumAgreesWithTshark(_ o: Oracle) throws {
        let f = try Corpus.frame(o.file, o.frame)
        let d = try dissect(f)
        let ip = try #require(d.ipv4), u = try #require(d.udp), l4 = try #require(d.l4)
        let seg = Array(f.captured[l4])
        #expect(u.checksum == o.stored)
        #expect(referenceTransportChecksum(seg, checksumOffset: 6, src: ip.source, dst: ip.destination, proto: 17) == o.calculated)
        let valid = seg.withUnsafeBytes { UDPHeader.checksumValid($0, source: ip.source, destination: ip.destination) }
        #expect(valid == !o.offloaded)
    }

    // parse -> emit into a fresh buffer (payload copied first, header emitted over junk). Compared: all bytes
    // of the datagram, except bytes 6..<8 (the checksum) where the capture left it to offload; for those,
    // the emitted checksum must be tshark's calculated one and must validate.
    @Test(arguments: oracle)
    func roundTrip(_ o: Oracle) throws {
        let f = try Corpus.frame(o.file, o.frame)
        let d = try dissect(f)
        let ip = try #require(d.ipv4), u = try #require(d.udp), l4 = try #require(d.l4)
        let seg = Array(f.captured[l4])
        var n = 0
        let out = build(u.length, fill: 0xEE) { b in
            b.slice(8 ..< u.length).copyBytes(from: seg[8 ..< u.length])
            n = u.emit(into: b, source: ip.source, destination: ip.destination)
        }
        #expect(n == 8)
        #expect(Array(out[0 ..< 6]) == Array(seg[0 ..< 6]))
        #expect(Array(out[8...]) == Array(seg[8...]))
        #expect(u16(out, 6) == o.calculated)
        if !o.offloaded { #expect(out == seg) }
        #expect(out.withUnsafeBytes { UDPHeader.checksumValid($0, source: ip.source, destination: ip.destination) })
    }

    @Test func zeroChecksumMeansNone() throws {
        let f = try Corpus.frame(Corpus.dns4, 2)
        let d = try dissect(f)
        let ip = try #require(d.ipv4)
        var seg = Array(f.captured[try #require(d.l4)])
        seg[6] = 0; seg[7] = 0
        #expect(seg.withUnsafeBytes { UDPHeader.checksumValid($0, source: ip.source, destination: ip.destination) })
        seg[20] ^= 1                                   // no checksum, so no corruption can be detected
        #expect(seg.withUnsafeBytes { UDPHeader.checksumValid($0, source: ip.source, destination: ip.destination) })
    }

    @Test func corruptionIsDetected() throws {
        let f = try Corpus.frame(Corpus.dns4, 2)
        let d = try dissect(f)
        let ip = try #require(d.ipv4)
        let seg = Array(f.captured[try #require(d.l4)])
        for i in [0, 3, 4, 7, 8, seg.count - 1] {
            var s = seg
            s[i] ^= 0x40
            #expect(!s.withUnsafeBytes { UDPHeader.checksumValid($0, source: ip.source, destination: ip.destination) }, "byte \(i)")
        }
        // The pseudo-header counts too: a different destination address fails.
        #expect(!seg.withUnsafeBytes { UDPHeader.checksumValid($0, source: ip.source, destination: IPv4Address(10, 0, 2, 16)) })
    }

    // RFC 768: "If the computed checksum is zero, it is transmitted as all ones." Build a datagram whose sum is
    // exactly ffff by choosing its last payload word, and check emit stores ffff (which still validates).
    @Test func computedZeroIsSentAsAllOnes() throws {
        let src = IPv4Address(10, 0, 2, 15), dst = IPv4Address(10, 0, 2, 3)
        let h = UDPHeader(sourcePort: 5353, destinationPort: 53, length: 12)
        var payload: [UInt8] = [0x12, 0x34, 0, 0]
        let withoutLast = referenceSum(pseudoHeaderBytes(src, dst, proto: 17, length: 12) + [0x14, 0xe9, 0, 0x35, 0, 12, 0, 0] + payload)
        let w = 0xFFFF - withoutLast
        payload[2] = UInt8(w >> 8); payload[3] = UInt8(w & 0xFF)
        let out = build(12) { b in
            b.slice(8 ..< 12).copyBytes(from: payload)
            h.emit(into: b, source: src, destination: dst)
        }
        #expect(u16(out, 6) == 0xFFFF)
        #expect(out.withUnsafeBytes { UDPHeader.checksumValid($0, source: src, destination: dst) })
    }

    // Every prefix of the IP payload: below 8 bytes, or below the UDP length, is malformed (BAD-INPUTS 4:
    // the frame ends inside the header, or the UDP length claims more than is present).
    @Test(arguments: udpFrames)
    func everyPrefix(_ f: PcapFrame) throws {
        let d = try dissect(f)
        let full = try #require(d.udp)
        let seg = f.captured[try #require(d.l4)]
        for n in 0 ... seg.count {
            let r = parseExact(seg.prefix(n), UDPHeader.parse)
            if n < full.length { #expect(r.isMalformed, "n=\(n)") } else { #expect(r.value == full, "n=\(n)") }
        }
    }

    // MARK: BAD-INPUTS item 4

    static func dnsQuery() throws -> [UInt8] {
        let f = try Corpus.frame(Corpus.dns4, 1)
        return Array(f.captured[try #require(try dissect(f).l4)])
    }

    @Test(arguments: 0 ..< 8)
    func lengthBelowHeaderIsMalformed(length: Int) throws {
        var s = try Self.dnsQuery()
        s[4] = 0; s[5] = UInt8(length)
        #expect(parseExact(s, UDPHeader.parse).isMalformed)
    }

    @Test func lengthAboveIPPayloadIsMalformed() throws {
        var s = try Self.dnsQuery()
        for length in [65, 66, 512, 65535] {
            s[4] = UInt8(length >> 8); s[5] = UInt8(length & 0xFF)
            #expect(parseExact(s, UDPHeader.parse).isMalformed, "length=\(length)")
        }
    }

    // A UDP length shorter than the IP payload is honoured: the trailing bytes are not payload.
    @Test func lengthBelowIPPayloadExcludesTrailingBytes() throws {
        var s = try Self.dnsQuery()
        for length in [8, 9, 33, 63] {
            s[4] = 0; s[5] = UInt8(length)
            let u = try parseOK(s, UDPHeader.parse)
            #expect(u.length == length)
            #expect(u.payloadRange == 8 ..< length)
        }
    }
}
