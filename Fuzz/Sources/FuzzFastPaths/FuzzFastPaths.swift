// Fuzz target: the gateway's fast paths, which FuzzGateway never reaches (it passes every frame unheld, with
// full checksums, to a gateway without offloads or datagram batching):
//   - held frames and the stream TCP gather (GatewayTCPBatch.swift): frames of one "port read" sit in one
//     buffer, handed over with `held: true`; at the end of the read the gateway flushes, then the buffer is
//     poisoned and freed, so a gather that sends from it too late is a heap-use-after-free under ASan (the
//     stub host reads every byte it is asked to send);
//   - partial checksums: TAP reads with a virtio-net header, `checksumPartial` from its NEEDS_CSUM flag, TCP
//     super-segments up to 64 KiB, on a gateway with `guestOffloads` (frames to the guest carry a header too);
//   - UDP GSO batching (`gathersGuestDatagrams`, GatewayUDPBatch.swift): same-size datagrams of one flow.
// To get past the TCP handshake (the gateway's ISN is a keyed hash), the harness keeps each of 4 guest
// connections in sync: it reads the sequence numbers of the gateway's segments to the guest and builds the
// guest's segments with the right seq/ack unless the input says to skew them.
//
// Records (selector % 8; `pick` = selector >> 3):
//   0 a raw guest frame joins the current read (held); pick & 1: checksums fixed first
//   1 a TAP read: a 10-byte virtio-net header, then the frame (ends the current read first); pick & 1: the
//     IPv4 header checksum fixed and, with NEEDS_CSUM, the TCP/UDP checksum set to the pseudo-header sum
//   2 a synced guest TCP segment on connection pick % 4: bytes[0] = flags, bytes[1] = seq skew (0: none), the
//     rest payload; pick & 4: sent as a TAP offload frame (partial checksum, not held), else joins the read;
//     bytes[0] & 0x80: the segment is held back and delivered after the connection's next one (reordered
//     delivery, as a VXLAN uplink does: the out-of-order store of GatewayTCPReorder.swift)
//   3 a guest UDP datagram of flow pick % 4 (payload = bytes), joins the read (held)
//   4 remote TCP bytes on flow pick % 4; 5 connect completion (refused if pick & 4) on flow pick % 4, with
//     ((pick >> 3) + 1) * 16 KiB + bytes[0] * 64 of send space
//   6 time passes; 7 the current read ends (flush, poison, free)
import FuzzSupport
#if canImport(Glibc)
import Glibc
#endif

@_cdecl("FuzzFastPaths_main")
public func fuzzFastPathsMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzFastPaths)
}

nonisolated(unsafe) var sharedFastGateway: (FuzzHost, Gateway<FuzzHost>)?

func fastGateway() -> (FuzzHost, Gateway<FuzzHost>) {
    if let (h, g) = sharedFastGateway {
        h.reset()
        g.reset()
        g.setDNSUpstreams([(IPv4Address(192, 0, 2, 53), 53)])
        g.gathersGuestDatagrams = true
        return (h, g)
    }
    let h = FuzzHost()
    var c = GatewayConfig()
    c.udpFlowCapacity = 16
    c.icmpFlowCapacity = 8
    c.tcpFlowCapacity = 16
    c.tcpHalfOpenCapacity = 8
    c.fragmentSlots = 4
    c.guestOffloads = true
    let g = Gateway(config: c, host: h, queueCapacity: 0)
    g.setDNSUpstreams([(IPv4Address(192, 0, 2, 53), 53)])
    g.gathersGuestDatagrams = true
    sharedFastGateway = (h, g)
    return (h, g)
}

/// One read of a stream port: frames copied into one buffer that stays in place until `end`.
struct PortRead {
    static let capacity = 1 << 18
    var buffer: UnsafeMutableRawBufferPointer? = nil
    var used = 0

    mutating func add(_ frame: [UInt8], to g: Gateway<FuzzHost>, now: Instant) {
        if buffer != nil, used + frame.count > PortRead.capacity { end(g) }
        if buffer == nil { buffer = .allocate(byteCount: PortRead.capacity, alignment: 16); used = 0 }
        let slot = UnsafeMutableRawBufferPointer(rebasing: buffer![used ..< used + frame.count])
        frame.withUnsafeBytes { slot.copyMemory(from: $0) }
        used += frame.count
        g.handleGuestFrame(UnsafeRawBufferPointer(slot), now: now, held: true)
    }

    /// What the runtime does before its next read: flush the gathered sends and the ACKs, then reuse the memory.
    mutating func end(_ g: Gateway<FuzzHost>) {
        g.flushGuestSends()
        g.flushPendingAcks()
        guard let b = buffer else { return }
        b.initializeMemory(as: UInt8.self, repeating: 0xEE)
        b.deallocate()
        buffer = nil
    }
}

/// The guest side of 4 TCP connections, kept in step with what the gateway sent.
struct GuestConnections {
    var guestNext = [UInt32](repeating: 0, count: 4)
    var gatewayNext = [UInt32](repeating: 0, count: 4)
    static let basePort: UInt16 = 40_000

    mutating func observe(_ frame: UnsafeRawBufferPointer) {
        guard frame.count >= 54, frame.u16(12) == EtherType.ipv4.rawValue, frame[23] == IPProtocol.tcp.rawValue else { return }
        let ihl = Int(frame[14] & 0x0F) * 4
        let total = Int(frame.u16(16))
        let t = 14 + ihl
        guard ihl >= 20, t + 20 <= frame.count, total >= ihl + 20 else { return }
        let port = Int(frame.u16(t + 2)) - Int(GuestConnections.basePort)
        guard port >= 0 && port < 4 else { return }
        let seq = UInt32(frame.u16(t + 4)) << 16 | UInt32(frame.u16(t + 6))
        let dataOffset = Int(frame[t + 12] >> 4) * 4
        let flags = frame[t + 13]
        let payload = max(0, total - ihl - dataOffset)
        gatewayNext[port] = seq &+ UInt32(payload) &+ (flags & 0x02 != 0 ? 1 : 0) &+ (flags & 0x01 != 0 ? 1 : 0)
    }

    /// The guest's next segment on connection `k`: an Ethernet frame with every checksum right (or, for an
    /// offload frame, the pseudo-header sum in the TCP checksum field).
    mutating func segment(_ k: Int, flags: UInt8, skew: UInt8, payload: ArraySlice<UInt8>, partial: Bool) -> [UInt8] {
        let syn = flags & 0x02 != 0
        if syn && guestNext[k] == 0 { guestNext[k] = 0x1000_0000 &* UInt32(k + 1) }
        let seq = guestNext[k] &+ UInt32(skew) &* 977
        var tcp = [UInt8](repeating: 0, count: 20)
        let sport = GuestConnections.basePort + UInt16(k)
        tcp[0] = UInt8(sport >> 8); tcp[1] = UInt8(sport & 0xFF)
        tcp[2] = 0; tcp[3] = 80
        for i in 0 ..< 4 { tcp[4 + i] = UInt8(truncatingIfNeeded: seq >> (24 - 8 * UInt32(i))) }
        let ack = gatewayNext[k]
        for i in 0 ..< 4 { tcp[8 + i] = UInt8(truncatingIfNeeded: ack >> (24 - 8 * UInt32(i))) }
        tcp[12] = 5 << 4
        tcp[13] = syn ? flags & 0x3F : (flags & 0x3F) | 0x10
        tcp[14] = 0xFF; tcp[15] = 0xFF
        tcp += payload
        if skew == 0 {
            guestNext[k] = guestNext[k] &+ UInt32(payload.count) &+ (syn ? 1 : 0) &+ (flags & 0x01 != 0 ? 1 : 0)
        }
        var f = ethernetFrame(type: .ipv4, ipv4Packet(dst: externalIP, proto: .tcp, tcp))
        fixupFrame(&f)
        if partial { setPseudoHeaderSum(&f) }
        return f
    }
}

/// Puts the pseudo-header sum (not complemented) in the TCP/UDP checksum field, as a kernel that leaves the
/// checksum to the "device" does (NEEDS_CSUM).
func setPseudoHeaderSum(_ f: inout [UInt8]) {
    guard f.count >= 34, f[12] == 0x08, f[13] == 0x00 else { return }
    let ihl = Int(f[14] & 0x0F) * 4
    let total = Int(f[16]) << 8 | Int(f[17])
    let proto = f[23]
    let offset = proto == IPProtocol.tcp.rawValue ? 16 : proto == IPProtocol.udp.rawValue ? 6 : -1
    guard ihl >= 20, offset >= 0, total >= ihl, 14 + total <= f.count, 14 + ihl + offset + 2 <= f.count else { return }
    let src = IPv4Address(rawValue: UInt32(f[26]) << 24 | UInt32(f[27]) << 16 | UInt32(f[28]) << 8 | UInt32(f[29]))
    let dst = IPv4Address(rawValue: UInt32(f[30]) << 24 | UInt32(f[31]) << 16 | UInt32(f[32]) << 8 | UInt32(f[33]))
    var sum = InternetChecksum.pseudoHeader(source: src, destination: dst, protocolNumber: proto, length: total - ihl)
    while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
    f[14 + ihl + offset] = UInt8(truncatingIfNeeded: sum >> 8)
    f[14 + ihl + offset + 1] = UInt8(truncatingIfNeeded: sum)
}

/// A TAP read: a virtio-net header in front of the frame, taken apart as the guest port does.
func tapRead(_ g: Gateway<FuzzHost>, _ bytes: [UInt8], now: Instant) {
    bytes.withUnsafeBytes { all in
        guard let header = try? VirtioNetHeader.parse(all) else { return }
        let frame = UnsafeRawBufferPointer(rebasing: all[VirtioNetHeader.length...])
        let limit: Int
        switch header.segmentation {
        case .unsegmented: limit = 1500 + 18
        case .tcpv4, .tcpv6: limit = 65_535 + 40 + 18
        default: return
        }
        guard frame.count >= 14, frame.count <= limit else { return }
        g.handleGuestFrame(frame, now: now, checksumPartial: header.flags.contains(.needsChecksum))
    }
    g.flushGuestSends()
    g.flushPendingAcks()
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFastPaths(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let (host, g) = fastGateway()
    var now = startTime
    var read = PortRead()
    var conns = GuestConnections()
    /// Per connection, a segment held back to be delivered after the next one (record 2, bytes[0] & 0x80).
    var late = [[UInt8]?](repeating: nil, count: 4)
    var records = RecordReader(UnsafeRawBufferPointer(start: data, count: size))
    while let (selector, bytes) = records.next() {
        let pick = Int(selector >> 3)
        switch selector % 8 {
        case 0:
            var f = bytes
            if pick & 1 != 0 { fixupFrame(&f) }
            read.add(f, to: g, now: now)
        case 1:
            read.end(g)
            var b = bytes
            if pick & 1 != 0, b.count > VirtioNetHeader.length {
                var f = Array(b[VirtioNetHeader.length...])
                fixupFrame(&f)
                if b[0] & 1 != 0 { setPseudoHeaderSum(&f) }
                b = Array(b[..<VirtioNetHeader.length]) + f
            }
            tapRead(g, b, now: now)
        case 2:
            guard bytes.count >= 2 else { break }
            let k = pick % 4
            let offload = pick & 4 != 0
            let f = conns.segment(k, flags: bytes[0], skew: bytes[1], payload: bytes[2...], partial: offload)
            if bytes[0] & 0x80 != 0 && !offload {
                // Reordered: this one goes after the connection's next segment (one held back at a time).
                if let earlier = late[k] { read.add(earlier, to: g, now: now) }
                late[k] = f
                break
            }
            if offload {
                read.end(g)
                var header = [UInt8](repeating: 0, count: VirtioNetHeader.length)
                header.withUnsafeMutableBytes {
                    VirtioNetHeader(flags: .needsChecksum, segmentation: f.count > 1514 ? .tcpv4 : .unsegmented,
                                    headerLength: 54, segmentSize: 1448, checksumStart: 34, checksumOffset: 16).emit(into: $0)
                }
                tapRead(g, header + f, now: now)
            } else {
                read.add(f, to: g, now: now)
            }
            if let held = late[k] {
                read.add(held, to: g, now: now)
                late[k] = nil
            }
        case 3:
            var udp = [UInt8](repeating: 0, count: 8) + bytes.prefix(1472)
            let sport = 41_000 + pick % 4
            udp[0] = UInt8(sport >> 8); udp[1] = UInt8(sport & 0xFF)
            udp[2] = 0x13; udp[3] = 0x88   // 5000
            udp[4] = UInt8(udp.count >> 8); udp[5] = UInt8(udp.count & 0xFF)
            read.add(guestFrame(dst: externalIP, proto: .udp, udp), to: g, now: now)
        case 4:
            read.end(g)
            host.peerBytes += bytes
            g.hostReadable(FlowTag(kind: .tcp, index: pick % 4), now: now)
        case 5:
            read.end(g)
            host.connectError = pick & 4 == 0 ? 0 : 111
            host.sendSpace = ((pick >> 3) + 1) * 16_384 + Int(bytes.first ?? 0) * 64
            g.hostWritable(FlowTag(kind: .tcp, index: pick % 4), now: now)
        case 6:
            read.end(g)
            now = now + .milliseconds(UInt64(pick) * 250 + UInt64(bytes.first ?? 0) * 1000)
            g.poll(now: now)
        default:
            read.end(g)
        }
        if read.buffer == nil {
            g.resumeFlowsBlockedOnQueue(now: now)
            drainAndCheck(g) { conns.observe($0) }
        }
    }
    read.end(g)
    drainAndCheck(g) { conns.observe($0) }
    if reportCounters { report(g) }
    return 0
}

/// VNET_FUZZ_REPORT=1: after each input, print which fast paths it reached (to check that the seeds do).
let reportCounters: Bool = {
    guard let v = getenv("VNET_FUZZ_REPORT") else { return false }
    return String(cString: v) == "1"
}()

func report(_ g: Gateway<FuzzHost>) {
    let c = g.counters
    let served = [ServedCounter.tcpGatheredSends, .udpBatchedSends, .tcpFlowsOpened, .tcpSuperSegmentsToGuest, .tcpOutOfOrderKept,
                  .framesFromGuest]
        .map { "\($0.name)=\(c[$0])" }
    let drops = DropReason.allCases.filter { c[$0] > 0 }.map { "\($0.name)=\(c[$0])" }
    print("fast paths: \(served.joined(separator: " ")); drops: \(drops.joined(separator: " "))")
}
