// The IPv6 cases of docs/hostile-input.md (3, 4's IPv6 half, 9's DHCPv6 CLIENTID, 14, 18's all-nodes address),
// with the four checks of BadInputTests.swift: the RFC behaviour, a named drop, a healthy flow beside the hostile
// input, and no byte to the guest that vnet did not produce (canary bytes in padding and hostile payloads).

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("BAD-INPUTS regression, IPv6")
struct IPv6BadInputTests {
    /// A rig whose first IPv6 exchange (and its unsolicited RA) is already done.
    func rig(_ configure: (inout GatewayConfig) -> Void = { _ in }) throws -> BadInputRig {
        let r = try BadInputRig(configure)
        #expect(r.expectServed(V6.neighborSolicitation(target: gatewayIP6)).count == 2)
        return r
    }

    func fragment(dst: IPv6Address = externalIP6, next: UInt8 = 17, _ offset: Int, _ bytes: ArraySlice<UInt8>, more: Bool, id: UInt32) -> [UInt8] {
        let fo = UInt16(offset) | (more ? 1 : 0)
        let header: [UInt8] = [next, 0, UInt8(fo >> 8), UInt8(fo & 0xFF), UInt8(id >> 24), UInt8((id >> 16) & 0xFF), UInt8((id >> 8) & 0xFF), UInt8(id & 0xFF)]
        return V6.frame(V6.ipv6(dst: dst, next: IPv6Header.fragment, header + bytes))
    }

    @Test("BAD-INPUTS 3: IPv6 payload length past the bytes present; echo replies carry nothing past the payload")
    func case03_payloadLength() throws {
        let r = try rig()
        let echo = V6.icmp6(src: guestIP6, dst: gatewayIP6, type: ICMPv6Header.echoRequest, rest: 0x0009_0001, pattern(24))
        for extra in [1, 8, 100, 0xFFFF - echo.count] {
            r.expectDrop(.ipv6Malformed, V6.frame(V6.ipv6(dst: gatewayIP6, next: 58, echo, payloadLength: echo.count + extra)), "\(extra) bytes past")
        }
        try r.healthy()
        for length in [100, 200, 1514] {
            let out = r.expectServed(V6.frame(V6.ipv6(dst: gatewayIP6, next: 58, echo)).canaryPadded(to: length))
            try #require(out.count == 1)
            let reply = try expectIPv6(out[0], src: gatewayIP6, dst: guestIP6, next: 58)
            #expect(reply.payload.count == echo.count && Array(reply.payload[8...]) == pattern(24))
        }
        try r.finish()
    }

    @Test("BAD-INPUTS 4 (IPv6): UDP ending inside its header, a UDP length that disagrees with the payload")
    func case04_udp() throws {
        let r = try rig()
        let good = V6.udp6(src: guestIP6, dst: externalIP6, srcPort: 4000, dstPort: 7, pattern(16))
        for n in 0 ..< 8 { r.expectDrop(.udpMalformed, V6.frame(V6.ipv6(dst: externalIP6, next: 17, Array(good[..<n]))).canaryPadded(to: 80), "cut at \(n)") }
        for length in [0, 7, good.count + 1, 0xFFFF] {
            var d = good
            d[4] = UInt8(length >> 8); d[5] = UInt8(length & 0xFF)
            r.expectDrop(.udpMalformed, V6.frame(V6.ipv6(dst: externalIP6, next: 17, d)), "UDP length \(length)")
        }
        // A UDP length shorter than the payload is honoured (the rest ignored) and the checksum then fails.
        var short = good
        short[5] = UInt8(good.count - 4)
        r.expectDrop(.udpBadChecksum, V6.frame(V6.ipv6(dst: externalIP6, next: 17, short)))
        try r.finish()
    }

    @Test("BAD-INPUTS 9 (DHCPv6): a CLIENTID larger than the reply space, at a small MTU")
    func case09_dhcpv6ClientID() throws {
        let r = try rig { $0.mtu = 1280 }
        func request(_ clientID: [UInt8]) -> [UInt8] {
            let n = clientID.count
            let msg: [UInt8] = [DHCPv6Message.informationRequest, 1, 2, 3, 0, 1, UInt8(n >> 8), UInt8(n & 0xFF)] + clientID
            return V6.frame(to: IPv6Address.allDHCPServers.multicastMAC,
                            V6.ipv6(src: guestLinkLocal, dst: .allDHCPServers, next: 17,
                                    V6.udp6(src: guestLinkLocal, dst: .allDHCPServers, srcPort: 546, dstPort: 547, msg)))
        }
        for size in [1191, 1200, 1230] { r.expectDrop(.dhcpv6Malformed, request(canaryBytes(size)), "CLIENTID of \(size) bytes") }
        try r.healthy()
        // The largest that fits (1,190 bytes: the reply then fills MTU 1280 exactly) is echoed whole.
        let out = r.expectServed(request(pattern(1190)))
        try #require(out.count == 1)
        #expect(out[0].count - 14 == 1280)
        try r.healthy()
        expectNoForeignBytes(r.received)
    }

    @Test("BAD-INPUTS 14: IPv6 fragments: oversized, many small, overlaps, duplicates, out of order, contained, past 65535, never complete")
    func case14_fragments() throws {
        let r = try rig { $0.fragmentSlots = 4 }
        let udp = V6.udp6(src: guestIP6, dst: externalIP6, srcPort: 4001, dstPort: 9, pattern(200))
        // Out of order, with a duplicate and a fragment contained in another (same bytes): reassembled once.
        r.expectServed(fragment(96, udp[96...], more: false, id: 1))
        r.expectServed(fragment(32, udp[32 ..< 96], more: true, id: 1))
        r.expectServed(fragment(32, udp[32 ..< 96], more: true, id: 1))
        r.expectServed(fragment(40, udp[40 ..< 64], more: true, id: 1))
        r.expectServed(fragment(0, udp[0 ..< 32], more: true, id: 1))
        #expect(r.counters[.datagramsReassembled] == 1)
        #expect(r.host.sent.last?.bytes == pattern(200))
        try r.healthy()
        // Many small fragments (8 bytes each) still reassemble.
        let small = V6.udp6(src: guestIP6, dst: externalIP6, srcPort: 4002, dstPort: 9, pattern(120))
        for off in stride(from: 0, to: small.count, by: 8) {
            r.expectServed(fragment(off, small[off ..< min(off + 8, small.count)], more: off + 8 < small.count, id: 2))
        }
        #expect(r.counters[.datagramsReassembled] == 2 && r.host.sent.last?.bytes == pattern(120))
        // An overlap with other bytes drops the datagram.
        r.expectServed(fragment(0, udp[0 ..< 64], more: true, id: 3))
        var other = Array(udp[32 ..< 96])
        other[0] ^= 0x5A
        r.expectDrop(.ipv6FragmentOverlap, fragment(32, other[...], more: true, id: 3))
        // Offset + length past 65535, and an oversized first fragment that claims more than a datagram holds.
        r.expectDrop(.ipv6FragmentInvalid, fragment(65528, udp[0 ..< 16], more: false, id: 4))
        r.expectDrop(.ipv6FragmentInvalid, fragment(65000, ArraySlice(canaryBytes(1000)), more: true, id: 5))
        try r.healthy()
        // Never-completing fragments: at most `fragmentSlots` are kept, the oldest evicted, the rest time out.
        for id: UInt32 in 10 ..< 20 { r.send(fragment(0, ArraySlice(canaryBytes(64)), more: true, id: id)) }
        #expect(r.counters[.ipv6FragmentTimeout] >= 6)
        try r.advance(.seconds(60))
        #expect(r.counters[.ipv4FragmentTimeout] + r.counters[.ipv6FragmentTimeout] >= 10)
        try r.finish()
    }

    @Test("BAD-INPUTS 18 (IPv6): traffic to all-nodes never reaches host loopback; echo to it is answered from fe80::2")
    func case18_allNodes() throws {
        let r = try rig()
        r.expectDrop(.martianDestination, V6.frame(to: IPv6Address.allNodes.multicastMAC,
                                                   V6.ipv6(dst: .allNodes, next: 17, V6.udp6(src: guestIP6, dst: .allNodes, srcPort: 1000, dstPort: 80, [1]))))
        r.expectDrop(.martianSource, V6.frame(to: IPv6Address.allNodes.multicastMAC,
                                              V6.ipv6(dst: .allNodes, next: 6, V6.tcp6(dst: .allNodes, srcPort: 1000, dstPort: 80, seq: 1, ack: 0, flags: .syn))))
        let echo = V6.icmp6(src: guestIP6, dst: .allNodes, type: ICMPv6Header.echoRequest, rest: 0x0001_0001, [7])
        let out = r.expectServed(V6.frame(to: IPv6Address.allNodes.multicastMAC, V6.ipv6(dst: .allNodes, next: 58, echo)))
        try #require(out.count == 1)
        _ = try expectIPv6(out[0], src: gatewayLinkLocal, dst: guestIP6, next: 58)
        #expect(r.host.opens.count == 1)   // the healthy flow's socket only
        try r.finish()
    }
}
