// IPv6 (RFC 8200): addresses, prefixes, the fixed header and the extension-header walk.
//
// `IPv6Header.parse` checks: version 6, 40 header bytes present, payload length <= the bytes after the
// header. A payload length *shorter* than the buffer is legal (Ethernet pads short frames); the padding is
// excluded from `payloadRange`, so it is never read or echoed (BAD-INPUTS 3). A payload length of zero with a
// hop-by-hop header (jumbogram, RFC 2675) is not supported and is malformed here.
//
// `IPv6Header.upperLayer` walks hop-by-hop, routing, destination-options and fragment headers (at most 8,
// each length checked against the payload) to the upper-layer protocol, reporting a fragment header if one
// was crossed. Anything else ends the walk: that protocol number is the upper layer.

/// An IPv6 address: `high` holds the first 8 wire bytes, most significant first.
public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) { self.high = high; self.low = low }

    public static let unspecified = IPv6Address(high: 0, low: 0)
    public static let loopback = IPv6Address(high: 0, low: 1)
    /// ff02::1, all nodes on the link.
    public static let allNodes = IPv6Address(high: 0xFF02_0000_0000_0000, low: 1)
    /// ff02::2, all routers on the link.
    public static let allRouters = IPv6Address(high: 0xFF02_0000_0000_0000, low: 2)
    /// ff02::1:2, all DHCPv6 relay agents and servers.
    public static let allDHCPServers = IPv6Address(high: 0xFF02_0000_0000_0000, low: 0x1_0002)

    public init(reading buf: UnsafeRawBufferPointer, at offset: Int) {
        var h: UInt64 = 0, l: UInt64 = 0
        for i in 0 ..< 8 { h = h << 8 | UInt64(buf[offset + i]) }
        for i in 8 ..< 16 { l = l << 8 | UInt64(buf[offset + i]) }
        high = h
        low = l
    }

    public func write(to buf: UnsafeMutableRawBufferPointer, at offset: Int) {
        for i in 0 ..< 8 { buf[offset + i] = UInt8(truncatingIfNeeded: high >> UInt64(56 - 8 * i)) }
        for i in 0 ..< 8 { buf[offset + 8 + i] = UInt8(truncatingIfNeeded: low >> UInt64(56 - 8 * i)) }
    }

    /// The 16 wire bytes (control plane: this allocates).
    public var bytes: [UInt8] { (0 ..< 16).map { i in UInt8(truncatingIfNeeded: (i < 8 ? high : low) >> UInt64(56 - 8 * (i % 8))) } }

    public init(bytes b: [UInt8]) {
        precondition(b.count == 16)
        var h: UInt64 = 0, l: UInt64 = 0
        for i in 0 ..< 8 { h = h << 8 | UInt64(b[i]) }
        for i in 8 ..< 16 { l = l << 8 | UInt64(b[i]) }
        high = h
        low = l
    }

    /// The eight 16-bit groups, first one first.
    public var groups: [UInt16] {
        (0 ..< 8).map { i in UInt16(truncatingIfNeeded: (i < 4 ? high : low) >> UInt64(48 - 16 * (i % 4))) }
    }

    public init(groups g: [UInt16]) {
        precondition(g.count == 8)
        var h: UInt64 = 0, l: UInt64 = 0
        for i in 0 ..< 4 { h = h << 16 | UInt64(g[i]) }
        for i in 4 ..< 8 { l = l << 16 | UInt64(g[i]) }
        high = h
        low = l
    }

    public var isUnspecified: Bool { high == 0 && low == 0 }
    public var isLoopback: Bool { high == 0 && low == 1 }
    public var isMulticast: Bool { high >> 56 == 0xFF }
    /// fe80::/10.
    public var isLinkLocal: Bool { high >> 54 == 0x3FA }
    /// ::ffff:0:0/96, an IPv4 address written as IPv6.
    public var isIPv4Mapped: Bool { high == 0 && low >> 32 == 0xFFFF }
    /// The solicited-node multicast group of this address (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX.
    public var solicitedNode: IPv6Address {
        IPv6Address(high: 0xFF02_0000_0000_0000, low: 0x0000_0001_FF00_0000 | (low & 0xFF_FFFF))
    }
    /// The Ethernet group address a multicast IPv6 address maps to (RFC 2464 §7): 33:33 + its last 32 bits.
    public var multicastMAC: MACAddress { MACAddress(rawValue: 0x3333_0000_0000 | (low & 0xFFFF_FFFF)) }

    /// The modified EUI-64 interface identifier of a MAC (RFC 4291 appendix A), as SLAAC forms it.
    public static func interfaceIdentifier(of mac: MACAddress) -> UInt64 {
        let m = mac.rawValue
        let upper = (m >> 24) ^ 0x02_0000      // the universal/local bit flipped
        return upper << 40 | 0xFF_FE00_0000 | (m & 0xFF_FFFF)
    }

    public static func < (l: Self, r: Self) -> Bool { l.high != r.high ? l.high < r.high : l.low < r.low }

    /// Parses RFC 4291 text: eight groups, `::` once, and an optional dotted-quad tail. No zone index.
    public init?(_ text: some StringProtocol) {
        let s = String(text)
        guard !s.isEmpty, s.count <= 45, s.allSatisfy({ $0.isASCII }) else { return nil }
        var head: [UInt16] = [], tail: [UInt16] = []
        let halves = s.components(separatedByDoubleColon: ())
        guard halves.count <= 2 else { return nil }
        func groups(_ part: Substring, allowV4: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            let items = part.split(separator: ":", omittingEmptySubsequences: false)
            var out: [UInt16] = []
            for (n, item) in items.enumerated() {
                if n == items.count - 1 && allowV4 && item.contains(".") {
                    guard let v4 = IPv4Address(item) else { return nil }
                    out.append(UInt16(v4.rawValue >> 16))
                    out.append(UInt16(v4.rawValue & 0xFFFF))
                    continue
                }
                guard !item.isEmpty, item.count <= 4, let g = UInt16(item, radix: 16) else { return nil }
                out.append(g)
            }
            return out
        }
        if halves.count == 1 {
            guard let g = groups(halves[0], allowV4: true), g.count == 8 else { return nil }
            head = g
        } else {
            guard let h = groups(halves[0], allowV4: false), let t = groups(halves[1], allowV4: true), h.count + t.count <= 7 else { return nil }
            head = h
            tail = t
        }
        let zeros = [UInt16](repeating: 0, count: 8 - head.count - tail.count)
        self.init(groups: head + zeros + tail)
    }

    /// RFC 5952 text: lower case, leading zeros dropped, the longest run (2 or more) of zero groups as `::`.
    public var description: String {
        let g = groups
        if isIPv4Mapped {
            return "::ffff:\(IPv4Address(rawValue: UInt32(truncatingIfNeeded: low)))"
        }
        var bestStart = -1, bestLength = 0, i = 0
        while i < 8 {
            if g[i] == 0 {
                var j = i
                while j < 8 && g[j] == 0 { j += 1 }
                if j - i > bestLength && j - i >= 2 { bestStart = i; bestLength = j - i }
                i = j
            } else {
                i += 1
            }
        }
        func hex(_ r: Range<Int>) -> String { r.map { String(g[$0], radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(0 ..< 8) }
        return hex(0 ..< bestStart) + "::" + hex(bestStart + bestLength ..< 8)
    }
}

extension String {
    /// Splits at "::" (at most two parts are meaningful; more means the text is malformed).
    fileprivate func components(separatedByDoubleColon: ()) -> [Substring] {
        var parts: [Substring] = []
        var start = startIndex
        var i = startIndex
        while i < endIndex {
            let next = index(after: i)
            if self[i] == ":" && next < endIndex && self[next] == ":" {
                parts.append(self[start ..< i])
                start = index(after: next)
                i = start
                continue
            }
            i = next
        }
        parts.append(self[start...])
        return parts
    }
}

/// An IPv6 prefix such as fec0::/64.
public struct IPv6Network: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv6Address
    public var prefixLength: Int

    public init(address: IPv6Address, prefixLength: Int) {
        precondition((0 ... 128).contains(prefixLength))
        self.prefixLength = prefixLength
        let (mh, ml) = IPv6Network.mask(prefixLength)
        self.address = IPv6Address(high: address.high & mh, low: address.low & ml)
    }

    static func mask(_ n: Int) -> (UInt64, UInt64) {
        let h: UInt64 = n >= 64 ? .max : (n == 0 ? 0 : UInt64.max << UInt64(64 - n))
        let l: UInt64 = n <= 64 ? 0 : (n >= 128 ? .max : UInt64.max << UInt64(128 - n))
        return (h, l)
    }

    public func contains(_ a: IPv6Address) -> Bool {
        let (mh, ml) = IPv6Network.mask(prefixLength)
        return a.high & mh == address.high && a.low & ml == address.low
    }

    /// The address with this prefix and the given low bits (for a /64: the interface identifier).
    public func address(withInterface id: UInt64) -> IPv6Address {
        IPv6Address(high: address.high, low: address.low | id)
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

/// An address of either family, as flow tables key it: IPv4 is held IPv4-mapped (::ffff:a.b.c.d).
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public var v6: IPv6Address

    @inline(__always) public init(_ a: IPv4Address) { v6 = IPv6Address(high: 0, low: 0xFFFF_0000_0000 | UInt64(a.rawValue)) }
    @inline(__always) public init(_ a: IPv6Address) { v6 = a }
    /// Either family's text form: dotted IPv4, or IPv6 (RFC 4291), with or without brackets.
    public init?(text: some StringProtocol) {
        if let a = IPv4Address(text) { self.init(a); return }
        var t = Substring(text)
        if t.hasPrefix("["), t.hasSuffix("]") { t = t.dropFirst().dropLast() }
        guard let a = IPv6Address(t) else { return nil }
        self.init(a)
    }

    @inline(__always) public var isIPv4: Bool { v6.isIPv4Mapped }
    /// The IPv4 address, when this is one.
    @inline(__always) public var v4: IPv4Address? { isIPv4 ? IPv4Address(rawValue: UInt32(truncatingIfNeeded: v6.low)) : nil }

    public var isUnspecified: Bool { isIPv4 ? v4!.isUnspecified : v6.isUnspecified }
    public var isLoopback: Bool { isIPv4 ? v4!.isLoopback : v6.isLoopback }

    /// Dotted quad for IPv4, RFC 5952 text for IPv6.
    public var description: String { isIPv4 ? v4!.description : v6.description }
    /// As in a URL or QEMU's hostfwd: IPv6 in brackets.
    public var bracketed: String { isIPv4 ? description : "[\(v6)]" }
}

extension InternetChecksum {
    /// The IPv6 pseudo-header sum for TCP, UDP and ICMPv6 (RFC 8200 §8.1).
    @inlinable
    public static func pseudoHeader(source: IPv6Address, destination: IPv6Address, protocolNumber: UInt8, length: Int) -> UInt64 {
        var s: UInt64 = 0
        for w in [source.high, source.low, destination.high, destination.low] {
            s &+= (w >> 32) &+ (w & 0xFFFF_FFFF)
        }
        s &+= UInt64(UInt32(truncatingIfNeeded: length) >> 16) &+ UInt64(length & 0xFFFF)
        s &+= UInt64(protocolNumber)
        return s
    }

    /// The pseudo-header sum for either family (both addresses must be of the same family).
    @inlinable
    public static func pseudoHeader(source: IPAddress, destination: IPAddress, protocolNumber: UInt8, length: Int) -> UInt64 {
        if let s = source.v4, let d = destination.v4 {
            return pseudoHeader(source: s, destination: d, protocolNumber: protocolNumber, length: length)
        }
        return pseudoHeader(source: source.v6, destination: destination.v6, protocolNumber: protocolNumber, length: length)
    }
}

public struct IPv6Header: Hashable, Sendable {
    public static let length = 40
    public static let hopByHop: UInt8 = 0
    public static let routing: UInt8 = 43
    public static let fragment: UInt8 = 44
    public static let destinationOptions: UInt8 = 60
    public static let noNextHeader: UInt8 = 59

    public var trafficClass: UInt8
    public var flowLabel: UInt32
    public var payloadLength: Int
    public var nextHeader: UInt8
    public var hopLimit: UInt8
    public var source: IPv6Address
    public var destination: IPv6Address

    public init(trafficClass: UInt8 = 0, flowLabel: UInt32 = 0, payloadLength: Int, nextHeader: UInt8, hopLimit: UInt8 = 64,
                source: IPv6Address, destination: IPv6Address) {
        self.trafficClass = trafficClass
        self.flowLabel = flowLabel
        self.payloadLength = payloadLength
        self.nextHeader = nextHeader
        self.hopLimit = hopLimit
        self.source = source
        self.destination = destination
    }

    /// The payload's byte range within the packet the header was parsed from (padding excluded).
    public var payloadRange: Range<Int> { 40 ..< 40 + payloadLength }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> IPv6Header {
        guard p.count >= 40 else { throw .malformed }
        let w0 = p.u32(0)
        guard w0 >> 28 == 6 else { throw .malformed }
        let plen = Int(p.u16(4))
        guard 40 + plen <= p.count else { throw .malformed }
        return IPv6Header(trafficClass: UInt8(truncatingIfNeeded: w0 >> 20), flowLabel: w0 & 0xF_FFFF, payloadLength: plen,
                          nextHeader: p.u8(6), hopLimit: p.u8(7),
                          source: IPv6Address(reading: p, at: 8), destination: IPv6Address(reading: p, at: 24))
    }

    /// Writes the 40-byte header; returns 40.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer) -> Int {
        p.put32(0, 6 << 28 | UInt32(trafficClass) << 20 | (flowLabel & 0xF_FFFF))
        p.put16(4, UInt16(truncatingIfNeeded: payloadLength))
        p.put8(6, nextHeader)
        p.put8(7, hopLimit)
        source.write(to: p, at: 8)
        destination.write(to: p, at: 24)
        return 40
    }

    /// A fragment header crossed on the way to the upper layer (RFC 8200 §4.5).
    public struct Fragment: Hashable, Sendable {
        /// Offset of the fragmentable part, in bytes.
        public var offset: Int
        public var moreFragments: Bool
        public var identification: UInt32

        public init(offset: Int, moreFragments: Bool, identification: UInt32) {
            self.offset = offset
            self.moreFragments = moreFragments
            self.identification = identification
        }
    }

    /// Where the upper-layer header starts within the IPv6 payload, and which protocol it is.
    public struct UpperLayer: Hashable, Sendable {
        public var protocolNumber: UInt8
        /// Offset within the payload (after every extension header walked).
        public var offset: Int
        public var fragment: Fragment?
        /// Offset of the fragment header's own "next header" field's successor, i.e. where the fragmentable
        /// part begins, when `fragment` is set.
        public var fragmentableOffset: Int
    }

    public static let maximumExtensionHeaders = 8

    /// Walks extension headers in `payload` (exactly the IPv6 payload) starting from `nextHeader`.
    public static func upperLayer(_ payload: UnsafeRawBufferPointer, nextHeader: UInt8) throws(WireError) -> UpperLayer {
        var next = nextHeader
        var off = 0
        var crossed: Fragment? = nil
        var fragmentable = 0
        for n in 0 ... maximumExtensionHeaders {
            switch next {
            case hopByHop, routing, destinationOptions:
                // RFC 8200 §4.3: hop-by-hop options only immediately after the fixed header.
                if next == hopByHop && n != 0 { throw .malformed }
                guard off + 8 <= payload.count else { throw .malformed }
                let len = (Int(payload.u8(off + 1)) + 1) * 8
                guard off + len <= payload.count else { throw .malformed }
                next = payload.u8(off)
                off += len
            case fragment:
                guard crossed == nil, off + 8 <= payload.count else { throw .malformed }
                let fo = payload.u16(off + 2)
                crossed = Fragment(offset: Int(fo & 0xFFF8), moreFragments: fo & 1 == 1, identification: payload.u32(off + 4))
                next = payload.u8(off)
                off += 8
                fragmentable = off
                // Whatever follows is the fragmentable part: headers there are walked after reassembly.
                return UpperLayer(protocolNumber: next, offset: off, fragment: crossed, fragmentableOffset: fragmentable)
            default:
                return UpperLayer(protocolNumber: next, offset: off, fragment: crossed, fragmentableOffset: fragmentable)
            }
        }
        throw .malformed
    }
}
