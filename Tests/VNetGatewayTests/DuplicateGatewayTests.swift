// One gateway per segment (GatewayAnnounce.swift): with `announcesAddress` (vnet nat with a VXLAN uplink), the
// gateway announces its address by gratuitous ARP, and counts an ARP from another station that claims it.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Duplicate gateway")
struct DuplicateGatewayTests {
    @Test("the gateway announces its address at start and every 10 s, not between")
    func announces() throws {
        let h = GatewayHarness { $0.announcesAddress = true }
        h.poll()
        let frames = drainFrames(h.gateway.toGuest)
        try #require(frames.count == 1)
        let eth = try #require(parsed(frames[0]) { try EthernetHeader.parse($0) })
        #expect(eth.destination == .broadcast && eth.source == gatewayMAC && eth.etherType == .arp)
        let arp = try #require(parsed(frames[0][14...]) { try ARPPacket.parse($0) })
        #expect(arp == ARPPacket(operation: .request, senderMAC: gatewayMAC, senderIP: gatewayIP, targetMAC: .zero, targetIP: gatewayIP))
        h.now = h.now + Instant.Duration.seconds(5)
        h.poll()
        #expect(drainFrames(h.gateway.toGuest).isEmpty)
        h.now = h.now + Instant.Duration.seconds(5)
        h.poll()
        #expect(drainFrames(h.gateway.toGuest).count == 1)
    }

    @Test("without it, nothing is announced")
    func quietByDefault() {
        let h = GatewayHarness()
        h.poll()
        #expect(drainFrames(h.gateway.toGuest).isEmpty)
    }

    @Test("an ARP from another station claiming a gateway address is counted, not learned or answered",
          arguments: [gatewayIP, dnsIP])
    func counted(claimed: IPv4Address) {
        let h = GatewayHarness { $0.announcesAddress = true }
        let other = MACAddress(0x52, 0x55, 0x0A, 0x00, 0x02, 0x03)
        h.expectDrop(.arpDuplicateGateway, FrameBuilder.arpFrame(senderMAC: other, senderIP: claimed, targetIP: claimed, ethDst: .broadcast))
        h.expectDrop(.arpDuplicateGateway, FrameBuilder.arpFrame(op: .reply, senderMAC: other, senderIP: claimed, targetIP: guestIP, ethDst: gatewayMAC))
        #expect(h.counters[.arpReplies] == 0)
    }
}
