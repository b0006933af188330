// VXLAN header (RFC 7348 §5): the bytes as the Linux vxlan device sends them, the checks on receipt, and the
// flow hash's stability and bounds.

import Testing
@testable import VNetWire

@Suite struct VXLANTests {
    // A header as Linux sends it for VNI 42 (tshark: "Flags: 0x0800, VXLAN Network ID (VNI)", "VNI: 42").
    @Test func parsesLinuxHeader() throws {
        let bytes: [UInt8] = [0x08, 0, 0, 0, 0, 0, 42, 0]
        let h = try bytes.withUnsafeBytes { try VXLANHeader.parse($0) }
        #expect(h.vni == 42)
    }

    @Test func emitMirrorsParseAndZeroesReserved() throws {
        var out = [UInt8](repeating: 0xFF, count: 8)
        let n = out.withUnsafeMutableBytes { VXLANHeader(vni: 0xABCDEF).emit(into: $0) }
        #expect(n == 8)
        #expect(out == [0x08, 0, 0, 0, 0xAB, 0xCD, 0xEF, 0])
        let back = try out.withUnsafeBytes { try VXLANHeader.parse($0) }
        #expect(back.vni == 0xABCDEF)
    }

    @Test func vniIsTwentyFourBits() {
        #expect(VXLANHeader(vni: 0x1FF_FFFF).vni == 0xFF_FFFF)
    }

    // Reserved bits and the other flag bits are ignored on receipt (§5).
    @Test func ignoresReservedBitsOnReceipt() throws {
        let bytes: [UInt8] = [0xFF, 0xAA, 0xBB, 0xCC, 0x00, 0x10, 0x01, 0xDD, 0x99]
        let h = try bytes.withUnsafeBytes { try VXLANHeader.parse($0) }
        #expect(h.vni == 0x1001)
    }

    @Test func rejectsShortAndWrongFlags() {
        for n in 0 ..< 8 {
            let bytes = [UInt8](repeating: 0x08, count: n)
            #expect(throws: VXLANHeader.ParseError.short) { try bytes.withUnsafeBytes { try VXLANHeader.parse($0) } }
        }
        let noI: [UInt8] = [0x00, 0, 0, 0, 0, 0, 1, 0]
        #expect(throws: VXLANHeader.ParseError.badFlags) { try noI.withUnsafeBytes { try VXLANHeader.parse($0) } }
        let gpe: [UInt8] = [0x04, 0, 0, 0, 0, 0, 1, 0]
        #expect(throws: VXLANHeader.ParseError.badFlags) { try gpe.withUnsafeBytes { try VXLANHeader.parse($0) } }
    }

    static func frame(type: UInt16, payload: [UInt8]) -> [UInt8] {
        [0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2, UInt8(type >> 8), UInt8(type & 0xFF)] + payload
    }

    static func ipv4(src: UInt8, sport: UInt16, fragmentOffset: UInt16 = 0) -> [UInt8] {
        var ip: [UInt8] = [0x45, 0, 0, 40, 0, 1, UInt8(fragmentOffset >> 8), UInt8(fragmentOffset & 0xFF), 64, 6, 0, 0,
                           10, 0, 2, src, 10, 0, 2, 2]
        ip += [UInt8(sport >> 8), UInt8(sport & 0xFF), 0, 80] + [UInt8](repeating: 0, count: 16)
        return ip
    }

    @Test func taggedInnerFramesAreRecognised() {
        for t: UInt16 in [0x8100, 0x88A8, 0x9100] {
            #expect(Self.frame(type: t, payload: [0, 1, 8, 0]).withUnsafeBytes { VXLANHeader.isTaggedInner($0) })
        }
        #expect(!Self.frame(type: 0x0800, payload: []).withUnsafeBytes { VXLANHeader.isTaggedInner($0) })
        #expect(![UInt8](repeating: 0x81, count: 13).withUnsafeBytes { VXLANHeader.isTaggedInner($0) })
    }

    @Test func flowHashFollowsTheFlow() {
        let a = Self.frame(type: 0x0800, payload: Self.ipv4(src: 15, sport: 40000))
        let b = Self.frame(type: 0x0800, payload: Self.ipv4(src: 15, sport: 40001))
        let c = Self.frame(type: 0x0800, payload: Self.ipv4(src: 16, sport: 40000))
        var a2 = a
        a2[a2.count - 1] = 0x77   // payload bytes beyond the ports do not count
        let ha = a.withUnsafeBytes { VXLANHeader.flowHash($0) }
        #expect(ha == a2.withUnsafeBytes { VXLANHeader.flowHash($0) })
        #expect(ha != b.withUnsafeBytes { VXLANHeader.flowHash($0) })
        #expect(ha != c.withUnsafeBytes { VXLANHeader.flowHash($0) })
    }

    // Later fragments carry no ports: their hash must not read payload as ports.
    @Test func flowHashSkipsPortsOfFragments() {
        let f1 = Self.frame(type: 0x0800, payload: Self.ipv4(src: 15, sport: 1, fragmentOffset: 0x0010))
        let f2 = Self.frame(type: 0x0800, payload: Self.ipv4(src: 15, sport: 2, fragmentOffset: 0x0010))
        #expect(f1.withUnsafeBytes { VXLANHeader.flowHash($0) } == f2.withUnsafeBytes { VXLANHeader.flowHash($0) })
    }

    // Truncated frames of every length and hostile IHL values: no read beyond the buffer (ASan in the fuzzer;
    // here, simply no trap).
    @Test func flowHashOnTruncatedFrames() {
        var full = Self.frame(type: 0x0800, payload: Self.ipv4(src: 15, sport: 1))
        full[14] = 0x4F   // IHL 60 bytes, beyond the frame
        for n in 0 ... full.count { _ = Array(full[0 ..< n]).withUnsafeBytes { VXLANHeader.flowHash($0) } }
        let six = Self.frame(type: 0x86DD, payload: [UInt8](repeating: 0x60, count: 44))
        for n in 0 ... six.count { _ = Array(six[0 ..< n]).withUnsafeBytes { VXLANHeader.flowHash($0) } }
    }
}
