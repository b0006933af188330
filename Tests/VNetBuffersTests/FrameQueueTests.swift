// FrameQueue: reservation, zero padding, stream consumption (partial writes), per-frame consumption,
// refusal when full, and compaction with a partially written frame pending.

import Testing
import VNetBuffers

// MARK: - Helpers

/// A frame of `length` bytes whose content identifies it (`tag`) and its offsets.
func patternFrame(_ length: Int, tag: UInt8) -> [UInt8] {
    (0 ..< length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(tag) &* 31) }
}

/// Reserves, writes `frame` and commits it; false when the queue refused.
@discardableResult
func push(_ q: FrameQueue, _ frame: [UInt8]) -> Bool {
    guard let out = q.reserve(maximumLength: frame.count) else { return false }
    out.copyBytes(from: frame)
    q.commit(length: frame.count)
    return true
}

/// What the queue must put on a stream for `frames`: a 4-byte big-endian length, then the frame padded to 60.
func streamBytes(_ frames: [[UInt8]]) -> [UInt8] {
    var out: [UInt8] = []
    for f in frames {
        let padded = f + [UInt8](repeating: 0, count: max(0, 60 - f.count))
        let n = padded.count
        out += [UInt8(n >> 24 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)] + padded
    }
    return out
}

/// Takes up to `n` pending stream bytes, as a stream transport's partial write would, and consumes them.
func takeStream(_ q: FrameQueue, _ n: Int) -> [UInt8] {
    let pending = q.pendingStreamBytes
    let k = min(n, pending.count)
    let bytes = Array(pending[0 ..< k])
    q.consumeStreamBytes(k)
    return bytes
}

/// Every frame, oldest first, through firstFrame/removeFirstFrame (empties the queue).
func drainFrames(_ q: FrameQueue) -> [[UInt8]] {
    var out: [[UInt8]] = []
    while let f = q.firstFrame {
        out.append(Array(f))
        q.removeFirstFrame()
    }
    return out
}

/// Fills the whole storage with `byte` through one giant frame, then drops it, so stale bytes would show.
func dirty(_ q: FrameQueue, with byte: UInt8 = 0xAA) {
    let out = q.reserve(maximumLength: q.capacity - FrameQueue.prefixLength)!
    out.initializeMemory(as: UInt8.self, repeating: byte)
    q.commit(length: out.count)
    q.removeFirstFrame()
}

let minimumCapacity = 4 + 65_536

// MARK: - Tests

@Suite("FrameQueue")
struct FrameQueueTests {
    @Test("reserve hands out at least 60 bytes and commit pads short frames with zeros, never stale bytes",
          arguments: [0, 1, 14, 42, 59, 60, 61, 1514])
    func shortFramesArePaddedWithZeros(length: Int) throws {
        let q = FrameQueue(capacity: minimumCapacity)
        dirty(q)
        let out = try #require(q.reserve(maximumLength: length))
        #expect(out.count == max(length, 60))
        #expect(out.allSatisfy { $0 == 0xAA }, "the test must start from stale bytes")
        let frame = patternFrame(length, tag: 3)
        out.copyBytes(from: frame)
        q.commit(length: length)
        #expect(q.frameCount == 1)
        let stream = Array(q.pendingStreamBytes)
        #expect(stream == streamBytes([frame]))
        let frames = drainFrames(q)
        #expect(frames == [frame + [UInt8](repeating: 0, count: max(0, 60 - length))])
        #expect(q.isEmpty && q.frameCount == 0)
    }

    @Test("frames come out in order through firstFrame/removeFirstFrame")
    func firstFrameOrder() {
        let q = FrameQueue(capacity: minimumCapacity)
        #expect(q.firstFrame == nil)
        q.removeFirstFrame()   // on an empty queue: nothing happens
        #expect(q.frameCount == 0)
        let frames = [patternFrame(100, tag: 1), patternFrame(60, tag: 2), patternFrame(1514, tag: 3)]
        for f in frames { #expect(push(q, f)) }
        #expect(q.frameCount == 3)
        #expect(Array(q.firstFrame!) == frames[0])
        q.removeFirstFrame()
        #expect(q.frameCount == 2)
        #expect(Array(q.firstFrame!) == frames[1])
        var seen: [[UInt8]] = []
        q.forEachFrame { seen.append(Array($0)) }
        #expect(seen == [frames[1], frames[2]])
        #expect(drainFrames(q) == [frames[1], frames[2]])
        #expect(q.isEmpty)
    }

    @Test("a stream written in two parts, split at every byte, reassembles exactly with the right frame count")
    func streamSplitAtEveryPoint() {
        let frames = [patternFrame(70, tag: 1), patternFrame(10, tag: 2), patternFrame(90, tag: 3)]
        let expected = streamBytes(frames)
        // Stream offsets at which each frame is completely written.
        var ends: [Int] = []
        var o = 0
        for f in frames { o += 4 + max(60, f.count); ends.append(o) }
        let q = FrameQueue(capacity: minimumCapacity)
        for split in 0 ... expected.count {
            for f in frames { push(q, f) }
            var got = takeStream(q, split)
            let complete = ends.filter { $0 <= split }.count
            #expect(q.frameCount == frames.count - complete, "split \(split)")
            got += takeStream(q, expected.count)
            #expect(got == expected, "split \(split)")
            #expect(q.isEmpty && q.frameCount == 0, "split \(split)")
        }
    }

    @Test("many partial writes of seeded random sizes, with frames committed in between, reassemble exactly")
    func randomPartialWritesWithInterleavedCommits() {
        var rng = SplitMix64(seed: 0x5EED)
        let q = FrameQueue(capacity: minimumCapacity)
        var committed: [[UInt8]] = []
        var written: [UInt8] = []
        var refusals: UInt64 = 0
        for round in 0 ..< 2000 {
            // Bursts of commits then stretches of slow draining, so the queue fills, refuses and compacts.
            let producing = (round / 100) % 2 == 0
            if producing || Int.random(in: 0 ..< 4, using: &rng) == 0 {
                let f = patternFrame(Int.random(in: 1 ... 1600, using: &rng), tag: UInt8(truncatingIfNeeded: round))
                if push(q, f) { committed.append(f) } else { refusals += 1 }
            }
            written += takeStream(q, Int.random(in: 0 ... (producing ? 300 : 2000), using: &rng))
        }
        written += takeStream(q, Int.max)
        #expect(written == streamBytes(committed))
        #expect(q.frameCount == 0 && q.isEmpty)
        #expect(refusals > 0, "the test should have filled the queue")
        #expect(q.refused == refusals)
    }

    @Test("a full queue refuses the reservation, counts it, and accepts again once drained")
    func refusalWhenFull() throws {
        let q = FrameQueue(capacity: minimumCapacity)
        #expect(push(q, patternFrame(65_536, tag: 1)))
        #expect(q.reserve(maximumLength: 1) == nil)
        #expect(q.reserve(maximumLength: 1514) == nil)
        #expect(q.refused == 2)
        #expect(q.frameCount == 1)
        // Half sent: the rest of the frame still cannot make room for another full frame.
        _ = takeStream(q, 10_000)
        #expect(q.reserve(maximumLength: 60_000) == nil)
        #expect(q.refused == 3)
        _ = takeStream(q, Int.max)
        #expect(push(q, patternFrame(1514, tag: 2)))
        #expect(q.refused == 3)
        #expect(drainFrames(q) == [patternFrame(1514, tag: 2)])
    }

    @Test("compaction keeps a partially written frame intact and walkable")
    func compactionWithPartialFramePending() throws {
        let q = FrameQueue(capacity: minimumCapacity + 1000)
        let a = patternFrame(30_000, tag: 1), b = patternFrame(30_000, tag: 2), c = patternFrame(20_000, tag: 3)
        #expect(push(q, a))
        #expect(push(q, b))
        // Everything of A and 1234 bytes (prefix included) of B go out.
        var written = takeStream(q, 4 + a.count + 1234)
        #expect(q.frameCount == 1)
        // C does not fit behind B's tail; it fits once B's remainder is moved to the front.
        #expect(push(q, c))
        #expect(q.refused == 0)
        #expect(q.frameCount == 2)
        written += takeStream(q, 5)          // a little more of B
        written += takeStream(q, Int.max)    // then the rest
        #expect(written == streamBytes([a, b, c]))
        #expect(q.isEmpty)
    }

    @Test("compaction when the pending partial write stopped inside a length prefix")
    func compactionInsidePrefix() {
        let q = FrameQueue(capacity: minimumCapacity + 1000)
        let a = patternFrame(40_000, tag: 4), b = patternFrame(20_000, tag: 5), c = patternFrame(30_000, tag: 6)
        push(q, a); push(q, b)
        var written = takeStream(q, 4 + a.count + 2)   // two bytes of B's prefix
        #expect(q.frameCount == 1)
        #expect(push(q, c))
        written += takeStream(q, Int.max)
        #expect(written == streamBytes([a, b, c]))
    }

    @Test("removeAll forgets everything, including a partial write")
    func removeAll() {
        let q = FrameQueue(capacity: minimumCapacity)
        push(q, patternFrame(100, tag: 1))
        _ = takeStream(q, 7)
        q.removeAll()
        #expect(q.isEmpty && q.frameCount == 0)
        push(q, patternFrame(80, tag: 2))
        #expect(drainFrames(q) == [patternFrame(80, tag: 2)])
    }
}

/// SplitMix64: a tiny seeded generator, so every "random" test is the same on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
