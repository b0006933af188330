// The configuration of one user-mode network, with QEMU's defaults (net/slirp.c):
// 10.0.2.0/24, gateway ("host") 10.0.2.2, DNS 10.0.2.3, DHCP from 10.0.2.15, MTU 1500.

import VNetBuffers
import VNetWire

public struct GatewayConfig: Sendable {
    public var network = IPv4Network(address: IPv4Address(10, 0, 2, 0), prefixLength: 24)
    public var gatewayAddress = IPv4Address(10, 0, 2, 2)
    public var dnsAddress = IPv4Address(10, 0, 2, 3)
    public var dhcpStart = IPv4Address(10, 0, 2, 15)
    public var dhcpPoolSize = 16
    public var dnsSearch: [String] = []
    public var domainName: String? = nil
    public var hostName: String? = nil
    public var mtu = 1500
    /// Guest traffic to the gateway address reaches host loopback (QEMU's behaviour).
    public var mapGatewayToHostLoopback = true
    /// The QEMU netdev id, for messages only.
    public var id: String? = nil
    public var leaseTime: Instant.Duration = .seconds(24 * 3600)
    public var udpFlowCapacity = 4096
    public var icmpFlowCapacity = 256
    public var tcpFlowCapacity = 16384
    /// Established TCP flows with no traffic for this long are reset (as conntrack's 5-day default is far
    /// longer than any guest needs, this follows libslirp's order of magnitude).
    public var tcpIdleTimeout: Instant.Duration = .seconds(2 * 3600)
    public var udpIdleTimeout: Instant.Duration = .seconds(120)
    public var dnsIdleTimeout: Instant.Duration = .seconds(30)
    public var icmpIdleTimeout: Instant.Duration = .seconds(30)

    public init() {}

    /// The gateway's MAC: 52:55 followed by its IPv4 address, as libslirp does.
    public var gatewayMAC: MACAddress {
        MACAddress(rawValue: 0x5255_0000_0000 | UInt64(gatewayAddress.rawValue))
    }

    public static let minimumMTU = 576
    public static let maximumMTU = 65520
}
