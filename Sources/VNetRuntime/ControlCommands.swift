// The control protocol: one JSON request per line in, one JSON reply per line out (QMP's shape).
//
// Theory of Operation
// -------------------
// A request is `{"execute": NAME, "arguments": {...}, "id": ANY}`; the reply is `{"return": VALUE}` or
// `{"error": {"class": CLASS, "desc": TEXT}}`, with the request's `id` echoed when it had one (as QMP does).
// vnet adds one member: `"human": true` asks for the readable rendering of the result (a string, what
// `vnet ctl` prints) instead of the structured value. Every failure to read a request (not JSON, not an
// object, no `execute`, bad `arguments`) is a structured error reply, never a dropped connection; an unknown
// command's error lists the known ones.
//
// The commands themselves come from a `ControlTarget`: whichever runtime is running (user-mode network,
// switch, ...) lists its commands with their handlers; this file knows nothing of gateways or ports. The
// dispatcher adds `help`, `query-commands` and `events` (which subscribes the client to asynchronous events).
// This is the control plane: Foundation's JSON is used freely here, and never on the data path.

import Foundation

/// A runtime that can be driven through the control socket.
public protocol ControlTarget: AnyObject {
    /// The commands this runtime serves, in the order `help` lists them.
    var controlCommands: [ControlCommand] { get }
}

/// What a command returns: the structured value (JSON-serialisable: String, Int, Double, Bool, arrays and
/// `[String: Any]`) and its readable rendering.
public struct ControlResult {
    public var value: Any
    public var text: String
    public init(value: Any, text: String) {
        self.value = value
        self.text = text
    }
}

public struct ControlError: Error, CustomStringConvertible {
    /// QMP's error classes: GenericError, CommandNotFound.
    public var errorClass: String
    public var desc: String
    public init(_ desc: String, class errorClass: String = "GenericError") {
        self.errorClass = errorClass
        self.desc = desc
    }
    public var description: String { desc }
}

/// A request's `arguments`, with typed accessors that fail with a readable error.
public struct ControlArguments {
    public let values: [String: Any]
    public init(_ values: [String: Any]) { self.values = values }

    public func string(_ key: String) throws -> String {
        guard let v = values[key] else { throw ControlError("missing argument '\(key)'") }
        guard let s = v as? String else { throw ControlError("argument '\(key)' must be a string") }
        return s
    }

    public func optionalString(_ key: String) throws -> String? {
        guard values[key] != nil, !(values[key] is NSNull) else { return nil }
        return try string(key)
    }

    public func optionalBool(_ key: String) throws -> Bool? {
        guard let v = values[key] else { return nil }
        if let s = v as? String, s == "true" || s == "false" || s == "on" || s == "off" { return s == "true" || s == "on" }
        guard let b = v as? Bool else { throw ControlError("argument '\(key)' must be true or false") }
        return b
    }

    public func optionalInt(_ key: String) throws -> Int? {
        guard let v = values[key] else { return nil }
        if let s = v as? String, let i = Int(s) { return i }
        guard let n = v as? NSNumber, n.doubleValue == Double(n.intValue) else { throw ControlError("argument '\(key)' must be an integer") }
        return n.intValue
    }
}

public struct ControlCommand {
    public var name: String
    /// One line: the arguments it takes and what it does.
    public var help: String
    public var run: (ControlArguments) throws -> ControlResult

    public init(_ name: String, help: String, run: @escaping (ControlArguments) throws -> ControlResult) {
        self.name = name
        self.help = help
        self.run = run
    }
}

/// Turns request lines into reply lines for one target.
public final class ControlDispatcher {
    var commands: [String: ControlCommand] = [:]
    var order: [String] = []

    public init(target: ControlTarget) {
        let builtIn = [
            ControlCommand("help", help: "list the commands") { [unowned self] _ in
                let rows = self.order.map { ($0, self.commands[$0]!.help) }
                let width = rows.map(\.0.count).max() ?? 0
                return ControlResult(value: rows.map { ["name": $0.0, "help": $0.1] },
                                     text: rows.map { $0.0.padding(toLength: width + 2, withPad: " ", startingAt: 0) + $0.1 }
                                         .joined(separator: "\n"))
            },
            ControlCommand("query-commands", help: "the command names (QMP's query-commands)") { [unowned self] _ in
                ControlResult(value: self.order.map { ["name": $0] }, text: self.order.joined(separator: "\n"))
            },
            ControlCommand("events", help: "[enable=true|false] receive asynchronous events on this connection") { _ in
                ControlResult(value: [String: Any](), text: "")   // the server acts on it (see `subscription(for:)`)
            },
        ]
        for c in builtIn + target.controlCommands where commands[c.name] == nil {
            commands[c.name] = c
            order.append(c.name)
        }
    }

    public var commandNames: [String] { order }

    /// What a request line asks of the connection itself: nil, or subscribe (true) / unsubscribe (false).
    public struct Outcome {
        public var reply: [UInt8]
        public var subscribe: Bool?
    }

    /// Handles one request line (without its newline); the reply ends with a newline.
    public func respond(to line: [UInt8]) -> Outcome {
        var id: Any? = nil
        func failure(_ e: ControlError) -> Outcome {
            Outcome(reply: ControlDispatcher.encodeError(e, id: id), subscribe: nil)
        }
        guard ControlDispatcher.nestingDepth(line) <= ControlDispatcher.maximumNesting else {
            return failure(ControlError("JSON parse error: nested deeper than \(ControlDispatcher.maximumNesting) levels"))
        }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed])
        } catch {
            return failure(ControlError("JSON parse error: the request is not valid JSON"))
        }
        guard let request = object as? [String: Any] else { return failure(ControlError("QMP input must be a JSON object")) }
        id = request["id"]
        guard let name = request["execute"] as? String else { return failure(ControlError("QMP input lacks member 'execute' (a string)")) }
        let args: [String: Any]
        switch request["arguments"] {
        case nil, is NSNull: args = [:]
        case let a as [String: Any]: args = a
        default: return failure(ControlError("QMP input member 'arguments' must be an object"))
        }
        for key in request.keys where !["execute", "arguments", "id", "human"].contains(key) {
            return failure(ControlError("QMP input member '\(key)' is unexpected"))
        }
        guard let command = commands[name] else {
            return failure(ControlError("The command \(name) has not been found; known commands: \(order.joined(separator: ", "))",
                                      class: "CommandNotFound"))
        }
        let human = (request["human"] as? Bool) ?? false
        do {
            let arguments = ControlArguments(args)
            var subscribe: Bool? = nil
            if name == "events" { subscribe = try arguments.optionalBool("enable") ?? true }
            let result = try command.run(arguments)
            var o: [String: Any] = ["return": human ? result.text : result.value]
            if let id { o["id"] = id }
            guard JSONSerialization.isValidJSONObject(o) else { return failure(ControlError("internal error: \(name) returned a value JSON cannot hold")) }
            return Outcome(reply: ControlDispatcher.encode(o), subscribe: subscribe)
        } catch let e as ControlError {
            return failure(e)
        } catch {
            return failure(ControlError("\(error)"))
        }
    }

    static let maximumNesting = 32

    /// The deepest nesting of arrays and objects in `line` (brackets inside strings do not count), checked
    /// before parsing so no request can make the parser recurse deeply.
    static func nestingDepth(_ line: [UInt8]) -> Int {
        var depth = 0, deepest = 0, inString = false, escaped = false
        for b in line {
            if inString {
                if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == 0x22 { inString = false }
                continue
            }
            switch b {
            case 0x22: inString = true
            case 0x5B, 0x7B: depth += 1; deepest = max(deepest, depth)
            case 0x5D, 0x7D: depth -= 1
            default: break
            }
        }
        return deepest
    }

    /// One JSON object on one line.
    public static func encode(_ object: [String: Any]) -> [UInt8] {
        guard let d = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            return Array(#"{"error":{"class":"GenericError","desc":"internal error: unencodable reply"}}"#.utf8) + [10]
        }
        return [UInt8](d) + [10]
    }

    /// An error reply, `{"error":{"class":…,"desc":…},"id":…}` and a newline: the same bytes `encode` gives for
    /// that object (keys sorted, slashes unescaped), written directly. Malformed requests are what a confused or
    /// hostile client sends most, and JSONSerialization's dictionary path costs several times more per reply.
    public static func encodeError(_ e: ControlError, id: Any?) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(40 + e.errorClass.utf8.count + e.desc.utf8.count)
        out += #"{"error":{"class":"#.utf8
        appendJSONString(e.errorClass, to: &out)
        out += #","desc":"#.utf8
        appendJSONString(e.desc, to: &out)
        out.append(0x7D)
        if let id {
            guard let encoded = try? JSONSerialization.data(withJSONObject: id, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes]) else {
                return encode(["error": ["class": e.errorClass, "desc": e.desc], "id": id])
            }
            out += #","id":"#.utf8
            out += encoded
        }
        out += [0x7D, 0x0A]
        return out
    }

    /// `s` as a JSON string literal, escaped as JSONSerialization escapes it (with `.withoutEscapingSlashes`).
    static func appendJSONString(_ s: String, to out: inout [UInt8]) {
        out.append(0x22)
        for b in s.utf8 {
            let escaped: UInt8
            switch b {
            case 0x22, 0x5C: escaped = b
            case 0x08: escaped = 0x62   // \b
            case 0x0C: escaped = 0x66   // \f
            case 0x0A: escaped = 0x6E   // \n
            case 0x0D: escaped = 0x72   // \r
            case 0x09: escaped = 0x74   // \t
            case 0x00 ..< 0x20:
                out.append(0x5C); out.append(0x75); out.append(0x30); out.append(0x30)
                out.append(hexDigit(b >> 4)); out.append(hexDigit(b & 0xF))
                continue
            default:
                out.append(b)
                continue
            }
            out.append(0x5C)
            out.append(escaped)
        }
        out.append(0x22)
    }

    @inline(__always) static func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? 0x30 + v : 0x61 + v - 10 }

    /// An asynchronous event line (QMP's shape).
    public static func event(_ name: String, data: [String: Any], now: timespec) -> [UInt8] {
        encode(["event": name, "data": data, "timestamp": ["seconds": Int(now.tv_sec), "microseconds": Int(now.tv_nsec / 1000)]])
    }
}
