// TCP with a host that cannot connect: every attempt is refused at once with a well-formed RST, so the guest
// never hangs. (The TCP NAT itself is tested with its own fake host; this only pins the refusal contract.)

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway TCP refusal")
struct TCPRefusalTests {
    func expectRST(_ f: [UInt8], from src: IPv4Address, srcPort: UInt16, toPort: UInt16,
                   sourceLocation: SourceLocation = #_sourceLocation) throws -> TCPHeader {
        let p = try expectIPv4(f, src: src, dst: guestIP, proto: .tcp, sourceLocation: sourceLocation)
        let tcp = try #require(parsed(p.payload) { try TCPHeader.parse($0) }, sourceLocation: sourceLocation)
        #expect(tcp.sourcePort == srcPort && tcp.destinationPort == toPort, sourceLocation: sourceLocation)
        #expect(tcp.flags.contains(.rst), sourceLocation: sourceLocation)
        let sum = p.payload.withUnsafeBytes {
            InternetChecksum.add($0, to: InternetChecksum.pseudoHeader(source: src, destination: guestIP, protocolNumber: 6,
                                                                       length: p.payload.count))
        }
        #expect(InternetChecksum.finish(sum) == 0, "TCP checksum", sourceLocation: sourceLocation)
        return tcp
    }

    @Test("SYN that cannot be connected gets RST|ACK with ack = seq + 1",
          arguments: [(externalIP, 1000), (gatewayIP, 0xFFFF_FFFF)] as [(IPv4Address, UInt32)])
    func synRefused(dst: IPv4Address, seq: UInt32) throws {
        let h = GatewayHarness()
        let before = h.counters
        h.send(FrameBuilder.tcpFrame(dst: dst, srcPort: 50_000, dstPort: 80, seq: seq, flags: .syn))
        #expect(h.counters.totalDrops - before.totalDrops == 1)
        let frames = h.drain()
        try #require(frames.count == 1)
        let rst = try expectRST(frames[0], from: dst, srcPort: 80, toPort: 50_000)
        #expect(rst.flags == [.rst, .ack] && rst.sequence == 0 && rst.acknowledgment == seq &+ 1)
        #expect(h.gateway.tcpFlowCount == 0)
    }

    @Test("SYN to a martian destination gets RST|ACK and is counted as martian")
    func synMartian() throws {
        let h = GatewayHarness()
        h.expectDrop(.martianDestination, FrameBuilder.tcpFrame(dst: .loopback, dstPort: 22, seq: 1000, flags: .syn), allowReply: true)
        h.send(FrameBuilder.tcpFrame(dst: .loopback, dstPort: 22, seq: 1000, flags: .syn))
        let frames = h.drain()
        try #require(frames.count == 1)
        let rst = try expectRST(frames[0], from: .loopback, srcPort: 22, toPort: 50_000)
        #expect(rst.flags == [.rst, .ack] && rst.acknowledgment == 1001)
    }

    @Test("a segment with ACK and no flow gets RST with seq = its ack")
    func ackWithoutFlow() throws {
        let h = GatewayHarness()
        h.expectDrop(.tcpNoFlow, FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 5, ack: 0x1234_5678, flags: [.ack, .psh], pattern(10)),
                     allowReply: true)
        h.send(FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 5, ack: 0x1234_5678, flags: [.ack], pattern(10)))
        let frames = h.drain()
        try #require(frames.count == 1)
        let rst = try expectRST(frames[0], from: externalIP, srcPort: 80, toPort: 50_000)
        #expect(rst.flags == .rst && rst.sequence == 0x1234_5678)
    }

    @Test("an RST with no flow is never answered")
    func rstNotAnswered() {
        let h = GatewayHarness()
        h.expectDrop(.tcpNoFlow, FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 5, flags: [.rst]))
    }
}
