// DHCPv6 (RFC 8415) for stateless service (RFC 8415 §6.1): vnet answers INFORMATION-REQUEST with DNS servers
// (RFC 3646 option 23) and the search list (option 24). Addresses come from SLAAC, not from DHCPv6.
//
// `DHCPv6Message.parse` walks the options with every length checked against the datagram: an option whose
// length runs past the end makes the message malformed. The client identifier is kept as a range of the
// input, so the reply can echo it without copying it first; `emitReply` refuses (returns nil) when the reply
// would not fit the space given, so an oversized CLIENTID can never overrun it (BAD-INPUTS 9).

public struct DHCPv6Message: Sendable {
    public static let serverPort: UInt16 = 547
    public static let clientPort: UInt16 = 546

    public static let solicit: UInt8 = 1
    public static let advertise: UInt8 = 2
    public static let request: UInt8 = 3
    public static let reply: UInt8 = 7
    public static let informationRequest: UInt8 = 11

    public static let optionClientID: UInt16 = 1
    public static let optionServerID: UInt16 = 2
    public static let optionStatusCode: UInt16 = 13
    public static let optionDNSServers: UInt16 = 23
    public static let optionDomainList: UInt16 = 24

    public var type: UInt8
    public var transactionID: UInt32
    /// Where the client identifier option's value lies in the parsed buffer.
    public var clientID: Range<Int>?
    /// A server identifier was present (a message meant for one server).
    public var serverID: Range<Int>?

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> DHCPv6Message {
        guard p.count >= 4 else { throw .malformed }
        var m = DHCPv6Message(type: p.u8(0), transactionID: p.u32(0) & 0xFF_FFFF, clientID: nil, serverID: nil)
        var i = 4
        while i < p.count {
            guard i + 4 <= p.count else { throw .malformed }
            let code = p.u16(i)
            let len = Int(p.u16(i + 2))
            guard i + 4 + len <= p.count else { throw .malformed }
            switch code {
            case optionClientID: if m.clientID == nil { m.clientID = i + 4 ..< i + 4 + len }
            case optionServerID: if m.serverID == nil { m.serverID = i + 4 ..< i + 4 + len }
            default: break
            }
            i += 4 + len
        }
        return m
    }

    /// Writes a REPLY to this message into `out`: server ID (DUID-LL of `serverMAC`), the client's ID echoed,
    /// DNS servers and the search list (already in DNS name encoding). Returns the length, or nil when it
    /// does not fit `out`. `request` is the buffer this message was parsed from.
    public func emitReply(request: UnsafeRawBufferPointer, serverMAC: MACAddress, dnsServers: [IPv6Address],
                          searchList: [UInt8], into out: UnsafeMutableRawBufferPointer) -> Int? {
        let clientLength = clientID?.count ?? 0
        var n = 4 + (4 + 10)
        if clientID != nil { n += 4 + clientLength }
        if !dnsServers.isEmpty { n += 4 + 16 * dnsServers.count }
        if !searchList.isEmpty { n += 4 + searchList.count }
        guard n <= out.count else { return nil }
        out.put32(0, UInt32(DHCPv6Message.reply) << 24 | (transactionID & 0xFF_FFFF))
        var i = 4
        // DUID-LL (RFC 8415 §11.4): type 3, hardware type 1 (Ethernet), the MAC.
        out.put16(i, DHCPv6Message.optionServerID); out.put16(i + 2, 10)
        out.put16(i + 4, 3); out.put16(i + 6, 1); serverMAC.write(to: out, at: i + 8)
        i += 14
        if let c = clientID {
            out.put16(i, DHCPv6Message.optionClientID); out.put16(i + 2, UInt16(clientLength))
            out.copy(request.slice(c), to: i + 4)
            i += 4 + clientLength
        }
        if !dnsServers.isEmpty {
            out.put16(i, DHCPv6Message.optionDNSServers); out.put16(i + 2, UInt16(16 * dnsServers.count))
            for (k, d) in dnsServers.enumerated() { d.write(to: out, at: i + 4 + 16 * k) }
            i += 4 + 16 * dnsServers.count
        }
        if !searchList.isEmpty {
            out.put16(i, DHCPv6Message.optionDomainList); out.put16(i + 2, UInt16(searchList.count))
            for (k, b) in searchList.enumerated() { out.put8(i + 4 + k, b) }
            i += 4 + searchList.count
        }
        return i
    }
}
