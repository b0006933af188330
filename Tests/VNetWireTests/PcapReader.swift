// A tiny classic-pcap reader for the test corpus (test-only; the product never reads pcap files).
//
// Classic pcap: a 24-byte global header (magic, version, zone, sigfigs, snaplen, linktype) then records of
// a 16-byte header (ts_sec, ts_usec, incl_len, orig_len) plus incl_len bytes. The magic 0xa1b2c3d4 (or the
// nanosecond 0xa1b23c4d) read in the file's own byte order tells which order every other field uses.
// Linktype 1 is Ethernet; linktype 276 is Linux cooked capture v2 (SLL2). Its header is 20 bytes, not 16 (16 is
// SLL v1, linktype 113): protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) halen(1) address(8); in the
// corpus the IP header starts at record offset 20 (checked with `tcpdump -XX`). The protocol is a big-endian
// EtherType; we strip the header and report the protocol as the frame's EtherType.

import Foundation
import Testing
@testable import VNetWire

struct PcapFrame: Sendable, CustomTestStringConvertible {
    var file: String
    /// 1-based, as tshark numbers frames.
    var number: Int
    var linkType: UInt32
    /// The record's bytes, link-layer header included.
    var captured: [UInt8]
    var originalLength: Int
    /// The EtherType after the Ethernet header (after one 802.1Q tag), or the SLL2 protocol.
    var etherType: UInt16
    /// Bytes of link-layer header before the network layer: 14 or 18 for Ethernet, 20 for SLL2.
    var linkHeaderLength: Int

    var isEthernet: Bool { linkType == PcapReader.linkTypeEthernet }
    /// The network-layer bytes (everything after the link-layer header, Ethernet padding included).
    var network: ArraySlice<UInt8> { captured[linkHeaderLength...] }
    var testDescription: String { "\(file)#\(number)" }
}

enum PcapError: Error, Equatable {
    case badMagic(UInt32)
    case truncatedGlobalHeader
    case truncatedRecord(frame: Int)
    case unsupportedLinkType(UInt32)
    case shortLinkHeader(frame: Int)
    case notAnEtherType(frame: Int, protocol: UInt16)
}

enum PcapReader {
    static let linkTypeEthernet: UInt32 = 1
    static let linkTypeLinuxSLL2: UInt32 = 276
    static let sll2HeaderLength = 20

    static func parse(_ bytes: [UInt8], file: String) throws(PcapError) -> (linkType: UInt32, frames: [PcapFrame]) {
        guard bytes.count >= 24 else { throw .truncatedGlobalHeader }
        func le32(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
        }
        func be32(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) << 24 | UInt32(bytes[o + 1]) << 16 | UInt32(bytes[o + 2]) << 8 | UInt32(bytes[o + 3])
        }
        let littleEndian: Bool
        switch le32(0) {
        case 0xa1b2_c3d4, 0xa1b2_3c4d: littleEndian = true
        case 0xd4c3_b2a1, 0x4d3c_b2a1: littleEndian = false
        case let m: throw .badMagic(m)
        }
        let u32 = { (o: Int) in littleEndian ? le32(o) : be32(o) }
        let linkType = u32(20)
        guard linkType == linkTypeEthernet || linkType == linkTypeLinuxSLL2 else { throw .unsupportedLinkType(linkType) }

        var frames: [PcapFrame] = []
        var o = 24
        while o < bytes.count {
            let number = frames.count + 1
            guard o + 16 <= bytes.count else { throw .truncatedRecord(frame: number) }
            let incl = Int(u32(o + 8)), orig = Int(u32(o + 12))
            o += 16
            guard incl <= bytes.count - o else { throw .truncatedRecord(frame: number) }
            let data = Array(bytes[o ..< o + incl])
            o += incl
            let etherType: UInt16, headerLength: Int
            if linkType == linkTypeEthernet {
                guard data.count >= 14 else { throw .shortLinkHeader(frame: number) }
                let t = UInt16(data[12]) << 8 | UInt16(data[13])
                if t == 0x8100 {
                    guard data.count >= 18 else { throw .shortLinkHeader(frame: number) }
                    etherType = UInt16(data[16]) << 8 | UInt16(data[17])
                    headerLength = 18
                } else {
                    etherType = t
                    headerLength = 14
                }
            } else {
                guard data.count >= sll2HeaderLength else { throw .shortLinkHeader(frame: number) }
                let p = UInt16(data[0]) << 8 | UInt16(data[1])
                // Values below 0x0600 are Linux pseudo-protocols (ETH_P_802_3, ETH_P_802_2, ...), not EtherTypes.
                guard p >= 0x0600 else { throw .notAnEtherType(frame: number, protocol: p) }
                etherType = p
                headerLength = sll2HeaderLength
            }
            frames.append(PcapFrame(file: file, number: number, linkType: linkType, captured: data, originalLength: orig,
                                    etherType: etherType, linkHeaderLength: headerLength))
        }
        return (linkType, frames)
    }

    /// Writes a classic pcap file (used to test the reader in both byte orders).
    static func write(linkType: UInt32, records: [[UInt8]], bigEndian: Bool) -> [UInt8] {
        var out: [UInt8] = []
        func p32(_ v: UInt32) {
            let b = [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
            out += bigEndian ? b : b.reversed()
        }
        func p16(_ v: UInt16) {
            let b = [UInt8(v >> 8), UInt8(v & 0xFF)]
            out += bigEndian ? b : b.reversed()
        }
        p32(0xa1b2_c3d4); p16(2); p16(4); p32(0); p32(0); p32(65535); p32(linkType)
        for (k, r) in records.enumerated() {
            p32(UInt32(1000 + k)); p32(0); p32(UInt32(r.count)); p32(UInt32(r.count))
            out += r
        }
        return out
    }
}

/// The 17 capture files, loaded once.
enum Corpus {
    static let arp = "arp-5b5c794e.pcap"
    static let dhcp = "dhcp_capture-06c75a36.pcap"
    static let dns4 = "DNS_freedesktop_1-1-1-1-995fe1bc.pcap"
    static let dns6 = "DNS_freedesktop_1-1-1-1-ce10b66f.pcap"
    static let icmpSLL2v6 = "icmp_capture-4b35c4f9.pcap"
    static let icmpSLL2v4 = "icmp_capture-c5099d17.pcap"
    static let nc8080 = "nc-10.0.2.2-8080-d2d9d12d.pcap"
    static let ncIdent = "nc-ident-e9457f58.pcap"
    static let ndp = "ndp-b9bb48c2.pcap"
    static let ping6 = "ping_10-0-2-2-3586b159.pcap"
    static let ping4 = "ping_10-0-2-2-e4050818.pcap"
    static let tcp4 = "tcp_qemucapt-41b49cb5.pcap"
    static let tcp6 = "tcp_qemucapt-c6b1d0d1.pcap"
    static let tftp4 = "tftp_capture-1fe4e524.pcap"
    static let tftp6 = "tftp_capture-fb7d456a.pcap"
    static let tftpErr4 = "tftp_get_libslirp-txt-411dc6a1.pcap"
    static let tftpErr6 = "tftp_get_libslirp-txt-b63c750d.pcap"

    struct File: Sendable {
        var name: String
        var linkType: UInt32
        var frames: [PcapFrame]
    }

    /// The Fixtures directory: from the test bundle's resources, else next to this source file.
    static let directory: URL = {
        if let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) { return url }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    }()

    /// Every .pcap in Fixtures, sorted by name. A file that fails to load is recorded in `loadErrors`.
    static let loaded: (files: [File], errors: [String]) = {
        var files: [File] = [], errors: [String] = []
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
            .filter { $0.hasSuffix(".pcap") }.sorted()
        if names.isEmpty { errors.append("no .pcap files in \(directory.path)") }
        for name in names {
            guard let data = FileManager.default.contents(atPath: directory.appendingPathComponent(name).path) else {
                errors.append("\(name): unreadable"); continue
            }
            do {
                let (lt, frames) = try PcapReader.parse(Array(data), file: name)
                files.append(File(name: name, linkType: lt, frames: frames))
            } catch {
                errors.append("\(name): \(error)")
            }
        }
        return (files, errors)
    }()

    static var files: [File] { loaded.files }
    static var allFrames: [PcapFrame] { loaded.files.flatMap(\.frames) }
    static var ethernetFrames: [PcapFrame] { allFrames.filter(\.isEthernet) }

    static func frames(_ file: String) -> [PcapFrame] {
        loaded.files.first { $0.name == file }?.frames ?? []
    }

    /// Frame `number` (1-based) of `file`; fails the calling test when absent.
    static func frame(_ file: String, _ number: Int, sourceLocation: SourceLocation = #_sourceLocation) throws -> PcapFrame {
        let fs = frames(file)
        return try #require(fs.first { $0.number == number }, "missing \(file)#\(number)", sourceLocation: sourceLocation)
    }
}

// MARK: - The reader's own tests

@Suite struct PcapReaderTests {
    static let sampleFrames: [[UInt8]] = [
        Array(repeating: 0xFF, count: 6) + [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06] + Array(repeating: 0xAB, count: 28),
        [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x55, 10, 0, 2, 2, 0x81, 0x00, 0x00, 0x64, 0x08, 0x00, 0x45],
    ]

    @Test(arguments: [false, true])
    func readsBothByteOrders(bigEndian: Bool) throws {
        let file = PcapReader.write(linkType: 1, records: Self.sampleFrames, bigEndian: bigEndian)
        #expect(Array(file[0 ..< 4]) == (bigEndian ? [0xa1, 0xb2, 0xc3, 0xd4] : [0xd4, 0xc3, 0xb2, 0xa1]))
        let (lt, frames) = try PcapReader.parse(file, file: "synthetic")
        #expect(lt == 1)
        #expect(frames.map(\.captured) == Self.sampleFrames)
        #expect(frames.map(\.number) == [1, 2])
        #expect(frames.map(\.etherType) == [0x0806, 0x0800])
        #expect(frames.map(\.linkHeaderLength) == [14, 18])
        #expect(frames.map(\.originalLength) == Self.sampleFrames.map(\.count))
    }

    @Test func stripsLinuxCookedV2() throws {
        // SLL2: protocol, reserved, ifindex, hatype 1, pkttype 4 (outgoing), halen 6, address + 2 bytes of padding.
        let sll2: [UInt8] = [0x86, 0xDD, 0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0]
        let (lt, frames) = try PcapReader.parse(PcapReader.write(linkType: 276, records: [sll2 + [0x60, 0, 0, 0]], bigEndian: false),
                                                file: "synthetic")
        #expect(lt == 276)
        let f = try #require(frames.first)
        #expect(f.etherType == 0x86DD)
        #expect(f.linkHeaderLength == 20)
        #expect(Array(f.network) == [0x60, 0, 0, 0])
        #expect(f.captured.count == 24)
    }

    @Test func rejectsBadInput() {
        let good = PcapReader.write(linkType: 1, records: Self.sampleFrames, bigEndian: false)
        #expect(throws: PcapError.badMagic(0x0403_0201)) { try PcapReader.parse([1, 2, 3, 4] + good[4...], file: "x") }
        #expect(throws: PcapError.truncatedGlobalHeader) { try PcapReader.parse(Array(good[0 ..< 23]), file: "x") }
        #expect(throws: PcapError.truncatedRecord(frame: 2)) { try PcapReader.parse(Array(good.dropLast()), file: "x") }
        #expect(throws: PcapError.unsupportedLinkType(105)) {
            try PcapReader.parse(PcapReader.write(linkType: 105, records: [], bigEndian: true), file: "x")
        }
        #expect(throws: PcapError.notAnEtherType(frame: 1, protocol: 0x0004)) {
            try PcapReader.parse(PcapReader.write(linkType: 276, records: [[0, 4] + Array(repeating: 0, count: 18)], bigEndian: false), file: "x")
        }
    }
}
