// The gateway's configurable limits (`vnet user --limit NAME=VALUE`), with safe defaults in GatewayConfig.
//
// Theory of Operation
// -------------------
// Every table the guest can fill has a fixed cap, so memory stays bounded whatever it sends: flows per protocol,
// TCP and UDP flows per guest address (so one guest of `vnet nat` cannot fill a table), half-open TCP flows, TFTP
// transfers, DNS flows, reassembly slots (64 KiB each) and their timeout, how long an idle UDP flow keeps its host
// socket, and the DHCP lease time. The DHCP pool's cap is its
// size (`dhcpstart=` to the end of the pool); leases expire and come back. A limit that bites refuses only the
// new thing (RST for TCP, silence for UDP/ICMP/DHCP, eviction of the oldest unfinished datagram for fragments),
// counts it under a named drop reason (`limitDropReason`), and the runtime logs each reason at most once per
// interval with the count since the last report, never once per packet. `control-clients` caps the control
// socket's connections (enforced by the runtime's ControlServer, counted there as `drop_control_clients_full`).

public enum GatewayLimit: String, CaseIterable, Sendable {
    case tcpFlows = "tcp-flows"
    case tcpHalfOpen = "tcp-half-open"
    case udpFlows = "udp-flows"
    case icmpFlows = "icmp-flows"
    case dnsFlows = "dns-flows"
    case fragmentSlots = "fragment-slots"
    case fragmentTimeout = "fragment-timeout"
    /// Seconds an idle UDP flow (and its host socket) is kept (not DNS flows, which have their own 30 s).
    case udpTimeout = "udp-timeout"
    /// Seconds a DHCP lease lasts (renewal at half of it).
    case dhcpLeaseTime = "dhcp-lease-time"
    case guestTCPFlows = "guest-tcp-flows"
    case guestUDPFlows = "guest-udp-flows"
    case tftpTransfers = "tftp-transfers"
    case controlClients = "control-clients"

    /// Accepted values (fragment-timeout, udp-timeout and dhcp-lease-time in seconds).
    public var range: ClosedRange<Int> {
        switch self {
        case .tcpFlows, .udpFlows, .guestTCPFlows, .guestUDPFlows: 1 ... 1 << 20
        case .tftpTransfers, .controlClients: 1 ... 1024
        case .tcpHalfOpen, .icmpFlows, .dnsFlows: 1 ... 1 << 16
        case .fragmentSlots: 1 ... 1024
        case .fragmentTimeout: 1 ... 120
        case .udpTimeout: 1 ... 86_400
        case .dhcpLeaseTime: 4 ... 1 << 30
        }
    }

    /// The drop reason counted when this cap refuses something; nil for the limits that are times (a
    /// timeout or a lease time ends something, it refuses nothing).
    public var dropReason: DropReason? {
        switch self {
        case .tcpFlows: .tcpFlowTableFull
        case .tcpHalfOpen: .tcpHalfOpenFull
        case .udpFlows: .udpFlowTableFull
        case .icmpFlows: .icmpFlowTableFull
        case .dnsFlows: .dnsFlowTableFull
        case .fragmentSlots, .fragmentTimeout: .ipv4FragmentTimeout
        case .udpTimeout, .dhcpLeaseTime: nil
        case .guestTCPFlows: .tcpGuestFlowsFull
        case .guestUDPFlows: .udpGuestFlowsFull
        case .tftpTransfers: .tftpTooManyTransfers
        case .controlClients: .controlClientsFull
        }
    }
}

extension GatewayConfig {
    public func limit(_ l: GatewayLimit) -> Int {
        switch l {
        case .tcpFlows: tcpFlowCapacity
        case .tcpHalfOpen: tcpHalfOpenCapacity
        case .udpFlows: udpFlowCapacity
        case .icmpFlows: icmpFlowCapacity
        case .dnsFlows: dnsFlowCapacity
        case .fragmentSlots: fragmentSlots
        case .fragmentTimeout: Int(fragmentTimeout.seconds)
        case .udpTimeout: Int(udpIdleTimeout.seconds)
        case .dhcpLeaseTime: Int(leaseTime.seconds)
        case .guestTCPFlows: guestTCPFlowCapacity
        case .guestUDPFlows: guestUDPFlowCapacity
        case .tftpTransfers: tftpTransferCapacity
        case .controlClients: controlClientCapacity
        }
    }

    /// Sets a limit; false when `value` is outside `l.range`.
    public mutating func setLimit(_ l: GatewayLimit, _ value: Int) -> Bool {
        guard l.range.contains(value) else { return false }
        switch l {
        case .tcpFlows: tcpFlowCapacity = value
        case .tcpHalfOpen: tcpHalfOpenCapacity = value
        case .udpFlows: udpFlowCapacity = value
        case .icmpFlows: icmpFlowCapacity = value
        case .dnsFlows: dnsFlowCapacity = value
        case .fragmentSlots: fragmentSlots = value
        case .fragmentTimeout: fragmentTimeout = .seconds(UInt64(value))
        case .udpTimeout: udpIdleTimeout = .seconds(UInt64(value))
        case .dhcpLeaseTime: leaseTime = .seconds(UInt64(value))
        case .guestTCPFlows: guestTCPFlowCapacity = value
        case .guestUDPFlows: guestUDPFlowCapacity = value
        case .tftpTransfers: tftpTransferCapacity = value
        case .controlClients: controlClientCapacity = value
        }
        return true
    }

    /// `tcp-flows 16384, tcp-half-open 1024, …` for the start-up banner.
    public var limitsSummary: String {
        GatewayLimit.allCases.map { l in
            [.fragmentTimeout, .udpTimeout, .dhcpLeaseTime].contains(l) ? "\(l.rawValue) \(limit(l)) s" : "\(l.rawValue) \(limit(l))"
        }.joined(separator: ", ") + ", dhcp pool \(dhcpPoolSize)"
    }

    /// Drop reasons that mean a limit bit, with the knob that raises it (for the runtime's periodic report).
    public static let limitDropReasons: [(DropReason, String)] = [
        (.tcpFlowTableFull, "--limit tcp-flows"), (.tcpHalfOpenFull, "--limit tcp-half-open"),
        (.udpFlowTableFull, "--limit udp-flows"), (.icmpFlowTableFull, "--limit icmp-flows"),
        (.dnsFlowTableFull, "--limit dns-flows"), (.tcpGuestFlowsFull, "--limit guest-tcp-flows"),
        (.udpGuestFlowsFull, "--limit guest-udp-flows"), (.tftpTooManyTransfers, "--limit tftp-transfers"),
        (.ipv4FragmentTimeout, "--limit fragment-slots / fragment-timeout"),
        (.dhcpPoolExhausted, "a larger pool: dhcpstart= lower in net="), (.txQueueFull, "the guest reads too slowly"),
    ]
}
