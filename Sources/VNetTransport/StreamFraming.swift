// VNetTransport: QEMU's frame transports.
//
// Theory of Operation
// -------------------
// `-netdev stream` and `-netdev socket` carry each Ethernet frame behind a 4-byte big-endian length (no FCS,
// no virtio header). `StreamDeframer` owns one large receive buffer: the transport reads as much as the
// socket holds into `readSpace`, and `next()` hands out complete frames in place, without copying; a partial
// frame at the end stays for the next read (compacted to the front when room runs short). Framing errors
// follow QEMU and docs/hostile-input.md:
// - a length in sync but naming a frame shorter than an Ethernet header (0..13) or longer than the MTU + 18
//   (room for a VLAN tag) while still within QEMU's own limit (65536 + 4096) is skipped and counted, even
//   when its bytes arrive over several reads; the connection stays up;
// - a length above QEMU's limit means sync is lost: `next()` says `.desync` and the caller resets that
//   connection alone;
// - a connection cut mid-frame simply drops the deframer (and the partial frame with it).
// Datagram transports (`-netdev dgram`, `socket,udp=`/`mcast=`) carry one frame per datagram and only need
// the same length checks (`DatagramFraming`).

import VNetBuffers
import VNetWire

public enum FrameLimits {
    /// QEMU drops a stream connection on a frame larger than this (net/stream.c: NET_BUFSIZE).
    public static let qemuMaximumFrame = 65_536 + 4_096
    /// Ethernet header, the smallest frame vnet accepts.
    public static let minimumFrame = 14
    /// The largest frame accepted for an MTU: Ethernet header + 802.1Q tag + MTU.
    public static func maximumFrame(mtu: Int) -> Int { mtu + 18 }
}

public final class StreamDeframer {
    public enum Next {
        case frame(UnsafeRawBufferPointer)
        case needMore
        case desync
    }

    public let maximumFrame: Int
    let storage: UnsafeMutableRawBufferPointer
    var start = 0
    var end = 0
    /// Bytes of a refused frame still to skip.
    var skip = 0
    public private(set) var droppedShort: UInt64 = 0
    public private(set) var droppedOversize: UInt64 = 0

    public init(mtu: Int, capacity: Int = 1 << 20) {
        maximumFrame = FrameLimits.maximumFrame(mtu: mtu)
        let size = max(capacity, 4 * (maximumFrame + 4))
        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    }

    deinit { storage.deallocate() }

    /// Where the next read goes. Never empty.
    public var readSpace: UnsafeMutableRawBufferPointer {
        if start == end { start = 0; end = 0 }
        if storage.count - end < maximumFrame + 4 && start > 0 {
            let n = end - start
            storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: n)
            start = 0
            end = n
        }
        return storage.slice(end ..< storage.count)
    }

    public func didRead(_ n: Int) {
        precondition(n >= 0 && end + n <= storage.count)
        end += n
    }

    /// Bytes received but not yet handed out (a partial frame or length).
    public var bufferedBytes: Int { end - start }

    public func reset() { start = 0; end = 0; skip = 0 }

    public func next() -> Next {
        while true {
            if skip > 0 {
                let k = min(skip, end - start)
                start += k
                skip -= k
                if skip > 0 { return .needMore }
            }
            guard end - start >= 4 else { return .needMore }
            let b = storage
            let len = Int(b[start]) << 24 | Int(b[start + 1]) << 16 | Int(b[start + 2]) << 8 | Int(b[start + 3])
            if len > FrameLimits.qemuMaximumFrame { return .desync }
            if len < FrameLimits.minimumFrame || len > maximumFrame {
                if len < FrameLimits.minimumFrame { droppedShort &+= 1 } else { droppedOversize &+= 1 }
                start += 4
                skip = len
                continue
            }
            guard end - start >= 4 + len else { return .needMore }
            let frame = UnsafeRawBufferPointer(storage.slice(start + 4 ..< start + 4 + len))
            start += 4 + len
            return .frame(frame)
        }
    }
}

/// Length rules for one-frame-per-datagram transports.
public enum DatagramFraming {
    public enum Verdict: Equatable { case accept, tooShort, tooLong }

    /// `received` is what recv returned; `truncated` is MSG_TRUNC's verdict.
    public static func check(received: Int, truncated: Bool, mtu: Int) -> Verdict {
        if truncated || received > FrameLimits.maximumFrame(mtu: mtu) { return .tooLong }
        if received < FrameLimits.minimumFrame { return .tooShort }
        return .accept
    }
}
