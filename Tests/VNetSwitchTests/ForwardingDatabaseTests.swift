// The forwarding database: learning, ageing, a full table, group sources, per-port quotas, moves.

import Testing
import VNetBuffers
import VNetSwitch
import VNetWire

func mac(_ n: UInt32) -> MACAddress { MACAddress(0x52, 0x54, 0x00, UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)) }
func at(_ s: UInt64) -> Instant { Instant(nanoseconds: 1_000_000_000_000 + s * 1_000_000_000) }

@Suite("Forwarding database")
struct ForwardingDatabaseTests {
    @Test("a learned MAC is found on its port and VLAN only")
    func learnAndLookup() {
        var db = ForwardingDatabase(capacity: 16, perPortQuota: 8, maximumPorts: 4)
        #expect(db.learn(mac(1), vlan: 1, port: 2, now: at(0)) == .learned)
        #expect(db.lookup(mac(1), vlan: 1, now: at(1)) == 2)
        #expect(db.lookup(mac(1), vlan: 2, now: at(1)) == nil, "VLANs have separate tables")
        #expect(db.learn(mac(1), vlan: 1, port: 2, now: at(5)) == .refreshed)
        #expect(db.count == 1)
    }

    @Test("entries age out after the ageing time without traffic, and traffic keeps them")
    func ageing() {
        var db = ForwardingDatabase(capacity: 16, perPortQuota: 8, maximumPorts: 4, ageingTime: .seconds(300))
        db.learn(mac(1), vlan: 1, port: 0, now: at(0))
        db.learn(mac(2), vlan: 1, port: 1, now: at(0))
        db.learn(mac(2), vlan: 1, port: 1, now: at(200))
        #expect(db.lookup(mac(1), vlan: 1, now: at(299)) == 0)
        #expect(db.lookup(mac(1), vlan: 1, now: at(300)) == nil, "stale: flooded again")
        #expect(db.expire(now: at(301)) == 1)
        #expect(db.count == 1 && db.lookup(mac(2), vlan: 1, now: at(301)) == 1)
        #expect(db.perPort == [0, 1, 0, 0])
    }

    @Test("a full table learns nothing new (until entries age out) and keeps what it has")
    func fullTable() {
        var db = ForwardingDatabase(capacity: 4, perPortQuota: 100, maximumPorts: 4, ageingTime: .seconds(300))
        for i in 0 ..< 4 { #expect(db.learn(mac(UInt32(i)), vlan: 1, port: i, now: at(0)) == .learned) }
        #expect(db.learn(mac(99), vlan: 1, port: 0, now: at(10)) == .tableFull)
        #expect(db.lookup(mac(99), vlan: 1, now: at(10)) == nil)
        for i in 0 ..< 4 { #expect(db.lookup(mac(UInt32(i)), vlan: 1, now: at(10)) == i) }
        #expect(db.learn(mac(99), vlan: 1, port: 0, now: at(400)) == .learned, "expired entries make room")
    }

    @Test("multicast, broadcast and zero source MACs are never learned")
    func groupSources() {
        var db = ForwardingDatabase(capacity: 16, perPortQuota: 8, maximumPorts: 4)
        #expect(db.learn(.broadcast, vlan: 1, port: 0, now: at(0)) == .groupSource)
        #expect(db.learn(MACAddress(0x01, 0x00, 0x5E, 0, 0, 1), vlan: 1, port: 0, now: at(0)) == .groupSource)
        #expect(db.learn(MACAddress(0x33, 0x33, 0, 0, 0, 1), vlan: 1, port: 0, now: at(0)) == .groupSource)
        #expect(db.learn(.zero, vlan: 1, port: 0, now: at(0)) == .groupSource)
        #expect(db.count == 0)
    }

    @Test("a port flooding random source MACs stays within its quota; other ports still learn")
    func portQuota() {
        var db = ForwardingDatabase(capacity: 1000, perPortQuota: 32, maximumPorts: 4)
        var rng = SystemRandomNumberGenerator()
        var refused = 0
        for _ in 0 ..< 5000 {
            let m = MACAddress(rawValue: UInt64.random(in: 0 ... 0xFFFF_FFFF_FFFF, using: &rng) & ~(1 << 40))   // unicast
            if db.learn(m, vlan: 1, port: 3, now: at(0)) == .portQuotaExceeded { refused += 1 }
        }
        #expect(db.perPort[3] == 32 && db.count == 32)
        #expect(refused >= 5000 - 32 - 5)
        #expect(db.learn(mac(7), vlan: 1, port: 0, now: at(1)) == .learned)
        #expect(db.lookup(mac(7), vlan: 1, now: at(1)) == 0)
    }

    @Test("a MAC that moves port moves its entry and its quota charge")
    func move() {
        var db = ForwardingDatabase(capacity: 16, perPortQuota: 8, maximumPorts: 4)
        db.learn(mac(1), vlan: 1, port: 0, now: at(0))
        #expect(db.learn(mac(1), vlan: 1, port: 2, now: at(1)) == .moved)
        #expect(db.lookup(mac(1), vlan: 1, now: at(1)) == 2)
        #expect(db.perPort == [0, 0, 1, 0])
        db.forget(port: 2)
        #expect(db.count == 0 && db.perPort == [0, 0, 0, 0])
    }
}
