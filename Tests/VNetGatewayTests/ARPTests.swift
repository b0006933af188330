// ARP: the gateway answers for its own addresses (gateway and DNS) with its MAC, and nothing else.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway ARP")
struct ARPTests {
    @Test("a request for a gateway-owned address is answered with the gateway MAC", arguments: [gatewayIP, dnsIP])
    func answered(target: IPv4Address) throws {
        let h = GatewayHarness()
        let frames = h.exchange(FrameBuilder.arpFrame(targetIP: target))
        try #require(frames.count == 1)
        let eth = try #require(parsed(frames[0]) { try EthernetHeader.parse($0) })
        #expect(eth.destination == guestMAC && eth.source == gatewayMAC && eth.etherType == .arp)
        let arp = try #require(parsed(frames[0][14...]) { try ARPPacket.parse($0) })
        #expect(arp == ARPPacket(operation: .reply, senderMAC: gatewayMAC, senderIP: target, targetMAC: guestMAC, targetIP: guestIP))
        #expect(h.counters[.arpReplies] == 1)
        #expect(gatewayMAC.description == "52:55:0a:00:02:02")
    }

    @Test("a request sent unicast to the gateway MAC is answered too")
    func unicastRequest() {
        let h = GatewayHarness()
        #expect(h.exchange(FrameBuilder.arpFrame(targetIP: gatewayIP, ethDst: gatewayMAC)).count == 1)
    }

    @Test("the gateway MAC follows a configured host address")
    func macFollowsHostAddress() throws {
        let h = GatewayHarness {
            $0.network = IPv4Network(address: IPv4Address(10, 0, 3, 0), prefixLength: 24)
            $0.gatewayAddress = IPv4Address(10, 0, 3, 2)
            $0.dnsAddress = IPv4Address(10, 0, 3, 3)
            $0.dhcpStart = IPv4Address(10, 0, 3, 15)
        }
        h.send(FrameBuilder.arpFrame(senderIP: IPv4Address(10, 0, 3, 15), targetIP: IPv4Address(10, 0, 3, 2)))
        let f = try #require(drainFrames(h.gateway.toGuest).first)
        let arp = try #require(parsed(f[14...]) { try ARPPacket.parse($0) })
        #expect(arp.senderMAC == MACAddress(0x52, 0x55, 0x0A, 0x00, 0x03, 0x02))
    }

    @Test("a request for any other address is ignored and counted",
          arguments: [IPv4Address(10, 0, 2, 99), guestIP, IPv4Address(10, 0, 2, 255), externalIP])
    func otherAddressIgnored(target: IPv4Address) {
        let h = GatewayHarness()
        h.expectDrop(.arpIgnored, FrameBuilder.arpFrame(senderIP: IPv4Address(10, 0, 2, 16), targetIP: target))
        #expect(h.counters[.arpReplies] == 0)
    }

    @Test("replies and gratuitous ARP are ignored")
    func repliesIgnored() {
        let h = GatewayHarness()
        h.expectDrop(.arpIgnored, FrameBuilder.arpFrame(op: .reply, targetIP: gatewayIP))
        h.expectDrop(.arpIgnored, FrameBuilder.arpFrame(op: .unknown(9), targetIP: gatewayIP))
        h.expectDrop(.arpIgnored, FrameBuilder.arpFrame(senderIP: gatewayIP, targetIP: gatewayIP))
    }

    @Test("truncated ARP is malformed", arguments: [0, 1, 7, 8, 27])
    func truncated(bodyLength: Int) {
        let h = GatewayHarness()
        let full = FrameBuilder.arpFrame(targetIP: gatewayIP)
        h.expectDrop(.arpMalformed, Array(full[..<(14 + bodyLength)]))
    }

    @Test("ARP for other hardware or protocol types is malformed")
    func wrongTypes() {
        let h = GatewayHarness()
        var f = FrameBuilder.arpFrame(targetIP: gatewayIP)
        f[15] = 6          // hardware type 6 (IEEE 802)
        h.expectDrop(.arpMalformed, f)
        f = FrameBuilder.arpFrame(targetIP: gatewayIP)
        f[16] = 0x86; f[17] = 0xDD   // protocol IPv6
        h.expectDrop(.arpMalformed, f)
        f = FrameBuilder.arpFrame(targetIP: gatewayIP)
        f[19] = 16         // protocol address length 16
        h.expectDrop(.arpMalformed, f)
    }
}
