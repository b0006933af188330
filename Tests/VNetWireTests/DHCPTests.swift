// DHCP (RFC 2131/2132): parsing the guest's messages and writing replies. Field values from
// `tshark -r dhcp_capture-06c75a36.pcap -V`: DISCOVER, OFFER, REQUEST, ACK between a Debian guest and libslirp.

import Testing
@testable import VNetWire

@Suite struct DHCPTests {
    static let guestMAC = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)
    static let xid: UInt32 = 0x2d61_8000
    static let prl: [UInt8] = [1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42]
    static let gateway = IPv4Address(10, 0, 2, 2), guest = IPv4Address(10, 0, 2, 15), dns = IPv4Address(10, 0, 2, 3)

    /// The UDP payload (the BOOTP message) of frame `n` of the DHCP capture.
    static func payload(_ n: Int) throws -> [UInt8] {
        let f = try Corpus.frame(Corpus.dhcp, n)
        return Array(f.captured[try #require(try dissect(f).app)])
    }

    static func discover() throws -> DHCPMessage { try parseOK(try payload(1), DHCPMessage.parse) }

    @Test func discoverFields() throws {
        #expect(try Self.payload(1).count == 300)
        let m = try Self.discover()
        #expect(m.op == 1)
        #expect(m.transactionID == Self.xid)
        #expect(m.seconds == 0 && m.flags == 0 && !m.wantsBroadcast)
        #expect(m.clientAddress == .any && m.yourAddress == .any && m.serverAddress == .any && m.relayAddress == .any)
        #expect(m.clientMAC == Self.guestMAC)
        #expect(m.messageType == .discover)
        #expect(m.requestedAddress == Self.guest)
        #expect(m.serverIdentifier == nil)
        #expect(m.hostName == "debian")
        #expect(m.parameterRequestList == Self.prl)
    }

    @Test func offerFields() throws {
        #expect(try Self.payload(2).count == 548)          // libslirp pads to sizeof(struct bootp_t)
        let m = try parseOK(try Self.payload(2), DHCPMessage.parse)
        #expect(m.op == 2)
        #expect(m.transactionID == Self.xid)
        #expect(m.yourAddress == Self.guest && m.serverAddress == Self.gateway)
        #expect(m.clientAddress == .any && m.relayAddress == .any)
        #expect(m.clientMAC == Self.guestMAC)
        #expect(m.messageType == .offer)
        #expect(m.serverIdentifier == Self.gateway)
        #expect(m.requestedAddress == nil && m.hostName == nil && m.parameterRequestList.isEmpty)
    }

    @Test func requestAndAckFields() throws {
        let r = try parseOK(try Self.payload(3), DHCPMessage.parse)
        #expect(r.op == 1 && r.transactionID == Self.xid && r.messageType == .request)
        #expect(r.serverIdentifier == Self.gateway && r.requestedAddress == Self.guest)
        #expect(r.hostName == "debian" && r.parameterRequestList == Self.prl)
        let a = try parseOK(try Self.payload(4), DHCPMessage.parse)
        #expect(a.op == 2 && a.transactionID == Self.xid && a.messageType == .ack)
        #expect(a.serverIdentifier == Self.gateway && a.yourAddress == Self.guest && a.clientMAC == Self.guestMAC)
    }

    // Every prefix: malformed until the END option is inside it, then the same message. END sits at UDP
    // payload offsets 293 / 273 / 299 / 273 (tshark's option lengths: 3+6+8+15+21 after the cookie for the
    // DISCOVER, 3+6+6+6+6+6 for OFFER and ACK, 3+6+6+8+15+21 for the REQUEST).
    @Test(arguments: [(1, 294), (2, 274), (3, 300), (4, 274)])
    func everyPrefix(frame: Int, boundary: Int) throws {
        let p = try Self.payload(frame)
        #expect(p[boundary - 1] == DHCPOption.end)
        let full = try parseOK(p, DHCPMessage.parse)
        for n in 0 ... p.count {
            let r = parseExact(p.prefix(n), DHCPMessage.parse)
            if n < boundary { #expect(r.isMalformed, "n=\(n)") } else { #expect(r.value == full, "n=\(n)") }
        }
    }

    // MARK: BAD-INPUTS item 6

    /// The DISCOVER's BOOTP header and cookie followed by `options`.
    static func message(options: [UInt8], cookie: [UInt8] = [0x63, 0x82, 0x53, 0x63]) throws -> [UInt8] {
        Array(try payload(1).prefix(236)) + cookie + options
    }

    @Test func shorterThanBootpHeaderIsMalformed() throws {
        let p = try Self.message(options: [53, 1, 1, 255])
        for n in 0 ..< 240 { #expect(parseExact(p.prefix(n), DHCPMessage.parse).isMalformed, "n=\(n)") }
        #expect(parseExact(p, DHCPMessage.parse).value?.messageType == .discover)
    }

    @Test(arguments: [[0, 0, 0, 0], [0x63, 0x82, 0x53, 0x64], [0x63, 0x53, 0x82, 0x63], [0x99, 0x82, 0x53, 0x63], [0x63, 0x82, 0x52, 0x63]] as [[UInt8]])
    func missingMagicCookieIsMalformed(cookie: [UInt8]) throws {
        #expect(parseExact(try Self.message(options: [53, 1, 1, 255], cookie: cookie), DHCPMessage.parse).isMalformed)
    }

    @Test(arguments: [
        [53, 1, 1],                    // no END at all
        [53, 1, 1, 0, 0, 0, 0],        // only PAD after the last option
        [],                            // no options at all
        [0, 0, 0, 0],
    ] as [[UInt8]])
    func missingEndIsMalformed(options: [UInt8]) throws {
        #expect(parseExact(try Self.message(options: options), DHCPMessage.parse).isMalformed)
    }

    @Test(arguments: [
        [53, 1, 1, 12, 7, 0x64, 0x65, 0x62, 255],         // host name claims 7 bytes, 4 present
        [53, 1, 1, 55, 200, 1, 3, 6, 255],                // parameter request list claims 200
        [53, 1, 1, 61, 255],                              // the length byte is the last byte; 255 bytes claimed
        [53, 1, 1, 12],                                   // a code with no length byte at all
        [53, 5],                                          // message type runs past the end
    ] as [[UInt8]])
    func optionLengthPastEndIsMalformed(options: [UInt8]) throws {
        #expect(parseExact(try Self.message(options: options), DHCPMessage.parse).isMalformed)
    }

    @Test func messageTypeMustBeOneByte() throws {
        #expect(parseExact(try Self.message(options: [53, 0, 255]), DHCPMessage.parse).isMalformed)
        #expect(parseExact(try Self.message(options: [53, 2, 1, 1, 255]), DHCPMessage.parse).isMalformed)
        // An unknown type value is carried as "no type" (the server ignores it), not a parse failure.
        let m = try parseOK(try Self.message(options: [53, 1, 42, 255]), DHCPMessage.parse)
        #expect(m.messageType == nil)
    }

    @Test func onlyEthernetHardwareIsServed() throws {
        var p = try Self.message(options: [53, 1, 1, 255])
        p[1] = 6                                               // IEEE 802
        #expect(parseExact(p, DHCPMessage.parse).isMalformed)
        p[1] = 1; p[2] = 16
        #expect(parseExact(p, DHCPMessage.parse).isMalformed)
    }

    @Test func lenientWhereHarmless() throws {
        // PADs between options, a 3-byte "address" (ignored), a zero-length host name, bytes after END.
        let m = try parseOK(try Self.message(options: [0, 0, 53, 1, 3, 0, 50, 3, 10, 0, 2, 54, 4, 10, 0, 2, 2, 12, 0, 255, 0xde, 0xad, 61]),
                            DHCPMessage.parse)
        #expect(m.messageType == .request)
        #expect(m.requestedAddress == nil)
        #expect(m.serverIdentifier == Self.gateway)
        #expect(m.hostName == "")
    }

    // MARK: DHCPWriter

    /// libslirp's OFFER/ACK options, in its order: type, server id, mask, router, DNS, lease.
    static func writeSlirpReply(_ w: inout DHCPWriter, type: DHCPMessageType) {
        w.option(DHCPOption.messageType, [type.rawValue])
        w.option(DHCPOption.serverIdentifier, address: gateway)
        w.option(DHCPOption.subnetMask, address: IPv4Address(255, 255, 255, 0))
        w.option(DHCPOption.router, address: gateway)
        w.option(DHCPOption.dnsServer, address: dns)
        w.option(DHCPOption.leaseTime, u32: 86400)
    }

    // The writer reproduces QEMU's OFFER and ACK byte for byte over the 300 bytes it writes; libslirp pads its
    // message to 548 bytes, and those extra bytes are all zero in the capture.
    @Test(arguments: [(1, 2, DHCPMessageType.offer), (3, 4, .ack)])
    func reproducesQEMUReply(requestFrame: Int, replyFrame: Int, type: DHCPMessageType) throws {
        let request = try parseOK(try Self.payload(requestFrame), DHCPMessage.parse)
        let captured = try Self.payload(replyFrame)
        var length = 0, overflowed = true
        let out = build(548, fill: 0xEE) { b in
            var w = DHCPWriter(replyTo: request, into: b, yourAddress: Self.guest, serverAddress: Self.gateway)
            Self.writeSlirpReply(&w, type: type)
            length = w.finish()
            overflowed = w.overflowed
        }
        #expect(!overflowed)
        #expect(length == 300)
        #expect(Array(out[0 ..< 300]) == Array(captured[0 ..< 300]))
        #expect(captured[300...].allSatisfy { $0 == 0 })
    }

    // Writer plus the Ethernet, IPv4 and UDP emitters rebuild the whole 590-byte OFFER frame QEMU sent,
    // checksums included (IPv4 0x6948, UDP 0x0e10), given libslirp's zero padding to 548 bytes.
    @Test func rebuildsQEMUOfferFrame() throws {
        let captured = try Corpus.frame(Corpus.dhcp, 2).captured
        let request = try Self.discover()
        let out = build(590) { b in
            EthernetHeader(destination: .broadcast, source: MACAddress(0x52, 0x55, 0x0a, 0x00, 0x02, 0x02), etherType: .ipv4).emit(into: b)
            var w = DHCPWriter(replyTo: request, into: b.slice(42 ..< 590), yourAddress: Self.guest, serverAddress: Self.gateway)
            Self.writeSlirpReply(&w, type: .offer)
            _ = w.finish()
            UDPHeader(sourcePort: 67, destinationPort: 68, length: 556).emit(into: b.slice(34 ..< 590), source: Self.gateway, destination: .broadcast)
            IPv4Header(dscpECN: 0x10, totalLength: 576, identification: 0x0354, flagsFragmentOffset: 0, ttl: 64, protocolNumber: .udp,
                       source: Self.gateway, destination: .broadcast).emit(into: b.slice(14 ..< 590))
        }
        #expect(out == captured)
    }

    @Test func replyParsesBackWithTheSameFields() throws {
        let request = DHCPMessage(op: 1, transactionID: 0xdead_beef, seconds: 9, flags: 0xFFFF, clientAddress: IPv4Address(10, 0, 2, 99),
                                  relayAddress: IPv4Address(10, 0, 2, 254), clientMAC: MACAddress(0x02, 0, 0, 0, 0, 0x42), messageType: .request)
        var length = 0
        let out = build(576, fill: 0xEE) { b in
            var w = DHCPWriter(replyTo: request, into: b, yourAddress: IPv4Address(10, 0, 2, 99), serverAddress: Self.gateway)
            w.option(DHCPOption.messageType, [DHCPMessageType.ack.rawValue])
            w.option(DHCPOption.serverIdentifier, address: Self.gateway)
            w.option(DHCPOption.hostName, Array("vnet-guest".utf8))
            w.option(DHCPOption.interfaceMTU, u16: 1500)
            length = w.finish()
        }
        #expect(Array(out[1 ..< 4]) == [1, 6, 0])
        let m = try parseOK(out.prefix(length), DHCPMessage.parse)
        #expect(m.op == 2)
        #expect(m.transactionID == 0xdead_beef)
        #expect(m.seconds == 0)
        #expect(m.flags == 0x8000 && m.wantsBroadcast)        // only the broadcast bit is echoed (RFC 2131 §4.1)
        #expect(m.clientAddress == IPv4Address(10, 0, 2, 99))
        #expect(m.yourAddress == IPv4Address(10, 0, 2, 99))
        #expect(m.serverAddress == Self.gateway)
        #expect(m.relayAddress == IPv4Address(10, 0, 2, 254))
        #expect(m.clientMAC == request.clientMAC)
        #expect(m.messageType == .ack)
        #expect(m.serverIdentifier == Self.gateway)
        #expect(m.hostName == "vnet-guest")
        #expect(Array(out[240 + 3 + 6 + 12 ..< 240 + 3 + 6 + 12 + 4]) == [26, 2, 0x05, 0xdc])
        // No stale bytes: chaddr padding, sname and file are zero, and so is everything after END.
        #expect(out[34 ..< 236].allSatisfy { $0 == 0 })
        let end = 240 + 3 + 6 + 12 + 4
        #expect(out[end] == 255)
        #expect(length == 300)
        #expect(out[(end + 1) ..< 300].allSatisfy { $0 == 0 })
    }

    @Test(arguments: ["pxelinux.0", String(repeating: "b", count: 127), String(repeating: "c", count: 200)])
    func bootfileIsNulTerminatedInFileField(name: String) throws {
        let request = try Self.discover()
        let out = build(300, fill: 0xEE) { b in
            var w = DHCPWriter(replyTo: request, into: b, yourAddress: Self.guest, serverAddress: Self.gateway, bootfile: name)
            w.option(DHCPOption.messageType, [2])
            _ = w.finish()
        }
        let written = min(name.utf8.count, 127)
        #expect(Array(out[108 ..< 108 + written]) == Array(name.utf8.prefix(127)))
        #expect(out[(108 + written) ..< 236].allSatisfy { $0 == 0 })
        #expect(Array(out[236 ..< 240]) == [0x63, 0x82, 0x53, 0x63])
    }

    // RFC 3396: an option longer than 255 bytes is sent as consecutive instances of the same code.
    @Test(arguments: [0, 1, 254, 255, 256, 509, 510, 511, 600, 1000])
    func longOptionsAreSplit(count: Int) throws {
        var rng = SplitMix64(seed: UInt64(count))
        let data = rng.bytes(count)
        var length = 0, overflowed = true
        let request = try Self.discover()
        let out = build(1400) { b in
            var w = DHCPWriter(replyTo: request, into: b, yourAddress: Self.guest, serverAddress: Self.gateway)
            w.option(DHCPOption.domainSearch, data)
            length = w.finish()
            overflowed = w.overflowed
        }
        #expect(!overflowed)
        var i = 240, joined: [UInt8] = [], lengths: [Int] = []
        while out[i] == DHCPOption.domainSearch {
            let n = Int(out[i + 1])
            lengths.append(n)
            joined += out[(i + 2) ..< (i + 2 + n)]
            i += 2 + n
        }
        let expectedLengths = count == 0 ? [0] : (0 ..< (count + 254) / 255).map { min(255, count - 255 * $0) }
        #expect(lengths == expectedLengths)
        #expect(joined == data)
        #expect(out[i] == DHCPOption.end)
        #expect(length == max(300, i + 1))
        #expect(parseExact(out.prefix(length), DHCPMessage.parse).value != nil)
    }

    /// Runs the writer over a `capacity`-byte window of a larger allocation whose tail is guard bytes.
    static func writeIntoWindow(capacity: Int, _ body: (inout DHCPWriter) -> Void) throws -> (out: [UInt8], length: Int, overflowed: Bool) {
        let guardCount = 64
        let request = try discover()
        var length = 0, overflowed = false
        let out = build(capacity + guardCount, fill: 0xAA) { b in
            var w = DHCPWriter(replyTo: request, into: b.slice(0 ..< capacity), yourAddress: guest, serverAddress: gateway)
            body(&w)
            length = w.finish()
            overflowed = w.overflowed
        }
        return (out, length, overflowed)
    }

    // A buffer too small for the reply sets `overflowed` and nothing is written past the buffer, whatever the
    // capacity; when everything fits (options + END), nothing overflows and the reply parses.
    @Test(arguments: Array(240 ... 330) + [500, 866, 867, 868, 869, 1000])
    func overflowNeverWritesPastTheBuffer(capacity: Int) throws {
        let search = [UInt8](repeating: 0x41, count: 600)           // 3 instances: 2+255, 2+255, 2+90
        let needed = 240 + 3 + 6 + (6 + 600) + 6 + 6 + 1    // 868
        let (out, length, overflowed) = try Self.writeIntoWindow(capacity: capacity) { w in
            w.option(DHCPOption.messageType, [2])
            w.option(DHCPOption.serverIdentifier, address: Self.gateway)
            w.option(DHCPOption.domainSearch, search)
            w.option(DHCPOption.dnsServer, address: Self.dns)
            w.option(DHCPOption.leaseTime, u32: 3600)
        }
        #expect(out[capacity...].allSatisfy { $0 == 0xAA }, "capacity \(capacity)")
        #expect(length <= capacity)
        #expect(overflowed == (needed > capacity), "capacity \(capacity)")
        if capacity > 240 {
            // END always fits (every option leaves room for it), so what was written parses.
            let m = try parseOK(out.prefix(length), DHCPMessage.parse)
            #expect(m.transactionID == Self.xid)
            if capacity >= 244 { #expect(m.messageType == .offer) }
        } else {
            #expect(length == 240)
            #expect(parseExact(out.prefix(length), DHCPMessage.parse).isMalformed)
        }
    }

    @Test func finishPadsToThreeHundredWithZerosOverJunk() throws {
        let (out, length, overflowed) = try Self.writeIntoWindow(capacity: 400) { w in w.option(DHCPOption.messageType, [5]) }
        #expect(!overflowed && length == 300)
        #expect(Array(out[240 ..< 244]) == [53, 1, 5, 255])
        #expect(out[244 ..< 300].allSatisfy { $0 == 0 })
        #expect(out[300 ..< 400].allSatisfy { $0 == 0xAA })       // beyond the reply: untouched
    }
}
