// DNS to 10.0.2.3: forwarded over a host UDP socket to the first upstream, SERVFAIL without one.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

let upstream1 = (IPv4Address(192, 0, 2, 53), UInt16(53))
let upstream2 = (IPv4Address(198, 51, 100, 53), UInt16(5353))

@Suite("Gateway DNS")
struct DNSForwardingTests {
    @Test("a query opens a host socket to the first upstream and sends the query bytes")
    func forwarded() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1, upstream2])
        let query = FrameBuilder.dnsQuery(id: 0x1A2B)
        #expect(h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_333, dstPort: 53, query)).isEmpty)
        let open = try h.lastOpen()
        #expect(h.host.opens.count == 1)
        #expect(open.kind == .udp && open.destination == upstream1.0 && open.port == upstream1.1 && open.tag.kind == .udp)
        #expect(h.host.sent == [FakeHost.Sent(handle: open.handle, bytes: query)])
        #expect(h.counters[.dnsQueries] == 1 && h.counters[.udpFlowsOpened] == 1)

        // A second query from the same port reuses the flow.
        let q2 = FrameBuilder.dnsQuery(id: 0x1A2C, name: "example.org")
        _ = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_333, dstPort: 53, q2))
        #expect(h.host.opens.count == 1)
        #expect(h.host.sent.last == FakeHost.Sent(handle: open.handle, bytes: q2))
        #expect(h.counters[.dnsQueries] == 2)
    }

    @Test("an IPv6 upstream serves an IPv4 guest: the query goes out on an IPv6 socket, the reply comes back from 10.0.2.3")
    func ipv6UpstreamForIPv4Guest() throws {
        let h = GatewayHarness()
        let v6 = IPAddress(IPv6Address("2001:db8::53")!)
        h.gateway.setDNSUpstreams([(v6, 53)])
        let query = FrameBuilder.dnsQuery(id: 0x6006)
        #expect(h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_334, dstPort: 53, query)).isEmpty)
        let open = try h.lastOpen()
        #expect(open.kind == .udp && open.destination6 == v6.v6 && open.port == 53)
        #expect(h.host.sent == [FakeHost.Sent(handle: open.handle, bytes: query)])
        var answer = query
        answer[2] = 0x81; answer[3] = 0x80
        h.host.queue(open.handle, .datagram(answer))
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 1)
        #expect(try expectUDP(frames[0], src: dnsIP, srcPort: 53, dstPort: 33_334) == answer)
    }

    @Test("an unreachable IPv6 upstream fails over to the next resolver (an IPv4 one)")
    func ipv6UpstreamFailsOver() throws {
        let h = GatewayHarness()
        let v6 = IPAddress(IPv6Address("2001:db8::53")!)
        h.gateway.setDNSUpstreams([(v6, 53), (IPAddress(upstream1.0), upstream1.1)])
        h.send(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_335, dstPort: 53, FrameBuilder.dnsQuery(id: 1)))
        let first = try h.lastOpen()
        #expect(first.destination6 == v6.v6)
        h.host.queue(first.handle, .result(.icmp6Error(type: 1, code: 4, offender: v6.v6, length: 0)))
        h.hostReadable(first.tag)
        h.send(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_335, dstPort: 53, FrameBuilder.dnsQuery(id: 2)))
        let second = try h.lastOpen()
        #expect(second.handle != first.handle && second.destination == upstream1.0 && second.port == upstream1.1)
    }

    @Test("the upstream's reply reaches the guest from 10.0.2.3:53, with a valid UDP checksum")
    func reply() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        h.send(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_333, dstPort: 53, FrameBuilder.dnsQuery(id: 7)))
        let open = try h.lastOpen()
        var answer = FrameBuilder.dnsQuery(id: 7)
        answer[2] = 0x81; answer[3] = 0x80; answer[7] = 1
        answer += [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0x0E, 0x10, 0, 4, 93, 184, 216, 34]
        h.host.queue(open.handle, .datagram(answer))
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 1)
        #expect(try expectUDP(frames[0], src: dnsIP, srcPort: 53, dstPort: 33_333) == answer)
    }

    @Test("with no upstream the guest gets SERVFAIL at once, with its id and question")
    func servfail() throws {
        let h = GatewayHarness()
        let query = FrameBuilder.dnsQuery(id: 0xBEEF)
        h.expectDrop(.dnsNoUpstream, FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_001, dstPort: 53, query), allowReply: true)
        // expectDrop drained the reply; send again and look at it.
        h.send(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_001, dstPort: 53, query))
        let frames = h.drain()
        try #require(frames.count == 1)
        let reply = try expectUDP(frames[0], src: dnsIP, srcPort: 53, dstPort: 40_001)
        let header = try #require(parsed(reply) { try DNSHeader.parse($0) })
        #expect(header.id == 0xBEEF && header.isResponse && header.responseCode == 2)
        #expect(header.questionCount == 1 && header.answerCount == 0)
        #expect(reply[12...] == query[12...])
        #expect(h.counters[.dnsNoUpstream] == 2 && h.counters[.dnsServfail] == 2)
        #expect(h.host.opens.isEmpty)
    }

    @Test("a query that cannot be parsed gets nothing without an upstream")
    func unparsableQuery() {
        let h = GatewayHarness()
        h.expectDrop(.dnsNoUpstream, FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_001, dstPort: 53, [1, 2, 3]))
        #expect(h.counters[.dnsServfail] == 0)
    }

    @Test("10.0.2.3 on a port other than 53 is not forwarded", arguments: [UInt16(5353), 67, 853])
    func wrongPort(port: UInt16) {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        h.expectDrop(.dnsWrongPort, FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_002, dstPort: port, FrameBuilder.dnsQuery(id: 1)))
        #expect(h.host.sent.isEmpty)
    }

    @Test("replaceDNSUpstreams closes open DNS flows only; the next query goes to the new upstream")
    func replaceUpstreams() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        h.send(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_333, dstPort: 53, FrameBuilder.dnsQuery(id: 1)))
        let dnsFlow = try h.lastOpen()
        h.send(FrameBuilder.udpFrame(dst: externalIP, srcPort: 44_444, dstPort: 7, pattern(10)))
        let udpFlow = try h.lastOpen()
        #expect(h.gateway.udpFlowCount == 2)

        h.gateway.replaceDNSUpstreams([upstream2])
        #expect(h.host.closed == [dnsFlow.handle])
        #expect(h.gateway.udpFlowCount == 1)
        #expect(h.host.openHandles == [udpFlow.handle])

        h.send(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_333, dstPort: 53, FrameBuilder.dnsQuery(id: 2)))
        let reopened = try h.lastOpen()
        #expect(reopened.destination == upstream2.0 && reopened.port == upstream2.1)
    }

    @Test("a loopback upstream (vnet's own traffic) is used even when guest traffic may not reach host loopback")
    func loopbackUpstreamWithMapOff() throws {
        let h = GatewayHarness { $0.mapGatewayToHostLoopback = false }
        h.gateway.setDNSUpstreams([(IPv4Address(127, 0, 0, 53), 53)])
        _ = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 33_333, dstPort: 53, FrameBuilder.dnsQuery(id: 3)))
        #expect(try h.lastOpen().destination == IPv4Address(127, 0, 0, 53))
    }
}
