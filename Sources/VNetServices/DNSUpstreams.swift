// Which upstream resolver a DNS forwarder uses, and when it moves to the next: shared by the gateway's
// forwarder (user-mode networks) and kernel NAT's.
//
// Theory of Operation
// -------------------
// Upstreams are tried in the order given (resolv.conf's, or the command line's), either family: an IPv4
// client's query may go to an IPv6 resolver and back. New queries go to the current one. When a query to the
// current upstream fails (an ICMP error or a refused socket, or no answer within the forwarder's failover
// time), later queries move to the next, round the list; a failure reported for an upstream that is no longer
// current moves nothing, so a burst of timeouts from one dead resolver skips it once, not the whole list.
// Replacing the list (resolv.conf changed) starts again from its first entry.

import VNetWire

public struct DNSUpstreams: Sendable {
    public private(set) var servers: [(address: IPAddress, port: UInt16)] = []
    public private(set) var index = 0
    /// Moves to the next upstream so far.
    public private(set) var failovers: UInt64 = 0

    public init(_ servers: [(IPAddress, UInt16)] = []) { self.servers = servers.map { ($0.0, $0.1) } }

    public var isEmpty: Bool { servers.isEmpty }

    /// The upstream new queries go to.
    public var current: (address: IPAddress, port: UInt16)? { servers.isEmpty ? nil : servers[index % servers.count] }

    /// A query to `address` failed: when it is the current upstream and there is another, later queries go to
    /// the next. Returns whether it moved.
    @discardableResult
    public mutating func failed(_ address: IPAddress) -> Bool {
        guard servers.count > 1, let c = current, c.address == address else { return false }
        index = (index + 1) % servers.count
        failovers &+= 1
        return true
    }

    /// A new list, used from its first entry.
    public mutating func replace(_ servers: [(IPAddress, UInt16)]) {
        self.servers = servers.map { ($0.0, $0.1) }
        index = 0
    }
}
