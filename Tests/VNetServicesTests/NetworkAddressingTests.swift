// The one addressing derivation of a NAT network (vnet nat, kernel NAT, the library).

import Testing
import VNetServices
import VNetWire

@Suite("Network addressing")
struct NetworkAddressingTests {
    let net = IPv4Network(address: IPv4Address("192.168.122.0")!, prefixLength: 24)

    @Test("defaults: the gateway is the first host, DHCP hands out the rest")
    func defaults() throws {
        let a = try NetworkAddressing(network: net)
        #expect(a.gateway == IPv4Address("192.168.122.1")!)
        #expect(a.dhcpFirst == IPv4Address("192.168.122.2")! && a.dhcpLast == IPv4Address("192.168.122.254")!)
        #expect(a.dhcpCount == 253)
    }

    @Test("a gateway elsewhere moves the default range's start back to the first host; it must stay out of the range")
    func gatewayElsewhere() throws {
        let gw = IPv4Address("192.168.122.254")!
        #expect(throws: NetworkAddressing.Problem.rangeHoldsGateway(IPv4Address("192.168.122.1")!, IPv4Address("192.168.122.254")!, gw)) {
            try NetworkAddressing(network: net, gateway: gw)
        }
        let a = try NetworkAddressing(network: net, gateway: gw, dhcpRange: NetworkAddressing.parseRange("192.168.122.1-192.168.122.253"))
        #expect(a.dhcpFirst == IPv4Address("192.168.122.1")! && a.dhcpCount == 253)
        #expect(throws: NetworkAddressing.Problem.self) { try NetworkAddressing(network: net, gateway: IPv4Address("192.168.122.0")!) }
        #expect(throws: NetworkAddressing.Problem.self) { try NetworkAddressing(network: net, gateway: IPv4Address("192.168.122.255")!) }
        #expect(throws: NetworkAddressing.Problem.self) { try NetworkAddressing(network: net, gateway: IPv4Address("10.0.0.1")!) }
    }

    @Test("a given range must be inside the subnet and leave the gateway out")
    func ranges() throws {
        let r = try #require(NetworkAddressing.parseRange("192.168.122.10-192.168.122.20"))
        #expect(try NetworkAddressing(network: net, dhcpRange: r).dhcpCount == 11)
        for bad in ["192.168.122.0-192.168.122.20", "192.168.122.10-192.168.122.255", "192.168.122.1-192.168.122.5", "192.168.121.5-192.168.122.5"] {
            let r = try #require(NetworkAddressing.parseRange(bad))
            #expect(throws: NetworkAddressing.Problem.self) { try NetworkAddressing(network: net, dhcpRange: r) }
        }
        let wide = IPv4Network(address: IPv4Address("10.0.0.0")!, prefixLength: 8)
        #expect(throws: NetworkAddressing.Problem.rangeTooLarge) { try NetworkAddressing(network: wide) }
        #expect(NetworkAddressing.parseRange("192.168.122.20-192.168.122.10") == nil)
        #expect(NetworkAddressing.parseRange("192.168.122.20") == nil)
        #expect(NetworkAddressing.parseRange("a-b") == nil)
    }
}
