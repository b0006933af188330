// UDP headers (RFC 768).
//
// `parse` takes exactly the IP payload. It requires 8 header bytes and a length field within
// [8, payload count]; a UDP length shorter than the IP payload is honoured (trailing bytes ignored), a
// longer one is malformed.

public struct UDPHeader: Hashable, Sendable {
    public static let length = 8

    public var sourcePort: UInt16
    public var destinationPort: UInt16
    /// Header plus payload, in bytes.
    public var length: Int
    public var checksum: UInt16

    public init(sourcePort: UInt16, destinationPort: UInt16, length: Int, checksum: UInt16 = 0) {
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        self.checksum = checksum
    }

    public var payloadRange: Range<Int> { 8 ..< length }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> UDPHeader {
        guard p.count >= 8 else { throw .malformed }
        let len = Int(p.u16(4))
        guard len >= 8, len <= p.count else { throw .malformed }
        return UDPHeader(sourcePort: p.u16(0), destinationPort: p.u16(2), length: len, checksum: p.u16(6))
    }

    /// Verifies the checksum of a whole datagram (`p` is `length` bytes). A zero checksum means "none" in IPv4.
    public static func checksumValid(_ p: UnsafeRawBufferPointer, source: IPv4Address, destination: IPv4Address) -> Bool {
        if p.count >= 8 && p.u16(6) == 0 { return true }
        let s = InternetChecksum.add(p, to: InternetChecksum.pseudoHeader(source: source, destination: destination, protocolNumber: 17, length: p.count))
        return InternetChecksum.finish(s) == 0
    }

    /// Verifies the checksum of an IPv6 datagram: a zero checksum is invalid there (RFC 8200 §8.1).
    public static func checksumValid(_ p: UnsafeRawBufferPointer, source: IPv6Address, destination: IPv6Address) -> Bool {
        guard p.count >= 8, p.u16(6) != 0 else { return false }
        let s = InternetChecksum.add(p, to: InternetChecksum.pseudoHeader(source: source, destination: destination, protocolNumber: 17, length: p.count))
        return InternetChecksum.finish(s) == 0
    }

    /// Writes the header for a datagram whose payload already sits at `p[8..<length]`, computing the
    /// checksum over it.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer, source: IPv4Address, destination: IPv4Address) -> Int {
        emit(into: p, pseudoHeader: InternetChecksum.pseudoHeader(source: source, destination: destination, protocolNumber: 17, length: length))
    }

    /// As above, for either family: `pseudoHeader` is the pseudo-header sum for this datagram.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer, pseudoHeader: UInt64) -> Int {
        p.put16(0, sourcePort); p.put16(2, destinationPort); p.put16(4, UInt16(length)); p.put16(6, 0)
        let s = InternetChecksum.add(UnsafeRawBufferPointer(p.slice(0 ..< length)), to: pseudoHeader)
        var c = InternetChecksum.finish(s)
        if c == 0 { c = 0xFFFF }
        p.put16(6, c)
        return 8
    }
}
