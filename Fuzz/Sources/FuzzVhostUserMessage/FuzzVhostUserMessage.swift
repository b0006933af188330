// Fuzz target: vhost-user control messages (VNetWire/VhostUserMessage.swift). The input is a sequence of
// records: one byte giving how many fds "came with" the message (0...15), then a 12-byte header and as much
// payload as the header's size asks for (or what is left). Each is parsed; a parsed memory table must have
// passed validation (as many regions as fds, 1...8, none overlapping, none empty or huge), a kick/call/err
// must name a served queue and carry exactly the fds it says, and the replies emit into exactly 20 bytes.
import FuzzSupport

@_cdecl("FuzzVhostUserMessage_main")
public func fuzzVhostUserMessageMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzVhostUserMessage)
}

nonisolated(unsafe) let replyBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 20, alignment: 8)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVhostUserMessage(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    var offset = 0
    while offset < size {
        let fds = Int(input[offset] & 0x0F)
        offset += 1
        let rest = UnsafeRawBufferPointer(rebasing: input[offset...])
        guard rest.count >= VhostUserMessage.headerLength else { _ = try? VhostUserMessage.parseHeader(rest); break }
        // Copy to an exact-size buffer so ASan sees any read past the message.
        let claimed = Int(rest.loadUnaligned(fromByteOffset: 8, as: UInt32.self) & 0x1FFF)
        let length = min(VhostUserMessage.headerLength + claimed, rest.count)
        let message = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 1)
        defer { message.deallocate() }
        message.copyMemory(from: UnsafeRawBufferPointer(rebasing: rest[0 ..< length]))
        offset += length
        guard let (parsed, _) = try? VhostUserMessage.parse(UnsafeRawBufferPointer(message), fdCount: fds) else { continue }
        switch parsed {
        case .setMemTable(let regions):
            precondition(regions.count == fds && regions.count >= 1 && regions.count <= VhostUserMessage.maximumRegions)
            for r in regions { precondition(r.size > 0 && r.size <= VhostUserMemoryTable.maximumRegionSize) }
            precondition((try? VhostUserMemoryTable.validate(regions)) != nil)
        case .setVringKick(let i, let hasFD), .setVringCall(let i, let hasFD), .setVringErr(let i, let hasFD):
            precondition(i < VhostUserMessage.queueCount && (hasFD ? 1 : 0) == fds)
        case .setVringNum(let i, _), .setVringBase(let i, _), .getVringBase(let i), .setVringEnable(let i, _):
            precondition(i < VhostUserMessage.queueCount && fds == 0)
            precondition(VhostUserMessage.emitReply(request: 11, index: i, num: 0, into: replyBuffer) == 20)
        case .setVringAddr(let a):
            precondition(a.index < VhostUserMessage.queueCount && fds == 0)
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .setOwner, .resetOwner, .setFeatures, .setProtocolFeatures:
            precondition(fds == 0)
            precondition(VhostUserMessage.emitReply(request: 1, u64: 0, into: replyBuffer) == 20)
        case .unsupported:
            break
        }
    }
    return 0
}
