// Fuzz target: split-virtqueue processing (VNetWire/SplitVirtqueue.swift) over a fake guest memory the input
// fills. The first 4 bytes choose the queue size (a power of two, 1...256), EVENT_IDX, indirect descriptors,
// and how many chains to take; the rest is the guest's RAM (64 KiB at guest-physical 0x10000, "QEMU-mapped" at
// 0x7f0000000000; descriptors at +0, avail ring at +0x1000, used ring at +0x2000), repeated to fill it. The
// device then does what vnet's port does on a kick: pending (an avail jump is an error), each chain walked
// and gathered (TX) or scattered into (RX), used entries written and published, notification decided, kicks
// requested. The RAM is its own exact allocation, so ASan reports any touch outside it; every segment must
// lie inside it, and no chain may hold more than the queue size of direct descriptors.
import FuzzSupport

@_cdecl("FuzzVhostUserRing_main")
public func fuzzVhostUserRingMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzVhostUserRing)
}

let ramSize = 1 << 16
nonisolated(unsafe) let ram = UnsafeMutableRawBufferPointer.allocate(byteCount: ramSize, alignment: 4096)
let guestPhysical: UInt64 = 0x10000
let qemuVirtual: UInt64 = 0x7f00_0000_0000
nonisolated(unsafe) let memory = try! VhostUserMemoryTable(regions: [.init(descriptor: .init(guestPhysicalAddress: guestPhysical, size: UInt64(ramSize),
                                                                           userAddress: qemuVirtual, mmapOffset: 0), base: ram.baseAddress!)])
nonisolated(unsafe) let segments = VirtqueueSegments(capacity: 2048)
nonisolated(unsafe) let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: SplitVirtqueue.maximumChainBytes, alignment: 16)
nonisolated(unsafe) let queue = SplitVirtqueue()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVhostUserRing(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 4 else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let queueSize = 1 << Int(input[0] % 9)
    queue.eventIndex = input[1] & 1 != 0
    queue.indirectAllowed = input[1] & 2 != 0
    let receive = input[1] & 4 != 0
    let rounds = Int(input[2]) + 1
    let body = UnsafeRawBufferPointer(rebasing: input[4...])
    var o = 0
    while o < ramSize {
        let n = min(body.count, ramSize - o)
        (ram.baseAddress! + o).copyMemory(from: body.baseAddress!, byteCount: n)
        o += n
    }
    do {
        try queue.configure(size: queueSize, descriptorTable: qemuVirtual, availableRing: qemuVirtual + 0x1000,
                            usedRing: qemuVirtual + 0x2000, memory: memory)
    } catch { preconditionFailure("a ring inside memory was refused") }
    queue.reset(base: UInt16(input[3]))
    let low = UInt(bitPattern: ram.baseAddress!)
    for _ in 0 ..< rounds {
        guard let pending = try? queue.pending(), pending > 0 else { break }
        for _ in 0 ..< pending {
            let head: UInt16
            do { head = try queue.nextChain(memory: memory, into: segments) } catch {
                queue.writeUsed(id: 0, length: 0)
                queue.advanceUsed()
                continue
            }
            precondition(Int(head) < queueSize)
            var total = 0
            for i in 0 ..< segments.count {
                let (b, _) = segments[i]
                let start = UInt(bitPattern: b.baseAddress!)
                precondition(start >= low && start + UInt(b.count) <= low + UInt(ramSize), "a segment outside guest memory")
                total += b.count
            }
            precondition(total <= SplitVirtqueue.maximumChainBytes)
            let written: Int
            if receive {
                written = segments.scatterWritable(UnsafeRawBufferPointer(rebasing: scratch[0 ..< min(segments.writableBytes, 70_000)]))
            } else {
                written = 0
                _ = segments.gatherReadable(into: scratch)
            }
            queue.writeUsed(id: head, length: written)
            queue.advanceUsed()
        }
        queue.publishUsed()
        _ = queue.needsNotification()
        queue.requestKicks()
    }
    return 0
}
