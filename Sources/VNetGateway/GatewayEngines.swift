// The gateway's engines: the state of each protocol the gateway serves, each with its own reset.
//
// Theory of Operation
// -------------------
// `Gateway` is a dispatcher: `handleGuestFrame` parses a frame's headers once and hands it to the engine of its
// protocol, and host events go to the engine that owns the flow's tag. Each engine's state lives in one value
// below and nowhere else, so what a flow table, a timer list or a batch holds is visible in one place, and
// `reset` (GatewayReset.swift) is each engine resetting itself: a field added to an engine is reset with it.
// The engines' logic is in the files named after them (GatewayTCP*.swift, GatewayUDP*.swift,
// GatewayICMP.swift, GatewayIPv6.swift for neighbour discovery and router advertisements); it runs as
// methods of `Gateway`, which owns what every engine shares: the host, the queue to the guest, the counters,
// the clock of the current batch.

import VNetBuffers
import VNetServices
import VNetWire

/// TCP: the flows, the lists of flows waiting for something, the guest data gathered for one send, the guest
/// data held out of order, timers.
struct TCPEngine {
    var flows: FlowTable<TCPFlowKey, TCPFlow>
    /// Flows not yet established (capped by `config.tcpHalfOpenCapacity`).
    var halfOpenCount = 0
    /// Flows that owe the guest an ACK at the end of the current batch.
    var ackList: [Int]
    /// Flows waiting for room in `toGuest`.
    var queueBlocked: [Int] = []
    /// Flows whose offered window is under one segment, rechecked every millisecond.
    var windowWatch: [Int] = []
    var windowWatchDeadline: Instant = .zero
    var windowWatchPasses: UInt32 = 0
    var nextDeadline: Instant = .zero
    /// Guest data of one flow gathered across held frames, sent with one gather send (GatewayTCPBatch.swift).
    var sendBatch = GuestSendBatch()
    /// Guest data that arrived ahead of a hole, held until the hole fills (GatewayTCPReorder.swift).
    let reorder: TCPReorderStore

    init(capacity: Int, reorderSlots: Int = 0, reorderSlotsPerFlow: Int = 0) {
        flows = FlowTable(capacity: capacity)
        reorder = TCPReorderStore(slots: reorderSlots, perFlow: reorderSlotsPerFlow, flowCapacity: capacity)
        ackList = []
        ackList.reserveCapacity(capacity)
        windowWatch.reserveCapacity(capacity)
    }

    /// Forgets every flow (their host handles must be closed first) and every pending list; keeps allocations.
    mutating func reset() {
        flows = FlowTable(capacity: flows.capacity)
        halfOpenCount = 0
        ackList.removeAll(keepingCapacity: true)
        queueBlocked.removeAll(keepingCapacity: true)
        windowWatch.removeAll(keepingCapacity: true)
        windowWatchDeadline = .zero
        windowWatchPasses = 0
        nextDeadline = .zero
        sendBatch.reset()
        reorder.reset()
    }
}

/// UDP NAT: the flows (DNS flows among them, see `DNSForwarder`) and the guest datagrams batched for GSO.
struct UDPEngine {
    var flows: FlowTable<UDPFlowKey, UDPFlow>
    /// Guest datagrams of one flow, copied, waiting for one GSO send (GatewayUDPBatch.swift).
    var sendBatch = GuestDatagramBatch()

    init(capacity: Int) { flows = FlowTable(capacity: capacity) }

    mutating func reset() {
        flows = FlowTable(capacity: flows.capacity)
        sendBatch.reset()
    }
}

/// The DNS forwarder: upstream resolvers, the one in use, and how many UDP flows go to the DNS address.
struct DNSForwarder {
    /// Upstream DNS resolvers (host side), tried in order, with failover (VNetServices/DNSUpstreams.swift,
    /// shared with kernel NAT's forwarder); set by the runtime from resolv.conf.
    var upstreams = DNSUpstreams()
    /// UDP flows to the DNS address (capped by `config.dnsFlowCapacity`).
    var flowCount = 0

    mutating func reset() { self = DNSForwarder() }
}

/// ICMP echo NAT: the flows.
struct ICMPEngine {
    var flows: FlowTable<ICMPFlowKey, ICMPFlow>

    init(capacity: Int) { flows = FlowTable(capacity: capacity) }

    mutating func reset() { flows = FlowTable(capacity: flows.capacity) }
}

/// ARP and NDP: the guests' addresses learned from their traffic (capped), for frames the gateway originates.
struct Neighbours {
    var v4: [IPv4Address: MACAddress] = [:]
    var v6: [IPv6Address: MACAddress] = [:]

    mutating func reset() {
        v4.removeAll(keepingCapacity: true)
        v6.removeAll(keepingCapacity: true)
    }
}

/// IPv6 router advertisements: what they say, whether one went out yet, when the next unsolicited one is due.
struct RouterAdvertiser {
    let advertisement: RouterAdvertisement
    var advertisedOnce = false
    var next: Instant = .zero

    init(_ advertisement: RouterAdvertisement) { self.advertisement = advertisement }

    mutating func reset() {
        advertisedOnce = false
        next = .zero
    }
}
