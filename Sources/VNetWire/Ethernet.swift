// Ethernet II framing (IEEE 802.3), with an optional single 802.1Q tag.

public struct EtherType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let ipv4 = EtherType(rawValue: 0x0800)
    public static let arp = EtherType(rawValue: 0x0806)
    public static let vlan = EtherType(rawValue: 0x8100)
    public static let ipv6 = EtherType(rawValue: 0x86DD)
}

/// The Ethernet header of a frame. Frames carry no FCS on any transport vnet speaks.
public struct EthernetHeader: Hashable, Sendable {
    public static let length = 14
    /// Frames shorter than this are padded with zeros on the way out (IEEE 802.3 minimum without FCS).
    public static let minimumFrameLength = 60

    public var destination: MACAddress
    public var source: MACAddress
    public var etherType: EtherType
    /// The 802.1Q tag control information, when the frame was tagged.
    public var vlanTag: UInt16?

    public init(destination: MACAddress, source: MACAddress, etherType: EtherType, vlanTag: UInt16? = nil) {
        self.destination = destination
        self.source = source
        self.etherType = etherType
        self.vlanTag = vlanTag
    }

    /// The header's length on the wire: 14, or 18 when tagged.
    public var headerLength: Int { vlanTag == nil ? 14 : 18 }

    public static func parse(_ frame: UnsafeRawBufferPointer) throws(WireError) -> EthernetHeader {
        guard frame.count >= 14 else { throw .malformed }
        var type = frame.u16(12)
        var tag: UInt16? = nil
        if type == EtherType.vlan.rawValue {
            guard frame.count >= 18 else { throw .malformed }
            tag = frame.u16(14)
            type = frame.u16(16)
        }
        return EthernetHeader(destination: MACAddress(reading: frame, at: 0), source: MACAddress(reading: frame, at: 6),
                              etherType: EtherType(rawValue: type), vlanTag: tag)
    }

    /// Writes the header; returns its length.
    @discardableResult
    public func emit(into buf: UnsafeMutableRawBufferPointer) -> Int {
        destination.write(to: buf, at: 0)
        source.write(to: buf, at: 6)
        if let tag = vlanTag {
            buf.put16(12, EtherType.vlan.rawValue)
            buf.put16(14, tag)
            buf.put16(16, etherType.rawValue)
            return 18
        }
        buf.put16(12, etherType.rawValue)
        return 14
    }
}
