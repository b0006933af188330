// vhost-user: a QEMU's virtio-net rings served straight from the guest's shared memory (one port).
//
// Theory of Operation
// -------------------
// vnet is the vhost-user backend (QEMU's docs/interop/vhost-user.rst): it listens on a unix socket and one
// QEMU at a time connects (`-chardev socket,...,reconnect=1 -netdev vhost-user`); a second connection while
// one is attached is closed. Over that socket QEMU negotiates features, shares the guest's RAM (SET_MEM_TABLE:
// memfds, mapped here MAP_SHARED), places the two rings of queue pair 0 (0 receive, 1 transmit) and hands over
// a kick eventfd (the guest added buffers) and a call eventfd (tell the guest we used some) per ring. The
// messages are parsed by `VhostUserMessage` (VNetWire), the rings walked by `SplitVirtqueue`, the memory
// translated by `VhostUserMemoryTable`; this file owns the fds and the state machine:
//   - features offered: VERSION_1, MRG_RXBUF, EVENT_IDX, INDIRECT_DESC, the checksum and TSO offloads of both
//     directions, and PROTOCOL_FEATURES (protocol: REPLY_ACK only). Once PROTOCOL_FEATURES is negotiated a ring
//     starts disabled until SET_VRING_ENABLE; without it a ring is enabled as soon as it is started;
//   - a ring runs when it is started (SET_VRING_KICK), enabled, placed (SET_VRING_ADDR inside the memory) and
//     the memory is mapped. GET_VRING_BASE stops it and answers where it stopped. SET_MEM_TABLE may come again
//     while rings run: the new regions are mapped, the rings re-placed, then the old regions unmapped;
//   - NEED_REPLY (with REPLY_ACK) is answered with 0 on success and 1 on failure; a malformed message (wrong
//     size, wrong fd count, bad version) ends the connection, an unknown one is refused and counted;
//   - TX (guest -> vnet): on a kick each chain's readable buffers are copied out of guest memory (12-byte
//     virtio-net header first) into a preallocated arena, checked like a TAP read with IFF_VNET_HDR, and handed to
//     `context.deliver` with the header when it carries an offload; the frames stay in the arena until the batch
//     ends (`holdsFrames`), so the gateway gathers the TCP data of many guest segments into one host send; the
//     chain goes back used at once, and the guest is called if EVENT_IDX (or the NO_INTERRUPT flag) says so;
//   - RX (vnet -> guest): `flush` takes frames from `context.queue` (each behind a 10-byte virtio-net header: the
//     port `carriesOffloads`, so the gateway hands over 64 KiB super-segments and partial checksums) and writes
//     header + frame across as many guest buffers as it needs (MRG_RXBUF's num_buffers). What the guest did not
//     negotiate is finished here first: a super-segment for a guest without GUEST_TSO4/6 is cut by
//     `SoftwareOffload.segment`, a partial checksum for one without GUEST_CSUM completed. With no buffer left,
//     the port asks for a kick (avail_event) and leaves the rest queued; the kick brings the runtime back;
//   - lost kicks and interrupts: a guest under QEMU's TCG before 8.1 with one vCPU runs without memory barriers,
//     so the EVENT_IDX handshake can lose a kick (the guest added TX or RX buffers and did not kick) or an
//     interrupt (it asked for one after we looked) and the ring would wait for good (SplitVirtqueue.swift). So
//     `tick` looks at the rings again `recheckDelay` after any of them moved (used entries published, a new
//     kick requested), and again while they keep moving. TX buffers with their kick waiting are taken at once;
//     without one, a kick may be on its way (the guest stores avail.idx before it kicks): if the next look
//     finds them still there, no kick came and they are taken (`vhost_late_kicks`). Likewise an interrupt the
//     guest asks for that it did not get is sent when the next look finds the same request (`vhost_late_calls`;
//     a guest at work moves it on). The runtime's flush in the same turn takes new RX buffers. An idle ring
//     costs nothing;
//   - hostile rings: any ring error (a loop, a buffer outside memory, an avail jump) stops that ring, counted
//     and logged; QEMU's next SET_VRING_* restarts it. Nothing is read or written outside the mapped regions.
// QEMU going away (EOF) ends the session: fds closed, memory unmapped, `context.peerLeft` (its flows end).
// A QEMU started with reconnect=1 comes back by itself when vnet restarts, and replays the whole handshake with
// SET_VRING_BASE at the used index, so the guest goes on without a reboot. Nothing allocates per packet.

import Glibc
import Logging
import VNetBuffers
import VNetHost
import VNetTransport
import VNetWire

/// `--vhost-user PATH`: a vhost-user backend socket for one QEMU.
public struct VhostUserTransportFactory: PortTransportFactory {
    public let path: String
    public init(path: String) { self.path = path }
    public var description: String { "vhost-user unix:\(path)" }
    public var carriesOffloads: Bool { true }
    public func make(logger: Logger) throws -> PortTransport { try VhostUserPort(path: path, logger: logger) }

    /// The QEMU arguments that reach this socket (`memory` as -m says: 128M, 1G...), `vectors=0` when the QEMU in
    /// use needs it (VhostUserQEMU.needsNoMSIX).
    public static func qemuArguments(path: String, id: Int = 0, memory: String, noMSIX: Bool) -> [String] {
        ["-chardev", "socket,id=c\(id),path=\(path),reconnect=1",
         "-netdev", "vhost-user,id=n\(id),chardev=c\(id)",
         "-device", "virtio-net-pci,netdev=n\(id)" + (noMSIX ? ",vectors=0" : ""),
         "-object", "memory-backend-memfd,id=mem,size=\(memory),share=on",
         "-numa", "node,memdev=mem"]
    }
}

final class VhostUserPort: PortTransport {
    static let listenerToken = 0, connectionToken = 1, kickToken = 2   // kick of queue i: 2 + i

    static let offeredFeatures: UInt64 = VirtioFeature.version1 | VirtioFeature.netMergeableRxBuffers | VirtioFeature.ringEventIndex
        | VirtioFeature.ringIndirectDescriptors | VirtioFeature.vhostUserProtocolFeatures
        | VirtioFeature.netChecksum | VirtioFeature.netGuestChecksum
        | VirtioFeature.netHostTSO4 | VirtioFeature.netHostTSO6 | VirtioFeature.netGuestTSO4 | VirtioFeature.netGuestTSO6
    static let offeredProtocolFeatures: UInt64 = VirtioFeature.protocolReplyAck

    struct Ring {
        let queue = SplitVirtqueue()
        var size = 256
        var address: VhostUserVringAddress?
        var kickFD: Int32 = -1
        var callFD: Int32 = -1
        var started = false
        var enableFlag = false
        var broken = false
    }

    let path: String
    let logger: Logger
    var context: PortContext!
    var listenFD: Int32 = -1
    var connectionFD: Int32 = -1
    var rings = [Ring(), Ring()]
    var memory = VhostUserMemoryTable()
    var mappings: [(UnsafeMutableRawPointer, Int)] = []
    var features: UInt64 = 0
    var protocolFeatures: UInt64 = 0
    var counters = PortCounters()
    var protocolErrors: UInt64 = 0
    var ringErrors: UInt64 = 0
    var unsupportedRequests: UInt64 = 0
    var rxWaits: UInt64 = 0
    var rxDropped: UInt64 = 0
    var softwareSegmented: UInt64 = 0
    var calls: UInt64 = 0
    var lateKicks: UInt64 = 0
    var lateCalls: UInt64 = 0
    /// The rings' used indices and requested kicks when the last recheck was set (`tick`), and when it is due
    /// (0: none).
    var ringMark: UInt64 = 0
    var recheckAt: UInt64 = 0
    /// TX: the next avail entry when a look found buffers and no kick (-1: none). Per ring: the unanswered
    /// interrupt request a look found (-1: none).
    var kicklessAt = -1
    var unanswered = [-1, -1]
    /// How long after the rings moved `tick` looks again: far longer than a guest's store takes to show.
    static let recheckDelay: UInt64 = 1_000_000

    // Preallocated: the control message being read, the fds that came with it, a TX frame, RX scratch.
    let message = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostUserMessage.headerLength + VhostUserMessage.maximumPayload, alignment: 16)
    var messageLength = 0
    var receivedFDs: [Int32] = []
    let control = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 16)
    let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 16)
    static let frameCapacity = VirtioNetDeviceHeader.mergeableLength + 65_535 + 14 + 4
    /// TX frames are copied out of guest memory (the guest may rewrite its buffers at any time) into this arena, one
    /// after another, and stay there until the batch is handed on (`holdsFrames`: the gateway gathers TCP data
    /// across them, one host send for many guest segments); a full arena ends the batch first.
    static let arenaCapacity = 512 * 1024
    let txArena = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostUserPort.arenaCapacity, alignment: 16)
    var arenaUsed = 0
    let segmentScratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536 + 128, alignment: 16)
    let header = UnsafeMutableRawBufferPointer.allocate(byteCount: VirtioNetDeviceHeader.mergeableLength, alignment: 16)
    let segments = VirtqueueSegments(capacity: SplitVirtqueue.maximumIndirect + 1024)

    init(path: String, logger: Logger) throws {
        self.path = path
        self.logger = logger
        receivedFDs.reserveCapacity(16)
    }

    deinit {
        message.deallocate(); control.deallocate(); reply.deallocate(); txArena.deallocate()
        segmentScratch.deallocate(); header.deallocate()
    }

    var typeName: String { "vhost-user" }
    var isConnected: Bool { connectionFD >= 0 }
    var holdsFrames: Bool { true }
    var description: String { "vhost-user unix:\(path)" + (isConnected ? " (QEMU attached)" : " (waiting for QEMU)") }

    /// The QEMU arguments, for the qemu-system-x86_64 in PATH: `vectors=0` only when that QEMU (before 8.0) runs
    /// here without KVM.
    var startupLines: [String] {
        let kvm = VhostUserQEMU.kvmUsable
        let version = VhostUserQEMU.version(of: "qemu-system-x86_64")
        let noMSIX = VhostUserQEMU.needsNoMSIX(kvm: kvm, version: version)
        let args = VhostUserTransportFactory.qemuArguments(path: path, memory: "<same as -m>", noMSIX: noMSIX)
        var lines = ["vnet: start QEMU with: " + stride(from: 0, to: args.count, by: 2).map { "\(args[$0]) \(args[$0 + 1])" }.joined(separator: " ")]
        let found = version.map { "QEMU \($0.major).\($0.minor)" } ?? "no qemu-system-x86_64 in PATH"
        if noMSIX {
            lines.append("vnet: vectors=0 because \(found) without KVM crashes with vhost-user and MSI-X (fixed in QEMU 8.0)")
        } else if kvm && version.map({ $0.major < 8 }) ?? true {
            lines.append("vnet: without KVM (-accel tcg) add vectors=0 to that -device: QEMU before 8.0 crashes with vhost-user and MSI-X under TCG")
        }
        return lines
    }

    var extraCounters: [(String, UInt64)] {
        [("vhost_protocol_errors", protocolErrors), ("vhost_ring_errors", ringErrors), ("vhost_unsupported_requests", unsupportedRequests),
         ("vhost_rx_waits", rxWaits), ("vhost_rx_dropped", rxDropped), ("vhost_software_segmented", softwareSegmented),
         ("vhost_calls", calls), ("vhost_late_kicks", lateKicks), ("vhost_late_calls", lateCalls)].filter { $0.1 > 0 }
    }

    func start(_ context: PortContext) throws {
        self.context = context
        listenFD = try Sys.listenUnix(path: path)
        try context.register(listenFD, events: Epoll.readable, token: VhostUserPort.listenerToken)
    }

    func close() {
        disconnect(reason: "closing", notify: false)
        if listenFD >= 0 {
            context?.unregister(listenFD)
            Sys.close(listenFD)
            listenFD = -1
            unlink(path)
        }
    }

    func handle(token: Int, events: UInt32, now: UInt64) {
        switch token {
        case VhostUserPort.listenerToken: accept()
        case VhostUserPort.connectionToken: readMessages()
        case VhostUserPort.kickToken, VhostUserPort.kickToken + 1:
            let i = token - VhostUserPort.kickToken
            drainEventFD(rings[i].kickFD)
            if i == 1 { transmit() }
            // A receive kick: the guest added buffers; the runtime flushes its queue after this batch.
        default: break
        }
    }

    // MARK: Connection

    func accept() {
        while true {
            let c: Int32
            do throws(SyscallError) { c = try Sys.accept(listenFD) } catch {
                context.pauseListenerIfShort(listenFD, error: error.errno, token: VhostUserPort.listenerToken)
                return
            }
            if connectionFD >= 0 {
                counters.rejectedConnections &+= 1
                logger.warning("vhost-user: rejected a second connection: one QEMU is already attached")
                Sys.close(c)
                continue
            }
            connectionFD = c
            counters.connections &+= 1
            messageLength = 0
            do { try context.register(c, events: Epoll.readable | Epoll.hangup, token: VhostUserPort.connectionToken) } catch {
                Sys.close(c); connectionFD = -1; continue
            }
            logger.info("vhost-user: QEMU connected on \(path)")
            context.peerConnected("QEMU on \(path)")
        }
    }

    func disconnect(reason: String, notify: Bool = true) {
        guard connectionFD >= 0 else { return }
        context.unregister(connectionFD)
        Sys.close(connectionFD)
        connectionFD = -1
        for i in rings.indices { resetRing(i) }
        unmap(mappings)
        mappings = []
        memory = VhostUserMemoryTable()
        features = 0
        protocolFeatures = 0
        closeReceivedFDs()
        messageLength = 0
        context.queue.removeAll()
        logger.info("vhost-user: QEMU disconnected: \(reason)")
        if notify { context.peerLeft("QEMU on \(path)", reason: reason) }
    }

    func resetRing(_ i: Int) {
        if rings[i].kickFD >= 0 { context.unregister(rings[i].kickFD); Sys.close(rings[i].kickFD) }
        if rings[i].callFD >= 0 { Sys.close(rings[i].callFD) }
        rings[i].queue.detach()
        rings[i] = Ring()
    }

    func closeReceivedFDs() {
        for fd in receivedFDs { Sys.close(fd) }
        receivedFDs.removeAll(keepingCapacity: true)
    }

    // MARK: Control messages

    /// Reads whole messages (a header first, then exactly its payload, so fds stay with their message).
    func readMessages() {
        for _ in 0 ..< 64 {
            guard connectionFD >= 0 else { return }
            let want: Int
            if messageLength < VhostUserMessage.headerLength {
                want = VhostUserMessage.headerLength - messageLength
            } else {
                let size: Int
                do { size = try VhostUserMessage.parseHeader(UnsafeRawBufferPointer(message)).size } catch {
                    protocolErrors &+= 1
                    return disconnect(reason: "bad message header: \(error)")
                }
                want = VhostUserMessage.headerLength + size - messageLength
            }
            if want > 0 {
                switch receive(into: message.baseAddress! + messageLength, count: want) {
                case .done(let n): messageLength += n
                case .wouldBlock: return
                case .closed: return disconnect(reason: "end of stream")
                case .failed(let e): return disconnect(reason: Sys.errnoString(e))
                }
            }
            guard messageLength >= VhostUserMessage.headerLength else { continue }
            guard let size = try? VhostUserMessage.parseHeader(UnsafeRawBufferPointer(message)).size else {
                protocolErrors &+= 1
                return disconnect(reason: "bad message header")
            }
            guard messageLength == VhostUserMessage.headerLength + size else { continue }
            let bytes = UnsafeRawBufferPointer(message.slice(0 ..< messageLength))
            messageLength = 0
            do {
                let (m, flags) = try VhostUserMessage.parse(bytes, fdCount: receivedFDs.count)
                let request = bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
                let ok = perform(m, request: request)
                logger.debug("vhost-user: \(m)\(ok ? "" : " failed")")
                closeReceivedFDs()   // perform took the ones it keeps (and set them to -1)
                if flags & VhostUserMessage.needReplyFlag != 0, protocolFeatures & VirtioFeature.protocolReplyAck != 0, !m.hasOwnReply {
                    sendReply(VhostUserMessage.emitReply(request: request, u64: ok ? 0 : 1, into: reply))
                }
            } catch {
                closeReceivedFDs()
                protocolErrors &+= 1
                logger.warning("vhost-user: \(error): closing the connection")
                return disconnect(reason: "protocol error: \(error)")
            }
        }
    }

    /// recvmsg with room for SCM_RIGHTS fds; fds received are appended to `receivedFDs`.
    func receive(into p: UnsafeMutableRawPointer, count: Int) -> IOResult {
        var iov = iovec(iov_base: p, iov_len: count)
        var msg = msghdr()
        control.initializeMemory(as: UInt8.self, repeating: 0)
        let n = withUnsafeMutablePointer(to: &iov) { iovp -> Int in
            msg.msg_iov = iovp
            msg.msg_iovlen = 1
            msg.msg_control = control.baseAddress
            msg.msg_controllen = control.count
            while true {
                let r = recvmsg(connectionFD, &msg, Int32(MSG_CMSG_CLOEXEC))
                if r < 0 && errno == EINTR { continue }
                return r
            }
        }
        if n < 0 { return errno == EAGAIN || errno == EWOULDBLOCK ? .wouldBlock : .failed(errno) }
        // Walk the control messages: cmsghdr is { size_t len; int level; int type; } then data, 8-aligned.
        var offset = 0
        let end = min(Int(msg.msg_controllen), control.count)
        while offset + 16 <= end {
            let length = control.loadUnaligned(fromByteOffset: offset, as: Int.self)
            let level = control.loadUnaligned(fromByteOffset: offset + 8, as: Int32.self)
            let type = control.loadUnaligned(fromByteOffset: offset + 12, as: Int32.self)
            guard length >= 16, offset + length <= end else { break }
            if level == SOL_SOCKET && type == Int32(SCM_RIGHTS) {
                for k in 0 ..< (length - 16) / 4 {
                    receivedFDs.append(control.loadUnaligned(fromByteOffset: offset + 16 + 4 * k, as: Int32.self))
                }
            }
            offset += (length + 7) & ~7
        }
        if msg.msg_flags & Int32(MSG_CTRUNC) != 0 {
            // More fds than any message carries: the message will fail its fd count.
            receivedFDs.append(-1)
        }
        return n == 0 ? .closed : .done(n)
    }

    func sendReply(_ length: Int) {
        guard connectionFD >= 0 else { return }
        var n = -1
        repeat { n = Glibc.send(connectionFD, reply.baseAddress, length, Int32(MSG_NOSIGNAL)) } while n < 0 && errno == EINTR
        if n != length {
            protocolErrors &+= 1
            disconnect(reason: "reply not sent")
        }
    }

    /// Takes the next received fd (the message's fd count was checked), leaving -1 behind.
    func takeFD(_ k: Int = 0) -> Int32 {
        guard k < receivedFDs.count else { return -1 }
        let fd = receivedFDs[k]
        receivedFDs[k] = -1
        return fd
    }

    var protocolFeaturesNegotiated: Bool { features & VirtioFeature.vhostUserProtocolFeatures != 0 }

    /// Acts on one message; false means it failed (NEED_REPLY answers 1).
    func perform(_ m: VhostUserMessage, request: UInt32) -> Bool {
        switch m {
        case .getFeatures:
            sendReply(VhostUserMessage.emitReply(request: request, u64: VhostUserPort.offeredFeatures, into: reply))
        case .setFeatures(let f):
            guard f & ~VhostUserPort.offeredFeatures == 0 else {
                logger.warning("vhost-user: SET_FEATURES asks for features never offered (\(String(f & ~VhostUserPort.offeredFeatures, radix: 16)))")
                return false
            }
            features = f
            for r in rings {
                r.queue.eventIndex = f & VirtioFeature.ringEventIndex != 0
                r.queue.indirectAllowed = f & VirtioFeature.ringIndirectDescriptors != 0
            }
            logger.info("vhost-user: features \(String(f, radix: 16))")
        case .getProtocolFeatures:
            sendReply(VhostUserMessage.emitReply(request: request, u64: VhostUserPort.offeredProtocolFeatures, into: reply))
        case .setProtocolFeatures(let f):
            guard f & ~VhostUserPort.offeredProtocolFeatures == 0 else { return false }
            protocolFeatures = f
        case .getQueueNum:
            sendReply(VhostUserMessage.emitReply(request: request, u64: 1, into: reply))
        case .setOwner:
            break
        case .resetOwner:
            for i in rings.indices { resetRing(i) }
            features = 0
        case .setMemTable(let regions):
            return setMemoryTable(regions)
        case .setVringNum(let i, let num):
            let n = Int(num)
            guard n > 0, n <= SplitVirtqueue.maximumSize, n & (n - 1) == 0 else { return false }
            rings[Int(i)].size = n
        case .setVringAddr(let a):
            rings[Int(a.index)].address = a
            return place(Int(a.index))
        case .setVringBase(let i, let num):
            guard num <= 0xFFFF else { return false }
            rings[Int(i)].queue.reset(base: UInt16(num))
            rings[Int(i)].broken = false
        case .getVringBase(let i):
            let r = Int(i)
            rings[r].started = false
            if rings[r].kickFD >= 0 { context.unregister(rings[r].kickFD); Sys.close(rings[r].kickFD); rings[r].kickFD = -1 }
            sendReply(VhostUserMessage.emitReply(request: request, index: i, num: UInt32(rings[r].queue.lastAvailable), into: reply))
        case .setVringKick(let i, let hasFD):
            let r = Int(i)
            if rings[r].kickFD >= 0 { context.unregister(rings[r].kickFD); Sys.close(rings[r].kickFD); rings[r].kickFD = -1 }
            guard hasFD else {
                logger.warning("vhost-user: a ring without a kick fd (polling) is not supported")
                return false
            }
            let fd = takeFD()
            do { try context.register(fd, events: Epoll.readable, token: VhostUserPort.kickToken + r) } catch {
                Sys.close(fd); return false
            }
            rings[r].kickFD = fd
            rings[r].started = true
            rings[r].broken = false
            ringStateChanged(r)
        case .setVringCall(let i, let hasFD):
            let r = Int(i)
            if rings[r].callFD >= 0 { Sys.close(rings[r].callFD) }
            rings[r].callFD = hasFD ? takeFD() : -1
        case .setVringErr:
            break   // its fd (if any) is closed with the other received fds: vnet never signals errors that way
        case .setVringEnable(let i, let enable):
            // QEMU sends it before SET_FEATURES too: kept, and it counts once PROTOCOL_FEATURES is negotiated.
            rings[Int(i)].enableFlag = enable
            ringStateChanged(Int(i))
        case .unsupported(let request):
            unsupportedRequests &+= 1
            logger.warning("vhost-user: request \(request) is not supported")
            return false
        }
        return true
    }

    func running(_ i: Int) -> Bool {
        let r = rings[i]
        return r.started && (r.enableFlag || !protocolFeaturesNegotiated) && !r.broken && r.queue.isReady && connectionFD >= 0
    }

    func ringStateChanged(_ i: Int) {
        guard running(i) else { return }
        // Buffers the guest added before the ring ran: take them now (TX) or on the next flush (RX).
        if i == 1 { transmit() } else { rings[0].queue.requestKicks() }
    }

    /// Places ring `i` in the memory (after SET_VRING_ADDR, or a new memory table).
    func place(_ i: Int) -> Bool {
        guard let a = rings[i].address, !memory.isEmpty else { return true }   // placed once memory arrives
        do {
            try rings[i].queue.configure(size: rings[i].size, descriptorTable: a.descriptorTable,
                                         availableRing: a.availableRing, usedRing: a.usedRing, memory: memory)
        } catch {
            ringErrors &+= 1
            logger.warning("vhost-user: ring \(i) is not inside the guest's memory")
            return false
        }
        ringStateChanged(i)
        return true
    }

    func setMemoryTable(_ regions: [VhostUserRegionDescriptor]) -> Bool {
        var mapped: [VhostUserMemoryTable.Region] = []
        var newMappings: [(UnsafeMutableRawPointer, Int)] = []
        for (k, r) in regions.enumerated() {
            let fd = takeFD(k)
            defer { if fd >= 0 { Sys.close(fd) } }
            let (total, overflow) = r.mmapOffset.addingReportingOverflow(r.size)
            guard !overflow, total <= UInt64(Int.max), fd >= 0 else { unmap(newMappings); return false }
            // Pages past the end of the file would fault (SIGBUS) when touched: the region must lie inside it.
            var st = stat()
            guard fstat(fd, &st) == 0, st.st_size >= 0, UInt64(st.st_size) >= total else {
                logger.warning("vhost-user: region \(k) (\(total) bytes with its offset) is larger than its file")
                unmap(newMappings)
                return false
            }
            guard let p = mmap(nil, Int(total), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
                logger.warning("vhost-user: mapping region \(k) (\(total) bytes): \(Sys.errnoString(errno))")
                unmap(newMappings)
                return false
            }
            newMappings.append((p, Int(total)))
            mapped.append(.init(descriptor: r, base: p + Int(r.mmapOffset)))
        }
        guard let table = try? VhostUserMemoryTable(regions: mapped) else { unmap(newMappings); return false }
        let old = mappings
        memory = table
        mappings = newMappings
        logger.info("vhost-user: guest memory: \(regions.count) regions, \(regions.reduce(0) { $0 + $1.size } >> 20) MiB")
        var ok = true
        for i in rings.indices where rings[i].address != nil { ok = place(i) && ok }
        unmap(old)
        return ok
    }

    func unmap(_ list: [(UnsafeMutableRawPointer, Int)]) {
        for (p, n) in list { munmap(p, n) }
    }

    /// Reads an eventfd's counter; true when it was not zero (a kick was waiting).
    @discardableResult
    func drainEventFD(_ fd: Int32) -> Bool {
        guard fd >= 0 else { return false }
        var v: UInt64 = 0
        return Glibc.read(fd, &v, 8) == 8 && v > 0
    }

    func call(_ i: Int) {
        guard rings[i].queue.needsNotification() else { return }
        signal(i)
    }

    func signal(_ i: Int) {
        guard rings[i].callFD >= 0 else { return }
        var one: UInt64 = 1
        _ = Glibc.write(rings[i].callFD, &one, 8)
        calls &+= 1
    }

    // MARK: Lost kicks and interrupts

    func tick(now: UInt64) -> UInt64? {
        guard connectionFD >= 0 else { recheckAt = 0; kicklessAt = -1; return nil }
        var again = false
        if recheckAt != 0 && now >= recheckAt {
            recheckAt = 0
            again = recheckRings()
        }
        let mark = currentRingMark
        if recheckAt == 0 && (mark != ringMark || again) {
            ringMark = mark
            recheckAt = now + VhostUserPort.recheckDelay
        }
        return recheckAt == 0 ? nil : recheckAt
    }

    /// Changes whenever a ring publishes used entries or asks for a kick at a new place.
    var currentRingMark: UInt64 {
        let rx = rings[0].queue, tx = rings[1].queue
        return UInt64(rx.usedIndex) | UInt64(rx.requestedKick) << 16 | UInt64(tx.usedIndex) << 32 | UInt64(tx.requestedKick) << 48
    }

    /// TX buffers the guest added without a kick are taken; an interrupt it asks for and did not get is sent,
    /// each once a second look finds it unchanged. Returns true when that second look is needed.
    func recheckRings() -> Bool {
        var again = false
        if running(1), let n = try? rings[1].queue.pending(), n > 0 {
            let at = Int(rings[1].queue.lastAvailable)
            if drainEventFD(rings[1].kickFD) {
                kicklessAt = -1   // their kick (or transmit's own after a long turn) is here
                transmit()
            } else if kicklessAt == at {
                kicklessAt = -1
                lateKicks &+= 1
                transmit()
            } else {
                kicklessAt = at
                again = true
            }
        } else {
            kicklessAt = -1
        }
        for i in rings.indices {
            guard running(i), let request = rings[i].queue.unansweredRequest() else { unanswered[i] = -1; continue }
            if unanswered[i] == Int(request) {
                unanswered[i] = -1
                rings[i].queue.markNotified()
                lateCalls &+= 1
                signal(i)
            } else {
                unanswered[i] = Int(request)
                again = true
            }
        }
        return again
    }

    func ringFailed(_ i: Int, _ error: VirtqueueError) {
        ringErrors &+= 1
        rings[i].broken = true
        logger.warning("vhost-user: ring \(i) stopped: \(error) (the guest's ring is not valid)")
    }

    var headerLength: Int { VirtioNetDeviceHeader.length(features: features) }

    // MARK: TX (guest -> vnet)

    func transmit() {
        guard running(1) else { return }
        let q = rings[1].queue
        let hl = headerLength
        var delivered = 0
        var rounds = 0
        while running(1) {
            let n: Int
            do { n = try q.pending() } catch { ringFailed(1, error); break }
            if n == 0 {
                q.requestKicks()
                if (try? q.pending()) ?? 0 == 0 { break }
                continue
            }
            rounds += n
            for _ in 0 ..< n {
                let head: UInt16
                do { head = try q.nextChain(memory: memory, into: segments) } catch { ringFailed(1, error); break }
                let need = segments.readableBytes
                if need > VhostUserPort.frameCapacity {
                    counters.droppedOversize &+= 1
                } else {
                    if arenaUsed + need > txArena.count {
                        context.deliveredBatch()   // the gateway sends what it gathered from the arena before it is reused
                        arenaUsed = 0
                    }
                    let slot = UnsafeMutableRawBufferPointer(rebasing: txArena[arenaUsed ..< arenaUsed + need])
                    let length = segments.gatherReadable(into: slot)
                    deliverFrame(UnsafeRawBufferPointer(slot.slice(0 ..< length)), headerLength: hl)
                    arenaUsed += (length + 15) & ~15
                }
                q.writeUsed(id: head, length: 0)
                q.advanceUsed()
                delivered += 1
            }
            q.publishUsed()
            call(1)
            if rounds >= 4 * rings[1].size {
                // Enough for one turn: come back through the loop (a kick to ourselves) so others get a turn.
                var one: UInt64 = 1
                _ = Glibc.write(rings[1].kickFD, &one, 8)
                break
            }
        }
        if delivered > 0 { context.deliveredBatch() }
        arenaUsed = 0
    }

    func deliverFrame(_ all: UnsafeRawBufferPointer, headerLength hl: Int) {
        let n = all.count
        guard n >= hl + FrameLimits.minimumFrame else { counters.droppedShort &+= 1; return }
        guard let h = try? VirtioNetHeader.parse(all) else { counters.droppedShort &+= 1; return }
        let frameLength = n - hl
        let limit: Int
        switch h.segmentation {
        case .unsegmented: limit = FrameLimits.maximumFrame(mtu: context.mtu)
        case .tcpv4, .tcpv6: limit = FrameLimits.maximumFrame(mtu: 65_535 + 40); counters.superSegmentsIn &+= 1
        default: counters.droppedOversize &+= 1; return
        }
        guard frameLength <= limit else { counters.droppedOversize &+= 1; return }
        counters.framesIn &+= 1
        counters.bytesIn &+= UInt64(frameLength)
        context.deliver(all.slice(hl ..< n), offload: h.isPlain ? nil : h)
    }

    // MARK: RX (vnet -> guest)

    enum Written { case done, noBuffers, failed }

    func flush(now: UInt64) -> Bool {
        let queue = context.queue
        guard connectionFD >= 0 else { queue.removeAll(); return false }
        guard running(0) else {
            // Not yet (handshake) or stopped: frames wait, bounded by the queue; a broken ring drops them.
            if rings[0].broken { rxDropped &+= UInt64(queue.frameCount); queue.removeAll() }
            return !queue.isEmpty
        }
        let q = rings[0].queue
        var waiting = false
        while let entry = queue.firstFrame {
            let result = receiveFrame(entry)
            if result == .noBuffers {
                let had = (try? q.pending()) ?? 0
                q.requestKicks(ahead: had)
                if (try? q.pending()) ?? 0 > had { continue }   // the guest added buffers meanwhile
                rxWaits &+= 1
                waiting = true
                break
            }
            queue.removeFirstFrame()
            if !running(0) { break }
        }
        q.publishUsed()
        call(0)
        return waiting && !queue.isEmpty
    }

    /// One queued entry (10-byte header + frame) into the guest, finished in software where the guest lacks
    /// the offload.
    func receiveFrame(_ entry: UnsafeRawBufferPointer) -> Written {
        guard entry.count > VirtioNetHeader.length, let h = try? VirtioNetHeader.parse(entry) else { return .done }
        let frame = UnsafeMutableRawBufferPointer(mutating: entry.slice(VirtioNetHeader.length ..< entry.count))
        let wantsTSO: Bool
        switch h.segmentation {
        case .tcpv4: wantsTSO = features & VirtioFeature.netGuestTSO4 == 0
        case .tcpv6: wantsTSO = features & VirtioFeature.netGuestTSO6 == 0
        default: wantsTSO = false
        }
        if wantsTSO {
            // Enough buffers for every segment first: a frame is never half written.
            let count = max(1, (frame.count + Int(h.segmentSize) - 1) / max(Int(h.segmentSize), 1))
            guard let free = try? rings[0].queue.pending(), free >= count else { return .noBuffers }
            var result = Written.done
            let plain = VirtioNetHeader()
            let cut = SoftwareOffload.segment(UnsafeRawBufferPointer(frame), segmentSize: Int(h.segmentSize), scratch: segmentScratch) { segment in
                guard result == .done else { return }
                result = write(header: plain, frame: segment)
                if result == .noBuffers { rxDropped &+= 1; result = .failed }
            }
            if cut == nil { rxDropped &+= 1 } else { softwareSegmented &+= 1 }
            return .done   // a segment that found no buffer is counted; the frame is not retried
        }
        var out = h
        if h.flags.contains(.needsChecksum) && features & VirtioFeature.netGuestChecksum == 0 {
            _ = SoftwareOffload.completeChecksum(frame, header: h)
            out = VirtioNetHeader()
        }
        return write(header: out, frame: UnsafeRawBufferPointer(frame))
    }

    /// header + frame across the guest's receive buffers (several with MRG_RXBUF). Nothing is published here.
    func write(header h: VirtioNetHeader, frame: UnsafeRawBufferPointer) -> Written {
        let q = rings[0].queue
        let hl = headerLength
        header.initializeMemory(as: UInt8.self, repeating: 0)
        h.emit(into: header)
        let headerBytes = UnsafeRawBufferPointer(header.slice(0 ..< hl))
        let total = hl + frame.count
        let mergeable = features & VirtioFeature.netMergeableRxBuffers != 0
        var written = 0
        var chains = 0
        var firstBuffer: UnsafeMutableRawBufferPointer?
        while written < total {
            if chains > 0 && !mergeable { break }
            let free: Int
            do { free = try q.pending() } catch { ringFailed(0, error); return .failed }
            guard free > 0 else { q.unget(chains); return .noBuffers }
            let head: UInt16
            do { head = try q.nextChain(memory: memory, into: segments) } catch { ringFailed(0, error); return .failed }
            if chains == 0 {
                guard segments.count > 0, segments[0].writable, segments[0].buffer.count >= hl else {
                    ringFailed(0, .outsideMemory); return .failed
                }
                firstBuffer = segments[0].buffer
            }
            var n = 0
            if written < hl { n = segments.scatterWritable(UnsafeRawBufferPointer(rebasing: headerBytes[written...])) }
            let fromFrame = max(0, written + n - hl)
            n += segments.scatterWritable(UnsafeRawBufferPointer(rebasing: frame[fromFrame...]), skip: n)
            guard n > 0 else { ringFailed(0, .outsideMemory); return .failed }
            q.writeUsed(id: head, length: n, offset: chains)
            chains += 1
            written += n
        }
        q.advanceUsed(chains)
        if written < total {
            rxDropped &+= 1   // one buffer too small without MRG_RXBUF: the guest sees a cut frame and drops it
            return .done
        }
        if hl == VirtioNetDeviceHeader.mergeableLength, let first = firstBuffer {
            VirtioNetDeviceHeader.setBufferCount(UInt16(truncatingIfNeeded: chains), in: first)
        }
        counters.framesOut &+= 1
        counters.bytesOut &+= UInt64(frame.count)
        return .done
    }
}

extension VhostUserMessage {
    /// Requests whose answer is their own reply (REPLY_ACK adds none).
    var hasOwnReply: Bool {
        switch self {
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .getVringBase: true
        default: false
        }
    }
}

/// What the QEMU in use needs for vhost-user.
public enum VhostUserQEMU {
    /// Whether virtio-net-pci needs `vectors=0` (INTx instead of MSI-X) with vhost-user. QEMU before 8.0 without
    /// KVM (TCG) crashes in vhost_net_start -> msix_set_vector_notifiers once the guest driver starts the device:
    /// with no irqfd, virtio_pci_set_guest_notifiers still installs the MSI-X vector notifiers (vhost-user turns
    /// the guest notifier mask off), and the unmask path reads the irqfd table, which was never allocated. QEMU
    /// 8.0.0 guards that call (only with irqfd, or with the notifier mask in use), in Cindy Lu's "virtio-pci: add
    /// support for configure interrupt"; no 7.2.x stable release has it (Debian 12's 7.2.22 does not). With KVM
    /// the table exists and MSI-X works. An unknown version counts as old.
    public static func needsNoMSIX(kvm: Bool, version: (major: Int, minor: Int)?) -> Bool {
        guard !kvm else { return false }
        guard let version else { return true }
        return version.major < 8
    }

    /// The version in `qemu-system-* --version`'s first line ("QEMU emulator version 7.2.22 (Debian …)").
    public static func parseVersion(_ line: String) -> (major: Int, minor: Int)? {
        guard let range = line.firstRange(of: "version ") else { return nil }
        let numbers = line[range.upperBound...].prefix { $0.isNumber || $0 == "." }.split(separator: ".")
        guard numbers.count >= 2, let major = Int(numbers[0]), let minor = Int(numbers[1]) else { return nil }
        return (major, minor)
    }

    /// The version of the QEMU binary `binary` (a name looked up in PATH, or a path); nil when it cannot be run.
    public static func version(of binary: String) -> (major: Int, minor: Int)? {
        Sys.firstOutputLine(of: [binary, "--version"]).flatMap(parseVersion)
    }

    /// Whether this host can run KVM guests (/dev/kvm readable and writable): the printed arguments assume the
    /// guest uses it when it can.
    public static var kvmUsable: Bool { access("/dev/kvm", R_OK | W_OK) == 0 }
}
