// DHCPServer under a DISCOVER storm: unconfirmed offers never keep a real client out, bound leases are never
// taken, and one client group (a switch port) holds at most `offersPerGroup` unconfirmed offers.

import Testing
import VNetBuffers
import VNetServices
import VNetWire

@Suite("DHCPServer under pressure")
struct DHCPServerPressureTests {
    @Test("a storm of offers that are never requested does not keep a new client out")
    func stormDoesNotStarve() {
        var s = DHCPServer(config: config(poolSize: 16))
        for n in 1000 ..< 1300 { #expect(s.answer(message(.discover, mac(n)), at: t0).reply?.type == .offer) }
        #expect(s.slots.allSatisfy { $0.mac != nil && !$0.bound })
        let real = mac(1)
        let offer = s.answer(message(.discover, real), at: t0 + .seconds(1)).reply
        #expect(offer?.type == .offer)
        // The storm goes on between the real client's DISCOVER and its REQUEST.
        for n in 2000 ..< 2100 { _ = s.answer(message(.discover, mac(n)), at: t0 + .seconds(1)) }
        let ack = s.answer(message(.request, real, requested: offer!.yourAddress, serverID: serverIP), at: t0 + .seconds(1))
        #expect(ack.reply?.type == .ack && ack.reply?.yourAddress == offer?.yourAddress)
        #expect(s.lease(for: real, now: t0 + .seconds(2)) == offer?.yourAddress)
    }

    @Test("when the pool is full, the oldest unconfirmed offer is reclaimed for the newcomer")
    func oldestOfferIsReclaimed() {
        var s = DHCPServer(config: config(poolSize: 3))
        #expect(s.answer(message(.discover, mac(1)), at: t0 + .seconds(2)).reply?.yourAddress == ip(15))
        #expect(s.answer(message(.discover, mac(2)), at: t0).reply?.yourAddress == ip(16))   // the oldest offer
        #expect(s.answer(message(.discover, mac(3)), at: t0 + .seconds(1)).reply?.yourAddress == ip(17))
        #expect(s.answer(message(.discover, mac(4)), at: t0 + .seconds(3)).reply?.yourAddress == ip(16))
        #expect(s.slots[1].mac == mac(4))
        // mac(2) lost its offer; its REQUEST for the address now offered to mac(4) still wins (an offer is no claim).
        #expect(s.answer(message(.request, mac(2), requested: ip(16), serverID: serverIP), at: t0 + .seconds(3)).reply?.type == .ack)
        // And mac(4), whose offer was taken by that REQUEST, is NAKed and starts over.
        #expect(s.answer(message(.request, mac(4), requested: ip(16), serverID: serverIP), at: t0 + .seconds(3)).reply?.type == .nak)
    }

    @Test("a bound lease is never taken, however many clients ask")
    func boundLeasesStay() {
        var s = DHCPServer(config: config(poolSize: 4))
        #expect(s.lease(mac(1), at: t0) == ip(15))
        #expect(s.lease(mac(2), at: t0) == ip(16))
        for n in 100 ..< 400 {
            let a = s.answer(message(.discover, mac(n)), at: t0 + .seconds(1)).reply?.yourAddress
            #expect(a == ip(17) || a == ip(18), "MAC \(n) got \(String(describing: a))")
            // A REQUEST for a bound address is still NAKed.
            #expect(s.answer(message(.request, mac(n), requested: ip(15), serverID: serverIP), at: t0 + .seconds(1)).reply?.type == .nak)
        }
        #expect(s.lease(for: mac(1), now: t0 + .seconds(2)) == ip(15))
        #expect(s.lease(for: mac(2), now: t0 + .seconds(2)) == ip(16))
        // Every slot bound: nothing left to reclaim.
        #expect(s.lease(mac(3), at: t0 + .seconds(3)) != nil)
        #expect(s.lease(mac(4), at: t0 + .seconds(3)) != nil)
        #expect(s.answer(message(.discover, mac(5)), at: t0 + .seconds(4)).ignored == .poolExhausted)
    }

    @Test("a static lease's address is never offered to a storm")
    func staticLeaseIsNotReclaimed() {
        var c = config(poolSize: 2)
        c.staticLeases = [DHCPStaticLease(mac: mac(7), address: ip(15))]
        var s = DHCPServer(config: c)
        for n in 100 ..< 150 { #expect(s.answer(message(.discover, mac(n)), at: t0).reply?.yourAddress == ip(16)) }
        #expect(s.lease(mac(7), at: t0) == ip(15))
        #expect(s.answer(message(.request, mac(100), requested: ip(15), serverID: serverIP), at: t0).reply?.type == .nak)
    }

    @Test("one client group holds at most offersPerGroup unconfirmed offers; other groups keep the rest")
    func perGroupCap() {
        var s = DHCPServer(config: config(poolSize: 16))
        #expect(s.config.offersPerGroup == 8)
        let storm = 3, other = 5
        var stormAddresses = Set<IPv4Address>()
        for n in 1000 ..< 1300 {
            let r = s.answer(message(.discover, mac(n)), at: t0 + .milliseconds(UInt64(n)), group: storm).reply
            #expect(r?.type == .offer)
            if let a = r?.yourAddress { stormAddresses.insert(a) }
        }
        #expect(stormAddresses.count == 8)
        #expect(s.slots.filter { $0.group == storm && !$0.bound }.count == 8)
        // Another port's clients all get addresses the storm never touches, and keep them while it goes on.
        var leased: [IPv4Address] = []
        for n in 1 ... 8 {
            let m = mac(n)
            let offer = s.answer(message(.discover, m), at: t0 + .seconds(2), group: other).reply
            for k in 0 ..< 20 { _ = s.answer(message(.discover, mac(5000 + 20 * n + k)), at: t0 + .seconds(2), group: storm) }
            let ack = s.answer(message(.request, m, requested: offer?.yourAddress, serverID: serverIP), at: t0 + .seconds(2),
                               group: other).reply
            #expect(ack?.type == .ack && !stormAddresses.contains(ack!.yourAddress))
            if let a = ack?.yourAddress { leased.append(a) }
        }
        #expect(Set(leased).count == 8)
        #expect(s.slots.filter { $0.group == storm && !$0.bound }.count == 8)
    }

    @Test("the cap counts only live offers: an expired offer frees its group's share")
    func capCountsLiveOffers() {
        var s = DHCPServer(config: config(poolSize: 16, offerHold: .seconds(10)))
        for n in 0 ..< 8 { _ = s.answer(message(.discover, mac(100 + n)), at: t0, group: 1) }
        let later = t0 + .seconds(11)
        #expect(s.answer(message(.discover, mac(200)), at: later, group: 1).reply?.yourAddress == ip(23))   // a fresh slot
    }
}

extension DHCPServer {
    mutating func answer(_ m: DHCPMessage, at now: Instant, group: Int?) -> Answer {
        var buffer = [UInt8](repeating: 0xEE, count: 1024)
        let outcome = buffer.withUnsafeMutableBytes { handle(m, now: now, clientGroup: group, into: $0) }
        if case .reply(let r) = outcome { return Answer(outcome: outcome, bytes: Array(buffer[..<r.length])) }
        return Answer(outcome: outcome, bytes: [])
    }
}
