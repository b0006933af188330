// IPv4 reassembly of guest fragments (RFC 791 §3.2, with RFC 815's hole bookkeeping at 8-byte granularity).
//
// Theory of Operation
// -------------------
// A fixed number of slots, each with its own 64 KiB buffer allocated once, holds the datagrams being
// reassembled, keyed by (source, destination, protocol, identification). A fragment is copied to its offset and
// its 8-byte blocks are marked in a bitmap; the datagram is complete when the last fragment (MF clear) has fixed
// the length and every block up to it is present. Rules for hostile input (docs/hostile-input.md, cases 11-13):
// - offset + length beyond 65535 - 20, a non-final fragment whose length is not a multiple of 8, or a
//   second "last" fragment with another length: the whole datagram is dropped;
// - an exact duplicate is ignored; a fragment that overlaps others with *different* bytes drops the whole
//   datagram (as Linux does since CVE-2018-5391), since overlapping rewrites are an evasion technique;
// - no free slot: the oldest datagram is evicted (counted), so a flood of never-finished datagrams cannot
//   starve new ones; each slot also times out after `timeout`.
// Memory is bounded by `slotCount` x 64 KiB whatever the guest sends.

import VNetBuffers
import VNetWire

struct FragmentKey: Hashable {
    var source: IPAddress
    var destination: IPAddress
    var protocolNumber: UInt8
    /// IPv4's 16-bit identification, or IPv6's 32-bit one.
    var identification: UInt32
}

final class Reassembler {
    static let maximumPayload = 65_535 - 20
    static let blockCount = (maximumPayload + 7) / 8

    struct Slot {
        var key: FragmentKey? = nil
        var deadline: Instant = .zero
        var created: Instant = .zero
        /// Payload length, once the last fragment arrived.
        var totalLength: Int? = nil
        var receivedBlocks = 0
    }

    enum Outcome {
        /// Nothing to deliver yet (or the fragment was dropped: see `lastDrop`).
        case pending
        /// The datagram is whole: its payload (valid until the next call).
        case complete(payload: UnsafeRawBufferPointer, key: FragmentKey)
    }

    enum Drop { case tooLong, badLength, overlap, evicted, timedOut }

    let slotCount: Int
    let timeout: Instant.Duration
    var slots: [Slot]
    let buffers: UnsafeMutableRawBufferPointer
    let bitmaps: UnsafeMutablePointer<UInt8>
    private(set) var drops: [Drop] = []

    init(slotCount: Int = 16, timeout: Instant.Duration = .seconds(30)) {
        self.slotCount = slotCount
        self.timeout = timeout
        slots = Array(repeating: Slot(), count: slotCount)
        buffers = .allocate(byteCount: slotCount * 65_536, alignment: 16)
        buffers.initializeMemory(as: UInt8.self, repeating: 0)
        bitmaps = .allocate(capacity: slotCount * Reassembler.blockCount)
        bitmaps.initialize(repeating: 0, count: slotCount * Reassembler.blockCount)
    }

    deinit {
        buffers.deallocate()
        bitmaps.deallocate()
    }

    /// Back to the state `init` left: every slot free, bitmaps zeroed, no drops pending. The buffers keep their
    /// bytes: nothing is read from a slot's buffer unless its bitmap marks the block as received.
    func reset() {
        for s in 0 ..< slotCount { slots[s] = Slot() }
        bitmaps.update(repeating: 0, count: slotCount * Reassembler.blockCount)
        drops.removeAll(keepingCapacity: true)
    }

    var activeCount: Int { slots.filter { $0.key != nil }.count }

    func takeDrops() -> [Drop] {
        defer { drops.removeAll(keepingCapacity: true) }
        return drops
    }

    func buffer(_ s: Int) -> UnsafeMutableRawBufferPointer { buffers.slice(s * 65_536 ..< (s + 1) * 65_536) }

    func clear(_ s: Int) {
        slots[s] = Slot()
        (bitmaps + s * Reassembler.blockCount).update(repeating: 0, count: Reassembler.blockCount)
    }

    func slot(for key: FragmentKey, now: Instant) -> Int {
        if let s = slots.firstIndex(where: { $0.key == key }) { return s }
        let s: Int
        if let free = slots.firstIndex(where: { $0.key == nil }) {
            s = free
        } else {
            s = slots.indices.min { slots[$0].created < slots[$1].created }!
            drops.append(.evicted)
            clear(s)
        }
        slots[s].key = key
        slots[s].created = now
        slots[s].deadline = now + timeout
        return s
    }

    /// Adds one fragment: `payload` is its IP payload, `offset` in bytes, `more` the MF flag.
    func add(_ payload: UnsafeRawBufferPointer, offset: Int, more: Bool, key: FragmentKey, now: Instant) -> Outcome {
        let end = offset + payload.count
        let s = slot(for: key, now: now)
        guard end <= Reassembler.maximumPayload, !payload.isEmpty || !more else { drops.append(.tooLong); clear(s); return .pending }
        if more && payload.count % 8 != 0 { drops.append(.badLength); clear(s); return .pending }
        if !more {
            if let t = slots[s].totalLength, t != end { drops.append(.badLength); clear(s); return .pending }
            slots[s].totalLength = end
        }
        if let t = slots[s].totalLength, end > t { drops.append(.badLength); clear(s); return .pending }
        let buf = buffer(s)
        let bits = bitmaps + s * Reassembler.blockCount
        let firstBlock = offset / 8
        let lastBlock = (end + 7) / 8   // exclusive
        // Overlap check: bytes already present must be identical.
        for b in firstBlock ..< lastBlock where bits[b] != 0 {
            let lo = max(b * 8, offset), hi = min(b * 8 + 8, end)
            for i in lo ..< hi where buf[i] != payload[i - offset] {
                drops.append(.overlap)
                clear(s)
                return .pending
            }
        }
        buf.copy(payload, to: offset)
        for b in firstBlock ..< lastBlock where bits[b] == 0 {
            bits[b] = 1
            slots[s].receivedBlocks += 1
        }
        guard let total = slots[s].totalLength, slots[s].receivedBlocks == (total + 7) / 8 else { return .pending }
        let done = UnsafeRawBufferPointer(buf.slice(0 ..< total))
        slots[s].key = nil   // the bytes stay valid until the slot is reused
        (bitmaps + s * Reassembler.blockCount).update(repeating: 0, count: Reassembler.blockCount)
        slots[s].totalLength = nil
        slots[s].receivedBlocks = 0
        return .complete(payload: done, key: key)
    }

    /// Drops datagrams whose time is up.
    func expire(now: Instant) {
        for s in slots.indices where slots[s].key != nil && now >= slots[s].deadline {
            drops.append(.timedOut)
            clear(s)
        }
    }
}
