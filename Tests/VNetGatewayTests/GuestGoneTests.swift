// `closeAllFlows` (the guest's QEMU disconnected): every flow and host socket goes, TCP host peers are reset,
// hostfwd listeners and leases stay, the half-open and DNS counts are true again, and new flows work after.
// Also the timeouts added as limits for the flood tests (udp-timeout, dhcp-lease-time).

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Guest gone")
struct GuestGoneTests {
    @Test("TCP: established and half-open flows are aborted (RST to the host peer); new flows work afterwards")
    func tcp() throws {
        let h = TCPHarness()
        h.introduceGuest()
        let a = try h.connect(to: gatewayIP, port: 8080, from: 50_000)
        let b = try h.connect(to: externalIP, port: 443, from: 50_001)
        // Two half-open: one still connecting, one with our SYN-ACK out.
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 50_002, dstPort: 80, seq: 1, ack: 0, flags: .syn, window: 64240))
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 50_003, dstPort: 80, seq: 1, ack: 0, flags: .syn, window: 64240))
        let last = try #require(h.host.lastSocket)
        h.writable(last.tag)
        _ = h.drain()
        #expect(h.gateway.tcpFlowCount == 4 && h.gateway.tcpHalfOpenFlowCount == 2)
        #expect(h.gateway.closeAllFlows() == 4)
        #expect(h.gateway.tcpFlowCount == 0 && h.gateway.tcpHalfOpenFlowCount == 0)
        #expect(h.host.openSockets.isEmpty)
        #expect(try h.host.socket(a.handle).aborted && h.host.socket(b.handle).aborted)
        #expect(h.counters[.flowsClosedGuestGone] == 4)
        #expect(h.drain().isEmpty, "nothing is sent to a guest that is gone")
        // The next guest (same address, as DHCP gives it back) connects from the same port: a new flow.
        let again = try h.connect(to: gatewayIP, port: 8080, from: 50_000)
        #expect(h.gateway.tcpFlowCount == 1 && again.handle != a.handle)
        h.advance(.seconds(200))
        h.poll()
    }

    @Test("UDP and ICMP: sockets closed, hostfwd flows forgotten without closing the listener, DNS count reset")
    func udpAndICMP() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([(IPv4Address(127, 0, 0, 53), 53)])
        _ = h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_000, dstPort: 8080, pattern(4)))
        _ = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_001, dstPort: 53, FrameBuilder.dnsQuery(id: 7)))
        _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 9, seq: 1, [1, 2, 3]))
        let listener: Int32 = 900
        h.gateway.forwardedUDPDatagram(listener: listener, from: .loopback, port: 5555, to: guestIP, port: 7777, length: 0, now: h.now)
        _ = h.drain()
        #expect(h.gateway.udpFlowCount == 3 && h.gateway.icmpFlowCount == 1 && h.gateway.dnsFlowOpenCount == 1)
        let opened = h.host.opens.map(\.handle)
        #expect(h.gateway.closeAllFlows() == 4)
        #expect(h.gateway.udpFlowCount == 0 && h.gateway.icmpFlowCount == 0 && h.gateway.dnsFlowOpenCount == 0)
        #expect(Set(h.host.closed) == Set(opened) && !h.host.closed.contains(listener))
        #expect(h.counters[.flowsClosedGuestGone] == 4)
        // Service goes on: a new datagram opens a new flow.
        _ = h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_000, dstPort: 8080, pattern(4)))
        #expect(h.gateway.udpFlowCount == 1 && h.host.opens.count == opened.count + 1)
    }

    @Test("closeFlows(ofGuests:): only the departed guests' flows go (vnet nat/switch: one port's peer left)")
    func someGuestsGone() throws {
        let h = GatewayHarness()
        let otherMAC = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x99)
        let otherIP = IPv4Address(10, 0, 2, 16)
        _ = h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_000, dstPort: 8080, pattern(4)))
        let mine = try h.lastOpen()
        _ = h.exchange(FrameBuilder.udpFrame(src: otherIP, dst: gatewayIP, srcPort: 40_000, dstPort: 8080, mac: otherMAC, pattern(4)))
        let theirs = try h.lastOpen()
        #expect(h.gateway.udpFlowCount == 2)
        #expect(h.gateway.closeFlows(ofGuests: []) == 0)
        #expect(h.gateway.closeFlows(ofGuests: [otherMAC]) == 1)
        #expect(h.gateway.udpFlowCount == 1 && h.host.closed == [theirs.handle] && !h.host.closed.contains(mine.handle))
        #expect(h.counters[.flowsClosedGuestGone] == 1)
        // The remaining guest's flow still carries its datagrams.
        _ = h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_000, dstPort: 8080, pattern(5)))
        #expect(h.host.sent.last == FakeHost.Sent(handle: mine.handle, bytes: pattern(5)))

        let t = TCPHarness()
        t.introduceGuest()
        let c = try t.connect(to: gatewayIP, port: 8080, from: 50_000)
        #expect(t.gateway.closeFlows(ofGuests: [otherMAC]) == 0 && t.gateway.tcpFlowCount == 1)
        #expect(t.gateway.closeFlows(ofGuests: [guestMAC]) == 1 && t.gateway.tcpFlowCount == 0)
        #expect(try t.host.socket(c.handle).aborted, "the host peer is reset")
    }

    @Test("udp-timeout and dhcp-lease-time are limits: parsed, ranged, shown and applied")
    func timeoutLimits() {
        var c = GatewayConfig()
        #expect(c.limit(.udpTimeout) == 120 && c.limit(.dhcpLeaseTime) == 86_400)
        #expect(c.setLimit(.udpTimeout, 3) && c.udpIdleTimeout == .seconds(3))
        #expect(c.setLimit(.dhcpLeaseTime, 10) && c.leaseTime == .seconds(10))
        #expect(!c.setLimit(.udpTimeout, 0) && !c.setLimit(.dhcpLeaseTime, 3))
        #expect(c.limitsSummary.contains("udp-timeout 3 s") && c.limitsSummary.contains("dhcp-lease-time 10 s"))
        let h = GatewayHarness { _ = $0.setLimit(.udpTimeout, 3) }
        _ = h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_000, dstPort: 8080, pattern(4)))
        h.advance(.seconds(2)); h.poll()
        #expect(h.gateway.udpFlowCount == 1)
        h.advance(.seconds(2)); h.poll()
        #expect(h.gateway.udpFlowCount == 0 && h.counters[.udpFlowsExpired] == 1)
    }
}
