// TFTP through the gateway: datagrams to 10.0.2.2:69 reach the TFTP server (also under restrict=on), replies
// leave from port 69 with valid checksums, retransmission runs on poll(now:), refusals are counted; and DHCP
// carries siaddr, the file field and options 66/67 for network boot.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetServices
import VNetWire

final class GatewayMemoryFiles: TFTPFileSource {
    var files: [String: [UInt8]]
    var open: [Int32: [UInt8]] = [:]
    init(_ files: [String: [UInt8]]) { self.files = files }
    func open(_ path: String) -> TFTPOpenResult {
        guard let f = files[path] else { return .notFound }
        let h = Int32(open.count + 10)
        open[h] = f
        return .opened(handle: h, size: UInt64(f.count))
    }
    func read(_ handle: Int32, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard let f = open[handle] else { return nil }
        let start = min(Int(offset), f.count)
        let n = min(buffer.count, f.count - start)
        for i in 0 ..< n { buffer[i] = f[start + i] }
        return n
    }
    func close(_ handle: Int32) { open[handle] = nil }
}

private func readRequest(_ name: String, _ options: [(String, String)] = []) -> [UInt8] {
    var b: [UInt8] = [0, 1] + Array(name.utf8) + [0] + Array("octet".utf8) + [0]
    for (k, v) in options { b += Array(k.utf8) + [0] + Array(v.utf8) + [0] }
    return b
}

@Suite("Gateway TFTP")
struct TFTPGatewayTests {
    func harness(restricted: Bool = false, mtu: Int = 1500, files: [String: [UInt8]] = ["f": pattern(1500)]) -> GatewayHarness {
        let h = GatewayHarness { c in
            c.tftpRoot = "/unused"
            c.restricted = restricted
            c.mtu = mtu
        }
        h.gateway.enableTFTP(files: GatewayMemoryFiles(files))
        return h
    }

    func tftp(_ h: GatewayHarness, _ payload: [UInt8], srcPort: UInt16 = 40_000) -> [[UInt8]] {
        h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: srcPort, dstPort: 69, payload))
    }

    @Test("a whole file over the gateway, replies from port 69 to the client's port; also under restrict=on",
          arguments: [false, true])
    func transfer(restricted: Bool) throws {
        let h = harness(restricted: restricted)
        var data: [UInt8] = []
        var frames = tftp(h, readRequest("f"))
        var block: UInt16 = 1
        while true {
            try #require(frames.count == 1)
            let p = try expectUDP(frames[0], src: gatewayIP, srcPort: 69, dstPort: 40_000)
            #expect(p[0 ..< 4] == [0, 3, 0, UInt8(block)])
            data += p[4...]
            frames = tftp(h, [0, 4, 0, UInt8(block)])
            if p.count < 4 + 512 { break }
            block += 1
        }
        #expect(frames.isEmpty)
        #expect(data == pattern(1500))
        #expect(h.counters[.tftpTransfersStarted] == 1)
        #expect(h.counters[.tftpTransfersCompleted] == 1)
        #expect(h.counters[.tftpBlocksSent] == 3)
        #expect(h.host.opens.isEmpty, "TFTP must not be NAT'd")
        #expect(h.gateway.tftpTransferCount == 0)
    }

    @Test("blksize is clamped so DATA fits the MTU unfragmented")
    func smallMTU() throws {
        let h = harness(mtu: 576)
        let oack = tftp(h, readRequest("f", [("blksize", "1468")]))
        try #require(oack.count == 1)
        let o = try expectUDP(oack[0], src: gatewayIP, srcPort: 69, dstPort: 40_000)
        #expect(o == [0, 6] + Array("blksize".utf8) + [0] + Array("544".utf8) + [0])
        let data = tftp(h, [0, 4, 0, 0])
        try #require(data.count == 1)
        let d = try expectUDP(data[0], src: gatewayIP, srcPort: 69, dstPort: 40_000)
        #expect(d.count == 4 + 544)
        #expect(data[0].count <= 14 + 576)
    }

    @Test("an unanswered block is resent by poll after the timeout, then the transfer is given up")
    func retransmitOnPoll() throws {
        let h = harness()
        let first = tftp(h, readRequest("f"))
        try #require(first.count == 1)
        #expect(h.gateway.nextDeadline <= h.now + .seconds(1))
        for _ in 0 ..< 5 {
            h.advance(.seconds(1))
            h.poll()
            let again = h.drain()
            try #require(again.count == 1)
            #expect(try expectUDP(again[0], src: gatewayIP, srcPort: 69, dstPort: 40_000)
                == (try expectUDP(first[0], src: gatewayIP, srcPort: 69, dstPort: 40_000)))
        }
        h.advance(.seconds(1))
        h.poll()
        #expect(h.drain().isEmpty)
        #expect(h.counters[.tftpRetransmits] == 5)
        #expect(h.counters[.tftpTimedOut] == 1)
        #expect(h.gateway.tftpTransferCount == 0)
    }

    @Test("refusals get an ERROR packet and are counted", arguments: [
        (readRequest("../etc/passwd"), UInt16(2), DropReason.tftpPathRefused),
        (readRequest("/etc/passwd"), 2, .tftpPathRefused),
        (readRequest("nope"), 1, .tftpRefused),
        ([0, 2] + Array("f".utf8) + [0] + Array("octet".utf8) + [0], 2, .tftpRefused),
        ([0, 1, 0x66, 0x00, 0x6F], 4, .tftpMalformed),
        ([0, 1], 4, .tftpMalformed),
        (readRequest("f", [("blksize", "7")]), 8, .tftpRefused),
    ])
    func refusals(request: [UInt8], code: UInt16, reason: DropReason) throws {
        let h = harness()
        let before = h.counters
        h.send(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_000, dstPort: 69, request))
        let frames = h.drain()
        try #require(frames.count == 1)
        let p = try expectUDP(frames[0], src: gatewayIP, srcPort: 69, dstPort: 40_000)
        #expect(p[0 ..< 4] == [0, 5, UInt8(code >> 8), UInt8(code & 0xFF)])
        #expect(p.last == 0)
        #expect(dropDelta(before, h.counters) == [reason: 1])
        #expect(h.counters[.tftpErrorsSent] == 1)
    }

    @Test("an ACK for no transfer is dropped and counted, without a reply")
    func strayAck() {
        let h = harness()
        h.expectDrop(.tftpUnknownTransfer, FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 69, [0, 4, 0, 1]))
    }

    @Test("without tftp=, port 69 on the gateway is NAT'd to host loopback like any UDP port")
    func disabled() throws {
        let h = GatewayHarness()
        #expect(h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 69, readRequest("f"))).isEmpty)
        let o = try h.lastOpen()
        #expect(o.destination == .loopback && o.port == 69)
    }

    @Test("bootfile= puts siaddr, the file field and option 67 in DHCP replies; tftp-server-name= option 66")
    func dhcpBootOptions() throws {
        let h = GatewayHarness { c in
            c.bootfile = "boot.ipxe"
            c.tftpServerName = "tftp.example"
        }
        let frames = h.exchange(FrameBuilder.dhcpFrame(.discover))
        try #require(frames.count == 1)
        let (m, o) = try expectDHCP(frames[0], dst: guestIP)
        #expect(m.serverAddress == gatewayIP)
        let payload = try expectUDP(frames[0], src: gatewayIP, srcPort: 67, dstPort: 68)
        #expect(Array(payload[108 ..< 108 + 10]) == Array("boot.ipxe".utf8) + [0])
        #expect(o[67] == Array("boot.ipxe".utf8))
        #expect(o[66] == Array("tftp.example".utf8))
    }

    @Test("without bootfile= siaddr stays 0.0.0.0 and there are no boot options")
    func dhcpNoBoot() throws {
        let h = GatewayHarness()
        let frames = h.exchange(FrameBuilder.dhcpFrame(.discover))
        let (m, o) = try expectDHCP(try #require(frames.first), dst: guestIP)
        #expect(m.serverAddress == .any)
        #expect(o[66] == nil && o[67] == nil)
    }
}
