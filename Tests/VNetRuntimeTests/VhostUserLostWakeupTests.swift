// A vhost-user port driven by a guest whose memory barriers do not work (QEMU 7.2 under TCG with one vCPU): a
// kick or an interrupt that the EVENT_IDX handshake should have produced is lost, and the port must find the
// ring's work by itself a moment later (VhostUserPort.tick) instead of waiting for good.
//
// The rig is white box: the port's two rings are placed in fake guest memory (an anonymous mapping) the way
// QEMU's handshake leaves them (features, memory table, ring addresses, kick and call eventfds), and the test
// writes the rings the way the guest's driver does; frames the port delivers are counted.

import Logging
import Testing
import VNetBuffers
import VNetHost
@testable import VNetRuntime
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

final class VhostRingRig {
    static let memorySize = 1 << 20
    static let guestPhysical: UInt64 = 0x10_0000
    static let qemuVirtual: UInt64 = 0x7f00_0000_0000
    static let ringSize = 8
    static let frameLength = 60
    let base: UnsafeMutableRawPointer
    let epoll: Epoll
    let queue: FrameQueue
    let port: VhostUserPort
    let peer: Int32
    var delivered = 0
    var availableIndex: [UInt16] = [0, 0]

    // Ring r: descriptors at r * 0x40000, avail +0x4000, used +0x8000, buffers from +0x10000 (one page each).
    static func ringBase(_ r: Int) -> UInt64 { guestPhysical + UInt64(r) * 0x40000 }
    func descriptors(_ r: Int) -> UInt64 { VhostRingRig.ringBase(r) }
    func avail(_ r: Int) -> UInt64 { VhostRingRig.ringBase(r) + 0x4000 }
    func used(_ r: Int) -> UInt64 { VhostRingRig.ringBase(r) + 0x8000 }
    func buffer(_ r: Int, _ slot: Int) -> UInt64 { VhostRingRig.ringBase(r) + 0x10000 + UInt64(slot) * 0x1000 }

    init() throws {
        let p = mmap(nil, VhostRingRig.memorySize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        precondition(p != MAP_FAILED)
        base = p
        epoll = try Epoll()
        queue = FrameQueue(capacity: 256 * 1024, frameHeaderLength: VirtioNetHeader.length)
        var logger = Logger(label: "vhost-rig")
        logger.logLevel = .warning
        port = try VhostUserPort(path: "/nonexistent/vhost-rig.sock", logger: logger)
        var fds: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        peer = fds[1]
        port.context = PortContext(queue: queue, mtu: 1500, logger: logger, epoll: epoll, slot: 0,
                                   deliver: { [unowned self] _, _ in self.delivered += 1 }, endBatch: {},
                                   peerNews: { _, _, _ in })
        port.connectionFD = fds[0]
        port.features = VirtioFeature.version1 | VirtioFeature.netMergeableRxBuffers | VirtioFeature.ringEventIndex
        let region = VhostUserRegionDescriptor(guestPhysicalAddress: VhostRingRig.guestPhysical, size: UInt64(VhostRingRig.memorySize),
                                               userAddress: VhostRingRig.qemuVirtual, mmapOffset: 0)
        port.memory = try VhostUserMemoryTable(regions: [.init(descriptor: region, base: p)])
        for r in 0 ..< 2 {
            let va = { (gpa: UInt64) in gpa - VhostRingRig.guestPhysical + VhostRingRig.qemuVirtual }
            try port.rings[r].queue.configure(size: VhostRingRig.ringSize, descriptorTable: va(descriptors(r)),
                                              availableRing: va(avail(r)), usedRing: va(used(r)), memory: port.memory)
            port.rings[r].queue.eventIndex = true
            port.rings[r].size = VhostRingRig.ringSize
            port.rings[r].kickFD = try Sys.eventFD()
            port.rings[r].callFD = try Sys.eventFD()
            port.rings[r].started = true
            port.rings[r].enableFlag = true
            #expect(port.running(r))
        }
    }

    deinit {
        port.close()   // closes the connection, kick and call fds
        Glibc.close(peer)
        munmap(base, VhostRingRig.memorySize)
    }

    func put<T>(_ value: T, at gpa: UInt64) { base.storeBytes(of: value, toByteOffset: Int(gpa - VhostRingRig.guestPhysical), as: T.self) }
    func get<T>(_ at: UInt64, as: T.Type) -> T { base.loadUnaligned(fromByteOffset: Int(at - VhostRingRig.guestPhysical), as: T.self) }

    /// The driver adds a one-buffer chain to ring `r` (avail entry, then avail.idx) and, like a guest that read a
    /// stale avail_event, does not kick.
    func offer(_ r: Int, length: Int, writable: Bool) {
        let slot = Int(availableIndex[r]) % VhostRingRig.ringSize
        let d = descriptors(r) + UInt64(16 * slot)
        put(buffer(r, slot), at: d)
        put(UInt32(length), at: d + 8)
        put(UInt16(writable ? 2 : 0), at: d + 12)
        put(UInt16(0), at: d + 14)
        put(UInt16(slot), at: avail(r) + 4 + UInt64(2 * slot))
        availableIndex[r] &+= 1
        put(availableIndex[r], at: avail(r) + 2)
    }

    /// A frame for vnet: a zero (plain) 12-byte virtio-net header and a 60-byte Ethernet frame.
    func offerTransmit() { offer(1, length: 12 + VhostRingRig.frameLength, writable: false) }

    /// The guest's kick of the TX ring, as the loop hands it to the port.
    func kickTransmit() {
        var one: UInt64 = 1
        _ = Glibc.write(port.rings[1].kickFD, &one, 8)
        port.handle(token: VhostUserPort.kickToken + 1, events: Epoll.readable, now: 0)
    }

    /// A frame for the guest in the port's queue (10-byte header, then the frame).
    func queueFrame() {
        let room = queue.reserve(maximumLength: VhostRingRig.frameLength)!
        room.initializeMemory(as: UInt8.self, repeating: 0xab)
        queue.commit(length: VhostRingRig.frameLength)
    }

    func usedIndex(_ r: Int) -> UInt16 { get(used(r) + 2, as: UInt16.self) }
    func setUsedEvent(_ r: Int, _ v: UInt16) { put(v, at: avail(r) + 4 + UInt64(2 * VhostRingRig.ringSize)) }

    /// Interrupts signalled on ring `r` since the last look (its call eventfd's counter).
    func interrupts(_ r: Int) -> UInt64 {
        var v: UInt64 = 0
        return Glibc.read(port.rings[r].callFD, &v, 8) == 8 ? v : 0
    }

    /// Runs the port's timer the way the loop does: a turn now, then one at each deadline it asks for, until
    /// it asks for none or `limit` has passed. Returns the time of the last turn.
    @discardableResult
    func runTicks(from start: UInt64, limit: UInt64 = 50_000_000) -> UInt64 {
        var now = start
        while let due = port.tick(now: now), due <= start + limit {
            now = max(due, now + 1)
        }
        return now
    }
}

@Suite struct VhostUserLostWakeupTests {
    static let t0: UInt64 = 5_000_000_000

    @Test func transmitBuffersAddedWithoutAKickAreTakenSoon() throws {
        let rig = try VhostRingRig()
        rig.offerTransmit()
        rig.kickTransmit()
        #expect(rig.delivered == 1)
        #expect(rig.get(rig.used(1) + 4 + UInt64(8 * VhostRingRig.ringSize), as: UInt16.self) == 1)   // avail_event: kick for entry 1
        // The guest adds two frames but read avail_event before our store showed: it does not kick.
        rig.offerTransmit()
        rig.offerTransmit()
        let due = rig.port.tick(now: Self.t0)
        #expect(due != nil && due! <= Self.t0 + 10_000_000, "the port must come back to its rings soon")
        rig.runTicks(from: Self.t0)
        #expect(rig.delivered == 3)
        #expect(rig.usedIndex(1) == 3)
        #expect(rig.port.lateKicks == 1)
        // Buffers whose kick is waiting in the eventfd when the look comes are early, not late.
        rig.offerTransmit()
        rig.kickTransmit()
        rig.offerTransmit()
        var one: UInt64 = 1
        _ = Glibc.write(rig.port.rings[1].kickFD, &one, 8)
        rig.runTicks(from: Self.t0 + 100_000_000)
        #expect(rig.delivered == 5)
        #expect(rig.port.lateKicks == 1)
        // A kick still on its way at the first look (the guest stores avail.idx, then kicks) is not late either.
        rig.offerTransmit()
        rig.kickTransmit()
        rig.offerTransmit()
        let t1 = Self.t0 + 200_000_000
        let first = try #require(rig.port.tick(now: t1))
        let second = try #require(rig.port.tick(now: first))   // the first look: buffers, no kick yet
        rig.kickTransmit()
        rig.runTicks(from: second)
        #expect(rig.delivered == 7)
        #expect(rig.port.lateKicks == 1)
        // All taken, nothing moves: the timer stops.
        #expect(rig.port.tick(now: Self.t0 + 1_000_000_000) == nil)
    }

    @Test func anInterruptAskedForAfterWeLookedIsSent() throws {
        let rig = try VhostRingRig()
        rig.setUsedEvent(1, 100)   // the guest polls: no interrupt wanted
        rig.offerTransmit()
        rig.kickTransmit()
        #expect(rig.delivered == 1 && rig.usedIndex(1) == 1)
        #expect(rig.interrupts(1) == 0)
        // The guest turns interrupts back on at its last used index (0) and, reading a stale used.idx, sleeps.
        rig.setUsedEvent(1, 0)
        rig.runTicks(from: Self.t0)
        #expect(rig.interrupts(1) == 1)
        #expect(rig.port.lateCalls == 1)
        // Once sent, not again.
        rig.runTicks(from: Self.t0 + 1_000_000_000)
        #expect(rig.interrupts(1) == 0)
        #expect(rig.port.tick(now: Self.t0 + 2_000_000_000) == nil)
    }

    @Test func receiveBuffersAddedWithoutAKickAreFilledSoon() throws {
        let rig = try VhostRingRig()
        rig.offer(0, length: 2048, writable: true)
        rig.queueFrame()
        #expect(rig.port.flush(now: 0) == false)
        #expect(rig.usedIndex(0) == 1)
        // No buffer left: the frame waits and the port asks for a kick at entry 1.
        rig.queueFrame()
        #expect(rig.port.flush(now: 0) == true)
        #expect(rig.port.rxWaits == 1)
        // The guest adds a buffer and does not kick; the runtime flushes on every turn, if it gets one.
        rig.offer(0, length: 2048, writable: true)
        let due = rig.port.tick(now: Self.t0)
        #expect(due != nil && due! <= Self.t0 + 10_000_000, "the loop must come back to flush")
        _ = rig.port.tick(now: due ?? Self.t0)
        #expect(rig.port.flush(now: 0) == false)
        #expect(rig.usedIndex(0) == 2)
        #expect(rig.queue.isEmpty)
    }

    @Test func idleRingsCostNoTimer() throws {
        let rig = try VhostRingRig()
        #expect(rig.port.tick(now: Self.t0) == nil)
        rig.offerTransmit()
        rig.kickTransmit()
        rig.runTicks(from: Self.t0)
        #expect(rig.port.tick(now: Self.t0 + 1_000_000_000) == nil)
        #expect(rig.port.lateKicks == 0 && rig.port.lateCalls == 0)
    }
}
