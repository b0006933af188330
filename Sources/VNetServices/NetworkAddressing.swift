// A NAT network's addressing, derived once for every mode that makes one: `vnet nat`, `vnet nat --kernel` and
// the library's `VirtualNetwork`.
//
// The gateway is the subnet's first host unless given; DHCP hands out every other host address unless a range
// is given. A given gateway must be a host address of the subnet; a given range must lie inside the subnet,
// leave out the network and broadcast addresses and the gateway, and hold at most 65,536 addresses (the pool's
// table is sized by it).

import VNetWire

public struct NetworkAddressing: Equatable, Sendable {
    public let network: IPv4Network
    public let gateway: IPv4Address
    public let dhcpFirst: IPv4Address
    public let dhcpLast: IPv4Address
    public var dhcpCount: Int { Int(dhcpLast.rawValue - dhcpFirst.rawValue) + 1 }

    public enum Problem: Error, Equatable, Sendable, CustomStringConvertible {
        case gatewayNotAHost(IPv4Address, IPv4Network)
        case rangeOutside(IPv4Address, IPv4Address, IPv4Network)
        case rangeHoldsGateway(IPv4Address, IPv4Address, IPv4Address)
        case rangeTooLarge

        public var description: String {
            switch self {
            case .gatewayNotAHost(let g, let n): "gateway \(g) is not a host address of \(n)"
            case .rangeOutside(let a, let b, let n): "dhcp-range \(a)-\(b) is not inside \(n)"
            case .rangeHoldsGateway(let a, let b, let g): "dhcp-range \(a)-\(b) contains the gateway \(g)"
            case .rangeTooLarge: "dhcp-range: at most 65536 addresses"
            }
        }
    }

    public init(network given: IPv4Network, gateway: IPv4Address? = nil, dhcpRange: (IPv4Address, IPv4Address)? = nil) throws(Problem) {
        let net = IPv4Network(address: IPv4Address(rawValue: given.address.rawValue & given.netmask.rawValue), prefixLength: given.prefixLength)
        let base = net.address.rawValue, broadcast = net.broadcast.rawValue
        let gw = gateway ?? IPv4Address(rawValue: base | 1)
        guard net.contains(gw), gw.rawValue != base, gw.rawValue != broadcast else { throw .gatewayNotAHost(gw, net) }
        var first = IPv4Address(rawValue: gw.rawValue == base | 1 ? base | 2 : base | 1)
        var last = IPv4Address(rawValue: broadcast - 1)
        if let (a, b) = dhcpRange { (first, last) = (a, b) }
        guard first.rawValue <= last.rawValue, net.contains(first), net.contains(last), first.rawValue > base, last.rawValue < broadcast else {
            throw .rangeOutside(first, last, net)
        }
        guard !(first.rawValue ... last.rawValue).contains(gw.rawValue) else { throw .rangeHoldsGateway(first, last, gw) }
        guard last.rawValue - first.rawValue < 65_536 else { throw .rangeTooLarge }
        network = net
        self.gateway = gw
        dhcpFirst = first
        dhcpLast = last
    }

    /// `FIRST-LAST`, as `--dhcp-range` and the config file write it; nil when it is not two ordered addresses.
    public static func parseRange(_ text: String) -> (IPv4Address, IPv4Address)? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, let a = IPv4Address(parts[0]), let b = IPv4Address(parts[1]), a.rawValue <= b.rawValue else { return nil }
        return (a, b)
    }
}
