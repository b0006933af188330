// The switch fabric: flooding, learning, VLAN isolation and tagging, the local sink, full queues, counters.

import Testing
import VNetBuffers
import VNetSwitch
import VNetWire

/// An untagged (or tagged) Ethernet frame with a recognisable payload.
func frame(from src: MACAddress, to dst: MACAddress, tag: UInt16? = nil, payload: UInt8 = 0xAB, length: Int = 64) -> [UInt8] {
    var f = [UInt8](repeating: payload, count: length + (tag == nil ? 0 : 4))
    f.withUnsafeMutableBytes { b in
        _ = EthernetHeader(destination: dst, source: src, etherType: EtherType(rawValue: 0x88B5), vlanTag: tag).emit(into: b)
    }
    return f
}

func drain(_ q: FrameQueue) -> [[UInt8]] {
    var out: [[UInt8]] = []
    while let f = q.firstFrame { out.append(Array(f)); q.removeFirstFrame() }
    return out
}

final class Rig {
    let sw: L2Switch
    var queues: [FrameQueue] = []
    var local: [[UInt8]] = []
    let now = at(0)

    init(_ policies: [VLANPolicy], localPolicy: VLANPolicy? = nil, ports: Int = 8) {
        sw = L2Switch(maximumPorts: ports, fdbCapacity: 64, macQuotaPerPort: 16)
        for (i, p) in policies.enumerated() {
            let q = FrameQueue(capacity: 1 << 17)
            queues.append(q)
            #expect(sw.addPort(name: "p\(i)", policy: p, sink: .queue(q)) == i)
        }
        if let lp = localPolicy { _ = sw.addPort(name: "local", policy: lp, sink: .local) }
    }

    func send(_ port: Int, _ f: [UInt8]) {
        f.withUnsafeBytes { b in sw.receive(from: port, frame: b, now: now) { f, _ in self.local.append(Array(f)) } }
    }
    func out(_ port: Int) -> [[UInt8]] { drain(queues[port]) }
}

@Suite("L2 switch")
struct L2SwitchTests {
    @Test("unknown and broadcast destinations flood to every other port; once learned, unicast goes to one port")
    func floodThenForward() {
        let r = Rig([.access(1), .access(1), .access(1)])
        let a = mac(0xA), b = mac(0xB)
        r.send(0, frame(from: a, to: b))
        #expect(r.out(0).isEmpty && r.out(1).count == 1 && r.out(2).count == 1)
        r.send(1, frame(from: b, to: a))
        #expect(r.out(0) == [frame(from: b, to: a)], "a is learned on port 0")
        #expect(r.out(2).isEmpty)
        r.send(0, frame(from: a, to: b))
        #expect(r.out(1).count == 1 && r.out(2).isEmpty)
        r.send(2, frame(from: mac(0xC), to: .broadcast))
        #expect(r.out(0).count == 1 && r.out(1).count == 1 && r.out(2).isEmpty)
        #expect(r.sw.counters.forwarded == 2 && r.sw.counters.flooded == 2)
        #expect(r.sw.ports[0]?.counters.rxPackets == 2 && r.sw.ports[0]?.counters.txPackets == 2)
    }

    @Test("a frame for a MAC on the port it came from goes nowhere")
    func noHairpin() {
        let r = Rig([.access(1), .access(1)])
        r.send(0, frame(from: mac(1), to: .broadcast))
        _ = r.out(1)
        r.send(0, frame(from: mac(2), to: mac(1)))
        #expect(r.out(0).isEmpty && r.out(1).isEmpty)
    }

    @Test("access ports on different VLANs never see each other's frames, broadcast included")
    func vlanIsolation() {
        let r = Rig([.access(10), .access(10), .access(20), .access(20)])
        r.send(0, frame(from: mac(1), to: .broadcast))
        #expect(r.out(1).count == 1 && r.out(2).isEmpty && r.out(3).isEmpty)
        r.send(2, frame(from: mac(3), to: mac(1)))   // mac(1) is known, but on VLAN 10
        #expect(r.out(0).isEmpty && r.out(1).isEmpty && r.out(3).count == 1, "unknown on VLAN 20: flooded there only")
    }

    @Test("a trunk adds the tag going out and takes it off coming in; a tag the trunk does not carry is dropped")
    func trunkTagging() {
        let r = Rig([.access(10), .trunk(allowed: VLANSet([10, 20]), native: nil), .access(20)])
        let untagged = frame(from: mac(1), to: .broadcast)
        r.send(0, untagged)
        let onTrunk = r.out(1)
        #expect(onTrunk == [frame(from: mac(1), to: .broadcast, tag: 10)])
        #expect(r.out(2).isEmpty)
        r.send(1, frame(from: mac(2), to: mac(1), tag: 10))
        #expect(r.out(0) == [frame(from: mac(2), to: mac(1))], "untagged on the access port")
        r.send(1, frame(from: mac(3), to: .broadcast, tag: 30))
        #expect(r.out(0).isEmpty && r.out(2).isEmpty)
        #expect(r.sw.counters[.vlanNotCarried] == 1)
        r.send(0, frame(from: mac(1), to: .broadcast, tag: 10))
        #expect(r.out(1).isEmpty && r.sw.counters[.vlanNotCarried] == 2, "tagged frames on an access port are dropped")
    }

    @Test("a trunk's native VLAN travels untagged; priority bits survive re-tagging")
    func nativeAndPriority() {
        let r = Rig([.trunk(allowed: VLANSet([5]), native: 1), .access(1), .trunk(allowed: VLANSet([5]), native: nil)])
        r.send(0, frame(from: mac(1), to: .broadcast))
        #expect(r.out(1) == [frame(from: mac(1), to: .broadcast)])
        r.send(0, frame(from: mac(2), to: .broadcast, tag: 0xA005))
        #expect(r.out(2) == [frame(from: mac(2), to: .broadcast, tag: 0xA005)])
    }

    @Test("the local sink takes frames synchronously, and frames from it are switched like any other")
    func localSink() {
        let r = Rig([.access(1), .access(1)], localPolicy: .access(1))
        r.send(0, frame(from: mac(1), to: .broadcast))
        #expect(r.local.count == 1 && r.out(1).count == 1)
        r.send(2, frame(from: mac(0x99), to: mac(1)))
        #expect(r.out(0).count == 1 && r.local.count == 1)
        r.send(1, frame(from: mac(2), to: mac(0x99)))
        #expect(r.local.count == 2 && r.out(0).isEmpty)
    }

    @Test("a full egress queue drops for that port only, counted there")
    func fullQueue() {
        let r = Rig([.access(1), .access(1), .access(1)])
        var n = 0
        while r.queues[1].freeSpace > 2000 { r.send(0, frame(from: mac(1), to: .broadcast, length: 1500)); n += 1 }
        _ = r.out(2)
        r.send(0, frame(from: mac(1), to: .broadcast, length: 1500))
        r.send(0, frame(from: mac(1), to: .broadcast, length: 1500))
        #expect(r.sw.ports[1]?.counters.txDrops ?? 0 >= 1)
        #expect(r.out(2).count == 2, "the other port still gets every frame")
        #expect(r.sw.counters[.egressQueueFull] >= 1)
        #expect(!r.sw.hasRoom(for: 1500, destination: mac(1), from: 2, now: r.now) || r.sw.port(of: mac(1), now: r.now) == 0)
    }

    @Test("runts and truncated tags are dropped and counted; a removed port's MACs are forgotten")
    func malformedAndRemoval() {
        let r = Rig([.access(1), .access(1)])
        [UInt8](repeating: 0, count: 13).withUnsafeBytes { r.sw.receive(from: 0, frame: $0, now: r.now) }
        var truncated = frame(from: mac(1), to: .broadcast)
        truncated[12] = 0x81; truncated[13] = 0x00
        Array(truncated.prefix(16)).withUnsafeBytes { r.sw.receive(from: 0, frame: $0, now: r.now) }
        #expect(r.sw.counters[.malformed] == 2 && r.sw.ports[0]?.counters.rxDrops == 2)
        #expect(r.out(1).isEmpty)
        r.send(0, frame(from: mac(1), to: .broadcast))
        #expect(r.sw.port(of: mac(1), now: r.now) == 0)
        r.sw.removePort(0)
        #expect(r.sw.port(of: mac(1), now: r.now) == nil && r.sw.fdb.count == 0)
        #expect(r.sw.portCount == 1)
    }

    @Test("the port limit refuses ports beyond it; a removed port's slot is reused")
    func portLimit() {
        let sw = L2Switch(maximumPorts: 2)
        let q = FrameQueue(capacity: 1 << 17)
        #expect(sw.addPort(name: "a", policy: .access(1), sink: .queue(q)) == 0)
        #expect(sw.addPort(name: "b", policy: .access(1), sink: .queue(q)) == 1)
        #expect(sw.addPort(name: "c", policy: .access(1), sink: .queue(q)) == nil)
        sw.removePort(0)
        #expect(sw.addPort(name: "c", policy: .access(1), sink: .queue(q)) == 0)
    }

    @Test("VLAN options parse; bad ones are clear errors")
    func parsing() {
        #expect(VLANPolicy.parse(access: "10", trunk: nil, native: nil) == .success(.access(10)))
        #expect(VLANPolicy.parse(access: nil, trunk: nil, native: nil) == .success(.access(1)))
        guard case .success(.trunk(let set, let native)) = VLANPolicy.parse(access: nil, trunk: "10:20-22", native: "1") else {
            Issue.record("trunk did not parse"); return
        }
        #expect(set.description == "10:20-22" && native == 1)
        for (a, t, n) in [("0", nil, nil), ("4095", nil, nil), ("x", nil, nil), (nil, "5-3", nil), ("1", "2", nil), ("1", nil, "2")] as [(String?, String?, String?)] {
            guard case .failure = VLANPolicy.parse(access: a, trunk: t, native: n) else { Issue.record("accepted \(String(describing: a)) \(String(describing: t))"); continue }
        }
    }
}
