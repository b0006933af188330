// resolv.conf parsing: nameservers of both families in order; IPv6 link-local ones (meaningless without a zone)
// and unspecified or malformed ones skipped.

import Testing
import VNetRuntime
import VNetWire

@Suite("resolv.conf")
struct ResolvConfTests {
    @Test("IPv4 and IPv6 nameservers in order; link-local, zoned, unspecified and malformed lines skipped")
    func parse() {
        let text = """
        # a comment
        search example.org
        nameserver 192.0.2.1
        nameserver 2001:db8::53
        nameserver fe80::1%eth0
        nameserver fe80::1
        nameserver ::
        nameserver 0.0.0.0
        nameserver 300.1.1.1
        nameserver [2001:db8::54]
        ; nameserver 192.0.2.9
        nameserver\t198.51.100.7 trailing
        nameserver
        nameserver ::1
        """
        let got = ResolvConf.parse(text).map(\.description)
        #expect(got == ["192.0.2.1", "2001:db8::53", "2001:db8::54", "198.51.100.7", "::1"])
    }
}
