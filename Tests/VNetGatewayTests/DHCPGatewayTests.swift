// DHCP through the gateway: addressing of replies, the options QEMU's guests rely on, and the lease rules.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

/// A DHCP reply from the gateway, checked at the UDP layer (10.0.2.2:67 -> `dst`:68) and parsed.
func expectDHCP(_ f: [UInt8], dst: IPv4Address, toMAC: MACAddress = guestMAC,
                sourceLocation: SourceLocation = #_sourceLocation) throws -> (message: DHCPMessage, options: [UInt8: [UInt8]]) {
    let payload = try expectUDP(f, src: gatewayIP, srcPort: 67, dst: dst, dstPort: 68, toMAC: toMAC, sourceLocation: sourceLocation)
    let m = try #require(parsed(payload) { try DHCPMessage.parse($0) }, sourceLocation: sourceLocation)
    #expect(m.op == 2, sourceLocation: sourceLocation)
    return (m, dhcpOptions(payload))
}

/// Options after the fixed header; repeated codes concatenated (RFC 3396).
func dhcpOptions(_ p: [UInt8]) -> [UInt8: [UInt8]] {
    var out: [UInt8: [UInt8]] = [:]
    var i = 240
    while i < p.count {
        let code = p[i]
        if code == 0 { i += 1; continue }
        if code == 255 { break }
        guard i + 1 < p.count, i + 2 + Int(p[i + 1]) <= p.count else { Issue.record("option \(code) runs past the end"); break }
        out[code, default: []] += p[i + 2 ..< i + 2 + Int(p[i + 1])]
        i += 2 + Int(p[i + 1])
    }
    return out
}

func addressBytes(_ a: IPv4Address) -> [UInt8] {
    [UInt8(a.rawValue >> 24), UInt8(a.rawValue >> 16 & 0xFF), UInt8(a.rawValue >> 8 & 0xFF), UInt8(a.rawValue & 0xFF)]
}

extension GatewayHarness {
    /// DISCOVER + REQUEST for `mac`; returns the ACKed address.
    func dhcpLease(_ mac: MACAddress, sourceLocation: SourceLocation = #_sourceLocation) throws -> IPv4Address {
        let offers = exchange(FrameBuilder.dhcpFrame(.discover, mac: mac), sourceLocation: sourceLocation)
        try #require(offers.count == 1, sourceLocation: sourceLocation)
        let offered = try #require(parsed(offers[0][42...]) { try DHCPMessage.parse($0) }, sourceLocation: sourceLocation).yourAddress
        let acks = exchange(FrameBuilder.dhcpFrame(.request, mac: mac, requested: offered, serverID: gatewayIP),
                            sourceLocation: sourceLocation)
        try #require(acks.count == 1, sourceLocation: sourceLocation)
        let (ack, _) = try expectDHCP(acks[0], dst: offered, toMAC: mac, sourceLocation: sourceLocation)
        #expect(ack.messageType == .ack, sourceLocation: sourceLocation)
        return ack.yourAddress
    }
}

@Suite("Gateway DHCP")
struct DHCPGatewayTests {
    @Test("DISCOVER gets an OFFER of 10.0.2.15 with router, DNS, mask, MTU and lease time")
    func offer() throws {
        let h = GatewayHarness()
        let frames = h.exchange(FrameBuilder.dhcpFrame(.discover, xid: 0xABCD_0001))
        try #require(frames.count == 1)
        let (m, o) = try expectDHCP(frames[0], dst: guestIP)
        #expect(m.messageType == .offer && m.transactionID == 0xABCD_0001 && m.yourAddress == guestIP && m.clientMAC == guestMAC)
        #expect(m.serverIdentifier == gatewayIP)
        #expect(o[1] == [255, 255, 255, 0])
        #expect(o[3] == addressBytes(gatewayIP))
        #expect(o[6] == addressBytes(dnsIP))
        #expect(o[26] == [0x05, 0xDC])
        #expect(o[51] == [0x00, 0x01, 0x51, 0x80])   // 86400 s
        #expect(o[12] == nil && o[15] == nil && o[119] == nil)
        #expect(h.counters[.dhcpReplies] == 1)
    }

    @Test("hostname, domain, search list and MTU come from GatewayConfig")
    func configuredOptions() throws {
        let h = GatewayHarness {
            $0.hostName = "guest1"
            $0.domainName = "vnet.test"
            $0.dnsSearch = ["vnet.test", "corp.example"]
            $0.mtu = 1400
            $0.leaseTime = .seconds(3600)
        }
        let frames = h.exchange(FrameBuilder.dhcpFrame(.discover))
        try #require(frames.count == 1)
        let (_, o) = try expectDHCP(frames[0], dst: guestIP)
        #expect(o[12] == Array("guest1".utf8))
        #expect(o[15] == Array("vnet.test".utf8))
        #expect(o[119] == [4] + Array("vnet".utf8) + [4] + Array("test".utf8) + [0] + [4] + Array("corp".utf8) + [7] + Array("example".utf8) + [0])
        #expect(o[26] == [0x05, 0x78])
        #expect(o[51] == [0, 0, 0x0E, 0x10])
    }

    @Test("REQUEST gets an ACK; a second MAC gets 10.0.2.16")
    func requestAndSecondMAC() throws {
        let h = GatewayHarness()
        #expect(try h.dhcpLease(guestMAC) == guestIP)
        #expect(try h.dhcpLease(otherGuestMAC) == IPv4Address(10, 0, 2, 16))
        #expect(h.gateway.dhcp.lease(for: guestMAC, now: h.now) == guestIP)
    }

    @Test("a rebooted guest (new DISCOVER, later) gets its old address back")
    func reboot() throws {
        let h = GatewayHarness()
        #expect(try h.dhcpLease(guestMAC) == guestIP)
        #expect(try h.dhcpLease(otherGuestMAC) == IPv4Address(10, 0, 2, 16))
        h.advance(.seconds(3 * 24 * 3600))   // well past the lease
        #expect(try h.dhcpLease(guestMAC) == guestIP)
    }

    @Test("REQUEST for an address held by another MAC is NAKed, to the broadcast addresses")
    func nak() throws {
        let h = GatewayHarness()
        #expect(try h.dhcpLease(guestMAC) == guestIP)
        let frames = h.exchange(FrameBuilder.dhcpFrame(.request, mac: otherGuestMAC, requested: guestIP, serverID: gatewayIP))
        try #require(frames.count == 1)
        let (m, o) = try expectDHCP(frames[0], dst: .broadcast, toMAC: .broadcast)
        #expect(m.messageType == .nak && m.yourAddress == .any && m.clientMAC == otherGuestMAC)
        #expect(o[51] == nil)
    }

    @Test("replies to a request with the broadcast flag go to ff:ff:ff:ff:ff:ff and 255.255.255.255")
    func broadcastFlag() throws {
        let h = GatewayHarness()
        let offers = h.exchange(FrameBuilder.dhcpFrame(.discover, broadcastFlag: true))
        try #require(offers.count == 1)
        #expect(try expectDHCP(offers[0], dst: .broadcast, toMAC: .broadcast).message.yourAddress == guestIP)
        let acks = h.exchange(FrameBuilder.dhcpFrame(.request, broadcastFlag: true, requested: guestIP, serverID: gatewayIP))
        try #require(acks.count == 1)
        #expect(try expectDHCP(acks[0], dst: .broadcast, toMAC: .broadcast).message.messageType == .ack)
    }

    @Test("a DHCP message unicast to the gateway address is served as well")
    func unicastToGateway() throws {
        let h = GatewayHarness()
        #expect(try h.dhcpLease(guestMAC) == guestIP)
        let frames = h.exchange(FrameBuilder.dhcpFrame(.request, ciaddr: guestIP, src: guestIP, dst: gatewayIP))
        try #require(frames.count == 1)
        #expect(try expectDHCP(frames[0], dst: guestIP).message.messageType == .ack)
    }

    @Test("INFORM from a configured guest is ACKed to its address, without a lease time")
    func inform() throws {
        let h = GatewayHarness()
        let me = IPv4Address(10, 0, 2, 50)
        let frames = h.exchange(FrameBuilder.dhcpFrame(.inform, ciaddr: me, src: me, dst: gatewayIP))
        try #require(frames.count == 1)
        let (m, o) = try expectDHCP(frames[0], dst: me)
        #expect(m.messageType == .ack && m.yourAddress == .any)
        #expect(o[51] == nil && o[3] == addressBytes(gatewayIP))
    }

    @Test("a pool that runs out answers nobody new, and says so")
    func poolExhausted() throws {
        let h = GatewayHarness { $0.dhcpPoolSize = 1 }
        #expect(try h.dhcpLease(guestMAC) == guestIP)
        h.expectDrop(.dhcpPoolExhausted, FrameBuilder.dhcpFrame(.discover, mac: otherGuestMAC))
        #expect(try h.dhcpLease(guestMAC) == guestIP)
    }

    @Test("RELEASE and messages not for this server send nothing")
    func nothingToSend() throws {
        let h = GatewayHarness()
        #expect(try h.dhcpLease(guestMAC) == guestIP)
        h.expectDrop(.dhcpIgnored, FrameBuilder.dhcpFrame(.release, ciaddr: guestIP, serverID: gatewayIP, src: guestIP, dst: gatewayIP))
        #expect(h.gateway.dhcp.lease(for: guestMAC, now: h.now) == nil)
        h.expectDrop(.dhcpIgnored, FrameBuilder.dhcpFrame(.request, requested: guestIP, serverID: IPv4Address(10, 0, 2, 99)))
    }
}
