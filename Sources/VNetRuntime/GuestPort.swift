// The guest's end of the data path: one QEMU (or TAP) port wired straight to the gateway.
//
// Theory of Operation
// -------------------
// A `GuestPort` owns the fds of one transport and moves frames both ways:
// - in: everything readable is read now (stream reads are split into frames in place by `StreamDeframer`;
//   datagram and TAP reads are one frame each), and each frame goes to `deliver`, with the virtio-net header
//   it came with (only a TAP opened with IFF_VNET_HDR has one: a partial checksum, a TCP super-segment);
// - out: `flush` drains the gateway's `FrameQueue` with as few syscalls as it can (one write of the stream
//   bytes; one send per datagram/TAP frame). When the socket is full, EPOLLOUT is armed and the rest waits in
//   the queue, which is bounded: the gateway counts what does not fit.
// Stream listeners serve one QEMU at a time, like QEMU's own stream server: a second connection while one is
// active is closed at once. A QEMU that disconnects is forgotten (its partial frame and queued output with
// it, and in `vnet user` its flows: see `disconnectHandler`) and the next one is accepted. In connect mode the
// port retries every second until QEMU listens again.

import CVNetShim
import Logging
import VNetBuffers
import VNetHost
import VNetTransport
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public struct PortCounters: Sendable {
    public var framesIn: UInt64 = 0
    public var framesOut: UInt64 = 0
    /// Ethernet bytes (without transport framing or virtio-net headers).
    public var bytesIn: UInt64 = 0
    public var bytesOut: UInt64 = 0
    public var droppedShort: UInt64 = 0
    public var droppedOversize: UInt64 = 0
    public var desyncResets: UInt64 = 0
    public var rejectedConnections: UInt64 = 0
    public var connections: UInt64 = 0
    public var sendErrors: UInt64 = 0
    /// TCP super-segments (virtio-net GSO) read from a TAP.
    public var superSegmentsIn: UInt64 = 0
}

final class GuestPort {
    enum Kind {
        case streamListener(listenFD: Int32)
        case streamConnector(address: SocketAddress)
        case datagram(peer: SocketAddress?)
        /// With `virtioHeader`, every read and write starts with a virtio-net header (IFF_VNET_HDR).
        case tap(virtioHeader: Bool)
        /// A transport with a protocol of its own (PortTransport.swift): it owns its fds and moves frames itself.
        case transport(PortTransport)
    }

    let kind: Kind
    let epoll: Epoll
    let mtu: Int
    let logger: Logger
    /// The active stream connection, datagram socket or TAP fd; -1 when none.
    var fd: Int32 = -1
    var connecting = false
    var writeArmed = false
    var reconnectAt: UInt64 = 0
    var peer: SocketAddress?
    let deframer: StreamDeframer
    let frameBuffer: UnsafeMutableRawBufferPointer
    var counters = PortCounters()
    var boundDescription = ""
    /// A connected datagram socket (a socketpair end handed to a VM manager): send, not sendto.
    var connectedDatagram = false
    /// vfkit framing: a 4-byte "VFKT" datagram announces the peer and is not a frame.
    var vfkitHandshake = false
    /// Told when a QEMU attaches (true) or goes away (false), with a few words on it (control-plane events).
    var stateObserver: ((Bool, String) -> Void)?
    /// Told when the stream connection goes away (after `stateObserver`): `vnet user` closes the guest's flows.
    var disconnectHandler: (() -> Void)?

    init(kind: Kind, epoll: Epoll, mtu: Int, logger: Logger) {
        self.kind = kind
        self.epoll = epoll
        self.mtu = mtu
        self.logger = logger
        deframer = StreamDeframer(mtu: mtu)
        frameBuffer = .allocate(byteCount: FrameLimits.qemuMaximumFrame + 1, alignment: 16)
        if case .datagram(let p) = kind { peer = p }
    }

    deinit { frameBuffer.deallocate() }

    var isConnected: Bool {
        if case .transport(let t) = kind { return t.isConnected }
        return fd >= 0 && !connecting
    }

    /// Timers: a connector's reconnect, a transport's own. Returns when the port next needs a turn.
    func tick(now: UInt64) -> UInt64? {
        switch kind {
        case .streamConnector:
            tryConnect(now: now)
            return fd < 0 ? reconnectAt : nil
        case .transport(let t):
            return t.tick(now: now)
        default:
            return nil
        }
    }

    // MARK: Stream listener

    /// Accepts QEMU's connection on the listener registered under `listenerTag` (a second one is refused).
    func accept(queue: FrameQueue, listenerTag: UInt64) {
        guard case .streamListener(let lfd) = kind else { return }
        while true {
            let c: Int32
            do throws(SyscallError) { c = try Sys.accept(lfd) } catch {
                epoll.pauseListenerIfShort(lfd, error: error.errno, tag: listenerTag)
                return
            }
            if fd >= 0 {
                counters.rejectedConnections &+= 1
                logger.warning("rejected a second connection: one QEMU is already attached")
                Sys.close(c)
                continue
            }
            fd = c
            counters.connections &+= 1
            deframer.reset()
            queue.removeAll()
            try? epoll.add(c, events: Epoll.readable | Epoll.hangup, tag: ioTag)
            logger.info("QEMU connected")
            stateObserver?(true, "accepted")
        }
    }

    func disconnect(queue: FrameQueue, reason: String, now: UInt64) {
        guard fd >= 0 else { return }
        epoll.remove(fd)
        Sys.close(fd)
        fd = -1
        connecting = false
        writeArmed = false
        deframer.reset()
        queue.removeAll()
        logger.info("QEMU disconnected: \(reason)")
        stateObserver?(false, reason)
        disconnectHandler?()
        if case .streamConnector = kind { reconnectAt = now + 1_000_000_000 }
    }

    // MARK: Stream connector

    func tryConnect(now: UInt64) {
        guard case .streamConnector(let address) = kind, fd < 0, now >= reconnectAt else { return }
        reconnectAt = now + 1_000_000_000
        let family = address.family
        guard let s = try? Sys.socket(family, Int32(SOCK_STREAM.rawValue), 0) else { return }
        do {
            let done = try Sys.connect(s, address)
            fd = s
            connecting = !done
            try epoll.add(s, events: done ? (Epoll.readable | Epoll.hangup) : Epoll.writable, tag: ioTag)
            if done { connected() }
        } catch {
            Sys.close(s)
            fd = -1
            logger.debug("connect to \(address) failed: \(error); retrying")
        }
    }

    func connected() {
        connecting = false
        counters.connections &+= 1
        deframer.reset()
        logger.info("connected to QEMU")
        stateObserver?(true, "connected")
    }

    // MARK: Input

    /// Reads what the transport holds and hands each frame to `deliver`. Returns false when the connection
    /// must be dropped (EOF, error, or lost framing sync).
    /// True for the stream kinds: a delivered frame stays in place until `readFrames` calls `beforeReuse`
    /// (before its next read) or returns, so the gateway may gather TCP data across frames.
    var holdsFramesUntilNextRead: Bool {
        switch kind {
        case .streamListener, .streamConnector: return true
        case .transport(let t): return t.holdsFrames
        default: return false
        }
    }

    func readFrames(now: UInt64, queue: FrameQueue, beforeReuse: () -> Void = {},
                    _ deliver: (UnsafeRawBufferPointer, VirtioNetHeader?) -> Void) {
        guard fd >= 0 else { return }
        if connecting {
            let e = Sys.socketError(fd)
            if e != 0 { return disconnect(queue: queue, reason: Sys.errnoString(e), now: now) }
            connected()
            try? epoll.modify(fd, events: Epoll.readable | Epoll.hangup, tag: ioTag)
            return
        }
        switch kind {
        case .streamListener, .streamConnector:
            for round in 0 ..< 16 {
                if round > 0 { beforeReuse() }  // readSpace may move a partial frame over delivered ones
                let space = deframer.readSpace
                switch Sys.read(fd, into: space) {
                case .done(let n):
                    deframer.didRead(n)
                    while true {
                        switch deframer.next() {
                        case .frame(let f):
                            counters.framesIn &+= 1
                            counters.bytesIn &+= UInt64(f.count)
                            deliver(f, nil)
                            continue
                        case .needMore:
                            break
                        case .desync:
                            counters.desyncResets &+= 1
                            syncCounters()
                            return disconnect(queue: queue, reason: "frame length beyond QEMU's limit (lost sync)", now: now)
                        }
                        break
                    }
                    syncCounters()
                    if n < space.count { return }
                case .wouldBlock:
                    return
                case .closed:
                    return disconnect(queue: queue, reason: "end of stream", now: now)
                case .failed(let e):
                    return disconnect(queue: queue, reason: Sys.errnoString(e), now: now)
                }
            }
        case .datagram:
            for _ in 0 ..< 64 {
                var from = SocketAddress()
                switch Sys.receiveFrom(fd, into: frameBuffer, from: &from) {
                case .done(let n):
                    if vfkitHandshake, VfkitFraming.isMagic(UnsafeRawBufferPointer(frameBuffer.slice(0 ..< min(n, 5)))) {
                        if from.length > 0 { peer = from }
                        logger.info("vfkit handshake from \(from)")
                        stateObserver?(true, "vfkit \(from)")
                        continue
                    }
                    if peer == nil, from.length > 0 {
                        peer = from
                        logger.info("learned QEMU's datagram address: \(from)")
                        stateObserver?(true, "learned \(from)")
                    }
                    deliverWhole(received: n, truncated: n > frameBuffer.count, deliver)
                case .failed(let e) where connectedDatagram && (e == ECONNRESET || e == ECONNREFUSED):
                    return disconnect(queue: queue, reason: "the peer closed its end", now: now)
                default:
                    return
                }
            }
        case .tap(let virtioHeader):
            for _ in 0 ..< 64 {
                switch Sys.read(fd, into: frameBuffer) {
                case .done(let n):
                    if virtioHeader {
                        deliverOffloaded(received: n, deliver)
                    } else {
                        deliverWhole(received: n, truncated: false, deliver)
                    }
                default:
                    return
                }
            }
        case .transport:
            return   // it reads its own fds (PortTransport.handle)
        }
    }

    /// One frame per read (datagram or TAP): checked against the length rules, then delivered or counted.
    @inline(__always)
    func deliverWhole(received n: Int, truncated: Bool, from buffer: UnsafeMutableRawBufferPointer? = nil,
                      _ deliver: (UnsafeRawBufferPointer, VirtioNetHeader?) -> Void) {
        switch DatagramFraming.check(received: n, truncated: truncated, mtu: mtu) {
        case .accept:
            counters.framesIn &+= 1
            counters.bytesIn &+= UInt64(n)
            deliver(UnsafeRawBufferPointer((buffer ?? frameBuffer).slice(0 ..< n)), nil)
        case .tooShort: counters.droppedShort &+= 1
        case .tooLong: counters.droppedOversize &+= 1
        }
    }

    /// A TAP read with a virtio-net header: the frame may be a TCP super-segment of up to 64 KiB (whatever the
    /// MTU) whose checksum the kernel left partial. Other segmentation types are never enabled, so they are
    /// dropped as oversize.
    func deliverOffloaded(received n: Int, _ deliver: (UnsafeRawBufferPointer, VirtioNetHeader?) -> Void) {
        let all = UnsafeRawBufferPointer(frameBuffer.slice(0 ..< n))
        guard let header = try? VirtioNetHeader.parse(all) else { counters.droppedShort &+= 1; return }
        let frameLength = n - VirtioNetHeader.length
        let limit: Int
        switch header.segmentation {
        case .unsegmented: limit = FrameLimits.maximumFrame(mtu: mtu)
        case .tcpv4, .tcpv6: limit = FrameLimits.maximumFrame(mtu: 65_535 + 40); counters.superSegmentsIn &+= 1
        default: counters.droppedOversize &+= 1; return
        }
        guard frameLength >= FrameLimits.minimumFrame else { counters.droppedShort &+= 1; return }
        guard frameLength <= limit else { counters.droppedOversize &+= 1; return }
        counters.framesIn &+= 1
        counters.bytesIn &+= UInt64(frameLength)
        deliver(all.slice(VirtioNetHeader.length ..< n), header)
    }

    /// The transport of a `.transport` port.
    var transport: PortTransport? { if case .transport(let t) = kind { t } else { nil } }

    /// The counters now (a transport keeps its own).
    var currentCounters: PortCounters {
        if case .transport(let t) = kind { return t.counters }
        return counters
    }

    func syncCounters() {
        if case .transport(let t) = kind { counters = t.counters; return }
        counters.droppedShort = deframer.droppedShort
        counters.droppedOversize = deframer.droppedOversize
    }

    // MARK: Output

    /// Sends queued frames. Without a connected guest, queued frames are discarded.
    func flush(queue: FrameQueue, now: UInt64) {
        if case .transport(let t) = kind {
            writeArmed = !queue.isEmpty && t.flush(now: now)
            return
        }
        guard !queue.isEmpty else { return disarmWrite() }
        guard isConnected else { queue.removeAll(); return }
        switch kind {
        case .streamListener, .streamConnector:
            while !queue.isEmpty {
                let pending = queue.pendingStreamBytes
                let before = queue.frameCount
                switch Sys.send(fd, pending) {
                case .done(let n):
                    queue.consumeStreamBytes(n)
                    let sent = UInt64(before - queue.frameCount)
                    counters.framesOut &+= sent
                    // Stream bytes less the 4-byte prefix of each frame sent (exact once no frame is half-sent).
                    counters.bytesOut = counters.bytesOut &+ UInt64(n) &- sent &* UInt64(FrameQueue.prefixLength)
                    if n < pending.count { return armWrite() }
                case .wouldBlock:
                    return armWrite()
                case .closed, .failed:
                    return disconnect(queue: queue, reason: "write failed", now: now)
                }
            }
        case .datagram:
            guard connectedDatagram || peer != nil else { queue.removeAll(); return }
            while let frame = queue.firstFrame {
                switch connectedDatagram ? Sys.send(fd, frame) : Sys.sendTo(fd, frame, peer!) {
                case .done: counters.framesOut &+= 1; counters.bytesOut &+= UInt64(frame.count); queue.removeFirstFrame()
                case .wouldBlock: return armWrite()
                case .failed(let e) where connectedDatagram && (e == ECONNREFUSED || e == ECONNRESET):
                    // A socket pair's other end closed: a datagram socket learns it only when it sends.
                    return disconnect(queue: queue, reason: "the peer closed its end", now: now)
                default: counters.sendErrors &+= 1; queue.removeFirstFrame()
                }
            }
        case .tap:
            // With a virtio-net header the queue keeps it before each frame: one write sends both.
            while let frame = queue.firstFrame {
                switch Sys.write(fd, frame) {
                case .done:
                    counters.framesOut &+= 1
                    counters.bytesOut &+= UInt64(frame.count - queue.frameHeaderLength)
                    queue.removeFirstFrame()
                case .wouldBlock: return armWrite()
                default: counters.sendErrors &+= 1; queue.removeFirstFrame()
                }
            }
        case .transport:
            break
        }
        disarmWrite()
    }

    /// The epoll tag of this port's fd: its kind and its link slot (a hub's peers share the hub's fd and tag).
    var ioTag = EventKind.port.tag()

    func armWrite() {
        guard !writeArmed, fd >= 0 else { return }
        writeArmed = true
        try? epoll.modify(fd, events: Epoll.readable | Epoll.writable | (isStream ? Epoll.hangup : 0), tag: ioTag)
    }

    func disarmWrite() {
        guard writeArmed, fd >= 0 else { return }
        writeArmed = false
        try? epoll.modify(fd, events: Epoll.readable | (isStream ? Epoll.hangup : 0), tag: ioTag)
    }

    var isStream: Bool {
        switch kind { case .streamListener, .streamConnector: true; default: false }
    }
}
