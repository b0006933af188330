// A frame a port's path cannot carry (a VXLAN underlay): the gateway answers its sender as a router on the path
// would, with ICMP "fragmentation needed" and the next-hop MTU; nothing for a packet without DF.

import Testing
@testable import VNetGateway
import VNetWire

@Suite("Gateway path MTU")
struct PathMTUTests {
    let remote = IPv4Address(10, 0, 2, 77)

    func bigFrame(flags: UInt16) -> [UInt8] {
        FrameBuilder.ethernet(to: MACAddress(rawValue: 0x5254_0000_0077), type: .ipv4,
                              FrameBuilder.ipv4(dst: remote, proto: .udp, flags: flags,
                                                FrameBuilder.udp(src: guestIP, dst: remote, srcPort: 4000, dstPort: 5000, Array(repeating: 7, count: 1472))))
    }

    @Test("DF set: ICMP type 3 code 4 to the sender's MAC, with the MTU and the quoted header")
    func fragmentationNeeded() throws {
        let h = GatewayHarness()
        bigFrame(flags: 0x4000).withUnsafeBytes { h.gateway.answerFrameTooBig($0, mtu: 1450) }
        let out = h.drain()
        try #require(out.count == 1)
        let f = out[0]
        try f.withUnsafeBytes { b in
            let eth = try EthernetHeader.parse(b)
            #expect(eth.destination == guestMAC)
            let ip = try IPv4Header.parse(b.slice(14 ..< b.count))
            #expect(ip.source == gatewayIP && ip.destination == guestIP && ip.protocolNumber == .icmp)
            let icmp = try ICMPv4Header.parse(b.slice(34 ..< b.count))
            #expect(icmp.type == 3 && icmp.code == 4 && icmp.restOfHeader == 1450)
            let quoted = b.slice(42 ..< b.count)   // the quoted header (its total length is the original's, 1500)
            #expect(quoted.u16(2) == 1500 && IPv4Address(reading: quoted, at: 12) == guestIP && IPv4Address(reading: quoted, at: 16) == remote)
        }
        #expect(h.counters[.icmpErrorsToGuest] == 1)
    }

    @Test("no DF, a truncated packet or a bad MTU: nothing is sent")
    func nothing() {
        let h = GatewayHarness()
        bigFrame(flags: 0).withUnsafeBytes { h.gateway.answerFrameTooBig($0, mtu: 1450) }
        Array(bigFrame(flags: 0x4000)[0 ..< 40]).withUnsafeBytes { h.gateway.answerFrameTooBig($0, mtu: 1450) }
        bigFrame(flags: 0x4000).withUnsafeBytes { h.gateway.answerFrameTooBig($0, mtu: 20) }
        #expect(h.drain().isEmpty)
    }
}
