// vhost-user control messages (QEMU's docs/interop/vhost-user.rst): the frontend (QEMU) drives the backend
// (vnet) over a unix stream socket with these.
//
// Theory of Operation
// -------------------
// Every message is a 12-byte header (request u32, flags u32, payload size u32, all in the host's byte order)
// and a payload whose layout the request fixes: a u64, a vring state (index u32, num u32), a vring address
// (index, flags, then four u64 addresses), or a memory table (count u32, padding u32, then 32-byte regions).
// File descriptors travel beside the bytes (SCM_RIGHTS); how many a request carries is fixed too (one per
// memory region; one for a kick/call/err fd unless the "no fd" bit is set). `VhostUserMessage.parse` checks
// the version bits, the payload size against the request's and the fd count against the payload's, and
// returns a typed value or a `VhostUserError` naming what was wrong; nothing is read before its length is
// checked. Requests vnet does not implement parse as `.unsupported` (with the size still bounded), so the
// port can refuse them with a REPLY_ACK failure instead of dropping the connection. `emit` builds the replies.
// This file does no I/O: the port owns the socket and the fds.

/// What a frontend got wrong in a message.
public enum VhostUserError: Error, Equatable, Sendable {
    case shortHeader
    case badVersion(UInt32)
    case payloadTooLarge(UInt32)
    case wrongSize(request: UInt32, size: Int)
    case wrongFDCount(request: UInt32, expected: Int, got: Int)
    case badMemoryTable(String)
    case badQueueIndex(UInt32)
}

public enum VhostUserRequest: UInt32, Sendable {
    case getFeatures = 1, setFeatures = 2, setOwner = 3, resetOwner = 4, setMemTable = 5, setLogBase = 6,
         setLogFD = 7, setVringNum = 8, setVringAddr = 9, setVringBase = 10, getVringBase = 11, setVringKick = 12,
         setVringCall = 13, setVringErr = 14, getProtocolFeatures = 15, setProtocolFeatures = 16, getQueueNum = 17,
         setVringEnable = 18, sendRARP = 19, netSetMTU = 20
}

/// One memory region of SET_MEM_TABLE as sent (before mapping).
public struct VhostUserRegionDescriptor: Equatable, Sendable {
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    /// The address QEMU mapped it at (ring addresses of SET_VRING_ADDR are in this space).
    public var userAddress: UInt64
    /// Where the region starts in the fd's file.
    public var mmapOffset: UInt64
    public init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
    }
}

public struct VhostUserVringAddress: Equatable, Sendable {
    public var index: UInt32
    public var flags: UInt32
    public var descriptorTable: UInt64
    public var usedRing: UInt64
    public var availableRing: UInt64
    public var log: UInt64
    public init(index: UInt32, flags: UInt32, descriptorTable: UInt64, usedRing: UInt64, availableRing: UInt64, log: UInt64) {
        self.index = index
        self.flags = flags
        self.descriptorTable = descriptorTable
        self.usedRing = usedRing
        self.availableRing = availableRing
        self.log = log
    }
}

public enum VhostUserMessage: Equatable, Sendable {
    case getFeatures
    case setFeatures(UInt64)
    case setOwner
    case resetOwner
    case setMemTable([VhostUserRegionDescriptor])
    case setVringNum(index: UInt32, num: UInt32)
    case setVringAddr(VhostUserVringAddress)
    case setVringBase(index: UInt32, num: UInt32)
    case getVringBase(index: UInt32)
    /// Kick, call and err: the queue index, and whether an fd came with it (false: the "no fd" bit, polling).
    case setVringKick(index: UInt32, hasFD: Bool)
    case setVringCall(index: UInt32, hasFD: Bool)
    case setVringErr(index: UInt32, hasFD: Bool)
    case getProtocolFeatures
    case setProtocolFeatures(UInt64)
    case getQueueNum
    case setVringEnable(index: UInt32, enable: Bool)
    /// A request vnet does not implement (or does not know): refused, never acted on.
    case unsupported(request: UInt32)
}

extension VhostUserMessage {
    public static let headerLength = 12
    /// Flags: the version (always 1), a reply, and "answer me" (with the REPLY_ACK protocol feature).
    public static let version: UInt32 = 0x1
    public static let replyFlag: UInt32 = 0x4
    public static let needReplyFlag: UInt32 = 0x8
    /// The most regions a memory table may have (QEMU's VHOST_MEMORY_BASELINE_NREGIONS).
    public static let maximumRegions = 8
    /// The largest payload any request may carry; larger is a protocol error (the stream cannot be trusted).
    public static let maximumPayload = 4096
    /// Queue indices vnet serves: 0 receive, 1 transmit (no multiqueue, no control queue).
    public static let queueCount: UInt32 = 2
    /// The "no fd" bit of a kick/call/err payload.
    static let noFDBit: UInt64 = 1 << 8

    /// The header's three fields, checked: version 1 and a payload no larger than `maximumPayload`.
    public static func parseHeader(_ bytes: UnsafeRawBufferPointer) throws(VhostUserError) -> (request: UInt32, flags: UInt32, size: Int) {
        guard bytes.count >= headerLength else { throw .shortHeader }
        let request = bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        let flags = bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        let size = bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
        guard flags & 0x3 == version else { throw .badVersion(flags) }
        guard size <= UInt32(maximumPayload) else { throw .payloadTooLarge(size) }
        return (request, flags, Int(size))
    }

    /// A whole message: `bytes` is the header and exactly its payload; `fdCount` is how many fds came with it.
    public static func parse(_ bytes: UnsafeRawBufferPointer, fdCount: Int) throws(VhostUserError) -> (message: VhostUserMessage, flags: UInt32) {
        let (request, flags, size) = try parseHeader(bytes)
        guard bytes.count == headerLength + size else { throw .wrongSize(request: request, size: bytes.count - headerLength) }
        let p = UnsafeRawBufferPointer(rebasing: bytes[headerLength...])
        func u64(_ o: Int) -> UInt64 { p.loadUnaligned(fromByteOffset: o, as: UInt64.self) }
        func u32(_ o: Int) -> UInt32 { p.loadUnaligned(fromByteOffset: o, as: UInt32.self) }
        func expect(size want: Int, fds: Int = 0) throws(VhostUserError) {
            guard size == want else { throw .wrongSize(request: request, size: size) }
            guard fdCount == fds else { throw .wrongFDCount(request: request, expected: fds, got: fdCount) }
        }
        func queue(_ i: UInt32) throws(VhostUserError) -> UInt32 {
            guard i < queueCount else { throw .badQueueIndex(i) }
            return i
        }
        guard let known = VhostUserRequest(rawValue: request) else {
            guard fdCount == 0 else { throw .wrongFDCount(request: request, expected: 0, got: fdCount) }
            return (.unsupported(request: request), flags)
        }
        let message: VhostUserMessage
        switch known {
        case .getFeatures: try expect(size: 0); message = .getFeatures
        case .getProtocolFeatures: try expect(size: 0); message = .getProtocolFeatures
        case .getQueueNum: try expect(size: 0); message = .getQueueNum
        case .setOwner: try expect(size: 0); message = .setOwner
        case .resetOwner: try expect(size: 0); message = .resetOwner
        case .setFeatures: try expect(size: 8); message = .setFeatures(u64(0))
        case .setProtocolFeatures: try expect(size: 8); message = .setProtocolFeatures(u64(0))
        case .setVringNum, .setVringBase, .getVringBase, .setVringEnable:
            try expect(size: 8)
            let index = try queue(u32(0))
            let num = u32(4)
            switch known {
            case .setVringNum: message = .setVringNum(index: index, num: num)
            case .setVringBase: message = .setVringBase(index: index, num: num)
            case .getVringBase: message = .getVringBase(index: index)
            default: message = .setVringEnable(index: index, enable: num != 0)
            }
        case .setVringAddr:
            try expect(size: 40)
            message = .setVringAddr(VhostUserVringAddress(index: try queue(u32(0)), flags: u32(4), descriptorTable: u64(8),
                                                           usedRing: u64(16), availableRing: u64(24), log: u64(32)))
        case .setVringKick, .setVringCall, .setVringErr:
            guard size == 8 else { throw .wrongSize(request: request, size: size) }
            let v = u64(0)
            guard v & ~(noFDBit | 0xFF) == 0 else { throw .badQueueIndex(UInt32(truncatingIfNeeded: v)) }
            let index = try queue(UInt32(v & 0xFF))
            let hasFD = v & noFDBit == 0
            try expect(size: 8, fds: hasFD ? 1 : 0)
            switch known {
            case .setVringKick: message = .setVringKick(index: index, hasFD: hasFD)
            case .setVringCall: message = .setVringCall(index: index, hasFD: hasFD)
            default: message = .setVringErr(index: index, hasFD: hasFD)
            }
        case .setMemTable:
            guard size >= 8 else { throw .wrongSize(request: request, size: size) }
            let count = Int(u32(0))
            guard count >= 1 && count <= maximumRegions else { throw .badMemoryTable("\(count) regions (1...\(maximumRegions) allowed)") }
            try expect(size: 8 + 32 * count, fds: count)
            var regions: [VhostUserRegionDescriptor] = []
            regions.reserveCapacity(count)
            for i in 0 ..< count {
                let o = 8 + 32 * i
                regions.append(VhostUserRegionDescriptor(guestPhysicalAddress: u64(o), size: u64(o + 8), userAddress: u64(o + 16), mmapOffset: u64(o + 24)))
            }
            try VhostUserMemoryTable.validate(regions)
            message = .setMemTable(regions)
        case .setLogBase, .setLogFD, .sendRARP, .netSetMTU:
            guard fdCount == 0 || known == .setLogFD || known == .setLogBase else {
                throw .wrongFDCount(request: request, expected: 0, got: fdCount)
            }
            message = .unsupported(request: request)
        }
        return (message, flags)
    }

    /// A reply header with a u64 payload (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, REPLY_ACK's
    /// status) into `out`, which must hold 20 bytes. Returns the bytes written.
    public static func emitReply(request: UInt32, u64 value: UInt64, into out: UnsafeMutableRawBufferPointer) -> Int {
        out.storeBytes(of: request, toByteOffset: 0, as: UInt32.self)
        out.storeBytes(of: version | replyFlag, toByteOffset: 4, as: UInt32.self)
        out.storeBytes(of: UInt32(8), toByteOffset: 8, as: UInt32.self)
        out.storeBytes(of: value, toByteOffset: 12, as: UInt64.self)
        return 20
    }

    /// A reply with a vring state (GET_VRING_BASE) into `out` (20 bytes).
    public static func emitReply(request: UInt32, index: UInt32, num: UInt32, into out: UnsafeMutableRawBufferPointer) -> Int {
        out.storeBytes(of: request, toByteOffset: 0, as: UInt32.self)
        out.storeBytes(of: version | replyFlag, toByteOffset: 4, as: UInt32.self)
        out.storeBytes(of: UInt32(8), toByteOffset: 8, as: UInt32.self)
        out.storeBytes(of: index, toByteOffset: 12, as: UInt32.self)
        out.storeBytes(of: num, toByteOffset: 16, as: UInt32.self)
        return 20
    }

    /// A request as a frontend sends it (for tests and the fuzz seeds): header, then `payload`.
    public static func emitRequest(_ request: UInt32, flags: UInt32 = version, payload: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: headerLength)
        withUnsafeBytes(of: request) { for i in 0 ..< 4 { out[i] = $0[i] } }
        withUnsafeBytes(of: flags) { for i in 0 ..< 4 { out[4 + i] = $0[i] } }
        withUnsafeBytes(of: UInt32(payload.count)) { for i in 0 ..< 4 { out[8 + i] = $0[i] } }
        return out + payload
    }
}

/// Feature bits a virtio-net backend deals in (virtio 1.x §5.1.3 and §6; vhost-user.rst).
public enum VirtioFeature {
    public static let netChecksum: UInt64 = 1 << 0
    public static let netGuestChecksum: UInt64 = 1 << 1
    public static let netMTU: UInt64 = 1 << 3
    public static let netGuestTSO4: UInt64 = 1 << 7
    public static let netGuestTSO6: UInt64 = 1 << 8
    public static let netHostTSO4: UInt64 = 1 << 11
    public static let netHostTSO6: UInt64 = 1 << 12
    public static let netMergeableRxBuffers: UInt64 = 1 << 15
    public static let ringIndirectDescriptors: UInt64 = 1 << 28
    public static let ringEventIndex: UInt64 = 1 << 29
    /// vhost-user's own: GET/SET_PROTOCOL_FEATURES exist (and rings start disabled).
    public static let vhostUserProtocolFeatures: UInt64 = 1 << 30
    public static let version1: UInt64 = 1 << 32

    /// Protocol feature bits (GET_PROTOCOL_FEATURES).
    public static let protocolMultiqueue: UInt64 = 1 << 0
    public static let protocolReplyAck: UInt64 = 1 << 3
}
