// Offload across the switch: a port with offload takes super-segments as they are, a port without gets wire
// frames cut and checksummed in software, and the local sink is told what it gets.

import Testing
import VNetBuffers
import VNetSwitch
import VNetWire

/// Ethernet + IPv4 + TCP from `src` to `dst` with `payloadLength` bytes and the checksum left partial.
func superSegment(from src: MACAddress, to dst: MACAddress, payloadLength: Int) -> [UInt8] {
    var f = [UInt8](repeating: 0, count: 54 + payloadLength)
    f.withUnsafeMutableBytes { b in
        _ = EthernetHeader(destination: dst, source: src, etherType: .ipv4).emit(into: b)
        b[14] = 0x45
        b.put16(16, UInt16(40 + payloadLength))
        b[22] = 64
        b[23] = 6
        b.put16(26, 0x0A00); b.put16(28, 0x020F); b.put16(30, 0x0A00); b.put16(32, 0x0210)
        b.put16(24, InternetChecksum.of(UnsafeRawBufferPointer(b.slice(14 ..< 34))))
        b.put16(34, 1000); b.put16(36, 2000)
        b[46] = 0x50
        b[47] = 0x18
        for i in 0 ..< payloadLength { b[54 + i] = UInt8(truncatingIfNeeded: i) }
        let pseudo = InternetChecksum.add(UnsafeRawBufferPointer(b.slice(26 ..< 34))) &+ 6 &+ UInt64(20 + payloadLength)
        b.put16(50, InternetChecksum.partial(pseudo))
    }
    return f
}

func tcpChecksumVerifies(_ f: [UInt8]) -> Bool {
    f.withUnsafeBytes { b in
        let total = Int(b.u16(16))
        let pseudo = InternetChecksum.add(b.slice(26 ..< 34)) &+ 6 &+ UInt64(total - 20)
        return InternetChecksum.finish(InternetChecksum.add(b.slice(34 ..< 14 + total), to: pseudo)) == 0
    }
}

@Suite("L2 switch offload")
struct SwitchOffloadTests {
    let a = mac(0xA), b = mac(0xB), c = mac(0xC)

    /// Port 0 takes offloads (a TAP with IFF_VNET_HDR), ports 1 and 2 do not (QEMU streams).
    func rig() -> (L2Switch, [FrameQueue]) {
        let sw = L2Switch(maximumPorts: 4, fdbCapacity: 64, macQuotaPerPort: 16, mtu: 1500)
        let queues = [FrameQueue(capacity: 1 << 20, frameHeaderLength: VirtioNetHeader.length),
                      FrameQueue(capacity: 1 << 20), FrameQueue(capacity: 1 << 20, frameHeaderLength: VirtioNetHeader.length)]
        for (i, q) in queues.enumerated() { _ = sw.addPort(name: "p\(i)", policy: .access(1), sink: .queue(q)) }
        return (sw, queues)
    }

    @Test("a 64 KiB super-segment to a port without offload leaves as MTU-sized frames with good checksums")
    func segmentedForPlainPort() {
        let (sw, q) = rig()
        let now = at(0)
        // Learn b on port 1 first, so the super-segment is unicast.
        frame(from: b, to: a).withUnsafeBytes { sw.receive(from: 1, frame: $0, now: now) }
        _ = drain(q[0]); _ = drain(q[2])
        let big = superSegment(from: a, to: b, payloadLength: 60_000)
        let header = VirtioNetHeader(flags: .needsChecksum, segmentation: .tcpv4, headerLength: 54, segmentSize: 1460,
                                     checksumStart: 34, checksumOffset: 16)
        big.withUnsafeBytes { sw.receive(from: 0, frame: $0, offload: header, now: now) }
        let out = drain(q[1])
        #expect(out.count == (60_000 + 1459) / 1460)
        #expect(out.allSatisfy { $0.count <= 1514 })
        #expect(out.allSatisfy(tcpChecksumVerifies))
        #expect(out.reduce(0) { $0 + $1.count - 54 } == 60_000)
        #expect(sw.softwareSegmented == 1 && sw.softwareSegments == UInt64(out.count))
        #expect(sw.counters[.malformed] == 0)
    }

    @Test("a port with offload gets the super-segment whole, its virtio-net header before it")
    func keptForOffloadPort() throws {
        let (sw, q) = rig()
        let now = at(0)
        frame(from: c, to: a).withUnsafeBytes { sw.receive(from: 2, frame: $0, now: now) }
        _ = drain(q[0]); _ = drain(q[1])
        let big = superSegment(from: a, to: c, payloadLength: 30_000)
        let header = VirtioNetHeader(flags: .needsChecksum, segmentation: .tcpv4, headerLength: 54, segmentSize: 1460,
                                     checksumStart: 34, checksumOffset: 16)
        big.withUnsafeBytes { sw.receive(from: 0, frame: $0, offload: header, now: now) }
        let out = drain(q[2])
        #expect(out.count == 1)
        let stored = try #require(out.first)
        let h = try stored.withUnsafeBytes { try VirtioNetHeader.parse($0) }
        #expect(h == header)
        #expect(Array(stored[VirtioNetHeader.length...]) == big)
        #expect(drain(q[1]).isEmpty)
    }

    @Test("a partial checksum is completed for a port without offload and flagged to the local sink")
    func partialChecksum() {
        let sw = L2Switch(maximumPorts: 4, fdbCapacity: 64, macQuotaPerPort: 16)
        let plain = FrameQueue(capacity: 1 << 18)
        _ = sw.addPort(name: "tap", policy: .access(1), sink: .queue(FrameQueue(capacity: 1 << 18, frameHeaderLength: 10)))
        _ = sw.addPort(name: "stream", policy: .access(1), sink: .queue(plain))
        _ = sw.addPort(name: "gateway", policy: .access(1), sink: .local)
        sw.localTakesOffloads = true
        let small = superSegment(from: a, to: .broadcast, payloadLength: 500)
        let header = VirtioNetHeader(flags: .needsChecksum, checksumStart: 34, checksumOffset: 16)
        var local: [(Int, LocalDelivery)] = []
        small.withUnsafeBytes { sw.receive(from: 0, frame: $0, offload: header, now: at(0)) { f, d in local.append((f.count, d)) } }
        let out = drain(plain)
        #expect(out.count == 1 && tcpChecksumVerifies(out[0]) && sw.softwareChecksums == 1)
        #expect(local.count == 1 && local[0].1.checksumPartial && local[0].1.inPlace)
    }

    @Test("an oversized frame without an offload header is still dropped as malformed")
    func oversizeWithoutOffload() {
        let (sw, q) = rig()
        let big = superSegment(from: a, to: b, payloadLength: 3000)
        big.withUnsafeBytes { sw.receive(from: 0, frame: $0, now: at(0)) }
        #expect(sw.counters[.malformed] == 1 && drain(q[1]).isEmpty)
    }

    @Test("a super-segment whose lengths lie is dropped and counted, never sent")
    func lyingSuperSegment() {
        let (sw, q) = rig()
        var big = superSegment(from: a, to: b, payloadLength: 5000)
        big[16] = 0xFF; big[17] = 0xFF   // IP total length beyond the frame
        let header = VirtioNetHeader(flags: .needsChecksum, segmentation: .tcpv4, headerLength: 54, segmentSize: 1460,
                                     checksumStart: 34, checksumOffset: 16)
        big.withUnsafeBytes { sw.receive(from: 0, frame: $0, offload: header, now: at(0)) }
        #expect(drain(q[1]).isEmpty)
        #expect(sw.counters[.malformed] >= 1)
    }
}
