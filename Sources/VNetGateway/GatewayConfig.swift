// The configuration of one user-mode network, with QEMU's defaults (net/slirp.c):
// 10.0.2.0/24, gateway ("host") 10.0.2.2, DNS 10.0.2.3, DHCP from 10.0.2.15, MTU 1500.

import VNetBuffers
import VNetServices
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
    /// IPv6 (QEMU's defaults: on, fec0::/64, host fec0::2, DNS fec0::3); `ipv6=off` turns it off.
    public var ipv6Enabled = true
    public var ipv6Prefix = IPv6Network(address: IPv6Address("fec0::")!, prefixLength: 64)
    public var ipv6GatewayAddress = IPv6Address("fec0::2")!
    public var ipv6DNSAddress = IPv6Address("fec0::3")!
    /// The gateway's link-local address: routers advertise from one (RFC 4861 §4.2), libslirp uses fe80::2.
    public static let ipv6LinkLocalGateway = IPv6Address("fe80::2")!
    /// The guest port carries a virtio-net header per frame (a TAP with IFF_VNET_HDR): frames from the guest may
    /// hold partial checksums and TCP super-segments, and TCP to the guest goes out as super-segments of up to
    /// 64 KiB with partial checksums, cut at the guest's MSS by the kernel.
    public var guestOffloads = false
    /// Broadcast a gratuitous ARP for the gateway's address now and then (GatewayAnnounce.swift), so that a
    /// second gateway on a segment that spans hosts sees it and counts `drop_arp_duplicate_gateway`.
    public var announcesAddress = false
    /// Fixed DHCP bindings (`vnet nat --static-lease`); each address lies in the pool.
    public var staticLeases: [DHCPStaticLease] = []
    /// Guest traffic to the gateway address reaches host loopback (QEMU's behaviour).
    public var mapGatewayToHostLoopback = true
    /// The QEMU netdev id, for messages only.
    public var id: String? = nil
    public var leaseTime: Instant.Duration = .seconds(24 * 3600)
    public var udpFlowCapacity = 4096
    public var icmpFlowCapacity = 256
    public var tcpFlowCapacity = 16384
    /// TCP and UDP flows one guest address may hold (`--limit guest-tcp-flows`, `guest-udp-flows`): on `vnet nat`
    /// one guest cannot take the whole table. A quarter of the table by default.
    public var guestTCPFlowCapacity = 4096
    public var guestUDPFlowCapacity = 1024
    /// Control-socket clients at once (`--limit control-clients`; the runtime's ControlServer enforces it).
    public var controlClientCapacity = 128
    /// TCP flows not established yet (a guest SYN waiting for the host connect or the guest's ACK; a hostfwd SYN
    /// waiting for the guest): a SYN flood or a connection storm fills this, not the whole table.
    public var tcpHalfOpenCapacity = 1024
    /// DNS flows open at once (one per guest source port, each with a host socket and queries in flight).
    public var dnsFlowCapacity = 256
    /// Guest TCP data held out of order (GatewayTCPReorder.swift): slots of 2 KiB in all (allocated when the
    /// gateway starts) and per flow. 0 slots: out-of-order segments are dropped.
    public var tcpReorderSlots = 1024
    public var tcpReorderSlotsPerFlow = 256
    /// IPv4 datagrams reassembled at once (64 KiB of memory each), and how long an unfinished one is kept.
    public var fragmentSlots = 16
    public var fragmentTimeout: Instant.Duration = .seconds(30)
    /// Established TCP flows with no traffic for this long are reset (as conntrack's 5-day default is far
    /// longer than any guest needs, this follows libslirp's order of magnitude).
    public var tcpIdleTimeout: Instant.Duration = .seconds(2 * 3600)
    public var udpIdleTimeout: Instant.Duration = .seconds(120)
    public var dnsIdleTimeout: Instant.Duration = .seconds(30)
    /// A query unanswered this long moves later queries to the next resolver in resolv.conf.
    public var dnsFailoverTimeout: Instant.Duration = .seconds(2)
    public var icmpIdleTimeout: Instant.Duration = .seconds(30)

    /// Which host addresses guest-initiated flows may reach (`--deny`/`--allow`; link-local denied by default).
    public var egress = EgressPolicy()
    /// libslirp's restrict=on: the guest reaches only the gateway's own services and guestfwd targets.
    public var restricted = false
    public var hostForwards: [HostForward] = []
    /// `tftp=DIR`: the read-only TFTP server's root on the host (nil: no TFTP server).
    public var tftpRoot: String? = nil
    /// `bootfile=NAME`: DHCP option 67 and the reply's file field, with siaddr set to the gateway.
    public var bootfile: String? = nil
    /// `tftp-server-name=NAME`: DHCP option 66.
    public var tftpServerName: String? = nil
    /// Concurrent TFTP transfers at most.
    public var tftpTransferCapacity = 16
    public var guestForwards: [GuestForward] = []

    public init() {}

    /// Addresses the gateway answers ARP for: itself, the DNS address and every guestfwd server.
    public func isVirtualAddress(_ a: IPv4Address) -> Bool {
        a == gatewayAddress || a == dnsAddress || guestForwards.contains { $0.serverAddress == a }
    }

    /// Addresses the gateway answers NDP for and serves (echo, DNS): link-local, host and DNS addresses.
    public func isVirtualAddress6(_ a: IPv6Address) -> Bool {
        a == GatewayConfig.ipv6LinkLocalGateway || a == ipv6GatewayAddress || a == ipv6DNSAddress
    }

    /// The DNS forwarder's address in either family.
    @inline(__always) public func isDNSAddress(_ a: IPAddress) -> Bool {
        if let v4 = a.v4 { return v4 == dnsAddress }
        return ipv6Enabled && a.v6 == ipv6DNSAddress
    }

    /// The gateway's own address in the family of `a`.
    @inline(__always) public func gatewayAddress(sameFamilyAs a: IPAddress) -> IPAddress {
        a.isIPv4 ? IPAddress(gatewayAddress) : IPAddress(ipv6GatewayAddress)
    }

    /// The gateway's MAC: 52:55 followed by its IPv4 address, as libslirp does.
    public var gatewayMAC: MACAddress {
        MACAddress(rawValue: 0x5255_0000_0000 | UInt64(gatewayAddress.rawValue))
    }

    public static let neighbourCapacity = 1024
    public static let minimumMTU = 576
    public static let maximumMTU = 65520
}

/// `guestfwd=[tcp]:server:port-dev`: guest connections to server:port go to a host TCP service or a command.
public struct GuestForward: Equatable, Sendable, CustomStringConvertible {
    public enum Target: Equatable, Sendable {
        case tcp(IPv4Address, UInt16)
        /// Run with `/bin/sh -c`; the connection is wired to its stdin and stdout.
        case command(String)
    }
    public var serverAddress: IPv4Address
    public var serverPort: UInt16
    public var target: Target

    public init(serverAddress: IPv4Address, serverPort: UInt16, target: Target) {
        self.serverAddress = serverAddress
        self.serverPort = serverPort
        self.target = target
    }

    public var description: String {
        switch target {
        case .tcp(let a, let p): "tcp \(serverAddress):\(serverPort) -> tcp:\(a):\(p)"
        case .command(let c): "tcp \(serverAddress):\(serverPort) -> cmd:\(c)"
        }
    }
}
