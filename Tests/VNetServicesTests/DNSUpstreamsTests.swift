// Upstream selection and failover shared by the gateway's and kernel NAT's DNS forwarders.

import Testing
import VNetServices
import VNetWire

@Suite("DNS upstreams")
struct DNSUpstreamsTests {
    let a = IPAddress(IPv4Address(192, 0, 2, 1)), b = IPAddress(text: "2001:db8::53")!, c = IPAddress(IPv4Address(192, 0, 2, 3))

    @Test("a failure of the current upstream moves to the next, round the list; a stale failure moves nothing")
    func failover() {
        var u = DNSUpstreams([(a, 53), (b, 53), (c, 5353)])
        #expect(u.current?.address == a)
        var moved = u.failed(a)
        #expect(moved && u.current?.address == b)
        moved = u.failed(a)
        #expect(!moved && u.current?.address == b, "a late timeout of the old upstream moves nothing")
        moved = u.failed(b)
        #expect(moved && u.current?.address == c && u.current?.port == 5353)
        moved = u.failed(c)
        #expect(moved && u.current?.address == a)
        #expect(u.failovers == 3)
    }

    @Test("one upstream never fails over; none has no current; a new list starts at its first")
    func edges() {
        var one = DNSUpstreams([(a, 53)])
        let oneMoved = one.failed(a)
        #expect(!oneMoved && one.current?.address == a && one.failovers == 0)
        var none = DNSUpstreams()
        let noneMoved = none.failed(a)
        #expect(none.current == nil && none.isEmpty && !noneMoved)
        var u = DNSUpstreams([(a, 53), (b, 53)])
        u.failed(a)
        u.replace([(c, 53), (a, 53)])
        #expect(u.current?.address == c)
        none.replace([(b, 53)])
        #expect(none.current?.address == b)
    }
}
