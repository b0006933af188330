// VNetBuffers: time values and preallocated frame storage for the data path.
//
// Theory of Operation
// -------------------
// Nothing here allocates after initialisation. `FrameQueue` is the one place outgoing frames are built: a
// producer reserves room for a frame of at most N bytes, writes the frame in place, and commits its real
// length. Each committed frame is stored behind a 4-byte big-endian length, which is exactly QEMU's stream
// framing, so a stream transport writes the queue's bytes with one syscall and a datagram or TAP transport
// walks it frame by frame. A queue may also keep a fixed-size header before every frame (`frameHeaderLength`,
// the virtio-net header of a TAP opened with IFF_VNET_HDR): producers fill it only when they use an offload,
// it is zero otherwise, and per-frame transports write it together with the frame. A full queue refuses the reservation and the producer counts a drop: a port that
// cannot keep up loses frames instead of buffering without bound. `Instant` is monotonic time passed in by the
// caller, so every timer is testable with a fake clock.

/// A point on a monotonic clock, in nanoseconds. Time is read once per loop iteration and passed down.
public struct Instant: Comparable, Hashable, Sendable {
    public var nanoseconds: UInt64
    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }
    public static let zero = Instant(nanoseconds: 0)

    public static func < (l: Instant, r: Instant) -> Bool { l.nanoseconds < r.nanoseconds }
    public static func + (l: Instant, r: Duration) -> Instant { Instant(nanoseconds: l.nanoseconds &+ r.nanoseconds) }
    public static func - (l: Instant, r: Instant) -> Duration {
        Duration(nanoseconds: l.nanoseconds >= r.nanoseconds ? l.nanoseconds - r.nanoseconds : 0)
    }

    public struct Duration: Comparable, Hashable, Sendable {
        public var nanoseconds: UInt64
        public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }
        public static func seconds(_ s: UInt64) -> Duration { Duration(nanoseconds: s * 1_000_000_000) }
        public static func milliseconds(_ ms: UInt64) -> Duration { Duration(nanoseconds: ms * 1_000_000) }
        public static func < (l: Duration, r: Duration) -> Bool { l.nanoseconds < r.nanoseconds }
        public var seconds: UInt64 { nanoseconds / 1_000_000_000 }
    }
}

/// Sees every frame committed to a `FrameQueue` (a packet capture, say). Called on the data path: it must
/// not allocate.
public protocol FrameQueueObserver: AnyObject {
    func frameCommitted(_ frame: UnsafeRawBufferPointer)
}

/// A bounded queue of length-prefixed Ethernet frames in one preallocated byte buffer.
public final class FrameQueue {
    /// Told of each committed frame (without its frame header; padded to 60 bytes), when set.
    public var observer: (any FrameQueueObserver)?
    /// The 4-byte length prefix before each frame.
    public static let prefixLength = 4
    public static let minimumFrameLength = 60

    public let capacity: Int
    /// Bytes kept before every frame for a per-frame transport header (0: none, as stream framing needs).
    public let frameHeaderLength: Int
    @usableFromInline let storage: UnsafeMutableRawBufferPointer
    /// First byte not yet handed to the transport.
    @usableFromInline var head = 0
    /// End of committed bytes.
    @usableFromInline var tail = 0
    @usableFromInline var reserved = 0
    /// Frames committed and not yet fully consumed.
    public private(set) var frameCount = 0
    /// Reservations refused because the queue was full.
    public private(set) var refused: UInt64 = 0

    public init(capacity: Int, frameHeaderLength: Int = 0) {
        precondition(capacity >= 4 + 65_536 + frameHeaderLength && frameHeaderLength >= 0 && frameHeaderLength <= 64)
        self.capacity = capacity
        self.frameHeaderLength = frameHeaderLength
        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { storage.deallocate() }

    /// Forgets every frame and the refusal count, keeping the storage: zeroed again with `zeroing`, as `init`
    /// left it, or with its stale bytes, as between frames in a running queue. For a gateway reused between
    /// fuzz inputs.
    public func reset(zeroing: Bool = true) {
        head = 0; tail = 0; reserved = 0; frameCount = 0; partialFrameOffset = 0; refused = 0
        if zeroing { storage.initializeMemory(as: UInt8.self, repeating: 0) }
    }

    public var isEmpty: Bool { head == tail }

    /// Bytes a producer can still reserve (after compaction), prefixes included.
    public var freeSpace: Int { capacity - (tail - (head - partialFrameOffset)) }

    /// Room for a frame of up to `maximumLength` bytes, or nil (counted) when the queue is full. The bytes
    /// returned may hold stale data: the producer writes every byte up to the length it commits.
    public func reserve(maximumLength: Int) -> UnsafeMutableRawBufferPointer? {
        let need = FrameQueue.prefixLength + frameHeaderLength + max(maximumLength, FrameQueue.minimumFrameLength)
        if tail + need > capacity {
            // Compact: move unsent bytes to the front.
            if head - partialFrameOffset > 0 {
                // Keep the start of a partially sent frame so its prefix stays walkable.
                let from = head - partialFrameOffset
                let pending = tail - from
                if pending > 0, let base = storage.baseAddress {
                    base.copyMemory(from: base + from, byteCount: pending)
                }
                head = partialFrameOffset
                tail = pending
            }
            guard tail + need <= capacity else { refused &+= 1; return nil }
        }
        reserved = need - FrameQueue.prefixLength - frameHeaderLength
        return UnsafeMutableRawBufferPointer(rebasing: storage[(tail + FrameQueue.prefixLength + frameHeaderLength) ..< (tail + need)])
    }

    /// The frame header of the current reservation (empty when `frameHeaderLength` is 0). Write it before
    /// `commit(length:keepingFrameHeader: true)`; a plain commit zeroes it.
    public var reservedFrameHeader: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: storage[(tail + FrameQueue.prefixLength) ..< (tail + FrameQueue.prefixLength + frameHeaderLength)])
    }

    /// Commits the frame written into the last reservation. Frames shorter than 60 bytes are padded with
    /// zeros, never with stale bytes.
    public func commit(length: Int, keepingFrameHeader: Bool = false) {
        precondition(length <= reserved && length >= 0)
        if frameHeaderLength > 0 && !keepingFrameHeader { reservedFrameHeader.initializeMemory(as: UInt8.self, repeating: 0) }
        var len = length
        if len < FrameQueue.minimumFrameLength {
            let start = tail + FrameQueue.prefixLength + frameHeaderLength
            UnsafeMutableRawBufferPointer(rebasing: storage[(start + len) ..< (start + FrameQueue.minimumFrameLength)])
                .initializeMemory(as: UInt8.self, repeating: 0)
            len = FrameQueue.minimumFrameLength
        }
        len += frameHeaderLength
        storage[tail] = UInt8(truncatingIfNeeded: len >> 24)
        storage[tail + 1] = UInt8(truncatingIfNeeded: len >> 16)
        storage[tail + 2] = UInt8(truncatingIfNeeded: len >> 8)
        storage[tail + 3] = UInt8(truncatingIfNeeded: len)
        if let o = observer {
            let start = tail + FrameQueue.prefixLength + frameHeaderLength
            o.frameCommitted(UnsafeRawBufferPointer(rebasing: storage[start ..< tail + FrameQueue.prefixLength + len]))
        }
        tail += FrameQueue.prefixLength + len
        reserved = 0
        frameCount += 1
    }

    /// Unsent bytes in stream framing (length prefix + frame, repeated).
    public var pendingStreamBytes: UnsafeRawBufferPointer {
        precondition(frameHeaderLength == 0, "stream framing has no per-frame header")
        return UnsafeRawBufferPointer(rebasing: storage[head ..< tail])
    }

    /// Marks `n` stream bytes as sent. `n` may end inside a frame.
    public func consumeStreamBytes(_ n: Int) {
        precondition(n <= tail - head)
        // Count the frames whose last byte was sent.
        var cursor = head - partialFrameOffset   // start of the frame head points into
        let end = head + n
        while cursor + FrameQueue.prefixLength <= end {
            let len = frameLength(at: cursor)
            if cursor + FrameQueue.prefixLength + len <= end {
                cursor += FrameQueue.prefixLength + len
                frameCount -= 1
            } else {
                break
            }
        }
        head = end
        // A partially sent frame stays: head points inside it and later calls continue from there.
        partialFrameOffset = head - cursor
        if head == tail { head = 0; tail = 0; frameCount = 0; partialFrameOffset = 0 }
    }

    /// Bytes of the frame at `head` already written by a stream transport (0 when head is at a frame start).
    @usableFromInline var partialFrameOffset = 0

    @inline(__always) func frameLength(at offset: Int) -> Int {
        Int(storage[offset]) << 24 | Int(storage[offset + 1]) << 16 | Int(storage[offset + 2]) << 8 | Int(storage[offset + 3])
    }

    /// The oldest unsent frame without its prefix (with its frame header first, when the queue keeps one), for
    /// per-frame transports. Never call it after a partial stream write.
    public var firstFrame: UnsafeRawBufferPointer? {
        guard head < tail else { return nil }
        precondition(partialFrameOffset == 0)
        let len = frameLength(at: head)
        return UnsafeRawBufferPointer(rebasing: storage[(head + FrameQueue.prefixLength) ..< (head + FrameQueue.prefixLength + len)])
    }

    /// Drops the oldest frame (sent, or dropped by the transport).
    public func removeFirstFrame() {
        guard head < tail else { return }
        head += FrameQueue.prefixLength + frameLength(at: head)
        frameCount -= 1
        if head == tail { head = 0; tail = 0; frameCount = 0 }
    }

    /// Forgets every queued frame, e.g. when the guest's connection goes away.
    public func removeAll() {
        head = 0; tail = 0; frameCount = 0; partialFrameOffset = 0
    }

    /// Calls `body` with each unsent frame (without its frame header), oldest first (for tests and pcap).
    public func forEachFrame(_ body: (UnsafeRawBufferPointer) -> Void) {
        precondition(partialFrameOffset == 0)
        var cursor = head
        while cursor < tail {
            let len = frameLength(at: cursor)
            body(UnsafeRawBufferPointer(rebasing: storage[(cursor + 4 + frameHeaderLength) ..< (cursor + 4 + len)]))
            cursor += 4 + len
        }
    }
}
