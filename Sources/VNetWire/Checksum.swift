// The Internet checksum (RFC 1071), with incremental update (RFC 1624).
//
// Sums are accumulated in 64 bits, eight bytes at a time, and folded once at the end. A byte buffer may
// start anywhere: words are assembled from bytes, so alignment never matters.

public enum InternetChecksum {
    /// Adds `buf` to a running (unfolded) sum, treating it as big-endian 16-bit words; an odd final byte is
    /// padded with zero, as RFC 1071 requires. Only call with an odd-length buffer as the *last* piece.
    ///
    /// The buffer is summed in native byte order, 64 bits at a time with end-around carry (two accumulators,
    /// 32 bytes per round), folded to 16 bits and byte-swapped once: the one's complement sum does not
    /// depend on byte order (RFC 1071 §2(B)), so this equals the big-endian word sum.
    @inlinable
    public static func add(_ buf: UnsafeRawBufferPointer, to sum: UInt64 = 0) -> UInt64 {
        let n = buf.count
        guard n > 0, let base = buf.baseAddress else { return sum }
        var a: UInt64 = 0
        var b: UInt64 = 0
        var i = 0
        @inline(__always) func addCarry(_ x: inout UInt64, _ w: UInt64) {
            let (s, o) = x.addingReportingOverflow(w)
            x = s &+ (o ? 1 : 0)
        }
        while i + 32 <= n {
            addCarry(&a, (base + i).loadUnaligned(as: UInt64.self))
            addCarry(&b, (base + i + 8).loadUnaligned(as: UInt64.self))
            addCarry(&a, (base + i + 16).loadUnaligned(as: UInt64.self))
            addCarry(&b, (base + i + 24).loadUnaligned(as: UInt64.self))
            i += 32
        }
        while i + 8 <= n {
            addCarry(&a, (base + i).loadUnaligned(as: UInt64.self))
            i += 8
        }
        addCarry(&a, b)
        // Fold to 32 bits before the tail so its few additions cannot overflow.
        var c = (a & 0xFFFF_FFFF) &+ (a >> 32)
        while i + 2 <= n {
            c &+= UInt64((base + i).loadUnaligned(as: UInt16.self))
            i += 2
        }
        if i < n {
            // The odd byte is the first byte of a word whose second byte is zero.
            let last = UInt64(base.load(fromByteOffset: i, as: UInt8.self))
            #if _endian(little)
            c &+= last
            #else
            c &+= last << 8
            #endif
        }
        while c >> 16 != 0 { c = (c & 0xFFFF) &+ (c >> 16) }
        return sum &+ UInt64(UInt16(bigEndian: UInt16(truncatingIfNeeded: c)))
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
