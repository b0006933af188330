// slirp4netns's API protocol without sockets: the reply shapes, parson's parsing quirks, the caps, and what
// reaches the forwarder. (The byte-for-byte comparison with the real slirp4netns is tests/e2e/test_slirp4netns.py.)

import Testing
import VNetGateway
import VNetServices
import VNetWire
@testable import VNetRuntime

final class FakeForwarder: Slirp4netnsForwarder {
    var added: [HostForward] = []
    var removed: [Int] = []
    var refuse = false
    func addForward(_ rule: HostForward) -> Int? {
        if refuse { return nil }
        added.append(rule)
        return added.count - 1
    }
    func removeForward(_ handle: Int) { removed.append(handle) }
}

func ask(_ api: inout Slirp4netnsAPI, _ f: FakeForwarder, _ text: String) -> String {
    String(decoding: api.handle(Array(text.utf8), forwarder: f), as: UTF8.self)
}

func newAPI() -> Slirp4netnsAPI {
    Slirp4netnsAPI(defaultGuestAddress: IPv4Address(10, 0, 2, 100), dhcpStart: IPv4Address(10, 0, 2, 15))
}

@Test func addListRemoveReplyShapes() {
    var api = newAPI()
    let f = FakeForwarder()
    #expect(ask(&api, f, #"{"execute":"list_hostfwd"}"#) == #"{"entries":[]}"#)
    #expect(ask(&api, f, #"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"","host_port":8080,"guest_addr":"","guest_port":80}}"#)
            == #"{"return":{"id":1}}"#)
    #expect(ask(&api, f, #"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"0.0.0.0","guest_port":53}}"#)
            == #"{"return":{"id":2}}"#)
    #expect(f.added[0] == HostForward(proto: .tcp, hostAddress: IPAddress(IPv4Address.any), hostPort: 8080,
                                      guestAddress: IPAddress(IPv4Address(10, 0, 2, 100)), guestPort: 80))
    // 0.0.0.0 as guest address means the first DHCP address (as libslirp), and is listed as given.
    #expect(f.added[1].guestAddress == IPAddress(IPv4Address(10, 0, 2, 15)))
    #expect(ask(&api, f, #"{"execute":"list_hostfwd"}"#) ==
            #"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":2,"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"0.0.0.0","guest_port":53}]}"#)
    #expect(ask(&api, f, #"{"execute":"remove_hostfwd","arguments":{"id":1}}"#) == #"{"return":{}}"#)
    #expect(f.removed == [0])
    #expect(ask(&api, f, #"{"execute":"remove_hostfwd","arguments":{"id":1}}"#) == #"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#)
    // ids are never reused
    #expect(ask(&api, f, #"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8081,"guest_port":81}}"#) == #"{"return":{"id":3}}"#)
}

@Test func errorsAreSlirp4netnsOwn() {
    var api = newAPI()
    let f = FakeForwarder()
    let cases: [(String, String)] = [
        ("not json", "cannot parse JSON"),
        ("", "cannot parse JSON"),
        ("[1]", "json_object() failed"),
        (#"{"execute":5}"#, "no execute found"),
        (#"{"execute":"reboot"}"#, "unknown execute"),
        (#"{"execute":"list_hostfwd","execute":"x"}"#, "cannot parse JSON"),
        (#"{"execute":"list_hostfwd",}"#, "cannot parse JSON"),
        (#"{"execute":"list_hostfwd","x":01}"#, "cannot parse JSON"),
        (#"{"execute":"list_hostfwd","x":0x10}"#, "cannot parse JSON"),
        (#"{"execute":"list_hostfwd","x":-inf}"#, "cannot parse JSON"),
        (#"{"execute":"list_hostfwd","x":"\ud800"}"#, "cannot parse JSON"),
        ("{\"execute\":\"list_hostfwd\",\"x\":\"\t\"}", "cannot parse JSON"),
        ("{\"execute\":\"list_hostfwd\",\"x\u{01}\":1}", "cannot parse JSON"),
        (#"{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}"#, "add_hostfwd: bad arguments.proto"),
        (#"{"execute":"add_hostfwd","arguments":"x"}"#, "add_hostfwd: bad arguments.proto"),
        (#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":1,"guest_port":1}}"#, "add_hostfwd: bad arguments.host_addr"),
        (#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"1.2.3.04","host_port":1,"guest_port":1}}"#, "add_hostfwd: bad arguments.host_addr"),
        (#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":"80","guest_port":1}}"#, "add_hostfwd: bad arguments.host_port"),
        (#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":70000,"guest_port":1}}"#, "add_hostfwd: bad arguments.host_port"),
        (#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1e300,"guest_port":1}}"#, "add_hostfwd: bad arguments.host_port"),
        (#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_addr":"x","guest_port":1}}"#, "add_hostfwd: bad arguments.guest_addr"),
        (#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1}}"#, "add_hostfwd: bad arguments.guest_port"),
        (#"{"execute":"remove_hostfwd"}"#, "remove_hostfwd: bad arguments.id"),
    ]
    for (request, desc) in cases {
        #expect(ask(&api, f, request) == #"{"error":{"desc":"bad request: "# + desc + #""}}"#, "\(request)")
    }
    #expect(f.added.isEmpty)
    #expect(api.rejected == UInt64(cases.count))
    f.refuse = true
    #expect(ask(&api, f, #"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_port":1}}"#)
            == #"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#)
}

@Test func parsonQuirksAccepted() {
    var api = newAPI()
    let f = FakeForwarder()
    for request in [#"  {"execute" : "list_hostfwd" }  trailing"#, "\u{FEFF}{\"execute\":\"list_hostfwd\"}",
                    #"{"execute":"list\u005fhostfwd"}"#, #"{"execute":"list_hostfwd","x":[[{"a":[true,false,null,-1.5e3]}]]}"#] {
        #expect(ask(&api, f, request) == #"{"entries":[]}"#, "\(request)")
    }
    // The text ends at a NUL byte, as slirp4netns's C string does.
    #expect(String(decoding: api.handle(Array(#"{"execute":"list_hostfwd"}"#.utf8) + [0] + Array("junk".utf8), forwarder: f), as: UTF8.self)
            == #"{"entries":[]}"#)
    // Ports are truncated like (int) casts.
    #expect(ask(&api, f, #"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080.9,"guest_port":80.2}}"#) == #"{"return":{"id":1}}"#)
    #expect(f.added.last?.hostPort == 8080 && f.added.last?.guestPort == 80)
}

@Test func sizeAndDepthCaps() {
    var api = newAPI()
    let f = FakeForwarder()
    let padded = Array(#"{"execute":"list_hostfwd"}"#.utf8)
    #expect(String(decoding: api.handle(padded + [UInt8](repeating: 32, count: 4095 - padded.count), forwarder: f), as: UTF8.self)
            == #"{"entries":[]}"#)
    #expect(String(decoding: api.handle(padded + [UInt8](repeating: 32, count: 4096 - padded.count), forwarder: f), as: UTF8.self)
            == #"{"error":{"desc":"bad request: too large message"}}"#)
    // Nesting up to what fits in a request parses; the parser never recurses past its cap.
    let deep = String(repeating: "[", count: 2040) + String(repeating: "]", count: 2040)
    #expect(Slirp4netnsJSONParser.parse(Array(deep.utf8)) != nil)
    let tooDeep = Array((String(repeating: "[", count: 3000) + String(repeating: "]", count: 3000)).utf8)
    #expect(Slirp4netnsJSONParser.parse(tooDeep) == nil)
    // Unterminated input of every prefix length is refused, never read past its end.
    let full = Array(#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"\u0031","host_port":1,"guest_port":1e2}}"#.utf8)
    for n in 0 ..< full.count - 1 {
        #expect(Slirp4netnsJSONParser.parse(Array(full[0 ..< n])) == nil, "prefix \(n)")
    }
    #expect(Slirp4netnsJSONParser.parse(full) != nil)
}

@Test func forwardTableIsCapped() {
    var api = newAPI()
    let f = FakeForwarder()
    for i in 0 ..< Slirp4netnsAPI.capacity {
        #expect(ask(&api, f, #"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":\#(i + 1),"guest_port":80}}"#).hasPrefix(#"{"return""#))
    }
    #expect(ask(&api, f, #"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":2000,"guest_port":80}}"#)
            == #"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#)
    #expect(api.entries.count == Slirp4netnsAPI.capacity)
}

@Test func portMapWithUnixHostEnd() throws {
    let m = try HostForward.parsePortMap("unix:/run/vm-docker.sock-web:2375").get()
    #expect(m.unixPath == "/run/vm-docker.sock" && m.proto == .tcp && m.target == .hostName("web") && m.guestPort == 2375)
    #expect(m.description == "unix:/run/vm-docker.sock -> tcp web:2375")
    let a = try HostForward.parsePortMap("unix:/x.sock-192.168.122.5:22").get()
    #expect(a.target == .address(IPAddress(IPv4Address(192, 168, 122, 5))))
    if case .success = HostForward.parsePortMap("unix:rel.sock-web:22") { Issue.record("a relative path was accepted") }
    if case .success = HostForward.parsePortMap("unix:/x.sock-web") { Issue.record("no guest port was accepted") }
}
