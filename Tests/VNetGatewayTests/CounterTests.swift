// Counters: names, the report, and the rule that each frame is served or dropped under exactly one reason.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("Counters")
struct CounterTests {
    @Test("every counter has a distinct snake_case name")
    func names() {
        let drops = DropReason.allCases.map(\.name)
        let served = ServedCounter.allCases.map(\.name)
        #expect(Set(drops).count == drops.count)
        #expect(Set(served).count == served.count)
        for n in drops + served {
            #expect(!n.isEmpty && n.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "_" }, "\(n)")
        }
    }

    @Test("the report lists only non-zero counters, drops prefixed")
    func report() {
        var c = GatewayCounters()
        #expect(c.report.isEmpty && c.totalDrops == 0)
        c.count(.arpReplies)
        c.drop(.vlanTagged)
        c.drop(.vlanTagged)
        #expect(c.report == ["arp_replies 1", "drop_vlan_tagged 2"])
        #expect(c.totalDrops == 2 && c[.vlanTagged] == 2 && c[.arpReplies] == 1)
    }

    @Test("a full transmit queue drops the reply under txQueueFull alone, and recovers when drained")
    func txQueueFull() {
        let h = GatewayHarness()
        let q = h.gateway.toGuest
        // Fill the queue with one frame that leaves less than a minimum frame of room.
        let junk = q.reserve(maximumLength: q.capacity - 4 - 50)!
        junk.initializeMemory(as: UInt8.self, repeating: 0xAA)
        q.commit(length: junk.count)
        let before = h.counters
        h.send(FrameBuilder.arpFrame(targetIP: gatewayIP))
        #expect(dropDelta(before, h.counters) == [.txQueueFull: 1])
        #expect(h.counters[.arpReplies] == 0 && h.counters[.framesToGuest] == 0)
        #expect(drainFrames(q).count == 1)   // only the junk
        #expect(h.exchange(FrameBuilder.arpFrame(targetIP: gatewayIP)).count == 1)
    }

    @Test("served frames drop nothing; framesFromGuest counts every frame, framesToGuest every frame sent")
    func servedFramesDropNothing() {
        let h = GatewayHarness()
        h.gateway.setDNSUpstreams([upstream1])
        let frames: [[UInt8]] = [
            FrameBuilder.arpFrame(targetIP: gatewayIP),
            FrameBuilder.echoRequestFrame(dst: gatewayIP, id: 1, seq: 1, pattern(8)),
            FrameBuilder.dhcpFrame(.discover),
            FrameBuilder.udpFrame(dst: dnsIP, dstPort: 53, FrameBuilder.dnsQuery(id: 4)),
            FrameBuilder.udpFrame(dst: externalIP, dstPort: 7, pattern(4)),
            FrameBuilder.echoRequestFrame(dst: externalIP, id: 1, seq: 1, pattern(8)),
        ]
        var sent = 0
        for f in frames { sent += h.exchange(f).count }
        #expect(h.counters.totalDrops == 0)
        #expect(h.counters[.framesFromGuest] == UInt64(frames.count))
        #expect(h.counters[.framesToGuest] == UInt64(sent) && sent == 3)
    }

    @Test("drops across many reasons add up: totalDrops equals the number of dropped frames")
    func totalsAddUp() {
        let h = GatewayHarness()
        for c in hostileCases { h.send(c.frame) }
        _ = h.drain()
        #expect(h.counters.totalDrops == UInt64(hostileCases.count))
        for reason in Set(hostileCases.map(\.reason)) {
            #expect(h.counters[reason] == UInt64(hostileCases.filter { $0.reason == reason }.count), "\(reason.name)")
        }
    }
}
