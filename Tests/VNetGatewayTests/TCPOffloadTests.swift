// The gateway behind a TAP with virtio-net offloads (`guestOffloads`): host data leaves as TCP super-segments
// with partial checksums that the kernel cuts and finishes, and guest frames flagged NEEDS_CSUM are taken as
// they are. The virtio-net header of every frame is checked against what the kernel requires of it.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Gateway TCP with TAP offloads")
struct TCPOffloadTests {
    /// Finishes a partial checksum the way the kernel does for NEEDS_CSUM, then verifies the segment.
    func finishAndVerify(_ frame: [UInt8], _ header: VirtioNetHeader) -> Bool {
        var f = frame
        let start = Int(header.checksumStart), field = start + Int(header.checksumOffset)
        let sum = f[start...].withUnsafeBytes { InternetChecksum.add($0) }
        let value = InternetChecksum.finish(sum)
        f[field] = UInt8(value >> 8); f[field + 1] = UInt8(value & 0xFF)
        guard let seg = try? expectSegment(f) else { return false }
        _ = seg
        return true
    }

    @Test("host data goes to the guest as super-segments cut at its MSS, with partial checksums the kernel can finish")
    func superSegmentsToGuest() throws {
        let h = TCPHarness(queueCapacity: 1 << 20) { $0.guestOffloads = true }
        let c = try h.connect(mss: 1000, wscale: 7, ackWindow: 4096)   // window 512 KiB; an MSS that is not 1460
        let data = pattern(150_000, seed: 5)
        h.host.remoteSends(c.handle, data)
        h.readable(c)
        let frames = try drainOffloadedFrames(h.gateway.toGuest)
        var received: [UInt8] = []
        var superSegments = 0
        for (header, frame) in frames {
            #expect(header.flags == .needsChecksum && header.checksumStart == 34 && header.checksumOffset == 16)
            #expect(frame.count <= 14 + 65_535, "an IPv4 datagram holds it")
            let payloadLength = frame.count - 54
            if payloadLength > 1000 {
                superSegments += 1
                #expect(header.segmentation == .tcpv4 && header.segmentSize == 1000 && header.headerLength == 54)
                #expect(payloadLength % 1000 == 0 || frame.count == frames.last!.frame.count, "whole MSS pieces, except the tail")
            } else {
                #expect(header.segmentation == .unsegmented && header.segmentSize == 0)
            }
            #expect(finishAndVerify(frame, header), "the checksum, once finished, is right")
            received += frame[54...]
        }
        #expect(received == data)
        #expect(superSegments >= 2 && frames.count <= 4, "\(frames.count) frames for 150 000 bytes")
        #expect(h.counters[.tcpSuperSegmentsToGuest] == UInt64(superSegments))
    }

    @Test("frames that are not TCP data carry an all-zero header (full checksums, no segmentation)")
    func otherFramesHaveZeroHeaders() throws {
        let h = TCPHarness { $0.guestOffloads = true }
        h.send(FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 7, seq: 1, [1, 2, 3]))
        h.send(FrameBuilder.arpFrame(targetIP: gatewayIP))
        let frames = try drainOffloadedFrames(h.gateway.toGuest)
        #expect(frames.count == 2)
        for (header, _) in frames { #expect(header == VirtioNetHeader()) }
    }

    @Test("a guest segment with a partial checksum is taken only when the port said so and offloads are on")
    func partialChecksumFromGuest() throws {
        for (offloads, flagged, accepted) in [(true, true, true), (true, false, false), (false, true, false)] {
            let h = TCPHarness { $0.guestOffloads = offloads }
            var c = try h.connect()
            var frame = h.frame(c, ack: c.ourSeq(0), pattern(3000))
            // What the kernel hands over with NEEDS_CSUM: the pseudo-header sum only.
            let tcpLength = frame.count - 34
            let partial = InternetChecksum.partial(InternetChecksum.pseudoHeader(source: guestIP, destination: c.server, protocolNumber: 6,
                                                                                 length: tcpLength))
            frame[34 + 16] = UInt8(partial >> 8); frame[34 + 17] = UInt8(partial & 0xFF)
            frame.withUnsafeBytes { h.gateway.handleGuestFrame($0, now: h.now, checksumPartial: flagged) }
            c.seq &+= 3000
            let s = try h.host.socket(c.handle)
            #expect((s.written == pattern(3000)) == accepted, "offloads \(offloads), flagged \(flagged)")
            #expect((h.counters[.tcpBadChecksum] == 1) == !accepted)
        }
    }

    @Test("a 64 KiB guest super-segment is one write to the host socket")
    func superSegmentFromGuest() throws {
        let h = TCPHarness(sendCapacity: 1 << 20) { $0.guestOffloads = true }
        let c = try h.connect()
        let data = pattern(65_000, seed: 1)
        let frame = h.frame(c, ack: c.ourSeq(0), data)
        frame.withUnsafeBytes { h.gateway.handleGuestFrame($0, now: h.now, checksumPartial: false) }
        h.flush()
        let s = try h.host.socket(c.handle)
        #expect(s.written == data)
        let acks = try drainOffloadedFrames(h.gateway.toGuest)
        #expect(acks.count == 1)
    }
}

@Suite("FrameQueue with a per-frame header")
struct FrameQueueHeaderTests {
    @Test("the header sits before each frame, is zero unless kept, and is not part of the frame's padding")
    func headers() throws {
        let q = FrameQueue(capacity: 1 << 17, frameHeaderLength: VirtioNetHeader.length)
        let a = try #require(q.reserve(maximumLength: 100))
        a.initializeMemory(as: UInt8.self, repeating: 0xAA)
        q.reservedFrameHeader.initializeMemory(as: UInt8.self, repeating: 0xEE)   // stale bytes: must be zeroed
        q.commit(length: 20)
        let b = try #require(q.reserve(maximumLength: 100))
        b.initializeMemory(as: UInt8.self, repeating: 0xBB)
        VirtioNetHeader(flags: .needsChecksum, checksumStart: 34, checksumOffset: 16).emit(into: q.reservedFrameHeader)
        q.commit(length: 80, keepingFrameHeader: true)
        var seen: [[UInt8]] = []
        q.forEachFrame { seen.append(Array($0)) }
        #expect(seen == [[UInt8](repeating: 0xAA, count: 20) + [UInt8](repeating: 0, count: 40), [UInt8](repeating: 0xBB, count: 80)])
        let frames = try drainOffloadedFrames(q)
        #expect(frames.map(\.header) == [VirtioNetHeader(), VirtioNetHeader(flags: .needsChecksum, checksumStart: 34, checksumOffset: 16)])
        #expect(frames.map(\.frame.count) == [60, 80])
        #expect(q.isEmpty)
    }

    @Test("virtio-net headers round-trip in little-endian order; short input is malformed")
    func wire() throws {
        let h = VirtioNetHeader(flags: .needsChecksum, segmentation: .tcpv4, headerLength: 54, segmentSize: 1448, checksumStart: 34, checksumOffset: 16)
        var bytes = [UInt8](repeating: 0, count: 10)
        bytes.withUnsafeMutableBytes { h.emit(into: $0) }
        #expect(bytes == [1, 1, 54, 0, 0xA8, 0x05, 34, 0, 16, 0])
        #expect(try bytes.withUnsafeBytes { try VirtioNetHeader.parse($0) } == h)
        #expect(throws: WireError.malformed) { try bytes.prefix(9).withUnsafeBytes { try VirtioNetHeader.parse($0) } }
        var ecn = bytes
        ecn[1] = 0x81
        #expect(try ecn.withUnsafeBytes { try VirtioNetHeader.parse($0) }.segmentation == .tcpv4)
    }
}
