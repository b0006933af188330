// Guest ICMP echo to the outside, through host echo sockets; replies come back with the guest's identifier.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway ICMP echo NAT")
struct ICMPNATTests {
    @Test("echo to an external address opens an echo handle and sends identifier, sequence and payload")
    func opensAndSends() throws {
        let h = GatewayHarness()
        let data = pattern(56)
        #expect(h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 0x4242, seq: 1, data)).isEmpty)
        let open = try h.lastOpen()
        #expect(open.kind == .icmp && open.destination == externalIP && open.tag.kind == .icmp)
        #expect(h.host.echoes == [.init(handle: open.handle, identifier: 0x4242, sequence: 1, payload: data)])
        #expect(h.counters[.icmpFlowsOpened] == 1)
        // The next echo of the same session reuses the handle.
        _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 0x4242, seq: 2, data))
        #expect(h.host.opens.count == 1 && h.host.echoes.count == 2)
    }

    @Test("echo to the gateway address is answered locally, even with the loopback mapping off")
    func gatewayIsLocal() {
        let h = GatewayHarness { $0.mapGatewayToHostLoopback = false }
        #expect(h.exchange(FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 1, seq: 1, [])).count == 1)
        #expect(h.host.opens.isEmpty)
    }

    @Test("echo to a martian destination is dropped", arguments: [IPv4Address.loopback, .broadcast, IPv4Address(224, 0, 0, 1)])
    func martian(dst: IPv4Address) {
        let h = GatewayHarness()
        h.expectDrop(.martianDestination, FrameBuilder.echoRequestFrame(dst: dst, id: 1, seq: 1, pattern(8)))
    }

    @Test("a reply the host already matched (identifier nil) reaches the guest with the guest's identifier")
    func replyNilIdentifier() throws {
        let h = GatewayHarness()
        let data = pattern(56, seed: 5)
        _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 0x4242, seq: 9, data))
        let open = try h.lastOpen()
        h.host.queue(open.handle, .echoReply(identifier: nil, sequence: 9, payload: data))
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 1)
        let (icmp, body) = try expectICMP(frames[0], src: externalIP, type: ICMPv4Header.echoReply)
        #expect(icmp.identifier == 0x4242 && icmp.sequence == 9)
        #expect(body == data)
    }

    @Test("a reply carrying another identifier is ignored; one carrying the guest's is delivered")
    func replyIdentifierFilter() throws {
        let h = GatewayHarness()
        _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 0x4242, seq: 1, pattern(8)))
        let open = try h.lastOpen()
        h.host.queue(open.handle, .echoReply(identifier: 0x9999, sequence: 1, payload: pattern(8)))
        h.hostReadable(open.tag)
        #expect(h.drain().isEmpty)
        h.host.queue(open.handle, .echoReply(identifier: 0x4242, sequence: 1, payload: pattern(8)))
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 1)
        #expect(try expectICMP(frames[0], src: externalIP, type: 0).header.identifier == 0x4242)
    }

    @Test("a host ICMP error for an echo flow reaches the guest quoting its echo request")
    func errorForEcho() throws {
        let h = GatewayHarness()
        _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 0x0777, seq: 1, ttl: 2, pattern(8)))
        let open = try h.lastOpen()
        let router = IPv4Address(198, 51, 100, 7)
        h.host.queue(open.handle, .icmpError(type: 11, code: 0, offender: router, quoted: []))
        h.hostReadable(open.tag)
        let frames = h.drain()
        try #require(frames.count == 1)
        let (_, body) = try expectICMP(frames[0], src: router, type: ICMPv4Header.timeExceeded)
        let ip = try QuotedIPv4(body)
        #expect(ip.source == guestIP && ip.destination == externalIP && ip.protocolNumber == 1 && ip.ttl == 2)
        #expect(ip.rest[0] == ICMPv4Header.echoRequest && u16(ip.rest, 4) == 0x0777)
        #expect(h.host.ttlSets == [.init(handle: open.handle, ttl: 2)])
    }

    @Test("echo flows expire after icmpIdleTimeout")
    func expiry() throws {
        let h = GatewayHarness()
        h.poll()
        _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 1, seq: 1, pattern(8)))
        let open = try h.lastOpen()
        h.advance(.seconds(29)); h.poll()
        #expect(h.gateway.icmpFlowCount == 1 && h.host.closed.isEmpty)
        h.advance(.seconds(1)); h.poll()
        #expect(h.gateway.icmpFlowCount == 0 && h.host.closed == [open.handle])
        #expect(h.counters[.icmpFlowsExpired] == 1)
    }

    @Test("a full echo table refuses new sessions; an open failure is counted")
    func capsAndFailures() {
        let h = GatewayHarness { $0.icmpFlowCapacity = 1 }
        _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 1, seq: 1, pattern(8)))
        h.expectDrop(.icmpFlowTableFull, FrameBuilder.echoRequestFrame(dst: externalIP, id: 2, seq: 1, pattern(8)))
        _ = h.exchange(FrameBuilder.echoRequestFrame(dst: externalIP, id: 1, seq: 2, pattern(8)))
        #expect(h.host.echoes.count == 2)

        let g = GatewayHarness()
        g.host.failOpen = true
        g.expectDrop(.hostSocketFailed, FrameBuilder.echoRequestFrame(dst: externalIP, id: 1, seq: 1, pattern(8)))
    }

    @Test("echo from 0.0.0.0 is martian")
    func unspecifiedSource() {
        let h = GatewayHarness()
        h.expectDrop(.martianSource, FrameBuilder.echoRequestFrame(src: .any, dst: externalIP, id: 1, seq: 1, pattern(8)))
    }
}
