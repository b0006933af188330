// ICMP echo to the gateway's own addresses, answered by the gateway itself.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway ICMP echo (local)")
struct ICMPLocalTests {
    @Test("echo to a gateway address is answered with the same identifier, sequence and data", arguments: [gatewayIP, dnsIP])
    func echoReply(target: IPv4Address) throws {
        let h = GatewayHarness()
        let data = pattern(56, seed: 9)
        let frames = h.exchange(FrameBuilder.echoRequestFrame(dst: target, id: 0x1234, seq: 7, data))
        try #require(frames.count == 1)
        let (icmp, body) = try expectICMP(frames[0], src: target, type: ICMPv4Header.echoReply)
        #expect(icmp.identifier == 0x1234 && icmp.sequence == 7)
        #expect(body == data)
        #expect(h.counters[.icmpEchoLocal] == 1)
        #expect(h.host.opens.isEmpty)
    }

    @Test("with Ethernet padding after the IP total length, the reply carries exactly the IP payload",
          arguments: [0, 1, 4, 5])
    func paddingIsNotEchoed(dataLength: Int) throws {
        let h = GatewayHarness()
        dirty(h.gateway.toGuest)
        let data = pattern(dataLength, seed: 1)
        let frame = FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 0xBEEF, seq: 1, data).padded(to: 60, with: 0xEE)
        let frames = h.exchange(frame)
        try #require(frames.count == 1)
        let p = try expectIPv4(frames[0], src: gatewayIP, dst: guestIP, proto: .icmp)
        #expect(p.header.totalLength == 20 + 8 + dataLength)
        let (_, body) = try expectICMP(frames[0], src: gatewayIP, type: ICMPv4Header.echoReply)
        #expect(body == data)
        #expect(!frames[0].contains(0xEE), "padding echoed")
    }

    @Test("a bad ICMP checksum is dropped and counted")
    func badChecksum() {
        let h = GatewayHarness()
        var f = FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 1, seq: 1, pattern(8))
        f[36] ^= 0x01
        h.expectDrop(.icmpBadChecksum, f)
    }

    @Test("ICMP other than echo request is ignored", arguments: [ICMPv4Header.echoReply, 13, ICMPv4Header.destinationUnreachable])
    func otherTypes(type: UInt8) {
        let h = GatewayHarness()
        let f = FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: gatewayIP, proto: .icmp,
                                                                      FrameBuilder.icmp(type: type, rest: 0, pattern(28))))
        h.expectDrop(.icmpTypeIgnored, f)
    }

    @Test("echo request with a non-zero code is ignored")
    func nonZeroCode() {
        let h = GatewayHarness()
        let f = FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: gatewayIP, proto: .icmp,
                                                                      FrameBuilder.icmp(type: 8, code: 1, rest: 0x0001_0001, [])))
        h.expectDrop(.icmpTypeIgnored, f)
    }

    @Test("an echo shorter than the ICMP header is malformed")
    func truncated() {
        let h = GatewayHarness()
        let f = FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: gatewayIP, proto: .icmp, [8, 0, 0xF7, 0xFF]))
        h.expectDrop(.icmpMalformed, f.padded(to: 60))
    }

    @Test("a large echo within the MTU is answered whole")
    func largeEcho() throws {
        let h = GatewayHarness()
        let data = pattern(1472, seed: 4)
        let frames = h.exchange(FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 2, seq: 3, data))
        try #require(frames.count == 1)
        #expect(try expectICMP(frames[0], src: gatewayIP, type: 0).body == data)
    }
}
