// Fuzz target: guest IPv6 through the whole gateway: the fixed header, extension headers and fragment
// reassembly, NDP (neighbour and router solicitations, advertisements), ICMPv6 echo (answered locally and NAT'd),
// stateless DHCPv6, UDP and TCP over IPv6 (the DNS forwarder at fec0::3, NAT to IPv6 host sockets), and ICMPv6
// errors arriving on IPv6 flows from the host.
// Input: records (see RecordReader). The selector's low 3 bits pick the kind, the rest vary it:
//   0 raw IPv6 packet as sent       1 ICMPv6 message, checksum fixed    2 DHCPv6 message to ff02::1:2
//   3 UDP datagram, checksum fixed   4 a fragment of a datagram           5 TCP segment, checksum fixed
//   6 a host event on an IPv6 flow   7 time passes
import FuzzSupport

let guestLL = IPv6Address("fe80::5054:ff:fe12:3456")!
let guest6 = IPv6Address("fec0::5054:ff:fe12:3456")!
let destinations6 = [IPv6Address("fe80::2")!, IPv6Address("fec0::2")!, IPv6Address("fec0::3")!, IPv6Address("2001:db8::1")!,
                     IPv6Address.allNodes, IPv6Address.allRouters, IPv6Address("fd00:ec2::254")!, IPv6Address("ff02::1:ff00:2")!]

@_cdecl("FuzzIPv6_main")
public func fuzzIPv6Main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzIPv6)
}

func packet6(src: IPv6Address, dst: IPv6Address, next: UInt8, hopLimit: UInt8, _ payload: [UInt8]) -> [UInt8] {
    var h = [UInt8](repeating: 0, count: 40)
    let body = Array(payload.prefix(65_535))
    h.withUnsafeMutableBytes {
        _ = IPv6Header(payloadLength: body.count, nextHeader: next, hopLimit: hopLimit, source: src, destination: dst).emit(into: $0)
    }
    return h + body
}

func fixChecksum6(_ l4: inout [UInt8], at offset: Int, next: UInt8, src: IPv6Address, dst: IPv6Address) {
    guard l4.count >= offset + 2 else { return }
    l4[offset] = 0; l4[offset + 1] = 0
    let sum: UInt16 = l4.withUnsafeBytes {
        InternetChecksum.finish(InternetChecksum.add($0, to: InternetChecksum.pseudoHeader(source: src, destination: dst,
                                                                                         protocolNumber: next, length: $0.count)))
    }
    l4[offset] = UInt8(sum >> 8); l4[offset + 1] = UInt8(sum & 0xFF)
}

func frame6(_ packet: [UInt8], dst: IPv6Address) -> [UInt8] {
    ethernetFrame(type: .ipv6, dst: dst.isMulticast ? dst.multicastMAC : gatewayMAC, packet)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIPv6(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let (host, g) = reusedGateway()
    var now = startTime
    var reader = RecordReader(UnsafeRawBufferPointer(start: data, count: size))
    var fragmentOffset = 0
    while let (selector, bytes) = reader.next() {
        let variant = Int(selector >> 3)
        let dst = destinations6[variant % destinations6.count]
        let src = variant & 8 == 0 ? guest6 : guestLL
        let hopLimit: UInt8 = variant & 16 == 0 ? 255 : 64
        switch selector & 7 {
        case 0:
            deliver(g, ethernetFrame(type: .ipv6, bytes), now: now)
        case 1:
            var m = bytes
            fixChecksum6(&m, at: 2, next: 58, src: src, dst: dst)
            deliver(g, frame6(packet6(src: src, dst: dst, next: 58, hopLimit: hopLimit, m), dst: dst), now: now)
        case 2:
            var d = [UInt8](repeating: 0, count: 8) + bytes.prefix(1500)
            d[0] = 0x02; d[1] = 0x22; d[2] = 0x02; d[3] = 0x23
            d[4] = UInt8(d.count >> 8); d[5] = UInt8(d.count & 0xFF)
            fixChecksum6(&d, at: 6, next: 17, src: guestLL, dst: .allDHCPServers)
            deliver(g, frame6(packet6(src: guestLL, dst: .allDHCPServers, next: 17, hopLimit: 1, d), dst: .allDHCPServers), now: now)
        case 3:
            var d = bytes
            if d.count >= 8 && variant & 1 == 0 { d[4] = UInt8(d.count >> 8 & 0xFF); d[5] = UInt8(d.count & 0xFF) }
            fixChecksum6(&d, at: 6, next: 17, src: src, dst: dst)
            deliver(g, frame6(packet6(src: src, dst: dst, next: 17, hopLimit: hopLimit, d), dst: dst), now: now)
        case 4:
            // A fragment header (next header UDP or ICMPv6), offsets walking forward unless the input says otherwise.
            let more = variant & 1 == 0
            if variant & 2 != 0, bytes.count >= 2 { fragmentOffset = (Int(bytes[0]) << 8 | Int(bytes[1])) & 0xFFF8 }
            let fo = UInt16(truncatingIfNeeded: fragmentOffset) & 0xFFF8 | (more ? 1 : 0)
            let header: [UInt8] = [variant & 4 == 0 ? 17 : 58, 0, UInt8(fo >> 8), UInt8(fo & 0xFF), 0, 0, 0, UInt8(variant >> 3 & 3)]
            deliver(g, frame6(packet6(src: src, dst: dst, next: 44, hopLimit: hopLimit, header + bytes), dst: dst), now: now)
            fragmentOffset += bytes.count & ~7
        case 5:
            var s = bytes
            fixChecksum6(&s, at: 16, next: 6, src: src, dst: dst)
            deliver(g, frame6(packet6(src: src, dst: dst, next: 6, hopLimit: hopLimit, s), dst: dst), now: now)
            if variant & 1 == 1 { g.hostWritable(FlowTag(kind: .tcp, index: variant >> 1 & 7), now: now) }
        case 6:
            let kinds: [FlowTag.Kind] = [.udp, .icmp, .tcp]
            let offender = variant & 1 == 0 ? IPv4Address(192, 0, 2, 1) : IPv4Address.loopback
            host.pending = [HostReceiveScript(kind: UInt8(variant & 7), identifier: nil, sequence: UInt16(bytes.count),
                                              offender: offender, bytes: bytes)]
            g.hostReadable(FlowTag(kind: kinds[variant % 3], index: variant >> 2 & 7), now: now, peerClosing: variant & 32 != 0)
        default:
            now = now + .milliseconds(UInt64(bytes.first ?? 1) * 250)
            g.poll(now: now)
        }
        drainAndCheck(g)
    }
    return 0
}
