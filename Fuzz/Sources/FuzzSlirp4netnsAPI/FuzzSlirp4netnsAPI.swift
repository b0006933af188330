// Fuzz target: slirp4netns's API socket protocol (`vnet slirp4netns --api-socket`). The input is split on
// 0xFF bytes into requests (as many connections' single reads, each at most 4096 bytes as the server reads
// them); each goes to one API state machine backed by a forwarder that accepts every other rule. Every reply
// must be one of slirp4netns's shapes, as valid JSON; the table never exceeds its cap.
import Foundation
import FuzzSupport
import VNetGateway
import VNetRuntime
import VNetServices
import VNetWire

final class FuzzForwarder: Slirp4netnsForwarder {
    var open = Set<Int>()
    var next = 0
    func addForward(_ rule: HostForward) -> Int? {
        next += 1
        guard next % 2 == 0 else { return nil }
        open.insert(next)
        return next
    }
    func removeForward(_ handle: Int) {
        precondition(open.remove(handle) != nil, "removed a forward that was not open")
    }
}

nonisolated(unsafe) var api = Slirp4netnsAPI(defaultGuestAddress: IPv4Address(10, 0, 2, 100), dhcpStart: IPv4Address(10, 0, 2, 15))
nonisolated(unsafe) let forwarder = FuzzForwarder()

@_cdecl("FuzzSlirp4netnsAPI_main")
public func fuzzSlirp4netnsAPIMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzSlirp4netnsAPI)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSlirp4netnsAPI(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size <= 1 << 16 else { return 0 }
    let input = Array(UnsafeRawBufferPointer(start: data, count: size))
    for request in input.split(separator: 0xFF, omittingEmptySubsequences: false) {
        let read = Array(request.prefix(Slirp4netnsAPI.bufferSize))
        let reply = api.handle(read, forwarder: forwarder)
        guard let obj = try? JSONSerialization.jsonObject(with: Data(reply)) as? [String: Any], obj.count == 1 else {
            fatalError("a reply that is not one JSON object: \(String(decoding: reply, as: UTF8.self))")
        }
        precondition(obj["return"] != nil || obj["error"] != nil || obj["entries"] != nil, "not a slirp4netns reply shape")
        precondition(api.entries.count <= Slirp4netnsAPI.capacity && api.entries.count == forwarder.open.count)
    }
    return 0
}
