// VNetSwitch: a learning L2 switch (IEEE 802.1D forwarding, 802.1Q VLANs) for many VMs on one segment.
//
// Theory of Operation
// -------------------
// The forwarding database maps (VLAN, MAC) to the port the MAC was last seen on. It is learned from the
// source address of every valid frame, never from a group (multicast/broadcast) source, and entries age out
// after `ageingTime` without traffic (802.1D's default is 300 s). The table is bounded twice: a global
// capacity (a full table learns nothing new, and unknown destinations are flooded, which is always correct),
// and a per-port quota, so one port spraying random source MACs cannot evict everyone else's entries. A MAC
// that moves to another port moves its entry (and its quota charge) with it. Storage is reserved up front,
// so learning never allocates on the data path.

import VNetBuffers
import VNetWire

public struct ForwardingDatabase {
    public struct Key: Hashable, Sendable {
        public var vlan: UInt16
        public var mac: MACAddress
        public init(vlan: UInt16, mac: MACAddress) { self.vlan = vlan; self.mac = mac }
    }

    public struct Entry: Equatable, Sendable {
        public var port: Int
        public var lastSeen: Instant
    }

    public enum LearnOutcome: Equatable, Sendable {
        case learned, refreshed, moved, groupSource, tableFull, portQuotaExceeded
    }

    public let capacity: Int
    public let perPortQuota: Int
    public let ageingTime: Instant.Duration
    public private(set) var entries: [Key: Entry]
    /// Learned entries per port (index = port number).
    public private(set) var perPort: [Int]

    public init(capacity: Int = 8192, perPortQuota: Int = 256, maximumPorts: Int = 64, ageingTime: Instant.Duration = .seconds(300)) {
        self.capacity = max(1, capacity)
        self.perPortQuota = max(1, perPortQuota)
        self.ageingTime = ageingTime
        entries = [:]
        entries.reserveCapacity(self.capacity)
        perPort = Array(repeating: 0, count: maximumPorts)
    }

    public var count: Int { entries.count }

    /// Where a frame to `mac` on `vlan` goes, if the MAC is known and its entry is fresh.
    @inline(__always)
    public func lookup(_ mac: MACAddress, vlan: UInt16, now: Instant) -> Int? {
        guard let e = entries[Key(vlan: vlan, mac: mac)], now - e.lastSeen < ageingTime else { return nil }
        return e.port
    }

    /// Records that `mac` was seen as a source on `port`.
    @discardableResult
    public mutating func learn(_ mac: MACAddress, vlan: UInt16, port: Int, now: Instant) -> LearnOutcome {
        guard !mac.isMulticast, mac != .zero else { return .groupSource }
        guard port >= 0 && port < perPort.count else { return .tableFull }
        let key = Key(vlan: vlan, mac: mac)
        if var e = entries[key] {
            if e.port == port {
                e.lastSeen = now
                entries[key] = e
                return .refreshed
            }
            guard perPort[port] < perPortQuota else { return .portQuotaExceeded }
            perPort[e.port] -= 1
            perPort[port] += 1
            entries[key] = Entry(port: port, lastSeen: now)
            return .moved
        }
        guard perPort[port] < perPortQuota else { return .portQuotaExceeded }
        if entries.count >= capacity {
            expire(now: now)
            guard entries.count < capacity else { return .tableFull }
        }
        entries[key] = Entry(port: port, lastSeen: now)
        perPort[port] += 1
        return .learned
    }

    /// The MAC addresses learned on `port` (each once, whatever its VLANs).
    public func macs(on port: Int) -> [MACAddress] {
        guard port >= 0 && port < perPort.count, perPort[port] > 0 else { return [] }
        var seen = Set<MACAddress>()
        for (k, e) in entries where e.port == port { seen.insert(k.mac) }
        return Array(seen)
    }

    /// Forgets every entry of `port` (it left, or its peer reconnected).
    public mutating func forget(port: Int) {
        guard port >= 0 && port < perPort.count, perPort[port] > 0 else { return }
        for (k, e) in entries where e.port == port { entries[k] = nil }
        perPort[port] = 0
    }

    /// Drops entries older than the ageing time. Returns how many went.
    @discardableResult
    public mutating func expire(now: Instant) -> Int {
        var gone = 0
        for (k, e) in entries where now - e.lastSeen >= ageingTime {
            entries[k] = nil
            perPort[e.port] -= 1
            gone += 1
        }
        return gone
    }
}
