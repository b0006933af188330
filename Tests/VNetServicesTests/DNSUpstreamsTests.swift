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
        #expect(u.failed(a))
        #expect(u.current?.address == b)
        #expect(!u.failed(a), "a late timeout of the old upstream")
        #expect(u.current?.address == b)
        #expect(u.failed(b) && u.current?.address == c && u.current?.port == 5353)
        #expect(u.failed(c) && u.current?.address == a)
        #expect(u.failovers == 3)
    }

    @Test("one upstream never fails over; none has no current; a new list starts at its first")
    func edges() {
        var one = DNSUpstreams([(a, 53)])
        #expect(!one.failed(a) && one.current?.address == a && one.failovers == 0)
        var none = DNSUpstreams()
        #expect(none.current == nil && none.isEmpty && !none.failed(a))
        var u = DNSUpstreams([(a, 53), (b, 53)])
        u.failed(a)
        u.replace([(c, 53), (a, 53)])
        #expect(u.current?.address == c)
        none.replace([(b, 53)])
        #expect(none.current?.address == b)
    }
}
