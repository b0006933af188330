// A fixed-capacity table of flow records addressed by index, with a hash index by key.
//
// Lifecycle of a slot: free -> active (insert) -> free (remove). Records live in one array allocated up
// front; `free` is a stack of unused indices. The index is a Swift Dictionary reserved to the capacity, so
// inserts never grow it, and its hashing is seeded per process (a secret the guest cannot predict). A full
// table refuses inserts; the caller counts the refusal. Active flows are also counted per guest address (the
// per-guest limits); an address leaves that count with its last flow, so it holds at most `capacity` entries and,
// reserved to that, never grows.

import VNetWire

/// A flow key that names the guest address owning the flow.
protocol GuestFlowKey: Hashable {
    var guestAddress: IPAddress { get }
}

struct FlowTable<Key: GuestFlowKey, Record> {
    let capacity: Int
    private(set) var records: [Record?]
    private var index: [Key: Int]
    private var free: [Int]
    private var perGuest: [IPAddress: Int]

    init(capacity: Int) {
        self.capacity = capacity
        records = Array(repeating: nil, count: capacity)
        index = [:]
        index.reserveCapacity(capacity)
        free = Array((0 ..< capacity).reversed())
        perGuest = [:]
        perGuest.reserveCapacity(capacity)
    }

    /// Active flows of one guest address.
    func count(forGuest a: IPAddress) -> Int { perGuest[a] ?? 0 }

    var count: Int { capacity - free.count }

    /// The index the next insert will use.
    var nextFreeIndex: Int? { free.last }

    func lookup(_ key: Key) -> Int? { index[key] }

    /// Inserts a record; returns its index, or nil when the table is full.
    mutating func insert(_ key: Key, _ record: Record) -> Int? {
        guard let i = free.popLast() else { return nil }
        records[i] = record
        index[key] = i
        perGuest[key.guestAddress, default: 0] += 1
        return i
    }

    mutating func remove(_ key: Key) {
        guard let i = index.removeValue(forKey: key) else { return }
        records[i] = nil
        free.append(i)
        let a = key.guestAddress
        if let n = perGuest[a], n > 1 { perGuest[a] = n - 1 } else { perGuest.removeValue(forKey: a) }
    }

    subscript(i: Int) -> Record? {
        get { i >= 0 && i < capacity ? records[i] : nil }
        set { records[i] = newValue }
    }

    /// Indices of active records (for sweeps; O(capacity)).
    var activeIndices: [Int] { records.indices.filter { records[$0] != nil } }
}
