// The virtio-net header (virtio 1.x §5.1.6, `struct virtio_net_hdr`) that a TAP device opened with
// IFF_VNET_HDR puts before every frame, in both directions.
//
// It carries the two offloads that make a TAP link fast: checksum offload (NEEDS_CSUM: the layer-4 checksum
// field holds only the pseudo-header sum and the reader finishes it from `checksumStart`) and segmentation
// offload (a TCP "super-segment" of up to 64 KiB that the kernel cuts at `segmentSize`). The legacy 10-byte
// layout is used, in the host's (little-endian) byte order, which is what the kernel expects unless
// TUNSETVNETBE/LE says otherwise.

public struct VirtioNetHeader: Hashable, Sendable {
    public static let length = 10

    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The checksum at `checksumStart + checksumOffset` is partial (pseudo-header only).
        public static let needsChecksum = Flags(rawValue: 1)
        /// The sender verified the checksums already.
        public static let dataValid = Flags(rawValue: 2)
    }

    public enum SegmentationType: UInt8, Sendable {
        case unsegmented = 0, tcpv4 = 1, udp = 3, tcpv6 = 4
    }

    public var flags: Flags
    /// Raw gso_type, with the ECN bit (0x80) kept.
    public var segmentationTypeRaw: UInt8
    /// Ethernet + IP + TCP header bytes of a super-segment (a hint).
    public var headerLength: UInt16
    /// Payload bytes per segment once cut.
    public var segmentSize: UInt16
    public var checksumStart: UInt16
    public var checksumOffset: UInt16

    public init(flags: Flags = [], segmentation: SegmentationType = .unsegmented, headerLength: UInt16 = 0, segmentSize: UInt16 = 0,
                checksumStart: UInt16 = 0, checksumOffset: UInt16 = 0) {
        self.flags = flags
        self.segmentationTypeRaw = segmentation.rawValue
        self.headerLength = headerLength
        self.segmentSize = segmentSize
        self.checksumStart = checksumStart
        self.checksumOffset = checksumOffset
    }

    public var segmentation: SegmentationType? { SegmentationType(rawValue: segmentationTypeRaw & 0x7F) }

    /// Nothing left for the receiver to do: no partial checksum, no segmentation (a plain wire frame).
    public var isPlain: Bool { !flags.contains(.needsChecksum) && segmentationTypeRaw & 0x7F == 0 }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> VirtioNetHeader {
        guard p.count >= length else { throw .malformed }
        var h = VirtioNetHeader(flags: Flags(rawValue: p[0]))
        h.segmentationTypeRaw = p[1]
        h.headerLength = p.u16le(2)
        h.segmentSize = p.u16le(4)
        h.checksumStart = p.u16le(6)
        h.checksumOffset = p.u16le(8)
        return h
    }

    public func emit(into p: UnsafeMutableRawBufferPointer) {
        p[0] = flags.rawValue
        p[1] = segmentationTypeRaw
        p.put16le(2, headerLength)
        p.put16le(4, segmentSize)
        p.put16le(6, checksumStart)
        p.put16le(8, checksumOffset)
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    func u16le(_ offset: Int) -> UInt16 { UInt16(self[offset]) | UInt16(self[offset + 1]) << 8 }
}

extension UnsafeMutableRawBufferPointer {
    @inline(__always)
    func put16le(_ offset: Int, _ v: UInt16) {
        self[offset] = UInt8(truncatingIfNeeded: v)
        self[offset + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
}
