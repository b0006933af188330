// StreamDeframer: QEMU's 4-byte length framing over a byte stream, with BAD-INPUTS' framing rules.

import Testing
import VNetTransport

@Suite("StreamDeframer")
struct StreamDeframerTests {
    let mtu = 1500

    @Test("many frames in one read come out in order, byte for byte")
    func manyFramesInOneRead() {
        let d = StreamDeframer(mtu: mtu)
        let frames = (0 ..< 50).map { frame(14 + $0 * 29, tag: UInt8($0)) } + [frame(mtu + 18, tag: 99)]
        let got = feedAndCollect(d, frames.flatMap(framed))
        #expect(got == frames.map(Verdict.frame))
        #expect(d.bufferedBytes == 0)
        #expect(d.droppedShort == 0 && d.droppedOversize == 0)
    }

    @Test("a frame split at every byte boundary across two reads is delivered once, whole")
    func splitAtEveryBoundary() {
        let first = frame(60, tag: 1), second = frame(20, tag: 2)
        let bytes = framed(first) + framed(second)
        let firstEnd = 4 + first.count
        for split in 0 ... bytes.count {
            let d = StreamDeframer(mtu: mtu)
            var got = feedAndCollect(d, Array(bytes[..<split]))
            #expect(got.count == (split >= bytes.count ? 2 : split >= firstEnd ? 1 : 0), "split \(split)")
            got += feedAndCollect(d, Array(bytes[split...]))
            #expect(got == [.frame(first), .frame(second)], "split \(split)")
            #expect(d.bufferedBytes == 0, "split \(split)")
        }
    }

    @Test("a too-short frame (0...13 bytes) is skipped and counted; the next good frame still arrives",
          arguments: 0 ... 13)
    func shortFrameSkipped(length: Int) {
        let good = frame(64, tag: 7)
        let bytes = framed(frame(length, tag: 3)) + framed(good)
        // In one read.
        let d = StreamDeframer(mtu: mtu)
        #expect(feedAndCollect(d, bytes) == [.frame(good)])
        #expect(d.droppedShort == 1 && d.droppedOversize == 0)
        // One byte per read.
        let e = StreamDeframer(mtu: mtu)
        var got: [Verdict] = []
        for b in bytes { got += feedAndCollect(e, [b]) }
        #expect(got == [.frame(good)])
        #expect(e.droppedShort == 1)
    }

    @Test("a frame one byte over MTU + 18 is skipped and counted, even when its bytes arrive over several reads")
    func oversizeFrameSkippedAcrossReads() {
        let good = frame(100, tag: 8)
        let big = frame(mtu + 19, tag: 4)
        let bytes = framed(big) + framed(good)
        for chunk in [1, 3, 500, 1000, bytes.count] {
            let d = StreamDeframer(mtu: mtu)
            var got: [Verdict] = []
            var o = 0
            while o < bytes.count {
                let n = min(chunk, bytes.count - o)
                got += feedAndCollect(d, Array(bytes[o ..< o + n]))
                o += n
            }
            #expect(got == [.frame(good)], "chunk \(chunk)")
            #expect(d.droppedOversize == 1 && d.droppedShort == 0, "chunk \(chunk)")
            #expect(d.bufferedBytes == 0, "chunk \(chunk)")
        }
    }

    @Test("the largest length QEMU allows is still skipped, not a desync, even in a small buffer")
    func qemuLimitIsSkipped() {
        let d = StreamDeframer(mtu: mtu, capacity: 0)   // the deframer's own minimum
        let good = frame(42, tag: 9)
        let bytes = framed(frame(FrameLimits.qemuMaximumFrame, tag: 5)) + framed(good)
        var got: [Verdict] = []
        var o = 0
        while o < bytes.count {
            let n = min(4096, bytes.count - o)
            got += feedAndCollect(d, Array(bytes[o ..< o + n]))
            o += n
        }
        #expect(got == [.frame(good)])
        #expect(d.droppedOversize == 1)
    }

    @Test("a length above 65536 + 4096 loses sync", arguments: [FrameLimits.qemuMaximumFrame + 1, 0x00FF_FFFF, Int(UInt32.max)])
    func desync(length: Int) {
        let d = StreamDeframer(mtu: mtu)
        let good = frame(60, tag: 1)
        #expect(feedAndCollect(d, framed(good) + prefix(length) + frame(100, tag: 2)) == [.frame(good), .desync])
        // It keeps saying so until the caller resets the connection.
        #expect(collect(d) == [.desync])
        d.reset()
        #expect(d.bufferedBytes == 0)
        #expect(feedAndCollect(d, framed(good)) == [.frame(good)])
    }

    @Test("many reads through a small buffer: compaction keeps a partial frame at the end intact")
    func compaction() {
        var rng = SplitMix64(seed: 42)
        let d = StreamDeframer(mtu: mtu, capacity: 0)   // 4 * (1518 + 4) bytes: compaction happens often
        var frames: [[UInt8]] = []
        for i in 0 ..< 300 { frames.append(frame(Int.random(in: 14 ... mtu + 18, using: &rng), tag: UInt8(truncatingIfNeeded: i))) }
        let bytes = frames.flatMap(framed)
        var got: [Verdict] = []
        var o = 0
        while o < bytes.count {
            // Reads of random sizes, up to what the deframer offers, so partial frames sit at the buffer's end.
            let space = d.readSpace
            let n = min(space.count, bytes.count - o, Int.random(in: 1 ... 3000, using: &rng))
            space.copyBytes(from: bytes[o ..< o + n])
            d.didRead(n)
            o += n
            got += collect(d)
        }
        #expect(got == frames.map(Verdict.frame))
        #expect(d.bufferedBytes == 0)
    }

    @Test("the read space is never empty after frames are consumed")
    func readSpaceNeverEmpty() {
        let d = StreamDeframer(mtu: mtu, capacity: 0)
        let f = frame(mtu + 18, tag: 1)
        for _ in 0 ..< 20 {
            #expect(d.readSpace.count >= mtu + 22)
            _ = feedAndCollect(d, Array(framed(f).prefix(1000)))
            _ = feedAndCollect(d, Array(framed(f).dropFirst(1000)))
        }
    }
}
