// VXLAN (RFC 7348): the 8-byte header before each encapsulated Ethernet frame, and the flow hash that picks the
// outer UDP source port.
//
// Theory of Operation
// -------------------
// A VXLAN datagram's UDP payload is this header, then an inner Ethernet frame:
//
//     0      1      2      3
//     flags  reserved (24 bits)
//     VNI (24 bits)         reserved (8 bits)
//
// The I flag (0x08) says the VNI is valid and must be set; the other flag bits and every reserved bit are
// written as zero and ignored on receipt (§5). `parse` checks the length and the I flag only. The inner frame
// must not carry an 802.1Q tag (§6.1): `isTaggedInner` says when one does, so the port can discard it.
// `flowHash` mixes the inner frame's MACs, EtherType and, for IPv4/IPv6, the addresses, protocol and the first
// four bytes after a non-fragment IPv4 header or the IPv6 fixed header (the ports of TCP/UDP/SCTP), so one
// flow always leaves from one outer source port and routers in the underlay can spread flows (§5, "Source
// Port"). Every read is bounds-checked: a frame too short for a field simply contributes less to the hash.

public struct VXLANHeader: Hashable, Sendable {
    public static let length = 8
    /// The I flag: the VNI field is valid.
    public static let validVNIFlag: UInt8 = 0x08
    /// The IANA port; Linux's vxlan device defaults to 8472 instead.
    public static let ianaPort: UInt16 = 4789
    /// Largest VNI (24 bits).
    public static let maximumVNI: UInt32 = 0xFF_FFFF
    /// Outer IPv4 + UDP + VXLAN + inner Ethernet: what an IPv4 underlay takes from its MTU.
    public static let ipv4Overhead = 20 + 8 + 8 + 14
    /// Outer IPv6 + UDP + VXLAN + inner Ethernet.
    public static let ipv6Overhead = 40 + 8 + 8 + 14

    public var vni: UInt32

    public init(vni: UInt32) { self.vni = vni & VXLANHeader.maximumVNI }

    public enum ParseError: Error, Equatable, Sendable {
        /// Fewer than 8 bytes.
        case short
        /// The I flag is clear.
        case badFlags
    }

    /// Reads the header at the start of a UDP payload. The inner frame is `p[8...]`.
    public static func parse(_ p: UnsafeRawBufferPointer) throws(ParseError) -> VXLANHeader {
        guard p.count >= length else { throw .short }
        guard p[0] & validVNIFlag != 0 else { throw .badFlags }
        return VXLANHeader(vni: UInt32(p[4]) << 16 | UInt32(p[5]) << 8 | UInt32(p[6]))
    }

    /// Writes the 8 bytes at the start of `p` (which must hold them): flags 0x08, the VNI, zero elsewhere.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer) -> Int {
        precondition(p.count >= VXLANHeader.length)
        p[0] = VXLANHeader.validVNIFlag
        p[1] = 0; p[2] = 0; p[3] = 0
        p[4] = UInt8(truncatingIfNeeded: vni >> 16)
        p[5] = UInt8(truncatingIfNeeded: vni >> 8)
        p[6] = UInt8(truncatingIfNeeded: vni)
        p[7] = 0
        return VXLANHeader.length
    }

    /// The inner frame carries an 802.1Q or 802.1ad tag (RFC 7348 §6.1: such frames are discarded).
    public static func isTaggedInner(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard frame.count >= 14 else { return false }
        let type = frame.u16(12)
        return type == 0x8100 || type == 0x88A8 || type == 0x9100
    }

    /// A hash of the inner frame's flow (see the header). Never allocates; reads only within `frame`.
    public static func flowHash(_ frame: UnsafeRawBufferPointer) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5
        @inline(__always) func mix(_ range: Range<Int>) {
            guard range.upperBound <= frame.count else { return }
            for i in range { h = (h ^ UInt32(frame[i])) &* 0x0100_0193 }
        }
        guard frame.count >= 14 else { mix(0 ..< frame.count); return h }
        mix(0 ..< 14)
        let type = frame.u16(12)
        if type == 0x0800, frame.count >= 34 {
            let ihl = Int(frame[14] & 0x0F) * 4
            mix(23 ..< 24)                 // protocol
            mix(26 ..< 34)                 // addresses
            let fragment = frame.u16(20) & 0x3FFF
            if ihl >= 20, fragment == 0 { mix(14 + ihl ..< 14 + ihl + 4) }
        } else if type == 0x86DD, frame.count >= 54 {
            mix(20 ..< 21)                 // next header
            mix(22 ..< 54)                 // addresses
            mix(54 ..< 58)
        }
        // Final avalanche so nearby flows land on different ports.
        h ^= h >> 16; h = h &* 0x7FEB_352D; h ^= h >> 15; h = h &* 0x846C_A68B; h ^= h >> 16
        return h
    }
}
