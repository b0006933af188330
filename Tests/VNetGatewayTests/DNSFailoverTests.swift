// DNS failover: a resolver that stays silent or is unreachable moves later queries to the next one.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway DNS failover")
struct DNSFailoverTests {
    func query(_ h: GatewayHarness, port: UInt16, id: UInt16) {
        h.send(FrameBuilder.udpFrame(dst: dnsIP, srcPort: port, dstPort: 53, FrameBuilder.dnsQuery(id: id)))
    }

    @Test("an unanswered query moves the next one to the second resolver; an answer keeps the first")
    func silentResolver() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1, upstream2])
        query(h, port: 1000, id: 1)
        let first = try h.lastOpen()
        #expect(first.destination == upstream1.0)
        h.advance(.milliseconds(1500)); h.poll()
        #expect(h.host.openHandles.contains(first.handle), "not yet: under the 2 s failover timeout")
        h.advance(.milliseconds(1000)); h.poll()
        #expect(h.host.closed.contains(first.handle))
        #expect(h.counters[.dnsFailovers] == 1)
        // The guest's retry (same port) opens a flow to the second resolver.
        query(h, port: 1000, id: 1)
        let second = try h.lastOpen()
        #expect(second.destination == upstream2.0 && second.port == upstream2.1)
        // The second answers: no further failover.
        h.host.queue(second.handle, .datagram(FrameBuilder.dnsQuery(id: 1)))
        h.hostReadable(second.tag)
        h.advance(.seconds(5)); h.poll()
        #expect(h.counters[.dnsFailovers] == 1)
        #expect(h.host.openHandles.contains(second.handle))
    }

    @Test("an ICMP error from the resolver fails over at once and is not relayed to the guest")
    func unreachableResolver() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1, upstream2])
        query(h, port: 2000, id: 9)
        let first = try h.lastOpen()
        h.host.queue(first.handle, .icmpError(type: 3, code: 3, offender: upstream1.0, quoted: []))
        h.hostReadable(first.tag)
        #expect(h.drain().isEmpty)
        #expect(h.host.closed.contains(first.handle))
        query(h, port: 2000, id: 10)
        #expect(try h.lastOpen().destination == upstream2.0)
    }

    @Test("with a single resolver a silent one is retried, never rotated away")
    func singleResolver() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        query(h, port: 3000, id: 1)
        h.advance(.seconds(3)); h.poll()
        query(h, port: 3000, id: 1)
        #expect(try h.lastOpen().destination == upstream1.0)
        #expect(h.counters[.dnsFailovers] == 0)
    }
}
