// Ethernet II headers, with and without an 802.1Q tag. Values from `tshark -r FILE -V`.

import Testing
@testable import VNetWire

@Suite struct EthernetTests {
    static let guestMAC = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)
    static let gatewayMAC = MACAddress(0x52, 0x55, 0x0a, 0x00, 0x02, 0x02)

    @Test func arpRequestIsBroadcastFromGuest() throws {
        let f = try Corpus.frame(Corpus.arp, 1)
        let h = try parseOK(f.captured, EthernetHeader.parse)
        #expect(h.destination == .broadcast)
        #expect(h.destination.isBroadcast && h.destination.isMulticast)
        #expect(h.source == Self.guestMAC)
        #expect(!h.source.isMulticast)
        #expect(h.etherType == .arp)
        #expect(h.vlanTag == nil)
        #expect(h.headerLength == 14)
    }

    @Test func pingRequestGoesToGateway() throws {
        let h = try parseOK(try Corpus.frame(Corpus.ping4, 1).captured, EthernetHeader.parse)
        #expect(h.destination == Self.gatewayMAC)
        #expect(h.source == Self.guestMAC)
        #expect(h.etherType == .ipv4)
    }

    @Test func ipv6FrameCarriesIPv6EtherType() throws {
        let h = try parseOK(try Corpus.frame(Corpus.ndp, 1).captured, EthernetHeader.parse)
        #expect(h.etherType == .ipv6)
        #expect(h.destination == MACAddress("33:33:ff:00:00:02"))   // solicited-node multicast for fec0::2
        #expect(h.destination.isMulticast)
    }

    // parse -> emit reproduces the 14 header bytes of every Ethernet frame in the corpus (all of them compared).
    @Test(arguments: Corpus.ethernetFrames)
    func roundTrip(_ f: PcapFrame) throws {
        let h = try parseOK(f.captured, EthernetHeader.parse)
        var n = 0
        let out = build(h.headerLength) { n = h.emit(into: $0) }
        #expect(n == 14)
        #expect(out == Array(f.captured[0 ..< 14]))
    }

    static let tagged: [UInt8] = bytes(hex: "525400123456 52550a000202 8100 a064 0800") + [0x45, 0, 0, 20]

    @Test func vlanTagRoundTrip() throws {
        let h = try parseOK(Self.tagged, EthernetHeader.parse)
        #expect(h.vlanTag == 0xa064)          // PCP 5, VID 100
        #expect(h.etherType == .ipv4)
        #expect(h.headerLength == 18)
        #expect(h.destination == Self.guestMAC && h.source == Self.gatewayMAC)
        var n = 0
        let out = build(18) { n = h.emit(into: $0) }
        #expect(n == 18)
        #expect(out == Array(Self.tagged[0 ..< 18]))
    }

    // Every prefix: shorter than 14 (18 when tagged) is malformed, from there on the header is the full one.
    @Test(arguments: [Self.tagged] + Corpus.ethernetFrames.map(\.captured))
    func everyPrefix(_ frame: [UInt8]) throws {
        let full = try parseOK(frame, EthernetHeader.parse)
        for n in 0 ... frame.count {
            let r = parseExact(frame[0 ..< n], EthernetHeader.parse)
            if n < full.headerLength {
                #expect(r.isMalformed, "n=\(n)")
            } else {
                #expect(r.value == full, "n=\(n)")
            }
        }
    }

    // BAD-INPUTS 1: every frame length 0...74, with an EtherType vnet does not speak (0x88F8, NC-SI). The
    // wire layer carries unknown EtherTypes; dropping them is the gateway's policy.
    @Test func unknownEtherTypeIsCarriedAtEveryLength() {
        let frame = bytes(hex: "ffffffffffff 525400123456 88f8") + (0 ..< 60).map { UInt8($0) }
        #expect(frame.count == 74)
        for n in 0 ... 74 {
            let r = parseExact(frame[0 ..< n], EthernetHeader.parse)
            if n < 14 {
                #expect(r.isMalformed, "n=\(n)")
            } else {
                #expect(r.value?.etherType == EtherType(rawValue: 0x88F8), "n=\(n)")
                #expect(r.value?.headerLength == 14)
            }
        }
    }

    @Test func macAddressText() {
        #expect(MACAddress("52:54:00:12:34:56") == Self.guestMAC)
        #expect(MACAddress("FF:ff:FF:ff:FF:ff") == .broadcast)
        #expect(Self.gatewayMAC.description == "52:55:0a:00:02:02")
        #expect(MACAddress.zero.description == "00:00:00:00:00:00")
        for bad in ["", "52:54:00:12:34", "52:54:00:12:34:56:78", "52:54:00:12:34:5", "52:54:00:12:34:5g", "525400123456", "52-54-00-12-34-56", "52:54:00:12:34:"] {
            #expect(MACAddress(bad) == nil, "\(bad)")
        }
        #expect(MACAddress(rawValue: 0xFFFF_5254_0012_3456) == Self.guestMAC)   // masked to 48 bits
    }
}
