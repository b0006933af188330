// vhost-user messages, the memory table and the split virtqueue, against a fake guest: an anonymous mapping
// standing in for the guest's RAM, rings written the way a driver writes them, and every hostile case of
// docs/hostile-input.md's vhost-user list.

#if canImport(Glibc)
import Glibc
#endif
import Testing
import VNetWire

/// 1 MiB of "guest RAM" at guest-physical 0x100000 that QEMU "mapped" at 0x7f00_0000_0000.
final class FakeGuestMemory {
    static let size = 1 << 20
    static let guestPhysical: UInt64 = 0x10_0000
    static let qemuVirtual: UInt64 = 0x7f00_0000_0000
    let base: UnsafeMutableRawPointer
    let table: VhostUserMemoryTable

    init() {
        let p = mmap(nil, FakeGuestMemory.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        precondition(p != MAP_FAILED)
        base = p
        table = try! VhostUserMemoryTable(regions: [.init(descriptor: FakeGuestMemory.region, base: p)])
    }

    deinit { munmap(base, FakeGuestMemory.size) }

    static let region = VhostUserRegionDescriptor(guestPhysicalAddress: guestPhysical, size: UInt64(size), userAddress: qemuVirtual, mmapOffset: 0)

    func put<T>(_ value: T, at gpa: UInt64) { base.storeBytes(of: value, toByteOffset: Int(gpa - FakeGuestMemory.guestPhysical), as: T.self) }
    func get<T>(_ at: UInt64, as: T.Type) -> T { base.loadUnaligned(fromByteOffset: Int(at - FakeGuestMemory.guestPhysical), as: T.self) }
}

/// A driver's view of one queue of `size` in the fake memory: descriptors at +0, avail at +0x4000, used at
/// +0x8000, buffers from +0x10000.
struct FakeDriver {
    let memory: FakeGuestMemory
    let size: Int
    let desc: UInt64 = FakeGuestMemory.guestPhysical
    let avail: UInt64 = FakeGuestMemory.guestPhysical + 0x4000
    let used: UInt64 = FakeGuestMemory.guestPhysical + 0x8000
    var availIdx: UInt16 = 0

    func va(_ gpa: UInt64) -> UInt64 { gpa - FakeGuestMemory.guestPhysical + FakeGuestMemory.qemuVirtual }

    func descriptor(_ i: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0, table: UInt64? = nil) {
        let at = (table ?? desc) + UInt64(16 * i)
        memory.put(address, at: at)
        memory.put(length, at: at + 8)
        memory.put(flags, at: at + 12)
        memory.put(next, at: at + 14)
    }

    mutating func offer(_ head: UInt16) {
        memory.put(head, at: avail + 4 + UInt64(2 * (Int(availIdx) % size)))
        availIdx &+= 1
        memory.put(availIdx, at: avail + 2)
    }

    func queue(memory table: VhostUserMemoryTable) throws -> SplitVirtqueue {
        let q = SplitVirtqueue()
        try q.configure(size: size, descriptorTable: va(desc), availableRing: va(avail), usedRing: va(used), memory: table)
        return q
    }
}

@Suite struct VhostUserMessageTests {
    func parse(_ request: UInt32, _ payload: [UInt8], fds: Int = 0, flags: UInt32 = 1) throws -> VhostUserMessage {
        let bytes = VhostUserMessage.emitRequest(request, flags: flags, payload: payload)
        return try bytes.withUnsafeBytes { b in try VhostUserMessage.parse(b, fdCount: fds).message }
    }

    func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    @Test func knownRequestsParse() throws {
        #expect(try parse(1, []) == .getFeatures)
        #expect(try parse(2, le(UInt64(0x1_0000_8000))) == .setFeatures(0x1_0000_8000))
        #expect(try parse(8, le(UInt32(1)) + le(UInt32(256))) == .setVringNum(index: 1, num: 256))
        #expect(try parse(12, le(UInt64(1)), fds: 1) == .setVringKick(index: 1, hasFD: true))
        #expect(try parse(13, le(UInt64(0x100)), fds: 0) == .setVringCall(index: 0, hasFD: false))
        #expect(try parse(18, le(UInt32(0)) + le(UInt32(1))) == .setVringEnable(index: 0, enable: true))
        let addr = le(UInt32(1)) + le(UInt32(0)) + le(UInt64(0x1000)) + le(UInt64(0x2000)) + le(UInt64(0x3000)) + le(UInt64(0))
        #expect(try parse(9, addr) == .setVringAddr(.init(index: 1, flags: 0, descriptorTable: 0x1000, usedRing: 0x2000, availableRing: 0x3000, log: 0)))
        let table = le(UInt32(2)) + le(UInt32(0))
            + le(UInt64(0)) + le(UInt64(0xa0000)) + le(UInt64(0x7f00_0000_0000)) + le(UInt64(0))
            + le(UInt64(0xc0000)) + le(UInt64(0x7f40000)) + le(UInt64(0x7f00_000c_0000)) + le(UInt64(0xc0000))
        guard case .setMemTable(let regions) = try parse(5, table, fds: 2) else { Issue.record("not a memory table"); return }
        #expect(regions.count == 2 && regions[1].mmapOffset == 0xc0000)
    }

    @Test func wrongSizesAreErrors() {
        #expect(throws: VhostUserError.wrongSize(request: 2, size: 4)) { try parse(2, [0, 0, 0, 0]) }
        #expect(throws: VhostUserError.wrongSize(request: 1, size: 8)) { try parse(1, le(UInt64(0))) }
        #expect(throws: VhostUserError.wrongSize(request: 9, size: 39)) { try parse(9, [UInt8](repeating: 0, count: 39)) }
        #expect(throws: VhostUserError.wrongSize(request: 5, size: 4)) { try parse(5, [1, 0, 0, 0], fds: 1) }
        // A header claiming more than the bytes present, or a huge payload.
        let short = VhostUserMessage.emitRequest(2, payload: le(UInt64(1))).dropLast()
        #expect(throws: VhostUserError.wrongSize(request: 2, size: 7)) { try Array(short).withUnsafeBytes { b in _ = try VhostUserMessage.parse(b, fdCount: 0) } }
        var huge = VhostUserMessage.emitRequest(2, payload: [])
        huge[8] = 0xff; huge[9] = 0xff; huge[10] = 0xff; huge[11] = 0x7f
        #expect(throws: VhostUserError.payloadTooLarge(0x7fff_ffff)) { try huge.withUnsafeBytes { b in _ = try VhostUserMessage.parseHeader(b) } }
        #expect(throws: VhostUserError.shortHeader) { try [UInt8](repeating: 0, count: 11).withUnsafeBytes { b in _ = try VhostUserMessage.parseHeader(b) } }
        #expect(throws: VhostUserError.badVersion(2)) { try parse(1, [], flags: 2) }
    }

    @Test func fdCountsAreExact() {
        #expect(throws: VhostUserError.wrongFDCount(request: 12, expected: 1, got: 0)) { try parse(12, le(UInt64(0))) }
        #expect(throws: VhostUserError.wrongFDCount(request: 12, expected: 0, got: 1)) { try parse(12, le(UInt64(0x100)), fds: 1) }
        #expect(throws: VhostUserError.wrongFDCount(request: 1, expected: 0, got: 2)) { try parse(1, [], fds: 2) }
        let one = le(UInt32(1)) + le(UInt32(0)) + le(UInt64(0)) + le(UInt64(4096)) + le(UInt64(0x1000)) + le(UInt64(0))
        #expect(throws: VhostUserError.wrongFDCount(request: 5, expected: 1, got: 3)) { try parse(5, one, fds: 3) }
        #expect(throws: VhostUserError.wrongFDCount(request: 99, expected: 0, got: 1)) { try parse(99, [], fds: 1) }
    }

    @Test func unknownRequestsAndQueuesAreRefused() throws {
        #expect(try parse(99, [1, 2, 3]) == .unsupported(request: 99))
        #expect(try parse(20, le(UInt64(1500))) == .unsupported(request: 20))
        #expect(throws: VhostUserError.badQueueIndex(2)) { try parse(8, le(UInt32(2)) + le(UInt32(256))) }
        #expect(throws: VhostUserError.badQueueIndex(0x10200)) { try parse(12, le(UInt64(0x10200)), fds: 1) }
    }

    @Test func hostileMemoryTables() {
        func table(_ regions: [(UInt64, UInt64, UInt64, UInt64)]) -> [UInt8] {
            le(UInt32(regions.count)) + le(UInt32(0)) + regions.flatMap { le($0.0) + le($0.1) + le($0.2) + le($0.3) }
        }
        let overlapGPA = table([(0, 0x2000, 0x10000, 0), (0x1000, 0x2000, 0x20000, 0)])
        #expect(throws: VhostUserError.badMemoryTable("regions 0 and 1 overlap in guest-physical space")) { try parse(5, overlapGPA, fds: 2) }
        let overlapVA = table([(0, 0x1000, 0x10000, 0), (0x1000, 0x2000, 0x10800, 0)])
        #expect(throws: VhostUserError.badMemoryTable("regions 0 and 1 overlap in QEMU's address space")) { try parse(5, overlapVA, fds: 2) }
        #expect(throws: VhostUserError.badMemoryTable("region 0 is empty")) { try parse(5, table([(0, 0, 0x10000, 0)]), fds: 1) }
        #expect(throws: VhostUserError.badMemoryTable("region 0 is \(UInt64(1) << 41) bytes (at most \(UInt64(1) << 40))")) {
            try parse(5, table([(0, 1 << 41, 0x10000, 0)]), fds: 1)
        }
        #expect(throws: VhostUserError.badMemoryTable("region 0 wraps the address space")) { try parse(5, table([(~UInt64(0) - 10, 0x1000, 0x10000, 0)]), fds: 1) }
        #expect(throws: VhostUserError.badMemoryTable("0 regions (1...8 allowed)")) { try parse(5, table([])) }
        #expect(throws: VhostUserError.badMemoryTable("9 regions (1...8 allowed)")) {
            try parse(5, table((0 ..< 9).map { (UInt64($0) << 20, 0x1000, UInt64($0) << 30, 0) }), fds: 9)
        }
    }

    @Test func repliesEmit() {
        var out = [UInt8](repeating: 0, count: 20)
        let n = out.withUnsafeMutableBytes { VhostUserMessage.emitReply(request: 1, u64: 0x1234, into: $0) }
        #expect(n == 20 && out[4] == 0x5 && out[8] == 8 && out[12] == 0x34 && out[13] == 0x12)
        let m = out.withUnsafeMutableBytes { VhostUserMessage.emitReply(request: 11, index: 1, num: 7, into: $0) }
        #expect(m == 20 && out[0] == 11 && out[12] == 1 && out[16] == 7)
    }
}

@Suite struct VhostUserMemoryTests {
    @Test func translationIsBounded() {
        let m = FakeGuestMemory()
        let t = m.table
        let g = FakeGuestMemory.guestPhysical
        #expect(t.guestPhysical(g, length: 16) == m.base)
        #expect(t.guestPhysical(g + UInt64(FakeGuestMemory.size) - 16, length: 16) == m.base + FakeGuestMemory.size - 16)
        #expect(t.guestPhysical(g + UInt64(FakeGuestMemory.size) - 16, length: 17) == nil)
        #expect(t.guestPhysical(g - 1, length: 1) == nil)
        #expect(t.guestPhysical(~UInt64(0) - 2, length: 8) == nil)
        #expect(t.guestPhysical(g + 8, length: ~UInt64(0)) == nil)
        #expect(t.userAddress(FakeGuestMemory.qemuVirtual + 0x100, length: 0x100) == m.base + 0x100)
        #expect(t.userAddress(g, length: 1) == nil)
    }
}

@Suite struct SplitVirtqueueTests {
    @Test func chainsAreWalkedAndReturned() throws {
        let m = FakeGuestMemory()
        var d = FakeDriver(memory: m, size: 8)
        let q = try d.queue(memory: m.table)
        let buf = FakeGuestMemory.guestPhysical + 0x10000
        for i in 0 ..< 100 { m.put(UInt8(i), at: buf + UInt64(i)) }
        d.descriptor(0, address: buf, length: 12, flags: 1, next: 3)
        d.descriptor(3, address: buf + 12, length: 88, flags: 0)
        d.offer(0)
        #expect(try q.pending() == 1)
        let segs = VirtqueueSegments(capacity: 64)
        #expect(try q.nextChain(memory: m.table, into: segs) == 0)
        #expect(segs.count == 2 && segs.readableBytes == 100)
        var out = [UInt8](repeating: 0, count: 200)
        let n = out.withUnsafeMutableBytes { segs.gatherReadable(into: $0) }
        #expect(n == 100 && out[99] == 99 && out[12] == 12)
        q.writeUsed(id: 0, length: 0)
        q.advanceUsed()
        q.publishUsed()
        #expect(m.get(d.used + 2, as: UInt16.self) == 1)
        #expect(q.needsNotification())
        #expect(!q.needsNotification())   // nothing new since
    }

    @Test func writableChainsScatter() throws {
        let m = FakeGuestMemory()
        var d = FakeDriver(memory: m, size: 4)
        let q = try d.queue(memory: m.table)
        let buf = FakeGuestMemory.guestPhysical + 0x20000
        d.descriptor(1, address: buf, length: 10, flags: 2 | 1, next: 2)
        d.descriptor(2, address: buf + 100, length: 10, flags: 2)
        d.offer(1)
        let segs = VirtqueueSegments(capacity: 8)
        #expect(try q.nextChain(memory: m.table, into: segs) == 1)
        let data = [UInt8](0 ..< 15)
        #expect(data.withUnsafeBytes { segs.scatterWritable($0, skip: 2) } == 15)
        #expect(m.get(buf + 2, as: UInt8.self) == 0 && m.get(buf + 9, as: UInt8.self) == 7 && m.get(buf + 100, as: UInt8.self) == 8)
        #expect(m.get(buf + 106, as: UInt8.self) == 14)
    }

    @Test func loopsAndLongChainsAreErrors() throws {
        let m = FakeGuestMemory()
        var d = FakeDriver(memory: m, size: 8)
        let q = try d.queue(memory: m.table)
        let buf = FakeGuestMemory.guestPhysical + 0x10000
        d.descriptor(0, address: buf, length: 10, flags: 1, next: 1)
        d.descriptor(1, address: buf, length: 10, flags: 1, next: 0)   // 0 -> 1 -> 0 ...
        d.offer(0)
        let segs = VirtqueueSegments(capacity: 1024)
        #expect(throws: VirtqueueError.chainTooLong) { try q.nextChain(memory: m.table, into: segs) }
        d.descriptor(2, address: buf, length: 10, flags: 1, next: 2)   // points at itself
        d.offer(2)
        #expect(throws: VirtqueueError.chainTooLong) { try q.nextChain(memory: m.table, into: segs) }
        d.descriptor(3, address: buf, length: 10, flags: 1, next: 9)   // next past the table
        d.offer(3)
        #expect(throws: VirtqueueError.badIndex) { try q.nextChain(memory: m.table, into: segs) }
        d.offer(200)                                                    // head past the table
        #expect(throws: VirtqueueError.badIndex) { try q.nextChain(memory: m.table, into: segs) }
        #expect(try q.pending() == 0)   // each bad chain was consumed
    }

    @Test func buffersOutsideMemoryAreErrors() throws {
        let m = FakeGuestMemory()
        var d = FakeDriver(memory: m, size: 8)
        let q = try d.queue(memory: m.table)
        let segs = VirtqueueSegments(capacity: 64)
        let end = FakeGuestMemory.guestPhysical + UInt64(FakeGuestMemory.size)
        d.descriptor(0, address: end - 4, length: 8, flags: 0)                 // runs past the region
        d.descriptor(1, address: 0x1000, length: 8, flags: 0)                  // below every region
        d.descriptor(2, address: ~UInt64(0) - 3, length: 0xffff_ffff, flags: 0) // address + length overflows
        d.descriptor(3, address: FakeGuestMemory.guestPhysical, length: 0xffff_ffff, flags: 0) // huge
        for h: UInt16 in 0 ..< 4 {
            d.offer(h)
            #expect(throws: VirtqueueError.outsideMemory) { try q.nextChain(memory: m.table, into: segs) }
        }
    }

    @Test func hostileIndirectTables() throws {
        let m = FakeGuestMemory()
        var d = FakeDriver(memory: m, size: 8)
        let q = try d.queue(memory: m.table)
        let segs = VirtqueueSegments(capacity: 2048)
        let table = FakeGuestMemory.guestPhysical + 0x30000
        let buf = FakeGuestMemory.guestPhysical + 0x40000
        // A good one first: two entries.
        d.descriptor(0, address: buf, length: 10, flags: 1, next: 1, table: table)
        d.descriptor(1, address: buf + 10, length: 20, flags: 0, table: table)
        d.descriptor(0, address: table, length: 32, flags: 4)
        d.offer(0)
        #expect(try q.nextChain(memory: m.table, into: segs) == 0)
        #expect(segs.count == 2 && segs.readableBytes == 30)
        // Table outside memory, a length that is not whole descriptors, too many entries, nested, with NEXT.
        d.descriptor(1, address: 0x10, length: 32, flags: 4)
        d.descriptor(2, address: table, length: 17, flags: 4)
        d.descriptor(3, address: table, length: 16 * 2000, flags: 4)
        d.descriptor(4, address: FakeGuestMemory.guestPhysical + UInt64(FakeGuestMemory.size) - 16, length: 32, flags: 4)
        d.descriptor(5, address: table, length: 32, flags: 4 | 1, next: 6)
        for h: UInt16 in 1 ... 5 {
            d.offer(h)
            #expect(throws: VirtqueueError.badIndirect) { try q.nextChain(memory: m.table, into: segs) }
        }
        let nested = table + 0x1000
        d.descriptor(0, address: table, length: 32, flags: 4, table: nested)
        d.descriptor(6, address: nested, length: 16, flags: 4)
        d.offer(6)
        #expect(throws: VirtqueueError.badIndirect) { try q.nextChain(memory: m.table, into: segs) }
        // A loop inside the table, and an entry pointing outside memory.
        let looping = table + 0x2000
        d.descriptor(0, address: buf, length: 1, flags: 1, next: 1, table: looping)
        d.descriptor(1, address: buf, length: 1, flags: 1, next: 0, table: looping)
        d.descriptor(7, address: looping, length: 32, flags: 4)
        d.offer(7)
        #expect(throws: VirtqueueError.chainTooLong) { try q.nextChain(memory: m.table, into: segs) }
        d.descriptor(0, address: 0x20, length: 100, flags: 0, table: looping)
        d.offer(7)
        #expect(throws: VirtqueueError.outsideMemory) { try q.nextChain(memory: m.table, into: segs) }
        // Not negotiated: refused outright.
        q.indirectAllowed = false
        d.offer(0)
        #expect(throws: VirtqueueError.badIndirect) { try q.nextChain(memory: m.table, into: segs) }
    }

    @Test func availableIndexJumpIsAnError() throws {
        let m = FakeGuestMemory()
        let d = FakeDriver(memory: m, size: 8)
        let q = try d.queue(memory: m.table)
        m.put(UInt16(8), at: d.avail + 2)
        #expect(try q.pending() == 8)
        m.put(UInt16(9), at: d.avail + 2)
        #expect(throws: VirtqueueError.availableIndexJump) { try q.pending() }
        m.put(UInt16(0xfff0), at: d.avail + 2)   // "backwards" is a jump too
        #expect(throws: VirtqueueError.availableIndexJump) { try q.pending() }
    }

    @Test func ringsOutsideMemoryAreRefused() {
        let m = FakeGuestMemory()
        let q = SplitVirtqueue()
        let va = FakeGuestMemory.qemuVirtual
        #expect(throws: VirtqueueError.ringOutsideMemory) {
            try q.configure(size: 256, descriptorTable: va + UInt64(FakeGuestMemory.size) - 100, availableRing: va, usedRing: va + 0x8000, memory: m.table)
        }
        #expect(throws: VirtqueueError.ringOutsideMemory) { try q.configure(size: 300, descriptorTable: va, availableRing: va, usedRing: va, memory: m.table) }
        #expect(throws: VirtqueueError.ringOutsideMemory) { try q.configure(size: 65536, descriptorTable: va, availableRing: va, usedRing: va, memory: m.table) }
        #expect(!q.isReady)
    }

    @Test func eventIndexDecidesNotifications() throws {
        let m = FakeGuestMemory()
        var d = FakeDriver(memory: m, size: 8)
        let q = try d.queue(memory: m.table)
        q.eventIndex = true
        d.descriptor(0, address: FakeGuestMemory.guestPhysical + 0x10000, length: 4, flags: 0)
        let segs = VirtqueueSegments(capacity: 8)
        m.put(UInt16(5), at: d.avail + 4 + 2 * 8)   // used_event: interrupt once used.idx passes 5
        for _ in 0 ..< 3 {
            d.offer(0)
            _ = try q.nextChain(memory: m.table, into: segs)
            q.writeUsed(id: 0, length: 0)
            q.advanceUsed()
            q.publishUsed()
        }
        #expect(!q.needsNotification())   // 0 -> 3
        for _ in 0 ..< 3 {
            d.offer(0)
            _ = try q.nextChain(memory: m.table, into: segs)
            q.writeUsed(id: 0, length: 0)
            q.advanceUsed()
        }
        q.publishUsed()
        #expect(q.needsNotification())    // 3 -> 6 passes 5
        q.requestKicks()
        #expect(m.get(d.used + 4 + 8 * 8, as: UInt16.self) == 6)
        #expect(SplitVirtqueue.needEvent(event: 0xffff, new: 1, old: 0xfffe))
        #expect(!SplitVirtqueue.needEvent(event: 10, new: 5, old: 3))
    }

    /// A driver without working barriers sets used_event after the device looked and misses the new used.idx:
    /// `unansweredRequest` finds the interrupt it asked for until it is marked sent.
    @Test func aLateUsedEventIsFoundOnce() throws {
        let m = FakeGuestMemory()
        var d = FakeDriver(memory: m, size: 8)
        let q = try d.queue(memory: m.table)
        q.eventIndex = true
        d.descriptor(0, address: FakeGuestMemory.guestPhysical + 0x10000, length: 4, flags: 0)
        let segs = VirtqueueSegments(capacity: 8)
        let usedEvent = d.avail + 4 + 2 * 8
        m.put(UInt16(0xffff), at: usedEvent)   // callbacks off
        #expect(q.unansweredRequest() == nil)  // nothing published yet
        for _ in 0 ..< 3 {
            d.offer(0)
            _ = try q.nextChain(memory: m.table, into: segs)
            q.writeUsed(id: 0, length: 0)
            q.advanceUsed()
        }
        q.publishUsed()
        #expect(!q.needsNotification())   // 0 -> 3, event 0xffff
        #expect(q.unansweredRequest() == nil)
        m.put(UInt16(1), at: usedEvent)    // the driver took entry 0 and wants an interrupt after entry 1
        #expect(q.unansweredRequest() == 1)
        #expect(q.unansweredRequest() == 1)
        q.markNotified()
        #expect(q.unansweredRequest() == nil)
        // An interrupt sent the normal way is not sent again.
        d.offer(0)
        _ = try q.nextChain(memory: m.table, into: segs)
        q.writeUsed(id: 0, length: 0)
        q.advanceUsed()
        q.publishUsed()
        m.put(UInt16(3), at: usedEvent)
        #expect(q.needsNotification())     // 3 -> 4 passes 3
        #expect(q.unansweredRequest() == nil)
        // Without EVENT_IDX: interrupts back on after entries went out without one.
        q.eventIndex = false
        m.put(UInt16(1), at: d.avail)       // NO_INTERRUPT
        d.offer(0)
        _ = try q.nextChain(memory: m.table, into: segs)
        q.writeUsed(id: 0, length: 0)
        q.advanceUsed()
        q.publishUsed()
        #expect(!q.needsNotification())
        #expect(q.unansweredRequest() == nil)
        m.put(UInt16(0), at: d.avail)
        #expect(q.unansweredRequest() == 0)
        q.markNotified()
        #expect(q.unansweredRequest() == nil)
    }
}
