// The VXLAN uplink without sockets: the option string, the receive checks (each bad datagram counted under its
// own name), learning with ageing and a cap, static entries and remotes changed at run time.

import Testing
@testable import VNetRuntime
import VNetWire

@Suite struct VxlanTableTests {
    static let r1 = VxlanEndpoint(address: IPAddress(IPv4Address(198, 18, 0, 2)), port: 4789)
    static let r2 = VxlanEndpoint(address: IPAddress(IPv4Address(198, 18, 0, 3)), port: 8472)
    static let guestA = MACAddress(0x52, 0x54, 0, 0, 0, 0x0A)
    static let guestB = MACAddress(0x52, 0x54, 0, 0, 0, 0x0B)

    static func datagram(vni: UInt32 = 42, flags: UInt8 = 0x08, src: MACAddress = guestA, dst: MACAddress = .broadcast,
                         type: UInt16 = 0x0800, innerLength: Int = 60) -> [UInt8] {
        var d = [UInt8](repeating: 0, count: 8 + innerLength)
        d.withUnsafeMutableBytes { p in
            VXLANHeader(vni: vni).emit(into: p)
            if innerLength >= 14 {
                dst.write(to: p, at: 8)
                src.write(to: p, at: 14)
                p.put16(20, type)
            }
        }
        d[0] = flags
        return d
    }

    static func accept(_ t: VxlanTable, _ d: [UInt8], from: VxlanEndpoint = r1, now: UInt64 = 1) -> Range<Int>? {
        d.withUnsafeBytes { t.accept($0, from: from.address, now: now) }
    }

    @Test func parsesTheOption() throws {
        let u = try VxlanUplink.parse("42,local=198.18.0.1,remote=198.18.0.2,remote=198.18.0.3:8472,vlan=7,learning=off")
        #expect(u.vni == 42)
        #expect(u.local == VxlanEndpoint(address: IPAddress(IPv4Address(198, 18, 0, 1)), port: 4789))
        #expect(u.remotes == [Self.r1, Self.r2])
        #expect(u.vlan == 7)
        #expect(!u.learning)
        #expect(u.overhead == 50)
        let v6 = try VxlanUplink.parse("7,local=[2001:db8::1]:5000,remote=2001:db8::2")
        #expect(v6.local.port == 5000 && !v6.local.address.isIPv4)
        #expect(v6.remotes.first?.port == 4789)
        #expect(v6.overhead == 70)
    }

    @Test(arguments: ["", "x,local=1.2.3.4,remote=1.2.3.5", "16777216,local=1.2.3.4,remote=1.2.3.5", "1,remote=1.2.3.5",
                      "1,local=1.2.3.4", "1,local=1.2.3.4,remote=2001:db8::1", "1,local=1.2.3.4,remote=1.2.3.5,vlan=0",
                      "1,local=1.2.3.4,remote=1.2.3.5,learning=maybe", "1,local=1.2.3.4:0,remote=1.2.3.5",
                      "1,local=1.2.3.4,remote=1.2.3.5,remote=1.2.3.5", "1,local=1.2.3.4,remote=0.0.0.0", "1,local=1.2.3.4,colour=red",
                      "1,local=[2001:db8::1,remote=[2001:db8::2]"])
    func refusesBadOptions(_ text: String) {
        #expect(throws: RuntimeError.self) { try VxlanUplink.parse(text) }
    }

    @Test func acceptsAndLearns() {
        let t = VxlanTable(vni: 42, remotes: [Self.r1, Self.r2], learning: true, mtu: 1500)
        #expect(Self.accept(t, Self.datagram(), from: Self.r2) == 8 ..< 68)
        #expect(t.counters.datagramsIn == 1)
        #expect(t.unicastRemote(for: Self.guestA, now: 2) == Self.r2)   // learned, with r2's configured port
        #expect(t.unicastRemote(for: Self.guestB, now: 2) == nil)       // unknown: flood
        #expect(t.unicastRemote(for: .broadcast, now: 2) == nil)
        // The MAC moves to the other remote.
        _ = Self.accept(t, Self.datagram(), from: Self.r1, now: 3)
        #expect(t.unicastRemote(for: Self.guestA, now: 4) == Self.r1)
        #expect(t.counters.learnedMoved == 1)
    }

    // Each bad datagram of the issue, counted under its own name; the good one beside them still passes.
    @Test func dropsEachBadDatagramByReason() {
        let t = VxlanTable(vni: 42, remotes: [Self.r1], learning: true, mtu: 1500)
        let stranger = VxlanEndpoint(address: IPAddress(IPv4Address(198, 18, 0, 9)), port: 4789)
        #expect(Self.accept(t, Self.datagram(), from: stranger) == nil)
        #expect(Self.accept(t, Array(Self.datagram()[0 ..< 7])) == nil)
        #expect(Self.accept(t, Self.datagram(flags: 0x00)) == nil)
        #expect(Self.accept(t, Self.datagram(vni: 43)) == nil)
        #expect(Self.accept(t, Self.datagram(innerLength: 13)) == nil)
        #expect(Self.accept(t, Self.datagram(innerLength: 1515)) == nil)
        #expect(Self.accept(t, Self.datagram(type: 0x8100)) == nil)
        #expect(Self.accept(t, Self.datagram(innerLength: 1514)) != nil)
        let c = t.counters
        #expect(c.dropUntrustedSource == 1 && c.dropShortHeader == 1 && c.dropBadFlags == 1 && c.dropUnknownVNI == 1)
        #expect(c.dropInnerTooShort == 1 && c.dropInnerTooLong == 1 && c.dropInnerTagged == 1)
        #expect(c.datagramsIn == 1)
        #expect(t.learned.count == 1)   // nothing was learned from the dropped ones
    }

    @Test func learningOffLearnsNothing() {
        let t = VxlanTable(vni: 42, remotes: [Self.r1], learning: false, mtu: 1500)
        #expect(Self.accept(t, Self.datagram()) != nil)
        #expect(t.learned.isEmpty)
        #expect(t.unicastRemote(for: Self.guestA, now: 2) == nil)
    }

    @Test func multicastSourcesAreNotLearned() {
        let t = VxlanTable(vni: 42, remotes: [Self.r1], learning: true, mtu: 1500)
        _ = Self.accept(t, Self.datagram(src: MACAddress(0x01, 0, 0x5E, 0, 0, 1)))
        _ = Self.accept(t, Self.datagram(src: .zero))
        #expect(t.learned.isEmpty)
    }

    @Test func learnedEntriesAge() {
        let t = VxlanTable(vni: 42, remotes: [Self.r1], learning: true, mtu: 1500, ageingSeconds: 10)
        _ = Self.accept(t, Self.datagram(), now: 1_000_000_000)
        #expect(t.unicastRemote(for: Self.guestA, now: 10_000_000_000) == Self.r1)
        #expect(t.unicastRemote(for: Self.guestA, now: 11_000_000_000) == nil)   // stale: flood, even before expiry
        t.expire(now: 11_000_000_000)
        #expect(t.learned.isEmpty)
        #expect(t.counters.learnedAged == 1)
    }

    @Test func learningTableHasAFixedCap() {
        let t = VxlanTable(vni: 42, remotes: [Self.r1], learning: true, mtu: 1500)
        for i in 0 ..< VxlanUplink.maximumLearned + 10 {
            let mac = MACAddress(rawValue: 0x5254_0000_0000 | UInt64(i))
            _ = Self.accept(t, Self.datagram(src: mac))
        }
        #expect(t.learned.count == VxlanUplink.maximumLearned)
        #expect(t.counters.learnRefusedTableFull == 10)
    }

    @Test func staticEntriesWinAndRemotesChange() throws {
        let t = VxlanTable(vni: 42, remotes: [Self.r1], learning: true, mtu: 1500)
        try t.addStatic(Self.guestB, Self.r2)
        #expect(t.unicastRemote(for: Self.guestB, now: 1) == Self.r2)
        _ = Self.accept(t, Self.datagram(src: Self.guestB))   // a static MAC is not relearned
        #expect(t.unicastRemote(for: Self.guestB, now: 2) == Self.r2)
        #expect(throws: VxlanTable.ChangeError.self) { try t.addStatic(.broadcast, Self.r2) }
        try t.removeStatic(Self.guestB)
        #expect(throws: VxlanTable.ChangeError.self) { try t.removeStatic(Self.guestB) }

        // A datagram from r2 is untrusted until r2 is added; removing r1 forgets what was learned behind it.
        #expect(Self.accept(t, Self.datagram(), from: Self.r2) == nil)
        try t.addRemote(Self.r2)
        #expect(throws: VxlanTable.ChangeError.self) { try t.addRemote(Self.r2) }
        #expect(Self.accept(t, Self.datagram(src: Self.guestB), from: Self.r2) != nil)
        _ = Self.accept(t, Self.datagram(src: Self.guestA), from: Self.r1)
        try t.removeRemote(Self.r1)
        #expect(t.unicastRemote(for: Self.guestA, now: 3) == nil)
        #expect(t.unicastRemote(for: Self.guestB, now: 3) == Self.r2)
        #expect(throws: VxlanTable.ChangeError.self) { try t.addRemote(VxlanEndpoint(address: IPAddress(IPv6Address.loopback), port: 4789)) }
    }

    @Test func remotesHaveAFixedCap() throws {
        let t = VxlanTable(vni: 1, remotes: [], learning: true, mtu: 1500)
        for i in 0 ..< VxlanUplink.maximumRemotes {
            try t.addRemote(VxlanEndpoint(address: IPAddress(IPv4Address(198, 18, 1, UInt8(i))), port: 4789))
        }
        #expect(throws: VxlanTable.ChangeError.self) { try t.addRemote(Self.r1) }
    }
}
