// A HostIO whose TCP sockets behave like kernel sockets, closely enough for the passt-style TCP NAT:
// - a receive queue (bytes the remote server sent) with a peek offset, like SO_PEEK_OFF: `tcpPeek` copies
//   the bytes after the offset and advances it; `tcpDiscard` drops bytes from the head and moves the offset
//   back (saturating at 0); `.endOfStream` only once the remote closed and the offset is at the end;
// - a send buffer of a settable capacity: `tcpSend` takes what fits, `.wouldBlock` when full; the test
//   "drains" it to play the remote reading;
// - every shutdown/abort/close/interest call recorded, and any use of a handle after close/abort reported.
// UDP and ICMP sockets are refused (only TCP is under test with this host). Plus `TCPHarness`, the TCP
// counterpart of GatewayHarness, and the guest-side helpers the TCP tests share.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

final class FakeTCPHost: HostIO {
    final class Socket {
        let handle: Int32
        var tag: FlowTag
        /// Where openTCP aimed it (nil for adopted and command sockets).
        var destination: IPv4Address?
        var destination6: IPv6Address?
        var port: UInt16?
        var command: String?
        var adopted = false
        /// What `tcpConnectError` answers (0: connected).
        var connectError: Int32 = 0

        /// Bytes from the remote not yet discarded; the head is the first unacknowledged byte.
        var receiveQueue: [UInt8] = []
        var peekOffset = 0
        var remoteClosed = false
        /// The next peek answers `.reset` (the remote sent RST).
        var resetOnPeek = false
        /// What tcpSend answers instead of writing, when set.
        var sendOverride: TCPIOResult?

        var sendCapacity: Int
        /// Accepted bytes the remote has not read yet.
        var sendBuffered = 0
        /// Every byte ever accepted by tcpSend, in order (what the remote receives).
        var written: [UInt8] = []

        var shutdownWrite = false
        var aborted = false
        var closed = false
        var interest: (readable: Bool, writable: Bool)?

        init(handle: Int32, tag: FlowTag, sendCapacity: Int) {
            self.handle = handle
            self.tag = tag
            self.sendCapacity = sendCapacity
        }

        var sendSpace: Int { max(0, sendCapacity - sendBuffered) }
        var isOpen: Bool { !closed && !aborted }
    }

    /// Every call, in order (for checks like "shutdown after the write").
    enum Call: Equatable {
        /// gather(handle, parts, bytes taken)
        case gather(Int32, Int, Int)
        case open(Int32), adopt(Int32), send(Int32, Int), peek(Int32, Int), discard(Int32, Int), setPeekOffset(Int32, Int)
        case shutdownWrite(Int32), abort(Int32), close(Int32), interest(Int32, readable: Bool, writable: Bool)
    }

    private(set) var sockets: [Int32: Socket] = [:]
    /// Handles in the order they were opened or adopted.
    private(set) var order: [Int32] = []
    private(set) var calls: [Call] = []
    var failOpen = false
    var failAdopt = false
    /// Send capacity of sockets created from now on.
    var defaultSendCapacity = 256 * 1024
    private var nextHandle: Int32 = 100

    /// The socket for `handle` (fails the test when there is none).
    func socket(_ handle: Int32, sourceLocation: SourceLocation = #_sourceLocation) throws -> Socket {
        try #require(sockets[handle], "no socket \(handle)", sourceLocation: sourceLocation)
    }

    var lastSocket: Socket? { order.last.flatMap { sockets[$0] } }
    var openSockets: [Socket] { order.compactMap { sockets[$0] }.filter(\.isOpen) }

    func calls(_ handle: Int32) -> [Call] {
        calls.filter {
            switch $0 {
            case .gather(let h, _, _), .open(let h), .adopt(let h), .send(let h, _), .peek(let h, _), .discard(let h, _), .setPeekOffset(let h, _),
                 .shutdownWrite(let h), .abort(let h), .close(let h), .interest(let h, _, _): h == handle
            }
        }
    }

    func discards(_ handle: Int32) -> [Int] { calls(handle).compactMap { if case .discard(_, let n) = $0 { n } else { nil } } }
    func peeks(_ handle: Int32) -> Int { calls(handle).filter { if case .peek = $0 { true } else { false } }.count }

    // MARK: Playing the remote end

    /// The remote sends `bytes` (they land in the receive queue).
    func remoteSends(_ handle: Int32, _ bytes: [UInt8]) { sockets[handle]?.receiveQueue += bytes }
    /// The remote closes its side (FIN) after what it sent.
    func remoteCloses(_ handle: Int32) { sockets[handle]?.remoteClosed = true }
    /// The remote reads `n` bytes of what we sent, freeing send space.
    func remoteReads(_ handle: Int32, _ n: Int) {
        guard let s = sockets[handle] else { return }
        s.sendBuffered = max(0, s.sendBuffered - n)
    }

    private func live(_ handle: Int32, _ what: String) -> Socket? {
        guard let s = sockets[handle] else {
            Issue.record("\(what) on unknown handle \(handle)")
            return nil
        }
        if !s.isOpen { Issue.record("\(what) on handle \(handle) after \(s.aborted ? "abort" : "close")") }
        return s
    }

    private func newSocket(_ handle: Int32, tag: FlowTag) -> Socket {
        let s = Socket(handle: handle, tag: tag, sendCapacity: defaultSendCapacity)
        sockets[handle] = s
        order.append(handle)
        return s
    }

    // MARK: HostTCP

    /// New sockets take the lowest closed handle, as the kernel reuses the lowest free fd.
    var reuseClosedHandles = false

    func openTCP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? {
        guard !failOpen else { return nil }
        var handle = nextHandle + 1
        if reuseClosedHandles, let h = sockets.values.filter({ !$0.isOpen }).map(\.handle).min() {
            handle = h
        } else {
            nextHandle += 1
        }
        let s = newSocket(handle, tag: tag)
        s.destination = destination
        s.port = port
        calls.append(.open(handle))
        return handle
    }

    func openTCP(to destination: IPAddress, port: UInt16, tag: FlowTag) -> Int32? {
        if let v4 = destination.v4 { return openTCP(destination: v4, port: port, tag: tag) }
        guard !failOpen else { return nil }
        nextHandle += 1
        let s = newSocket(nextHandle, tag: tag)
        s.destination6 = destination.v6
        s.port = port
        calls.append(.open(nextHandle))
        return nextHandle
    }

    func openCommand(_ command: String, tag: FlowTag) -> Int32? {
        guard !failOpen else { return nil }
        nextHandle += 1
        newSocket(nextHandle, tag: tag).command = command
        calls.append(.open(nextHandle))
        return nextHandle
    }

    func adoptTCP(_ handle: Int32, tag: FlowTag) -> Bool {
        guard !failAdopt else { return false }
        if sockets[handle] != nil { Issue.record("adopting handle \(handle) twice") }
        newSocket(handle, tag: tag).adopted = true
        calls.append(.adopt(handle))
        return true
    }

    func tcpConnectError(_ handle: Int32) -> Int32 { live(handle, "tcpConnectError")?.connectError ?? 111 }

    func tcpSend(_ handle: Int32, _ bytes: UnsafeRawBufferPointer) -> TCPIOResult {
        guard let s = live(handle, "tcpSend") else { return .failed }
        if s.shutdownWrite { Issue.record("tcpSend on handle \(handle) after shutdown(SHUT_WR)") }
        if bytes.isEmpty { Issue.record("empty tcpSend on handle \(handle)") }
        if let r = s.sendOverride { return r }
        let n = min(bytes.count, s.sendSpace)
        guard n > 0 else { return .wouldBlock }
        s.written += bytes.prefix(n)
        s.sendBuffered += n
        calls.append(.send(handle, n))
        return .done(n)
    }

    /// Like sendmsg: takes the parts in order while there is space, as one call.
    func tcpSendGather(_ handle: Int32, _ parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> TCPIOResult {
        guard let s = live(handle, "tcpSendGather") else { return .failed }
        if s.shutdownWrite { Issue.record("tcpSendGather on handle \(handle) after shutdown(SHUT_WR)") }
        if parts.isEmpty || parts.contains(where: \.isEmpty) { Issue.record("empty part in tcpSendGather on handle \(handle)") }
        if let r = s.sendOverride { return r }
        var taken = 0
        for part in parts {
            let n = min(part.count, s.sendSpace)
            s.written += part.prefix(n)
            s.sendBuffered += n
            taken += n
            if n < part.count { break }
        }
        guard taken > 0 else { return .wouldBlock }
        calls.append(.gather(handle, parts.count, taken))
        return .done(taken)
    }

    func gathers(_ handle: Int32) -> [(parts: Int, bytes: Int)] {
        calls(handle).compactMap { if case .gather(_, let p, let n) = $0 { (p, n) } else { nil } }
    }

    func tcpPeek(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> TCPIOResult {
        guard let s = live(handle, "tcpPeek") else { return .failed }
        // A zero-length recv answers 0, which reads as end of stream: the gateway must never ask for nothing.
        if buffer.isEmpty { Issue.record("zero-length peek on handle \(handle)") }
        calls.append(.peek(handle, buffer.count))
        if s.resetOnPeek { return .reset }
        let available = s.receiveQueue.count - s.peekOffset
        // Peek-and-skip (not final) only sees the FIN once every byte before it is discarded.
        guard available > 0, !buffer.isEmpty else {
            let finVisible = s.remoteClosed && available <= 0 && (tcpDrainedPeekIsFinal || s.receiveQueue.isEmpty)
            return finVisible ? .endOfStream : .wouldBlock
        }
        let n = min(available, buffer.count)
        s.receiveQueue.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[s.peekOffset ..< s.peekOffset + n])) }
        s.peekOffset += n
        return .done(n)
    }

    /// SO_PEEK_OFF semantics by default; false models the peek-and-skip fallback.
    var tcpDrainedPeekIsFinal = true

    func tcpDiscard(_ handle: Int32, count: Int) {
        guard let s = live(handle, "tcpDiscard") else { return }
        calls.append(.discard(handle, count))
        if count <= 0 { Issue.record("tcpDiscard of \(count) bytes on handle \(handle)") }
        if count > s.receiveQueue.count { Issue.record("tcpDiscard of \(count) bytes with \(s.receiveQueue.count) queued") }
        let n = max(0, min(count, s.receiveQueue.count))
        s.receiveQueue.removeFirst(n)
        s.peekOffset = max(0, s.peekOffset - n)
    }

    func tcpSetPeekOffset(_ handle: Int32, offset: Int) {
        guard let s = live(handle, "tcpSetPeekOffset") else { return }
        if offset < 0 { Issue.record("negative peek offset \(offset)") }
        calls.append(.setPeekOffset(handle, offset))
        s.peekOffset = offset
    }

    /// How often the gateway asked for a socket's send space (a syscall pair on a real host).
    private(set) var sendSpaceQueries = 0
    func tcpSendSpace(_ handle: Int32) -> Int {
        sendSpaceQueries += 1
        return live(handle, "tcpSendSpace")?.sendSpace ?? 0
    }

    func tcpShutdownWrite(_ handle: Int32) {
        guard let s = live(handle, "tcpShutdownWrite") else { return }
        calls.append(.shutdownWrite(handle))
        s.shutdownWrite = true
    }

    func tcpAbort(_ handle: Int32) {
        guard let s = live(handle, "tcpAbort") else { return }
        calls.append(.abort(handle))
        s.aborted = true
    }

    func tcpSetInterest(_ handle: Int32, tag: FlowTag, readable: Bool, writable: Bool) {
        guard let s = live(handle, "tcpSetInterest") else { return }
        if tag != s.tag { Issue.record("interest for handle \(handle) under tag \(tag), opened under \(s.tag)") }
        calls.append(.interest(handle, readable: readable, writable: writable))
        s.interest = (readable, writable)
    }

    func close(_ handle: Int32) {
        guard let s = live(handle, "close") else { return }
        calls.append(.close(handle))
        s.closed = true
    }

    // MARK: UDP and ICMP: refused

    func openUDP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? { nil }
    func openICMPEcho(destination: IPv4Address, tag: FlowTag) -> Int32? { nil }
    func setTTL(_ handle: Int32, ttl: UInt8) {}
    func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer) -> Bool { false }
    func sendICMPEcho(_ handle: Int32, identifier: UInt16, sequence: UInt16, payload: UnsafeRawBufferPointer) -> Bool { false }
    func receiveUDP(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive { .failed }
    func receiveICMPEcho(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive { .failed }
}

// MARK: - Guest segments

extension FrameBuilder {
    /// A TCP segment (header with options, payload, correct checksum).
    static func tcpSegment(src: IPv4Address, dst: IPv4Address, srcPort: UInt16, dstPort: UInt16, seq: UInt32, ack: UInt32,
                           flags: TCPFlags, window: UInt16, mss: UInt16? = nil, wscale: UInt8? = nil,
                           _ payload: [UInt8] = []) -> [UInt8] {
        let header = TCPHeader(sourcePort: srcPort, destinationPort: dstPort, sequence: seq, acknowledgment: ack,
                               flags: flags, window: window, maxSegmentSize: mss, windowScale: wscale)
        let hl = header.emittedLength
        var s = [UInt8](repeating: 0, count: hl) + payload
        s.withUnsafeMutableBytes { _ = header.emit(into: $0, segmentLength: hl + payload.count, source: src, destination: dst) }
        return s
    }

    static func tcpSegmentFrame(src: IPv4Address = guestIP, dst: IPv4Address, srcPort: UInt16, dstPort: UInt16, seq: UInt32,
                                ack: UInt32, flags: TCPFlags, window: UInt16, mss: UInt16? = nil, wscale: UInt8? = nil,
                                mac: MACAddress = guestMAC, _ payload: [UInt8] = []) -> [UInt8] {
        ethernet(from: mac, type: .ipv4, ipv4(src: src, dst: dst, proto: .tcp,
                                              tcpSegment(src: src, dst: dst, srcPort: srcPort, dstPort: dstPort, seq: seq, ack: ack,
                                                         flags: flags, window: window, mss: mss, wscale: wscale, payload)))
    }
}

/// One TCP segment the gateway sent to the guest.
struct Segment {
    var source: IPv4Address
    var destination: IPv4Address
    var tcp: TCPHeader
    var payload: [UInt8]

    var seq: UInt32 { tcp.sequence }
    var ack: UInt32 { tcp.acknowledgment }
    var flags: TCPFlags { tcp.flags }
    /// Sequence space taken (payload, SYN and FIN).
    var length: UInt32 { UInt32(payload.count) + (flags.contains(.syn) ? 1 : 0) + (flags.contains(.fin) ? 1 : 0) }
    var isPureAck: Bool { flags == .ack && payload.isEmpty }
}

/// Checks a frame to the guest carrying TCP (valid IPv4 and TCP checksums) and returns the segment.
func expectSegment(_ f: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws -> Segment {
    let p = try expectIPv4(f, dst: guestIP, proto: .tcp, sourceLocation: sourceLocation)
    let tcp = try #require(parsed(p.payload) { try TCPHeader.parse($0) }, sourceLocation: sourceLocation)
    let sum = p.payload.withUnsafeBytes {
        InternetChecksum.add($0, to: InternetChecksum.pseudoHeader(source: p.header.source, destination: p.header.destination,
                                                                   protocolNumber: 6, length: p.payload.count))
    }
    #expect(InternetChecksum.finish(sum) == 0, "TCP checksum", sourceLocation: sourceLocation)
    #expect(p.header.flagsFragmentOffset & 0x3FFF == 0, "TCP segment fragmented", sourceLocation: sourceLocation)
    return Segment(source: p.header.source, destination: p.header.destination, tcp: tcp, payload: Array(p.payload[tcp.headerLength...]))
}

/// The guest's side of one connection: its addresses and what it has sent and received.
struct GuestConn {
    var guestPort: UInt16
    var server: IPv4Address
    var serverPort: UInt16
    /// The guest's next sequence number.
    var seq: UInt32
    /// Our ISS (from the SYN-ACK, or our SYN for hostfwd).
    var iss: UInt32
    /// The guest's window scale, as negotiated (0 when either side did not offer it).
    var guestWScale: UInt8
    /// Our window scale, as negotiated.
    var ourWScale: UInt8
    var handle: Int32
    var tag: FlowTag
    /// The guest's first data sequence number (its ISN + 1).
    var guestFirst: UInt32

    /// The sequence number of our byte `offset` (0: the first data byte).
    func ourSeq(_ offset: Int) -> UInt32 { iss &+ 1 &+ UInt32(offset) }
    /// The sequence number of the guest's byte `offset`.
    func guestSeq(_ offset: Int) -> UInt32 { guestFirst &+ UInt32(offset) }
}

final class TCPHarness {
    let host = FakeTCPHost()
    let gateway: Gateway<FakeTCPHost>
    var now = Instant(nanoseconds: 1_000 * 1_000_000_000)

    init(queueCapacity: Int = 0, sendCapacity: Int = 256 * 1024, _ configure: (inout GatewayConfig) -> Void = { _ in }) {
        var c = GatewayConfig()
        c.tcpFlowCapacity = 64
        configure(&c)
        host.defaultSendCapacity = sendCapacity
        gateway = Gateway(config: c, host: host, queueCapacity: queueCapacity)
    }

    var counters: GatewayCounters { gateway.counters }

    func send(_ frame: [UInt8]) { frame.withUnsafeBytes { gateway.handleGuestFrame($0, now: now) } }

    /// Frames passed as held (a stream port's read buffer): they stay in place until `releaseHeld`.
    private var heldFrames: [UnsafeMutableRawBufferPointer] = []
    /// Hands the gateway a copy of `frame` that stays in place until `releaseHeld`, as a stream port does.
    func sendHeld(_ frame: [UInt8]) {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: frame.count, alignment: 16)
        b.copyBytes(from: frame)
        heldFrames.append(b)
        gateway.handleGuestFrame(UnsafeRawBufferPointer(b), now: now, held: true)
    }
    /// The port's next read: the gateway flushes, then the held bytes are overwritten (so a stale pointer
    /// would show as 0xEE bytes in what a socket received) and freed.
    func releaseHeld() {
        gateway.flushGuestSends()
        for b in heldFrames {
            b.initializeMemory(as: UInt8.self, repeating: 0xEE)
            b.deallocate()
        }
        heldFrames.removeAll()
    }
    /// Overwrites byte `offset` of held frame `index` (counted from the oldest still held) with `value`: a
    /// runtime that broke its promise to keep held bytes in place, or a gather that points at the wrong place.
    func corruptHeld(frame index: Int, at offset: Int, with value: UInt8) {
        heldFrames[index][offset] = value
    }
    /// The lengths of the frames still held, oldest first.
    var heldFrameLengths: [Int] { heldFrames.map(\.count) }
    /// `guestSends` through a held frame.
    func guestSendsHeld(_ c: inout GuestConn, ack: UInt32, flags: TCPFlags = .ack, _ payload: [UInt8]) {
        sendHeld(frame(c, ack: ack, flags: flags, payload))
        c.seq &+= UInt32(payload.count) &+ (flags.contains(.fin) ? 1 : 0)
    }
    deinit { releaseHeld() }
    func advance(_ d: Instant.Duration) { now = now + d }
    func advance(ms: UInt64) { now = now + .milliseconds(ms) }
    func poll() { gateway.poll(now: now) }
    func flush() { gateway.flushPendingAcks() }
    func readable(_ c: GuestConn) { gateway.hostReadable(c.tag, now: now) }
    func writable(_ tag: FlowTag) { gateway.hostWritable(tag, now: now) }

    func drain(sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
        let frames = drainFrames(gateway.toGuest)
        for f in frames { expectWellFormedPadding(f, sourceLocation: sourceLocation) }
        return frames
    }

    /// Everything queued for the guest, each frame checked and parsed as TCP.
    func segments(sourceLocation: SourceLocation = #_sourceLocation) throws -> [Segment] {
        try drain(sourceLocation: sourceLocation).map { try expectSegment($0, sourceLocation: sourceLocation) }
    }

    /// Exactly one segment queued for the guest.
    func oneSegment(_ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws -> Segment {
        let s = try segments(sourceLocation: sourceLocation)
        try #require(s.count == 1, "\(comment?.rawValue ?? ""): \(s.count) segments: \(s.map(describe))", sourceLocation: sourceLocation)
        return s[0]
    }

    /// Learns the guest's MAC through an IPv4 frame (an echo request to the gateway, answered locally).
    func introduceGuest(mac: MACAddress = guestMAC) {
        send(FrameBuilder.ethernet(from: mac, type: .ipv4, FrameBuilder.ipv4(src: guestIP, dst: gatewayIP, proto: .icmp,
             FrameBuilder.icmp(type: ICMPv4Header.echoRequest, rest: 0x0001_0001, [1, 2, 3]))))
        _ = drainFrames(gateway.toGuest)
    }

    // MARK: Guest segments on a connection

    func frame(_ c: GuestConn, seq: UInt32? = nil, ack: UInt32? = nil, flags: TCPFlags = .ack, window: UInt16 = 65535,
               _ payload: [UInt8] = []) -> [UInt8] {
        FrameBuilder.tcpSegmentFrame(dst: c.server, srcPort: c.guestPort, dstPort: c.serverPort, seq: seq ?? c.seq,
                                     ack: ack ?? 0, flags: flags, window: window, payload)
    }

    /// The guest sends a segment at its next sequence number and advances it.
    func guestSends(_ c: inout GuestConn, ack: UInt32, flags: TCPFlags = .ack, window: UInt16 = 65535, _ payload: [UInt8] = []) {
        send(frame(c, ack: ack, flags: flags, window: window, payload))
        c.seq &+= UInt32(payload.count) &+ (flags.contains(.fin) ? 1 : 0)
    }

    /// The guest acknowledges our bytes up to `offset` (0: just our SYN).
    func guestAcks(_ c: GuestConn, upTo offset: Int, window: UInt16 = 65535, flags: TCPFlags = .ack) {
        send(frame(c, ack: c.ourSeq(offset), flags: flags, window: window))
    }

    /// A guest-initiated connection: SYN, connect completion, SYN-ACK, ACK. Nothing is left queued.
    func connect(to server: IPv4Address = gatewayIP, port: UInt16 = 8080, from guestPort: UInt16 = 50_000, isn: UInt32 = 1000,
                 mss: UInt16? = 1460, wscale: UInt8? = 7, synWindow: UInt16 = 64240, ackWindow: UInt16 = 65535,
                 sourceLocation: SourceLocation = #_sourceLocation) throws -> GuestConn {
        send(FrameBuilder.tcpSegmentFrame(dst: server, srcPort: guestPort, dstPort: port, seq: isn, ack: 0, flags: .syn,
                                          window: synWindow, mss: mss, wscale: wscale))
        let s = try #require(host.lastSocket, sourceLocation: sourceLocation)
        try #require(s.isOpen && s.port == port, sourceLocation: sourceLocation)
        writable(s.tag)
        let synAck = try oneSegment("SYN-ACK", sourceLocation: sourceLocation)
        try #require(synAck.flags == [.syn, .ack] && synAck.ack == isn &+ 1, sourceLocation: sourceLocation)
        var c = GuestConn(guestPort: guestPort, server: server, serverPort: port, seq: isn &+ 1, iss: synAck.seq,
                          guestWScale: synAck.tcp.windowScale != nil ? (wscale ?? 0) : 0, ourWScale: synAck.tcp.windowScale ?? 0,
                          handle: s.handle, tag: s.tag, guestFirst: isn &+ 1)
        guestAcks(c, upTo: 0, window: ackWindow)
        flush()
        let left = try segments(sourceLocation: sourceLocation)
        #expect(left.isEmpty, "after the handshake: \(left.map(describe))", sourceLocation: sourceLocation)
        c.seq = isn &+ 1
        return c
    }
}

func describe(_ s: Segment) -> String {
    var f: [String] = []
    if s.flags.contains(.syn) { f.append("S") }
    if s.flags.contains(.fin) { f.append("F") }
    if s.flags.contains(.rst) { f.append("R") }
    if s.flags.contains(.psh) { f.append("P") }
    if s.flags.contains(.ack) { f.append(".") }
    return "[\(f.joined())] seq \(s.seq) ack \(s.ack) win \(s.tcp.window) len \(s.payload.count)"
}
