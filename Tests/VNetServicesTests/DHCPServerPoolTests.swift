// DHCPServer's address pool: allocation order, exhaustion, expiry and reuse, reboots, RELEASE, DECLINE.

import Testing
import VNetBuffers
import VNetServices
import VNetWire

@Suite("DHCPServer pool")
struct DHCPServerPoolTests {
    @Test("clients get consecutive addresses from the pool start")
    func consecutiveAddresses() {
        var s = DHCPServer(config: config())
        #expect(s.lease(mac(1), at: t0) == ip(15))
        #expect(s.lease(mac(2), at: t0) == ip(16))
        #expect(s.lease(mac(3), at: t0) == ip(17))
        #expect(s.lease(for: mac(2), now: t0) == ip(16))
    }

    @Test("more MACs than slots, every slot bound: the extra ones are ignored as poolExhausted, never a crash",
          arguments: [1, 3])
    func poolExhaustion(poolSize: Int) {
        var s = DHCPServer(config: config(poolSize: poolSize))
        for n in 0 ..< poolSize { #expect(s.lease(mac(n), at: t0) == s.address(ofSlot: n)) }
        for n in poolSize ..< poolSize + 50 {
            #expect(s.answer(message(.discover, mac(n)), at: t0).ignored == .poolExhausted, "MAC \(n)")
        }
        // The bound clients keep their addresses and can renew them.
        for n in 0 ..< poolSize {
            let ack = s.answer(message(.request, mac(n), requested: s.address(ofSlot: n), serverID: serverIP), at: t0)
            #expect(ack.reply?.type == .ack)
        }
        #expect(s.slots.count == poolSize)
    }

    @Test("an unanswered offer keeps its address from other clients while the pool has room, for offerHold")
    func offerHoldExpires() {
        var s = DHCPServer(config: config(poolSize: 2, offerHold: .seconds(60)))
        #expect(s.answer(message(.discover, mac(1)), at: t0).reply?.yourAddress == ip(15))
        #expect(s.answer(message(.discover, mac(2)), at: t0 + .seconds(59)).reply?.yourAddress == ip(16))
        #expect(s.answer(message(.discover, mac(3)), at: t0 + .seconds(60)).reply?.yourAddress == ip(15))
    }

    @Test("leases expire; an expired slot goes to a new MAC only when no never-used slot is left")
    func expiredSlotsAreReusedLast() {
        var s = DHCPServer(config: config(poolSize: 3, lease: .seconds(100)))
        #expect(s.lease(mac(1), at: t0) == ip(15))
        let later = t0 + .seconds(200)   // mac(1)'s lease has expired
        #expect(s.lease(for: mac(1), now: later) == nil)
        #expect(s.lease(mac(2), at: later) == ip(16))   // never-used slot first
        #expect(s.lease(mac(3), at: later) == ip(17))
        #expect(s.lease(mac(4), at: later) == ip(15))   // only now the expired one
        #expect(s.answer(message(.discover, mac(5)), at: later).ignored == .poolExhausted)
    }

    @Test("of several expired slots, the one that expired first is reused")
    func oldestExpiredFirst() {
        var s = DHCPServer(config: config(poolSize: 2, lease: .seconds(100)))
        #expect(s.lease(mac(1), at: t0 + .seconds(10)) == ip(15))   // expires t0+110
        #expect(s.lease(mac(2), at: t0) == ip(16))                  // expires t0+100
        #expect(s.lease(mac(3), at: t0 + .seconds(500)) == ip(16))
    }

    @Test("a rebooted client gets its old address back, even after its lease expired")
    func rebootKeepsAddress() {
        var s = DHCPServer(config: config(poolSize: 4, lease: .seconds(100)))
        #expect(s.lease(mac(1), at: t0) == ip(15))
        #expect(s.lease(mac(2), at: t0) == ip(16))
        #expect(s.answer(message(.discover, mac(1)), at: t0 + .seconds(50)).reply?.yourAddress == ip(15))
        #expect(s.lease(mac(1), at: t0 + .seconds(5000)) == ip(15))
    }

    @Test("RELEASE ends the lease but the slot remembers the MAC")
    func release() {
        var s = DHCPServer(config: config(poolSize: 1))
        #expect(s.lease(mac(1), at: t0) == ip(15))
        let r = s.answer(message(.release, mac(1), ciaddr: ip(15), serverID: serverIP), at: t0 + .seconds(5))
        #expect(r.reply == nil)
        #expect(s.lease(for: mac(1), now: t0 + .seconds(5)) == nil)
        #expect(s.slots[0].mac == mac(1) && !s.slots[0].bound)
        // Pool of one, released: a new MAC may have it now.
        #expect(s.lease(mac(2), at: t0 + .seconds(6)) == ip(15))
    }

    @Test("RELEASE from another MAC changes nothing")
    func releaseFromStranger() {
        var s = DHCPServer(config: config(poolSize: 1))
        #expect(s.lease(mac(1), at: t0) == ip(15))
        _ = s.answer(message(.release, mac(2), ciaddr: ip(15)), at: t0)
        #expect(s.lease(for: mac(1), now: t0) == ip(15))
    }

    @Test("DECLINE keeps the address out of the pool")
    func decline() {
        var s = DHCPServer(config: config(poolSize: 2))
        #expect(s.lease(mac(1), at: t0) == ip(15))
        _ = s.answer(message(.decline, mac(1), requested: ip(15), serverID: serverIP), at: t0)
        #expect(s.lease(mac(1), at: t0 + .seconds(1)) == ip(16))
        #expect(s.answer(message(.discover, mac(2)), at: t0 + .seconds(2)).ignored == .poolExhausted)
    }

    @Test("a MAC holds at most one slot")
    func oneSlotPerMAC() {
        var s = DHCPServer(config: config(poolSize: 4))
        #expect(s.lease(mac(1), at: t0) == ip(15))
        // The client insists on another free address: it moves there and the old slot is freed.
        let ack = s.answer(message(.request, mac(1), requested: ip(17), serverID: serverIP), at: t0)
        #expect(ack.reply?.type == .ack && ack.reply?.yourAddress == ip(17))
        #expect(s.slots.filter { $0.mac == mac(1) }.count == 1)
        #expect(s.lease(mac(2), at: t0) == ip(15))
    }
}
