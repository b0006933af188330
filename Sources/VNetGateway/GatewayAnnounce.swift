// Gratuitous ARP for the gateway's address, for segments that span hosts (a VXLAN uplink).
//
// Theory of Operation
// -------------------
// One segment must have one gateway. When two `vnet nat` share a VNI, both answer for the same address, and
// neither would notice: the gateway sends ARP only as replies, unicast to the asker. With `announcesAddress`
// (set by `vnet nat` when it has an uplink), the gateway broadcasts an ARP request for its own address (sender
// and target both the gateway, RFC 5227 §2.3's announcement) at start and every `announcementInterval`. The
// other gateway receives it, sees its own address as the sender, and counts `drop_arp_duplicate_gateway`
// (Gateway.handleARP; the runtime logs it). Guests only refresh their ARP entry for the gateway with it.

import VNetBuffers
import VNetWire

extension Gateway {
    static var announcementInterval: Instant.Duration { .seconds(10) }

    func announceIfDue(now: Instant) {
        if let last = lastAnnouncement, now - last < Gateway.announcementInterval { return }
        guard let out = toGuest.reserve(maximumLength: 14 + ARPPacket.length) else { return drop(.txQueueFull) }
        lastAnnouncement = now
        EthernetHeader(destination: .broadcast, source: config.gatewayMAC, etherType: .arp).emit(into: out)
        ARPPacket(operation: .request, senderMAC: config.gatewayMAC, senderIP: config.gatewayAddress,
                  targetMAC: .zero, targetIP: config.gatewayAddress).emit(into: out.slice(14 ..< out.count))
        toGuest.commit(length: 14 + ARPPacket.length)
    }
}
