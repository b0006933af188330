// Named counters for every frame the gateway drops, and for what it serves. Each drop site names exactly one
// reason; `vnet` prints them, and the control socket and metrics endpoint export them.

public enum DropReason: Int, CaseIterable, Sendable {
    case ethernetTruncated
    case vlanTagged
    case notForGateway
    case unknownEtherType
    case ipv6Disabled
    case ipv6Malformed
    case ndpMalformed
    case ndpIgnored
    case icmpv6Malformed
    case icmpv6BadChecksum
    case icmpv6TypeIgnored
    case dhcpv6Malformed
    case dhcpv6Ignored
    case ipv6FragmentInvalid
    case ipv6FragmentOverlap
    case ipv6FragmentTimeout
    case arpMalformed
    case arpIgnored
    case ipv4Malformed
    case ipv4BadChecksum
    case ipv4FragmentInvalid
    case ipv4FragmentOverlap
    case ipv4FragmentTimeout
    case martianSource
    case martianDestination
    case unknownIPProtocol
    case udpMalformed
    case udpBadChecksum
    case udpSourcePortZero
    case udpToUnknownLocalAddress
    case dnsWrongPort
    case dnsNoUpstream
    case dhcpMalformed
    case dhcpIgnored
    case dhcpPoolExhausted
    case icmpMalformed
    case icmpBadChecksum
    case icmpTypeIgnored
    case hostLoopbackDisabled
    case udpFlowTableFull
    case icmpFlowTableFull
    case hostSocketFailed
    case hostSendFailed
    case hostDatagramDropped
    case tcpMalformed
    case tcpBadChecksum
    case tcpNoFlow
    case tcpNoAck
    case tcpBadAck
    case tcpOutOfOrder
    case tcpRstOutOfWindow
    case tcpFlowTableFull
    case tcpHalfOpenFull
    /// One guest address holds `guest-tcp-flows` TCP flows already (others still get theirs).
    case tcpGuestFlowsFull
    /// One guest address holds `guest-udp-flows` UDP flows already.
    case udpGuestFlowsFull
    /// A control-socket connection past `control-clients` (counted by the runtime's ControlServer, not the gateway).
    case controlClientsFull
    case dnsFlowTableFull
    case txQueueFull
    case restricted
    case forwardNoGuestMAC
    case tftpMalformed
    case tftpRefused
    case tftpPathRefused
    case tftpTooManyTransfers
    case tftpUnknownTransfer
    case tftpTimedOut
    case egressDenied
    /// An ARP from another station claims one of the gateway's addresses: a second gateway on the segment.
    case arpDuplicateGateway

    public var name: String {
        switch self {
        case .ethernetTruncated: "ethernet_truncated"
        case .vlanTagged: "vlan_tagged"
        case .notForGateway: "not_for_gateway"
        case .unknownEtherType: "unknown_ethertype"
        case .ipv6Disabled: "ipv6_disabled"
        case .ipv6Malformed: "ipv6_malformed"
        case .ndpMalformed: "ndp_malformed"
        case .ndpIgnored: "ndp_ignored"
        case .icmpv6Malformed: "icmpv6_malformed"
        case .icmpv6BadChecksum: "icmpv6_bad_checksum"
        case .icmpv6TypeIgnored: "icmpv6_type_ignored"
        case .dhcpv6Malformed: "dhcpv6_malformed"
        case .dhcpv6Ignored: "dhcpv6_ignored"
        case .ipv6FragmentInvalid: "ipv6_fragment_invalid"
        case .ipv6FragmentOverlap: "ipv6_fragment_overlap"
        case .ipv6FragmentTimeout: "ipv6_fragment_timeout"
        case .arpMalformed: "arp_malformed"
        case .arpIgnored: "arp_ignored"
        case .ipv4Malformed: "ipv4_malformed"
        case .ipv4BadChecksum: "ipv4_bad_checksum"
        case .ipv4FragmentInvalid: "ipv4_fragment_invalid"
        case .ipv4FragmentOverlap: "ipv4_fragment_overlap"
        case .ipv4FragmentTimeout: "ipv4_fragment_timeout"
        case .martianSource: "martian_source"
        case .martianDestination: "martian_destination"
        case .unknownIPProtocol: "unknown_ip_protocol"
        case .udpMalformed: "udp_malformed"
        case .udpBadChecksum: "udp_bad_checksum"
        case .udpSourcePortZero: "udp_source_port_zero"
        case .udpToUnknownLocalAddress: "udp_to_unknown_local_address"
        case .dnsWrongPort: "dns_wrong_port"
        case .dnsNoUpstream: "dns_no_upstream"
        case .dhcpMalformed: "dhcp_malformed"
        case .dhcpIgnored: "dhcp_ignored"
        case .dhcpPoolExhausted: "dhcp_pool_exhausted"
        case .icmpMalformed: "icmp_malformed"
        case .icmpBadChecksum: "icmp_bad_checksum"
        case .icmpTypeIgnored: "icmp_type_ignored"
        case .hostLoopbackDisabled: "host_loopback_disabled"
        case .udpFlowTableFull: "udp_flow_table_full"
        case .icmpFlowTableFull: "icmp_flow_table_full"
        case .hostSocketFailed: "host_socket_failed"
        case .hostSendFailed: "host_send_failed"
        case .hostDatagramDropped: "host_datagram_dropped"
        case .tcpMalformed: "tcp_malformed"
        case .tcpBadChecksum: "tcp_bad_checksum"
        case .tcpNoFlow: "tcp_no_flow"
        case .tcpNoAck: "tcp_no_ack"
        case .tcpBadAck: "tcp_bad_ack"
        case .tcpOutOfOrder: "tcp_out_of_order"
        case .tcpRstOutOfWindow: "tcp_rst_out_of_window"
        case .tcpFlowTableFull: "tcp_flow_table_full"
        case .tcpHalfOpenFull: "tcp_half_open_full"
        case .tcpGuestFlowsFull: "tcp_guest_flows_full"
        case .udpGuestFlowsFull: "udp_guest_flows_full"
        case .controlClientsFull: "control_clients_full"
        case .dnsFlowTableFull: "dns_flow_table_full"
        case .txQueueFull: "tx_queue_full"
        case .restricted: "restricted"
        case .forwardNoGuestMAC: "forward_no_guest_mac"
        case .tftpMalformed: "tftp_malformed"
        case .tftpRefused: "tftp_refused"
        case .tftpPathRefused: "tftp_path_refused"
        case .tftpTooManyTransfers: "tftp_too_many_transfers"
        case .tftpUnknownTransfer: "tftp_unknown_transfer"
        case .tftpTimedOut: "tftp_timed_out"
        case .egressDenied: "egress_denied"
        case .arpDuplicateGateway: "arp_duplicate_gateway"
        }
    }
}

public enum ServedCounter: Int, CaseIterable, Sendable {
    case framesFromGuest, framesToGuest, arpReplies, icmpEchoLocal, dhcpReplies, dnsQueries, dnsServfail
    case udpFlowsOpened, udpFlowsExpired, icmpFlowsOpened, icmpFlowsExpired, icmpErrorsToGuest
    case tcpForwardsAccepted, udpForwardDatagrams, datagramsReassembled, dnsFailovers
    case tcpFlowsOpened, tcpFlowsClosed, tcpFlowsExpired, tcpConnectRefused, tcpRetransmits, tcpResetsFromGuest, tcpResetsToGuest
    case tcpSuperSegmentsToGuest, dnsLocalAnswers
    case tftpTransfersStarted, tftpTransfersCompleted, tftpBlocksSent, tftpRetransmits, tftpErrorsSent
    case neighborAdvertisements, routerAdvertisements, dhcpv6Replies, icmpv6EchoLocal
    case flowsClosedGuestGone
    /// Gather sends of guest TCP data (more than one segment each) and GSO sends of guest datagrams (more than one).
    case tcpGatheredSends, udpBatchedSends
    /// ACKs owed to the guest that a data segment carried instead of a segment of their own.
    case tcpAcksFolded
    /// Guest data segments (or their tails) the host socket did not take: not acknowledged, the guest sends
    /// them again. Each leaves a gap that the segments behind it fall into (held: tcp_out_of_order_kept, or
    /// dropped: drop_tcp_out_of_order).
    case tcpSendsRefused
    /// Guest data segments that arrived ahead of a hole and were held until it filled (GatewayTCPReorder.swift).
    case tcpOutOfOrderKept

    public var name: String {
        switch self {
        case .framesFromGuest: "frames_from_guest"
        case .neighborAdvertisements: "neighbor_advertisements"
        case .routerAdvertisements: "router_advertisements"
        case .dhcpv6Replies: "dhcpv6_replies"
        case .icmpv6EchoLocal: "icmpv6_echo_local"
        case .framesToGuest: "frames_to_guest"
        case .arpReplies: "arp_replies"
        case .icmpEchoLocal: "icmp_echo_local"
        case .dhcpReplies: "dhcp_replies"
        case .dnsQueries: "dns_queries"
        case .dnsServfail: "dns_servfail"
        case .udpFlowsOpened: "udp_flows_opened"
        case .udpFlowsExpired: "udp_flows_expired"
        case .icmpFlowsOpened: "icmp_flows_opened"
        case .icmpFlowsExpired: "icmp_flows_expired"
        case .icmpErrorsToGuest: "icmp_errors_to_guest"
        case .datagramsReassembled: "datagrams_reassembled"
        case .dnsFailovers: "dns_failovers"
        case .tcpForwardsAccepted: "tcp_forwards_accepted"
        case .udpForwardDatagrams: "udp_forward_datagrams"
        case .tcpFlowsOpened: "tcp_flows_opened"
        case .tcpFlowsClosed: "tcp_flows_closed"
        case .tcpFlowsExpired: "tcp_flows_expired"
        case .tcpConnectRefused: "tcp_connect_refused"
        case .tcpRetransmits: "tcp_retransmits"
        case .tcpResetsFromGuest: "tcp_resets_from_guest"
        case .tcpResetsToGuest: "tcp_resets_to_guest"
        case .tcpSuperSegmentsToGuest: "tcp_super_segments_to_guest"
        case .dnsLocalAnswers: "dns_local_answers"
        case .tftpTransfersStarted: "tftp_transfers_started"
        case .tftpTransfersCompleted: "tftp_transfers_completed"
        case .tftpBlocksSent: "tftp_blocks_sent"
        case .tftpRetransmits: "tftp_retransmits"
        case .tftpErrorsSent: "tftp_errors_sent"
        case .flowsClosedGuestGone: "flows_closed_guest_gone"
        case .tcpGatheredSends: "tcp_gathered_sends"
        case .udpBatchedSends: "udp_batched_sends"
        case .tcpAcksFolded: "tcp_acks_folded"
        case .tcpSendsRefused: "tcp_sends_refused"
        case .tcpOutOfOrderKept: "tcp_out_of_order_kept"
        }
    }
}

/// Fixed arrays of counters; incrementing never allocates.
public struct GatewayCounters: Sendable {
    public private(set) var drops = [UInt64](repeating: 0, count: DropReason.allCases.count)
    public private(set) var served = [UInt64](repeating: 0, count: ServedCounter.allCases.count)

    @inline(__always) public mutating func drop(_ r: DropReason) { drops[r.rawValue] &+= 1 }
    @inline(__always) public mutating func count(_ c: ServedCounter) { served[c.rawValue] &+= 1 }
    public subscript(_ r: DropReason) -> UInt64 { drops[r.rawValue] }
    public subscript(_ c: ServedCounter) -> UInt64 { served[c.rawValue] }
    public var totalDrops: UInt64 { drops.reduce(0, &+) }

    /// Non-zero counters as `name value` lines.
    public var report: [String] {
        ServedCounter.allCases.filter { self[$0] > 0 }.map { "\($0.name) \(self[$0])" }
            + DropReason.allCases.filter { self[$0] > 0 }.map { "drop_\($0.name) \(self[$0])" }
    }
}
