// slirp4netns's API socket protocol (1.2.0), as a pure state machine: one request in, one reply out.
//
// Theory of operation: a client connects, writes one JSON object, reads the reply and the connection ends.
// slirp4netns reads once into a 4096-byte buffer; a read that fills it is "too large". The request is parsed the
// way slirp4netns's JSON library (parson) parses it: whitespace is C's isspace, anything after the first value is
// ignored, a duplicate key makes the text unparsable, nesting stops at 2048, the text ends at the first NUL byte.
// Three commands: add_hostfwd (proto, host_addr, host_port, guest_addr, guest_port; IPv4 only; an empty
// host_addr means 0.0.0.0 and an empty guest_addr the --configure address), list_hostfwd and remove_hostfwd (by
// id; ids count from 1 and are never reused). Replies are slirp4netns's, byte for byte: `{"return":{"id":N}}`,
// `{"return":{}}`, a bare `{"entries":[…]}`, or `{"error":{"desc":"…"}}`.
// Deliberate differences, all where slirp4netns misbehaves: a missing or non-string proto is "bad arguments.proto"
// (slirp4netns dereferences NULL and dies); ports outside 1-65535 are refused as bad ports (slirp4netns truncates
// them to 16 bits); the table holds at most `capacity` forwards (then "slirp_add_hostfwd failed").
// Nothing here touches a socket: `Slirp4netnsForwarder` opens and closes the listeners.

import VNetGateway
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

/// Opens and closes the host listeners behind the API (the runtime; a fake in unit tests).
public protocol Slirp4netnsForwarder: AnyObject {
    /// Binds the rule's listener; returns a handle for `removeForward`, or nil when it cannot (port in use...).
    func addForward(_ rule: HostForward) -> Int?
    func removeForward(_ handle: Int)
}

/// A JSON value as parson holds it (objects keep their keys in order).
public indirect enum Slirp4netnsJSON: Equatable {
    case null, bool(Bool), number(Double), string([UInt8]), array([Slirp4netnsJSON]), object([([UInt8], Slirp4netnsJSON)])

    public static func == (a: Slirp4netnsJSON, b: Slirp4netnsJSON) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)): return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    func member(_ key: String) -> Slirp4netnsJSON? {
        guard case .object(let pairs) = self else { return nil }
        let k = Array(key.utf8)
        return pairs.first(where: { $0.0 == k })?.1
    }

    /// `arguments.NAME` as a C string (up to its first NUL, as slirp4netns reads it), or nil.
    func string(_ key: String) -> [UInt8]? {
        guard case .string(let s)? = member(key) else { return nil }
        return Array(s.prefix(while: { $0 != 0 }))
    }

    /// parson's dotget_number: 0 when absent or not a number.
    func number(_ key: String) -> Double {
        guard case .number(let n)? = member(key) else { return 0 }
        return n
    }
}

/// The parson-compatible parser. Every read is bounds-checked; recursion is capped at `maximumDepth`.
public struct Slirp4netnsJSONParser {
    public static let maximumDepth = 2048
    let bytes: [UInt8]
    var i = 0

    /// Parses the first JSON value of `input` (up to its first NUL); nil when it is not JSON.
    public static func parse(_ input: [UInt8]) -> Slirp4netnsJSON? {
        var p = Slirp4netnsJSONParser(bytes: Array(input.prefix(while: { $0 != 0 })))
        if p.bytes.count >= 3, p.bytes[0] == 0xEF, p.bytes[1] == 0xBB, p.bytes[2] == 0xBF { p.i = 3 }
        return p.value(depth: 0)
    }

    var peek: UInt8? { i < bytes.count ? bytes[i] : nil }

    mutating func skipSpace() {
        while let c = peek, c == 0x20 || (0x09 ... 0x0D).contains(c) { i += 1 }
    }

    mutating func value(depth: Int) -> Slirp4netnsJSON? {
        guard depth <= Slirp4netnsJSONParser.maximumDepth else { return nil }
        skipSpace()
        guard let c = peek else { return nil }
        switch c {
        case UInt8(ascii: "{"): return object(depth: depth + 1)
        case UInt8(ascii: "["): return array(depth: depth + 1)
        case UInt8(ascii: "\""): return string().map { .string($0) }
        case UInt8(ascii: "t"): return literal("true", .bool(true))
        case UInt8(ascii: "f"): return literal("false", .bool(false))
        case UInt8(ascii: "n"): return literal("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0") ... UInt8(ascii: "9"): return number()
        default: return nil
        }
    }

    mutating func literal(_ word: String, _ v: Slirp4netnsJSON) -> Slirp4netnsJSON? {
        let w = Array(word.utf8)
        guard bytes.count - i >= w.count, Array(bytes[i ..< i + w.count]) == w else { return nil }
        i += w.count
        return v
    }

    mutating func object(depth: Int) -> Slirp4netnsJSON? {
        i += 1
        var pairs: [([UInt8], Slirp4netnsJSON)] = []
        skipSpace()
        if peek == UInt8(ascii: "}") { i += 1; return .object(pairs) }
        while true {
            skipSpace()
            guard peek == UInt8(ascii: "\""), let key = string() else { return nil }
            skipSpace()
            guard peek == UInt8(ascii: ":") else { return nil }
            i += 1
            guard let v = value(depth: depth) else { return nil }
            guard !pairs.contains(where: { $0.0 == key }) else { return nil }
            pairs.append((key, v))
            skipSpace()
            guard let c = peek else { return nil }
            i += 1
            if c == UInt8(ascii: "}") { return .object(pairs) }
            guard c == UInt8(ascii: ",") else { return nil }
        }
    }

    mutating func array(depth: Int) -> Slirp4netnsJSON? {
        i += 1
        var items: [Slirp4netnsJSON] = []
        skipSpace()
        if peek == UInt8(ascii: "]") { i += 1; return .array(items) }
        while true {
            guard let v = value(depth: depth) else { return nil }
            items.append(v)
            skipSpace()
            guard let c = peek else { return nil }
            i += 1
            if c == UInt8(ascii: "]") { return .array(items) }
            guard c == UInt8(ascii: ",") else { return nil }
        }
    }

    mutating func hex4() -> UInt32? {
        guard bytes.count - i >= 4 else { return nil }
        var v: UInt32 = 0
        for k in 0 ..< 4 {
            let c = bytes[i + k]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0") ... UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a") ... UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A") ... UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: return nil
            }
            v = v << 4 | d
        }
        i += 4
        return v
    }

    /// A quoted string with its escapes resolved (UTF-8 out); the opening quote is at `i`.
    mutating func string() -> [UInt8]? {
        i += 1
        var out: [UInt8] = []
        while let c = peek {
            i += 1
            if c == UInt8(ascii: "\"") { return out }
            guard c >= 0x20 else { return nil }   // a raw control character (tab and newline too) ends the parse, as in parson
            guard c == UInt8(ascii: "\\") else { out.append(c); continue }
            guard let e = peek else { return nil }
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                guard var cp = hex4() else { return nil }
                if (0xD800 ... 0xDBFF).contains(cp) {
                    guard bytes.count - i >= 6, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else { return nil }
                    i += 2
                    guard let low = hex4(), (0xDC00 ... 0xDFFF).contains(low) else { return nil }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00 ... 0xDFFF).contains(cp) {
                    return nil
                }
                guard let scalar = Unicode.Scalar(cp) else { return nil }
                out.append(contentsOf: Array(String(Character(scalar)).utf8))
            default: return nil
            }
        }
        return nil
    }

    /// strtod over the number's text, then parson's checks (no leading zeros, no hex, no inf/nan or overflow).
    mutating func number() -> Slirp4netnsJSON? {
        var text: [CChar] = []
        var j = i
        let allowed = Array("0123456789+-.eExXaAbBcCdDfFiInNpPtTyY".utf8)
        while j < bytes.count, allowed.contains(bytes[j]), text.count < 512 {
            text.append(CChar(bitPattern: bytes[j])); j += 1
        }
        text.append(0)
        var consumed = 0
        let v: Double = text.withUnsafeBufferPointer { buf in
            var end: UnsafeMutablePointer<CChar>? = nil
            let base = UnsafeMutablePointer(mutating: buf.baseAddress!)
            let r = strtod(base, &end)
            consumed = end.map { $0 - base } ?? 0
            return r
        }
        guard consumed > 0, v.isFinite else { return nil }
        let s = Array(bytes[i ..< i + consumed])
        if s.count > 1, s[0] == UInt8(ascii: "0"), s[1] != UInt8(ascii: ".") { return nil }
        if s.count > 2, s[0] == UInt8(ascii: "-"), s[1] == UInt8(ascii: "0"), s[2] != UInt8(ascii: ".") { return nil }
        if s.contains(UInt8(ascii: "x")) || s.contains(UInt8(ascii: "X")) { return nil }
        i += consumed
        return .number(v)
    }
}

/// One API endpoint's state: the forwards it added, with their ids.
public struct Slirp4netnsAPI {
    /// slirp4netns's buffer: a read of this many bytes is "too large".
    public static let bufferSize = 4096
    /// Forwards the API may hold at once.
    public static let capacity = 1024

    public struct Entry: Equatable {
        public var id: Int
        public var rule: HostForward
        /// The guest address as given (0.0.0.0 is listed as such; the rule holds what it means).
        public var listedGuestAddress: IPv4Address
        var handle: Int
    }

    public private(set) var entries: [Entry] = []
    var nextID = 1
    /// The address an empty guest_addr means (--configure's, 10.0.2.100 by default).
    public var defaultGuestAddress: IPv4Address
    /// What 0.0.0.0 as guest_addr means (libslirp: the first DHCP address).
    public var dhcpStart: IPv4Address
    /// Requests answered with an error (counted for the runtime's report).
    public private(set) var rejected: UInt64 = 0

    public init(defaultGuestAddress: IPv4Address, dhcpStart: IPv4Address) {
        self.defaultGuestAddress = defaultGuestAddress
        self.dhcpStart = dhcpStart
    }

    static func error(_ desc: String) -> [UInt8] { Array("{\"error\":{\"desc\":\"bad request: \(desc)\"}}".utf8) }

    /// Answers the bytes of one read (`request.count == bufferSize` means the read filled the buffer).
    public mutating func handle(_ request: [UInt8], forwarder: Slirp4netnsForwarder) -> [UInt8] {
        let reply = answer(request, forwarder: forwarder)
        if reply.starts(with: Array("{\"error\"".utf8)) { rejected &+= 1 }
        return reply
    }

    mutating func answer(_ request: [UInt8], forwarder: Slirp4netnsForwarder) -> [UInt8] {
        guard request.count < Slirp4netnsAPI.bufferSize else { return Slirp4netnsAPI.error("too large message") }
        guard let json = Slirp4netnsJSONParser.parse(request) else { return Slirp4netnsAPI.error("cannot parse JSON") }
        guard case .object = json else { return Slirp4netnsAPI.error("json_object() failed") }
        guard let execute = json.string("execute") else { return Slirp4netnsAPI.error("no execute found") }
        let arguments = json.member("arguments") ?? .null
        switch String(decoding: execute, as: UTF8.self) {
        case "add_hostfwd": return add(arguments, forwarder: forwarder)
        case "list_hostfwd": return list()
        case "remove_hostfwd": return remove(arguments, forwarder: forwarder)
        default: return Slirp4netnsAPI.error("unknown execute")
        }
    }

    /// A port as slirp4netns reads it ((int) of the number), refused outside 1-65535.
    static func port(_ n: Double) -> UInt16? {
        guard n.isFinite, n > -2_147_483_648, n < 2_147_483_648 else { return nil }
        let v = Int(n.rounded(.towardZero))
        guard (1 ... 65535).contains(v) else { return nil }
        return UInt16(v)
    }

    static func ipv4(_ text: [UInt8]) -> IPv4Address? {
        // inet_pton(AF_INET): four decimal parts, no leading zeros beyond one digit... IPv4Address's parser is
        // as strict (dotted quad only).
        guard text.count <= 15, text.allSatisfy({ $0 == UInt8(ascii: ".") || (UInt8(ascii: "0") ... UInt8(ascii: "9")).contains($0) }) else { return nil }
        let parts = text.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard (1 ... 3).contains(p.count), !(p.count > 1 && p.first == UInt8(ascii: "0")) else { return nil }
            let n = p.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            guard n <= 255 else { return nil }
            v = v << 8 | UInt32(n)
        }
        return IPv4Address(rawValue: v)
    }

    mutating func add(_ a: Slirp4netnsJSON, forwarder: Slirp4netnsForwarder) -> [UInt8] {
        let proto: ForwardProtocol
        switch a.string("proto").map({ String(decoding: $0, as: UTF8.self) }) {
        case "tcp": proto = .tcp
        case "udp": proto = .udp
        default: return Slirp4netnsAPI.error("add_hostfwd: bad arguments.proto")
        }
        var hostText = a.string("host_addr") ?? []
        if hostText.isEmpty { hostText = Array("0.0.0.0".utf8) }
        guard let hostAddress = Slirp4netnsAPI.ipv4(hostText) else { return Slirp4netnsAPI.error("add_hostfwd: bad arguments.host_addr") }
        guard let hostPort = Slirp4netnsAPI.port(a.number("host_port")) else { return Slirp4netnsAPI.error("add_hostfwd: bad arguments.host_port") }
        var listedGuest = defaultGuestAddress
        if let g = a.string("guest_addr"), !g.isEmpty {
            guard let parsed = Slirp4netnsAPI.ipv4(g) else { return Slirp4netnsAPI.error("add_hostfwd: bad arguments.guest_addr") }
            listedGuest = parsed
        }
        let guestAddress = listedGuest.rawValue == 0 ? dhcpStart : listedGuest
        guard let guestPort = Slirp4netnsAPI.port(a.number("guest_port")) else { return Slirp4netnsAPI.error("add_hostfwd: bad arguments.guest_port") }
        let rule = HostForward(proto: proto, hostAddress: IPAddress(hostAddress), hostPort: hostPort,
                               guestAddress: IPAddress(guestAddress), guestPort: guestPort)
        guard entries.count < Slirp4netnsAPI.capacity, let handle = forwarder.addForward(rule) else {
            return Slirp4netnsAPI.error("add_hostfwd: slirp_add_hostfwd failed")
        }
        let entry = Entry(id: nextID, rule: rule, listedGuestAddress: listedGuest, handle: handle)
        nextID += 1
        entries.append(entry)
        return Array("{\"return\":{\"id\":\(entry.id)}}".utf8)
    }

    func list() -> [UInt8] {
        let items = entries.map { e in
            "{\"id\":\(e.id),\"proto\":\"\(e.rule.proto.rawValue)\",\"host_addr\":\"\(e.rule.hostAddress)\",\"host_port\":\(e.rule.hostPort),\"guest_addr\":\"\(e.listedGuestAddress)\",\"guest_port\":\(e.rule.guestPort)}"
        }
        return Array("{\"entries\":[\(items.joined(separator: ","))]}".utf8)
    }

    mutating func remove(_ a: Slirp4netnsJSON, forwarder: Slirp4netnsForwarder) -> [UInt8] {
        let n = a.number("id")
        guard n.isFinite, n > -2_147_483_648, n < 2_147_483_648,
              let k = entries.firstIndex(where: { $0.id == Int(n.rounded(.towardZero)) }) else {
            return Slirp4netnsAPI.error("remove_hostfwd: bad arguments.id")
        }
        forwarder.removeForward(entries[k].handle)
        entries.remove(at: k)
        return Array("{\"return\":{}}".utf8)
    }
}
