// hostfwd: a connection accepted on a host listener becomes a flow whose SYN we send to the guest. Loopback
// clients appear as the gateway address, others keep their address and port.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway TCP hostfwd")
struct TCPForwardTests {
    /// Accepts `handle` from client:clientPort for guest port 22 and returns our SYN to the guest.
    func accept(_ h: TCPHarness, handle: Int32 = 77, from client: IPv4Address, port clientPort: UInt16 = 45_678,
                sourceLocation: SourceLocation = #_sourceLocation) throws -> Segment {
        let ok = h.gateway.acceptForwardedTCP(handle: handle, from: client, port: clientPort, to: guestIP, port: 22, now: h.now)
        try #require(ok, sourceLocation: sourceLocation)
        return try h.oneSegment("SYN to the guest", sourceLocation: sourceLocation)
    }

    /// The guest answers our SYN with a SYN-ACK; returns the established connection as the guest sees it.
    func guestAccepts(_ h: TCPHarness, syn: Segment, handle: Int32 = 77, isn: UInt32 = 5000, wscale: UInt8? = 7,
                      window: UInt16 = 64_000, sourceLocation: SourceLocation = #_sourceLocation) throws -> GuestConn {
        let s = try h.host.socket(handle, sourceLocation: sourceLocation)
        h.send(FrameBuilder.tcpSegmentFrame(dst: syn.source, srcPort: 22, dstPort: syn.tcp.sourcePort, seq: isn, ack: syn.seq &+ 1,
                                            flags: [.syn, .ack], window: window, mss: 1460, wscale: wscale))
        return GuestConn(guestPort: 22, server: syn.source, serverPort: syn.tcp.sourcePort, seq: isn &+ 1, iss: syn.seq,
                         guestWScale: wscale ?? 0, ourWScale: wscale == nil ? 0 : TCPTiming.ourWindowScale,
                         handle: handle, tag: s.tag, guestFirst: isn &+ 1)
    }

    @Test("a loopback client: SYN to the guest from the gateway address; SYN-ACK -> ACK; data flows both ways")
    func loopbackClient() throws {
        let h = TCPHarness(sendCapacity: 50_000)
        h.introduceGuest()
        let syn = try accept(h, from: .loopback)
        #expect(syn.source == gatewayIP && syn.destination == guestIP)
        #expect(syn.tcp.sourcePort == 45_678 && syn.tcp.destinationPort == 22)
        #expect(syn.flags == .syn && syn.ack == 0)
        #expect(syn.tcp.maxSegmentSize == 1460 && syn.tcp.windowScale == TCPTiming.ourWindowScale)
        #expect(syn.tcp.window == 50_000, "unscaled in a SYN")
        let s = try h.host.socket(77)
        #expect(s.adopted && s.tag.kind == .tcp)
        #expect(h.gateway.tcpFlowCount == 1)
        #expect(h.counters[.tcpForwardsAccepted] == 1)

        var c = try guestAccepts(h, syn: syn)
        let ack = try h.oneSegment("ACK of the guest's SYN-ACK")
        #expect(ack.isPureAck && ack.seq == syn.seq &+ 1 && ack.ack == 5001)
        #expect(ack.tcp.window == UInt16(50_000 >> 7))
        #expect(s.interest?.readable == true)

        // Client -> guest.
        h.host.remoteSends(77, Array("GET /\r\n".utf8))
        h.readable(c)
        let data = try h.oneSegment()
        #expect(data.payload == Array("GET /\r\n".utf8) && data.seq == c.ourSeq(0) && data.ack == 5001)
        #expect(data.source == gatewayIP && data.tcp.sourcePort == 45_678)
        // Guest -> client, acknowledging the request.
        h.guestSends(&c, ack: c.ourSeq(7), Array("HTTP/1.0 200 OK\r\n".utf8))
        #expect(s.written == Array("HTTP/1.0 200 OK\r\n".utf8))
        #expect(s.receiveQueue.isEmpty)
        h.flush()
        #expect(try h.oneSegment().ack == c.seq)
    }

    @Test("a client that is not on loopback: the SYN comes from its own address and port")
    func externalClient() throws {
        let h = TCPHarness()
        h.introduceGuest()
        let client = IPv4Address(192, 0, 2, 7)
        let syn = try accept(h, from: client, port: 33_333)
        #expect(syn.source == client && syn.tcp.sourcePort == 33_333)
        var c = try guestAccepts(h, syn: syn, wscale: nil)
        let ack = try h.oneSegment()
        #expect(ack.source == client && ack.ack == 5001)
        h.guestSends(&c, ack: c.ourSeq(0), window: 64_000, [42])
        #expect(try h.host.socket(77).written == [42])
        h.host.remoteSends(77, pattern(70_000))
        h.readable(c)
        let segs = try h.segments()
        #expect(segs.allSatisfy { $0.source == client && $0.tcp.sourcePort == 33_333 })
        #expect(segs.reduce(0) { $0 + $1.payload.count } == 64_000, "the guest's unscaled window")
    }

    @Test("the guest learned from DHCP alone (no IPv4 traffic yet) can be reached")
    func guestFromDHCPLease() throws {
        let h = TCPHarness()
        h.send(FrameBuilder.dhcpFrame(.discover))
        h.send(FrameBuilder.dhcpFrame(.request, requested: guestIP, serverID: gatewayIP))
        _ = h.drain()
        #expect(h.gateway.acceptForwardedTCP(handle: 9, from: .loopback, port: 1, to: guestIP, port: 22, now: h.now))
        #expect(try h.oneSegment().flags == .syn)
    }

    @Test("the guest resets our SYN: the client connection is aborted")
    func guestRefuses() throws {
        let h = TCPHarness()
        h.introduceGuest()
        let syn = try accept(h, from: .loopback)
        // An RST without the right ACK is not for our SYN.
        let before = h.counters
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 22, dstPort: 45_678, seq: 0, ack: syn.seq &+ 7,
                                            flags: [.rst, .ack], window: 0))
        #expect(dropDelta(before, h.counters) == [.tcpRstOutOfWindow: 1])
        #expect(h.gateway.tcpFlowCount == 1)
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 22, dstPort: 45_678, seq: 0, ack: syn.seq &+ 1,
                                            flags: [.rst, .ack], window: 0))
        let s = try h.host.socket(77)
        #expect(s.aborted && !s.closed)
        #expect(h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpResetsFromGuest] == 1)
        #expect(h.drain().isEmpty)
    }

    @Test("a SYN-ACK with the wrong ack is dropped as tcpBadAck and reset (RFC 9293 §3.10.7.3); the flow keeps waiting")
    func wrongSynAck() throws {
        let h = TCPHarness()
        h.introduceGuest()
        let syn = try accept(h, from: .loopback)
        let before = h.counters
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 22, dstPort: 45_678, seq: 1, ack: syn.seq &+ 2,
                                            flags: [.syn, .ack], window: 1000))
        #expect(dropDelta(before, h.counters) == [.tcpBadAck: 1])
        #expect(try h.host.socket(77).interest == nil)
        let answer = try h.segments()
        #expect(answer.map(\.flags) == [.rst, .syn] && answer[0].seq == syn.seq &+ 2 && answer[1].seq == syn.seq, "\(answer.map(describe))")
        _ = try guestAccepts(h, syn: syn)
        #expect(try h.oneSegment().isPureAck)
    }

    @Test("an unanswered SYN is resent on RTO with the same ISS")
    func synResent() throws {
        let h = TCPHarness()
        h.introduceGuest()
        let syn = try accept(h, from: .loopback)
        h.advance(ms: 1000); h.poll()
        let again = try h.oneSegment()
        #expect(again.flags == .syn && again.seq == syn.seq && again.tcp.windowScale == TCPTiming.ourWindowScale)
    }

    @Test("an unknown guest MAC: no flow, false returned, counted")
    func unknownGuestMAC() throws {
        let h = TCPHarness()
        let before = h.counters
        #expect(!h.gateway.acceptForwardedTCP(handle: 77, from: .loopback, port: 1234, to: guestIP, port: 22, now: h.now))
        #expect(dropDelta(before, h.counters) == [.forwardNoGuestMAC: 1])
        #expect(h.host.sockets.isEmpty, "not adopted: the caller closes it")
        #expect(h.gateway.tcpFlowCount == 0)
        #expect(h.drain().isEmpty)
    }

    @Test("a full table or a failed adopt refuses the forwarded connection")
    func refused() throws {
        let h = TCPHarness { $0.tcpFlowCapacity = 1 }
        h.introduceGuest()
        _ = try accept(h, handle: 70, from: .loopback, port: 1)
        #expect(!h.gateway.acceptForwardedTCP(handle: 71, from: .loopback, port: 2, to: guestIP, port: 22, now: h.now))
        #expect(h.counters[.tcpFlowTableFull] == 1)
        let h2 = TCPHarness()
        h2.introduceGuest()
        h2.host.failAdopt = true
        #expect(!h2.gateway.acceptForwardedTCP(handle: 71, from: .loopback, port: 2, to: guestIP, port: 22, now: h2.now))
        #expect(h2.counters[.hostSocketFailed] == 1 && h2.gateway.tcpFlowCount == 0)
    }
}
