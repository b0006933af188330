// IPv4 headers (RFC 791).
//
// `IPv4Header.parse` checks: version 4, IHL >= 5, IHL*4 <= bytes present, total length >= IHL*4 and
// <= bytes present. A total length *shorter* than the buffer is legal (Ethernet pads to 60 bytes); the
// padding is excluded from `payloadRange`, so it is never read or echoed. The header checksum is checked
// by the caller that cares (`headerChecksumValid`), since guests with offload may leave it to us.

public struct IPProtocol: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let icmp = IPProtocol(rawValue: 1)
    public static let tcp = IPProtocol(rawValue: 6)
    public static let udp = IPProtocol(rawValue: 17)
    public static let icmpv6 = IPProtocol(rawValue: 58)
}

public struct IPv4Header: Hashable, Sendable {
    public static let minimumLength = 20

    public var headerLength: Int          // bytes, including options
    public var dscpECN: UInt8
    public var totalLength: Int
    public var identification: UInt16
    public var flagsFragmentOffset: UInt16
    public var ttl: UInt8
    public var protocolNumber: IPProtocol
    public var checksum: UInt16
    public var source: IPv4Address
    public var destination: IPv4Address

    public init(headerLength: Int = 20, dscpECN: UInt8 = 0, totalLength: Int, identification: UInt16 = 0,
                flagsFragmentOffset: UInt16 = 0x4000, ttl: UInt8 = 64, protocolNumber: IPProtocol, checksum: UInt16 = 0,
                source: IPv4Address, destination: IPv4Address) {
        self.headerLength = headerLength
        self.dscpECN = dscpECN
        self.totalLength = totalLength
        self.identification = identification
        self.flagsFragmentOffset = flagsFragmentOffset
        self.ttl = ttl
        self.protocolNumber = protocolNumber
        self.checksum = checksum
        self.source = source
        self.destination = destination
    }

    public var dontFragment: Bool { flagsFragmentOffset & 0x4000 != 0 }
    public var moreFragments: Bool { flagsFragmentOffset & 0x2000 != 0 }
    /// The fragment offset in bytes.
    public var fragmentOffset: Int { Int(flagsFragmentOffset & 0x1FFF) * 8 }
    public var isFragment: Bool { moreFragments || fragmentOffset != 0 }
    /// The payload's byte range within the packet the header was parsed from.
    public var payloadRange: Range<Int> { headerLength ..< totalLength }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> IPv4Header {
        guard p.count >= 20 else { throw .malformed }
        let vihl = p.u8(0)
        guard vihl >> 4 == 4 else { throw .malformed }
        let ihl = Int(vihl & 0x0F) * 4
        let total = Int(p.u16(2))
        guard ihl >= 20, ihl <= p.count, total >= ihl, total <= p.count else { throw .malformed }
        return IPv4Header(headerLength: ihl, dscpECN: p.u8(1), totalLength: total, identification: p.u16(4),
                          flagsFragmentOffset: p.u16(6), ttl: p.u8(8), protocolNumber: IPProtocol(rawValue: p.u8(9)),
                          checksum: p.u16(10), source: IPv4Address(reading: p, at: 12), destination: IPv4Address(reading: p, at: 16))
    }

    /// True when the header (as present in `p`, which `parse` accepted) sums to zero.
    public static func headerChecksumValid(_ p: UnsafeRawBufferPointer, headerLength: Int) -> Bool {
        InternetChecksum.of(p.slice(0 ..< headerLength)) == 0
    }

    /// Writes a 20-byte header (options are never emitted) with a fresh checksum; returns 20.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer) -> Int {
        p.put8(0, 0x45); p.put8(1, dscpECN)
        p.put16(2, UInt16(totalLength)); p.put16(4, identification); p.put16(6, flagsFragmentOffset)
        p.put8(8, ttl); p.put8(9, protocolNumber.rawValue); p.put16(10, 0)
        source.write(to: p, at: 12); destination.write(to: p, at: 16)
        p.put16(10, InternetChecksum.of(UnsafeRawBufferPointer(p.slice(0 ..< 20))))
        return 20
    }
}
