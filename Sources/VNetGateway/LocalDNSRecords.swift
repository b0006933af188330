// Static DNS records the gateway answers itself, before anything is forwarded upstream.
//
// Theory of Operation
// -------------------
// A small table (at most `capacity` records) of (name, type, data): A records (IPv4) and TXT records. The
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

    public var name: String { self == .a ? "A" : "TXT" }

    public init?(name: String) {
        switch name.uppercased() {
        case "A": self = .a
        case "TXT": self = .txt
        default: return nil
        }
    }
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
