// Guest datagrams gathered within one read of the guest port and sent as one UDP GSO batch
// (GatewayUDPBatch.swift): same flow and size only, order kept, flushed before anything that changes the socket.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway UDP: datagrams gathered into GSO batches")
struct UDPGatherTests {
    static func gathering() -> GatewayHarness {
        let h = GatewayHarness()
        h.gateway.gathersGuestDatagrams = true
        return h
    }

    @Test("same-size datagrams of one flow go out as one batch, in order, only when the runtime flushes")
    func oneBatch() throws {
        let h = Self.gathering()
        let data = (0 ..< 5).map { pattern(1000, seed: UInt8($0)) }
        for d in data { h.send(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 9000, d)) }
        #expect(h.host.sent.isEmpty, "nothing before the flush")
        h.gateway.flushGuestSends()
        let handle = try h.lastOpen().handle
        #expect(h.host.sent == data.map { FakeHost.Sent(handle: handle, bytes: $0) })
        #expect(h.host.segmentSends.map(\.count) == [5] && h.host.segmentSends.map(\.segmentSize) == [1000])
        h.gateway.flushGuestSends()
        #expect(h.host.sent.count == 5, "a second flush sends nothing")
    }

    @Test("a shorter datagram ends a batch; a longer one starts a new one")
    func sizes() {
        let h = Self.gathering()
        for n in [1000, 1000, 500, 1000, 1200] { h.send(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 9000, pattern(n))) }
        h.gateway.flushGuestSends()
        #expect(h.host.segmentSends.map(\.count) == [3, 1, 1])
        #expect(h.host.sent.map(\.bytes.count) == [1000, 1000, 500, 1000, 1200])
    }

    @Test("interleaved flows keep each flow's order")
    func interleaved() {
        let h = Self.gathering()
        for k in 0 ..< 4 {
            h.send(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_001, dstPort: 9000, pattern(300, seed: UInt8(k))))
            h.send(FrameBuilder.udpFrame(dst: gatewayIP, srcPort: 40_002, dstPort: 9000, pattern(300, seed: UInt8(10 + k))))
        }
        h.gateway.flushGuestSends()
        let handles = h.host.opens.map(\.handle)
        #expect(handles.count == 2)
        let first: [[UInt8]] = h.host.sent.filter { $0.handle == handles[0] }.map(\.bytes)
        let second: [[UInt8]] = h.host.sent.filter { $0.handle == handles[1] }.map(\.bytes)
        let expectFirst: [[UInt8]] = (0 ..< 4).map { pattern(300, seed: UInt8($0)) }
        let expectSecond: [[UInt8]] = (0 ..< 4).map { pattern(300, seed: UInt8(10 + $0)) }
        #expect(first == expectFirst)
        #expect(second == expectSecond)
    }

    @Test("a TTL change sends the batch first, under the old TTL")
    func ttlChangeFlushes() {
        let h = Self.gathering()
        h.send(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 9000, ttl: 64, pattern(100)))
        h.send(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 9000, ttl: 64, pattern(100)))
        h.send(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 9000, ttl: 5, pattern(100)))
        h.gateway.flushGuestSends()
        #expect(h.host.log == ["gso 2", "ttl 5", "gso 1"])
    }

    @Test("a full batch goes out at 64 datagrams")
    func capacity() {
        let h = Self.gathering()
        for _ in 0 ..< 70 { h.send(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 9000, pattern(200))) }
        h.gateway.flushGuestSends()
        #expect(h.host.segmentSends.map(\.count) == [64, 6])
    }

    @Test("DNS queries are sent at once, and nothing is gathered unless the runtime asks")
    func dnsAndDefault() {
        let h = Self.gathering()
        h.gateway.setDNSUpstreams([(IPv4Address(127, 0, 0, 53), UInt16(53))])
        h.send(FrameBuilder.udpFrame(dst: IPv4Address(10, 0, 2, 3), dstPort: 53, pattern(40)))
        #expect(h.host.sent.count == 1 && h.host.segmentSends.isEmpty)

        let plain = GatewayHarness()
        plain.send(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 9000, pattern(100)))
        #expect(plain.host.sent.count == 1 && plain.host.segmentSends.isEmpty)
    }

    @Test("a batch the host could not send is counted, datagram by datagram")
    func failedSendCounted() {
        let h = Self.gathering()
        h.host.failSend = true
        for _ in 0 ..< 3 { h.send(FrameBuilder.udpFrame(dst: gatewayIP, dstPort: 9000, pattern(100))) }
        let before = h.counters
        h.gateway.flushGuestSends()
        #expect(dropDelta(before, h.counters) == [.hostSendFailed: 3])
    }
}
