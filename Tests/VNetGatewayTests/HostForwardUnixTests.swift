// hostfwd=unix:PATH-[guestaddr]:guestport: the path up to the last '-', the guest side as for TCP, and the
// refusals (relative, too long, comma, no guest port).

import Testing
@testable import VNetGateway
import VNetWire

@Suite("hostfwd=unix:")
struct HostForwardUnixTests {
    @Test("a unix host end: path, TCP to the first DHCP address by default")
    func parsesPath() throws {
        let c = try UserNetOptions.parse("hostfwd=unix:/run/user/1000/docker.sock-:2375,hostfwd=unix:/tmp/my-app.sock-10.0.2.20:80")
        #expect(c.hostForwards.count == 2)
        #expect(c.hostForwards[0].unixPath == "/run/user/1000/docker.sock")
        #expect(c.hostForwards[0].proto == .tcp)
        #expect(c.hostForwards[0].guestAddress == IPAddress(IPv4Address(10, 0, 2, 15)))
        #expect(c.hostForwards[0].guestPort == 2375)
        #expect(c.hostForwards[0].unixMode == 0o600)
        #expect(c.hostForwards[1].unixPath == "/tmp/my-app.sock")
        #expect(c.hostForwards[1].guestAddress == IPAddress(IPv4Address(10, 0, 2, 20)))
        #expect(c.hostForwards[0].description == "unix:/run/user/1000/docker.sock -> tcp 10.0.2.15:2375")
    }

    @Test("the same rule at run time (vnet ctl hostfwd_add)")
    func runtimeRule() throws {
        let rule = try UserNetOptions.parseHostForwardRule("unix:/tmp/x.sock-:22", config: GatewayConfig())
        #expect(rule.unixPath == "/tmp/x.sock" && rule.guestPort == 22)
        // TCP rules keep no path.
        #expect(try UserNetOptions.parseHostForwardRule("tcp::2222-:22", config: GatewayConfig()).unixPath == nil)
    }

    @Test("refusals name the problem")
    func refusals() {
        #expect(parseError("hostfwd=unix:relative.sock-:22")?.contains("absolute") == true)
        #expect(parseError("hostfwd=unix:/" + String(repeating: "a", count: 107) + "-:22")?.contains("107") == true)
        #expect(parseError("hostfwd=unix:/x.sock") != nil)
        #expect(parseError("hostfwd=unix:/x.sock-:0") != nil)
        #expect(parseError("hostfwd=unix:/x.sock-10.9.9.9:22")?.contains("not a guest address") == true)
        #expect(throws: UserNetOptionError.self) { try UserNetOptions.parseHostForwardRule("unix:/a,b-:22", config: GatewayConfig()) }
    }
}
