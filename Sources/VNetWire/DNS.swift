// DNS message headers (RFC 1035 §4.1.1), for forwarding: vnet does not resolve names itself, it only needs
// to recognise a query, read its ID and question, and relay replies.

public struct DNSHeader: Hashable, Sendable {
    public static let length = 12

    public var id: UInt16
    public var flags: UInt16
    public var questionCount: UInt16
    public var answerCount: UInt16
    public var authorityCount: UInt16
    public var additionalCount: UInt16

    public var isResponse: Bool { flags & 0x8000 != 0 }
    public var opcode: UInt8 { UInt8((flags >> 11) & 0xF) }
    public var responseCode: UInt8 { UInt8(flags & 0xF) }

    public init(id: UInt16, flags: UInt16, questionCount: UInt16, answerCount: UInt16 = 0, authorityCount: UInt16 = 0, additionalCount: UInt16 = 0) {
        self.id = id
        self.flags = flags
        self.questionCount = questionCount
        self.answerCount = answerCount
        self.authorityCount = authorityCount
        self.additionalCount = additionalCount
    }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> DNSHeader {
        guard p.count >= 12 else { throw .malformed }
        return DNSHeader(id: p.u16(0), flags: p.u16(2), questionCount: p.u16(4), answerCount: p.u16(6),
                         authorityCount: p.u16(8), additionalCount: p.u16(10))
    }

    public func emit(into p: UnsafeMutableRawBufferPointer) {
        p.put16(0, id); p.put16(2, flags); p.put16(4, questionCount); p.put16(6, answerCount)
        p.put16(8, authorityCount); p.put16(10, additionalCount)
    }
}

/// Builds a DNS failure reply (header + echoed question section) in place of a query: used when no upstream
/// resolver can be reached, so the guest gets SERVFAIL at once instead of a timeout.
public enum DNSReplies {
    /// Rewrites the query in `p` (its first `length` bytes) into a response with `rcode`, dropping every
    /// section after the question. Returns the new length, or nil if the question cannot be walked.
    public static func failure(_ p: UnsafeMutableRawBufferPointer, length: Int, rcode: UInt8) -> Int? {
        let r = UnsafeRawBufferPointer(p.slice(0 ..< length))
        guard let h = try? DNSHeader.parse(r), !h.isResponse, h.questionCount == 1 else { return nil }
        guard let end = questionEnd(r) else { return nil }
        let flags = 0x8000 | (h.flags & 0x7900) | 0x0080 | UInt16(rcode & 0xF)   // QR, keep opcode+RD, set RA
        DNSHeader(id: h.id, flags: flags, questionCount: 1).emit(into: p)
        return end
    }

    /// The offset just past the first question (name + type + class), or nil if it runs past the end or
    /// uses compression (queries never need it).
    public static func questionEnd(_ p: UnsafeRawBufferPointer) -> Int? {
        var i = 12
        while true {
            guard i < p.count else { return nil }
            let len = Int(p[i])
            if len == 0 { i += 1; break }
            guard len <= 63 else { return nil }
            i += 1 + len
        }
        guard i + 4 <= p.count else { return nil }
        return i + 4
    }
}
