// BAD-INPUTS 8, 9 (the TFTP half) and 10 (TFTP file-not-found) through the real input path, with the BadInputRig's
// checks: the RFC answer (a TFTP ERROR), the drop counted under a named reason, the healthy flow working
// throughout, and no foreign byte to the guest (each hostile frame carries canary bytes past its IP length).

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetServices
import VNetWire

private func tftpRig(mtu: Int = 1500) throws -> BadInputRig {
    let r = try BadInputRig { c in
        c.tftpRoot = "/unused"
        c.mtu = mtu
    }
    r.gateway.enableTFTP(files: GatewayMemoryFiles(["f": pattern(3000), "dir/f": pattern(10)]))
    return r
}

private func tftpFrame(_ payload: [UInt8], srcPort: UInt16 = 40_000) -> [UInt8] {
    let f = FrameBuilder.udpFrame(dst: gatewayIP, srcPort: srcPort, dstPort: 69, payload)
    return f.canaryPadded(to: f.count + 16)
}

private func request(_ name: [UInt8], options: [(String, String)] = []) -> [UInt8] {
    var b: [UInt8] = [0, 1] + name + [0] + Array("octet".utf8) + [0]
    for (k, v) in options { b += Array(k.utf8) + [0] + Array(v.utf8) + [0] }
    return b
}

/// The ERROR code in the one reply, checked from port 69.
private func errorCode(_ frames: [[UInt8]], sourceLocation: SourceLocation = #_sourceLocation) throws -> UInt16 {
    try #require(frames.count == 1, sourceLocation: sourceLocation)
    let p = try expectUDP(frames[0], src: gatewayIP, srcPort: 69, dstPort: 40_000, sourceLocation: sourceLocation)
    try #require(p.count >= 5 && p[0] == 0 && p[1] == 5 && p.last == 0, "\(p)", sourceLocation: sourceLocation)
    return UInt16(p[2]) << 8 | UInt16(p[3])
}

@Suite("BAD-INPUTS regression: TFTP")
struct TFTPBadInputTests {
    @Test("BAD-INPUTS 8: TFTP shorter than its opcode, requests without NUL terminators, traversal names, trailing /")
    func case08_tftpRequests() throws {
        let r = try tftpRig()
        for p: [UInt8] in [[], [0]] {
            #expect(try errorCode(r.expectDrop(.tftpMalformed, tftpFrame(p), reply: true)) == 4)
        }
        let full = request(Array("f".utf8))
        for n in 2 ..< full.count - 1 {
            #expect(try errorCode(r.expectDrop(.tftpMalformed, tftpFrame(Array(full[..<n])), reply: true)) == 4, "cut at \(n)")
        }
        #expect(try errorCode(r.expectDrop(.tftpMalformed, tftpFrame([0, 1] + Array("f".utf8)), reply: true)) == 4)
        for name in ["../x", "a/../../b", "..\\x", "/etc/passwd", "dir/.."] {
            #expect(try errorCode(r.expectDrop(.tftpPathRefused, tftpFrame(request(Array(name.utf8))), reply: true)) == 2, "\(name)")
        }
        // A trailing slash names a directory: not a file here (the host source refuses directories as well).
        #expect(try errorCode(r.expectDrop(.tftpRefused, tftpFrame(request(Array("dir/".utf8))), reply: true)) == 1)
        // A good request still works next to all that.
        let ok = r.expectServed(tftpFrame(request(Array("dir/f".utf8))))
        try #require(ok.count == 1)
        #expect(try expectUDP(ok[0], src: gatewayIP, srcPort: 69, dstPort: 40_000) == [0, 3, 0, 1] + pattern(10))
        try r.finish()
    }

    @Test("BAD-INPUTS 9: TFTP blksize of 0, huge or non-numeric, at a small MTU")
    func case09_blksize() throws {
        let r = try tftpRig(mtu: 576)
        for v in ["0", "7", "abc", "", "-5", "99999999999999999999999"] {
            #expect(try errorCode(r.expectDrop(.tftpRefused, tftpFrame(request(Array("f".utf8), options: [("blksize", v)])), reply: true)) == 8,
                    "blksize \(v)")
        }
        // Huge but numeric: clamped to what fits the MTU (576 - 20 - 8 - 4).
        let oack = r.expectServed(tftpFrame(request(Array("f".utf8), options: [("blksize", "65464")])))
        try #require(oack.count == 1)
        #expect(try expectUDP(oack[0], src: gatewayIP, srcPort: 69, dstPort: 40_000) == [0, 6] + Array("blksize".utf8) + [0] + Array("544".utf8) + [0])
        let data = r.expectServed(tftpFrame([0, 4, 0, 0]))
        try #require(data.count == 1)
        #expect(data[0].count == 14 + 20 + 8 + 4 + 544)
        try r.finish()
    }

    @Test("BAD-INPUTS 10: TFTP file-not-found answers from our own buffer only")
    func case10_tftpNotFound() throws {
        let r = try tftpRig()
        for _ in 0 ..< 3 {
            #expect(try errorCode(r.expectDrop(.tftpRefused, tftpFrame(request(Array("missing".utf8) + canaryBytes(0))), reply: true)) == 1)
        }
        #expect(r.gateway.tftpTransferCount == 0)
        try r.finish()
    }
}
