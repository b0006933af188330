// Theory of Operation: TFTP (RFC 1350, options RFC 2347/2348/2349)
// -------------------------------------------------------------------
// A read-only TFTP server as a pure state machine: requests and ACKs come in with `now`, replies are written
// into the caller's buffer, and `poll(now:)` drives retransmission. Nothing here reads the clock or touches
// the file system: files are reached through `TFTPFileSource`, which the runtime implements with real files
// under the `tftp=` root and tests implement in memory.
//
// - Only RRQ in "octet" mode is served (as libslirp). WRQ, other modes, and malformed requests are answered
//   with an ERROR packet. File names are checked by `TFTPPath.isAcceptable` before the source sees them: no
//   absolute paths, no `..` components, no backslashes, no control bytes (NUL cannot occur: it ends the field).
// - Options: blksize (8...65464, clamped to what one unfragmented datagram can carry at the MTU; under 8 or
//   not a number is refused with ERROR 8), tsize (answered with the file size), timeout (1...255 s, used as
//   the retransmit interval). Unknown options are ignored. When any option is accepted an OACK goes first and
//   the transfer starts on ACK 0.
// - Sessions are keyed by the client's address and port (the server answers from port 69, as libslirp
//   does), and there are at most `capacity` of them; a request beyond that gets ERROR 0 "too many transfers".
// - One DATA block is outstanding at a time. A duplicate ACK (for the previous block) is ignored, never
//   answered with a resend (RFC 1123's Sorcerer's Apprentice fix); the outstanding block is sent again when
//   `timeout` passes without its ACK, and after `maxRetransmits` the transfer is abandoned.
// - A file whose size is a multiple of the block size ends with an empty block; block numbers wrap from
//   65535 to 0. Each read is at most one block, at an offset below the size the file had when it was opened.

import VNetBuffers
import VNetWire

/// What opening a file under the TFTP root gave.
public enum TFTPOpenResult: Equatable, Sendable {
    case opened(handle: Int32, size: UInt64)
    case notFound
    case accessDenied
}

/// Read-only access to the files under the TFTP root. `path` has passed `TFTPPath.isAcceptable`.
public protocol TFTPFileSource: AnyObject {
    func open(_ path: String) -> TFTPOpenResult
    /// Reads up to `buffer.count` bytes at `offset`; nil on an I/O error.
    func read(_ handle: Int32, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int?
    func close(_ handle: Int32)
}

public enum TFTPPath {
    public static let maximumLength = 1024

    /// A relative path made of plain components: not empty, no leading `/`, no `..` component, no
    /// backslash, no control characters (including NUL).
    public static func isAcceptable(_ path: String) -> Bool {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumLength, bytes[0] != UInt8(ascii: "/") else { return false }
        guard !bytes.contains(where: { $0 < 0x20 || $0 == 0x7F || $0 == UInt8(ascii: "\\") }) else { return false }
        return !bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).contains { $0.elementsEqual("..".utf8) }
    }
}

public enum TFTPOpcode: UInt16, Sendable {
    case readRequest = 1, writeRequest = 2, data = 3, ack = 4, error = 5, optionAck = 6
}

/// TFTP error codes (RFC 1350 section 5, RFC 2347 for 8).
public enum TFTPErrorCode: UInt16, Sendable {
    case notDefined = 0, fileNotFound = 1, accessViolation = 2, diskFull = 3, illegalOperation = 4
    case unknownTransferID = 5, fileExists = 6, noSuchUser = 7, optionNegotiation = 8
}

/// A parsed read or write request.
public struct TFTPRequest: Equatable, Sendable {
    public var opcode: TFTPOpcode
    public var fileName: String
    public var mode: String
    /// Options in request order, names lower-cased.
    public var options: [(String, String)]

    public static func == (a: TFTPRequest, b: TFTPRequest) -> Bool {
        a.opcode == b.opcode && a.fileName == b.fileName && a.mode == b.mode
            && a.options.count == b.options.count && zip(a.options, b.options).allSatisfy { $0 == $1 }
    }

    public enum ParseError: Error, Equatable, Sendable {
        case truncated, notARequest, unterminatedField, emptyFileName, oddOptions, tooManyOptions
    }

    public static let maximumOptions = 16

    /// Parses RRQ/WRQ: opcode, then NUL-terminated file name, mode, and option name/value pairs.
    public static func parse(_ p: UnsafeRawBufferPointer) throws(ParseError) -> TFTPRequest {
        guard p.count >= 2 else { throw .truncated }
        guard let op = TFTPOpcode(rawValue: p.u16(0)), op == .readRequest || op == .writeRequest else { throw .notARequest }
        var fields: [String] = []
        var start = 2
        var i = 2
        while i < p.count {
            if p[i] == 0 {
                fields.append(String(decoding: p.slice(start ..< i), as: UTF8.self))
                guard fields.count <= 2 + 2 * maximumOptions else { throw .tooManyOptions }
                start = i + 1
            }
            i += 1
        }
        guard start == p.count else { throw .unterminatedField }
        guard fields.count >= 2 else { throw .truncated }
        guard !fields[0].isEmpty else { throw .emptyFileName }
        guard fields.count % 2 == 0 else { throw .oddOptions }
        var options: [(String, String)] = []
        var k = 2
        while k < fields.count {
            options.append((fields[k].lowercased(), fields[k + 1]))
            k += 2
        }
        return TFTPRequest(opcode: op, fileName: fields[0], mode: fields[1].lowercased(), options: options)
    }
}

/// The client end of a transfer.
public struct TFTPPeer: Hashable, Sendable {
    public var address: IPv4Address
    public var port: UInt16
    public var mac: MACAddress
    public init(address: IPv4Address, port: UInt16, mac: MACAddress) {
        self.address = address
        self.port = port
        self.mac = mac
    }
}

/// What a call to the server did, for the caller's counters.
public enum TFTPEvent: Equatable, Sendable {
    /// A transfer began (first DATA or OACK written).
    case started
    /// The next block was written.
    case block
    /// The final block was acknowledged; nothing to send.
    case completed
    /// An ERROR packet was written in answer to a bad or refused request.
    case refused(TFTPRefusal)
    /// Nothing to send (duplicate ACK, ACK for no transfer, client ERROR ...).
    case ignored(TFTPIgnore)
}

public enum TFTPRefusal: Equatable, Sendable {
    case malformed, writeRequest, unsupportedMode, badPath, notFound, accessDenied, badOption, tooManyTransfers, readFailed
}

public enum TFTPIgnore: Equatable, Sendable {
    case duplicateAck, unknownTransfer, clientError, malformed
}

/// The result of handling one packet: `length` bytes to send back to `peer` (0: nothing).
public struct TFTPOutput: Equatable, Sendable {
    public var length: Int
    public var event: TFTPEvent
}

public struct TFTPServer {
    public static let port: UInt16 = 69
    public static let defaultBlockSize = 512
    public static let minimumBlockSize = 8
    public static let maximumBlockSize = 65464
    /// A DATA packet of the largest block plus its header: the output buffer must hold this much.
    public static let maximumPacket = 4 + maximumBlockSize

    struct Transfer {
        var peer: TFTPPeer
        var handle: Int32
        var size: UInt64
        var blockSize: Int
        /// Index (1-based, not wrapped) of the outstanding block; 0 while the OACK is outstanding.
        var blockIndex: UInt64
        /// The outstanding block is the last one.
        var finalSent: Bool
        var lastSent: Instant
        var retransmits: Int
        var timeout: Instant.Duration
        /// The OACK's length (to resend it) while `blockIndex` is 0.
        var oack: [UInt8]
    }

    public let files: any TFTPFileSource
    public let capacity: Int
    /// Largest block that fits one unfragmented datagram (MTU - IPv4 - UDP - TFTP header).
    public let maximumBlockForMTU: Int
    public var defaultTimeout: Instant.Duration = .seconds(1)
    public var maxRetransmits = 5
    var transfers: [Transfer] = []

    public init(files: any TFTPFileSource, mtu: Int, capacity: Int = 16) {
        self.files = files
        self.capacity = capacity
        maximumBlockForMTU = max(TFTPServer.minimumBlockSize, min(TFTPServer.maximumBlockSize, mtu - 20 - 8 - 4))
        transfers.reserveCapacity(capacity)
    }

    public var activeTransfers: Int { transfers.count }

    /// The earliest retransmit deadline, or nil with no transfer in progress.
    public var nextDeadline: Instant? {
        var next: Instant? = nil
        for t in transfers {
            let d = t.lastSent + t.timeout
            if next == nil || d < next! { next = d }
        }
        return next
    }

    /// Handles one datagram from `peer` to port 69; a reply (if any) is written into `out` (at least
    /// `maximumPacket` bytes).
    public mutating func handle(_ p: UnsafeRawBufferPointer, from peer: TFTPPeer, now: Instant,
                                into out: UnsafeMutableRawBufferPointer) -> TFTPOutput {
        guard p.count >= 2 else { return error(.illegalOperation, "malformed packet", out, .malformed) }
        switch TFTPOpcode(rawValue: p.u16(0)) {
        case .readRequest, .writeRequest:
            return request(p, from: peer, now: now, into: out)
        case .ack:
            guard p.count >= 4 else { return TFTPOutput(length: 0, event: .ignored(.malformed)) }
            return ack(p.u16(2), from: peer, now: now, into: out)
        case .error:
            if let i = index(of: peer) { end(i) }
            return TFTPOutput(length: 0, event: .ignored(.clientError))
        case .data, .optionAck:
            return error(.illegalOperation, "read-only server", out, .malformed)
        case nil:
            return error(.illegalOperation, "unknown opcode", out, .malformed)
        }
    }

    func index(of peer: TFTPPeer) -> Int? {
        transfers.firstIndex { $0.peer.address == peer.address && $0.peer.port == peer.port }
    }

    mutating func end(_ i: Int) {
        files.close(transfers[i].handle)
        transfers.remove(at: i)
    }

    mutating func request(_ p: UnsafeRawBufferPointer, from peer: TFTPPeer, now: Instant,
                          into out: UnsafeMutableRawBufferPointer) -> TFTPOutput {
        // A repeated request from the same port starts over (the client did not see our first answer).
        if let i = index(of: peer) { end(i) }
        let req: TFTPRequest
        do { req = try TFTPRequest.parse(p) } catch { return self.error(.illegalOperation, "malformed request", out, .malformed) }
        guard req.opcode == .readRequest else { return error(.accessViolation, "read-only server", out, .writeRequest) }
        guard req.mode == "octet" else { return error(.illegalOperation, "unsupported transfer mode", out, .unsupportedMode) }
        guard TFTPPath.isAcceptable(req.fileName) else { return error(.accessViolation, "access violation", out, .badPath) }

        var blockSize = TFTPServer.defaultBlockSize
        var timeout = defaultTimeout
        var accepted: [(String, String)] = []
        var wantsSize = false
        for (name, value) in req.options where !accepted.contains(where: { $0.0 == name }) {
            switch name {
            case "blksize":
                guard let v = Int(value), value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), v >= TFTPServer.minimumBlockSize else {
                    return error(.optionNegotiation, "bad blksize", out, .badOption)
                }
                blockSize = min(v, maximumBlockForMTU)
                accepted.append((name, String(blockSize)))
            case "tsize":
                wantsSize = true
                accepted.append((name, ""))
            case "timeout":
                guard let v = Int(value), (1 ... 255).contains(v) else { continue }
                timeout = .seconds(UInt64(v))
                accepted.append((name, String(v)))
            default:
                continue
            }
        }
        guard transfers.count < capacity else { return error(.notDefined, "too many transfers", out, .tooManyTransfers) }
        let handle: Int32, size: UInt64
        switch files.open(req.fileName) {
        case .opened(let h, let s): (handle, size) = (h, s)
        case .notFound: return error(.fileNotFound, "file not found", out, .notFound)
        case .accessDenied: return error(.accessViolation, "access violation", out, .accessDenied)
        }
        var t = Transfer(peer: peer, handle: handle, size: size, blockSize: blockSize, blockIndex: 0, finalSent: false,
                         lastSent: now, retransmits: 0, timeout: timeout, oack: [])
        if accepted.isEmpty {
            t.blockIndex = 1
            transfers.append(t)
            guard let n = writeBlock(transfers.count - 1, into: out) else {
                end(transfers.count - 1)
                return error(.notDefined, "read error", out, .readFailed)
            }
            return TFTPOutput(length: n, event: .started)
        }
        var oack: [UInt8] = [0, UInt8(TFTPOpcode.optionAck.rawValue)]
        for (name, value) in accepted {
            oack += Array(name.utf8) + [0] + Array((name == "tsize" && wantsSize ? String(size) : value).utf8) + [0]
        }
        t.oack = oack
        transfers.append(t)
        oack.withUnsafeBytes { out.copy($0, to: 0) }
        return TFTPOutput(length: oack.count, event: .started)
    }

    mutating func ack(_ block: UInt16, from peer: TFTPPeer, now: Instant, into out: UnsafeMutableRawBufferPointer) -> TFTPOutput {
        guard let i = index(of: peer) else { return TFTPOutput(length: 0, event: .ignored(.unknownTransfer)) }
        let outstanding = UInt16(truncatingIfNeeded: transfers[i].blockIndex)
        guard block == outstanding else { return TFTPOutput(length: 0, event: .ignored(.duplicateAck)) }
        if transfers[i].finalSent {
            end(i)
            return TFTPOutput(length: 0, event: .completed)
        }
        transfers[i].blockIndex += 1
        transfers[i].retransmits = 0
        transfers[i].lastSent = now
        guard let n = writeBlock(i, into: out) else {
            end(i)
            return error(.notDefined, "read error", out, .readFailed)
        }
        return TFTPOutput(length: n, event: .block)
    }

    /// Writes DATA for transfer `i`'s outstanding block into `out`; nil when the file cannot be read.
    mutating func writeBlock(_ i: Int, into out: UnsafeMutableRawBufferPointer) -> Int? {
        let t = transfers[i]
        let offset = (t.blockIndex - 1) * UInt64(t.blockSize)
        let want = offset >= t.size ? 0 : Int(min(UInt64(t.blockSize), t.size - offset))
        var got = 0
        while got < want {
            guard let n = files.read(t.handle, offset: offset + UInt64(got), into: out.slice(4 + got ..< 4 + want)) else { return nil }
            if n == 0 { break }   // the file shrank: this block ends the transfer
            got += n
        }
        out.put16(0, TFTPOpcode.data.rawValue)
        out.put16(2, UInt16(truncatingIfNeeded: t.blockIndex))
        transfers[i].finalSent = got < t.blockSize
        return 4 + got
    }

    /// Resends what every transfer whose timeout passed has outstanding, or gives it up after
    /// `maxRetransmits`. `send(peer, length)` is called with each packet written into `out`; `gaveUp` counts.
    public mutating func poll(now: Instant, into out: UnsafeMutableRawBufferPointer,
                              send: (TFTPPeer, Int) -> Void, gaveUp: () -> Void) {
        var i = 0
        while i < transfers.count {
            let t = transfers[i]
            guard now - t.lastSent >= t.timeout else { i += 1; continue }
            guard t.retransmits < maxRetransmits else {
                end(i)
                gaveUp()
                continue
            }
            transfers[i].retransmits += 1
            transfers[i].lastSent = now
            if t.blockIndex == 0 {
                t.oack.withUnsafeBytes { out.copy($0, to: 0) }
                send(t.peer, t.oack.count)
            } else if let n = writeBlock(i, into: out) {
                send(t.peer, n)
            } else {
                end(i)
                gaveUp()
                continue
            }
            i += 1
        }
    }

    /// Ends every transfer (closing its file).
    public mutating func closeAll() {
        while !transfers.isEmpty { end(transfers.count - 1) }
    }

    func error(_ code: TFTPErrorCode, _ message: String, _ out: UnsafeMutableRawBufferPointer, _ why: TFTPRefusal) -> TFTPOutput {
        out.put16(0, TFTPOpcode.error.rawValue)
        out.put16(2, code.rawValue)
        var n = 4
        for b in message.utf8 { out[n] = b; n += 1 }
        out[n] = 0
        return TFTPOutput(length: n + 1, event: .refused(why))
    }
}
