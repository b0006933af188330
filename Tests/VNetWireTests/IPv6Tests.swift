// IPv6 addresses (RFC 4291 text in, RFC 5952 text out), the fixed header, the extension-header walk, NDP
// options and DHCPv6 parsing, with every truncation.

import Testing
import VNetWire

@Suite("IPv6 wire")
struct IPv6WireTests {
    @Test("addresses parse and print in RFC 5952 form", arguments: [
        ("::", "::"), ("::1", "::1"), ("fec0::2", "fec0::2"), ("FE80:0:0:0:5054:FF:FE12:3456", "fe80::5054:ff:fe12:3456"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("2001:0db8:0000:0000:0000:0000:0002:0001", "2001:db8::2:1"),
        ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"), ("1::", "1::"), ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
    ])
    func addressText(input: String, expected: String) throws {
        let a = try #require(IPv6Address(input))
        #expect(a.description == expected)
        #expect(IPv6Address(a.description) == a)
        #expect(IPv6Address(bytes: a.bytes) == a)
    }

    @Test("malformed address text is refused", arguments: [
        "", ":", ":::", "1:2:3:4:5:6:7:8:9", "1::2::3", "12345::", "g::1", "1:2:3:4:5:6:7", "::1.2.3", "fe80::1%eth0", "[::1]",
        "1:2:3:4:5:6:7::8:9",
    ])
    func badAddressText(input: String) {
        #expect(IPv6Address(input) == nil, "\(input)")
    }

    @Test("classification, solicited-node group, multicast MAC and the EUI-64 interface identifier")
    func classification() throws {
        let ll = try #require(IPv6Address("fe80::5054:ff:fe12:3456"))
        #expect(ll.isLinkLocal && !ll.isMulticast && !ll.isUnspecified)
        #expect(IPv6Address.allNodes.isMulticast && IPv6Address.loopback.isLoopback)
        #expect(ll.solicitedNode == IPv6Address("ff02::1:ff12:3456"))
        #expect(IPv6Address.allNodes.multicastMAC == MACAddress(0x33, 0x33, 0, 0, 0, 1))
        #expect(IPv6Address.interfaceIdentifier(of: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56)) == ll.low)
        let net = IPv6Network(address: try #require(IPv6Address("fec0::")), prefixLength: 64)
        #expect(net.contains(try #require(IPv6Address("fec0::5054:ff:fe12:3456"))))
        #expect(!net.contains(try #require(IPv6Address("fec0:0:0:1::1"))))
        #expect(IPv6Network(address: try #require(IPv6Address("2001:db8::ff")), prefixLength: 120).address == IPv6Address("2001:db8::"))
        let v4 = IPAddress(IPv4Address(10, 0, 2, 15))
        #expect(v4.isIPv4 && v4.v4 == IPv4Address(10, 0, 2, 15) && v4.description == "10.0.2.15")
        #expect(IPAddress(ll).bracketed == "[fe80::5054:ff:fe12:3456]" && IPAddress(ll).v4 == nil)
    }

    @Test("the fixed header: emit/parse round trip, every truncation, payload length past the bytes, padding excluded")
    func header() throws {
        let h = IPv6Header(trafficClass: 0xB8, flowLabel: 0x12345, payloadLength: 8, nextHeader: 17, hopLimit: 3,
                           source: IPv6Address("fec0::15")!, destination: IPv6Address("2001:db8::1")!)
        var b = [UInt8](repeating: 0, count: 48)
        b.withUnsafeMutableBytes { _ = h.emit(into: $0) }
        #expect(try b.withUnsafeBytes { try IPv6Header.parse($0) } == h)
        for n in 0 ..< 48 {
            #expect(throws: WireError.malformed) { try Array(b[..<n]).withUnsafeBytes { try IPv6Header.parse($0) } }
        }
        let padded = b + [0xEE, 0xEE]
        #expect(try padded.withUnsafeBytes { try IPv6Header.parse($0) }.payloadRange == 40 ..< 48)
        var v4 = b
        v4[0] = 0x45
        #expect(throws: WireError.malformed) { try v4.withUnsafeBytes { try IPv6Header.parse($0) } }
    }

    @Test("extension headers: walked with lengths checked; a fragment header ends the walk; loops are bounded")
    func extensions() throws {
        // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP.
        let hbh: [UInt8] = [60, 0, 1, 4, 0, 0, 0, 0]
        let dst: [UInt8] = [17, 1] + [UInt8](repeating: 0, count: 14)
        let p = hbh + dst + [UInt8](repeating: 0, count: 8)
        let u = try p.withUnsafeBytes { try IPv6Header.upperLayer($0, nextHeader: 0) }
        #expect(u.protocolNumber == 17 && u.offset == 24 && u.fragment == nil)
        for n in [0, 4, 8, 12, 23] {
            #expect(throws: WireError.malformed) { try Array(p[..<n]).withUnsafeBytes { try IPv6Header.upperLayer($0, nextHeader: 0) } }
        }
        // Hop-by-hop anywhere but first is malformed.
        let late: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0] + hbh
        #expect(throws: WireError.malformed) { try late.withUnsafeBytes { try IPv6Header.upperLayer($0, nextHeader: 60) } }
        // Fragment header: offset 0x1234 & ~7, M set, id.
        let frag: [UInt8] = [58, 0, 0x12, 0x31, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2]
        let f = try frag.withUnsafeBytes { try IPv6Header.upperLayer($0, nextHeader: 44) }
        #expect(f.fragment == IPv6Header.Fragment(offset: 0x1230, moreFragments: true, identification: 0xDEAD_BEEF))
        #expect(f.protocolNumber == 58 && f.fragmentableOffset == 8)
        // A chain of more than 8 destination-options headers.
        let chain: [UInt8] = (0 ..< 10).flatMap { _ -> [UInt8] in [60, 0, 0, 0, 0, 0, 0, 0] }
        #expect(throws: WireError.malformed) { try chain.withUnsafeBytes { try IPv6Header.upperLayer($0, nextHeader: 60) } }
    }

    @Test("NDP options: a zero length or one past the end is malformed")
    func ndpOptions() throws {
        let mac = MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56)
        let good: [UInt8] = [1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]
        #expect(try good.withUnsafeBytes { try NDPOption.linkLayerAddress($0, kind: 1) } == mac)
        #expect(try good.withUnsafeBytes { try NDPOption.linkLayerAddress($0, kind: 2) } == nil)
        for bad: [UInt8] in [[1, 0, 0, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0, 0, 0], [1]] {
            #expect(throws: WireError.malformed) { try bad.withUnsafeBytes { try NDPOption.linkLayerAddress($0, kind: 1) } }
        }
    }

    @Test("DHCPv6: options walked with lengths checked; the reply echoes the client ID or refuses to overrun")
    func dhcpv6() throws {
        let msg: [UInt8] = [11, 1, 2, 3, 0, 1, 0, 4, 9, 8, 7, 6, 0, 8, 0, 2, 0, 0]
        let m = try msg.withUnsafeBytes { try DHCPv6Message.parse($0) }
        #expect(m.type == 11 && m.transactionID == 0x010203 && m.clientID == 8 ..< 12)
        for n in [0, 3, 5, 7, 9, 13, 17] {
            #expect(throws: WireError.malformed) { try Array(msg[..<n]).withUnsafeBytes { try DHCPv6Message.parse($0) } }
        }
        var out = [UInt8](repeating: 0, count: 64)
        let n = try #require(msg.withUnsafeBytes { req in
            out.withUnsafeMutableBytes { m.emitReply(request: req, serverMAC: .broadcast, dnsServers: [IPv6Address("fec0::3")!], searchList: [], into: $0) }
        })
        #expect(n == 4 + 14 + 8 + 20)
        #expect(Array(out[0 ..< 4]) == [7, 1, 2, 3] && Array(out[18 ..< 26]) == [0, 1, 0, 4, 9, 8, 7, 6])
        var small = [UInt8](repeating: 0, count: n - 1)
        let refused = msg.withUnsafeBytes { req in
            small.withUnsafeMutableBytes { m.emitReply(request: req, serverMAC: .broadcast, dnsServers: [IPv6Address("fec0::3")!], searchList: [], into: $0) }
        }
        #expect(refused == nil)
    }
}
