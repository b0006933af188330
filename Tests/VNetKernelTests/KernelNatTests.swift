// Kernel NAT's pure parts: port-map parsing, the nft ruleset text, the state record.

import Testing
import VNetKernel
import VNetServices
import VNetWire

@Suite("kernel NAT")
struct KernelNatTests {
    let guest = IPv4Address(10, 0, 3, 15)

    @Test("port maps take QEMU's hostfwd syntax")
    func portMaps() throws {
        #expect(try HostForward.parseKernelPortMap("tcp::8080-:80", defaultGuest: guest) == HostForward(proto: .tcp, hostAddress: IPv4Address(0, 0, 0, 0), hostPort: 8080, guestAddress: guest, guestPort: 80))
        #expect(try HostForward.parseKernelPortMap("udp:192.0.2.1:53-10.0.3.20:5353", defaultGuest: guest)
            == HostForward(proto: .udp, hostAddress: IPv4Address(192, 0, 2, 1), hostPort: 53, guestAddress: IPv4Address(10, 0, 3, 20), guestPort: 5353))
        #expect(try HostForward.parseKernelPortMap(":0.0.0.0:2222-:22", defaultGuest: guest).hostAddress.v4?.isUnspecified == true)
        for bad in ["tcp:8080-:80", "sctp::1-:2", "tcp::0-:80", "tcp::80-:70000", "tcp::80", "tcp:1.2.3:80-:80", "tcp::80-x:80"] {
            #expect(throws: KernelModeError.self) { _ = try HostForward.parseKernelPortMap(bad, defaultGuest: guest) }
        }
    }

    @Test("the ruleset replaces its own table atomically and holds masquerade and both DNAT hooks")
    func ruleset() {
        let maps = [HostForward(proto: .tcp, hostAddress: IPv4Address(0, 0, 0, 0), hostPort: 8080, guestAddress: guest, guestPort: 80),
                    HostForward(proto: .udp, hostAddress: IPv4Address(192, 0, 2, 1), hostPort: 5353, guestAddress: guest, guestPort: 53)]
        let text = NftRuleset.render(networkName: "lab", bridge: "vnet-lab", network: IPv4Network(address: IPv4Address(10, 0, 3, 0), prefixLength: 24), portMaps: maps)
        #expect(text.hasPrefix("table ip vnet-lab {\n}\ndelete table ip vnet-lab\ntable ip vnet-lab {\n"))
        #expect(text.contains("ip saddr 10.0.3.0/24 ip daddr != 10.0.3.0/24 masquerade"))
        #expect(text.contains("iifname != \"vnet-lab\" tcp dport 8080 dnat to 10.0.3.15:80"))
        #expect(text.contains("iifname != \"vnet-lab\" ip daddr 192.0.2.1 udp dport 5353 dnat to 10.0.3.15:53"))
        #expect(text.contains("fib daddr type local tcp dport 8080 dnat to 10.0.3.15:80"))
        #expect(text.components("table ip ") == 3 && text.components("delete table") == 1)
    }

    @Test("the state record survives a round trip and ignores junk lines")
    func record() {
        var r = KernelNatRecord()
        r.pid = 4242
        r.bridge = "vnet-lab"
        r.bridgeCreated = true
        r.addressAdded = "10.0.3.1/24"
        r.ipForwardWas = "0"
        r.nftTable = "vnet-lab"
        #expect(KernelNatRecord.parse(r.render()) == r)
        #expect(KernelNatRecord.parse("garbage\n=\npid=x\n") == KernelNatRecord())
        var partial = KernelNatRecord()
        partial.pid = 7
        partial.bridge = "br9"
        #expect(KernelNatRecord.parse("pid=7\nbridge=br9\nbridge_created=0\n") == partial)
    }

    @Test("interface names are checked before they reach the kernel")
    func interfaceNames() {
        for good in ["br0", "vnet-nat0", "a", "abcdefghijklmno"] { #expect((try? validateInterfaceName(good)) != nil) }
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "a:b", ".", ".."] {
            #expect(throws: KernelModeError.self) { try validateInterfaceName(bad) }
        }
    }
}

extension String {
    func components(_ needle: String) -> Int {
        var count = 0
        var rest = self[...]
        while let r = rest.firstRange(of: needle) { count += 1; rest = rest[r.upperBound...] }
        return count
    }
}

@Suite("tap-helper access list")
struct BridgeACLTests {
    @Test("allow NAME or all admits; a deny for the bridge or all wins; comments and junk are ignored; empty denies")
    func rules() {
        #expect(BridgeACL.allows("br0", config: "allow br0\n"))
        #expect(!BridgeACL.allows("br1", config: "allow br0\n"))
        #expect(BridgeACL.allows("br1", config: "# lab\nallow all\n"))
        #expect(!BridgeACL.allows("br0", config: "allow all\ndeny br0\n"))
        #expect(!BridgeACL.allows("br0", config: "deny all\nallow br0\n"))
        #expect(BridgeACL.allows("br0", config: "allow br0 # trailing comment\ngarbage line here\ninclude /x\n"))
        #expect(!BridgeACL.allows("br0", config: ""))
        #expect(!BridgeACL.allows("br0", config: "#allow br0\n"))
    }
}
