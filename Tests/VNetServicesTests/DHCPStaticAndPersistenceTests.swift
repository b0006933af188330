// Static leases, client host names, the generation counter and saving/restoring bindings (for `vnet nat`).

import Testing
import VNetBuffers
import VNetServices
import VNetWire

@Suite("DHCPServer static leases and persistence")
struct DHCPStaticAndPersistenceTests {
    func staticConfig() -> DHCPConfig {
        var c = config(poolSize: 4)
        c.staticLeases = [DHCPStaticLease(mac: mac(9), address: ip(15), hostName: "web")]
        return c
    }

    @Test("a static lease always gets its address and name; no other MAC is offered it")
    func staticLease() {
        var s = DHCPServer(config: staticConfig())
        #expect(s.lease(mac(1), at: t0) == ip(16), "the first free slot that is not reserved")
        let offer = s.answer(message(.discover, mac(9)), at: t0)
        #expect(offer.reply?.yourAddress == ip(15))
        #expect(offer.options[DHCPOption.hostName] == Array("web".utf8), "the static name goes to the client")
        #expect(s.lease(mac(9), at: t0) == ip(15))
        // Another MAC asking for the reserved address is refused.
        let nak = s.answer(message(.request, mac(2), requested: ip(15), serverID: serverIP), at: t0)
        #expect(nak.reply?.type == .nak)
        // The static MAC asking for another address is refused too (it re-discovers and gets its own).
        let nak2 = s.answer(message(.request, mac(9), requested: ip(17), serverID: serverIP), at: t0)
        #expect(nak2.reply?.type == .nak)
        #expect(s.boundNames(now: t0).contains { $0.0 == "web" && $0.1 == ip(15) })
    }

    @Test("a client's host name is cleaned to one DNS label and kept with its binding")
    func clientNames() {
        var s = DHCPServer(config: config(poolSize: 4))
        var d = message(.discover, mac(1))
        d.hostName = "Web-1.example.com"
        let offer = s.answer(d, at: t0).reply!
        var r = message(.request, mac(1), requested: offer.yourAddress, serverID: serverIP)
        r.hostName = "Web-1.example.com"
        #expect(s.answer(r, at: t0).reply?.type == .ack)
        #expect(s.boundNames(now: t0).map(\.0) == ["web-1"])
        #expect(DHCPServer.cleanHostName("../../etc") == nil)
        #expect(DHCPServer.cleanHostName("a b;c") == "abc")
        #expect(DHCPServer.cleanHostName(String(repeating: "x", count: 300))?.count == 63)
        #expect(s.boundNames(now: t0 + .seconds(4000)).isEmpty, "expired bindings have no name")
    }

    @Test("the generation moves when bindings change, not on renewals")
    func generation() {
        var s = DHCPServer(config: config(poolSize: 4))
        let g0 = s.generation
        #expect(s.lease(mac(1), at: t0) == ip(15))
        let g1 = s.generation
        #expect(g1 != g0)
        #expect(s.lease(mac(1), at: t0 + .seconds(10)) == ip(15))
        #expect(s.generation == g1, "a renewal with the same name is not a change")
        _ = s.answer(message(.release, mac(1), ciaddr: ip(15)), at: t0 + .seconds(20))
        #expect(s.generation != g1)
    }

    @Test("saved bindings come back after a restart, with names; bad or conflicting entries are skipped")
    func restore() {
        var a = DHCPServer(config: staticConfig())
        #expect(a.lease(mac(1), at: t0) == ip(16))
        #expect(a.lease(mac(2), at: t0) == ip(17))
        let saved = a.leases(now: t0)
        #expect(saved.count == 3, "two dynamic, one static (never bound yet)")

        var b = DHCPServer(config: staticConfig())
        let junk = [DHCPLease(mac: mac(5), address: IPv4Address(192, 0, 2, 1), hostName: nil, remainingSeconds: 100, isStatic: false),
                    DHCPLease(mac: mac(6), address: ip(15), hostName: nil, remainingSeconds: 100, isStatic: false)]
        #expect(b.restore(saved.filter { !$0.isStatic } + junk, now: t0) == 2)
        // mac(2) asks first now: it still gets its own address, not the first free one.
        #expect(b.lease(mac(2), at: t0 + .seconds(5)) == ip(17))
        #expect(b.lease(mac(1), at: t0 + .seconds(5)) == ip(16))
        #expect(b.lease(mac(6), at: t0 + .seconds(5)) == ip(18), "the reserved address stays reserved")
    }
}
