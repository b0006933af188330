// ICMP for IPv4 (RFC 792): echo, and the error messages vnet relays (destination unreachable, time exceeded).

public struct ICMPv4Header: Hashable, Sendable {
    public static let length = 8

    public static let echoReply: UInt8 = 0
    public static let destinationUnreachable: UInt8 = 3
    public static let echoRequest: UInt8 = 8
    public static let timeExceeded: UInt8 = 11
    public static let parameterProblem: UInt8 = 12

    public var type: UInt8
    public var code: UInt8
    public var checksum: UInt16
    /// Bytes 4..<8: identifier and sequence number for echo, unused/next-hop MTU for errors.
    public var restOfHeader: UInt32

    public init(type: UInt8, code: UInt8, checksum: UInt16 = 0, restOfHeader: UInt32 = 0) {
        self.type = type
        self.code = code
        self.checksum = checksum
        self.restOfHeader = restOfHeader
    }

    public var identifier: UInt16 { UInt16(truncatingIfNeeded: restOfHeader >> 16) }
    public var sequence: UInt16 { UInt16(truncatingIfNeeded: restOfHeader) }
    public var isError: Bool {
        type == Self.destinationUnreachable || type == Self.timeExceeded || type == Self.parameterProblem || type == 4 || type == 5
    }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> ICMPv4Header {
        guard p.count >= 8 else { throw .malformed }
        return ICMPv4Header(type: p.u8(0), code: p.u8(1), checksum: p.u16(2), restOfHeader: p.u32(4))
    }

    public static func checksumValid(_ p: UnsafeRawBufferPointer) -> Bool { InternetChecksum.of(p) == 0 }

    /// Writes the header for a message whose body already sits at `p[8..<messageLength]`, with its checksum.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer, messageLength: Int) -> Int {
        p.put8(0, type); p.put8(1, code); p.put16(2, 0); p.put32(4, restOfHeader)
        p.put16(2, InternetChecksum.of(UnsafeRawBufferPointer(p.slice(0 ..< messageLength))))
        return 8
    }
}
