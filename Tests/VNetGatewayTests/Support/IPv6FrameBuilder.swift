// IPv6 guest frames for the gateway tests, built with the VNetWire emitters (checksums right unless a test
// breaks them), and checkers for IPv6 frames the gateway sends.

import Testing
@testable import VNetGateway
import VNetWire

/// The guest's SLAAC addresses for `guestMAC` in the default prefix, and the gateway's IPv6 addresses.
let guestLinkLocal = IPv6Address("fe80::5054:ff:fe12:3456")!
let guestIP6 = IPv6Address("fec0::5054:ff:fe12:3456")!
let gatewayLinkLocal = IPv6Address("fe80::2")!
let gatewayIP6 = IPv6Address("fec0::2")!
let dnsIP6 = IPv6Address("fec0::3")!
/// The IPv6 documentation prefix: a routable-looking destination nothing real answers.
let externalIP6 = IPv6Address("2001:db8::1")!

enum V6 {
    static func ipv6(src: IPv6Address = guestIP6, dst: IPv6Address, next: UInt8, hopLimit: UInt8 = 64, _ payload: [UInt8],
                     payloadLength: Int? = nil) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 40)
        h.withUnsafeMutableBytes {
            _ = IPv6Header(payloadLength: payloadLength ?? payload.count, nextHeader: next, hopLimit: hopLimit, source: src, destination: dst).emit(into: $0)
        }
        return h + payload
    }

    static func frame(to mac: MACAddress = gatewayMAC, from src: MACAddress = guestMAC, _ packet: [UInt8]) -> [UInt8] {
        FrameBuilder.ethernet(to: mac, from: src, type: .ipv6, packet)
    }

    static func icmp6(src: IPv6Address, dst: IPv6Address, type: UInt8, code: UInt8 = 0, rest: UInt32 = 0, _ body: [UInt8]) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: 8) + body
        let n = m.count
        m.withUnsafeMutableBytes { _ = ICMPv6Header(type: type, code: code, restOfHeader: rest).emit(into: $0, messageLength: n, source: src, destination: dst) }
        return m
    }

    static func udp6(src: IPv6Address, dst: IPv6Address, srcPort: UInt16, dstPort: UInt16, _ payload: [UInt8]) -> [UInt8] {
        let length = 8 + payload.count
        var d = [UInt8](repeating: 0, count: 8) + payload
        d.withUnsafeMutableBytes {
            _ = UDPHeader(sourcePort: srcPort, destinationPort: dstPort, length: length)
                .emit(into: $0, pseudoHeader: InternetChecksum.pseudoHeader(source: src, destination: dst, protocolNumber: 17, length: length))
        }
        return d
    }

    static func tcp6(src: IPv6Address = guestIP6, dst: IPv6Address, srcPort: UInt16, dstPort: UInt16, seq: UInt32, ack: UInt32,
                     flags: TCPFlags, window: UInt16 = 65535, mss: UInt16? = nil, wscale: UInt8? = nil, _ payload: [UInt8] = []) -> [UInt8] {
        let header = TCPHeader(sourcePort: srcPort, destinationPort: dstPort, sequence: seq, acknowledgment: ack, flags: flags,
                               window: window, maxSegmentSize: mss, windowScale: wscale)
        let hl = header.emittedLength
        let length = hl + payload.count
        var s = [UInt8](repeating: 0, count: hl) + payload
        s.withUnsafeMutableBytes {
            _ = header.emit(into: $0, segmentLength: length,
                            pseudoHeader: InternetChecksum.pseudoHeader(source: src, destination: dst, protocolNumber: 6, length: length))
        }
        return s
    }

    /// A neighbour solicitation for `target` from `src`, with a source link-layer option unless `slla` is nil.
    static func neighborSolicitation(src: IPv6Address = guestLinkLocal, target: IPv6Address, slla: MACAddress? = guestMAC,
                                     hopLimit: UInt8 = 255) -> [UInt8] {
        // The 4 reserved bytes are the ICMPv6 header's rest; the message body starts with the target.
        var body = [UInt8](repeating: 0, count: 16)
        body.withUnsafeMutableBytes { target.write(to: $0, at: 0) }
        if let m = slla {
            var o: [UInt8] = [1, 1, 0, 0, 0, 0, 0, 0]
            o.withUnsafeMutableBytes { m.write(to: $0, at: 2) }
            body += o
        }
        let dst = target.solicitedNode
        return frame(to: dst.multicastMAC, ipv6(src: src, dst: dst, next: 58, hopLimit: hopLimit,
                                                icmp6(src: src, dst: dst, type: ICMPv6Header.neighborSolicitation, body)))
    }
}

struct IPv6Packet {
    var header: IPv6Header
    var payload: [UInt8]
}

/// Checks an IPv6 frame to the guest (from the gateway's MAC, to `mac`) and returns its header and payload.
func expectIPv6(_ f: [UInt8], src: IPv6Address? = nil, dst: IPv6Address? = nil, next: UInt8? = nil, toMAC mac: MACAddress? = guestMAC,
                sourceLocation: SourceLocation = #_sourceLocation) throws -> IPv6Packet {
    let eth = try #require(parsed(f) { try EthernetHeader.parse($0) }, sourceLocation: sourceLocation)
    #expect(eth.source == gatewayMAC, sourceLocation: sourceLocation)
    if let mac { #expect(eth.destination == mac, sourceLocation: sourceLocation) }
    try #require(eth.etherType == .ipv6, sourceLocation: sourceLocation)
    let body = Array(f[14...])
    let ip = try #require(parsed(body) { try IPv6Header.parse($0) }, sourceLocation: sourceLocation)
    if let src { #expect(ip.source == src, sourceLocation: sourceLocation) }
    if let dst { #expect(ip.destination == dst, sourceLocation: sourceLocation) }
    if let next { #expect(ip.nextHeader == next, sourceLocation: sourceLocation) }
    return IPv6Packet(header: ip, payload: Array(body[ip.payloadRange]))
}

/// Drops the unsolicited router advertisements (to all nodes) from a list of frames.
func withoutUnsolicitedRA(_ frames: [[UInt8]]) -> [[UInt8]] {
    frames.filter { f in !(f.count >= 54 && f[12] == 0x86 && f[13] == 0xDD && f[0] == 0x33 && f[20] == 58 && f.count > 54 && f[54] == ICMPv6Header.routerAdvertisement) }
}

/// True when an upper-layer message in `p` (ICMPv6, UDP or TCP) has a valid checksum.
func checksumValid6(_ p: IPv6Packet, proto: UInt8) -> Bool {
    p.payload.withUnsafeBytes {
        InternetChecksum.finish(InternetChecksum.add($0, to: InternetChecksum.pseudoHeader(source: p.header.source, destination: p.header.destination,
                                                                                          protocolNumber: proto, length: p.payload.count))) == 0
    }
}
