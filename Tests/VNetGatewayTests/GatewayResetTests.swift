// Gateway.reset (GatewayReset.swift), which the fuzz targets use to reuse one gateway per process: after a
// reset, the same script of guest frames and host replies produces byte-for-byte the same frames, counters and
// flow counts as the first time, and every host handle of the first run is closed.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway reset")
struct GatewayResetTests {
    /// DHCP, ARP, ping of the gateway, a UDP NAT flow with a reply, DNS, a TCP SYN, a fragment, a bad frame,
    /// time passing. Returns every frame sent to the guest.
    func script(_ h: GatewayHarness) -> [[UInt8]] {
        var out: [[UInt8]] = []
        h.gateway.setDNSUpstreams([(IPv4Address(192, 0, 2, 53), 53)])
        h.send(FrameBuilder.dhcpFrame(.discover)); out += h.drain()
        h.send(FrameBuilder.dhcpFrame(.request, requested: guestIP, serverID: gatewayIP)); out += h.drain()
        h.send(FrameBuilder.arpFrame(targetIP: gatewayIP)); out += h.drain()
        h.send(FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 7, seq: 1, [1, 2, 3])); out += h.drain()
        h.send(FrameBuilder.udpFrame(dst: externalIP, srcPort: 40_001, dstPort: 7, [9, 9, 9]))
        if let o = h.host.opens.last {
            h.host.queue(o.handle, .datagram([4, 5, 6]))
            h.hostReadable(o.tag)
        }
        out += h.drain()
        h.send(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_002, dstPort: 53, FrameBuilder.dnsQuery(id: 0x1234))); out += h.drain()
        h.send(FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 1000, flags: .syn)); out += h.drain()
        h.send(FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: externalIP, proto: .udp, flags: 0x2000,
                                                                    FrameBuilder.udp(src: guestIP, dst: externalIP, srcPort: 1, dstPort: 2, Array(repeating: 7, count: 64)))))
        out += h.drain()
        h.send([0x01, 0x02, 0x03])
        h.advance(.seconds(5)); h.poll(); out += h.drain()
        return out
    }

    @Test("a reset gateway replays a script exactly as the first time, and closes every handle")
    func replay() {
        let h = GatewayHarness()
        let first = script(h)
        let counters = h.counters
        let flows = (h.gateway.udpFlowCount, h.gateway.icmpFlowCount, h.gateway.tcpFlowCount, h.gateway.tcpHalfOpenFlowCount)
        #expect(!first.isEmpty && counters.totalDrops > 0 && flows.0 > 0, "the script exercises flows and drops")
        #expect(!h.host.openHandles.isEmpty)

        h.gateway.reset()
        #expect(h.host.openHandles.isEmpty, "reset closes every host handle")
        #expect(h.gateway.udpFlowCount == 0 && h.gateway.tcpFlowCount == 0 && h.gateway.tcpHalfOpenFlowCount == 0 && h.gateway.dnsFlowOpenCount == 0)
        #expect(h.counters.totalDrops == 0 && h.gateway.toGuest.isEmpty && h.gateway.dnsUpstreams.isEmpty)
        #expect(h.gateway.leases(now: h.now).isEmpty)

        let second = script(h)
        #expect(second == first)
        #expect(h.counters.report == counters.report)
        #expect((h.gateway.udpFlowCount, h.gateway.icmpFlowCount, h.gateway.tcpFlowCount, h.gateway.tcpHalfOpenFlowCount) == flows)
    }

    @Test("FrameQueue.reset empties the queue and its refusal count")
    func queueReset() {
        let q = FrameQueue(capacity: 70_000)
        dirty(q)
        while q.reserve(maximumLength: 1500) != nil { q.commit(length: 1500) }
        #expect(q.refused == 1 && !q.isEmpty)
        q.reset()
        #expect(q.isEmpty && q.refused == 0 && q.frameCount == 0 && q.freeSpace == q.capacity)
    }
}
