// ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861): the header, the messages vnet answers or relays,
// and NDP options walked with every length checked (an option of length 0 is invalid, RFC 4861 §4.6, and
// makes the whole message malformed).

public struct ICMPv6Header: Hashable, Sendable {
    public static let length = 8

    public static let destinationUnreachable: UInt8 = 1
    public static let packetTooBig: UInt8 = 2
    public static let timeExceeded: UInt8 = 3
    public static let parameterProblem: UInt8 = 4
    public static let echoRequest: UInt8 = 128
    public static let echoReply: UInt8 = 129
    public static let routerSolicitation: UInt8 = 133
    public static let routerAdvertisement: UInt8 = 134
    public static let neighborSolicitation: UInt8 = 135
    public static let neighborAdvertisement: UInt8 = 136

    public var type: UInt8
    public var code: UInt8
    public var checksum: UInt16
    /// Bytes 4..<8: identifier and sequence for echo, MTU for packet-too-big, pointer for parameter problem.
    public var restOfHeader: UInt32

    public init(type: UInt8, code: UInt8, checksum: UInt16 = 0, restOfHeader: UInt32 = 0) {
        self.type = type
        self.code = code
        self.checksum = checksum
        self.restOfHeader = restOfHeader
    }

    public var identifier: UInt16 { UInt16(truncatingIfNeeded: restOfHeader >> 16) }
    public var sequence: UInt16 { UInt16(truncatingIfNeeded: restOfHeader) }
    /// Error messages have types below 128 (RFC 4443 §2.1).
    public var isError: Bool { type < 128 }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> ICMPv6Header {
        guard p.count >= 8 else { throw .malformed }
        return ICMPv6Header(type: p.u8(0), code: p.u8(1), checksum: p.u16(2), restOfHeader: UnsafeRawBufferPointer(p).u32(4))
    }

    public static func checksumValid(_ p: UnsafeRawBufferPointer, source: IPv6Address, destination: IPv6Address) -> Bool {
        let s = InternetChecksum.add(p, to: InternetChecksum.pseudoHeader(source: source, destination: destination, protocolNumber: 58, length: p.count))
        return InternetChecksum.finish(s) == 0
    }

    /// Writes the header for a message whose body already sits at `p[8..<messageLength]`, with its checksum.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer, messageLength: Int, source: IPv6Address, destination: IPv6Address) -> Int {
        p.put8(0, type); p.put8(1, code); p.put16(2, 0); p.put32(4, restOfHeader)
        let s = InternetChecksum.add(UnsafeRawBufferPointer(p.slice(0 ..< messageLength)),
                                     to: InternetChecksum.pseudoHeader(source: source, destination: destination, protocolNumber: 58, length: messageLength))
        p.put16(2, InternetChecksum.finish(s))
        return 8
    }
}

/// Neighbor Discovery options (RFC 4861 §4.6) of interest: source/target link-layer address.
public enum NDPOption {
    public static let sourceLinkLayer: UInt8 = 1
    public static let targetLinkLayer: UInt8 = 2
    public static let prefixInformation: UInt8 = 3
    public static let mtu: UInt8 = 5
    /// RFC 8106 recursive DNS server.
    public static let recursiveDNSServer: UInt8 = 25
    /// RFC 8106 DNS search list.
    public static let dnsSearchList: UInt8 = 31

    /// Walks the options in `p`; returns the link-layer address of the given kind, if present. Throws when an
    /// option's length is 0 or runs past the end.
    public static func linkLayerAddress(_ p: UnsafeRawBufferPointer, kind: UInt8) throws(WireError) -> MACAddress? {
        var i = 0
        var found: MACAddress? = nil
        while i < p.count {
            guard i + 2 <= p.count else { throw .malformed }
            let len = Int(p.u8(i + 1)) * 8
            guard len > 0, i + len <= p.count else { throw .malformed }
            if p.u8(i) == kind && len == 8 && found == nil { found = MACAddress(reading: p, at: i + 2) }
            i += len
        }
        return found
    }
}

/// A Neighbor Solicitation (RFC 4861 §4.3): 4 reserved bytes, the target address, options.
public struct NeighborSolicitation: Hashable, Sendable {
    public var target: IPv6Address
    public var sourceLinkLayer: MACAddress?

    /// `p` is the whole ICMPv6 message.
    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> NeighborSolicitation {
        guard p.count >= 24 else { throw .malformed }
        let mac = try NDPOption.linkLayerAddress(p.slice(24 ..< p.count), kind: NDPOption.sourceLinkLayer)
        return NeighborSolicitation(target: IPv6Address(reading: p, at: 8), sourceLinkLayer: mac)
    }
}

/// A Neighbor Advertisement (RFC 4861 §4.4).
public struct NeighborAdvertisement: Hashable, Sendable {
    public var target: IPv6Address
    public var targetLinkLayer: MACAddress?
    public var router: Bool
    public var solicited: Bool
    public var override: Bool

    public init(target: IPv6Address, targetLinkLayer: MACAddress?, router: Bool, solicited: Bool, override: Bool) {
        self.target = target
        self.targetLinkLayer = targetLinkLayer
        self.router = router
        self.solicited = solicited
        self.override = override
    }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> NeighborAdvertisement {
        guard p.count >= 24 else { throw .malformed }
        let flags = p.u8(4)
        let mac = try NDPOption.linkLayerAddress(p.slice(24 ..< p.count), kind: NDPOption.targetLinkLayer)
        return NeighborAdvertisement(target: IPv6Address(reading: p, at: 8), targetLinkLayer: mac,
                                     router: flags & 0x80 != 0, solicited: flags & 0x40 != 0, override: flags & 0x20 != 0)
    }

    /// The message length `emit` writes: 24, plus 8 with a link-layer option.
    public var length: Int { targetLinkLayer == nil ? 24 : 32 }

    /// Writes the whole ICMPv6 message with its checksum; returns its length.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer, source: IPv6Address, destination: IPv6Address) -> Int {
        let n = length
        p.zero(0 ..< n)
        p.put8(4, (router ? 0x80 : 0) | (solicited ? 0x40 : 0) | (override ? 0x20 : 0))
        target.write(to: p, at: 8)
        if let mac = targetLinkLayer {
            p.put8(24, NDPOption.targetLinkLayer); p.put8(25, 1)
            mac.write(to: p, at: 26)
        }
        ICMPv6Header(type: ICMPv6Header.neighborAdvertisement, code: 0, restOfHeader: UnsafeRawBufferPointer(p).u32(4))
            .emit(into: p, messageLength: n, source: source, destination: destination)
        return n
    }
}

/// A Router Advertisement (RFC 4861 §4.2) with the options a SLAAC guest needs: source link-layer address,
/// MTU, one prefix (on-link, autonomous), and RDNSS/DNSSL (RFC 8106).
public struct RouterAdvertisement: Sendable {
    public var hopLimit: UInt8 = 64
    /// O flag: other configuration (DNS) by stateless DHCPv6.
    public var otherConfiguration = true
    public var routerLifetime: UInt16 = 1800
    public var sourceLinkLayer: MACAddress
    public var mtu: UInt32?
    public var prefix: IPv6Network
    public var validLifetime: UInt32 = 86400
    public var preferredLifetime: UInt32 = 14400
    public var dnsServers: [IPv6Address]
    public var dnsLifetime: UInt32 = 1800
    /// DNS search list, already in DNS name encoding (RFC 1035 labels).
    public var searchList: [UInt8]

    public init(sourceLinkLayer: MACAddress, mtu: UInt32?, prefix: IPv6Network, dnsServers: [IPv6Address], searchList: [UInt8] = []) {
        self.sourceLinkLayer = sourceLinkLayer
        self.mtu = mtu
        self.prefix = prefix
        self.dnsServers = dnsServers
        self.searchList = searchList
    }

    public var length: Int {
        var n = 16 + 8 + 32
        if mtu != nil { n += 8 }
        if !dnsServers.isEmpty { n += 8 + 16 * dnsServers.count }
        if !searchList.isEmpty { n += 8 + (searchList.count + 7) / 8 * 8 }
        return n
    }

    /// Writes the whole message with its checksum; returns its length. `p` must hold `length` bytes.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer, source: IPv6Address, destination: IPv6Address) -> Int {
        let n = length
        p.zero(0 ..< n)
        p.put8(4, hopLimit)
        p.put8(5, otherConfiguration ? 0x40 : 0)
        p.put16(6, routerLifetime)
        // Reachable time and retrans timer: 0 (unspecified).
        var i = 16
        p.put8(i, NDPOption.sourceLinkLayer); p.put8(i + 1, 1); sourceLinkLayer.write(to: p, at: i + 2); i += 8
        if let m = mtu { p.put8(i, NDPOption.mtu); p.put8(i + 1, 1); p.put32(i + 4, m); i += 8 }
        p.put8(i, NDPOption.prefixInformation); p.put8(i + 1, 4); p.put8(i + 2, UInt8(prefix.prefixLength))
        p.put8(i + 3, 0xC0)    // L and A
        p.put32(i + 4, validLifetime); p.put32(i + 8, preferredLifetime)
        prefix.address.write(to: p, at: i + 16)
        i += 32
        if !dnsServers.isEmpty {
            p.put8(i, NDPOption.recursiveDNSServer); p.put8(i + 1, UInt8(1 + 2 * dnsServers.count)); p.put32(i + 4, dnsLifetime)
            for (k, d) in dnsServers.enumerated() { d.write(to: p, at: i + 8 + 16 * k) }
            i += 8 + 16 * dnsServers.count
        }
        if !searchList.isEmpty {
            let body = (searchList.count + 7) / 8 * 8
            p.put8(i, NDPOption.dnsSearchList); p.put8(i + 1, UInt8(1 + body / 8)); p.put32(i + 4, dnsLifetime)
            for (k, b) in searchList.enumerated() { p.put8(i + 8 + k, b) }
            i += 8 + body
        }
        ICMPv6Header(type: ICMPv6Header.routerAdvertisement, code: 0, restOfHeader: UnsafeRawBufferPointer(p).u32(4))
            .emit(into: p, messageLength: n, source: source, destination: destination)
        return n
    }
}
