// TFTPServer: request parsing (every truncation, missing terminators, modes, options), path checks, and the
// block/ACK state machine with an in-memory file source and a fake clock.

import Testing
import VNetBuffers
import VNetServices
import VNetWire

/// Files in memory; counts open handles so tests see every transfer close its file.
final class MemoryFiles: TFTPFileSource {
    var files: [String: [UInt8]]
    var open: [Int32: [UInt8]] = [:]
    var nextHandle: Int32 = 3
    var failReads = false
    init(_ files: [String: [UInt8]]) { self.files = files }

    func open(_ path: String) -> TFTPOpenResult {
        guard let f = files[path] else { return .notFound }
        nextHandle += 1
        open[nextHandle] = f
        return .opened(handle: nextHandle, size: UInt64(f.count))
    }
    func read(_ handle: Int32, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard !failReads, let f = open[handle] else { return nil }
        let start = min(Int(offset), f.count)
        let n = min(buffer.count, f.count - start)
        for i in 0 ..< n { buffer[i] = f[start + i] }
        return n
    }
    func close(_ handle: Int32) { open[handle] = nil }
}

let client = TFTPPeer(address: IPv4Address(10, 0, 2, 15), port: 40000, mac: MACAddress(rawValue: 0x5254_0012_3456))
let tT0 = Instant(nanoseconds: 5_000_000_000)

func rrq(_ name: String, mode: String = "octet", _ options: [(String, String)] = [], op: UInt16 = 1) -> [UInt8] {
    var b: [UInt8] = [UInt8(op >> 8), UInt8(op & 0xFF)] + Array(name.utf8) + [0] + Array(mode.utf8) + [0]
    for (k, v) in options { b += Array(k.utf8) + [0] + Array(v.utf8) + [0] }
    return b
}
func ackPacket(_ n: UInt16) -> [UInt8] { [0, 4, UInt8(n >> 8), UInt8(n & 0xFF)] }

/// Drives a server and decodes its replies.
struct Session {
    var server: TFTPServer
    let out = UnsafeMutableRawBufferPointer.allocate(byteCount: TFTPServer.maximumPacket, alignment: 8)
    init(_ files: MemoryFiles, mtu: Int = 1500, capacity: Int = 4) { server = TFTPServer(files: files, mtu: mtu, capacity: capacity) }

    mutating func send(_ packet: [UInt8], from peer: TFTPPeer = client, at now: Instant = tT0) -> (TFTPEvent, [UInt8]) {
        let r = packet.withUnsafeBytes { server.handle($0, from: peer, now: now, into: out) }
        return (r.event, Array(out.prefix(r.length)))
    }
    mutating func poll(at now: Instant) -> ([[UInt8]], Int) {
        var sent: [[UInt8]] = []
        var gaveUp = 0
        let o = out
        server.poll(now: now, into: out, send: { _, n in sent.append(Array(o.prefix(n))) }, gaveUp: { gaveUp += 1 })
        return (sent, gaveUp)
    }
}

func opcode(_ b: [UInt8]) -> UInt16 { b.count >= 2 ? UInt16(b[0]) << 8 | UInt16(b[1]) : 0 }
func blockNumber(_ b: [UInt8]) -> UInt16 { UInt16(b[2]) << 8 | UInt16(b[3]) }
func errorCode(_ b: [UInt8]) -> UInt16? { opcode(b) == 5 ? blockNumber(b) : nil }
/// OACK options as a dictionary.
func oackOptions(_ b: [UInt8]) -> [String: String] {
    let fields = b.dropFirst(2).split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    var d: [String: String] = [:]
    var i = 0
    while i + 1 < fields.count { d[fields[i]] = fields[i + 1]; i += 2 }
    return d
}

@Suite("TFTP request parsing")
struct TFTPParseTests {
    func parse(_ b: [UInt8]) -> Result<TFTPRequest, TFTPRequest.ParseError> {
        b.withUnsafeBytes { p in Result { () throws(TFTPRequest.ParseError) in try TFTPRequest.parse(p) } }
    }

    @Test("a full request with options parses")
    func full() throws {
        let r = try parse(rrq("boot/x.ipxe", mode: "OCTET", [("BLKSIZE", "1400"), ("tsize", "0")])).get()
        #expect(r.opcode == .readRequest)
        #expect(r.fileName == "boot/x.ipxe")
        #expect(r.mode == "octet")
        #expect(r.options.map(\.0) == ["blksize", "tsize"])
        #expect(r.options.map(\.1) == ["1400", "0"])
    }

    @Test("every truncation of a valid request is refused, never read past")
    func truncations() {
        let full = rrq("file.bin", [("blksize", "1024"), ("tsize", "0")])
        for n in 0 ..< full.count {
            // A prefix that ends right after a complete mode field is itself a valid option-less request.
            let prefix = Array(full.prefix(n))
            if case .success(let r) = parse(prefix) {
                #expect(prefix.last == 0 && r.options.count < 2, "prefix \(n) parsed as \(r)")
            }
        }
        #expect(parse([]) == .failure(.truncated))
        #expect(parse([0]) == .failure(.truncated))
        #expect(parse([0, 1]) == .failure(.unterminatedField) || parse([0, 1]) == .failure(.truncated))
    }

    @Test("missing NUL terminators are refused")
    func unterminated() {
        #expect(parse([0, 1] + Array("file".utf8)) == .failure(.unterminatedField))
        #expect(parse([0, 1] + Array("file".utf8) + [0] + Array("octet".utf8)) == .failure(.unterminatedField))
        #expect(parse(rrq("f") + Array("blksize".utf8)) == .failure(.unterminatedField))
        #expect(parse(rrq("f") + Array("blksize".utf8) + [0]) == .failure(.oddOptions))
        #expect(parse([0, 1, 0] + Array("octet".utf8) + [0]) == .failure(.emptyFileName))
    }

    @Test("other opcodes are not requests")
    func otherOpcodes() {
        for op: UInt16 in [0, 3, 4, 5, 6, 7, 0x0101] {
            #expect(parse(rrq("f", op: op)) == .failure(.notARequest))
        }
    }

    @Test("too many options are refused")
    func tooManyOptions() {
        let opts = (0 ..< 40).map { ("o\($0)", "v") }
        #expect(parse(rrq("f", opts)) == .failure(.tooManyOptions))
    }

    @Test("paths: traversal, absolute, backslash and control bytes are refused; plain relative paths pass",
          arguments: [("../x", false), ("/etc/passwd", false), ("a\\b", false), ("a/../b", false), ("..", false),
                      ("a/..", false), ("", false), ("a\u{1}b", false), ("a\u{7F}", false),
                      ("x", true), ("boot/vmlinuz", true), ("a..b", true), ("...", true), ("./a", true), ("a//b", true)])
    func paths(path: String, ok: Bool) {
        #expect(TFTPPath.isAcceptable(path) == ok)
    }
}

@Suite("TFTP transfers")
struct TFTPTransferTests {
    func bytes(_ n: Int) -> [UInt8] { (0 ..< n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) } }

    /// Runs a transfer to the end, ACKing every block; returns the file and the block numbers seen.
    func fetch(_ s: inout Session, _ request: [UInt8]) -> ([UInt8], [UInt16], Int) {
        var data: [UInt8] = []
        var blocks: [UInt16] = []
        var (ev, reply) = s.send(request)
        #expect(ev == .started)
        var blockSize = 512
        if opcode(reply) == 6 {
            blockSize = Int(oackOptions(reply)["blksize"] ?? "512")!
            (ev, reply) = s.send(ackPacket(0))
        }
        while true {
            #expect(opcode(reply) == 3)
            let n = blockNumber(reply)
            blocks.append(n)
            data += reply.dropFirst(4)
            (ev, reply) = s.send(ackPacket(n))
            if ev == .completed { break }
            #expect(ev == .block)
        }
        return (data, blocks, blockSize)
    }

    @Test("a file is served in 512-byte blocks; a size that is a multiple of the block ends with an empty block",
          arguments: [0, 1, 511, 512, 513, 1024, 5000])
    func defaultBlocks(size: Int) {
        let f = MemoryFiles(["f": bytes(size)])
        var s = Session(f)
        let (data, blocks, _) = fetch(&s, rrq("f"))
        #expect(data == bytes(size))
        #expect(blocks.count == size / 512 + 1)
        #expect(s.server.activeTransfers == 0)
        #expect(f.open.isEmpty)
    }

    @Test("blksize and tsize are acknowledged in an OACK; blksize is clamped to the MTU")
    func options() {
        let f = MemoryFiles(["f": bytes(3000)])
        var s = Session(f, mtu: 576)
        let (ev, reply) = s.send(rrq("f", [("blksize", "1400"), ("tsize", "0"), ("color", "blue")]))
        #expect(ev == .started)
        #expect(opcode(reply) == 6)
        #expect(oackOptions(reply) == ["blksize": "544", "tsize": "3000"])
        let (_, data) = s.send(ackPacket(0))
        #expect(opcode(data) == 3 && blockNumber(data) == 1 && data.count == 4 + 544)
        #expect(20 + 8 + data.count <= 576)
    }

    @Test("blksize under 8 or not a number is refused with ERROR 8", arguments: ["7", "0", "-1", "abc", "", "12x"])
    func badBlockSize(value: String) {
        var s = Session(MemoryFiles(["f": bytes(10)]))
        let (ev, reply) = s.send(rrq("f", [("blksize", value)]))
        #expect(ev == .refused(.badOption))
        #expect(errorCode(reply) == 8)
        #expect(s.server.activeTransfers == 0)
    }

    @Test("blksize 8 works, with the whole file and the empty final block")
    func smallestBlock() {
        var s = Session(MemoryFiles(["f": bytes(64)]))
        let (data, blocks, size) = fetch(&s, rrq("f", [("blksize", "8")]))
        #expect(size == 8)
        #expect(data == bytes(64))
        #expect(blocks.count == 9)
    }

    @Test("block numbers wrap from 65535 to 0")
    func wrap() {
        let size = 8 * 65537
        var s = Session(MemoryFiles(["f": bytes(size)]))
        let (data, blocks, _) = fetch(&s, rrq("f", [("blksize", "8")]))
        #expect(data.count == size)
        #expect(blocks[65534] == 65535)
        #expect(blocks[65535] == 0)
        #expect(blocks[65536] == 1)
        #expect(blocks.count == 65538)
    }

    @Test("a lost ACK: the block is retransmitted after the timeout; duplicate ACKs are not answered")
    func retransmit() {
        var s = Session(MemoryFiles(["f": bytes(2000)]))
        let (_, first) = s.send(rrq("f"))
        #expect(blockNumber(first) == 1)
        #expect(s.poll(at: tT0 + .milliseconds(999)).0.isEmpty)
        let (resent, _) = s.poll(at: tT0 + .seconds(1))
        #expect(resent == [first])
        let (ev, second) = s.send(ackPacket(1), at: tT0 + .seconds(1))
        #expect(ev == .block && blockNumber(second) == 2)
        // The ACK for block 1 again (the client's own retransmission): ignored, no resend.
        let (dup, nothing) = s.send(ackPacket(1), at: tT0 + .seconds(1))
        #expect(dup == .ignored(.duplicateAck))
        #expect(nothing.isEmpty)
        let (ev3, third) = s.send(ackPacket(2), at: tT0 + .seconds(1))
        #expect(ev3 == .block && blockNumber(third) == 3)
    }

    @Test("a lost OACK is resent; a client that never answers is given up after maxRetransmits")
    func timeoutGivesUp() {
        let f = MemoryFiles(["f": bytes(100)])
        var s = Session(f)
        let (_, oack) = s.send(rrq("f", [("tsize", "0")]))
        var now = tT0
        for _ in 0 ..< s.server.maxRetransmits {
            now = now + .seconds(1)
            let (sent, gaveUp) = s.poll(at: now)
            #expect(sent == [oack])
            #expect(gaveUp == 0)
        }
        now = now + .seconds(1)
        let (sent, gaveUp) = s.poll(at: now)
        #expect(sent.isEmpty)
        #expect(gaveUp == 1)
        #expect(s.server.activeTransfers == 0)
        #expect(f.open.isEmpty)
        #expect(s.server.nextDeadline == nil)
    }

    @Test("the timeout option sets the retransmit interval")
    func timeoutOption() {
        var s = Session(MemoryFiles(["f": bytes(100)]))
        let (_, oack) = s.send(rrq("f", [("timeout", "3")]))
        #expect(oackOptions(oack) == ["timeout": "3"])
        #expect(s.server.nextDeadline == tT0 + .seconds(3))
        #expect(s.poll(at: tT0 + .seconds(2)).0.isEmpty)
        #expect(s.poll(at: tT0 + .seconds(3)).0.count == 1)
    }

    @Test("refusals: write request, unknown mode, bad path, missing file, malformed, ACK for no transfer")
    func refusals() {
        var s = Session(MemoryFiles(["f": bytes(10)]))
        #expect(s.send(rrq("f", op: 2)).0 == .refused(.writeRequest))
        #expect(errorCode(s.send(rrq("f", op: 2)).1) == 2)
        #expect(s.send(rrq("f", mode: "netascii")).0 == .refused(.unsupportedMode))
        #expect(s.send(rrq("f", mode: "mail")).0 == .refused(.unsupportedMode))
        #expect(s.send(rrq("../f")).0 == .refused(.badPath))
        #expect(s.send(rrq("/etc/passwd")).0 == .refused(.badPath))
        #expect(s.send(rrq("a\\b")).0 == .refused(.badPath))
        let (ev, reply) = s.send(rrq("nope"))
        #expect(ev == .refused(.notFound))
        #expect(errorCode(reply) == 1)
        #expect(s.send([0, 1, 0x66]).0 == .refused(.malformed))
        #expect(s.send([0]).0 == .refused(.malformed))
        #expect(s.send([0, 9]).0 == .refused(.malformed))
        #expect(s.send([0, 3, 0, 1]).0 == .refused(.malformed))
        #expect(s.send(ackPacket(1)).0 == .ignored(.unknownTransfer))
        #expect(s.send([0, 4, 0]).0 == .ignored(.malformed))
        #expect(s.server.activeTransfers == 0)
    }

    @Test("the transfer cap refuses one more; a client ERROR ends its transfer and frees the slot")
    func capacity() {
        let f = MemoryFiles(["f": bytes(2000)])
        var s = Session(f, capacity: 2)
        let a = TFTPPeer(address: client.address, port: 1, mac: client.mac)
        let b = TFTPPeer(address: client.address, port: 2, mac: client.mac)
        let c = TFTPPeer(address: client.address, port: 3, mac: client.mac)
        #expect(s.send(rrq("f"), from: a).0 == .started)
        #expect(s.send(rrq("f"), from: b).0 == .started)
        let (ev, reply) = s.send(rrq("f"), from: c)
        #expect(ev == .refused(.tooManyTransfers))
        #expect(errorCode(reply) == 0)
        #expect(s.send([0, 5, 0, 0, 0], from: a).0 == .ignored(.clientError))
        #expect(s.send(rrq("f"), from: c).0 == .started)
        #expect(f.open.count == 2)
        s.server.closeAll()
        #expect(f.open.isEmpty)
    }

    @Test("a repeated request from the same port starts over without leaking the first file")
    func repeatedRequest() {
        let f = MemoryFiles(["f": bytes(2000)])
        var s = Session(f)
        _ = s.send(rrq("f"))
        _ = s.send(ackPacket(1))
        let (ev, reply) = s.send(rrq("f"))
        #expect(ev == .started && blockNumber(reply) == 1)
        #expect(f.open.count == 1)
    }

    @Test("a read error ends the transfer with an ERROR")
    func readError() {
        let f = MemoryFiles(["f": bytes(2000)])
        var s = Session(f)
        _ = s.send(rrq("f"))
        f.failReads = true
        let (ev, reply) = s.send(ackPacket(1))
        #expect(ev == .refused(.readFailed))
        #expect(errorCode(reply) == 0)
        #expect(f.open.isEmpty)
    }
}
