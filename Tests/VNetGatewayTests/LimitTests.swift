// Configurable limits (Limits.swift): each caps what the guest can fill, refuses only new work, is counted under
// its drop reason, and lets service recover; the half-open and DNS counts stay true through every way a flow ends.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Limits")
struct LimitTests {
    @Test("defaults, names and ranges")
    func names() {
        var c = GatewayConfig()
        #expect(c.limit(.tcpHalfOpen) == 1024 && c.limit(.dnsFlows) == 256 && c.limit(.fragmentSlots) == 16 && c.limit(.fragmentTimeout) == 30)
        #expect(c.setLimit(.tcpHalfOpen, 8) && c.tcpHalfOpenCapacity == 8)
        #expect(c.setLimit(.fragmentTimeout, 5) && c.fragmentTimeout == .seconds(5))
        #expect(!c.setLimit(.fragmentSlots, 0) && !c.setLimit(.fragmentSlots, 1025) && c.fragmentSlots == 16)
        #expect(c.limitsSummary.contains("tcp-half-open 8") && c.limitsSummary.contains("fragment-timeout 5 s"))
        #expect(GatewayLimit(rawValue: "udp-flows") == .udpFlows && GatewayLimit(rawValue: "nope") == nil)
    }

    @Test("BAD-INPUTS 20 with the half-open cap: a SYN flood fills only the half-open slots; connections still complete")
    func halfOpen() throws {
        let r = try TCPBadInputRig { $0.tcpHalfOpenCapacity = 8 }
        for i in 0 ..< 200 {
            let segs = try r.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: UInt16(20_000 + i), dstPort: 80, seq: 1, ack: 0,
                                                               flags: .syn, window: 64240))
            #expect(i < 8 ? segs.isEmpty : segs.count == 1 && segs[0].flags == [.rst, .ack])
        }
        #expect(r.counters[.tcpHalfOpenFull] == 192 && r.counters[.tcpFlowTableFull] == 0)
        #expect(r.h.gateway.tcpHalfOpenFlowCount == 8 && r.h.gateway.tcpFlowCount == 9)
        try r.healthy()
        // One of them connects and the guest completes the handshake: a half-open slot frees up.
        let s = try #require(r.host.openSockets.first { $0.port == 80 })
        r.h.writable(s.tag)
        let synAck = try #require(r.collect().map { try expectSegment($0) }.first { $0.flags == [.syn, .ack] })
        #expect(r.h.gateway.tcpHalfOpenFlowCount == 8, "SYN-ACK sent, still half-open")
        try r.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: synAck.tcp.destinationPort, dstPort: 80, seq: 2,
                                                ack: synAck.seq &+ 1, flags: .ack, window: 64240))
        #expect(r.h.gateway.tcpHalfOpenFlowCount == 7)
        #expect(try r.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 30_000, dstPort: 80, seq: 1, ack: 0, flags: .syn, window: 64240)).isEmpty)
        try r.expectDrop(.tcpHalfOpenFull, FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 30_001, dstPort: 80, seq: 1, ack: 0,
                                                                         flags: .syn, window: 64240))
        // A refused connect ends a half-open flow too; the rest time out.
        let refused = try #require(r.host.openSockets.first { $0.port == 80 && $0.handle != s.handle })
        refused.connectError = 111
        r.h.writable(refused.tag)
        #expect(r.h.gateway.tcpHalfOpenFlowCount == 7)
        r.h.advance(.seconds(76))
        r.h.poll()
        r.collect()
        #expect(r.h.gateway.tcpHalfOpenFlowCount == 0)
        #expect(r.h.gateway.tcpHalfOpenFlowCount == halfOpenByScan(r.h.gateway))
        try r.finish()
    }
}

/// Half-open flows counted the slow way, to check the running count.
func halfOpenByScan<H: HostIO>(_ g: Gateway<H>) -> Int {
    g.tcpEngine.flows.activeIndices.filter { g.tcpEngine.flows[$0]!.state != .established }.count
}

@Suite("Limits: DNS flows and reassembly")
struct LimitFlowTests {
    @Test("DNS flows are capped; a failed-over or expired flow frees its place")
    func dnsFlows() throws {
        let r = try BadInputRig { $0.dnsFlowCapacity = 4 }
        r.gateway.setDNSUpstreams([upstream1, upstream2])
        for port: UInt16 in 1 ... 10 {
            let f = FrameBuilder.udpFrame(dst: dnsIP, srcPort: 50_000 + port, dstPort: 53, FrameBuilder.dnsQuery(id: port))
            if port <= 4 { r.expectServed(f) } else { r.expectDrop(.dnsFlowTableFull, f) }
        }
        #expect(r.gateway.dnsFlowOpenCount == 4)
        let open = try r.h.lastOpen()
        r.host.queue(open.handle, .icmpError(type: 3, code: 3, offender: upstream1.0, quoted: []))
        r.h.hostReadable(open.tag)
        #expect(r.gateway.dnsFlowOpenCount == 3)
        r.expectServed(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 50_100, dstPort: 53, FrameBuilder.dnsQuery(id: 100)))
        try r.advance(.seconds(40))
        #expect(r.gateway.dnsFlowOpenCount == 0)
        try r.finish()
    }

    @Test("reassembly slots and timeout follow the configuration")
    func fragments() throws {
        let r = try BadInputRig { $0.fragmentSlots = 2; $0.fragmentTimeout = .seconds(5) }
        #expect(r.gateway.reassembler.slotCount == 2)
        for id: UInt16 in 1 ... 3 { r.send(ReassemblyTests.fragments(payload: pattern(3000), id: id)[0]) }
        #expect(r.gateway.reassembler.activeCount == 2 && r.counters[.ipv4FragmentTimeout] == 1)
        r.h.advance(.seconds(6))
        r.h.poll()
        #expect(r.gateway.reassembler.activeCount == 0 && r.counters[.ipv4FragmentTimeout] == 3)
        try r.finish()
    }
}

@Suite("Per-guest limits")
struct GuestLimitTests {
    static let otherGuest = IPv4Address(10, 0, 2, 16)
    static let otherMAC = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x57)

    @Test("names, defaults, ranges and the start-up summary of the newer limits")
    func names() {
        var c = GatewayConfig()
        #expect(c.limit(.guestTCPFlows) == 4096 && c.limit(.guestUDPFlows) == 1024 && c.limit(.tftpTransfers) == 16 && c.limit(.controlClients) == 128)
        #expect(c.setLimit(.guestTCPFlows, 7) && c.guestTCPFlowCapacity == 7)
        #expect(c.setLimit(.tftpTransfers, 2) && c.tftpTransferCapacity == 2)
        #expect(c.setLimit(.controlClients, 5) && c.controlClientCapacity == 5)
        #expect(!c.setLimit(.controlClients, 0) && !c.setLimit(.guestUDPFlows, 0) && c.guestUDPFlowCapacity == 1024)
        let s = c.limitsSummary
        #expect(s.hasPrefix("tcp-flows 16384, tcp-half-open 1024, udp-flows 4096"), "\(s)")
        #expect(s.contains("guest-tcp-flows 7") && s.contains("guest-udp-flows 1024") && s.contains("tftp-transfers 2") && s.contains("control-clients 5"))
        #expect(GatewayLimit.guestUDPFlows.dropReason == .udpGuestFlowsFull && GatewayLimit.guestTCPFlows.dropReason == .tcpGuestFlowsFull)
        #expect(GatewayConfig.limitDropReasons.contains { $0.0 == .tcpGuestFlowsFull } && GatewayConfig.limitDropReasons.contains { $0.0 == .udpGuestFlowsFull })
    }

    @Test("guest-udp-flows: one guest address is capped, another still opens flows")
    func udp() throws {
        let r = try BadInputRig { $0.guestUDPFlowCapacity = 4; $0.udpFlowCapacity = 64 }
        // The healthy flow is the guest's first; three more fit.
        for p in UInt16(42_000) ..< 42_003 { r.send(FrameBuilder.udpFrame(dst: externalIP, srcPort: p, dstPort: 9, [1])) }
        #expect(r.gateway.udpFlowCount == 4)
        r.expectDrop(.udpGuestFlowsFull, FrameBuilder.udpFrame(dst: externalIP, srcPort: 42_003, dstPort: 9, [1]))
        // Existing flows go on.
        try r.healthy()
        // Another guest address has its own allowance.
        let opened = r.host.opens.count
        for p in UInt16(43_000) ..< 43_004 {
            r.send(FrameBuilder.udpFrame(src: Self.otherGuest, dst: externalIP, srcPort: p, dstPort: 9, mac: Self.otherMAC, [2]))
        }
        #expect(r.host.opens.count == opened + 4 && r.gateway.udpFlowCount == 8)
        #expect(r.counters[.udpGuestFlowsFull] == 1 && r.counters[.udpFlowTableFull] == 0)
    }

    @Test("guest-tcp-flows: the next SYN of a capped guest is answered with RST; another guest connects")
    func tcp() throws {
        let r = try TCPBadInputRig { $0.guestTCPFlowCapacity = 3; $0.tcpFlowCapacity = 64 }
        // The healthy connection is one; two more SYNs become flows.
        for p in UInt16(20_000) ..< 20_002 {
            let segs = try r.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: p, dstPort: 80, seq: 1, ack: 0, flags: .syn, window: 64240))
            #expect(segs.isEmpty)
        }
        #expect(r.h.gateway.tcpFlowCount == 3)
        let segs = try r.expectDrop(.tcpGuestFlowsFull, FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 20_002, dstPort: 80, seq: 1, ack: 0,
                                                                                      flags: .syn, window: 64240))
        #expect(segs.count == 1 && segs[0].flags == [.rst, .ack])
        try r.healthy()
        let other = try r.send(FrameBuilder.tcpSegmentFrame(src: Self.otherGuest, dst: externalIP, srcPort: 21_000, dstPort: 80, seq: 1, ack: 0,
                                                            flags: .syn, window: 64240, mac: Self.otherMAC))
        #expect(other.isEmpty && r.h.gateway.tcpFlowCount == 4)
        #expect(r.counters[.tcpGuestFlowsFull] == 1 && r.counters[.tcpFlowTableFull] == 0)
    }
}
