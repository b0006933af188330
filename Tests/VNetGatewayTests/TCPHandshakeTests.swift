// Guest-initiated TCP: SYN -> host connect -> SYN-ACK (MSS, window scale) -> ACK; refused connects, a full
// flow table, retransmitted SYNs and SYN-ACKs.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway TCP handshake")
struct TCPHandshakeTests {
    @Test("SYN to the gateway connects to host loopback; connect done -> SYN-ACK with ack = seq + 1, MSS = mtu - 40, wscale, unscaled window",
          arguments: [1500, 1280])
    func synToGateway(mtu: Int) throws {
        let h = TCPHarness(sendCapacity: 40_000) { $0.mtu = mtu }
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_000, dstPort: 8080, seq: 1000, ack: 0, flags: .syn,
                                            window: 64240, mss: 1460, wscale: 7))
        let s = try #require(h.host.lastSocket)
        #expect(s.destination == .loopback && s.port == 8080)
        #expect(s.tag.kind == .tcp)
        #expect(h.gateway.tcpFlowCount == 1)
        #expect(h.counters[.tcpFlowsOpened] == 1)
        #expect(h.drain().isEmpty, "nothing for the guest until the connect completes")

        h.writable(s.tag)
        let synAck = try h.oneSegment()
        #expect(synAck.source == gatewayIP && synAck.destination == guestIP)
        #expect(synAck.tcp.sourcePort == 8080 && synAck.tcp.destinationPort == 50_000)
        #expect(synAck.flags == [.syn, .ack])
        #expect(synAck.ack == 1001)
        #expect(synAck.tcp.maxSegmentSize == UInt16(mtu - 40))
        #expect(synAck.tcp.windowScale == TCPTiming.ourWindowScale)
        #expect(synAck.tcp.window == 40_000, "a SYN's window is never scaled")
        #expect(synAck.payload.isEmpty)

        // The guest's ACK establishes the flow: host data now flows, and the interest turns to readable.
        h.send(h.frame(GuestConn(guestPort: 50_000, server: gatewayIP, serverPort: 8080, seq: 1001, iss: synAck.seq, guestWScale: 7,
                                 ourWScale: 7, handle: s.handle, tag: s.tag, guestFirst: 1001), ack: synAck.seq &+ 1, window: 512))
        #expect(s.interest?.readable == true)
        h.host.remoteSends(s.handle, pattern(100))
        h.gateway.hostReadable(s.tag, now: h.now)
        let data = try h.oneSegment()
        #expect(data.seq == synAck.seq &+ 1 && data.ack == 1001 && data.payload == pattern(100))
        #expect(data.tcp.window == UInt16(40_000 >> 7), "windows after the SYN are scaled")
    }

    @Test("SYN to an external address connects to that address and port")
    func synToExternal() throws {
        let h = TCPHarness()
        let c = try h.connect(to: externalIP, port: 443)
        let s = try h.host.socket(c.handle)
        #expect(s.destination == externalIP && s.port == 443)
    }

    @Test("host data before the guest's ACK waits: nothing is peeked while the SYN-ACK is unacknowledged")
    func noDataBeforeEstablished() throws {
        let h = TCPHarness()
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_000, dstPort: 80, seq: 7, ack: 0, flags: .syn, window: 65535,
                                            mss: 1460, wscale: 7))
        let s = try #require(h.host.lastSocket)
        h.writable(s.tag)
        let synAck = try h.oneSegment()
        #expect(s.interest.map { !$0.readable && !$0.writable } == true)
        h.host.remoteSends(s.handle, pattern(10))
        h.gateway.hostReadable(s.tag, now: h.now)
        #expect(h.drain().isEmpty)
        #expect(h.host.peeks(s.handle) == 0)
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_000, dstPort: 80, seq: 8, ack: synAck.seq &+ 1, flags: .ack,
                                            window: 1000))
        let data = try h.oneSegment("the guest's ACK lets the waiting data out")
        #expect(data.payload == pattern(10) && data.seq == synAck.seq &+ 1)
    }

    @Test("a SYN without window scale gets a SYN-ACK without it, and unscaled windows after")
    func synWithoutWindowScale() throws {
        let h = TCPHarness(sendCapacity: 300_000)
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 50_001, dstPort: 80, seq: 42, ack: 0, flags: .syn, window: 8192,
                                            mss: 1400))
        let s = try #require(h.host.lastSocket)
        h.writable(s.tag)
        let synAck = try h.oneSegment()
        #expect(synAck.tcp.windowScale == nil)
        #expect(synAck.tcp.maxSegmentSize == 1460)
        #expect(synAck.tcp.window == 65535)
        // The guest's windows are not scaled either: 8192 bytes means 8192 bytes.
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 50_001, dstPort: 80, seq: 43, ack: synAck.seq &+ 1, flags: .ack,
                                            window: 3000, [1, 2, 3]))
        h.flush()
        let ack = try h.oneSegment()
        #expect(ack.ack == 46 && ack.tcp.window == 65535, "free space above 64 KiB shows as 65535 without scaling")
        h.host.remoteSends(s.handle, pattern(5000))
        h.readable(GuestConn(guestPort: 50_001, server: externalIP, serverPort: 80, seq: 46, iss: synAck.seq, guestWScale: 0,
                             ourWScale: 0, handle: s.handle, tag: s.tag, guestFirst: 43))
        let segs = try h.segments()
        #expect(segs.reduce(0) { $0 + $1.payload.count } == 3000, "only the guest's (unscaled) window of 3000 bytes")
        #expect(segs.allSatisfy { $0.payload.count <= 1400 }, "segments within the guest's MSS")
    }

    @Test("a SYN with wscale 0 still gets our window scale (both sides offered it)")
    func synWithWindowScaleZero() throws {
        let h = TCPHarness()
        let c = try h.connect(wscale: 0)
        #expect(c.ourWScale == TCPTiming.ourWindowScale)
    }

    @Test("a refused connect answers RST|ACK with ack = seq + 1 and frees the flow")
    func connectRefused() throws {
        let h = TCPHarness()
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_000, dstPort: 81, seq: 0xFFFF_FFFF, ack: 0, flags: .syn,
                                            window: 65535, mss: 1460, wscale: 7))
        let s = try #require(h.host.lastSocket)
        s.connectError = 111   // ECONNREFUSED
        h.writable(s.tag)
        let rst = try h.oneSegment()
        #expect(rst.flags == [.rst, .ack] && rst.seq == 0 && rst.ack == 0, "ack wraps: seq 0xFFFFFFFF + 1")
        #expect(rst.source == gatewayIP && rst.tcp.sourcePort == 81 && rst.tcp.destinationPort == 50_000)
        #expect(s.closed && !s.aborted)
        #expect(h.gateway.tcpFlowCount == 0)
        #expect(h.counters[.tcpConnectRefused] == 1)
        // A second writable event for the stale tag does nothing.
        h.writable(s.tag)
        #expect(h.drain().isEmpty)
    }

    @Test("the guest's ACK with a wrong ack number is answered with RST and the flow stays half-open")
    func wrongHandshakeAck() throws {
        let h = TCPHarness()
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_000, dstPort: 80, seq: 100, ack: 0, flags: .syn, window: 65535))
        let s = try #require(h.host.lastSocket)
        h.writable(s.tag)
        let synAck = try h.oneSegment()
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_000, dstPort: 80, seq: 101, ack: synAck.seq &+ 5, flags: .ack,
                                            window: 65535))
        let rst = try h.oneSegment()
        #expect(rst.flags == .rst && rst.seq == synAck.seq &+ 5)
        #expect(h.counters[.tcpBadAck] == 1)
        #expect(s.interest?.readable != true)
        // The right ACK still completes the handshake.
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_000, dstPort: 80, seq: 101, ack: synAck.seq &+ 1, flags: .ack,
                                            window: 65535))
        #expect(s.interest?.readable == true)
    }

    @Test("a retransmitted SYN gets the SYN-ACK again; an unacknowledged SYN-ACK is resent on RTO")
    func synRetransmissions() throws {
        let h = TCPHarness()
        let syn = FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_000, dstPort: 80, seq: 500, ack: 0, flags: .syn,
                                               window: 65535, mss: 1460, wscale: 7)
        h.send(syn)
        h.send(syn)   // before the connect completes: still one socket, nothing sent
        #expect(h.host.sockets.count == 1)
        #expect(h.drain().isEmpty)
        let s = try #require(h.host.lastSocket)
        h.writable(s.tag)
        let first = try h.oneSegment()
        h.send(syn)
        let again = try h.oneSegment()
        #expect(again.flags == [.syn, .ack] && again.seq == first.seq && again.ack == 501)
        h.advance(ms: 999); h.poll()
        #expect(h.drain().isEmpty)
        h.advance(ms: 1); h.poll()
        let rto = try h.oneSegment("SYN-ACK after one RTO")
        #expect(rto.flags == [.syn, .ack] && rto.seq == first.seq)
        h.advance(ms: 1999); h.poll()
        #expect(h.drain().isEmpty, "backed off to 2 s")
        h.advance(ms: 1); h.poll()
        #expect(try h.oneSegment().flags == [.syn, .ack])
    }

    @Test("a full flow table answers a new SYN with RST|ACK and counts it; existing flows keep working")
    func fullTable() throws {
        let h = TCPHarness { $0.tcpFlowCapacity = 2 }
        var a = try h.connect(from: 50_000)
        let b = try h.connect(from: 50_001)
        let before = h.counters
        h.send(FrameBuilder.tcpSegmentFrame(dst: gatewayIP, srcPort: 50_002, dstPort: 8080, seq: 9000, ack: 0, flags: .syn,
                                            window: 65535, mss: 1460, wscale: 7))
        #expect(dropDelta(before, h.counters) == [.tcpFlowTableFull: 1])
        let rst = try h.oneSegment()
        #expect(rst.flags == [.rst, .ack] && rst.ack == 9001 && rst.tcp.destinationPort == 50_002)
        #expect(h.host.sockets.count == 2, "no socket for the refused SYN")
        #expect(h.gateway.tcpFlowCount == 2)

        // Flow a still carries data both ways.
        h.guestSends(&a, ack: a.ourSeq(0), [9, 8, 7])
        h.flush()
        #expect(try h.host.socket(a.handle).written == [9, 8, 7])
        #expect(try h.oneSegment().ack == a.seq)
        h.host.remoteSends(a.handle, [1, 2])
        h.readable(a)
        #expect(try h.oneSegment().payload == [1, 2])

        // Once b is gone (guest RST), a new SYN gets a flow.
        h.send(h.frame(b, flags: .rst))
        #expect(h.gateway.tcpFlowCount == 1)
        _ = try h.connect(from: 50_003)
        #expect(h.gateway.tcpFlowCount == 2)
    }

    @Test("a socket that cannot be opened answers RST|ACK and counts hostSocketFailed")
    func openFails() throws {
        let h = TCPHarness()
        h.host.failOpen = true
        h.send(FrameBuilder.tcpSegmentFrame(dst: externalIP, srcPort: 50_000, dstPort: 80, seq: 1, ack: 0, flags: .syn, window: 65535))
        #expect(h.counters[.hostSocketFailed] == 1)
        let rst = try h.oneSegment()
        #expect(rst.flags == [.rst, .ack] && rst.ack == 2)
        #expect(h.gateway.tcpFlowCount == 0)
    }
}
