// Local DNS records: names in the table are answered by the gateway itself, everything else is forwarded.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway local DNS records")
struct LocalDNSTests {
    static func query(id: UInt16, name: String, type: UInt16) -> [UInt8] {
        var q = FrameBuilder.dnsQuery(id: id, name: name)
        q[q.count - 4] = UInt8(type >> 8)
        q[q.count - 3] = UInt8(type & 0xFF)
        return q
    }

    @Test("an A record is answered locally (AA, the question echoed, a pointer to it, TTL and address); nothing goes upstream")
    func answersA() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        try h.gateway.localDNS.add(name: "Build.Test.", type: .a, value: "192.0.2.7", ttl: 30)
        let q = FrameBuilder.dnsQuery(id: 0x4242, name: "build.TEST")
        let frames = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_000, dstPort: 53, q))
        try #require(frames.count == 1)
        let reply = try expectUDP(frames[0], src: dnsIP, srcPort: 53, dstPort: 40_000)
        let header = try #require(parsed(reply) { try DNSHeader.parse($0) })
        #expect(header.id == 0x4242 && header.isResponse && header.responseCode == 0)
        #expect(header.flags & 0x0400 != 0 && header.flags & 0x0100 != 0)   // AA, and RD copied
        #expect(header.questionCount == 1 && header.answerCount == 1)
        #expect(Array(reply[12 ..< q.count]) == Array(q[12...]))
        #expect(Array(reply[q.count...]) == [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 7])
        #expect(h.host.opens.isEmpty && h.host.sent.isEmpty)
        #expect(h.counters[.dnsLocalAnswers] == 1 && h.counters[.dnsQueries] == 1)
    }

    @Test("a known name asked for another type gets NODATA; TXT records are answered")
    func nodataAndTXT() throws {
        let h = GatewayHarness()
        try h.gateway.localDNS.add(name: "svc.test", type: .txt, value: "v=1")
        let aaaa = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_001, dstPort: 53, LocalDNSTests.query(id: 1, name: "svc.test", type: 28)))
        try #require(aaaa.count == 1)
        let r1 = try expectUDP(aaaa[0], src: dnsIP, srcPort: 53, dstPort: 40_001)
        let h1 = try #require(parsed(r1) { try DNSHeader.parse($0) })
        #expect(h1.responseCode == 0 && h1.answerCount == 0)
        let txt = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_001, dstPort: 53, LocalDNSTests.query(id: 2, name: "svc.test", type: 16)))
        let r2 = try expectUDP(txt[0], src: dnsIP, srcPort: 53, dstPort: 40_001)
        #expect(Array(r2.suffix(4)) == [3, UInt8(ascii: "v"), UInt8(ascii: "="), UInt8(ascii: "1")])
        #expect(try #require(parsed(r2) { try DNSHeader.parse($0) }).answerCount == 1)
    }

    @Test("other names are forwarded; after removal the name is forwarded too")
    func forwardsOthers() throws {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        try h.gateway.localDNS.add(name: "local.test", type: .a, value: "192.0.2.8")
        #expect(h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_002, dstPort: 53, FrameBuilder.dnsQuery(id: 3))).isEmpty)
        #expect(h.host.sent.count == 1)
        #expect(h.gateway.localDNS.remove(name: "LOCAL.test") == 1)
        _ = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_002, dstPort: 53, FrameBuilder.dnsQuery(id: 4, name: "local.test")))
        #expect(h.host.sent.count == 2)
        #expect(h.counters[.dnsLocalAnswers] == 0)
    }

    @Test("AAAA and SRV records are answered with their wire forms")
    func aaaaAndSRV() throws {
        let h = GatewayHarness()
        try h.gateway.localDNS.add(name: "v6.test", type: .aaaa, value: "2001:db8::1:2", ttl: 5)
        try h.gateway.localDNS.add(name: "_sip._udp.test", type: .srv, value: "10 5 5060 sip.test", ttl: 5)
        let a = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_002, dstPort: 53, LocalDNSTests.query(id: 3, name: "v6.test", type: 28)))
        let r1 = try expectUDP(a[0], src: dnsIP, srcPort: 53, dstPort: 40_002)
        #expect(Array(r1.suffix(18)) == [0, 16, 0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2])
        let srv = h.exchange(FrameBuilder.udpFrame(dst: dnsIP, srcPort: 40_002, dstPort: 53, LocalDNSTests.query(id: 4, name: "_sip._udp.test", type: 33)))
        let r2 = try expectUDP(srv[0], src: dnsIP, srcPort: 53, dstPort: 40_002)
        let target: [UInt8] = [3] + Array("sip".utf8) + [4] + Array("test".utf8) + [0]
        #expect(Array(r2.suffix(6 + target.count)) == [0, 10, 0, 5, 0x13, 0xC4] + target)
        #expect(LocalDNSRecords.ipv6Bytes("::") == [UInt8](repeating: 0, count: 16))
        #expect(LocalDNSRecords.ipv6Bytes("::ffff:192.0.2.1")?.suffix(6) == [0xFF, 0xFF, 192, 0, 2, 1])
        for bad in ["1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "1:2:3", ":::", "g::1"] {
            #expect(LocalDNSRecords.ipv6Bytes(bad) == nil, "\(bad)")
        }
    }

    @Test("bad records are refused with a reason", arguments: [
        ("", LocalDNSType.a, "192.0.2.1"), ("a..b", .a, "192.0.2.1"), ("ok.test", .a, "not-an-address"),
        (String(repeating: "x", count: 64) + ".test", .a, "192.0.2.1"), ("ok.test", .txt, String(repeating: "t", count: 256)),
        ("ok.test", .aaaa, "192.0.2.1"), ("ok.test", .srv, "10 5 sip.test"), ("ok.test", .srv, "1 2 70000 sip.test"),
    ])
    func refused(name: String, type: LocalDNSType, value: String) {
        var table = LocalDNSRecords()
        #expect(throws: LocalDNSError.self) { try table.add(name: name, type: type, value: value) }
        #expect(table.isEmpty)
    }

    @Test("hostile queries (truncated, compressed, responses) are never answered locally")
    func hostileQueries() throws {
        var table = LocalDNSRecords()
        try table.add(name: "x.test", type: .a, value: "192.0.2.9")
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 1)
        defer { out.deallocate() }
        let good = FrameBuilder.dnsQuery(id: 9, name: "x.test")
        var response = good; response[2] |= 0x80
        var compressed = good; compressed[12] = 0xC0
        let cases: [[UInt8]] = [[], Array(good.prefix(11)), Array(good.prefix(good.count - 1)), response, compressed]
        for q in cases { #expect(q.withUnsafeBytes { table.answer(query: $0, into: out) } == nil) }
        #expect(good.withUnsafeBytes { table.answer(query: $0, into: out) } != nil)
    }

    @Test("adding the same record twice keeps one; the table has a cap")
    func dedupAndCap() throws {
        var table = LocalDNSRecords()
        try table.add(name: "a.test", type: .a, value: "192.0.2.1")
        try table.add(name: "A.test", type: .a, value: "192.0.2.1")
        #expect(table.records.count == 1)
        for i in 1 ..< LocalDNSRecords.capacity { try table.add(name: "h\(i).test", type: .a, value: "192.0.2.1") }
        #expect(throws: LocalDNSError.self) { try table.add(name: "one-more.test", type: .a, value: "192.0.2.1") }
    }
}
