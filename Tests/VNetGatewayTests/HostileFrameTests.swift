// BAD-INPUTS 1, 2, 4, 5 (and neighbours): hostile frames are each dropped under exactly one named reason,
// nothing is sent to the guest, no host socket is opened, and nothing crashes.

import Testing
@testable import VNetGateway
import VNetWire

struct HostileCase: Sendable, CustomTestStringConvertible {
    var name: String
    var frame: [UInt8]
    var reason: DropReason
    var testDescription: String { "\(name) -> \(reason.name)" }
}

/// A valid UDP frame to an external address (75 bytes with a 33-byte payload), for mutation.
func validUDPFrame(payload: Int = 33) -> [UInt8] {
    FrameBuilder.udpFrame(dst: externalIP, srcPort: 40_000, dstPort: 9, pattern(payload))
}

let hostileCases: [HostileCase] = {
    var cases: [HostileCase] = []
    func add(_ name: String, _ reason: DropReason, _ frame: [UInt8]) { cases.append(HostileCase(name: name, frame: frame, reason: reason)) }
    func mutated(_ base: [UInt8] = validUDPFrame(), fixChecksum: Bool = false, _ edit: (inout [UInt8]) -> Void) -> [UInt8] {
        var f = base
        edit(&f)
        if fixChecksum { f.fixIPv4Checksum() }
        return f
    }

    // Link layer.
    add("unknown ethertype 0x88F8 (NC-SI)", .unknownEtherType,
        FrameBuilder.ethernet(type: EtherType(rawValue: 0x88F8), pattern(46)))
    add("ethertype 0x0000", .unknownEtherType, FrameBuilder.ethernet(type: EtherType(rawValue: 0), pattern(46)))
    add("IPv6 hop-by-hop header past the payload", .ipv6Malformed, FrameBuilder.ethernet(type: .ipv6, [0x60] + [UInt8](repeating: 0, count: 53)))
    add("VLAN-tagged ARP", .vlanTagged,
        FrameBuilder.ethernet(to: .broadcast, type: .arp, vlan: 5, Array(FrameBuilder.arpFrame(targetIP: gatewayIP)[14...])))
    add("VLAN tag cut short", .ethernetTruncated, Array(FrameBuilder.ethernet(type: .ipv4, vlan: 5, [])[..<16]))
    add("foreign unicast MAC", .notForGateway, FrameBuilder.udpFrame(dst: externalIP, dstPort: 9, ethDst: otherGuestMAC, pattern(4)))
    add("multicast MAC", .notForGateway,
        FrameBuilder.udpFrame(dst: externalIP, dstPort: 9, ethDst: MACAddress(0x01, 0x00, 0x5E, 0, 0, 1), pattern(4)))

    // IPv4 header.
    add("IP version 6 in an IPv4 frame", .ipv4Malformed, mutated { $0[14] = 0x65 })
    for ihl: UInt8 in [0, 1, 4] { add("IHL \(ihl)", .ipv4Malformed, mutated(fixChecksum: false) { $0[14] = 0x40 | ihl }) }
    add("IHL past the frame", .ipv4Malformed, mutated(validUDPFrame(payload: 4)) { $0[14] = 0x4F })
    add("total length past the frame", .ipv4Malformed, mutated(fixChecksum: true) { $0[16] = 0; $0[17] = 62 })
    add("total length 0xFFFF", .ipv4Malformed, mutated(fixChecksum: true) { $0[16] = 0xFF; $0[17] = 0xFF })
    add("total length below the header", .ipv4Malformed, mutated(fixChecksum: true) { $0[16] = 0; $0[17] = 19 })
    add("bad IPv4 header checksum", .ipv4BadChecksum, mutated { $0[24] ^= 0x40 })
    // 41-byte payload with MF set: a non-final fragment must be a multiple of 8 bytes.
    add("fragment (MF, odd length)", .ipv4FragmentInvalid, mutated(fixChecksum: true) { $0[20] = 0x20; $0[21] = 0 })
    add("fragment past 65535", .ipv4FragmentInvalid, mutated(fixChecksum: true) { $0[20] = 0x1F; $0[21] = 0xFF })
    add("source outside the network", .martianSource, FrameBuilder.udpFrame(src: IPv4Address(192, 0, 2, 99), dst: externalIP, dstPort: 9, pattern(4)))
    add("source is the gateway", .martianSource, FrameBuilder.udpFrame(src: gatewayIP, dst: externalIP, dstPort: 9, pattern(4)))
    add("source is the network broadcast", .martianSource,
        FrameBuilder.udpFrame(src: IPv4Address(10, 0, 2, 255), dst: externalIP, dstPort: 9, pattern(4)))
    add("source is loopback", .martianSource, FrameBuilder.udpFrame(src: .loopback, dst: externalIP, dstPort: 9, pattern(4)))
    add("unknown IP protocol (GRE)", .unknownIPProtocol,
        FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: externalIP, proto: IPProtocol(rawValue: 47), pattern(20))))

    // UDP.
    add("UDP ends inside its header", .udpMalformed,
        FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: externalIP, proto: .udp, [0x9C, 0x40, 0, 9])).padded(to: 60))
    add("UDP length > payload", .udpMalformed, mutated { $0[38] = 0; $0[39] = 42 })
    add("UDP length < 8", .udpMalformed, mutated { $0[38] = 0; $0[39] = 7 })
    add("bad UDP checksum", .udpBadChecksum, mutated { $0[41] ^= 0x01 })
    add("UDP from 0.0.0.0 port 0", .udpSourcePortZero,
        FrameBuilder.udpFrame(src: .any, dst: externalIP, srcPort: 0, dstPort: 53, pattern(12)))
    add("UDP from 0.0.0.0 port 68, not DHCP", .udpSourcePortZero,
        FrameBuilder.udpFrame(src: .any, dst: externalIP, srcPort: 68, dstPort: 53, pattern(12)))
    add("UDP from port 0", .udpSourcePortZero, FrameBuilder.udpFrame(dst: externalIP, srcPort: 0, dstPort: 53, pattern(12)))
    add("UDP to another local address", .udpToUnknownLocalAddress, FrameBuilder.udpFrame(dst: IPv4Address(10, 0, 2, 200), dstPort: 9, pattern(4)))

    // DHCP (BAD-INPUTS 6).
    add("DHCP shorter than BOOTP", .dhcpMalformed, FrameBuilder.udpFrame(src: .any, dst: .broadcast, srcPort: 68, dstPort: 67,
                                                                         ethDst: .broadcast, pattern(235)))
    var noCookie = FrameBuilder.dhcpPayload(.discover)
    noCookie[236] = 0
    add("DHCP without magic cookie", .dhcpMalformed,
        FrameBuilder.udpFrame(src: .any, dst: .broadcast, srcPort: 68, dstPort: 67, ethDst: .broadcast, noCookie))
    var overrun = Array(FrameBuilder.dhcpPayload(.discover)[..<240]) + [53, 1, 1, 12, 200, 65, 65]
    add("DHCP option past the end", .dhcpMalformed,
        FrameBuilder.udpFrame(src: .any, dst: .broadcast, srcPort: 68, dstPort: 67, ethDst: .broadcast, overrun))
    overrun = Array(FrameBuilder.dhcpPayload(.discover)[..<240]) + [53, 1, 1]
    add("DHCP without END", .dhcpMalformed,
        FrameBuilder.udpFrame(src: .any, dst: .broadcast, srcPort: 68, dstPort: 67, ethDst: .broadcast, overrun))
    var reply = FrameBuilder.dhcpPayload(.discover)
    reply[0] = 2
    add("DHCP reply from the guest", .dhcpIgnored,
        FrameBuilder.udpFrame(src: .any, dst: .broadcast, srcPort: 68, dstPort: 67, ethDst: .broadcast, reply))

    // ICMP.
    add("ICMP shorter than its header", .icmpMalformed,
        FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: gatewayIP, proto: .icmp, [8, 0, 0, 0, 0, 0, 0])))

    // TCP (BAD-INPUTS 15).
    add("TCP data offset < 5", .tcpMalformed,
        mutated(FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 1, flags: .syn)) { $0[46] = 0x40 })
    add("TCP data offset past the segment", .tcpMalformed,
        mutated(FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 1, flags: .syn)) { $0[46] = 0xF0 })
    add("TCP shorter than its header", .tcpMalformed,
        FrameBuilder.ethernet(type: .ipv4, FrameBuilder.ipv4(dst: externalIP, proto: .tcp, pattern(19))))
    add("bad TCP checksum", .tcpBadChecksum,
        mutated(FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 1, flags: .syn)) { $0[50] ^= 0xFF })
    return cases
}()

@Suite("Hostile frames")
struct HostileFrameTests {
    @Test("dropped under exactly one named reason, nothing sent, nothing opened", arguments: hostileCases)
    func dropped(_ c: HostileCase) {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        h.expectDrop(c.reason, c.frame)
        #expect(h.host.sent.isEmpty && h.host.echoes.isEmpty)
        #expect(h.counters[.framesFromGuest] == 1 && h.counters[.framesToGuest] == 0)
    }

    @Test("every prefix (0...74 bytes) of a valid UDP frame is dropped without reading past it")
    func udpPrefixes() {
        let h = GatewayHarness()
        let full = validUDPFrame()
        #expect(full.count == 75)
        for n in 0 ... 74 {
            h.expectDrop(n < 14 ? .ethernetTruncated : .ipv4Malformed, Array(full[..<n]), "length \(n)")
        }
        // The whole frame is good.
        #expect(h.exchange(full).isEmpty)
        #expect(h.host.opens.count == 1)
    }

    @Test("every prefix (0...74 bytes) of a padded ARP request: truncated ones are malformed, complete ones answered")
    func arpPrefixes() {
        let h = GatewayHarness()
        let full = FrameBuilder.arpFrame(targetIP: gatewayIP).padded(to: 75)
        for n in 0 ... 74 {
            let prefix = Array(full[..<n])
            if n < 14 {
                h.expectDrop(.ethernetTruncated, prefix, "length \(n)")
            } else if n < 42 {
                h.expectDrop(.arpMalformed, prefix, "length \(n)")
            } else {
                #expect(h.exchange(prefix).count == 1, "length \(n)")
            }
        }
        #expect(h.counters[.arpReplies] == 33)
    }

    @Test("seeded random garbage and mutations of valid frames: no crash, at most one drop each, clean output")
    func fuzz() {
        var rng = SplitMix64(seed: 0xBAD_1)
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        let seeds: [[UInt8]] = [
            validUDPFrame(), FrameBuilder.arpFrame(targetIP: gatewayIP), FrameBuilder.dhcpFrame(.discover),
            FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 1, seq: 1, pattern(20)),
            FrameBuilder.udpFrame(dst: dnsIP, dstPort: 53, FrameBuilder.dnsQuery(id: 9)),
            FrameBuilder.tcpFrame(dst: externalIP, dstPort: 80, seq: 1, flags: .syn),
        ]
        for i in 0 ..< 3000 {
            var f: [UInt8]
            if i % 4 == 0 {
                f = (0 ..< Int.random(in: 0 ... 120, using: &rng)).map { _ in UInt8.random(in: 0 ... 255, using: &rng) }
            } else {
                f = seeds[Int.random(in: 0 ..< seeds.count, using: &rng)]
                for _ in 0 ... Int.random(in: 0 ... 3, using: &rng) where !f.isEmpty {
                    f[Int.random(in: 0 ..< f.count, using: &rng)] = UInt8.random(in: 0 ... 255, using: &rng)
                }
                f = Array(f.prefix(Int.random(in: 0 ... f.count, using: &rng)))
            }
            let before = h.counters.totalDrops
            h.send(f)
            #expect(h.counters.totalDrops - before <= 1, "frame \(i)")
            _ = h.drain()   // checks length and padding of whatever was sent
        }
        #expect(h.counters[.framesFromGuest] == 3000)
    }
}
