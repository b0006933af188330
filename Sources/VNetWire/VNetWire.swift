// VNetWire: bytes <-> values for the protocols vnet speaks.
//
// Theory of Operation
// -------------------
// Every protocol is a plain value (`…Header`, `DHCPMessage`, `VirtioNetHeader`) with a `parse` that checks
// every length it relies on before it reads, and an `emit` that mirrors it. A buffer that is too short, or
// whose length fields disagree with the bytes present, yields `WireError.malformed` and nothing else; a value
// that parsed names only bytes that are there (its payload ranges lie inside the buffer). Multi-byte fields
// are assembled byte by byte (network order), so no access is ever unaligned. `SoftwareOffload` finishes
// a NIC's offloads (segmentation, checksums) in place of a port that has none. Unknown protocol numbers are carried, never rejected here: policy belongs to
// the gateway. This module has no state, no Foundation and no syscalls.

/// The one error of the wire layer: the bytes are malformed, truncated or of an unsupported shape.
public enum WireError: Error, Equatable, Sendable {
    case malformed
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    public func u8(_ offset: Int) -> UInt8 { self[offset] }

    @inline(__always)
    public func u16(_ offset: Int) -> UInt16 { UInt16(self[offset]) << 8 | UInt16(self[offset + 1]) }

    @inline(__always)
    public func u32(_ offset: Int) -> UInt32 {
        UInt32(self[offset]) << 24 | UInt32(self[offset + 1]) << 16 | UInt32(self[offset + 2]) << 8 | UInt32(self[offset + 3])
    }
}

extension UnsafeMutableRawBufferPointer {
    @inline(__always)
    public func put8(_ offset: Int, _ v: UInt8) { self[offset] = v }

    @inline(__always)
    public func put16(_ offset: Int, _ v: UInt16) {
        self[offset] = UInt8(truncatingIfNeeded: v >> 8)
        self[offset + 1] = UInt8(truncatingIfNeeded: v)
    }

    @inline(__always)
    public func put32(_ offset: Int, _ v: UInt32) {
        self[offset] = UInt8(truncatingIfNeeded: v >> 24)
        self[offset + 1] = UInt8(truncatingIfNeeded: v >> 16)
        self[offset + 2] = UInt8(truncatingIfNeeded: v >> 8)
        self[offset + 3] = UInt8(truncatingIfNeeded: v)
    }

    /// Copies `bytes` to `offset`. The caller has checked that they fit.
    @inline(__always)
    public func copy(_ bytes: UnsafeRawBufferPointer, to offset: Int) {
        guard bytes.count > 0 else { return }
        UnsafeMutableRawBufferPointer(rebasing: self[offset ..< offset + bytes.count]).copyMemory(from: bytes)
    }

    /// Writes zeros over `range`.
    @inline(__always)
    public func zero(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        UnsafeMutableRawBufferPointer(rebasing: self[range]).initializeMemory(as: UInt8.self, repeating: 0)
    }
}

extension UnsafeRawBufferPointer {
    /// A sub-buffer, with its indices starting at zero.
    @inline(__always)
    public func slice(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: self[range])
    }
}

extension UnsafeMutableRawBufferPointer {
    /// A sub-buffer, with its indices starting at zero.
    @inline(__always)
    public func slice(_ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: self[range])
    }
}
