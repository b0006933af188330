// Fuzz target: the control protocol (issue 7). The input is split into lines as the control server splits a
// client's bytes; each line goes through the dispatcher of a target with commands that read every kind of
// argument. Every reply must be one JSON object with `return` or `error` (or an event subscription), and
// never contain a byte of the request that was not valid UTF-8.
import Foundation
import FuzzSupport
import VNetRuntime

final class FuzzTarget: ControlTarget {
    var controlCommands: [ControlCommand] {
        [
            ControlCommand("echo", help: "name=S [n=I]") { a in
                let s = try a.string("name")
                let n = try a.optionalInt("n") ?? 0
                return ControlResult(value: ["name": s, "n": n], text: "\(s) \(n)")
            },
            ControlCommand("fail", help: "always fails") { _ in throw ControlError("no") },
            ControlCommand("big", help: "a reply of many values") { _ in ControlResult(value: Array(repeating: "x", count: 64), text: "big") },
        ]
    }
}

nonisolated(unsafe) let dispatcher = ControlDispatcher(target: FuzzTarget())   // libFuzzer calls in on one thread

@_cdecl("FuzzControl_main")
public func fuzzControlMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzControl)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControl(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size <= 1 << 16 else { return 0 }
    let input = Array(UnsafeRawBufferPointer(start: data, count: size))
    for line in input.split(separator: 0x0A, omittingEmptySubsequences: true) {
        let outcome = dispatcher.respond(to: Array(line))
        guard let obj = try? JSONSerialization.jsonObject(with: Data(outcome.reply)) as? [String: Any] else {
            fatalError("a reply that is not one JSON object: \(String(decoding: outcome.reply, as: UTF8.self))")
        }
        precondition(obj["return"] != nil || obj["error"] != nil, "a reply with neither return nor error")
    }
    return 0
}
