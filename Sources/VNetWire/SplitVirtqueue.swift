// A split virtqueue (virtio 1.x §2.7) read and written by the device side, over guest memory the guest
// controls.
//
// Theory of Operation
// -------------------
// Three areas in guest memory: the descriptor table (16 bytes each: address, length, flags, next), the
// available ring the driver fills (flags, idx, ring[size], used_event) and the used ring the device fills
// (flags, idx, ring[size] of {id, len}, avail_event). The device keeps `lastAvailable` (the next avail entry
// it will take) and `usedIndex` (the next used entry it will write).
//
// Everything the guest wrote is hostile. `pending` reads avail.idx once and refuses a jump of more than the
// queue size past `lastAvailable` (an error the port treats as a broken queue). `nextChain` copies each
// descriptor into locals before use (the guest may rewrite it meanwhile), translates every buffer through
// the memory table with its whole length (nothing outside a region is ever touched), and bounds the walk:
// a chain visits at most `size` descriptors (a loop or a chain longer than the queue is an error), an
// indirect table must be a whole number of descriptors, at most `maximumIndirect`, inside one region, with no
// nested indirect and no NEXT beside INDIRECT, and a chain's total length may not pass `maximumChainBytes`.
// The buffers of a chain land in a fixed `VirtqueueSegments` list the caller preallocated.
//
// Used entries are written first and published with one store of used.idx after a release fence; then
// `needsNotification` (after a full fence) says whether the driver asked for an interrupt: with EVENT_IDX,
// vring_need_event(used_event, new, old); without, unless avail.flags has NO_INTERRUPT. `requestKicks` writes
// avail_event (EVENT_IDX) so the driver kicks for its next buffer. No allocation after `init`.
//
// Both suppressions are a handshake (the device stores, fences, then loads what the driver stored, and the
// driver does the same the other way) that holds only if the driver's fence is a real one. QEMU before 8.1 under
// TCG with one vCPU drops the guest's barriers, so a guest may decide on a stale avail_event or used.idx while
// vnet saw its stale avail.idx or used_event: the kick or the interrupt is lost and the ring waits for good.
// What the guest stored becomes visible moments later, so the port looks again a little after each change
// (VhostUserPort.tick): `pending` finds the buffers whose kick was lost, `unansweredRequest` the interrupt
// the driver asked for after `needsNotification` looked.

import Synchronization

public enum VirtqueueError: Error, Equatable, Sendable {
    /// avail.idx moved more than the queue size past what the device took.
    case availableIndexJump
    /// A head or next index past the table.
    case badIndex
    /// A chain visited more descriptors than the queue (or indirect table) holds: a loop or a runaway chain.
    case chainTooLong
    /// A buffer not wholly inside one memory region, or lengths that add up past the limit.
    case outsideMemory
    /// An indirect table of a bad length, outside memory, nested, or combined with NEXT.
    case badIndirect
    /// The ring areas themselves are not inside guest memory.
    case ringOutsideMemory
}

/// The buffers of one chain: pointers into guest memory, with their lengths and direction.
public final class VirtqueueSegments {
    public let capacity: Int
    public private(set) var count = 0
    let bases: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    let lengths: UnsafeMutablePointer<Int>
    let writable: UnsafeMutablePointer<Bool>
    /// Sum of the readable and of the writable lengths.
    public private(set) var readableBytes = 0
    public private(set) var writableBytes = 0

    public init(capacity: Int) {
        self.capacity = capacity
        bases = .allocate(capacity: capacity)
        lengths = .allocate(capacity: capacity)
        writable = .allocate(capacity: capacity)
    }

    deinit { bases.deallocate(); lengths.deallocate(); writable.deallocate() }

    public func removeAll() { count = 0; readableBytes = 0; writableBytes = 0 }

    @inline(__always)
    func append(_ p: UnsafeMutableRawPointer, _ n: Int, _ w: Bool) -> Bool {
        guard count < capacity else { return false }
        bases[count] = p; lengths[count] = n; writable[count] = w
        count += 1
        if w { writableBytes += n } else { readableBytes += n }
        return true
    }

    public subscript(i: Int) -> (buffer: UnsafeMutableRawBufferPointer, writable: Bool) {
        (UnsafeMutableRawBufferPointer(start: bases[i], count: lengths[i]), writable[i])
    }

    /// Copies the readable buffers, in order, into `out`; returns the bytes copied (at most `out.count`).
    public func gatherReadable(into out: UnsafeMutableRawBufferPointer) -> Int {
        var n = 0
        for i in 0 ..< count where !writable[i] {
            let take = min(lengths[i], out.count - n)
            if take <= 0 { break }
            (out.baseAddress! + n).copyMemory(from: bases[i]!, byteCount: take)
            n += take
        }
        return n
    }

    /// Copies `bytes` into the writable buffers starting `skip` bytes in; returns the bytes written.
    public func scatterWritable(_ bytes: UnsafeRawBufferPointer, skip: Int = 0) -> Int {
        var skip = skip
        var n = 0
        for i in 0 ..< count where writable[i] {
            var len = lengths[i]
            var base = bases[i]!
            if skip >= len { skip -= len; continue }
            base += skip; len -= skip; skip = 0
            let take = min(len, bytes.count - n)
            if take <= 0 { break }
            base.copyMemory(from: bytes.baseAddress! + n, byteCount: take)
            n += take
        }
        return n
    }
}

public final class SplitVirtqueue {
    public static let maximumSize = 32768
    /// Descriptors an indirect table may hold.
    public static let maximumIndirect = 1024
    /// A chain's buffers may add up to at most this (a 64 KiB super-segment and its header fit many times).
    public static let maximumChainBytes = 1 << 20

    static let descriptorNext: UInt16 = 1
    static let descriptorWrite: UInt16 = 2
    static let descriptorIndirect: UInt16 = 4
    static let availableNoInterrupt: UInt16 = 1

    public private(set) var size = 0
    var descriptors: UnsafeMutableRawPointer?
    var available: UnsafeMutableRawPointer?
    var used: UnsafeMutableRawPointer?
    public var lastAvailable: UInt16 = 0
    public var usedIndex: UInt16 = 0
    /// used.idx as last checked by `needsNotification` (the "old" of vring_need_event).
    var lastPublished: UInt16 = 0
    /// used.idx as the driver sees it (`publishUsed`), and as it was at the last notification decided.
    var publishedIndex: UInt16 = 0
    var lastNotified: UInt16 = 0
    /// What `requestKicks` last wrote to avail_event.
    public private(set) var requestedKick: UInt16 = 0
    public var eventIndex = false
    public var indirectAllowed = true

    public init() {}

    public var isReady: Bool { descriptors != nil && available != nil && used != nil && size > 0 }

    /// Points the queue at its three areas, given as QEMU virtual addresses (SET_VRING_ADDR), after checking
    /// that each lies inside `memory` with its whole length.
    public func configure(size: Int, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64,
                          memory: VhostUserMemoryTable) throws(VirtqueueError) {
        guard size > 0, size <= SplitVirtqueue.maximumSize, size & (size - 1) == 0 else { throw .ringOutsideMemory }
        guard let d = memory.userAddress(descriptorTable, length: UInt64(16 * size)),
              let a = memory.userAddress(availableRing, length: UInt64(6 + 2 * size)),
              let u = memory.userAddress(usedRing, length: UInt64(6 + 8 * size)) else {
            detach()
            throw .ringOutsideMemory
        }
        self.size = size
        descriptors = d; available = a; used = u
    }

    public func detach() { descriptors = nil; available = nil; used = nil }

    /// Chains the driver made available and the device has not taken.
    public func pending() throws(VirtqueueError) -> Int {
        guard let a = available else { return 0 }
        let idx = a.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
        atomicMemoryFence(ordering: .acquiring)
        let n = Int(idx &- lastAvailable)
        guard n <= size else { throw .availableIndexJump }
        return n
    }

    /// Takes the next available chain, its buffers into `segments`. Returns its head (the id for `pushUsed`).
    /// On an error the entry is still consumed (`lastAvailable` moves on) so one bad chain cannot wedge the
    /// queue; the caller returns it used with length 0.
    public func nextChain(memory: VhostUserMemoryTable, into segments: VirtqueueSegments) throws(VirtqueueError) -> UInt16 {
        segments.removeAll()
        guard let a = available, let d = descriptors else { throw .badIndex }
        let slot = Int(lastAvailable) & (size - 1)
        let head = a.loadUnaligned(fromByteOffset: 4 + 2 * slot, as: UInt16.self)
        lastAvailable &+= 1
        guard Int(head) < size else { throw .badIndex }
        var index = Int(head)
        var visited = 0
        var total = 0
        while true {
            visited += 1
            guard visited <= size else { throw .chainTooLong }
            let entry = d + 16 * index
            let address = entry.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
            let length = entry.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
            let flags = entry.loadUnaligned(fromByteOffset: 12, as: UInt16.self)
            let next = entry.loadUnaligned(fromByteOffset: 14, as: UInt16.self)
            if flags & SplitVirtqueue.descriptorIndirect != 0 {
                guard indirectAllowed, flags & SplitVirtqueue.descriptorNext == 0 else { throw .badIndirect }
                try walkIndirect(address: address, length: length, memory: memory, segments: segments, total: &total)
                return head
            }
            try add(address, length, flags, memory, segments, &total)
            guard flags & SplitVirtqueue.descriptorNext != 0 else { return head }
            guard Int(next) < size else { throw .badIndex }
            index = Int(next)
        }
    }

    @inline(__always)
    func add(_ address: UInt64, _ length: UInt32, _ flags: UInt16, _ memory: VhostUserMemoryTable,
             _ segments: VirtqueueSegments, _ total: inout Int) throws(VirtqueueError) {
        total += Int(length)
        guard total <= SplitVirtqueue.maximumChainBytes else { throw .outsideMemory }
        if length == 0 { return }
        guard let p = memory.guestPhysical(address, length: UInt64(length)) else { throw .outsideMemory }
        guard segments.append(p, Int(length), flags & SplitVirtqueue.descriptorWrite != 0) else { throw .chainTooLong }
    }

    func walkIndirect(address: UInt64, length: UInt32, memory: VhostUserMemoryTable, segments: VirtqueueSegments,
                      total: inout Int) throws(VirtqueueError) {
        guard length > 0, length % 16 == 0 else { throw .badIndirect }
        let count = Int(length / 16)
        guard count <= SplitVirtqueue.maximumIndirect else { throw .badIndirect }
        guard let table = memory.guestPhysical(address, length: UInt64(length)) else { throw .badIndirect }
        var index = 0
        var visited = 0
        while true {
            visited += 1
            guard visited <= count else { throw .chainTooLong }
            let entry = table + 16 * index
            let a = entry.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
            let l = entry.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
            let f = entry.loadUnaligned(fromByteOffset: 12, as: UInt16.self)
            let n = entry.loadUnaligned(fromByteOffset: 14, as: UInt16.self)
            guard f & SplitVirtqueue.descriptorIndirect == 0 else { throw .badIndirect }
            try add(a, l, f, memory, segments, &total)
            guard f & SplitVirtqueue.descriptorNext != 0 else { return }
            guard Int(n) < count else { throw .badIndirect }
            index = Int(n)
        }
    }

    /// Puts back the chain just taken (not enough buffers for a whole packet yet).
    public func unget(_ n: Int = 1) { lastAvailable &-= UInt16(truncatingIfNeeded: n) }

    /// Writes a used entry `offset` places after `usedIndex`, not yet published.
    public func writeUsed(id: UInt16, length: Int, offset: Int = 0) {
        guard let u = used else { return }
        let slot = (Int(usedIndex) + offset) & (size - 1)
        u.storeBytes(of: UInt32(id), toByteOffset: 4 + 8 * slot, as: UInt32.self)
        u.storeBytes(of: UInt32(truncatingIfNeeded: length), toByteOffset: 8 + 8 * slot, as: UInt32.self)
    }

    /// Counts `n` written used entries as done (published by `publishUsed`).
    public func advanceUsed(_ n: Int = 1) { usedIndex &+= UInt16(truncatingIfNeeded: n) }

    /// Makes the used entries visible to the driver: a release fence, then used.idx.
    public func publishUsed() {
        guard let u = used else { return }
        atomicMemoryFence(ordering: .releasing)
        u.storeBytes(of: usedIndex, toByteOffset: 2, as: UInt16.self)
        publishedIndex = usedIndex
    }

    /// Whether the driver wants an interrupt for what was published since the last call.
    public func needsNotification() -> Bool {
        guard let a = available, usedIndex != lastPublished else { return false }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let old = lastPublished
        lastPublished = usedIndex
        let wanted: Bool
        if eventIndex {
            let event = a.loadUnaligned(fromByteOffset: 4 + 2 * size, as: UInt16.self)
            wanted = SplitVirtqueue.needEvent(event: event, new: usedIndex, old: old)
        } else {
            wanted = a.loadUnaligned(fromByteOffset: 0, as: UInt16.self) & SplitVirtqueue.availableNoInterrupt == 0
        }
        if wanted { lastNotified = usedIndex }
        return wanted
    }

    /// What the driver wrote that asks now for an interrupt it did not get, or nil: with EVENT_IDX a used_event
    /// in (last notified, published] (written after `needsNotification` looked: the driver may have missed
    /// the entries), without it avail.flags with interrupts on while entries went out since the last one. The
    /// caller decides (a driver still at work moves it on) and says `markNotified` when it sends one.
    public func unansweredRequest() -> UInt16? {
        guard let a = available, publishedIndex != lastNotified else { return nil }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            let event = a.loadUnaligned(fromByteOffset: 4 + 2 * size, as: UInt16.self)
            return SplitVirtqueue.needEvent(event: event, new: publishedIndex, old: lastNotified) ? event : nil
        }
        let flags = a.loadUnaligned(fromByteOffset: 0, as: UInt16.self)
        return flags & SplitVirtqueue.availableNoInterrupt == 0 ? flags : nil
    }

    /// Counts what was published as notified (the caller signals the driver).
    public func markNotified() {
        lastNotified = publishedIndex
        lastPublished = publishedIndex
    }

    /// vring_need_event: whether `event` lies in (old, new].
    @inline(__always)
    public static func needEvent(event: UInt16, new: UInt16, old: UInt16) -> Bool {
        (new &- event &- 1) < (new &- old)
    }

    /// Asks the driver to kick when it adds its next buffer (EVENT_IDX's avail_event; without it kicks are on).
    /// `ahead`: chains already available but not taken (a receiver waiting for more than it has).
    public func requestKicks(ahead: Int = 0) {
        guard eventIndex, let u = used else { return }
        requestedKick = lastAvailable &+ UInt16(truncatingIfNeeded: ahead)
        u.storeBytes(of: requestedKick, toByteOffset: 4 + 8 * size, as: UInt16.self)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// Starts from `base` (SET_VRING_BASE): the next avail entry, and the used index (equal when the ring is
    /// (re)started: what was taken was returned).
    public func reset(base: UInt16) {
        lastAvailable = base
        usedIndex = base
        lastPublished = base
        publishedIndex = base
        lastNotified = base
        requestedKick = base
    }
}

/// The virtio-net header as a vhost-user device sees it: 12 bytes with VERSION_1 or MRG_RXBUF (the 10-byte
/// `VirtioNetHeader` then `num_buffers`, little-endian), else 10.
public enum VirtioNetDeviceHeader {
    public static let mergeableLength = 12

    public static func length(features: UInt64) -> Int {
        features & (VirtioFeature.version1 | VirtioFeature.netMergeableRxBuffers) != 0 ? mergeableLength : VirtioNetHeader.length
    }

    /// Sets `num_buffers` in a 12-byte header.
    public static func setBufferCount(_ n: UInt16, in header: UnsafeMutableRawBufferPointer) {
        header[10] = UInt8(truncatingIfNeeded: n)
        header[11] = UInt8(truncatingIfNeeded: n >> 8)
    }
}
