// TCP headers (RFC 9293), with the options vnet uses: MSS, window scale (RFC 7323), SACK-permitted.
//
// `parse` takes exactly the IP payload and checks that the data offset is >= 5 and within it. Options are
// walked with every length checked; a malformed option list ends the walk (options already read are kept),
// since RFC 9293 asks receivers to be liberal with unknown options.

public struct TCPFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let psh = TCPFlags(rawValue: 0x08)
    public static let ack = TCPFlags(rawValue: 0x10)
    public static let urg = TCPFlags(rawValue: 0x20)
}

public struct TCPHeader: Hashable, Sendable {
    public static let minimumLength = 20

    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var sequence: UInt32
    public var acknowledgment: UInt32
    public var headerLength: Int
    public var flags: TCPFlags
    public var window: UInt16
    public var checksum: UInt16
    public var urgentPointer: UInt16
    public var maxSegmentSize: UInt16?
    public var windowScale: UInt8?
    public var sackPermitted: Bool

    public init(sourcePort: UInt16, destinationPort: UInt16, sequence: UInt32, acknowledgment: UInt32, headerLength: Int = 20,
                flags: TCPFlags, window: UInt16, checksum: UInt16 = 0, urgentPointer: UInt16 = 0,
                maxSegmentSize: UInt16? = nil, windowScale: UInt8? = nil, sackPermitted: Bool = false) {
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.sequence = sequence
        self.acknowledgment = acknowledgment
        self.headerLength = headerLength
        self.flags = flags
        self.window = window
        self.checksum = checksum
        self.urgentPointer = urgentPointer
        self.maxSegmentSize = maxSegmentSize
        self.windowScale = windowScale
        self.sackPermitted = sackPermitted
    }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> TCPHeader {
        guard p.count >= 20 else { throw .malformed }
        let off = Int(p.u8(12) >> 4) * 4
        guard off >= 20, off <= p.count else { throw .malformed }
        var h = TCPHeader(sourcePort: p.u16(0), destinationPort: p.u16(2), sequence: p.u32(4), acknowledgment: p.u32(8),
                          headerLength: off, flags: TCPFlags(rawValue: p.u8(13) & 0x3F), window: p.u16(14),
                          checksum: p.u16(16), urgentPointer: p.u16(18))
        var i = 20
        while i < off {
            let kind = p.u8(i)
            if kind == 0 { break }
            if kind == 1 { i += 1; continue }
            guard i + 1 < off else { break }
            let len = Int(p.u8(i + 1))
            guard len >= 2, i + len <= off else { break }
            switch (kind, len) {
            case (2, 4): h.maxSegmentSize = p.u16(i + 2)
            case (3, 3): h.windowScale = p.u8(i + 2)
            case (4, 2): h.sackPermitted = true
            default: break
            }
            i += len
        }
        return h
    }

    /// The length `emit` will write: 20 bytes plus the options set, padded to a multiple of 4.
    public var emittedLength: Int {
        var n = 20
        if maxSegmentSize != nil { n += 4 }
        if windowScale != nil { n += 4 }       // NOP + 3
        if sackPermitted { n += 4 }            // NOP NOP + 2
        return n
    }

    /// Writes the header and options; the checksum is computed over the header and the payload that already
    /// sits after it (`segmentLength` bytes in all).
    /// With `partialChecksum`, the checksum field gets only the pseudo-header sum, for a reader that finishes
    /// it (virtio-net NEEDS_CSUM); the payload is not read.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer, segmentLength: Int, source: IPv4Address, destination: IPv4Address,
                     partialChecksum: Bool = false) -> Int {
        emit(into: p, segmentLength: segmentLength,
             pseudoHeader: InternetChecksum.pseudoHeader(source: source, destination: destination, protocolNumber: 6, length: segmentLength),
             partialChecksum: partialChecksum)
    }

    /// As above, for either family: `pseudoHeader` is the pseudo-header sum for this segment.
    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer, segmentLength: Int, pseudoHeader pseudo: UInt64,
                     partialChecksum: Bool = false) -> Int {
        let len = emittedLength
        p.put16(0, sourcePort); p.put16(2, destinationPort); p.put32(4, sequence); p.put32(8, acknowledgment)
        p.put8(12, UInt8(len / 4) << 4); p.put8(13, flags.rawValue); p.put16(14, window); p.put16(16, 0); p.put16(18, urgentPointer)
        var i = 20
        if let mss = maxSegmentSize { p.put8(i, 2); p.put8(i + 1, 4); p.put16(i + 2, mss); i += 4 }
        if let ws = windowScale { p.put8(i, 1); p.put8(i + 1, 3); p.put8(i + 2, 3); p.put8(i + 3, ws); i += 4 }
        if sackPermitted { p.put8(i, 1); p.put8(i + 1, 1); p.put8(i + 2, 4); p.put8(i + 3, 2); i += 4 }
        if partialChecksum {
            p.put16(16, InternetChecksum.partial(pseudo))
        } else {
            p.put16(16, InternetChecksum.finish(InternetChecksum.add(UnsafeRawBufferPointer(p.slice(0 ..< segmentLength)), to: pseudo)))
        }
        return len
    }
}
