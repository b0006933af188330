// Software segmentation and checksum completion: what a port without offload gets instead of a super-segment.

import Testing
import VNetWire

/// An Ethernet + IPv4/IPv6 + TCP frame carrying `payload`, with a checksum left partial (pseudo-header sum
/// only, as the kernel hands it over with NEEDS_CSUM) or complete.
func tcpFrame(ipv6: Bool, payload: [UInt8], sequence: UInt32 = 1000, flags: UInt8 = 0x18 | 0x01, identification: UInt16 = 100,
              partial: Bool = true) -> [UInt8] {
    let ipLength = ipv6 ? 40 : 20
    var f = [UInt8](repeating: 0, count: 14 + ipLength + 20 + payload.count)
    f.withUnsafeMutableBytes { b in
        for i in 0 ..< 6 { b[i] = 0x52; b[6 + i] = 0x54 }
        b.put16(12, ipv6 ? 0x86DD : 0x0800)
        if ipv6 {
            b[14] = 0x60
            b.put16(18, UInt16(20 + payload.count))
            b[20] = 6
            b[21] = 64
            for i in 0 ..< 16 { b[22 + i] = 0xFE; b[38 + i] = UInt8(i) }
        } else {
            b[14] = 0x45
            b.put16(16, UInt16(20 + 20 + payload.count))
            b.put16(18, identification)
            b.put16(20, 0x4000)
            b[22] = 64
            b[23] = 6
            b.put16(26, 0x0A00); b.put16(28, 0x020F)
            b.put16(30, 0x0A00); b.put16(32, 0x0202)
            b.put16(24, InternetChecksum.of(UnsafeRawBufferPointer(b.slice(14 ..< 34))))
        }
        let t = 14 + ipLength
        b.put16(t, 40000); b.put16(t + 2, 5201)
        b.put16(t + 4, UInt16(sequence >> 16)); b.put16(t + 6, UInt16(truncatingIfNeeded: sequence))
        b.put16(t + 8, 0); b.put16(t + 10, 7)
        b[t + 12] = 0x50
        b[t + 13] = flags
        b.put16(t + 14, 65535)
        for (i, v) in payload.enumerated() { b[t + 20 + i] = v }
        let pseudo = pseudoSum(UnsafeRawBufferPointer(b), ipv6: ipv6, l4Length: 20 + payload.count)
        if partial {
            b.put16(t + 16, InternetChecksum.partial(pseudo))
        } else {
            b.put16(t + 16, InternetChecksum.finish(InternetChecksum.add(UnsafeRawBufferPointer(b.slice(t ..< b.count)), to: pseudo)))
        }
    }
    return f
}

func pseudoSum(_ frame: UnsafeRawBufferPointer, ipv6: Bool, l4Length: Int) -> UInt64 {
    let addresses = ipv6 ? frame.slice(22 ..< 54) : frame.slice(26 ..< 34)
    return InternetChecksum.add(addresses) &+ 6 &+ UInt64(l4Length)
}

/// Whether a wire frame's IPv4 header checksum and TCP checksum both verify.
func checksumsVerify(_ frame: [UInt8], ipv6: Bool) -> Bool {
    frame.withUnsafeBytes { b in
        let ipLength = ipv6 ? 40 : 20
        if !ipv6 && InternetChecksum.of(b.slice(14 ..< 34)) != 0 { return false }
        let l4 = b.count - 14 - ipLength
        return InternetChecksum.finish(InternetChecksum.add(b.slice((14 + ipLength) ..< b.count), to: pseudoSum(b, ipv6: ipv6, l4Length: l4))) == 0
    }
}

@Suite("Software offload")
struct SoftwareOffloadTests {
    @Test("a super-segment becomes MSS-sized wire frames: lengths, sequence, IPv4 id, flags and checksums", arguments: [false, true])
    func segments(ipv6: Bool) throws {
        let payload = (0 ..< 5000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let frame = tcpFrame(ipv6: ipv6, payload: payload, flags: 0x80 | 0x18 | 0x01)   // CWR, ACK+PSH, FIN
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_000, alignment: 16)
        defer { scratch.deallocate() }
        var out: [[UInt8]] = []
        let n = frame.withUnsafeBytes { SoftwareOffload.segment($0, segmentSize: 1460, scratch: scratch) { out.append(Array($0)) } }
        #expect(n == 4)
        #expect(out.map(\.count) == [1460, 1460, 1460, 620].map { $0 + 14 + (ipv6 ? 40 : 20) + 20 })
        let ipLength = ipv6 ? 40 : 20
        var joined: [UInt8] = []
        for (i, s) in out.enumerated() {
            #expect(checksumsVerify(s, ipv6: ipv6), "segment \(i)")
            let t = 14 + ipLength
            let seq = UInt32(s[t + 4]) << 24 | UInt32(s[t + 5]) << 16 | UInt32(s[t + 6]) << 8 | UInt32(s[t + 7])
            #expect(seq == 1000 + UInt32(i * 1460))
            let flags = s[t + 13]
            #expect((flags & 0x01 != 0) == (i == 3), "FIN on the last segment only")
            #expect((flags & 0x08 != 0) == (i == 3), "PSH on the last segment only")
            #expect((flags & 0x80 != 0) == (i == 0), "CWR on the first segment only")
            #expect(flags & 0x10 != 0, "ACK on every segment")
            if ipv6 {
                #expect(Int(s[18]) << 8 | Int(s[19]) == s.count - 54)
            } else {
                #expect(Int(s[16]) << 8 | Int(s[17]) == s.count - 14)
                #expect(Int(s[18]) << 8 | Int(s[19]) == 100 + i)
            }
            joined += s[(t + 20)...]
        }
        #expect(joined == payload)
    }

    @Test("a super-segment that fits one segment is one wire frame, its partial checksum finished")
    func singleSegment() {
        let frame = tcpFrame(ipv6: false, payload: Array(repeating: 9, count: 100))
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_000, alignment: 16)
        defer { scratch.deallocate() }
        var out: [[UInt8]] = []
        let n = frame.withUnsafeBytes { SoftwareOffload.segment($0, segmentSize: 1460, scratch: scratch) { out.append(Array($0)) } }
        #expect(n == 1 && out.count == 1 && checksumsVerify(out[0], ipv6: false))
    }

    @Test("a partial checksum is completed over the datagram, not over Ethernet padding", arguments: [false, true])
    func completesChecksum(ipv6: Bool) {
        var frame = tcpFrame(ipv6: ipv6, payload: Array(repeating: 0x55, count: 3))
        let datagram = frame.count
        frame += [0xEE, 0xEE, 0xEE]   // padding a short frame may carry
        let ipLength = ipv6 ? 40 : 20
        let header = VirtioNetHeader(flags: .needsChecksum, checksumStart: UInt16(14 + ipLength), checksumOffset: 16)
        let ok = frame.withUnsafeMutableBytes { SoftwareOffload.completeChecksum($0, header: header) }
        #expect(ok)
        #expect(checksumsVerify(Array(frame[..<datagram]), ipv6: ipv6))
    }

    @Test("offsets outside the frame are refused, never read")
    func badChecksumOffsets() {
        var frame = tcpFrame(ipv6: false, payload: [1, 2, 3])
        for (start, offset) in [(UInt16(0), UInt16(16)), (UInt16(34), UInt16(60_000)), (UInt16(60_000), UInt16(0)), (UInt16(frame.count - 1), UInt16(0))] {
            let h = VirtioNetHeader(flags: .needsChecksum, checksumStart: start, checksumOffset: offset)
            #expect(!frame.withUnsafeMutableBytes { SoftwareOffload.completeChecksum($0, header: h) })
        }
    }

    @Test("every truncation and every lying length field is refused or segmented within bounds", arguments: [false, true])
    func hostileSuperSegments(ipv6: Bool) {
        let frame = tcpFrame(ipv6: ipv6, payload: Array(repeating: 0xAB, count: 3000))
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_000, alignment: 16)
        defer { scratch.deallocate() }
        for length in 0 ..< frame.count {
            let cut = Array(frame[..<length])
            let n = cut.withUnsafeBytes { SoftwareOffload.segment($0, segmentSize: 1460, scratch: scratch) { #expect($0.count <= length) } }
            #expect(n == nil, "a truncated frame (\(length) bytes) has an IP length beyond it")
        }
        // IP length fields and TCP data offsets of every value: never a read past the frame.
        for field in ipv6 ? [18, 19, 66] : [16, 17, 46] {
            for v in [0, 1, 0x0F, 0x50, 0xF0, 0xFF] as [UInt8] {
                var bad = frame
                bad[field] = v
                _ = bad.withUnsafeBytes { SoftwareOffload.segment($0, segmentSize: 1460, scratch: scratch) { #expect($0.count <= bad.count) } }
            }
        }
        #expect(frame.withUnsafeBytes { SoftwareOffload.segment($0, segmentSize: 0, scratch: scratch) { _ in } } == nil)
        let small = UnsafeMutableRawBufferPointer.allocate(byteCount: 100, alignment: 16)
        defer { small.deallocate() }
        #expect(frame.withUnsafeBytes { SoftwareOffload.segment($0, segmentSize: 1460, scratch: small) { _ in } } == nil)
    }
}
