// The control protocol's request handling, without sockets: every bad request gets a structured error.

import Foundation
import Testing
@testable import VNetRuntime

final class FakeTarget: ControlTarget {
    var calls: [String] = []
    var controlCommands: [ControlCommand] {
        [
            ControlCommand("echo", help: "text=T: returns T") { [unowned self] a in
                let t = try a.string("text")
                self.calls.append(t)
                return ControlResult(value: ["text": t], text: "echo: \(t)")
            },
            ControlCommand("fail", help: "always fails") { _ in throw ControlError("it failed on purpose") },
        ]
    }
}

func object(_ bytes: [UInt8]) throws -> [String: Any] {
    #expect(bytes.last == 10)
    #expect(bytes.dropLast().firstIndex(of: 10) == nil, "one reply is one line")
    return try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
}

func errorOf(_ reply: [String: Any]) -> (String, String)? {
    guard let e = reply["error"] as? [String: Any], let c = e["class"] as? String, let d = e["desc"] as? String else { return nil }
    return (c, d)
}

@Suite("Control protocol")
struct ControlProtocolTests {
    let target = FakeTarget()
    var dispatcher: ControlDispatcher { ControlDispatcher(target: target) }

    func respond(_ text: String) throws -> [String: Any] { try object(dispatcher.respond(to: Array(text.utf8)).reply) }

    @Test("a command's value comes back under 'return', and the request id is echoed")
    func success() throws {
        let r = try respond(#"{"execute": "echo", "arguments": {"text": "hi"}, "id": 7}"#)
        #expect((r["return"] as? [String: Any])?["text"] as? String == "hi")
        #expect(r["id"] as? Int == 7)
        #expect(target.calls == ["hi"])
    }

    @Test("human=true returns the readable text")
    func human() throws {
        let r = try respond(#"{"execute": "echo", "arguments": {"text": "hi"}, "human": true}"#)
        #expect(r["return"] as? String == "echo: hi")
    }

    @Test("malformed requests get a GenericError naming the problem", arguments: [
        ("{\"execute\": \"echo\"", "JSON parse error"),             // truncated
        ("\u{1}\u{2}\u{ff}garbage\u{0}", "JSON parse error"),        // binary
        ("[1, 2, 3]", "must be a JSON object"),
        ("\"just a string\"", "must be a JSON object"),
        ("{}", "lacks member 'execute'"),
        ("{\"execute\": 5}", "lacks member 'execute'"),
        ("{\"execute\": \"echo\", \"arguments\": [1]}", "'arguments' must be an object"),
        ("{\"execute\": \"echo\", \"bogus\": 1}", "'bogus' is unexpected"),
        ("{\"execute\": \"echo\", \"arguments\": {}}", "missing argument 'text'"),
        ("{\"execute\": \"echo\", \"arguments\": {\"text\": 5}}", "must be a string"),
        ("{\"execute\": \"fail\"}", "it failed on purpose"),
    ])
    func malformed(request: String, expected: String) throws {
        let r = try respond(request)
        let (cls, desc) = try #require(errorOf(r))
        #expect(cls == "GenericError")
        #expect(desc.contains(expected), "\(desc)")
        #expect(r["return"] == nil)
    }

    @Test("error replies are written by hand with exactly the bytes JSONSerialization would give")
    func errorEncodingMatchesFoundation() throws {
        var every = ""
        for u in UInt32(0) ..< 0x80 { every.unicodeScalars.append(Unicode.Scalar(u)!) }
        let descs = ["plain", every, "quote \" backslash \\ slash / tab \t", "é ✓ 🚀 \u{7f}\u{80}\u{2028}", ""]
        let ids: [Any?] = [nil, 7, -1.5, "x/y\"z", ["b": [1, "two", NSNull()], "a": true] as [String: Any], [1, 2], NSNull()]
        for desc in descs {
            for cls in ["GenericError", "CommandNotFound"] {
                for id in ids {
                    var o: [String: Any] = ["error": ["class": cls, "desc": desc]]
                    if let id { o["id"] = id }
                    let byHand = ControlDispatcher.encodeError(ControlError(desc, class: cls), id: id)
                    #expect(byHand == ControlDispatcher.encode(o), "\(String(decoding: byHand, as: UTF8.self))")
                }
            }
        }
    }

    @Test("an unknown command is CommandNotFound and lists the known ones")
    func unknown() throws {
        let (cls, desc) = try #require(errorOf(try respond(#"{"execute": "nope"}"#)))
        #expect(cls == "CommandNotFound")
        for name in ["help", "query-commands", "events", "echo", "fail"] { #expect(desc.contains(name)) }
    }

    @Test("help and query-commands list built-in and target commands")
    func help() throws {
        let r = try respond(#"{"execute": "query-commands"}"#)
        let names = try #require(r["return"] as? [[String: Any]]).compactMap { $0["name"] as? String }
        #expect(names == ["help", "query-commands", "events", "echo", "fail"])
        let text = try #require(try respond(#"{"execute": "help", "human": true}"#)["return"] as? String)
        #expect(text.contains("echo") && text.contains("text=T: returns T"))
    }

    @Test("events subscribes or unsubscribes the connection")
    func events() {
        #expect(dispatcher.respond(to: Array(#"{"execute": "events"}"#.utf8)).subscribe == true)
        #expect(dispatcher.respond(to: Array(#"{"execute": "events", "arguments": {"enable": false}}"#.utf8)).subscribe == false)
        #expect(dispatcher.respond(to: Array(#"{"execute": "echo", "arguments": {"text": "x"}}"#.utf8)).subscribe == nil)
    }

    @Test("deeply nested JSON is an error, not a crash")
    func deepNesting() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        let r = try respond(deep)
        #expect(errorOf(r) != nil)
    }
}
