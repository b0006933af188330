// `vnet ctl SOCKET COMMAND [ARGS…]`: one request to a running vnet's control socket.
//
// The words after SOCKET are turned into one JSON request (see VNetRuntime's ControlCommands.swift): the
// QEMU-style spellings (`info network`, `hostfwd_add [ID] RULE`, `dns add NAME [TYPE] VALUE`,
// `pcap start FILE [--port P]`) map to their commands, and any other `COMMAND key=value…` is sent as it is,
// so the server's error names the known commands. The reply is printed as readable text, or as the raw JSON
// line with --json. An error reply is one `vnet: error: …` line and exit status 1. `events` keeps the
// connection open and prints each event as it comes, until vnet goes away or ctl is interrupted.

import ArgumentParser
import VNetHost
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Send one command to a running vnet's control socket (--control PATH).",
        discussion: """
        Commands: help, info network, info usernet, ports, leases, stats, hostfwd_list,
        hostfwd_add [ID] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport (or unix:PATH-[guestaddr]:guestport [mode=0600]),
        hostfwd_remove [ID] [tcp|udp]:[hostaddr]:hostport (or unix:PATH),
        dns add NAME [A|AAAA|SRV|TXT] VALUE, dns remove NAME [TYPE] [VALUE], dns list, pcap start FILE [--port P] [--rotate BYTES],
        pcap stop, events. Any other COMMAND key=value… is sent as it is.
        """)

    @Flag(name: .customLong("json"), help: "Print the raw JSON reply instead of text.")
    var json = false

    @Argument(help: "The control socket (vnet user --control PATH).")
    var socket: String

    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments.")
    var words: [String] = []

    func run() throws {
        var words = words
        var json = self.json
        if let i = words.firstIndex(of: "--json") { words.remove(at: i); json = true }
        guard !words.isEmpty else { throw ValidationError("missing command (try: vnet ctl \(socket) help)") }
        let (execute, arguments) = try CtlCommand.request(words)
        var request: [String: Any] = ["execute": execute, "arguments": arguments]
        if !json { request["human"] = true }
        let body = try JSONSerialization.data(withJSONObject: request, options: [.sortedKeys])
        let connection = try ControlConnection(path: socket)
        try connection.send(Array(body) + [10])
        guard let line = try connection.readLine() else { throw RuntimeFailure("vnet closed the control connection") }
        let reply = try CtlCommand.decode(line)
        if let error = reply["error"] as? [String: Any] {
            throw RuntimeFailure((error["desc"] as? String) ?? "request failed")
        }
        if json {
            writeLine(String(decoding: line, as: UTF8.self))
        } else if let text = reply["return"] as? String {
            if !text.isEmpty { writeLine(text) }
        }
        guard execute == "events" else { return }
        while let event = try connection.readLine(blocking: true) {
            if json {
                writeLine(String(decoding: event, as: UTF8.self))
            } else if let e = try? CtlCommand.decode(event), let name = e["event"] as? String {
                let data = (e["data"] as? [String: Any]) ?? [:]
                writeLine(([name] + data.keys.sorted().map { "\($0)=\(data[$0]!)" }).joined(separator: " "))
            }
        }
    }

    /// One line on stdout, unbuffered (events must show as they come).
    func writeLine(_ text: String) {
        var line = text
        line.append("\n")
        line.withUTF8 { Sys.writeAll(1, UnsafeRawBufferPointer($0)) }
    }

    static func decode(_ line: [UInt8]) throws -> [String: Any] {
        guard let o = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
            throw RuntimeFailure("the control socket sent something that is not a JSON object")
        }
        return o
    }

    /// COMMAND words -> (execute, arguments).
    static func request(_ w: [String]) throws -> (String, [String: Any]) {
        func keyValues(_ rest: ArraySlice<String>) throws -> [String: Any] {
            var args: [String: Any] = [:]
            for word in rest {
                guard let eq = word.firstIndex(of: "="), eq != word.startIndex else {
                    throw ValidationError("expected key=value, got '\(word)'")
                }
                args[String(word[..<eq])] = String(word[word.index(after: eq)...])
            }
            return args
        }
        func count(_ range: ClosedRange<Int>, _ usage: String) throws {
            guard range.contains(w.count) else { throw ValidationError("usage: vnet ctl SOCKET \(usage)") }
        }
        switch w[0] {
        case "info":
            try count(2 ... 2, "info network|usernet")
            guard ["network", "usernet"].contains(w[1]) else { throw ValidationError("info: expected network or usernet, not '\(w[1])'") }
            return ("info-\(w[1])", [:])
        case "hostfwd_add", "hostfwd_remove":
            // A unix forward's socket mode: `hostfwd_add unix:PATH-:PORT mode=0660`.
            var w = w
            let mode = w[0] == "hostfwd_add" ? w.firstIndex(where: { $0.hasPrefix("mode=") }).map { w.remove(at: $0).dropFirst(5) } : nil
            guard (2 ... 3).contains(w.count) else { throw ValidationError("usage: vnet ctl SOCKET \(w[0]) [NETDEV-ID] RULE\(w[0] == "hostfwd_add" ? " [mode=0600]" : "")") }
            var args: [String: Any] = ["rule": w.last!]
            if w.count == 3 { args["netdev"] = w[1] }
            if let mode { args["mode"] = String(mode) }
            return (w[0], args)
        case "dns":
            guard w.count >= 2 else { throw ValidationError("usage: vnet ctl SOCKET dns add|remove|list …") }
            switch w[1] {
            case "list":
                try count(2 ... 2, "dns list")
                return ("dns-list", [:])
            case "add":
                try count(4 ... 5, "dns add NAME [A|AAAA|SRV|TXT] VALUE")
                var args: [String: Any] = ["name": w[2], "value": w.last!]
                if w.count == 5 { args["type"] = w[3] }
                return ("dns-add", args)
            case "remove":
                try count(3 ... 5, "dns remove NAME [A|TXT] [VALUE]")
                var args: [String: Any] = ["name": w[2]]
                if w.count >= 4 { args["type"] = w[3] }
                if w.count == 5 { args["value"] = w[4] }
                return ("dns-remove", args)
            default:
                throw ValidationError("dns: expected add, remove or list, not '\(w[1])'")
            }
        case "pcap":
            guard w.count >= 2 else { throw ValidationError("usage: vnet ctl SOCKET pcap start FILE [--port P] | pcap stop") }
            switch w[1] {
            case "stop":
                try count(2 ... 2, "pcap stop")
                return ("pcap-stop", [:])
            case "start":
                guard w.count >= 3, !w[2].hasPrefix("--") else { throw ValidationError("usage: vnet ctl SOCKET pcap start FILE [--port P] [--rotate BYTES]") }
                var args: [String: Any] = ["file": w[2]]
                var i = 3
                while i < w.count {
                    guard i + 1 < w.count, ["--port", "--rotate"].contains(w[i]) else {
                        throw ValidationError("pcap start: unexpected '\(w[i])' (options: --port P, --rotate BYTES)")
                    }
                    args[w[i] == "--port" ? "port" : "rotate_bytes"] = w[i + 1]
                    i += 2
                }
                return ("pcap-start", args)
            default:
                throw ValidationError("pcap: expected start or stop, not '\(w[1])'")
            }
        default:
            return (w[0], try keyValues(w.dropFirst()))
        }
    }
}

/// A failure after the arguments were accepted (exit status 1).
struct RuntimeFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A blocking unix stream connection with a read timeout, reading newline-terminated lines.
final class ControlConnection {
    let fd: Int32
    var buffer: [UInt8] = []

    init(path: String) throws {
        do { fd = try Sys.connectBlocking(unixPath: path, timeout: 10) } catch { throw RuntimeFailure("\(error)") }
    }

    deinit { Sys.close(fd) }

    func send(_ bytes: [UInt8]) throws {
        do throws(SyscallError) { try Sys.sendAll(fd, bytes) } catch {
            throw RuntimeFailure("writing to the control socket: \(Sys.errnoString(error.errno))")
        }
    }

    /// The next line (without its newline), or nil at end of stream. `blocking` waits without a timeout.
    func readLine(blocking: Bool = false) throws -> [UInt8]? {
        if blocking { Sys.setTimeouts(fd, seconds: 0) }
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                return line
            }
            switch chunk.withUnsafeMutableBytes({ Sys.read(fd, into: $0) }) {
            case .done(let n): buffer += chunk[..<n]
            case .closed: return nil
            case .wouldBlock: throw RuntimeFailure("no reply from the control socket within 10 s")
            case .failed(let e): throw RuntimeFailure("reading the control socket: \(Sys.errnoString(e))")
            }
        }
    }
}
