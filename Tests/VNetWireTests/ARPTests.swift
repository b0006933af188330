// ARP (RFC 826) for IPv4 over Ethernet. Values from `tshark -r arp-5b5c794e.pcap -V` and the ARP pair in
// nc-10.0.2.2-8080-d2d9d12d.pcap (frames 6 and 7).

import Testing
@testable import VNetWire

@Suite struct ARPTests {
    static var arpFrames: [PcapFrame] { Corpus.allFrames.filter { $0.etherType == EtherType.arp.rawValue } }

    @Test func guestRequestForGateway() throws {
        let f = try Corpus.frame(Corpus.arp, 1)
        #expect(f.captured.count == 42)
        let a = try parseOK(f.network, ARPPacket.parse)
        #expect(a.operation == .request)
        #expect(a.senderMAC == MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56))
        #expect(a.senderIP == IPv4Address(10, 0, 2, 15))
        #expect(a.targetMAC == .zero)
        #expect(a.targetIP == IPv4Address(10, 0, 2, 2))
    }

    // QEMU's reply is padded to 64 bytes (18 zero bytes after the 28-byte packet): the parse ignores them.
    @Test func gatewayReplyWithPadding() throws {
        let f = try Corpus.frame(Corpus.arp, 2)
        #expect(f.captured.count == 64)
        #expect(f.network.count == 50)
        #expect(f.captured[42...].allSatisfy { $0 == 0 })
        let a = try parseOK(f.network, ARPPacket.parse)
        #expect(a.operation == .reply)
        #expect(a.senderMAC == MACAddress(0x52, 0x55, 0x0a, 0x00, 0x02, 0x02))
        #expect(a.senderIP == IPv4Address(10, 0, 2, 2))
        #expect(a.targetMAC == MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56))
        #expect(a.targetIP == IPv4Address(10, 0, 2, 15))
    }

    @Test func unicastRequestFromOtherGuest() throws {
        let f = try Corpus.frame(Corpus.nc8080, 6)
        let eth = try parseOK(f.captured, EthernetHeader.parse)
        #expect(eth.destination == MACAddress(0x52, 0x55, 0x0a, 0x00, 0x02, 0x02))     // unicast, not broadcast
        let a = try parseOK(f.network, ARPPacket.parse)
        #expect(a.operation == .request)
        #expect(a.senderMAC == MACAddress("3a:31:01:48:d7:b5"))
        #expect(a.senderIP == IPv4Address(10, 0, 2, 0))
        #expect(a.targetIP == IPv4Address(10, 0, 2, 2))
        let reply = try parseOK(try Corpus.frame(Corpus.nc8080, 7).network, ARPPacket.parse)
        #expect(reply.operation == .reply && reply.targetMAC == a.senderMAC && reply.targetIP == a.senderIP)
    }

    // parse -> emit reproduces all 28 ARP bytes of every ARP frame (padding is not part of the packet).
    @Test(arguments: arpFrames)
    func roundTrip(_ f: PcapFrame) throws {
        let a = try parseOK(f.network, ARPPacket.parse)
        var n = 0
        let out = build(ARPPacket.length) { n = a.emit(into: $0) }
        #expect(n == 28)
        #expect(out == Array(f.network.prefix(28)))
    }

    // Every length 0..<28 of the packet is malformed; 28 and more parse to the same packet.
    @Test(arguments: arpFrames)
    func everyPrefix(_ f: PcapFrame) throws {
        let full = try parseOK(f.network, ARPPacket.parse)
        for n in 0 ... f.network.count {
            let r = parseExact(f.network.prefix(n), ARPPacket.parse)
            if n < 28 { #expect(r.isMalformed, "n=\(n)") } else { #expect(r.value == full, "n=\(n)") }
        }
    }

    // Only Ethernet (1) / IPv4 (0x0800) with 6/4-byte addresses is ARP for vnet.
    @Test(arguments: [(0, UInt8(0x01)), (1, 0x00), (1, 0x06), (2, 0x86), (3, 0x01), (3, 0xDD), (4, 8), (4, 0), (5, 16), (5, 0)])
    func wrongHardwareOrProtocolIsMalformed(offset: Int, value: UInt8) throws {
        var p = Array(try Corpus.frame(Corpus.arp, 1).network)
        p[offset] = value
        #expect(parseExact(p, ARPPacket.parse).isMalformed)
    }

    @Test func unknownOperationIsCarried() throws {
        var p = Array(try Corpus.frame(Corpus.arp, 1).network)
        p[6] = 0x00; p[7] = 0x09           // InARP request (RFC 2390) is not something vnet answers, but it parses
        let a = try parseOK(p, ARPPacket.parse)
        #expect(a.operation == .unknown(9))
        #expect(a.operation.rawValue == 9)
        let out = build(28) { a.emit(into: $0) }
        #expect(out == p)
        #expect(ARPPacket.Operation(1) == .request && ARPPacket.Operation(2) == .reply)
    }
}
