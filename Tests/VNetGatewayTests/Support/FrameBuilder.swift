// Guest frames for the gateway tests, built with the VNetWire emitters so every checksum is right unless a
// test breaks it on purpose.

import VNetWire

// The default network (QEMU's): guest 10.0.2.15, gateway 10.0.2.2, DNS 10.0.2.3.
let guestMAC = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)
let otherGuestMAC = MACAddress(0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF)
let gatewayMAC = MACAddress(0x52, 0x55, 0x0A, 0x00, 0x02, 0x02)
let guestIP = IPv4Address(10, 0, 2, 15)
let gatewayIP = IPv4Address(10, 0, 2, 2)
let dnsIP = IPv4Address(10, 0, 2, 3)
/// TEST-NET-1: nothing real is ever contacted (the host is fake), but it is a routable-looking destination.
let externalIP = IPv4Address(192, 0, 2, 1)

enum FrameBuilder {
    static func ethernet(to dst: MACAddress = gatewayMAC, from src: MACAddress = guestMAC, type: EtherType,
                         vlan: UInt16? = nil, _ payload: [UInt8]) -> [UInt8] {
        let header = EthernetHeader(destination: dst, source: src, etherType: type, vlanTag: vlan)
        var h = [UInt8](repeating: 0, count: header.headerLength)
        h.withUnsafeMutableBytes { _ = header.emit(into: $0) }
        return h + payload
    }

    static func ipv4(src: IPv4Address = guestIP, dst: IPv4Address, proto: IPProtocol, ttl: UInt8 = 64, id: UInt16 = 0x1111,
                     flags: UInt16 = 0x4000, _ l4: [UInt8]) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 20)
        let header = IPv4Header(totalLength: 20 + l4.count, identification: id, flagsFragmentOffset: flags, ttl: ttl,
                                protocolNumber: proto, source: src, destination: dst)
        h.withUnsafeMutableBytes { _ = header.emit(into: $0) }
        return h + l4
    }

    static func udp(src: IPv4Address, dst: IPv4Address, srcPort: UInt16, dstPort: UInt16, _ payload: [UInt8]) -> [UInt8] {
        let length = 8 + payload.count
        var d = [UInt8](repeating: 0, count: 8) + payload
        d.withUnsafeMutableBytes {
            _ = UDPHeader(sourcePort: srcPort, destinationPort: dstPort, length: length).emit(into: $0, source: src, destination: dst)
        }
        return d
    }

    static func icmp(type: UInt8, code: UInt8 = 0, rest: UInt32, _ body: [UInt8]) -> [UInt8] {
        let length = 8 + body.count
        var m = [UInt8](repeating: 0, count: 8) + body
        m.withUnsafeMutableBytes { _ = ICMPv4Header(type: type, code: code, restOfHeader: rest).emit(into: $0, messageLength: length) }
        return m
    }

    static func tcp(src: IPv4Address, dst: IPv4Address, srcPort: UInt16, dstPort: UInt16, seq: UInt32, ack: UInt32,
                    flags: TCPFlags, _ payload: [UInt8] = []) -> [UInt8] {
        let header = TCPHeader(sourcePort: srcPort, destinationPort: dstPort, sequence: seq, acknowledgment: ack,
                               flags: flags, window: 65_535)
        let length = 20 + payload.count
        var s = [UInt8](repeating: 0, count: 20) + payload
        s.withUnsafeMutableBytes { _ = header.emit(into: $0, segmentLength: length, source: src, destination: dst) }
        return s
    }

    // MARK: Whole frames

    static func udpFrame(src: IPv4Address = guestIP, dst: IPv4Address, srcPort: UInt16 = 40_000, dstPort: UInt16,
                         ttl: UInt8 = 64, mac: MACAddress = guestMAC, ethDst: MACAddress = gatewayMAC, _ payload: [UInt8]) -> [UInt8] {
        ethernet(to: ethDst, from: mac, type: .ipv4,
                 ipv4(src: src, dst: dst, proto: .udp, ttl: ttl, udp(src: src, dst: dst, srcPort: srcPort, dstPort: dstPort, payload)))
    }

    static func echoRequestFrame(src: IPv4Address = guestIP, dst: IPv4Address, id: UInt16, seq: UInt16, ttl: UInt8 = 64,
                                 _ data: [UInt8]) -> [UInt8] {
        ethernet(type: .ipv4, ipv4(src: src, dst: dst, proto: .icmp, ttl: ttl,
                                   icmp(type: ICMPv4Header.echoRequest, rest: UInt32(id) << 16 | UInt32(seq), data)))
    }

    static func arpFrame(op: ARPPacket.Operation = .request, senderMAC: MACAddress = guestMAC, senderIP: IPv4Address = guestIP,
                         targetIP: IPv4Address, ethDst: MACAddress = .broadcast) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: ARPPacket.length)
        let arp = ARPPacket(operation: op, senderMAC: senderMAC, senderIP: senderIP, targetMAC: .zero, targetIP: targetIP)
        p.withUnsafeMutableBytes { _ = arp.emit(into: $0) }
        return ethernet(to: ethDst, from: senderMAC, type: .arp, p)
    }

    static func tcpFrame(src: IPv4Address = guestIP, dst: IPv4Address, srcPort: UInt16 = 50_000, dstPort: UInt16,
                         seq: UInt32, ack: UInt32 = 0, flags: TCPFlags, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(type: .ipv4, ipv4(src: src, dst: dst, proto: .tcp,
                                   tcp(src: src, dst: dst, srcPort: srcPort, dstPort: dstPort, seq: seq, ack: ack, flags: flags, payload)))
    }

    /// A client DHCP message (BOOTREQUEST), written with DHCPWriter and turned into a request.
    static func dhcpPayload(_ type: DHCPMessageType, mac: MACAddress = guestMAC, xid: UInt32 = 0x3903_F326,
                            ciaddr: IPv4Address = .any, broadcastFlag: Bool = false, requested: IPv4Address? = nil,
                            serverID: IPv4Address? = nil) -> [UInt8] {
        let template = DHCPMessage(op: 1, transactionID: xid, flags: broadcastFlag ? 0x8000 : 0, clientAddress: ciaddr,
                                   clientMAC: mac, messageType: type)
        var buf = [UInt8](repeating: 0, count: 576)
        let n = buf.withUnsafeMutableBytes { b -> Int in
            var w = DHCPWriter(replyTo: template, into: b, yourAddress: .any, serverAddress: .any)
            w.option(DHCPOption.messageType, [type.rawValue])
            if let r = requested { w.option(DHCPOption.requestedAddress, address: r) }
            if let s = serverID { w.option(DHCPOption.serverIdentifier, address: s) }
            let n = w.finish()
            b.put8(0, 1)   // BOOTREQUEST
            return n
        }
        return Array(buf[..<n])
    }

    /// A DHCP message from an unconfigured client: 0.0.0.0:68 -> 255.255.255.255:67, to the broadcast MAC.
    static func dhcpFrame(_ type: DHCPMessageType, mac: MACAddress = guestMAC, xid: UInt32 = 0x3903_F326,
                          ciaddr: IPv4Address = .any, broadcastFlag: Bool = false, requested: IPv4Address? = nil,
                          serverID: IPv4Address? = nil, src: IPv4Address = .any, dst: IPv4Address = .broadcast) -> [UInt8] {
        udpFrame(src: src, dst: dst, srcPort: 68, dstPort: 67, mac: mac, ethDst: dst == .broadcast ? .broadcast : gatewayMAC,
                 dhcpPayload(type, mac: mac, xid: xid, ciaddr: ciaddr, broadcastFlag: broadcastFlag, requested: requested, serverID: serverID))
    }

    /// A standard query with one question (`name`, type A, class IN), recursion desired.
    static func dnsQuery(id: UInt16, name: String = "example.com") -> [UInt8] {
        var q: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") { q.append(UInt8(label.utf8.count)); q += Array(label.utf8) }
        q += [0, 0, 1, 0, 1]
        return q
    }
}

extension Array where Element == UInt8 {
    /// The frame with Ethernet padding (`byte`) appended up to `length`.
    func padded(to length: Int, with byte: UInt8 = 0) -> [UInt8] { self + [UInt8](repeating: byte, count: Swift.max(0, length - count)) }

    /// Recomputes the IPv4 header checksum of a frame whose IPv4 header starts at byte 14 (after a test edited it).
    mutating func fixIPv4Checksum() {
        let ihl = Int(self[14] & 0x0F) * 4
        self[24] = 0; self[25] = 0
        let sum = self.withUnsafeBytes { InternetChecksum.of(UnsafeRawBufferPointer(rebasing: $0[14 ..< 14 + ihl])) }
        self[24] = UInt8(sum >> 8); self[25] = UInt8(sum & 0xFF)
    }
}

/// Parses `bytes` with a VNetWire parser; nil when malformed.
func parsed<T>(_ bytes: some Collection<UInt8>, _ parse: (UnsafeRawBufferPointer) throws -> T) -> T? {
    Array(bytes).withUnsafeBytes { b in try? parse(b) }
}
