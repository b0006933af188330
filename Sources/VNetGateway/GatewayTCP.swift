// Guest TCP translated to host sockets, without buffers of our own (the passt design; docs/architecture.md).
//
// Theory of Operation
// -------------------
// A flow is keyed by (guest address, guest port, destination, destination port) and owns one host socket.
// Lifecycle (events, not a big state machine):
//   guest SYN -> `connecting` (non-blocking connect) -> connect done: SYN-ACK to guest, `synAckSent`
//   (refused: RST to guest, flow freed) -> guest ACKs our SYN: `established`.
//   guest FIN consumed -> shutdown(SHUT_WR) on the host socket (`guestFinReceived`).
//   host EOF after every byte was peeked (`hostEOF`, `finSeq`) -> FIN to guest; the guest's ACK of it -> `finAcked`.
//   both directions closed -> socket closed, flow freed. RST maps both ways at any point.
// Guest -> host: a segment at `rcvNxt` is written straight to the socket (or, from a stream port, gathered
// with the next in-order segments of the same read into one send: GatewayTCPBatch.swift); only what the
// socket accepted is acknowledged, so the socket's send buffer is the buffer. The window we advertise is the socket's free send
// space (scaled, RFC 7323); when it is short we arm EPOLLOUT and send a window update once it drains.
// A segment ahead of `rcvNxt` (a reordering uplink such as VXLAN delivers some) is copied into a bounded
// store and answered with a duplicate ACK; once in-order data reaches it, it is sent on behind that data
// (GatewayTCPReorder.swift). What the store cannot take (over its caps, outside our window) is dropped and
// sent again by the guest. Overlaps with data already taken are trimmed.
// Host -> guest: bytes stay in the kernel's receive queue. We peek (SO_PEEK_OFF continues after what was
// sent) up to the guest's window and cut MSS-sized segments; the guest's ACK discards bytes from the queue.
// Retransmission rewinds the peek offset to the acknowledged point. Timers: RTO with exponential backoff for
// unacknowledged data, SYN-ACK and FIN; window probes when the guest's window is zero; idle timeouts.
// The table has a fixed cap: a full table answers a new SYN with RST and counts it.

import VNetBuffers
import VNetWire

struct TCPFlowKey: GuestFlowKey {
    var guestAddress: IPAddress
    var guestPort: UInt16
    var destination: IPAddress
    var destinationPort: UInt16
}

/// What has happened to a flow, in the order it can happen (passt's model): a flow's state is the set of
/// events it has seen, never a variable of its own; `TCPFlow.state` and the Bools beside it are views of it.
struct TCPEvents: OptionSet {
    let rawValue: UInt8
    /// The guest's SYN arrived; we connect to the host on its behalf.
    static let guestSyn = TCPEvents(rawValue: 1 << 0)
    /// A host forward's client connected; we sent the guest a SYN.
    static let hostAccepted = TCPEvents(rawValue: 1 << 1)
    /// The host connect finished and our SYN-ACK went to the guest.
    static let synAckSent = TCPEvents(rawValue: 1 << 2)
    /// The handshake is complete both ways: data may flow.
    static let established = TCPEvents(rawValue: 1 << 3)
    /// The guest's FIN was taken; the host socket is shut for writing.
    static let guestFin = TCPEvents(rawValue: 1 << 4)
    /// The host closed its side: every byte is before `finSeq`, and our FIN takes sequence number `finSeq`.
    static let hostFin = TCPEvents(rawValue: 1 << 5)
    /// The guest acknowledged our FIN.
    static let finAcked = TCPEvents(rawValue: 1 << 6)
}

struct TCPFlow {
    /// connecting/synAckSent: the guest opened the flow. synSent: a hostfwd client did, and we sent the SYN.
    enum State { case connecting, synAckSent, synSent, established }

    var key: TCPFlowKey
    /// This flow's index in the table (its epoll tag).
    var slot: Int = 0
    var handle: Int32
    var guestMAC: MACAddress
    var hostDestination: IPAddress
    var events: TCPEvents = .guestSyn
    var finSeq: UInt32 = 0
    /// Next sequence number expected from the guest.
    var rcvNxt: UInt32
    /// Our initial sequence number; the first data byte is iss + 1.
    var iss: UInt32
    var sndUna: UInt32
    var sndNxt: UInt32
    /// The highest sequence number sent so far (sndNxt falls back below it on retransmission).
    var sndMax: UInt32
    /// Bytes the guest accepts beyond sndUna.
    var guestWindow: UInt32
    var guestWScale: UInt8
    var ourWScale: UInt8
    var mss: Int
    var lastActive: Instant
    var rtoDeadline: Instant = .zero
    var rto: Instant.Duration = TCPTiming.initialRTO
    var retries = 0
    var dupAcks = 0
    /// NewReno's recovery point (RFC 6582): no new fast retransmit until the guest acknowledges past it.
    /// Starts at the ISS (RFC 6582 §3.2 step 1): 0 would block fast retransmit for half of all ISS values.
    var recover: UInt32 = 0
    /// Congestion window and slow-start threshold in bytes (GatewayTCPCongestion.swift); 0: not started yet.
    var cwnd: UInt32 = 0
    var ssthresh: UInt32 = .max
    /// Between a fast retransmit and the ACK of `recover`: partial ACKs resend the next hole (NewReno).
    var inRecovery = false
    /// Waiting for room in the guest queue (resumed after the next flush, not by a timer).
    var queueBlocked = false
    /// The host socket may hold bytes not yet peeked. Cleared when a peek drains it, set again by the next
    /// readable event (edge-triggered: one per arrival), a rewind, or (peek-and-skip fallback only) a
    /// discard, so with SO_PEEK_OFF a guest ACK never costs a peek that can only say EAGAIN.
    var hostDataPending = true
    /// An event for the host socket reported a hang-up, reset or error (EPOLLRDHUP/HUP/ERR): a FIN or RST may wait
    /// behind the data, so a short peek is followed by one more. Sticky: set once, it stays.
    var peerMayHaveClosed = false
    var ackPending = false
    var wantWritable = false
    var lastAdvertised: UInt32 = 0
    /// The furthest right edge of the window we advertised (the guest may send up to it even after the window
    /// shrank): out-of-order data up to it is held (GatewayTCPReorder.swift).
    var advertisedEdge: UInt32 = 0
    /// hostfwd: the guest answered our SYN with an ACK for an older connection; we reset it and sent the SYN again.
    var staleGuestStateReset = false

    /// The host socket's free send space when last measured, and the bytes written to the socket since: their
    /// difference is a lower bound on the space now (only the host peer's ACKs free space, and they can only
    /// add to it). See `advertisedWindow`.
    var measuredSendSpace = 0
    var writtenSinceMeasure = 0

    var inFlight: UInt32 { sndNxt &- sndUna }
    /// A window update is worth sending once the window has room for a full segment (RFC 1122 §4.2.3.3,
    /// receiver SWS avoidance): a Linux sender with a window under one MSS does not send at all.
    var windowUpdateThreshold: Int { mss }
    /// In `tcpEngine.windowWatch` (checked again every millisecond until the window opens).
    var inWindowWatch = false
    /// The last watch pass that looked at this flow (so a slot listed twice is served once).
    var windowWatchPass: UInt32 = 0
    /// Our FIN went out and is not yet acknowledged, or will be resent.
    var finSent: Bool { hostEOF && seqLT(finSeq, sndNxt) }

    // Views of `events`.
    var state: State {
        if events.contains(.established) { return .established }
        if events.contains(.hostAccepted) { return .synSent }
        return events.contains(.synAckSent) ? .synAckSent : .connecting
    }
    var isEstablished: Bool { events.contains(.established) }
    var guestFinReceived: Bool { events.contains(.guestFin) }
    var hostEOF: Bool { events.contains(.hostFin) }
    var finAcked: Bool { events.contains(.finAcked) }
}

enum TCPTiming {
    static let initialRTO = Instant.Duration.milliseconds(1000)
    static let maximumRTO = Instant.Duration.seconds(30)
    static let maximumRetries = 10
    static let connectTimeout = Instant.Duration.seconds(75)
    static let closingTimeout = Instant.Duration.seconds(120)
    /// Our window scale (RFC 7323): windows up to 8 MiB.
    static let ourWindowScale: UInt8 = 7
}

@inline(__always) func seqLT(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) < 0 }
@inline(__always) func seqLE(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) <= 0 }

extension Gateway {
    // MARK: Guest segments

    func handleTCP(_ p: UnsafeRawBufferPointer, ip: GuestPacket, ethernet: EthernetHeader, now: Instant) {
        guard let tcp = try? TCPHeader.parse(p) else { return drop(.tcpMalformed) }
        if !guestChecksumPartial {
            let sum = InternetChecksum.add(p, to: ip.pseudoHeader(length: p.count))
            guard InternetChecksum.finish(sum) == 0 else { return drop(.tcpBadChecksum) }
        }
        guard !ip.source.isUnspecified, tcp.sourcePort != 0, tcp.destinationPort != 0 else { return drop(.martianSource) }
        let key = TCPFlowKey(guestAddress: ip.source, guestPort: tcp.sourcePort, destination: ip.destination, destinationPort: tcp.destinationPort)
        let payload = p.slice(tcp.headerLength ..< p.count)
        if let i = tcpEngine.flows.lookup(key) {
            return segmentForFlow(i, tcp: tcp, payload: payload, mac: ethernet.source, now: now)
        }
        if tcp.flags.contains(.rst) { return drop(.tcpNoFlow) }
        guard tcp.flags.contains(.syn), !tcp.flags.contains(.ack) else {
            drop(.tcpNoFlow)
            return sendReset(answering: tcp, payloadLength: payload.count, key: key, mac: ethernet.source)
        }
        openTCPFlow(key, tcp: tcp, mac: ethernet.source, now: now)
    }

    enum TCPTarget {
        case host(IPAddress, UInt16)
        case command(String)
        case refused(DropReason)
    }

    /// Where a guest connection to `key.destination:port` goes on the host side.
    func tcpTarget(for key: TCPFlowKey) -> TCPTarget {
        for f in config.guestForwards where IPAddress(f.serverAddress) == key.destination && f.serverPort == key.destinationPort {
            switch f.target {
            case .tcp(let a, let p): return .host(IPAddress(a), p)
            case .command(let c): return .command(c)
            }
        }
        // libslirp's restrict=on: guest-initiated TCP reaches guestfwd targets only (answered with RST).
        if config.restricted { return .refused(.restricted) }
        if config.isDNSAddress(key.destination) && (key.destinationPort == 53 || config.dnsAddress != config.gatewayAddress) {
            // DNS over TCP: relayed to the first upstream resolver, like DNS over UDP.
            guard key.destinationPort == 53 else { return .refused(.dnsWrongPort) }
            guard let up = currentDNSUpstream else { return .refused(.dnsNoUpstream) }
            return .host(up.0, up.1)
        }
        let (dst, reason) = hostDestination(for: key.destination)
        guard let d = dst else { return .refused(reason!) }
        return .host(d, key.destinationPort)
    }

    func openTCPFlow(_ key: TCPFlowKey, tcp: TCPHeader, mac: MACAddress, now: Instant) {
        guard tcpEngine.flows.count < tcpEngine.flows.capacity else {
            drop(.tcpFlowTableFull)
            return sendReset(answering: tcp, payloadLength: 0, key: key, mac: mac)
        }
        guard tcpEngine.flows.count(forGuest: key.guestAddress) < config.guestTCPFlowCapacity else {
            drop(.tcpGuestFlowsFull)
            return sendReset(answering: tcp, payloadLength: 0, key: key, mac: mac)
        }
        guard tcpEngine.halfOpenCount < config.tcpHalfOpenCapacity else {
            drop(.tcpHalfOpenFull)
            return sendReset(answering: tcp, payloadLength: 0, key: key, mac: mac)
        }
        let tag = FlowTag(kind: .tcp, index: tcpEngine.flows.nextFreeIndex!)
        let opened: Int32?
        var hostAddress = IPAddress(IPv4Address.any)
        switch tcpTarget(for: key) {
        case .refused(let reason):
            drop(reason)
            return sendReset(answering: tcp, payloadLength: 0, key: key, mac: mac)
        case .host(let a, let p):
            hostAddress = a
            opened = host.openTCP(to: a, port: p, tag: tag)
        case .command(let c):
            opened = host.openCommand(c, tag: tag)
        }
        guard let handle = opened else {
            drop(.hostSocketFailed)
            return sendReset(answering: tcp, payloadLength: 0, key: key, mac: mac)
        }
        let iss = initialSequence(for: key, now: now)
        let guestScales = tcp.windowScale != nil
        let guestMSS = Int(tcp.maxSegmentSize ?? 536)
        let flow = TCPFlow(key: key, slot: tag.index, handle: handle, guestMAC: mac, hostDestination: hostAddress,
                           rcvNxt: tcp.sequence &+ 1, iss: iss, sndUna: iss, sndNxt: iss, sndMax: iss,
                           guestWindow: UInt32(tcp.window), guestWScale: guestScales ? min(tcp.windowScale!, 14) : 0,
                           ourWScale: guestScales ? TCPTiming.ourWindowScale : 0,
                           mss: max(64, min(guestMSS, maximumSegmentSize(key))), lastActive: now, recover: iss)
        _ = tcpEngine.flows.insert(key, flow)
        tcpEngine.halfOpenCount += 1
        counters.count(.tcpFlowsOpened)
    }

    /// Frees a flow's slot (the caller has closed or aborted its socket), keeping the half-open count.
    func forgetTCPFlow(_ f: TCPFlow) {
        if !f.isEstablished { tcpEngine.halfOpenCount -= 1 }
        // Its fd may be reused by the next flow in this slot: gathered data must not reach that one.
        if tcpEngine.sendBatch.flow == f.slot { tcpEngine.sendBatch.reset() }
        tcpEngine.reorder.release(flow: f.slot)
        tcpEngine.flows.remove(f.key)
    }

    /// A connection accepted on a hostfwd listener: vnet sends the SYN to guest:guestPort. Loopback clients
    /// appear as the gateway address (guests drop loopback sources), everyone else keeps address and port.
    /// Returns false (and the caller closes the socket) when the flow cannot be made.
    public func acceptForwardedTCP(handle: Int32, from client: IPv4Address, port clientPort: UInt16,
                                   to guest: IPv4Address, port guestPort: UInt16, now: Instant) -> Bool {
        acceptForwardedTCP(handle: handle, from: IPAddress(client), port: clientPort, to: IPAddress(guest), port: guestPort, now: now)
    }

    /// As above, for either family on either side. A client of the other family than the guest's address (an
    /// IPv6 client of a forward to the guest's IPv4 address, say) appears as the gateway address.
    public func acceptForwardedTCP(handle: Int32, from client: IPAddress, port clientPort: UInt16,
                                   to guest: IPAddress, port guestPort: UInt16, now: Instant) -> Bool {
        guard let mac = guestMAC(for: guest) else { drop(.forwardNoGuestMAC); return false }
        let facing = forwardFacingAddress(client: client, guest: guest)
        let key = TCPFlowKey(guestAddress: guest, guestPort: guestPort, destination: facing, destinationPort: clientPort)
        guard tcpEngine.flows.lookup(key) == nil else { drop(.tcpFlowTableFull); return false }
        guard tcpEngine.flows.count < tcpEngine.flows.capacity else { drop(.tcpFlowTableFull); return false }
        guard tcpEngine.flows.count(forGuest: guest) < config.guestTCPFlowCapacity else { drop(.tcpGuestFlowsFull); return false }
        guard tcpEngine.halfOpenCount < config.tcpHalfOpenCapacity else { drop(.tcpHalfOpenFull); return false }
        let index = tcpEngine.flows.nextFreeIndex!
        guard host.adoptTCP(handle, tag: FlowTag(kind: .tcp, index: index)) else { drop(.hostSocketFailed); return false }
        let iss = initialSequence(for: key, now: now)
        var flow = TCPFlow(key: key, slot: index, handle: handle, guestMAC: mac, hostDestination: client, events: .hostAccepted,
                           rcvNxt: 0, iss: iss, sndUna: iss, sndNxt: iss, sndMax: iss, guestWindow: 0, guestWScale: 0,
                           ourWScale: TCPTiming.ourWindowScale, mss: maximumSegmentSize(key), lastActive: now, recover: iss)
        sendSyn(&flow)
        armRTO(&flow, now: now)
        _ = tcpEngine.flows.insert(key, flow)
        tcpEngine.halfOpenCount += 1
        counters.count(.tcpForwardsAccepted)
        counters.count(.tcpFlowsOpened)
        return true
    }

    /// Our SYN to the guest (hostfwd): offers MSS and window scale.
    func sendSyn(_ f: inout TCPFlow) { sendHandshake(&f, flags: .syn, acknowledgment: 0) }

    /// The guest answered our SYN (hostfwd): SYN-ACK -> established, RST -> the client is reset.
    func synSentSegment(_ i: Int, _ f: inout TCPFlow, tcp: TCPHeader, now: Instant) {
        if tcp.flags.contains(.rst) {
            guard tcp.flags.contains(.ack), tcp.acknowledgment == f.iss &+ 1 else { return drop(.tcpRstOutOfWindow) }
            counters.count(.tcpResetsFromGuest)
            host.tcpAbort(f.handle)
            forgetTCPFlow(f)
            return
        }
        guard tcp.flags.contains(.syn), tcp.flags.contains(.ack), tcp.acknowledgment == f.iss &+ 1 else {
            if tcp.flags.contains(.ack) && tcp.acknowledgment != f.iss &+ 1 {
                // RFC 9293 §3.10.7.3: an unacceptable ACK in SYN-SENT is answered with <SEQ=SEG.ACK><CTL=RST>. The guest
                // still holds an older connection on this 4-tuple (TIME-WAIT after a vnet restart, or state whose
                // reset was lost) and answered our SYN with an ACK for it; the RST clears that, and our SYN, sent
                // again at once (only the first time: a guest that keeps doing this waits for the RTO), connects.
                sendReset(answering: tcp, payloadLength: 0, key: f.key, mac: f.guestMAC)
                if !f.staleGuestStateReset {
                    f.staleGuestStateReset = true
                    sendSyn(&f)
                }
            }
            return drop(.tcpBadAck)
        }
        f.rcvNxt = tcp.sequence &+ 1
        if let ws = tcp.windowScale { f.guestWScale = min(ws, 14) } else { f.guestWScale = 0; f.ourWScale = 0 }
        f.mss = max(64, min(Int(tcp.maxSegmentSize ?? 536), maximumSegmentSize(f.key)))
        f.guestWindow = UInt32(tcp.window)   // never scaled in a SYN
        f.sndUna = f.iss &+ 1
        f.events.insert(.established)
        tcpEngine.halfOpenCount -= 1
        f.rtoDeadline = .zero
        f.retries = 0
        f.rto = TCPTiming.initialRTO
        emitSegment(&f, flags: .ack, sequence: f.sndNxt, payload: nil)
        host.tcpSetInterest(f.handle, tag: FlowTag(kind: .tcp, index: i), readable: true, writable: false)
        pushHostData(i, &f, now: now)
    }

    /// RFC 6528-style ISN: a keyed hash of the 4-tuple plus a 4 µs clock.
    func initialSequence(for key: TCPFlowKey, now: Instant) -> UInt32 {
        var h = Hasher()
        h.combine(key)
        h.combine(isnSecret)
        return UInt32(truncatingIfNeeded: h.finalize()) &+ UInt32(truncatingIfNeeded: now.nanoseconds / 4000)
    }

    func segmentForFlow(_ i: Int, tcp: TCPHeader, payload: UnsafeRawBufferPointer, mac: MACAddress, now: Instant) {
        // Gathered data of this flow goes out first unless this segment is the next in-order data behind it
        // (GatewayTCPBatch.swift): everything below then sees `rcvNxt` as if each segment had been sent at once.
        if tcpEngine.sendBatch.flow == i
            && (payload.isEmpty || tcp.sequence != tcpEngine.sendBatch.nextSequence || !tcp.flags.isSubset(of: [.ack, .psh])) {
            flushGuestSends()
        }
        guard var f = tcpEngine.flows[i] else { return }
        f.lastActive = now
        f.guestMAC = mac
        defer { if tcpEngine.flows[i] != nil { tcpEngine.flows[i] = f } }

        if f.state == .synSent { return synSentSegment(i, &f, tcp: tcp, now: now) }
        guard handshakeStep(i, &f, tcp: tcp, payloadLength: payload.count, mac: mac), f.isEstablished else { return }
        guard let ack = ackStep(i, &f, tcp: tcp, payloadIsEmpty: payload.isEmpty, now: now) else { return }
        guard let fin = dataStep(i, &f, tcp: tcp, payload: payload) else { return }
        if fin { finStep(i, &f) }
        // Acknowledged host data leaves the socket only now, after the segment's own data went to the host: a
        // request that acknowledges the previous reply reaches the host one syscall sooner.
        if ack.acked > 0 {
            host.tcpDiscard(f.handle, count: Int(ack.acked))
            if !host.tcpDrainedPeekIsFinal { f.hostDataPending = true }
        }
        if ack.resendHole && f.sndUna != f.sndNxt {
            counters.count(.tcpRetransmits)
            resendFirstSegment(&f)
        }
        if f.guestFinReceived && f.finAcked {
            sendPendingAck(&f)
            closeFlow(i, &f)
            return
        }
        pushHostData(i, &f, now: now)
    }

    /// RST, SYN and the ACK that completes our SYN-ACK. False when the segment ends here (the flow may be gone).
    func handshakeStep(_ i: Int, _ f: inout TCPFlow, tcp: TCPHeader, payloadLength: Int, mac: MACAddress) -> Bool {
        if tcp.flags.contains(.rst) {
            // RFC 5961 §3.2 asks for an exact match, but the guest's RST carries its snd_nxt, which may be past
            // data we refused for want of socket space: accept any RST inside the window we advertised.
            let inWindow = seqLE(f.rcvNxt, tcp.sequence) && seqLE(tcp.sequence, f.rcvNxt &+ max(f.lastAdvertised, 65535))
            guard inWindow || f.state == .connecting else { drop(.tcpRstOutOfWindow); return false }
            counters.count(.tcpResetsFromGuest)
            host.tcpAbort(f.handle)
            forgetTCPFlow(f)
            return false
        }
        if tcp.flags.contains(.syn) {
            // A retransmitted SYN: repeat our SYN-ACK if it was already sent, else wait for the connect.
            if f.state == .synAckSent && tcp.sequence &+ 1 == f.rcvNxt { sendSynAck(&f) }
            // A retransmitted SYN-ACK on a hostfwd flow means our ACK was lost: acknowledge it again.
            if f.isEstablished && tcp.sequence &+ 1 == f.rcvNxt { markAckPending(i, &f) }
            return false
        }
        guard tcp.flags.contains(.ack) else { drop(.tcpNoAck); return false }
        if f.state == .synAckSent {
            guard tcp.acknowledgment == f.iss &+ 1 else {
                drop(.tcpBadAck)
                sendReset(answering: tcp, payloadLength: payloadLength, key: f.key, mac: mac)
                return false
            }
            f.events.insert(.established)
            tcpEngine.halfOpenCount -= 1
            f.sndUna = f.iss &+ 1
            f.rtoDeadline = .zero
            f.retries = 0
            f.rto = TCPTiming.initialRTO
            host.tcpSetInterest(f.handle, tag: FlowTag(kind: .tcp, index: i), readable: true, writable: false)
        }
        return true
    }

    /// What an ACK did: host bytes it acknowledged (discarded from the socket after the data step), and
    /// whether NewReno wants the next hole resent.
    struct AckOutcome {
        var acked: UInt32 = 0
        var resendHole = false
    }

    /// The acknowledgment and window of an established flow's segment: advances `sndUna` (and our FIN's
    /// acknowledgment), counts duplicate ACKs for fast retransmit, resets the retransmission timer. Nil when
    /// the segment acknowledges data never sent (answered with an ACK and otherwise ignored).
    func ackStep(_ i: Int, _ f: inout TCPFlow, tcp: TCPHeader, payloadIsEmpty: Bool, now: Instant) -> AckOutcome? {
        var outcome = AckOutcome()
        let window = UInt32(tcp.window) << UInt32(f.guestWScale)
        if seqLT(f.sndUna, tcp.acknowledgment) && seqLE(tcp.acknowledgment, f.sndMax) {
            let ack = tcp.acknowledgment
            // Bytes of data acknowledged (our FIN, when acknowledged, is not a byte in the socket).
            var dataEnd = ack
            if f.hostEOF && seqLT(f.finSeq, ack) {
                dataEnd = f.finSeq
                f.events.insert(.finAcked)
            }
            outcome.acked = seqLT(f.sndUna, dataEnd) ? dataEnd &- f.sndUna : 0
            outcome.resendHole = congestionAcked(&f, acked: outcome.acked, ack: ack)
            f.sndUna = ack
            if seqLT(f.sndNxt, ack) {
                // After a rewind, the guest acknowledged data sent before it: continue from there.
                f.sndNxt = ack
                host.tcpSetPeekOffset(f.handle, offset: 0)
            }
            f.retries = 0
            f.rto = TCPTiming.initialRTO
            f.dupAcks = 0
            f.rtoDeadline = .zero
            if f.sndUna != f.sndNxt { armRTO(&f, now: now) }
        } else if tcp.acknowledgment == f.sndUna && payloadIsEmpty && !tcp.flags.contains(.fin) && f.inFlight > 0 && window == f.guestWindow {
            f.dupAcks += 1
            if f.dupAcks == 3 && !seqLT(f.sndUna, f.recover) { fastRetransmit(&f) }
        } else if seqLT(f.sndMax, tcp.acknowledgment) {
            // Acknowledges data never sent: answer with an ACK (RFC 9293 §3.10.7.4) and ignore the segment.
            drop(.tcpBadAck)
            markAckPending(i, &f)
            return nil
        }
        if f.inFlight == 0 && f.retries > 0 {
            // The guest answered a zero-window probe: it is alive, so the persist timer never gives up.
            f.retries = 0
            f.rto = TCPTiming.initialRTO
            f.rtoDeadline = .zero
        }
        f.guestWindow = window
        return outcome
    }

    /// The segment's data: trimmed to what is new, taken only in order (`rcvNxt`, or the end of this flow's
    /// gathered data, which this segment continues), then gathered or written to the host socket; only what
    /// the socket accepted is acknowledged. Data ahead of that point is held (GatewayTCPReorder.swift) and
    /// follows once the stream reaches it. Returns whether the segment's FIN is now next in sequence and may
    /// be taken, or nil when the flow was reset or the gather ended the segment.
    func dataStep(_ i: Int, _ f: inout TCPFlow, tcp: TCPHeader, payload: UnsafeRawBufferPointer) -> Bool? {
        let gathering = tcpEngine.sendBatch.flow == i
        let expected = gathering ? tcpEngine.sendBatch.nextSequence : f.rcvNxt
        var data = payload
        var seq = tcp.sequence
        var fin = tcp.flags.contains(.fin)
        if data.isEmpty && !fin && seqLT(seq, f.rcvNxt) {
            // A zero-window probe or keep-alive (SEG.SEQ = RCV.NXT-1): RFC 9293 §3.10.7.4 answers with an ACK.
            markAckPending(i, &f)
        }
        guard !data.isEmpty || fin else { return false }
        if seqLT(seq, f.rcvNxt) {
            let skip = Int(f.rcvNxt &- seq)
            if skip >= data.count + (fin ? 1 : 0) {
                data = UnsafeRawBufferPointer(start: nil, count: 0)
                fin = false
                markAckPending(i, &f)  // duplicate: re-acknowledge
            } else if skip >= data.count {
                data = UnsafeRawBufferPointer(start: nil, count: 0)  // only the FIN is new
            } else {
                data = data.slice(skip ..< data.count)
            }
            seq = f.rcvNxt
        }
        if (!data.isEmpty || fin) && seq != expected {
            // Ahead of a hole: the data is held until the hole fills (its FIN is not: GatewayTCPReorder.swift).
            if data.isEmpty || f.guestFinReceived { drop(.tcpOutOfOrder) } else { keepOutOfOrder(i, &f, sequence: seq, data, after: expected) }
            markAckPending(i, &f)
            return false
        }
        if !data.isEmpty && !f.guestFinReceived && !fin && (gathering || guestDataIsHeld(data)) {
            guard gatherGuestData(i, &f, data) else { return nil }
        } else if !data.isEmpty && !f.guestFinReceived {
            switch host.tcpSend(f.handle, data) {
            case .done(let n):
                f.rcvNxt &+= UInt32(n)
                f.writtenSinceMeasure += n
                if n < data.count { fin = false; counters.count(.tcpSendsRefused); waitForSendSpace(i, &f) }
                // Held data that this segment joined to the stream follows it (not past a FIN: finStep frees it).
                else if !fin && !sendHeldContinuation(i, &f) { resetFlow(i, &f); return nil }
            case .wouldBlock:
                fin = false
                counters.count(.tcpSendsRefused)
                waitForSendSpace(i, &f)
            case .reset, .failed, .endOfStream:
                resetFlow(i, &f)
                return nil
            }
            markAckPending(i, &f)
        }
        return fin
    }

    /// The guest's FIN, in sequence: the host socket is shut for writing and the FIN acknowledged.
    func finStep(_ i: Int, _ f: inout TCPFlow) {
        guard !f.guestFinReceived else { return }
        f.rcvNxt &+= 1
        f.events.insert(.guestFin)
        tcpEngine.reorder.release(flow: i)  // nothing comes after the FIN
        host.tcpShutdownWrite(f.handle)
        markAckPending(i, &f)
    }

    /// The window we offer is under one segment: watch the host socket's send space, by EPOLLOUT and by a 1 ms
    /// timer. EPOLLOUT alone is not enough: the kernel calls a socket writable long before it has an MSS of
    /// room by our measure (half of SO_SNDBUF minus SIOCOUTQ), and after it has said so once it sends no
    /// further edge, so the window update would wait for the guest's persist timer.
    func waitForSendSpace(_ i: Int, _ f: inout TCPFlow) {
        guard !f.wantWritable else { return }
        f.wantWritable = true
        host.tcpSetInterest(f.handle, tag: FlowTag(kind: .tcp, index: i), readable: f.isEstablished, writable: true)
        if !f.inWindowWatch {
            f.inWindowWatch = true
            if tcpEngine.windowWatch.isEmpty { tcpEngine.windowWatchDeadline = lastPollTime + .milliseconds(1) }
            tcpEngine.windowWatch.append(i)
        }
    }

    /// The host socket's free send space now (a syscall), remembered as the base of later estimates.
    func measureSendSpace(_ f: inout TCPFlow) -> Int {
        let space = max(0, host.tcpSendSpace(f.handle))
        f.measuredSendSpace = space
        f.writtenSinceMeasure = 0
        return space
    }

    /// Sends the window update once the host socket has room for a segment. Returns true when it went out.
    @discardableResult
    func sendWindowUpdateIfOpen(_ i: Int, _ f: inout TCPFlow) -> Bool {
        guard f.wantWritable, measureSendSpace(&f) >= f.windowUpdateThreshold else { return false }
        f.wantWritable = false
        host.tcpSetInterest(f.handle, tag: FlowTag(kind: .tcp, index: i), readable: true, writable: false)
        emitSegment(&f, flags: .ack, sequence: f.sndNxt, payload: nil)
        return true
    }

    /// The 1 ms pass over flows whose window is closed (see `waitForSendSpace`).
    func tcpWindowWatchPass(now: Instant) {
        guard !tcpEngine.windowWatch.isEmpty, now >= tcpEngine.windowWatchDeadline else { return }
        tcpEngine.windowWatchPasses &+= 1
        var kept = 0
        for j in 0 ..< tcpEngine.windowWatch.count {
            let i = tcpEngine.windowWatch[j]
            guard var f = tcpEngine.flows[i], f.inWindowWatch, f.windowWatchPass != tcpEngine.windowWatchPasses else { continue }
            f.windowWatchPass = tcpEngine.windowWatchPasses
            if !f.isEstablished || !f.wantWritable || sendWindowUpdateIfOpen(i, &f) {
                f.inWindowWatch = false
            } else {
                tcpEngine.windowWatch[kept] = i
                kept += 1
            }
            tcpEngine.flows[i] = f
        }
        tcpEngine.windowWatch.removeLast(tcpEngine.windowWatch.count - kept)
        tcpEngine.windowWatchDeadline = now + .milliseconds(1)
    }

    func markAckPending(_ i: Int, _ f: inout TCPFlow) {
        guard !f.ackPending else { return }
        f.ackPending = true
        tcpEngine.ackList.append(i)
    }

    /// ACKs are owed to the guest (a runtime that busy-polls may let them wait for the host's reply, which
    /// then carries them: see `flushPendingAcks`).
    public var hasPendingAcks: Bool { !tcpEngine.ackList.isEmpty }

    /// Sends the ACKs owed to the guest. Call after a batch of guest frames: one ACK per flow per batch. Data
    /// for the guest that goes out before this carries the ACK instead (counted as `tcp_acks_folded`).
    public func flushPendingAcks() {
        flushGuestSends()  // the ACKs say what the sockets took
        guard !tcpEngine.ackList.isEmpty else { return }
        for i in tcpEngine.ackList {
            guard var f = tcpEngine.flows[i], f.ackPending else { continue }
            sendPendingAck(&f)
            tcpEngine.flows[i] = f
        }
        tcpEngine.ackList.removeAll(keepingCapacity: true)
    }

    func sendPendingAck(_ f: inout TCPFlow) {
        guard f.ackPending else { return }
        f.ackPending = false
        emitSegment(&f, flags: .ack, sequence: f.sndNxt, payload: nil)
    }

    /// The window field we advertise: the host socket's free send space, scaled.
    /// When it is under one MSS, EPOLLOUT is armed so the window update goes out as soon as the host socket
    /// drains (the guest would otherwise wait for its persist timer).
    /// The space is measured (SO_SNDBUF less SIOCOUTQ, a syscall) only when the lower bound left from the last
    /// measure (`measuredSendSpace - writtenSinceMeasure`) has fallen under half of it, or under four segments:
    /// a request/response flow then advertises its window without a syscall per segment. Advertising the bound
    /// keeps the window's right edge where it was (the bound falls by what `rcvNxt` rose), so it does not shrink
    /// (beyond the window scale's rounding, as before).
    func advertisedWindow(_ f: inout TCPFlow) -> UInt16 {
        let space: Int
        let bound = f.measuredSendSpace - f.writtenSinceMeasure
        if f.guestFinReceived {
            space = 0
        } else if bound >= f.measuredSendSpace / 2 && bound >= 4 * f.windowUpdateThreshold {
            space = bound
        } else {
            space = measureSendSpace(&f)
        }
        f.lastAdvertised = UInt32(min(space, Int(UInt32.max)))
        noteAdvertisedEdge(&f)
        if space < f.windowUpdateThreshold && !f.guestFinReceived && f.isEstablished { waitForSendSpace(f.slot, &f) }
        let scaled = space >> Int(f.ourWScale)
        return UInt16(min(scaled, 65535))
    }

    // MARK: Host side

    /// Peeks host data into segments while the guest's window (and the guest queue) has room; sends our FIN
    /// once the host side has closed and every byte before it is out.
    func pushHostData(_ i: Int, _ f: inout TCPFlow, now: Instant) {
        guard f.isEstablished else { return }
        while true {
            if f.hostEOF {
                if f.sndNxt == f.finSeq {
                    guard emitSegment(&f, flags: [.fin, .ack], sequence: f.sndNxt, payload: nil) else { return armRTO(&f, now: now) }
                    advanceSent(&f, by: 1)
                    f.ackPending = false
                    armRTO(&f, now: now)
                }
                if !seqLT(f.sndNxt, f.finSeq) { return }
            }
            guard f.hostDataPending else { return }
            let limit = sendWindow(&f)
            let room = limit > f.inFlight ? limit - f.inFlight : 0
            if room == 0 {
                // Zero window: probe it from the RTO timer.
                armRTO(&f, now: now)
                return
            }
            // Never peek more than the guest queue can take now: what is peeked must go out. With offloads a
            // segment is a super-segment of whole MSS-sized pieces that the kernel cuts.
            let segmentPayload = config.guestOffloads ? superSegmentPayload(mss: f.mss, ipv4: f.key.guestAddress.isIPv4) : f.mss
            let overhead = 14 + (f.key.guestAddress.isIPv4 ? 20 : 40) + 20 + FrameQueue.prefixLength + toGuest.frameHeaderLength
            // Host data never takes the queue's last `guestQueueHeadroom` bytes: they are kept for everything else
            // the gateway answers (ARP, DHCP, DNS, ICMP, RSTs, ACKs), which a full queue would drop.
            let free = max(0, toGuest.freeSpace - guestQueueHeadroom)
            var queueRoom = (free / (segmentPayload + overhead)) * segmentPayload
            if queueRoom == 0 { queueRoom = (free / (f.mss + overhead)) * f.mss }
            guard queueRoom > 0 else { return blockOnQueue(i, &f) }
            var want = min(Int(room), tcpPeekBuffer.count, queueRoom)
            if f.hostEOF { want = min(want, Int(f.finSeq &- f.sndNxt)) }
            switch host.tcpPeek(f.handle, into: tcpPeekBuffer.slice(0 ..< want)) {
            case .done(let n):
                // One window computation (two syscalls) per peek, not per segment.
                let window = advertisedWindow(&f)
                var off = 0
                while off < n {
                    let chunk = min(segmentPayload, n - off)
                    let last = off + chunk == n
                    if !emitSegment(&f, flags: last ? [.ack, .psh] : .ack, sequence: f.sndNxt,
                                    payload: UnsafeRawBufferPointer(tcpPeekBuffer.slice(off ..< off + chunk)), window: window) {
                        // The queue filled up after all: peek the rest again from here later.
                        host.tcpSetPeekOffset(f.handle, offset: Int(f.sndNxt &- f.sndUna))
                        return blockOnQueue(i, &f)
                    }
                    advanceSent(&f, by: UInt32(chunk))
                    off += chunk
                }
                if f.ackPending { counters.count(.tcpAcksFolded) }
                f.ackPending = false
                armRTO(&f, now: now)
                // A short peek may have stopped at a FIN or a reset that came with the data (no further edge
                // will announce them): peek once more, which says EOF, reset or EAGAIN. With SO_PEEK_OFF and no
                // hang-up reported for this socket yet, a short peek means it is drained: anything that arrives
                // later (a FIN included) raises a new edge, so the extra peek could only say EAGAIN.
                if n < want && host.tcpDrainedPeekIsFinal && !f.peerMayHaveClosed {
                    f.hostDataPending = false
                    return
                }
            case .endOfStream:
                f.events.insert(.hostFin)
                f.finSeq = f.sndNxt
            case .wouldBlock:
                f.hostDataPending = false
                return
            case .reset, .failed:
                return resetFlow(i, &f)
            }
        }
    }

    /// Room in the guest queue that host TCP data leaves free: 1/16 of it, at most 64 KiB.
    var guestQueueHeadroom: Int { min(toGuest.capacity / 16, 64 * 1024) }

    func blockOnQueue(_ i: Int, _ f: inout TCPFlow) {
        guard !f.queueBlocked else { return }
        f.queueBlocked = true
        tcpEngine.queueBlocked.append(i)
    }

    /// Lets flows that were waiting for room in the guest queue continue. Call after draining the queue.
    public func resumeFlowsBlockedOnQueue(now: Instant) {
        guard !tcpEngine.queueBlocked.isEmpty else { return }
        // Flows that block again are appended behind the ones still waiting; each waiting flow gets one turn.
        let waiting = tcpEngine.queueBlocked.count
        var served = 0
        while served < waiting, toGuest.freeSpace > toGuest.capacity / 4 {
            let i = tcpEngine.queueBlocked[served]
            served += 1
            guard var f = tcpEngine.flows[i] else { continue }
            f.queueBlocked = false
            pushHostData(i, &f, now: now)
            if tcpEngine.flows[i] != nil { tcpEngine.flows[i] = f }
        }
        tcpEngine.queueBlocked.removeFirst(served)
    }

    @inline(__always) func advanceSent(_ f: inout TCPFlow, by n: UInt32) {
        f.sndNxt &+= n
        if seqLT(f.sndMax, f.sndNxt) { f.sndMax = f.sndNxt }
    }

    func tcpReadable(_ i: Int, now: Instant, peerClosing: Bool = true) {
        guard var f = tcpEngine.flows[i] else { return }
        f.lastActive = now
        f.hostDataPending = true
        if peerClosing { f.peerMayHaveClosed = true }
        pushHostData(i, &f, now: now)
        if tcpEngine.flows[i] != nil { tcpEngine.flows[i] = f }
    }

    func tcpWritable(_ i: Int, now: Instant) {
        guard var f = tcpEngine.flows[i] else { return }
        switch f.state {
        case .connecting:
            let err = host.tcpConnectError(f.handle)
            guard err == 0 else {
                counters.count(.tcpConnectRefused)
                // RFC 9293: refuse the guest's SYN with <SEQ=0><ACK=SYN+1><CTL=RST,ACK>.
                emitSegment(&f, flags: [.rst, .ack], sequence: 0, payload: nil, window: 0)
                host.close(f.handle)
                forgetTCPFlow(f)
                return
            }
            sendSynAck(&f)
            f.events.insert(.synAckSent)
            f.rtoDeadline = .zero
            armRTO(&f, now: now)
            host.tcpSetInterest(f.handle, tag: FlowTag(kind: .tcp, index: i), readable: false, writable: false)
        case .synAckSent, .synSent:
            break
        case .established:
            // Space freed in the host socket: send a window update once it is worth one (at least an MSS);
            // until then stay armed (and watched by the 1 ms timer).
            sendWindowUpdateIfOpen(i, &f)
        }
        tcpEngine.flows[i] = f
    }

    /// Our SYN-ACK to the guest's SYN: window scale only when the guest offered it (RFC 7323 §2.2).
    func sendSynAck(_ f: inout TCPFlow) { sendHandshake(&f, flags: [.syn, .ack], acknowledgment: f.rcvNxt) }

    func sendHandshake(_ f: inout TCPFlow, flags: TCPFlags, acknowledgment: UInt32) {
        let h = TCPHeader(sourcePort: f.key.destinationPort, destinationPort: f.key.guestPort, sequence: f.iss, acknowledgment: acknowledgment,
                          // RFC 7323 §2.2: the window field of a SYN segment is never scaled.
                          flags: flags, window: UInt16(min(65535, max(0, host.tcpSendSpace(f.handle)))),
                          maxSegmentSize: UInt16(clamping: maximumSegmentSize(f.key)),
                          windowScale: f.guestWScale > 0 || f.ourWScale > 0 ? f.ourWScale : nil)
        let len = h.emittedLength
        let pseudo = InternetChecksum.pseudoHeader(source: f.key.destination, destination: f.key.guestAddress, protocolNumber: 6, length: len)
        emitIP(to: f.guestMAC, source: f.key.destination, destination: f.key.guestAddress, protocolNumber: .tcp, l4Length: len) { out in
            h.emit(into: out, segmentLength: len, pseudoHeader: pseudo)
        }
        f.sndNxt = f.iss &+ 1
        f.sndMax = f.sndNxt
    }

    /// Builds one segment for the flow (ACK always carries rcvNxt). Returns false if the queue was full.
    @discardableResult
    func emitSegment(_ f: inout TCPFlow, flags: TCPFlags, sequence: UInt32, payload: UnsafeRawBufferPointer?, window: UInt16? = nil) -> Bool {
        let win = window ?? advertisedWindow(&f)
        let h = TCPHeader(sourcePort: f.key.destinationPort, destinationPort: f.key.guestPort, sequence: sequence,
                          acknowledgment: flags.contains(.ack) ? f.rcvNxt : 0, flags: flags, window: win)
        let n = payload?.count ?? 0
        let len = 20 + n
        let src = f.key.destination, dst = f.key.guestAddress
        let pseudo = InternetChecksum.pseudoHeader(source: src, destination: dst, protocolNumber: 6, length: len)
        guard config.guestOffloads else {
            return emitIP(to: f.guestMAC, source: src, destination: dst, protocolNumber: .tcp, l4Length: len) { out in
                if let p = payload, n > 0 { out.copy(p, to: 20) }
                h.emit(into: out, segmentLength: len, pseudoHeader: pseudo)
            }
        }
        // Offloaded: the checksum is left partial for the kernel, and a segment longer than the MSS is cut there.
        let ipHeader = dst.isIPv4 ? 20 : 40
        let offload = VirtioNetHeader(flags: .needsChecksum, segmentation: n > f.mss ? (dst.isIPv4 ? .tcpv4 : .tcpv6) : .unsegmented,
                                      headerLength: UInt16(14 + ipHeader + 20),
                                      segmentSize: n > f.mss ? UInt16(f.mss) : 0, checksumStart: UInt16(14 + ipHeader), checksumOffset: 16)
        let queued = emitIP(to: f.guestMAC, source: src, destination: dst, protocolNumber: .tcp, l4Length: len, offload: offload) { out in
            if let p = payload, n > 0 { out.copy(p, to: 20) }
            h.emit(into: out, segmentLength: len, pseudoHeader: pseudo, partialChecksum: true)
        }
        if queued && n > f.mss { counters.count(.tcpSuperSegmentsToGuest) }
        return queued
    }

    /// The payload of one super-segment: as many whole MSS-sized pieces as an IPv4 datagram holds.
    /// (IPv4's total length counts its header; IPv6's payload length does not.)
    @inline(__always) func superSegmentPayload(mss: Int, ipv4: Bool = true) -> Int {
        max(mss, (65_535 - (ipv4 ? 40 : 20)) / mss * mss)
    }

    /// The largest segment payload the MTU carries for this flow's family (IPv6's header is 20 bytes longer).
    @inline(__always) func maximumSegmentSize(_ key: TCPFlowKey) -> Int {
        config.mtu - (key.guestAddress.isIPv4 ? 40 : 60)
    }

    /// How a hostfwd client appears to the guest: loopback (or another family than the guest's) as the
    /// gateway, everyone else with their own address.
    func forwardFacingAddress(client: IPAddress, guest: IPAddress) -> IPAddress {
        if client.isLoopback || client.isUnspecified || client.isIPv4 != guest.isIPv4 { return config.gatewayAddress(sameFamilyAs: guest) }
        return client
    }

    /// A RST answering a segment that has no flow (RFC 9293 §3.10.7.1).
    func sendReset(answering tcp: TCPHeader, payloadLength: Int, key: TCPFlowKey, mac: MACAddress) {
        guard !tcp.flags.contains(.rst) else { return }
        var segLen = UInt32(payloadLength)
        if tcp.flags.contains(.syn) { segLen &+= 1 }
        if tcp.flags.contains(.fin) { segLen &+= 1 }
        let reply: TCPHeader
        if tcp.flags.contains(.ack) {
            reply = TCPHeader(sourcePort: tcp.destinationPort, destinationPort: tcp.sourcePort, sequence: tcp.acknowledgment,
                              acknowledgment: 0, flags: .rst, window: 0)
        } else {
            reply = TCPHeader(sourcePort: tcp.destinationPort, destinationPort: tcp.sourcePort, sequence: 0,
                              acknowledgment: tcp.sequence &+ segLen, flags: [.rst, .ack], window: 0)
        }
        counters.count(.tcpResetsToGuest)
        let pseudo = InternetChecksum.pseudoHeader(source: key.destination, destination: key.guestAddress, protocolNumber: 6, length: 20)
        emitIP(to: mac, source: key.destination, destination: key.guestAddress, protocolNumber: .tcp, l4Length: 20) { l4 in
            reply.emit(into: l4, segmentLength: 20, pseudoHeader: pseudo)
        }
    }

    func resetFlow(_ i: Int, _ f: inout TCPFlow) {
        counters.count(.tcpResetsToGuest)
        emitSegment(&f, flags: [.rst, .ack], sequence: f.sndNxt, payload: nil, window: 0)
        host.tcpAbort(f.handle)
        forgetTCPFlow(f)
    }

    func closeFlow(_ i: Int, _ f: inout TCPFlow) {
        counters.count(.tcpFlowsClosed)
        host.close(f.handle)
        forgetTCPFlow(f)
    }

    /// Starts the retransmission timer if it is not running.
    func armRTO(_ f: inout TCPFlow, now: Instant) {
        guard f.rtoDeadline == .zero else { return }
        f.rtoDeadline = now + f.rto
        noteTCPDeadline(f.rtoDeadline)
    }

    /// Go-back-N after a timeout: everything from sndUna is sent again.
    func retransmit(_ f: inout TCPFlow, now: Instant) {
        counters.count(.tcpRetransmits)
        congestionLoss(&f, timeout: true)
        host.tcpSetPeekOffset(f.handle, offset: 0)
        f.recover = f.sndMax
        f.sndNxt = f.sndUna
        f.dupAcks = 0
        f.hostDataPending = true
    }

    /// Fast retransmit (RFC 5681 §3.2): only the first unacknowledged segment goes again.
    func fastRetransmit(_ f: inout TCPFlow) {
        counters.count(.tcpRetransmits)
        congestionLoss(&f, timeout: false)
        f.recover = f.sndMax
        resendFirstSegment(&f)
    }

    /// The first unacknowledged segment (or our FIN) again; the peek offset is restored to sndNxt.
    func resendFirstSegment(_ f: inout TCPFlow) {
        if f.hostEOF && f.sndUna == f.finSeq {
            emitSegment(&f, flags: [.fin, .ack], sequence: f.finSeq, payload: nil)
            return
        }
        host.tcpSetPeekOffset(f.handle, offset: 0)
        var want = min(f.mss, tcpPeekBuffer.count)
        if f.hostEOF { want = min(want, Int(f.finSeq &- f.sndUna)) }
        if case .done(let n) = host.tcpPeek(f.handle, into: tcpPeekBuffer.slice(0 ..< want)) {
            emitSegment(&f, flags: .ack, sequence: f.sndUna, payload: UnsafeRawBufferPointer(tcpPeekBuffer.slice(0 ..< n)))
        }
        host.tcpSetPeekOffset(f.handle, offset: Int(f.sndNxt &- f.sndUna))
    }

    // MARK: Timers

    /// RTO, window probes and idle timeouts. Runs when the earliest deadline has passed.
    func tcpTimers(now: Instant) {
        guard now >= tcpEngine.nextDeadline else { return }
        var next = now + .seconds(1)
        for i in tcpEngine.flows.activeIndices {
            guard var f = tcpEngine.flows[i] else { continue }
            let idle = now - f.lastActive
            let limit: Instant.Duration
            switch f.state {
            case .connecting, .synAckSent, .synSent: limit = TCPTiming.connectTimeout
            case .established: limit = (f.guestFinReceived || f.finSent) ? TCPTiming.closingTimeout : config.tcpIdleTimeout
            }
            if idle >= limit {
                counters.count(.tcpFlowsExpired)
                if f.state == .connecting { host.close(f.handle); forgetTCPFlow(f) } else { resetFlow(i, &f) }
                continue
            }
            if f.rtoDeadline != .zero && now >= f.rtoDeadline {
                f.retries += 1
                if f.retries > TCPTiming.maximumRetries {
                    counters.count(.tcpFlowsExpired)
                    resetFlow(i, &f)
                    continue
                }
                switch f.state {
                case .connecting:
                    f.rtoDeadline = .zero
                case .synAckSent:
                    sendSynAck(&f)
                case .synSent:
                    sendSyn(&f)
                case .established:
                    if f.inFlight > 0 {
                        retransmit(&f, now: now)
                        tcpEngine.flows[i] = f
                        pushHostData(i, &f, now: now)
                        guard tcpEngine.flows[i] != nil else { continue }
                    } else {
                        // Zero-window probe (RFC 9293 §3.8.6.1): an ACK below the window makes the guest restate it.
                        emitSegment(&f, flags: .ack, sequence: f.sndUna &- 1, payload: nil)
                    }
                }
                f.rto = min(Instant.Duration(nanoseconds: f.rto.nanoseconds * 2), TCPTiming.maximumRTO)
                f.rtoDeadline = now + f.rto
            }
            if f.rtoDeadline != .zero && f.rtoDeadline < next { next = f.rtoDeadline }
            tcpEngine.flows[i] = f
        }
        tcpEngine.nextDeadline = next
    }

    /// Wakes the timers early (a new deadline may be sooner than the scheduled scan).
    func noteTCPDeadline(_ d: Instant) { if d < tcpEngine.nextDeadline { tcpEngine.nextDeadline = d } }
}
