// Guest TCP data gathered across the frames of one read of a stream guest port, sent with one sendmsg.
//
// Theory of Operation
// -------------------
// A QEMU guest on `-netdev stream` without offloads sends MSS-sized segments; one read of the port brings
// dozens of them, mostly in order for one flow. Sending each to its host socket costs a syscall and, worse,
// a trip through the kernel's TCP output and loopback per 1448 bytes (the profile of a TCG guest put 60 % of
// vnet's CPU there). So while a frame is "held" (the runtime promises its bytes stay in place until it calls
// `flushGuestSends`, i.e. until the next read of the port), an in-order data segment is not sent at once:
// its payload joins `GuestSendBatch`, a list of pointers into the held frames, for one flow at a time. The
// batch goes out with one gather send when
//   - the runtime flushes it (before the port's next read, and after the last one),
//   - a segment of another flow gathers data,
//   - a segment of the same flow is anything but the next in-order data (FIN, RST, SYN, a gap, a pure ACK
//     that is not behind the batch: all of those see the flow as if the batch had been sent already),
//   - the batch is full (`GuestSendBatch.capacity` parts or `byteLimit` bytes).
// Nothing is acknowledged before it was sent: `rcvNxt` moves at the flush, by what the socket took, and the
// ACK the guest gets (flushPendingAcks, after the flush) says exactly that. What the socket refused is
// dropped as before (the guest retransmits it once the window update comes). Out-of-order data held for the
// flow (GatewayTCPReorder.swift) that the batch reaches is sent right after it. A flow freed while it has a
// batch (its fd may be reused by the next flow) drops the batch. Frames that are not held (TAP, datagram,
// the switch, reassembled fragments) are sent at once, as before.

import VNetBuffers
import VNetWire

/// Up to `capacity` byte ranges of one flow's in-order guest data, waiting for one gather send.
struct GuestSendBatch {
    static let capacity = 128
    /// The socket's send buffer caps what one send takes anyway; this keeps a failed send's loss bounded.
    static let byteLimit = 1 << 20
    /// The flow slot the parts belong to, or -1.
    var flow = -1
    var handle: Int32 = -1
    /// The sequence number the next gathered segment must carry (rcvNxt plus the gathered bytes).
    var nextSequence: UInt32 = 0
    var bytes = 0
    var count = 0
    let parts: UnsafeMutableBufferPointer<UnsafeRawBufferPointer>

    init() {
        parts = .allocate(capacity: GuestSendBatch.capacity)
        parts.initialize(repeating: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    var isFull: Bool { count == GuestSendBatch.capacity || bytes >= GuestSendBatch.byteLimit }

    mutating func reset() {
        flow = -1
        handle = -1
        bytes = 0
        count = 0
    }
}

extension Gateway {
    /// Sends the gathered guest data (and datagrams: GatewayUDPBatch.swift), if any. The runtime calls this before it reuses the memory of frames it
    /// passed as held (`handleGuestFrame(_:now:checksumPartial:held:)`), and before `flushPendingAcks`.
    public func flushGuestSends() {
        flushGuestDatagrams()
        let i = tcpEngine.sendBatch.flow
        guard i >= 0 else { return }
        guard var f = tcpEngine.flows[i] else { return tcpEngine.sendBatch.reset() }
        sendGuestBatch(i, &f)
        if tcpEngine.flows[i] != nil { tcpEngine.flows[i] = f }
    }

    /// True when `data` lies inside the frame being handled and that frame is held until the next flush.
    @inline(__always) func guestDataIsHeld(_ data: UnsafeRawBufferPointer) -> Bool {
        guard let base = heldGuestFrame.baseAddress, let start = data.baseAddress else { return false }
        return start >= base && start + data.count <= base + heldGuestFrame.count
    }

    /// Adds in-order data of flow `i` (at `tcpEngine.sendBatch.nextSequence`, or at `rcvNxt` for a new batch).
    /// A batch of another flow is sent first. Returns false when the flow was reset by a failed send.
    func gatherGuestData(_ i: Int, _ f: inout TCPFlow, _ data: UnsafeRawBufferPointer) -> Bool {
        if tcpEngine.sendBatch.flow != i {
            flushGuestSends()
            tcpEngine.sendBatch.flow = i
            tcpEngine.sendBatch.handle = f.handle
            tcpEngine.sendBatch.nextSequence = f.rcvNxt
        }
        tcpEngine.sendBatch.parts[tcpEngine.sendBatch.count] = data
        tcpEngine.sendBatch.count += 1
        tcpEngine.sendBatch.bytes += data.count
        tcpEngine.sendBatch.nextSequence &+= UInt32(data.count)
        markAckPending(i, &f)
        if tcpEngine.sendBatch.isFull {
            sendGuestBatch(i, &f)
            return tcpEngine.flows[i] != nil
        }
        return true
    }

    /// One gather send of flow `i`'s batch; `rcvNxt` advances by what the socket took.
    func sendGuestBatch(_ i: Int, _ f: inout TCPFlow) {
        defer { tcpEngine.sendBatch.reset() }
        guard tcpEngine.sendBatch.flow == i, tcpEngine.sendBatch.count > 0, f.handle == tcpEngine.sendBatch.handle,
              f.isEstablished, !f.guestFinReceived else { return }
        let parts = UnsafeBufferPointer(rebasing: tcpEngine.sendBatch.parts[0 ..< tcpEngine.sendBatch.count])
        if parts.count > 1 { counters.count(.tcpGatheredSends) }
        switch host.tcpSendGather(f.handle, parts) {
        case .done(let n):
            f.rcvNxt &+= UInt32(n)
            f.writtenSinceMeasure += n
            if n < tcpEngine.sendBatch.bytes { counters.count(.tcpSendsRefused); waitForSendSpace(i, &f) }
            // Held out-of-order data the batch joined to the stream follows it (GatewayTCPReorder.swift).
            else if !sendHeldContinuation(i, &f) { resetFlow(i, &f) }
        case .wouldBlock:
            counters.count(.tcpSendsRefused)
            waitForSendSpace(i, &f)
        case .reset, .failed, .endOfStream:
            resetFlow(i, &f)
        }
    }
}
