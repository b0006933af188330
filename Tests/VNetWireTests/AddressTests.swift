// IPv4 addresses and prefixes.

import Testing
@testable import VNetWire

@Suite struct AddressTests {
    @Test func dottedQuad() {
        #expect(IPv4Address("10.0.2.2") == IPv4Address(rawValue: 0x0A00_0202))
        #expect(IPv4Address("255.255.255.255") == .broadcast)
        #expect(IPv4Address("0.0.0.0") == .any)
        #expect(IPv4Address(216, 58, 214, 174).description == "216.58.214.174")
        for bad in ["", "10.0.2", "10.0.2.2.1", "10.0.2.256", "10.0.2.-1", "10..2.2", " 10.0.2.2", "10.0.2.2 ", "1e1.0.0.1", "0010.0.2.2", "١٠.0.2.2"] {
            #expect(IPv4Address(bad) == nil, "\(bad)")
        }
    }

    @Test func classification() {
        #expect(IPv4Address(127, 0, 0, 53).isLoopback)
        #expect(!IPv4Address(128, 0, 0, 1).isLoopback)
        #expect(IPv4Address(224, 0, 0, 251).isMulticast && IPv4Address(239, 255, 255, 255).isMulticast)
        #expect(!IPv4Address(240, 0, 0, 1).isMulticast && !IPv4Address(223, 255, 255, 255).isMulticast)
        #expect(IPv4Address.any.isUnspecified && !IPv4Address.broadcast.isUnspecified)
        #expect(IPv4Address(10, 0, 2, 2) < IPv4Address(10, 0, 2, 15))
    }

    @Test func readWriteNetworkOrder() {
        let out = build(6) { IPv4Address(10, 0, 2, 15).write(to: $0, at: 1) }
        #expect(out == [0, 10, 0, 2, 15, 0])
        out.withUnsafeBytes { #expect(IPv4Address(reading: $0, at: 1) == IPv4Address(10, 0, 2, 15)) }
    }

    @Test func networks() {
        let n = IPv4Network(address: IPv4Address(10, 0, 2, 77), prefixLength: 24)
        #expect(n.address == IPv4Address(10, 0, 2, 0))
        #expect(n.netmask == IPv4Address(255, 255, 255, 0))
        #expect(n.broadcast == IPv4Address(10, 0, 2, 255))
        #expect(n.contains(IPv4Address(10, 0, 2, 2)) && !n.contains(IPv4Address(10, 0, 3, 2)))
        #expect(n.description == "10.0.2.0/24")
        let all = IPv4Network(address: IPv4Address(1, 2, 3, 4), prefixLength: 0)
        #expect(all.netmask == .any && all.broadcast == .broadcast && all.contains(IPv4Address(8, 8, 8, 8)))
        let host = IPv4Network(address: IPv4Address(1, 2, 3, 4), prefixLength: 32)
        #expect(host.contains(IPv4Address(1, 2, 3, 4)) && !host.contains(IPv4Address(1, 2, 3, 5)))
    }
}
