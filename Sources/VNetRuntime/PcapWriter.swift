// Packet capture to a classic pcap file (linktype Ethernet), written from the data path.
//
// Theory of Operation
// -------------------
// Records are appended to one preallocated buffer (`bufferSize` bytes): a 16-byte record header (wall-clock
// time, captured and original length, little-endian like the file header) and the frame, cut at `snapLength`.
// The buffer goes to the file in one write when the next record does not fit and at the end of every loop
// iteration (`flush`), so a capture costs one copy per frame and a write per batch, and never allocates.
// Frames from the guest are recorded as the port reads them; frames to the guest as the gateway queues them
// (`FrameQueueObserver`), so a frame dropped later because the guest went away still shows. With
// `rotateBytes`, a file that reaches that size is renamed to FILE.1 (replacing an older one) and a new FILE
// starts with its own header. A failed write stops the capture (counted) rather than the network.

import VNetBuffers
#if canImport(Glibc)
import Glibc
#endif

public final class PcapWriter: FrameQueueObserver {
    public static let snapLength = 65_535
    static let bufferSize = 1 << 20

    public let path: String
    let rotateBytes: UInt64?
    var fd: Int32
    let buffer: UnsafeMutableRawBufferPointer
    var used = 0
    var fileBytes: UInt64 = 0
    public private(set) var packets: UInt64 = 0
    public private(set) var failed = false
    public private(set) var rotations = 0

    public init(path: String, rotateBytes: UInt64? = nil) throws {
        self.path = path
        self.rotateBytes = rotateBytes.map { max($0, 4096) }
        fd = try PcapWriter.open(path)
        buffer = .allocate(byteCount: PcapWriter.bufferSize, alignment: 16)
        writeFileHeader()
    }

    deinit {
        close()
        buffer.deallocate()
    }

    static func open(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RuntimeError("pcap \(path): \(String(cString: strerror(errno)))") }
        return fd
    }

    @inline(__always) func put32(_ offset: Int, _ v: UInt32) {
        buffer[offset] = UInt8(truncatingIfNeeded: v)
        buffer[offset + 1] = UInt8(truncatingIfNeeded: v >> 8)
        buffer[offset + 2] = UInt8(truncatingIfNeeded: v >> 16)
        buffer[offset + 3] = UInt8(truncatingIfNeeded: v >> 24)
    }

    func writeFileHeader() {
        put32(used, 0xA1B2_C3D4)                 // magic: microsecond timestamps
        put32(used + 4, 2 | (4 << 16))           // version 2.4
        put32(used + 8, 0)                       // thiszone
        put32(used + 12, 0)                      // sigfigs
        put32(used + 16, UInt32(PcapWriter.snapLength))
        put32(used + 20, 1)                      // LINKTYPE_ETHERNET
        used += 24
    }

    public func frameCommitted(_ frame: UnsafeRawBufferPointer) { record(frame) }

    /// Appends one frame.
    public func record(_ frame: UnsafeRawBufferPointer) {
        guard fd >= 0 else { return }
        let captured = min(frame.count, PcapWriter.snapLength)
        if used + 16 + captured > buffer.count { flush() }
        guard fd >= 0 else { return }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        put32(used, UInt32(truncatingIfNeeded: now.tv_sec))
        put32(used + 4, UInt32(truncatingIfNeeded: now.tv_nsec / 1000))
        put32(used + 8, UInt32(captured))
        put32(used + 12, UInt32(frame.count))
        if captured > 0, let src = frame.baseAddress {
            (buffer.baseAddress! + used + 16).copyMemory(from: src, byteCount: captured)
        }
        used += 16 + captured
        packets &+= 1
    }

    /// Writes what is buffered (once per loop iteration, and when the buffer is full).
    public func flush() {
        guard used > 0, fd >= 0 else { return }
        var offset = 0
        while offset < used {
            let n = Glibc.write(fd, buffer.baseAddress! + offset, used - offset)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                failed = true
                Glibc.close(fd)
                fd = -1
                used = 0
                return
            }
            offset += n
        }
        fileBytes += UInt64(used)
        used = 0
        if let limit = rotateBytes, fileBytes >= limit { rotate() }
    }

    func rotate() {
        Glibc.close(fd)
        fd = -1
        rename(path, path + ".1")
        guard let f = try? PcapWriter.open(path) else { failed = true; return }
        fd = f
        fileBytes = 0
        rotations += 1
        writeFileHeader()
    }

    public func close() {
        flush()
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}
