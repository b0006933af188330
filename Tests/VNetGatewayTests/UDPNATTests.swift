// Guest UDP NAT'd to host sockets: where it may go, what comes back, ICMP errors, fragmentation, expiry and caps.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway UDP NAT")
struct UDPNATTests {
    @Test("the gateway address maps to host loopback on the same port")
    func gatewayMapsToLoopback() throws {
        let h = GatewayHarness()
        let data = pattern(20)
        #expect(h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_000, dstPort: 8080, data)).isEmpty)
        let open = try h.lastOpen()
        #expect(open.kind == .udp && open.destination == .loopback && open.port == 8080)
        #expect(h.host.sent == [FakeHost.Sent(handle: open.handle, bytes: data)])
        #expect(h.counters[.udpFlowsOpened] == 1 && h.gateway.udpFlowCount == 1)
    }

    @Test("with the loopback mapping off, traffic to the gateway is dropped and no socket is opened")
    func loopbackMappingOff() {
        let h = GatewayHarness { $0.mapGatewayToHostLoopback = false }
        h.expectDrop(.hostLoopbackDisabled, FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 8080, pattern(4)))
        #expect(h.host.opens.isEmpty && h.gateway.udpFlowCount == 0)
    }

    @Test("loopback, broadcast, multicast and 0/8 destinations are martian",
          arguments: [IPv4Address.loopback, IPv4Address(127, 1, 2, 3), .broadcast, IPv4Address(224, 0, 0, 1),
                      IPv4Address(239, 255, 255, 250), .any, IPv4Address(0, 1, 2, 3)])
    func martianDestinations(dst: IPv4Address) {
        let h = GatewayHarness()
        h.expectDrop(.martianDestination, FrameBuilder.udpFrame(dst: dst, dstPort: 9999, pattern(4)))
    }

    @Test("other addresses on the guest's own network are not NAT'd",
          arguments: [IPv4Address(10, 0, 2, 99), IPv4Address(10, 0, 2, 255), IPv4Address(10, 0, 2, 0)])
    func localDestinations(dst: IPv4Address) {
        let h = GatewayHarness()
        h.expectDrop(.udpToUnknownLocalAddress, FrameBuilder.udpFrame(dst: dst, dstPort: 9999, pattern(4)))
    }

    @Test("an external destination gets its own connected socket")
    func external() throws {
        let h = GatewayHarness()
        let data = pattern(100, seed: 3)
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 40_000, dstPort: 7, data))
        let open = try h.lastOpen()
        #expect(open.destination == externalIP && open.port == 7)
        #expect(h.host.sent.last == FakeHost.Sent(handle: open.handle, bytes: data))
        #expect(h.host.ttlSets.isEmpty)
        // Another destination port is another flow.
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 40_000, dstPort: 8, data))
        #expect(h.host.opens.count == 2 && h.gateway.udpFlowCount == 2)
    }

    @Test("the guest's TTL reaches the host socket when it differs from 64, once per change")
    func ttl() throws {
        let h = GatewayHarness()
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 33_434, ttl: 1, pattern(8)))
        let open = try h.lastOpen()
        #expect(h.host.ttlSets == [.init(handle: open.handle, ttl: 1)])
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 33_434, ttl: 1, pattern(8)))
        #expect(h.host.ttlSets.count == 1)
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 33_434, ttl: 64, pattern(8)))
        #expect(h.host.ttlSets == [.init(handle: open.handle, ttl: 1), .init(handle: open.handle, ttl: 64)])
    }

    @Test("a reply from the host reaches the guest from the address and port it wrote to",
          arguments: [gatewayIP, externalIP])
    func reply(dst: IPv4Address) throws {
        let h = GatewayHarness()
        _ = h.exchange(FrameBuilder.udpFrame(dst: dst, srcPort: 40_123, dstPort: 5000, pattern(5)))
        let open = try h.lastOpen()
        let answer = pattern(33, seed: 8)
        h.host.queue(open.handle, .datagram(answer), .datagram([]))
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 2)
        #expect(try expectUDP(frames[0], src: dst, srcPort: 5000, dstPort: 40_123) == answer)
        #expect(try expectUDP(frames[1], src: dst, srcPort: 5000, dstPort: 40_123) == [])
    }

    @Test("a host ICMP port-unreachable becomes an ICMP error from the destination, quoting the guest's datagram")
    func portUnreachable() throws {
        let h = GatewayHarness()
        let data = pattern(12)
        _ = h.exchange(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_555, dstPort: 9, data))
        let open = try h.lastOpen()
        h.host.queue(open.handle, .icmpError(type: 3, code: 3, offender: .loopback, quoted: data))
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 1)
        let (_, body) = try expectICMP(frames[0], src: gatewayIP, type: ICMPv4Header.destinationUnreachable, code: 3)
        try #require(body.count == 20 + 8)   // RFC 792: IPv4 header + first 8 bytes
        let ip = try QuotedIPv4(body)
        #expect(ip.source == guestIP && ip.destination == gatewayIP && ip.protocolNumber == 17)
        #expect(ip.totalLength == 20 + 8 + data.count)
        #expect(u16(ip.rest, 0) == 40_555 && u16(ip.rest, 2) == 9 && Int(u16(ip.rest, 4)) == 8 + data.count)
        #expect(h.counters[.icmpErrorsToGuest] == 1)
    }

    @Test("time exceeded from a router on the path names that router (traceroute)")
    func timeExceeded() throws {
        let h = GatewayHarness()
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 40_556, dstPort: 33_434, ttl: 1, pattern(8)))
        let open = try h.lastOpen()
        let router = IPv4Address(198, 51, 100, 1)
        h.host.queue(open.handle, .icmpError(type: 11, code: 0, offender: router, quoted: pattern(8)))
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 1)
        let (_, body) = try expectICMP(frames[0], src: router, type: ICMPv4Header.timeExceeded)
        let ip = try QuotedIPv4(body)
        #expect(ip.source == guestIP && ip.destination == externalIP && ip.ttl == 1)
        #expect(u16(ip.rest, 0) == 40_556 && u16(ip.rest, 2) == 33_434)
    }

    @Test("a host datagram larger than the MTU arrives as fragments that reassemble to it",
          arguments: [(1500, 3000), (576, 1000), (1500, 1473), (1500, 65_000)])
    func fragmentation(mtu: Int, size: Int) throws {
        let h = GatewayHarness { $0.mtu = mtu }
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 40_000, dstPort: 53, pattern(8)))
        let open = try h.lastOpen()
        let big = pattern(size, seed: 77)
        h.host.queue(open.handle, .datagram(big))
        h.hostReadable(open.tag)
        let frames = h.drain()
        #expect(frames.count == (8 + size + (mtu - 20) / 8 * 8 - 1) / ((mtu - 20) / 8 * 8))
        var reassembled = [UInt8](repeating: 0, count: 8 + size)
        var covered = 0
        var ids = Set<UInt16>()
        for (i, f) in frames.enumerated() {
            let p = try expectIPv4(f, src: externalIP, dst: guestIP, proto: .udp)
            #expect(p.header.totalLength <= mtu)
            #expect(p.header.moreFragments == (i < frames.count - 1))
            #expect(!p.header.dontFragment)
            #expect(p.header.fragmentOffset == covered)
            if i < frames.count - 1 { #expect(p.payload.count % 8 == 0) }
            reassembled.replaceSubrange(p.header.fragmentOffset ..< p.header.fragmentOffset + p.payload.count, with: p.payload)
            covered += p.payload.count
            ids.insert(p.header.identification)
        }
        #expect(covered == 8 + size)
        #expect(ids.count == 1)
        #expect(Array(reassembled[8...]) == big)
        #expect(reassembled.withUnsafeBytes { UDPHeader.checksumValid($0, source: externalIP, destination: guestIP) })
        #expect(u16(reassembled, 0) == 53 && u16(reassembled, 2) == 40_000 && Int(u16(reassembled, 4)) == 8 + size)
    }

    @Test("idle flows are closed by poll after udpIdleTimeout, and not before")
    func idleExpiry() throws {
        let h = GatewayHarness()
        h.poll()
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)))
        let open = try h.lastOpen()
        h.advance(.seconds(119)); h.poll()
        #expect(h.host.closed.isEmpty && h.gateway.udpFlowCount == 1)
        h.advance(.seconds(1)); h.poll()
        #expect(h.host.closed == [open.handle] && h.gateway.udpFlowCount == 0)
        #expect(h.counters[.udpFlowsExpired] == 1)
    }

    @Test("traffic either way keeps a flow alive")
    func activityRefreshes() throws {
        let h = GatewayHarness()
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)))
        let open = try h.lastOpen()
        h.advance(.seconds(100))
        h.host.queue(open.handle, .datagram(pattern(3)))
        h.hostReadable(open.tag)
        _ = h.drain()
        h.advance(.seconds(100)); h.poll()
        #expect(h.gateway.udpFlowCount == 1)
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)))
        h.advance(.seconds(119)); h.poll()
        #expect(h.gateway.udpFlowCount == 1)
        h.advance(.seconds(1)); h.poll()
        #expect(h.gateway.udpFlowCount == 0)
    }

    @Test("DNS flows expire after dnsIdleTimeout")
    func dnsExpiry() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        h.poll()
        _ = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, dstPort: 53, FrameBuilder.dnsQuery(id: 1)))
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)))
        let dns = h.host.opens[0]
        // Answered, so only the idle timeout applies (an unanswered query fails over after 2 s).
        h.host.queue(dns.handle, .datagram(FrameBuilder.dnsQuery(id: 1)))
        h.hostReadable(dns.tag)
        _ = h.drain()
        h.advance(.seconds(29)); h.poll()
        #expect(h.gateway.udpFlowCount == 2)
        h.advance(.seconds(1)); h.poll()
        #expect(h.host.closed == [dns.handle] && h.gateway.udpFlowCount == 1)
    }

    @Test("a full flow table refuses the next flow while existing flows still pass traffic, and recovers")
    func fullTable() throws {
        let h = GatewayHarness { $0.udpFlowCapacity = 2 }
        h.poll()
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 1001, dstPort: 7, pattern(4)))
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 1002, dstPort: 7, pattern(4)))
        let first = h.host.opens[0], second = h.host.opens[1]
        #expect(first.tag != second.tag)
        h.expectDrop(.udpFlowTableFull, FrameBuilder.udpFrame(dst: externalIP, srcPort: 1003, dstPort: 7, pattern(4)))

        // Existing flows: both directions still work.
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 1002, dstPort: 7, pattern(6)))
        #expect(h.host.sent.last == FakeHost.Sent(handle: second.handle, bytes: pattern(6)))
        h.host.queue(first.handle, .datagram(pattern(9)))
        h.hostReadable(first.tag)
        let frames = h.drain()
        try #require(frames.count == 1)
        #expect(try expectUDP(frames[0], src: externalIP, srcPort: 7, dstPort: 1001) == pattern(9))

        // Once the idle one expires, a new flow fits again (in its slot).
        h.advance(.seconds(60))
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 1002, dstPort: 7, pattern(6)))
        h.advance(.seconds(60)); h.poll()
        #expect(h.gateway.udpFlowCount == 1)
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 1003, dstPort: 7, pattern(4)))
        #expect(try h.lastOpen().tag == first.tag)
    }

    @Test("a host socket that cannot be opened is counted and no flow is kept")
    func openFailure() {
        let h = GatewayHarness()
        h.host.failOpen = true
        h.expectDrop(.hostSocketFailed, FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)))
        #expect(h.gateway.udpFlowCount == 0)
        h.host.failOpen = false
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)))
        #expect(h.gateway.udpFlowCount == 1)
    }

    @Test("a failed send is counted; the flow stays")
    func sendFailure() {
        let h = GatewayHarness()
        h.host.failSend = true
        let before = h.counters
        h.send(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)))
        #expect(dropDelta(before, h.counters) == [.hostSendFailed: 1])
        #expect(h.gateway.udpFlowCount == 1)
    }

    @Test("host results that are not for the guest are counted and skipped")
    func ignoredHostResults() throws {
        let h = GatewayHarness()
        _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, srcPort: 40_000, dstPort: 7, pattern(4)))
        let open = try h.lastOpen()
        h.host.queue(open.handle, .result(.ignored), .datagram(pattern(2)), .result(.failed), .datagram(pattern(3)))
        let before = h.counters
        h.hostReadable(open.tag)
        #expect(dropDelta(before, h.counters) == [.hostDatagramDropped: 1])
        #expect(h.drain().count == 1)   // stops at .failed
        h.hostReadable(open.tag)
        #expect(h.drain().count == 1)
    }

    @Test("readiness for a flow slot that is gone is harmless")
    func staleTag() {
        let h = GatewayHarness()
        h.hostReadable(FlowTag(kind: .udp, index: 5))
        h.hostReadable(FlowTag(kind: .icmp, index: 1_000_000))
        #expect(h.drain().isEmpty && h.counters.totalDrops == 0)
    }

    @Test("host sockets still open are closed when the gateway goes away")
    func deinitCloses() throws {
        let host: FakeHost
        do {
            let h = GatewayHarness()
            host = h.host
            _ = h.exchange(FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)))
            _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 1, seq: 1, pattern(4)))
            #expect(host.openHandles.count == 2)
        }
        #expect(host.openHandles.isEmpty)
    }
}

func u16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) << 8 | UInt16(b[o + 1]) }

/// The IPv4 header quoted in an ICMP error. Its total length names the original datagram, which is longer
/// than the quote, so it is read field by field rather than with IPv4Header.parse.
struct QuotedIPv4 {
    var source: IPv4Address, destination: IPv4Address, protocolNumber: UInt8, ttl: UInt8, totalLength: Int
    /// The bytes after the header (the first 8 bytes of the original datagram).
    var rest: [UInt8]

    init(_ b: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws {
        try #require(b.count >= 28 && b[0] == 0x45, "quoted header \(b)", sourceLocation: sourceLocation)
        #expect(b.withUnsafeBytes { InternetChecksum.of(UnsafeRawBufferPointer(rebasing: $0[0 ..< 20])) } == 0,
                "quoted header checksum", sourceLocation: sourceLocation)
        source = IPv4Address(b[12], b[13], b[14], b[15])
        destination = IPv4Address(b[16], b[17], b[18], b[19])
        protocolNumber = b[9]
        ttl = b[8]
        totalLength = Int(u16(b, 2))
        rest = Array(b[20...])
    }
}
