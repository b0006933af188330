// The Internet checksum (RFC 1071), with incremental update (RFC 1624).
//
// Sums are accumulated in 64 bits, eight bytes at a time, and folded once at the end. A byte buffer may
// start anywhere: words are assembled from bytes, so alignment never matters.

public enum InternetChecksum {
    /// Adds `buf` to a running (unfolded) sum, treating it as big-endian 16-bit words; an odd final byte is
    /// padded with zero, as RFC 1071 requires. Only call with an odd-length buffer as the *last* piece.
    @inlinable
    public static func add(_ buf: UnsafeRawBufferPointer, to sum: UInt64 = 0) -> UInt64 {
        var acc = sum
        let n = buf.count
        guard n > 0, let base = buf.baseAddress else { return acc }
        var i = 0
        // Eight bytes at a time: a native-endian 64-bit load, summed as four 16-bit lanes via 32-bit halves.
        while i + 8 <= n {
            let w = (base + i).loadUnaligned(as: UInt64.self)
            let be = UInt64(bigEndian: w)
            acc &+= (be >> 32) &+ (be & 0xFFFF_FFFF)
            i += 8
            if acc >> 62 != 0 { acc = (acc & 0xFFFF_FFFF) &+ (acc >> 32) }
        }
        while i + 2 <= n {
            acc &+= UInt64(buf[i]) << 8 | UInt64(buf[i + 1])
            i += 2
        }
        if i < n { acc &+= UInt64(buf[i]) << 8 }
        return acc
    }

    @inlinable
    public static func add16(_ v: UInt16, to sum: UInt64) -> UInt64 { sum &+ UInt64(v) }

    @inlinable
    public static func add32(_ v: UInt32, to sum: UInt64) -> UInt64 { sum &+ UInt64(v >> 16) &+ UInt64(v & 0xFFFF) }

    /// Folds a running sum to 16 bits and complements it: the value to store in a checksum field.
    @inlinable
    public static func finish(_ sum: UInt64) -> UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xFFFF) &+ (s >> 16) }
        return ~UInt16(truncatingIfNeeded: s)
    }

    /// The checksum of one buffer.
    @inlinable
    public static func of(_ buf: UnsafeRawBufferPointer) -> UInt16 { finish(add(buf)) }

    /// The IPv4 pseudo-header sum for TCP/UDP (RFC 793 / RFC 768).
    @inlinable
    public static func pseudoHeader(source: IPv4Address, destination: IPv4Address, protocolNumber: UInt8, length: Int) -> UInt64 {
        var s: UInt64 = 0
        s = add32(source.rawValue, to: s)
        s = add32(destination.rawValue, to: s)
        s &+= UInt64(protocolNumber)
        s &+= UInt64(length)
        return s
    }

    /// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for one 16-bit field changing from `old` to `new`.
    @inlinable
    public static func update(_ checksum: UInt16, old: UInt16, new: UInt16) -> UInt16 {
        var s = UInt32(~checksum) &+ UInt32(~old) &+ UInt32(new)
        while s >> 16 != 0 { s = (s & 0xFFFF) &+ (s >> 16) }
        return ~UInt16(truncatingIfNeeded: s)
    }

    @inlinable
    public static func update(_ checksum: UInt16, old: UInt32, new: UInt32) -> UInt16 {
        let c = update(checksum, old: UInt16(truncatingIfNeeded: old >> 16), new: UInt16(truncatingIfNeeded: new >> 16))
        return update(c, old: UInt16(truncatingIfNeeded: old), new: UInt16(truncatingIfNeeded: new))
    }
}

extension InternetChecksum {
    /// The value a checksum field holds when the rest is left to the reader (virtio NEEDS_CSUM, Linux
    /// CHECKSUM_PARTIAL): the folded pseudo-header sum, not complemented.
    @inlinable
    public static func partial(_ sum: UInt64) -> UInt16 { ~finish(sum) }
}
