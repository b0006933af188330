// Egress policy (--deny/--allow): precedence of rules, the default link-local deny, and enforcement for TCP
// (RST), UDP and ICMP echo (ICMP "administratively prohibited") where the gateway maps destinations.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

private let metadataIP = IPv4Address(169, 254, 169, 254)

private func cidr(_ s: String) -> IPv4Network { EgressPolicy.parseCIDR(s)! }

@Suite("Egress policy")
struct EgressPolicyTests {
    @Test("CIDR parsing: host bits must be zero; a bare address is a /32")
    func parsing() {
        #expect(EgressPolicy.parseCIDR("10.0.0.0/8") == IPv4Network(address: IPv4Address(10, 0, 0, 0), prefixLength: 8))
        #expect(EgressPolicy.parseCIDR("169.254.169.254") == IPv4Network(address: metadataIP, prefixLength: 32))
        #expect(EgressPolicy.parseCIDR("0.0.0.0/0")?.prefixLength == 0)
        for bad in ["10.1.2.3/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0/8", "/8", "10.0.0.0/8/8", "10.0.0.0/-1", "fd00:ec2::254", "", "a.b.c.d/8"] {
            #expect(EgressPolicy.parseCIDR(bad) == nil, "\(bad)")
        }
    }

    @Test("default: 169.254.0.0/16 denied, everything else allowed; --allow-link-local lifts it")
    func defaults() {
        var p = EgressPolicy()
        #expect(!p.permits(metadataIP) && !p.permits(IPv4Address(169, 254, 0, 1)))
        #expect(p.permits(externalIP) && p.permits(.loopback) && p.permits(IPv4Address(169, 255, 0, 1)))
        p.allowLinkLocal()
        #expect(p.permits(metadataIP))
    }

    @Test("the longest matching prefix wins; at equal length allow wins; order does not matter")
    func precedence() {
        for order in [false, true] {
            var p = EgressPolicy()
            let steps: [(EgressPolicy) -> EgressPolicy] = [
                { var q = $0; q.deny(cidr("10.0.0.0/8")); return q },
                { var q = $0; q.allow(cidr("10.1.0.0/16")); return q },
                { var q = $0; q.deny(cidr("10.1.2.0/24")); return q },
                { var q = $0; q.allow(cidr("169.254.169.254/32")); return q },
                { var q = $0; q.deny(cidr("192.0.2.7/32")); q.allow(cidr("192.0.2.7/32")); return q },
            ]
            for s in (order ? steps.reversed() : steps) { p = s(p) }
            #expect(!p.permits(IPv4Address(10, 2, 3, 4)))
            #expect(p.permits(IPv4Address(10, 1, 3, 4)))
            #expect(!p.permits(IPv4Address(10, 1, 2, 3)))
            #expect(p.permits(metadataIP) && !p.permits(IPv4Address(169, 254, 169, 253)))
            #expect(p.permits(IPv4Address(192, 0, 2, 7)), "allow wins a tie")
        }
        var all = EgressPolicy()
        all.deny(cidr("0.0.0.0/0"))
        all.allow(cidr("192.0.2.0/24"))
        #expect(!all.permits(IPv4Address(8, 8, 8, 8)) && all.permits(externalIP))
    }

    @Test("UDP to a denied address: not opened, counted, and the guest gets ICMP 3/13 quoting its datagram")
    func udpDenied() throws {
        let r = try BadInputRig()
        let out = r.expectDrop(.egressDenied, FrameBuilder.udpFrame(dst: metadataIP, srcPort: 40_100, dstPort: 80, pattern(6)), reply: true)
        try #require(out.count == 1)
        let (_, body) = try expectICMP(out[0], src: gatewayIP, type: ICMPv4Header.destinationUnreachable, code: 13)
        #expect(body.count == 28)
        #expect(Array(body[12 ..< 20]) == addressBytes(guestIP) + addressBytes(metadataIP) && body[9] == IPProtocol.udp.rawValue)
        #expect(Array(body[20 ..< 26]) == [0x9C, 0xA4, 0x00, 0x50, 0x00, 0x0E])   // ports 40100 -> 80, UDP length 14
        try r.finish()
    }

    @Test("ICMP echo to a denied address: ICMP 3/13 quoting the echo header")
    func echoDenied() throws {
        let r = try BadInputRig()
        let out = r.expectDrop(.egressDenied, FrameBuilder.echoRequestFrame(dst: metadataIP, id: 0x0102, seq: 3, pattern(8)), reply: true)
        try #require(out.count == 1)
        let (_, body) = try expectICMP(out[0], src: gatewayIP, type: ICMPv4Header.destinationUnreachable, code: 13)
        #expect(body[9] == IPProtocol.icmp.rawValue && body[20] == ICMPv4Header.echoRequest && Array(body[24 ..< 28]) == [0x01, 0x02, 0x00, 0x03])
        try r.finish()
    }

    @Test("TCP to a denied address: RST, no socket")
    func tcpDenied() throws {
        let r = try TCPBadInputRig()
        let segs = try r.expectDrop(.egressDenied, FrameBuilder.tcpSegmentFrame(dst: metadataIP, srcPort: 50_100, dstPort: 80, seq: 77, ack: 0,
                                                                                flags: .syn, window: 64240))
        #expect(segs.count == 1 && segs[0].flags == [.rst, .ack] && segs[0].ack == 78 && segs[0].source == metadataIP)
        try r.finish()
    }

    @Test("--allow for the metadata address, --deny of a range with an allowed hole, --deny of host loopback")
    func configured() throws {
        let r = try BadInputRig {
            $0.egress.allow(cidr("169.254.169.254/32"))
            $0.egress.deny(cidr("198.51.100.0/24"))
            $0.egress.allow(cidr("198.51.100.8/29"))
            $0.egress.deny(cidr("127.0.0.0/8"))
        }
        r.gateway.setDNSUpstreams([(IPv4Address(127, 0, 0, 53), 53)])
        r.expectServed(FrameBuilder.udpFrame(dst: metadataIP, srcPort: 40_101, dstPort: 80, pattern(4)))
        #expect(try r.h.lastOpen().destination == metadataIP)
        r.expectDrop(.egressDenied, FrameBuilder.udpFrame(dst: IPv4Address(169, 254, 1, 1), srcPort: 40_101, dstPort: 80, pattern(4)), reply: true)
        r.expectDrop(.egressDenied, FrameBuilder.udpFrame(dst: IPv4Address(198, 51, 100, 1), srcPort: 40_101, dstPort: 80, pattern(4)), reply: true)
        r.expectServed(FrameBuilder.udpFrame(dst: IPv4Address(198, 51, 100, 9), srcPort: 40_101, dstPort: 80, pattern(4)))
        // The gateway address maps to host loopback, which the policy now denies.
        r.expectDrop(.egressDenied, FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_101, dstPort: 8080, pattern(4)), reply: true)
        // vnet's own DNS upstream on loopback is not guest-initiated: unaffected.
        r.expectServed(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_102, dstPort: 53, FrameBuilder.dnsQuery(id: 1)))
        #expect(try r.h.lastOpen().destination == IPv4Address(127, 0, 0, 53))
        // Existing flows are not re-checked, and echo to the gateway itself is answered by vnet.
        #expect(r.expectServed(FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 1, seq: 1, [])).count == 1)
        try r.finish()
    }

    @Test("the start-up summary names the rules and whether the metadata address is reachable")
    func summary() {
        var p = EgressPolicy()
        #expect(p.summary.contains("deny 169.254.0.0/16") && p.summary.contains("is denied"))
        p.allowLinkLocal()
        #expect(p.summary.contains("allow 169.254.0.0/16") && p.summary.contains("is reachable"))
    }
}
