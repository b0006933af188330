// Address values of the public API: small, Sendable, parsed from and printed as text.

import VNetWire
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address.
///
/// Create one from text (`IPAddress("192.168.127.1")`, `IPAddress("::1")`) or from a literal.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible, ExpressibleByStringLiteral {
    /// The address family.
    public enum Family: Sendable, Hashable {
        /// IPv4: four bytes.
        case ipv4
        /// IPv6: sixteen bytes.
        case ipv6
    }

    /// The address family.
    public let family: Family
    /// The address in network byte order: 4 bytes for IPv4, 16 for IPv6.
    public let bytes: [UInt8]

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text; nil when it is neither.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            family = .ipv4
            bytes = withUnsafeBytes(of: &v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            family = .ipv6
            bytes = withUnsafeBytes(of: &v6) { Array($0) }
            return
        }
        return nil
    }

    /// An IPv4 address from its four bytes.
    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        family = .ipv4
        bytes = [a, b, c, d]
    }

    /// Parses a literal; a literal that is not an address is a programming error.
    public init(stringLiteral value: String) {
        guard let a = IPAddress(value) else { preconditionFailure("'\(value)' is not an IP address") }
        self = a
    }

    /// The IPv4 address as a host-order integer (nil for IPv6).
    var ipv4Value: UInt32? {
        guard family == .ipv4 else { return nil }
        return UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])
    }

    /// The data path's address value (VNetWire's, IPv4 held IPv4-mapped).
    var wire: VNetWire.IPAddress {
        if let v = ipv4Value { return VNetWire.IPAddress(IPv4Address(rawValue: v)) }
        return VNetWire.IPAddress(IPv6Address(bytes: bytes))
    }

    init(family: Family, bytes: [UInt8]) {
        self.family = family
        self.bytes = bytes
    }

    init(wire a: VNetWire.IPAddress) {
        if let v4 = a.v4 { self.init(ipv4Value: v4.rawValue) } else { self.init(family: .ipv6, bytes: a.v6.bytes) }
    }

    init(ipv4Value v: UInt32) {
        self.init(UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF))
    }

    /// The conventional text form (inet_ntop).
    public var description: String {
        var out = [CChar](repeating: 0, count: 64)
        let af = family == .ipv4 ? AF_INET : AF_INET6
        bytes.withUnsafeBytes { _ = inet_ntop(af, $0.baseAddress, &out, socklen_t(out.count)) }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An IPv6 prefix, as in `fd00:7:1::/64`: guests form addresses in it by SLAAC when it is a /64.
public struct IPv6Prefix: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible, ExpressibleByStringLiteral {
    /// The prefix's address (host bits must be zero).
    public let address: IPAddress
    /// The prefix length, 1 to 126 (SLAAC needs 64).
    public let prefixLength: Int

    /// Parses `ADDR/N` (N from 1 to 126, host bits zero; not link-local, multicast or loopback); nil otherwise.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPAddress(String(parts[0])), a.family == .ipv6,
              let n = Int(parts[1]), (1 ... 126).contains(n) else { return nil }
        let wire = IPv6Address(bytes: a.bytes)
        let net = IPv6Network(address: wire, prefixLength: n)
        guard net.address == wire, !wire.isLinkLocal, !wire.isMulticast, !wire.isLoopback, !wire.isUnspecified else { return nil }
        address = a
        prefixLength = n
    }

    /// Parses a literal; a literal that is not a prefix is a programming error.
    public init(stringLiteral value: String) {
        guard let p = IPv6Prefix(value) else { preconditionFailure("'\(value)' is not an IPv6 prefix ADDR/1-126") }
        self = p
    }

    /// `fec0::/64`.
    public var description: String { "\(address)/\(prefixLength)" }
}

/// An IPv4 subnet: an address and a prefix length, as in `192.168.127.0/24`.
public struct IPv4Subnet: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible, ExpressibleByStringLiteral {
    /// The network's address (host bits are cleared).
    public let address: IPAddress
    /// The prefix length, 8 to 30.
    public let prefixLength: Int

    /// Parses `A.B.C.D/N` with N from 8 to 30; nil otherwise.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPAddress(String(parts[0])), let v = a.ipv4Value,
              let n = Int(parts[1]), (8 ... 30).contains(n) else { return nil }
        let mask = UInt32.max << (32 - n)
        address = IPAddress(ipv4Value: v & mask)
        prefixLength = n
    }

    /// Parses a literal; a literal that is not a subnet is a programming error.
    public init(stringLiteral value: String) {
        guard let s = IPv4Subnet(value) else { preconditionFailure("'\(value)' is not an IPv4 subnet A.B.C.D/8-30") }
        self = s
    }

    var mask: UInt32 { UInt32.max << (32 - prefixLength) }
    var base: UInt32 { address.ipv4Value! }
    var broadcast: UInt32 { base | ~mask }

    /// True when `a` is an IPv4 address inside the subnet.
    public func contains(_ a: IPAddress) -> Bool {
        guard let v = a.ipv4Value else { return false }
        return v & mask == base
    }

    /// `A.B.C.D/N`.
    public var description: String { "\(address)/\(prefixLength)" }
}

/// An Ethernet (MAC) address.
public struct EthernetAddress: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible {
    /// The 48 bits, most significant byte first.
    public let rawValue: UInt64

    /// The 48-bit value (higher bits are ignored).
    public init(rawValue: UInt64) { self.rawValue = rawValue & 0xFFFF_FFFF_FFFF }

    /// Parses `52:54:00:12:34:56` (or with `-`); nil otherwise.
    public init?(_ text: String) {
        let parts = text.split(whereSeparator: { $0 == ":" || $0 == "-" })
        guard parts.count == 6 else { return nil }
        var v: UInt64 = 0
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            v = v << 8 | UInt64(b)
        }
        rawValue = v
    }

    /// A random locally administered unicast address under QEMU's 52:54:00 prefix.
    public static func random() -> EthernetAddress {
        EthernetAddress(rawValue: 0x5254_0000_0000 | UInt64.random(in: 0 ... 0xFF_FFFF))
    }

    /// True for group (multicast and broadcast) addresses.
    public var isMulticast: Bool { rawValue >> 40 & 1 == 1 }

    /// Lower-case, colon-separated.
    public var description: String {
        (0 ..< 6).map { i in
            let b = UInt8((rawValue >> (40 - 8 * UInt64(i))) & 0xFF)
            return (b < 16 ? "0" : "") + String(b, radix: 16)
        }.joined(separator: ":")
    }
}
