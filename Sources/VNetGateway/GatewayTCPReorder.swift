// Guest TCP data that arrived ahead of a hole, held until the hole is filled (a bounded reassembly queue).
//
// Theory of Operation
// -------------------
// The gateway writes guest data to the host socket in order and acknowledges only what the socket took
// (GatewayTCP.swift), so a segment that arrives ahead of `rcvNxt` cannot be written yet. TAPs and streams never
// reorder, but a VXLAN uplink does: a veth delivers each datagram on the CPU that sent it, two CPUs' backlogs
// race, and segments arrive out of order although none was lost. Dropping them makes the guest send the whole
// tail of its window again, one hole per round trip. So out-of-order data inside the window we advertised is
// copied here, and once in-order data reaches it, it goes to the socket like any in-order data.
//
// Memory is fixed when the gateway starts (`GatewayConfig.tcpReorderSlots`): a pool of slots of `slotSize`
// bytes, a free stack of slot numbers, and per TCP flow table index a sorted singly linked list of the slots it
// holds. Each slot holds one range of sequence space (sequence, first byte's offset in the slot, length); the
// ranges of one flow never overlap and are kept in sequence order. Keeping a segment walks its flow's list
// (at most `perFlowLimit` entries): bytes some range already holds are skipped (the copy we have is kept, the
// duplicate dropped), bytes in a gap take new slots, a segment longer than a slot (a super-segment, a jumbo MTU)
// takes several. Nothing is allocated per packet.
//
// Sizes: a slot of 2 KiB holds the payload of a full-size segment of a 1500-byte MTU (1460 bytes), the MTU a
// VXLAN or other reordering uplink carries, with little waste. 1024 slots (2 MiB of pool, only touched where
// used) and 256 per flow (512 KiB: a round trip's worth of a fast flow after a hole, which a veth reorders by a
// few dozen segments at most) let four flows reorder at their cap at once; when a cap is reached, further data
// is dropped (`drop_tcp_out_of_order`) and the guest sends it again, as it did before this store existed.
//
// What is held and what is not: only bytes between the in-order point and the furthest right edge of a window
// we advertised (`advertisedEdge`; at least 64 KiB past `rcvNxt`); data beyond it is dropped, as is any once the
// guest's FIN was taken. A FIN, SYN or RST is never
// held: a FIN segment that arrives out of order leaves its data here and its FIN is dropped; the guest sends
// the FIN again once its data is acknowledged (in order, it is then taken at once). SYN and RST never reach the
// data step. Held data is never acknowledged (no SACK): the guest still sees a duplicate ACK for each batch,
// which triggers its fast retransmit of the hole.
//
// Delivery: whenever in-order data advanced `rcvNxt` (a direct send, or the gather batch's flush in
// GatewayTCPBatch.swift, which is where `rcvNxt` moves for held frames), `sendHeldContinuation` frees the ranges
// now below `rcvNxt`, trims one that straddles it, and sends the ranges that continue the stream with one
// gather send; `rcvNxt` advances by what the socket took, and only that is freed. A part the socket refused
// stays held (its slot trimmed to the untaken bytes): the guest retransmits it after the window update, the
// retransmission is sent in order, and the held copy is then below `rcvNxt` and freed.
//
// A flow that goes away (`forgetTCPFlow`: reset, close, expiry, guest gone) releases its slots; a gateway reset
// empties the store.

import VNetWire

/// Byte counts of one `keep`: held now, already held (or already in order), and refused (over a cap or
/// outside the window).
struct TCPReorderOutcome: Equatable {
    var kept = 0
    var duplicate = 0
    var refused = 0
}

/// The preallocated out-of-order store of the TCP engine (see the header of this file).
final class TCPReorderStore {
    static let slotSize = 2048
    /// The most parts one gather send of held data takes (the same as the gather batch's).
    static let sendPartsCapacity = GuestSendBatch.capacity

    let slotCount: Int
    let flowCapacity: Int
    let perFlowLimit: Int

    private let pool: UnsafeMutableRawPointer
    private let slotSequence: UnsafeMutablePointer<UInt32>
    private let slotStart: UnsafeMutablePointer<UInt16>
    private let slotLength: UnsafeMutablePointer<UInt16>
    /// The next slot of the same flow, in sequence order, or -1.
    private let slotNext: UnsafeMutablePointer<Int32>
    private let freeSlots: UnsafeMutablePointer<Int32>
    private(set) var freeCount: Int
    /// Per flow table index: its first slot (or -1) and how many slots it holds.
    private let flowHead: UnsafeMutablePointer<Int32>
    private let flowSlots: UnsafeMutablePointer<Int32>
    private let sendParts: UnsafeMutablePointer<UnsafeRawBufferPointer>
    /// Bytes held, all flows.
    private(set) var heldBytes = 0

    init(slots: Int, perFlow: Int, flowCapacity: Int) {
        slotCount = max(0, slots)
        perFlowLimit = max(0, min(perFlow, slotCount))
        self.flowCapacity = max(1, flowCapacity)
        pool = .allocate(byteCount: max(1, slotCount) * TCPReorderStore.slotSize, alignment: 16)
        slotSequence = .allocate(capacity: max(1, slotCount))
        slotStart = .allocate(capacity: max(1, slotCount))
        slotLength = .allocate(capacity: max(1, slotCount))
        slotNext = .allocate(capacity: max(1, slotCount))
        freeSlots = .allocate(capacity: max(1, slotCount))
        flowHead = .allocate(capacity: self.flowCapacity)
        flowSlots = .allocate(capacity: self.flowCapacity)
        sendParts = .allocate(capacity: TCPReorderStore.sendPartsCapacity)
        sendParts.initialize(repeating: UnsafeRawBufferPointer(start: nil, count: 0), count: TCPReorderStore.sendPartsCapacity)
        slotSequence.initialize(repeating: 0, count: max(1, slotCount))
        slotStart.initialize(repeating: 0, count: max(1, slotCount))
        slotLength.initialize(repeating: 0, count: max(1, slotCount))
        slotNext.initialize(repeating: -1, count: max(1, slotCount))
        freeSlots.initialize(repeating: 0, count: max(1, slotCount))
        flowHead.initialize(repeating: -1, count: self.flowCapacity)
        flowSlots.initialize(repeating: 0, count: self.flowCapacity)
        freeCount = 0
        reset()
    }

    deinit {
        pool.deallocate()
        slotSequence.deallocate()
        slotStart.deallocate()
        slotLength.deallocate()
        slotNext.deallocate()
        freeSlots.deallocate()
        flowHead.deallocate()
        flowSlots.deallocate()
        sendParts.deallocate()
    }

    /// Empties the store (every flow's list, the free stack in its initial order); keeps the memory.
    func reset() {
        for s in 0 ..< slotCount { freeSlots[s] = Int32(slotCount - 1 - s) }
        freeCount = slotCount
        for i in 0 ..< flowCapacity where flowHead[i] != -1 || flowSlots[i] != 0 {
            flowHead[i] = -1
            flowSlots[i] = 0
        }
        heldBytes = 0
    }

    /// Slots in use, all flows.
    var heldRanges: Int { slotCount - freeCount }
    /// Slots flow `i` holds.
    @inline(__always) func heldRanges(flow i: Int) -> Int { i >= 0 && i < flowCapacity ? Int(flowSlots[i]) : 0 }
    /// The ranges flow `i` holds, in sequence order (for tests and the control plane).
    func ranges(flow i: Int) -> [(sequence: UInt32, length: Int)] {
        var out: [(UInt32, Int)] = []
        var s = heldRanges(flow: i) > 0 ? flowHead[i] : -1
        while s >= 0 {
            out.append((slotSequence[Int(s)], Int(slotLength[Int(s)])))
            s = slotNext[Int(s)]
        }
        return out
    }

    @inline(__always) private func end(_ s: Int32) -> UInt32 { slotSequence[Int(s)] &+ UInt32(slotLength[Int(s)]) }

    /// Holds the bytes of `data` (sequence numbers from `sequence`) that lie after `inOrder` and before
    /// `windowEnd` and that flow `i` does not hold yet, as far as the caps allow.
    func keep(flow i: Int, sequence: UInt32, _ data: UnsafeRawBufferPointer, after inOrder: UInt32, windowEnd: UInt32) -> TCPReorderOutcome {
        var outcome = TCPReorderOutcome()
        guard i >= 0, i < flowCapacity, !data.isEmpty else { return outcome }
        var seq = sequence
        var bytes = data
        if seqLT(seq, inOrder) {
            let skip = min(bytes.count, Int(inOrder &- seq))
            outcome.duplicate += skip
            bytes = bytes.slice(skip ..< bytes.count)
            seq = inOrder
        }
        // The right edge of the window: what lies beyond it is refused.
        if !seqLT(seq, windowEnd) {
            outcome.refused += bytes.count
            return outcome
        }
        let room = Int(windowEnd &- seq)
        if bytes.count > room {
            outcome.refused += bytes.count - room
            bytes = bytes.slice(0 ..< room)
        }
        var previous: Int32 = -1
        var current = flowHead[i]
        while !bytes.isEmpty {
            if current < 0 || seqLE(seq &+ UInt32(bytes.count), slotSequence[Int(current)]) {
                // The rest lies before `current` (or after every range): it fills a gap.
                let n = insert(flow: i, after: &previous, before: current, sequence: seq, bytes)
                outcome.kept += n
                outcome.refused += bytes.count - n
                return outcome
            }
            let currentEnd = end(current)
            if seqLE(currentEnd, seq) {
                previous = current
                current = slotNext[Int(current)]
                continue
            }
            if seqLT(seq, slotSequence[Int(current)]) {
                // The part before `current` fills a gap; the part `current` overlaps is already held.
                let gap = Int(slotSequence[Int(current)] &- seq)
                let n = insert(flow: i, after: &previous, before: current, sequence: seq, bytes.slice(0 ..< gap))
                outcome.kept += n
                if n < gap {
                    outcome.refused += bytes.count - n
                    return outcome
                }
                bytes = bytes.slice(gap ..< bytes.count)
                seq &+= UInt32(gap)
            }
            let overlap = min(bytes.count, Int(currentEnd &- seq))
            outcome.duplicate += overlap
            bytes = bytes.slice(overlap ..< bytes.count)
            seq &+= UInt32(overlap)
            previous = current
            current = slotNext[Int(current)]
        }
        return outcome
    }

    /// Copies `bytes` into new slots linked between `previous` (-1: the head) and `next`, one slot per
    /// `slotSize` bytes, while the caps allow. Returns the bytes copied; `previous` ends at the last new slot.
    private func insert(flow i: Int, after previous: inout Int32, before next: Int32, sequence: UInt32, _ bytes: UnsafeRawBufferPointer) -> Int {
        var copied = 0
        while copied < bytes.count {
            guard freeCount > 0, Int(flowSlots[i]) < perFlowLimit else { break }
            freeCount -= 1
            let s = freeSlots[freeCount]
            let n = min(TCPReorderStore.slotSize, bytes.count - copied)
            (pool + Int(s) * TCPReorderStore.slotSize).copyMemory(from: bytes.baseAddress! + copied, byteCount: n)
            slotSequence[Int(s)] = sequence &+ UInt32(copied)
            slotStart[Int(s)] = 0
            slotLength[Int(s)] = UInt16(n)
            slotNext[Int(s)] = next
            if previous < 0 { flowHead[i] = s } else { slotNext[Int(previous)] = s }
            previous = s
            flowSlots[i] += 1
            heldBytes += n
            copied += n
        }
        return copied
    }

    /// Frees the first slot of flow `i`.
    private func freeHead(flow i: Int) {
        let s = flowHead[i]
        flowHead[i] = slotNext[Int(s)]
        slotNext[Int(s)] = -1
        flowSlots[i] -= 1
        heldBytes -= Int(slotLength[Int(s)])
        freeSlots[freeCount] = s
        freeCount += 1
    }

    /// Drops the first `n` bytes of slot `s` (the head of its flow).
    private func trimFront(_ s: Int32, by n: Int) {
        slotStart[Int(s)] += UInt16(n)
        slotLength[Int(s)] -= UInt16(n)
        slotSequence[Int(s)] &+= UInt32(n)
        heldBytes -= n
    }

    /// The held bytes of flow `i` that continue the stream at `inOrder`, as parts of one gather send (up to
    /// `sendPartsCapacity`). Ranges wholly before `inOrder` are freed first and one straddling it is trimmed.
    /// The parts stay valid until the next call that changes the store.
    func continuation(flow i: Int, at inOrder: UInt32) -> UnsafeBufferPointer<UnsafeRawBufferPointer> {
        guard heldRanges(flow: i) > 0 else { return UnsafeBufferPointer(start: sendParts, count: 0) }
        while flowHead[i] >= 0 {
            let s = flowHead[i]
            if seqLE(end(s), inOrder) { freeHead(flow: i); continue }
            if seqLT(slotSequence[Int(s)], inOrder) { trimFront(s, by: Int(inOrder &- slotSequence[Int(s)])) }
            break
        }
        var count = 0
        var s = flowHead[i]
        var expected = inOrder
        while s >= 0, count < TCPReorderStore.sendPartsCapacity, slotSequence[Int(s)] == expected {
            sendParts[count] = UnsafeRawBufferPointer(start: pool + Int(s) * TCPReorderStore.slotSize + Int(slotStart[Int(s)]),
                                                      count: Int(slotLength[Int(s)]))
            count += 1
            expected = end(s)
            s = slotNext[Int(s)]
        }
        return UnsafeBufferPointer(start: sendParts, count: count)
    }

    /// The socket took the first `n` bytes of the continuation: frees them (a slot taken in part keeps the rest).
    func consume(flow i: Int, bytes n: Int) {
        var left = n
        while left > 0, heldRanges(flow: i) > 0 {
            let s = flowHead[i]
            let length = Int(slotLength[Int(s)])
            if left >= length {
                left -= length
                freeHead(flow: i)
            } else {
                trimFront(s, by: left)
                left = 0
            }
        }
    }

    /// Frees every slot flow `i` holds (the flow is freed, reset, or its FIN was taken).
    func release(flow i: Int) {
        guard i >= 0, i < flowCapacity else { return }
        while flowHead[i] >= 0 { freeHead(flow: i) }
    }
}

extension TCPFlow {
    /// The largest window our scale can say (8 MiB): held data never lies further than this past `rcvNxt`, so
    /// sequence comparisons stay far from 2^31.
    static let largestWindow = UInt32(65535) << UInt32(TCPTiming.ourWindowScale)

    /// The right edge of the window we advertised: the furthest one since (the guest may fill a window that
    /// shrank since), and at least 64 KiB past `rcvNxt` (what our SYN-ACK may have offered, and the RST check's
    /// reading).
    var receiveWindowEnd: UInt32 {
        let floor = rcvNxt &+ 65535
        let ahead = advertisedEdge &- rcvNxt
        return ahead > 65535 && ahead <= TCPFlow.largestWindow ? advertisedEdge : floor
    }
}

extension Gateway {
    /// Called with each window we advertise (`advertisedWindow`): moves `advertisedEdge` forward, never back.
    @inline(__always) func noteAdvertisedEdge(_ f: inout TCPFlow) {
        let edge = f.rcvNxt &+ min(f.lastAdvertised, UInt32(65535) << UInt32(f.ourWScale))
        if seqLT(f.advertisedEdge, edge) || f.advertisedEdge &- f.rcvNxt > TCPFlow.largestWindow { f.advertisedEdge = edge }
    }
}

extension Gateway {
    /// An out-of-order data segment of flow `i` (after `inOrder`: `rcvNxt`, or the end of its gathered data):
    /// what fits in the window and the store is copied there; counted as kept, and as dropped when some new
    /// byte could not be kept. The caller owes the guest its duplicate ACK either way.
    func keepOutOfOrder(_ i: Int, _ f: inout TCPFlow, sequence: UInt32, _ data: UnsafeRawBufferPointer, after inOrder: UInt32) {
        let outcome = tcpEngine.reorder.keep(flow: i, sequence: sequence, data, after: inOrder, windowEnd: f.receiveWindowEnd)
        if outcome.kept > 0 { counters.count(.tcpOutOfOrderKept) }
        if outcome.refused > 0 { drop(.tcpOutOfOrder) }
    }

    /// `rcvNxt` advanced: sends the held data that now continues the stream, as far as the socket takes it, and
    /// acknowledges what it took. False when the socket failed (the caller resets the flow).
    func sendHeldContinuation(_ i: Int, _ f: inout TCPFlow) -> Bool {
        while tcpEngine.reorder.heldRanges(flow: i) > 0 {
            let parts = tcpEngine.reorder.continuation(flow: i, at: f.rcvNxt)
            guard !parts.isEmpty else { return true }
            let total = parts.reduce(0) { $0 + $1.count }
            switch host.tcpSendGather(f.handle, parts) {
            case .done(let n):
                tcpEngine.reorder.consume(flow: i, bytes: n)
                f.rcvNxt &+= UInt32(n)
                f.writtenSinceMeasure += n
                markAckPending(i, &f)
                guard n == total else {
                    counters.count(.tcpSendsRefused)
                    waitForSendSpace(i, &f)
                    return true
                }
            case .wouldBlock:
                counters.count(.tcpSendsRefused)
                waitForSendSpace(i, &f)
                return true
            case .reset, .failed, .endOfStream:
                return false
            }
        }
        return true
    }
}
