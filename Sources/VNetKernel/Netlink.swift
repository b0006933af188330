// VNetKernel: vnet's kernel-facing modes (bridges, TAPs, kernel NAT, PCI passthrough).
//
// Theory of Operation: netlink messages
// -------------------------------------
// rtnetlink speaks in messages: a 16-byte header (length, type, flags, sequence, port id), a fixed family
// header (ifinfomsg: 16 bytes, ifaddrmsg: 8 bytes) and a list of attributes (TLVs: 2-byte length, 2-byte
// type, value, padded to 4 bytes). Attributes nest (IFLA_LINKINFO holds IFLA_INFO_KIND and IFLA_INFO_DATA).
// All integers are in host byte order, which on every Linux vnet targets is little-endian.
//
// `NetlinkWriter` builds one request into a byte array; a nested attribute is opened, filled and closed,
// and its length is patched in on close. `NetlinkMessages` and `NetlinkAttributes` read what the kernel
// sends back and trust nothing: every length is checked against what is left before a byte is read, a
// length shorter than its own header or running past the end makes the whole buffer malformed, and readers
// of fixed-size values check the value's size. Nothing here makes a syscall.

public enum Netlink {
    public static let headerLength = 16
    public static let attributeHeaderLength = 4
    public static let ifinfomsgLength = 16
    public static let ifaddrmsgLength = 8

    // Message types.
    public static let noop: UInt16 = 1
    public static let error: UInt16 = 2
    public static let done: UInt16 = 3
    public static let newLink: UInt16 = 16
    public static let delLink: UInt16 = 17
    public static let getLink: UInt16 = 18
    public static let newAddress: UInt16 = 20
    public static let delAddress: UInt16 = 21
    public static let getAddress: UInt16 = 22

    // Header flags.
    public static let request: UInt16 = 0x1
    public static let multi: UInt16 = 0x2
    public static let ack: UInt16 = 0x4
    public static let dump: UInt16 = 0x300
    public static let replace: UInt16 = 0x100
    public static let exclusive: UInt16 = 0x200
    public static let create: UInt16 = 0x400
    /// On an error message: extended-ack attributes follow the capped original header.
    public static let ackTLVs: UInt16 = 0x200
    public static let capped: UInt16 = 0x100

    /// The nested flag on an attribute's type; the low 14 bits are the type itself.
    public static let nestedFlag: UInt16 = 0x8000
    public static let typeMask: UInt16 = 0x3FFF

    /// Extended-ack attribute: the kernel's error text.
    public static let extAckMessage: UInt16 = 1

    public static func align(_ n: Int) -> Int { (n + 3) & ~3 }
}

/// Link attributes (IFLA_*) and the bridge's IFLA_INFO_DATA attributes (IFLA_BR_*) vnet uses.
public enum LinkAttribute {
    public static let address: UInt16 = 1
    public static let ifname: UInt16 = 3
    public static let mtu: UInt16 = 4
    public static let master: UInt16 = 10
    public static let operState: UInt16 = 16
    public static let linkInfo: UInt16 = 18
    public static let infoKind: UInt16 = 1
    public static let infoData: UInt16 = 2
    public static let bridgeSTPState: UInt16 = 5
    public static let bridgePriority: UInt16 = 6
    public static let bridgeID: UInt16 = 11
}

/// Address attributes (IFA_*).
public enum AddressAttribute {
    public static let address: UInt16 = 1
    public static let local: UInt16 = 2
    public static let label: UInt16 = 3
    public static let broadcast: UInt16 = 4
}

public enum NetlinkParseError: Error, Equatable, CustomStringConvertible {
    case truncated(String)
    case badLength(String)

    public var description: String {
        switch self {
        case .truncated(let what): "netlink: truncated \(what)"
        case .badLength(let what): "netlink: bad length in \(what)"
        }
    }
}

/// Builds one netlink message. Call `finish()` to get the bytes with the total length filled in.
public struct NetlinkWriter {
    public private(set) var bytes: [UInt8] = []
    var openNests: [Int] = []

    public init(type: UInt16, flags: UInt16, sequence: UInt32) {
        put32(0)  // length, patched in finish()
        put16(type)
        put16(flags)
        put32(sequence)
        put32(0)  // port id: the kernel fills ours in
    }

    mutating func put8(_ v: UInt8) { bytes.append(v) }
    mutating func put16(_ v: UInt16) { bytes.append(UInt8(v & 0xFF)); bytes.append(UInt8(v >> 8)) }
    mutating func put32(_ v: UInt32) { for i in 0 ..< 4 { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(8 * i))) } }
    mutating func pad() { while bytes.count % 4 != 0 { bytes.append(0) } }

    /// struct ifinfomsg: family, type, index, flags, change.
    public mutating func ifinfomsg(family: UInt8 = 0, index: Int32 = 0, flags: UInt32 = 0, change: UInt32 = 0) {
        put8(family); put8(0); put16(0)
        put32(UInt32(bitPattern: index))
        put32(flags)
        put32(change)
    }

    /// struct ifaddrmsg: family, prefix length, flags, scope, index.
    public mutating func ifaddrmsg(family: UInt8, prefixLength: UInt8, index: Int32, scope: UInt8 = 0) {
        put8(family); put8(prefixLength); put8(0); put8(scope)
        put32(UInt32(bitPattern: index))
    }

    public mutating func attribute(_ type: UInt16, _ value: [UInt8]) {
        put16(UInt16(Netlink.attributeHeaderLength + value.count))
        put16(type)
        bytes.append(contentsOf: value)
        pad()
    }

    public mutating func attribute(_ type: UInt16, u32 v: UInt32) {
        attribute(type, (0 ..< 4).map { UInt8(truncatingIfNeeded: v >> UInt32(8 * $0)) })
    }

    public mutating func attribute(_ type: UInt16, u8 v: UInt8) { attribute(type, [v]) }

    /// A NUL-terminated string, as the kernel expects for names.
    public mutating func attribute(_ type: UInt16, string: String) { attribute(type, Array(string.utf8) + [0]) }

    public mutating func beginNested(_ type: UInt16) {
        openNests.append(bytes.count)
        put16(0)
        put16(type | Netlink.nestedFlag)
    }

    public mutating func endNested() {
        let start = openNests.removeLast()
        let len = UInt16(bytes.count - start)
        bytes[start] = UInt8(len & 0xFF)
        bytes[start + 1] = UInt8(len >> 8)
    }

    public mutating func finish() -> [UInt8] {
        precondition(openNests.isEmpty, "unclosed nested attribute")
        let len = UInt32(bytes.count)
        for i in 0 ..< 4 { bytes[i] = UInt8(truncatingIfNeeded: len >> UInt32(8 * i)) }
        return bytes
    }
}

/// Little-endian reads from an array slice, each checked by the caller's length test.
extension ArraySlice where Element == UInt8 {
    func le16(_ at: Int) -> UInt16 { UInt16(self[startIndex + at]) | UInt16(self[startIndex + at + 1]) << 8 }
    func le32(_ at: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0 ..< 4 { v |= UInt32(self[startIndex + at + i]) << UInt32(8 * i) }
        return v
    }
}

/// One message received from the kernel: its header fields and its payload (family header + attributes).
public struct NetlinkMessage: Equatable {
    public var type: UInt16
    public var flags: UInt16
    public var sequence: UInt32
    public var portID: UInt32
    public var payload: ArraySlice<UInt8>

    public init(type: UInt16, flags: UInt16, sequence: UInt32, portID: UInt32, payload: ArraySlice<UInt8>) {
        self.type = type
        self.flags = flags
        self.sequence = sequence
        self.portID = portID
        self.payload = payload
    }
}

/// Splits a received datagram into messages. Throws if any length is inconsistent.
public enum NetlinkMessages {
    public static func parse(_ buffer: [UInt8]) throws(NetlinkParseError) -> [NetlinkMessage] {
        var out: [NetlinkMessage] = []
        var offset = 0
        while offset < buffer.count {
            let left = buffer.count - offset
            guard left >= Netlink.headerLength else { throw .truncated("message header") }
            let s = buffer[offset ..< buffer.count]
            let len = Int(s.le32(0))
            guard len >= Netlink.headerLength else { throw .badLength("message header (\(len))") }
            guard len <= left else { throw .truncated("message (\(len) > \(left))") }
            out.append(NetlinkMessage(type: s.le16(4), flags: s.le16(6), sequence: s.le32(8), portID: s.le32(12),
                                      payload: buffer[offset + Netlink.headerLength ..< offset + len]))
            offset += min(Netlink.align(len), left)
        }
        return out
    }
}

/// One attribute: its type (without the nested flag) and value bytes.
public struct NetlinkAttribute: Equatable {
    public var type: UInt16
    public var isNested: Bool
    public var value: ArraySlice<UInt8>

    public var u32: UInt32? { value.count == 4 ? value.le32(0) : nil }
    public var u8: UInt8? { value.count >= 1 ? value[value.startIndex] : nil }

    /// A string attribute without its trailing NUL (the kernel's strings may or may not have one).
    public var string: String {
        var bytes = value
        if let z = bytes.firstIndex(of: 0) { bytes = bytes[bytes.startIndex ..< z] }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The attributes nested inside this one.
    public func nested() throws(NetlinkParseError) -> [NetlinkAttribute] { try NetlinkAttributes.parse(value) }
}

public enum NetlinkAttributes {
    /// Parses a run of attributes that must exactly fill `bytes` (the last one's padding may be missing).
    public static func parse(_ bytes: ArraySlice<UInt8>) throws(NetlinkParseError) -> [NetlinkAttribute] {
        var out: [NetlinkAttribute] = []
        var offset = 0
        let count = bytes.count
        while offset < count {
            let left = count - offset
            guard left >= Netlink.attributeHeaderLength else { throw .truncated("attribute header") }
            let s = bytes[(bytes.startIndex + offset)...]
            let len = Int(s.le16(0))
            let rawType = s.le16(2)
            guard len >= Netlink.attributeHeaderLength else { throw .badLength("attribute \(rawType & Netlink.typeMask) (\(len))") }
            guard len <= left else { throw .truncated("attribute \(rawType & Netlink.typeMask) (\(len) > \(left))") }
            out.append(NetlinkAttribute(type: rawType & Netlink.typeMask, isNested: rawType & Netlink.nestedFlag != 0,
                                        value: s[s.startIndex + Netlink.attributeHeaderLength ..< s.startIndex + len]))
            offset += min(Netlink.align(len), left)
        }
        return out
    }

    public static func first(_ type: UInt16, in attrs: [NetlinkAttribute]) -> NetlinkAttribute? {
        attrs.first { $0.type == type }
    }
}

/// An NLMSG_ERROR message: errno 0 is an acknowledgement. With extended acks the kernel's text comes along.
public struct NetlinkAck: Equatable {
    /// A positive errno, or 0 for success.
    public var errno: Int32
    public var message: String?

    public init(errno: Int32, message: String?) {
        self.errno = errno
        self.message = message
    }

    public static func parse(_ m: NetlinkMessage) throws(NetlinkParseError) -> NetlinkAck {
        let p = m.payload
        guard p.count >= 4 else { throw .truncated("error message") }
        let raw = Int32(bitPattern: p.le32(0))
        var ack = NetlinkAck(errno: raw == Int32.min ? Int32.max : -raw, message: nil)
        guard m.flags & Netlink.ackTLVs != 0 else { return ack }
        // The original request's header follows (only its header when capped), then the TLVs.
        guard p.count >= 4 + Netlink.headerLength else { throw .truncated("error message's request header") }
        var skip = 4 + Netlink.headerLength
        if m.flags & Netlink.capped == 0 {
            let originalLength = Int(p.le32(4))
            guard originalLength >= Netlink.headerLength, 4 + originalLength <= p.count else { throw .badLength("error message's request") }
            skip = 4 + Netlink.align(originalLength)
        }
        guard skip <= p.count else { return ack }
        let attrs = try NetlinkAttributes.parse(p[(p.startIndex + skip)...])
        if let msg = NetlinkAttributes.first(Netlink.extAckMessage, in: attrs) { ack.message = msg.string }
        return ack
    }
}
