// Static DNS records the gateway answers itself, before anything is forwarded upstream.
//
// Theory of Operation
// -------------------
// A small table (at most `capacity` records) of (name, type, data): A, AAAA, SRV and TXT records. The
// control plane edits it (`add`, `remove`, `list`); others may fill it too (e.g. DHCP lease host names). The
// data path asks `answer(query:into:)` for each DNS query to the gateway's DNS address: when the question's
// name (compared case-insensitively, as DNS does) is in the table, the gateway answers authoritatively (the
// records of the asked type, or none: NODATA) and nothing goes upstream; any other name is forwarded as
// before. Names are kept in DNS wire form, so a lookup walks bytes and never allocates. A reply never
// exceeds 512 bytes (plain DNS over UDP): records that do not fit are left out.

import VNetWire

public enum LocalDNSType: UInt16, Sendable, CaseIterable {
    case a = 1
    case txt = 16
    case aaaa = 28
    case srv = 33

    public var name: String {
        switch self {
        case .a: "A"
        case .txt: "TXT"
        case .aaaa: "AAAA"
        case .srv: "SRV"
        }
    }

    public init?(name: String) {
        switch name.uppercased() {
        case "A": self = .a
        case "TXT": self = .txt
        case "AAAA": self = .aaaa
        case "SRV": self = .srv
        default: return nil
        }
    }

    /// For error messages.
    public static let names = "A, AAAA, SRV or TXT"
}

public struct LocalDNSRecord: Equatable, Sendable {
    /// Lower-case, without a trailing dot.
    public var name: String
    public var type: LocalDNSType
    /// The address (A) or text (TXT) as given.
    public var value: String
    public var ttl: UInt32
    /// The name in wire form (length-prefixed lower-case labels, ending with 0).
    let wireName: [UInt8]
    let rdata: [UInt8]
}

public struct LocalDNSError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ d: String) { description = d }
}

public struct LocalDNSRecords: Sendable {
    public static let capacity = 1024
    public private(set) var records: [LocalDNSRecord] = []

    public init() {}

    public var isEmpty: Bool { records.isEmpty }

    /// Adds a record; an identical (name, type, value) is replaced, so adding twice is harmless.
    public mutating func add(name: String, type: LocalDNSType, value: String, ttl: UInt32 = 60) throws(LocalDNSError) {
        let n = LocalDNSRecords.normalise(name)
        guard let wire = LocalDNSRecords.wireName(n) else { throw LocalDNSError("bad DNS name '\(name)'") }
        let rdata: [UInt8]
        switch type {
        case .a:
            guard let a = IPv4Address(value) else { throw LocalDNSError("an A record needs an IPv4 address, not '\(value)'") }
            let v = a.rawValue
            rdata = [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
        case .txt:
            let bytes = Array(value.utf8)
            guard bytes.count <= 255 else { throw LocalDNSError("a TXT string holds at most 255 bytes") }
            rdata = [UInt8(bytes.count)] + bytes
        case .aaaa:
            guard let b = LocalDNSRecords.ipv6Bytes(value) else { throw LocalDNSError("an AAAA record needs an IPv6 address, not '\(value)'") }
            rdata = b
        case .srv:
            // RFC 2782: "PRIORITY WEIGHT PORT TARGET".
            let f = value.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard f.count == 4, let pr = UInt16(f[0]), let w = UInt16(f[1]), let port = UInt16(f[2]),
                  let target = LocalDNSRecords.wireName(LocalDNSRecords.normalise(f[3])) else {
                throw LocalDNSError("an SRV record needs 'PRIORITY WEIGHT PORT TARGET', not '\(value)'")
            }
            rdata = [UInt8(pr >> 8), UInt8(pr & 0xFF), UInt8(w >> 8), UInt8(w & 0xFF), UInt8(port >> 8), UInt8(port & 0xFF)] + target
        }
        records.removeAll { $0.name == n && $0.type == type && $0.value == value }
        guard records.count < LocalDNSRecords.capacity else { throw LocalDNSError("the table is full (\(LocalDNSRecords.capacity) records)") }
        records.append(LocalDNSRecord(name: n, type: type, value: value, ttl: ttl, wireName: wire, rdata: rdata))
    }

    /// Removes the records of `name` (only those of `type`, and only the one with `value`, when given).
    /// Returns how many went.
    @discardableResult
    public mutating func remove(name: String, type: LocalDNSType? = nil, value: String? = nil) -> Int {
        let n = LocalDNSRecords.normalise(name)
        let before = records.count
        records.removeAll { $0.name == n && (type == nil || $0.type == type) && (value == nil || $0.value == value) }
        return before - records.count
    }

    /// The 16 bytes of an IPv6 address in text form (RFC 4291 §2.2: hex groups, one `::`, an IPv4 tail).
    static func ipv6Bytes(_ text: String) -> [UInt8]? {
        guard !text.isEmpty, text.utf8.count <= 45 else { return nil }
        var groups: [UInt16] = []
        var tail: [UInt16] = []
        var sawGap = false
        var halves: [String] = []
        let u = Array(text.utf8)
        if let i = u.indices.dropLast().first(where: { u[$0] == 0x3A && u[$0 + 1] == 0x3A }) {
            halves = [String(decoding: u[..<i], as: UTF8.self), String(decoding: u[(i + 2)...], as: UTF8.self)]
            let rest = Array(halves[1].utf8)
            guard !rest.indices.dropLast().contains(where: { rest[$0] == 0x3A && rest[$0 + 1] == 0x3A }) else { return nil }
        } else {
            halves = [text]
        }
        func parse(_ part: String, allowV4: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            var out: [UInt16] = []
            let items = part.split(separator: ":", omittingEmptySubsequences: false)
            for (i, item) in items.enumerated() {
                if allowV4 && i == items.count - 1 && item.contains(".") {
                    guard let v4 = IPv4Address(String(item)) else { return nil }
                    out += [UInt16(v4.rawValue >> 16), UInt16(v4.rawValue & 0xFFFF)]
                } else {
                    guard (1 ... 4).contains(item.count), let g = UInt16(item, radix: 16) else { return nil }
                    out.append(g)
                }
            }
            return out
        }
        if halves.count == 2 {
            sawGap = true
            guard let a = parse(halves[0], allowV4: false), let b = parse(halves[1], allowV4: true) else { return nil }
            groups = a
            tail = b
        } else {
            guard let a = parse(halves[0], allowV4: true) else { return nil }
            groups = a
        }
        let total = groups.count + tail.count
        if sawGap { guard total <= 7 else { return nil } } else { guard total == 8 else { return nil } }
        let all = groups + [UInt16](repeating: 0, count: 8 - total) + tail
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }

    /// The form names are kept in: lower case, no trailing dot.
    public static func normalise(_ name: String) -> String {
        var n = name.lowercased()
        if n.hasSuffix(".") { n.removeLast() }
        return n
    }

    static func wireName(_ name: String) -> [UInt8]? {
        guard !name.isEmpty, name.utf8.count <= 253 else { return nil }
        var out: [UInt8] = []
        for label in name.split(separator: ".", omittingEmptySubsequences: false) {
            let b = Array(label.utf8)
            guard !b.isEmpty, b.count <= 63 else { return nil }
            guard b.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
            out.append(UInt8(b.count))
            out += b
        }
        out.append(0)
        return out
    }

    /// True when `name` (bytes of a wire-form name from a query) equals `wire`, ignoring ASCII case.
    @inline(__always) static func sameName(_ name: UnsafeRawBufferPointer, _ wire: [UInt8]) -> Bool {
        guard name.count == wire.count else { return false }
        for i in 0 ..< wire.count {
            var c = name[i]
            if c >= 0x41 && c <= 0x5A { c |= 0x20 }
            if c != wire[i] { return false }
        }
        return true
    }

    /// Answers the query in `query` (a whole DNS message) into `out` when its name is in the table: returns the
    /// reply's length, or nil when the query is not for a local name (or cannot be read), so it is forwarded.
    public func answer(query: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int? {
        guard !records.isEmpty, let h = try? DNSHeader.parse(query), !h.isResponse, h.opcode == 0, h.questionCount == 1,
              let end = DNSReplies.questionEnd(query) else { return nil }
        let qtype = query.u16(end - 4), qclass = query.u16(end - 2)
        guard qclass == 1 else { return nil }
        let name = UnsafeRawBufferPointer(rebasing: query[12 ..< end - 4])
        var known = false
        for r in records where LocalDNSRecords.sameName(name, r.wireName) { known = true; break }
        guard known, out.count >= 512, end <= 512 else { return nil }
        out.copy(UnsafeRawBufferPointer(rebasing: query[0 ..< end]), to: 0)
        var length = end
        var answers: UInt16 = 0
        for r in records where (r.type.rawValue == qtype || qtype == 255) && LocalDNSRecords.sameName(name, r.wireName) {
            let size = 12 + r.rdata.count
            guard length + size <= 512 else { break }
            out.put16(length, 0xC00C)   // the name: a pointer to the question's
            out.put16(length + 2, r.type.rawValue)
            out.put16(length + 4, 1)
            out.put32(length + 6, r.ttl)
            out.put16(length + 10, UInt16(r.rdata.count))
            for (i, b) in r.rdata.enumerated() { out[length + 12 + i] = b }
            length += size
            answers += 1
        }
        // QR, AA, RA; the opcode and RD come from the query.
        let flags: UInt16 = 0x8000 | 0x0400 | 0x0080 | (h.flags & 0x7900)
        DNSHeader(id: h.id, flags: flags, questionCount: 1, answerCount: answers).emit(into: out)
        return length
    }
}
