// The pcap writer: classic header, one record per frame with its real length, snap length cut, batching.

import Foundation
import Testing
@testable import VNetRuntime

@Suite("pcap writer")
struct PcapWriterTests {
    func tempPath() -> String { NSTemporaryDirectory() + "vnet-pcap-\(UInt32.random(in: 0 ... .max)).pcap" }

    func le32(_ b: [UInt8], _ o: Int) -> UInt32 { UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24 }

    @Test("header is pcap 2.4, Ethernet; records hold captured and original lengths and the bytes")
    func records() throws {
        let path = tempPath()
        defer { unlink(path) }
        let w = try PcapWriter(path: path)
        let f1 = [UInt8](0 ..< 60), f2 = [UInt8](repeating: 0xAB, count: 1514)
        f1.withUnsafeBytes { w.record($0) }
        f2.withUnsafeBytes { w.record($0) }
        w.close()
        let b = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(b.count == 24 + 16 + 60 + 16 + 1514)
        #expect(le32(b, 0) == 0xA1B2_C3D4 && le32(b, 4) == 2 | 4 << 16 && le32(b, 16) == 65535 && le32(b, 20) == 1)
        #expect(le32(b, 24 + 8) == 60 && le32(b, 24 + 12) == 60)
        #expect(Array(b[40 ..< 100]) == f1)
        #expect(le32(b, 100 + 8) == 1514 && Array(b[116...]) == f2)
        #expect(w.packets == 2)
    }

    @Test("many frames (more than the buffer holds) all land, in order")
    func batching() throws {
        let path = tempPath()
        defer { unlink(path) }
        let w = try PcapWriter(path: path)
        for i in 0 ..< 3000 {
            var f = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 1000)
            f[0] = UInt8(i >> 8); f[1] = UInt8(i & 0xFF)
            f.withUnsafeBytes { w.record($0) }
        }
        w.close()
        let b = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(b.count == 24 + 3000 * (16 + 1000))
        var o = 24
        for i in 0 ..< 3000 {
            #expect(Int(b[o + 16]) << 8 | Int(b[o + 17]) == i)
            o += 16 + 1000
        }
    }

    @Test("rotation renames a full file to FILE.1 and starts a new one with its own header")
    func rotation() throws {
        let path = tempPath()
        defer { unlink(path); unlink(path + ".1") }
        let w = try PcapWriter(path: path, rotateBytes: 8192)
        let f = [UInt8](repeating: 1, count: 1000)
        for _ in 0 ..< 10 { f.withUnsafeBytes { w.record($0) }; w.flush() }
        w.close()
        #expect(w.rotations >= 1)
        let old = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path + ".1")))
        let new = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(le32(old, 0) == 0xA1B2_C3D4 && le32(new, 0) == 0xA1B2_C3D4)
        #expect((old.count - 24) % 1016 == 0 && (new.count - 24) % 1016 == 0)
    }
}
