// The gateway's IPv6: NDP, router advertisements, stateless DHCPv6, ICMPv6 echo, UDP/TCP/echo NAT to IPv6
// host sockets, fragments, and the IPv6 cases of docs/hostile-input.md (3, 4, 9, 14, 18).

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("IPv6 gateway")
struct IPv6GatewayTests {
    @Test("a neighbour solicitation for each gateway address gets a solicited router advertisement of the gateway MAC")
    func neighbourSolicitation() throws {
        let h = GatewayHarness()
        for target in [gatewayLinkLocal, gatewayIP6, dnsIP6] {
            let frames = withoutUnsolicitedRA(h.exchange(V6.neighborSolicitation(target: target)))
            let nas = try frames.map { try expectIPv6($0, src: target, dst: guestLinkLocal, next: 58) }
                .filter { $0.payload.first == ICMPv6Header.neighborAdvertisement }
            try #require(nas.count == 1)
            #expect(nas[0].header.hopLimit == 255)
            #expect(checksumValid6(nas[0], proto: 58))
            let na = try nas[0].payload.withUnsafeBytes { try NeighborAdvertisement.parse($0) }
            #expect(na.target == target && na.targetLinkLayer == gatewayMAC && na.solicited && na.router && na.override)
        }
        #expect(h.counters[.neighborAdvertisements] == 3)
    }

    @Test("NDP with a hop limit below 255, an option of length 0, or a target not ours is dropped and counted")
    func badNeighbourSolicitations() {
        let h = GatewayHarness()
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))   // the first valid frame also sends the first RA
        h.expectDrop(.ndpMalformed, V6.neighborSolicitation(target: gatewayIP6, hopLimit: 64))
        h.expectDrop(.ndpIgnored, V6.neighborSolicitation(target: IPv6Address("fec0::99")!))
        var zeroOption = V6.neighborSolicitation(target: gatewayIP6)
        // Option length byte (0 is invalid, RFC 4861 §4.6); the checksum is fixed up by rebuilding the message.
        let body = gatewayIP6.bytes + [1, 0, 0, 0, 0, 0, 0, 0]
        let dst = gatewayIP6.solicitedNode
        zeroOption = V6.frame(to: dst.multicastMAC, V6.ipv6(src: guestLinkLocal, dst: dst, next: 58, hopLimit: 255,
                                                             V6.icmp6(src: guestLinkLocal, dst: dst, type: ICMPv6Header.neighborSolicitation, body)))
        h.expectDrop(.ndpMalformed, zeroOption)
    }

    @Test("a router solicitation gets an RA with the /64, the MTU, RDNSS and the O flag, from fe80::2")
    func routerAdvertisement() throws {
        let h = GatewayHarness { $0.dnsSearch = ["example.test"] }
        let rs = V6.icmp6(src: guestLinkLocal, dst: .allRouters, type: ICMPv6Header.routerSolicitation, [])
        let frames = h.exchange(V6.frame(to: IPv6Address.allRouters.multicastMAC, V6.ipv6(src: guestLinkLocal, dst: .allRouters, next: 58, hopLimit: 255, rs)))
        // The first IPv6 frame also triggers an unsolicited RA to all nodes; the solicited one goes to the guest.
        let ras = try frames.map { try expectIPv6($0, src: gatewayLinkLocal, next: 58, toMAC: nil) }
        try #require(ras.count == 2)
        let ra = try #require(ras.first { $0.header.destination == guestLinkLocal })
        #expect(ra.header.hopLimit == 255 && checksumValid6(ra, proto: 58))
        let p = ra.payload
        #expect(p[0] == ICMPv6Header.routerAdvertisement && p[5] & 0x40 != 0)
        #expect(UInt16(p[6]) << 8 | UInt16(p[7]) == 1800)
        // Walk the options: SLLA, MTU, prefix, RDNSS, DNSSL.
        var i = 16
        var seen: [UInt8: [UInt8]] = [:]
        while i + 2 <= p.count {
            let len = Int(p[i + 1]) * 8
            try #require(len > 0 && i + len <= p.count)
            seen[p[i]] = Array(p[i ..< i + len])
            i += len
        }
        #expect(seen[1].map { Array($0[2 ..< 8]) } == gatewayMAC.bytesForTest)
        #expect(seen[5].map { UInt32($0[4]) << 24 | UInt32($0[5]) << 16 | UInt32($0[6]) << 8 | UInt32($0[7]) } == 1500)
        let prefix = try #require(seen[3])
        #expect(prefix[2] == 64 && prefix[3] == 0xC0 && Array(prefix[16 ..< 32]) == IPv6Address("fec0::")!.bytes)
        #expect(seen[25].map { Array($0[8 ..< 24]) } == dnsIP6.bytes)
        #expect(seen[31] != nil)
        #expect(h.counters[.routerAdvertisements] == 2)
    }

    @Test("echo to the gateway is answered with exactly the payload, never the padding (BAD-INPUTS 3)")
    func echoToGatewayIgnoresPadding() throws {
        let h = GatewayHarness()
        let echo = V6.icmp6(src: guestIP6, dst: gatewayIP6, type: ICMPv6Header.echoRequest, rest: 0x0042_0007, [1, 2, 3, 4])
        // Ethernet padding after the payload length: bytes that must never come back.
        let frame = V6.frame(V6.ipv6(dst: gatewayIP6, next: 58, echo) + [UInt8](repeating: 0xEE, count: 30))
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))
        let replies = try h.exchange(frame).map { try expectIPv6($0, src: gatewayIP6, dst: guestIP6, next: 58) }
        try #require(replies.count == 1)
        #expect(checksumValid6(replies[0], proto: 58))
        #expect(replies[0].payload[0] == ICMPv6Header.echoReply)
        #expect(Array(replies[0].payload[4...]) == [0, 0x42, 0, 7, 1, 2, 3, 4])
        #expect(h.counters[.icmpv6EchoLocal] == 1)
    }

    @Test("a payload length past the frame is malformed (BAD-INPUTS 3); so is a truncated header, at every length")
    func payloadLengthPastFrame() {
        let h = GatewayHarness()
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))
        let echo = V6.icmp6(src: guestIP6, dst: gatewayIP6, type: ICMPv6Header.echoRequest, rest: 1, [1, 2, 3, 4])
        h.expectDrop(.ipv6Malformed, V6.frame(V6.ipv6(dst: gatewayIP6, next: 58, echo, payloadLength: echo.count + 1)))
        let whole = V6.ipv6(dst: gatewayIP6, next: 58, echo)
        for n in 0 ..< 40 { h.expectDrop(.ipv6Malformed, V6.frame(Array(whole[0 ..< n])), "\(n) bytes") }
    }

    @Test("UDP whose frame ends inside the header, or whose length disagrees, or with a zero checksum is dropped (BAD-INPUTS 4)")
    func badUDP() {
        let h = GatewayHarness()
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))
        let good = V6.udp6(src: guestIP6, dst: externalIP6, srcPort: 4000, dstPort: 7, [9, 9, 9])
        for n in 0 ..< 8 { h.expectDrop(.udpMalformed, V6.frame(V6.ipv6(dst: externalIP6, next: 17, Array(good[0 ..< n]))), "\(n) bytes") }
        var long = good
        long[5] = UInt8(good.count + 1)
        h.expectDrop(.udpMalformed, V6.frame(V6.ipv6(dst: externalIP6, next: 17, long)))
        var zero = good
        zero[6] = 0; zero[7] = 0
        h.expectDrop(.udpBadChecksum, V6.frame(V6.ipv6(dst: externalIP6, next: 17, zero)))
    }

    @Test("UDP to an IPv6 host is NAT'd to an IPv6 host socket, and the reply comes back from that host")
    func udpNAT() throws {
        let h = GatewayHarness()
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))
        _ = h.exchange(V6.frame(V6.ipv6(dst: externalIP6, next: 17, V6.udp6(src: guestIP6, dst: externalIP6, srcPort: 4000, dstPort: 7, [1, 2, 3]))))
        let open = try h.lastOpen()
        #expect(open.kind == .udp && open.destination6 == externalIP6 && open.port == 7)
        #expect(h.host.sent.last?.bytes == [1, 2, 3])
        h.host.queue(open.handle, .datagram([4, 5, 6, 7]))
        h.hostReadable(open.tag)
        let out = try h.drain().map { try expectIPv6($0, src: externalIP6, dst: guestIP6, next: 17) }
        try #require(out.count == 1)
        #expect(checksumValid6(out[0], proto: 17))
        #expect(Array(out[0].payload[8...]) == [4, 5, 6, 7])
        #expect(out[0].payload[0 ..< 4] == [0, 7, 0x0F, 0xA0])
    }

    @Test("DNS to fec0::3 goes to the (IPv4) upstream resolver; the answer comes back from fec0::3")
    func dnsOverIPv6() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([(IPv4Address(127, 0, 0, 53), 53)])
        let query: [UInt8] = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x61, 0, 0, 28, 0, 1]
        _ = h.exchange(V6.frame(V6.ipv6(dst: dnsIP6, next: 17, V6.udp6(src: guestIP6, dst: dnsIP6, srcPort: 5353, dstPort: 53, query))))
        let open = try h.lastOpen()
        #expect(open.destination == IPv4Address(127, 0, 0, 53) && open.port == 53)
        h.host.queue(open.handle, .datagram(query))
        h.hostReadable(open.tag)
        let out = try h.drain().map { try expectIPv6($0, src: dnsIP6, dst: guestIP6, next: 17) }
        try #require(out.count == 1)
        #expect(checksumValid6(out[0], proto: 17) && out[0].payload[0 ..< 2] == [0, 53])
    }

    @Test("stateless DHCPv6: INFORMATION-REQUEST gets DNS and the client ID back; an oversized CLIENTID is refused (BAD-INPUTS 9)")
    func dhcpv6() throws {
        let h = GatewayHarness { $0.mtu = 1280 }
        func request(clientID: [UInt8]) -> [UInt8] {
            let msg: [UInt8] = [DHCPv6Message.informationRequest, 0xAB, 0xCD, 0xEF, 0, 1, UInt8(clientID.count >> 8), UInt8(clientID.count & 0xFF)] + clientID
            return V6.frame(to: IPv6Address.allDHCPServers.multicastMAC,
                            V6.ipv6(src: guestLinkLocal, dst: .allDHCPServers, next: 17,
                                    V6.udp6(src: guestLinkLocal, dst: .allDHCPServers, srcPort: 546, dstPort: 547, msg)))
        }
        let replies = try withoutUnsolicitedRA(h.exchange(request(clientID: [0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56])))
            .map { try expectIPv6($0, src: gatewayLinkLocal, next: 17, toMAC: nil) }
            .filter { $0.header.destination == guestLinkLocal }
        try #require(replies.count == 1)
        let udp = replies[0].payload
        #expect(checksumValid6(replies[0], proto: 17))
        let msg = Array(udp[8...])
        #expect(msg[0] == DHCPv6Message.reply && msg[1 ..< 4] == [0xAB, 0xCD, 0xEF])
        #expect(contains(msg, [0, 1, 0, 10, 0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]))     // client ID echoed
        #expect(contains(msg, [0, 23, 0, 16] + dnsIP6.bytes))
        // A client ID of 1,300 bytes cannot fit a reply at MTU 1280: refused, never cut or overrun.
        h.expectDrop(.dhcpv6Malformed, request(clientID: [UInt8](repeating: 7, count: 1200)))
        // An option running past the end.
        var bad = request(clientID: [1, 2, 3])
        bad[14 + 40 + 8 + 7] = 200
        let dst = IPv6Address.allDHCPServers
        let body = Array(bad[(14 + 40 + 8)...])
        h.expectDrop(.dhcpv6Malformed, V6.frame(to: dst.multicastMAC, V6.ipv6(src: guestLinkLocal, dst: dst, next: 17,
                                                                                V6.udp6(src: guestLinkLocal, dst: dst, srcPort: 546, dstPort: 547, body))))
    }

    @Test("fragments out of order are reassembled; overlaps and offsets past 65535 are dropped (BAD-INPUTS 14)")
    func fragments() throws {
        let h = GatewayHarness()
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))
        let payload = (0 ..< 64).map { UInt8($0) }
        let udp = V6.udp6(src: guestIP6, dst: externalIP6, srcPort: 4000, dstPort: 9, payload)
        func fragment(_ offset: Int, _ bytes: ArraySlice<UInt8>, more: Bool, id: UInt32 = 77) -> [UInt8] {
            let fo = UInt16(offset) | (more ? 1 : 0)
            let header: [UInt8] = [17, 0, UInt8(fo >> 8), UInt8(fo & 0xFF), UInt8(id >> 24), UInt8((id >> 16) & 0xFF), UInt8((id >> 8) & 0xFF), UInt8(id & 0xFF)]
            return V6.frame(V6.ipv6(dst: externalIP6, next: IPv6Header.fragment, header + bytes))
        }
        _ = h.exchange(fragment(32, udp[32...], more: false))
        #expect(h.host.opens.isEmpty)
        _ = h.exchange(fragment(0, udp[0 ..< 32], more: true))
        #expect(h.counters[.datagramsReassembled] == 1)
        #expect(h.host.sent.last?.bytes == payload)
        // An overlapping fragment with other bytes drops the datagram.
        _ = h.exchange(fragment(0, udp[0 ..< 32], more: true, id: 78))
        var other = Array(udp[16 ..< 48])
        other[0] ^= 0xFF
        let before = h.counters
        h.send(fragment(16, other[...], more: true, id: 78))
        #expect(dropDelta(before, h.counters) == [.ipv6FragmentOverlap: 1])
        // Offset + length past 65535.
        h.expectDrop(.ipv6FragmentInvalid, fragment(65528, udp[0 ..< 16], more: false, id: 79))
        // A non-final fragment that is not a multiple of 8 bytes.
        h.expectDrop(.ipv6FragmentInvalid, fragment(0, udp[0 ..< 13], more: true, id: 80))
    }

    @Test("TCP to fec0::2 opens an IPv6 host socket to ::1 and answers with an IPv6 SYN-ACK clamped to MTU - 60")
    func tcpHandshake() throws {
        let h = TCPHarness()
        h.send(V6.frame(V6.ipv6(dst: gatewayIP6, next: 6, V6.tcp6(dst: gatewayIP6, srcPort: 40000, dstPort: 8080, seq: 500, ack: 0, flags: .syn,
                                                                   mss: 1440, wscale: 7))))
        let s = try #require(h.host.lastSocket)
        #expect(s.destination6 == .loopback && s.port == 8080)
        h.writable(s.tag)
        let out = try withoutUnsolicitedRA(drainFrames(h.gateway.toGuest)).map { try expectIPv6($0, src: gatewayIP6, dst: guestIP6, next: 6) }
            .filter { $0.payload.count >= 20 }
        try #require(out.count == 1)
        #expect(checksumValid6(out[0], proto: 6))
        let tcp = try out[0].payload.withUnsafeBytes { try TCPHeader.parse($0) }
        #expect(tcp.flags == [.syn, .ack] && tcp.acknowledgment == 501 && tcp.maxSegmentSize == 1440 && tcp.windowScale == 7)
    }

    @Test("echo to the IPv6 metadata address is refused by the egress policy with ICMPv6 administratively prohibited")
    func egressDenied() throws {
        let h = GatewayHarness()
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))
        let metadata = IPv6Address("fd00:ec2::254")!
        let echo = V6.icmp6(src: guestIP6, dst: metadata, type: ICMPv6Header.echoRequest, rest: 1, [1])
        h.expectDrop(.egressDenied, V6.frame(V6.ipv6(dst: metadata, next: 58, echo)), allowReply: true)
        #expect(h.host.opens.isEmpty)
    }

    @Test("traffic to all-nodes is never NAT'd to host loopback (BAD-INPUTS 18); ipv6=off drops everything IPv6")
    func allNodesAndOff() throws {
        let h = GatewayHarness()
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))
        h.expectDrop(.martianDestination, V6.frame(to: IPv6Address.allNodes.multicastMAC,
                                                   V6.ipv6(dst: .allNodes, next: 17, V6.udp6(src: guestIP6, dst: .allNodes, srcPort: 1, dstPort: 80, [1]))))
        #expect(h.host.opens.isEmpty)
        let off = GatewayHarness { $0.ipv6Enabled = false }
        off.expectDrop(.ipv6Disabled, V6.neighborSolicitation(target: gatewayIP6))
    }

    @Test("a large echo reply is fragmented to the MTU")
    func fragmentedReply() throws {
        let h = GatewayHarness { $0.mtu = 1280 }
        _ = h.exchange(V6.neighborSolicitation(target: gatewayIP6))
        let body = [UInt8](repeating: 0x5A, count: 2000)
        let echo = V6.icmp6(src: guestIP6, dst: gatewayIP6, type: ICMPv6Header.echoRequest, rest: 5, body)
        // Sent as two fragments of the guest's own, reassembled, answered in fragments.
        func fragment(_ offset: Int, _ bytes: ArraySlice<UInt8>, more: Bool) -> [UInt8] {
            let fo = UInt16(offset) | (more ? 1 : 0)
            return V6.frame(V6.ipv6(dst: gatewayIP6, next: IPv6Header.fragment, [58, 0, UInt8(fo >> 8), UInt8(fo & 0xFF), 0, 0, 0, 9] + bytes))
        }
        _ = h.exchange(fragment(0, echo[0 ..< 1200], more: true))
        let frames = try h.exchange(fragment(1200, echo[1200...], more: false)).map { try expectIPv6($0, src: gatewayIP6, dst: guestIP6) }
        try #require(frames.count == 2)
        #expect(frames.allSatisfy { $0.header.nextHeader == IPv6Header.fragment && 40 + $0.payload.count <= 1280 })
        #expect(frames.map { $0.payload.count - 8 }.reduce(0, +) == echo.count)
    }
}

private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    for i in 0 ... haystack.count - needle.count where Array(haystack[i ..< i + needle.count]) == needle { return true }
    return false
}

extension MACAddress {
    var bytesForTest: [UInt8] { (0 ..< 6).map { UInt8(truncatingIfNeeded: rawValue >> UInt64(40 - 8 * $0)) } }
}
