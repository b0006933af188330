// Link and network addresses as small value types (host byte order inside, network order on the wire).

/// A 48-bit Ethernet MAC address.
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address in the low 48 bits, first wire byte most significant.
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue & 0xFFFF_FFFF_FFFF }

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        rawValue = UInt64(b0) << 40 | UInt64(b1) << 32 | UInt64(b2) << 24 | UInt64(b3) << 16 | UInt64(b4) << 8 | UInt64(b5)
    }

    public static let broadcast = MACAddress(rawValue: 0xFFFF_FFFF_FFFF)
    public static let zero = MACAddress(rawValue: 0)

    public var isBroadcast: Bool { rawValue == 0xFFFF_FFFF_FFFF }
    /// Group bit: the least significant bit of the first octet.
    public var isMulticast: Bool { (rawValue >> 40) & 1 == 1 }

    /// Parses `52:54:00:12:34:56`.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var v: UInt64 = 0
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            v = v << 8 | UInt64(b)
        }
        rawValue = v
    }

    public init(reading buf: UnsafeRawBufferPointer, at offset: Int) {
        var v: UInt64 = 0
        for i in 0 ..< 6 { v = v << 8 | UInt64(buf[offset + i]) }
        rawValue = v
    }

    public func write(to buf: UnsafeMutableRawBufferPointer, at offset: Int) {
        for i in 0 ..< 6 { buf[offset + i] = UInt8(truncatingIfNeeded: rawValue >> UInt64(40 - 8 * i)) }
    }

    public var description: String {
        (0 ..< 6).map { i -> String in
            let b = UInt8(truncatingIfNeeded: rawValue >> UInt64(40 - 8 * i))
            return (b < 16 ? "0" : "") + String(b, radix: 16)
        }.joined(separator: ":")
    }
}

/// An IPv4 address; `rawValue` holds it in host order (10.0.2.2 == 0x0A000202).
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        rawValue = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    public static let any = IPv4Address(rawValue: 0)
    public static let broadcast = IPv4Address(rawValue: 0xFFFF_FFFF)
    public static let loopback = IPv4Address(127, 0, 0, 1)

    public var isLoopback: Bool { rawValue >> 24 == 127 }
    public var isMulticast: Bool { rawValue >> 28 == 0xE }
    public var isUnspecified: Bool { rawValue == 0 }

    /// Parses dotted-quad text, strictly: four decimal octets, no leading/trailing junk.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }), let o = UInt32(p), o <= 255 else { return nil }
            v = v << 8 | o
        }
        rawValue = v
    }

    public init(reading buf: UnsafeRawBufferPointer, at offset: Int) { rawValue = buf.u32(offset) }
    public func write(to buf: UnsafeMutableRawBufferPointer, at offset: Int) { buf.put32(offset, rawValue) }

    public static func < (l: Self, r: Self) -> Bool { l.rawValue < r.rawValue }

    public var description: String {
        "\(rawValue >> 24).\((rawValue >> 16) & 0xFF).\((rawValue >> 8) & 0xFF).\(rawValue & 0xFF)"
    }
}

/// An IPv4 prefix such as 10.0.2.0/24.
public struct IPv4Network: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var prefixLength: Int

    public init(address: IPv4Address, prefixLength: Int) {
        precondition((0 ... 32).contains(prefixLength))
        self.prefixLength = prefixLength
        self.address = IPv4Address(rawValue: address.rawValue & IPv4Network.mask(prefixLength))
    }

    public static func mask(_ prefixLength: Int) -> UInt32 {
        prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - prefixLength)
    }

    public var netmask: IPv4Address { IPv4Address(rawValue: IPv4Network.mask(prefixLength)) }
    public var broadcast: IPv4Address { IPv4Address(rawValue: address.rawValue | ~IPv4Network.mask(prefixLength)) }

    public func contains(_ a: IPv4Address) -> Bool {
        a.rawValue & IPv4Network.mask(prefixLength) == address.rawValue
    }

    public var description: String { "\(address)/\(prefixLength)" }
}
