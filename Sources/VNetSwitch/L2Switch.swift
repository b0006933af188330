// The switch fabric: ports, forwarding, flooding, VLAN tagging and per-port counters.
//
// Theory of Operation
// -------------------
// A port is a slot with a VLAN policy, counters and a sink: either an output `FrameQueue` that a transport
// drains (QEMU stream/dgram peers, TAP), or the local sink, a closure the caller passes in (the built-in
// gateway of `vnet nat`, which takes frames synchronously). `receive` handles one frame from one port:
//   1. parse the Ethernet header (a runt or a truncated tag is dropped and counted);
//   2. classify it into a VLAN by the ingress port's policy (a VLAN the port does not carry: dropped);
//   3. learn its source MAC (group sources are never learned; a full table or an exhausted port quota
//      only means no learning: the frame still goes on);
//   4. unicast to a known MAC: to that port only (never back out of the ingress port); broadcast,
//      multicast and unknown unicast: flooded to every other port that carries the VLAN;
//   5. on each egress port the frame is written tagged or untagged as that port's policy says.
// A full egress queue drops the frame for that port only and counts it there. Nothing allocates per frame.
//
// Offload per port: a frame may arrive with a virtio-net header (a TAP with IFF_VNET_HDR): a TCP
// super-segment of up to 64 KiB and/or a partial layer-4 checksum. A port whose queue keeps a frame header
// (`FrameQueue.frameHeaderLength`) takes such frames as they are, header included. For any other port the
// switch finishes the offload in software first (`SoftwareOffload`: the super-segment is cut into MTU-sized
// wire frames, the checksum completed), so a large frame is never dropped for want of offload and one
// offload port never forces offload off for the rest. The local sink is told whether a frame's checksum is
// partial and whether the bytes are the caller's own (so it may keep pointers into them until the caller's
// next read, see `LocalDelivery`).

import VNetBuffers
import VNetWire

public struct SwitchPortCounters: Equatable, Sendable {
    public var rxPackets: UInt64 = 0
    public var rxBytes: UInt64 = 0
    public var rxDrops: UInt64 = 0
    public var txPackets: UInt64 = 0
    public var txBytes: UInt64 = 0
    public var txDrops: UInt64 = 0
    public init() {}
}

public enum SwitchDropReason: Int, CaseIterable, Sendable {
    case malformed, vlanNotCarried, egressQueueFull, noSuchPort

    public var name: String {
        switch self {
        case .malformed: "malformed"
        case .vlanNotCarried: "vlan_not_carried"
        case .egressQueueFull: "egress_queue_full"
        case .noSuchPort: "no_such_port"
        }
    }
}

public struct SwitchCounters: Equatable, Sendable {
    public var drops = [UInt64](repeating: 0, count: SwitchDropReason.allCases.count)
    public var flooded: UInt64 = 0
    public var forwarded: UInt64 = 0
    public var learnRefusedTableFull: UInt64 = 0
    public var learnRefusedPortQuota: UInt64 = 0
    public var macMoves: UInt64 = 0
    public subscript(_ r: SwitchDropReason) -> UInt64 { drops[r.rawValue] }
}

/// How a frame reached the local sink.
public struct LocalDelivery: Sendable {
    /// The layer-4 checksum holds only the pseudo-header sum (virtio-net NEEDS_CSUM).
    public var checksumPartial: Bool
    /// The bytes are the caller's frame itself, not a copy the switch made (untagged, segmented): the sink
    /// may hold on to them as long as the caller keeps them.
    public var inPlace: Bool
    public init(checksumPartial: Bool = false, inPlace: Bool = true) {
        self.checksumPartial = checksumPartial
        self.inPlace = inPlace
    }
}

public final class L2Switch {
    public enum Sink {
        case queue(FrameQueue)
        /// Frames go to the closure passed to `receive` (the built-in gateway).
        case local
    }

    public struct Port {
        public var policy: VLANPolicy
        public let sink: Sink
        public var counters = SwitchPortCounters()
        public var name: String
    }

    /// Writes one frame (after its virtio-net header, empty for a port without offloads) straight to a port's
    /// device; false when the device is not ready, and the frame is queued instead.
    public typealias DirectWriter = (_ header: UnsafeRawBufferPointer, _ frame: UnsafeRawBufferPointer) -> Bool

    public let maximumPorts: Int
    public private(set) var ports: [Port?]
    /// Per port: a writer that takes a frame at once when the port's queue is empty (a TAP: one write per frame
    /// anyway), which spares the copy into the queue. Frames that need a tag added or removed are queued.
    var directWriters: [DirectWriter?]
    /// Frames written straight to a port's device, without a copy into its queue.
    public private(set) var directWrites: UInt64 = 0
    public private(set) var fdb: ForwardingDatabase
    public private(set) var counters = SwitchCounters()
    /// Largest frame accepted (MTU + Ethernet header + one tag).
    public let maximumFrame: Int
    /// Largest offloaded TCP super-segment accepted (64 KiB of IP plus Ethernet and a tag).
    public static let maximumSuperSegment = 65_535 + 18
    /// Frames rebuilt in software (a segment of a super-segment, a completed checksum) are built here.
    let scratch: UnsafeMutableRawBufferPointer
    /// Super-segments cut in software and the segments made of them; partial checksums completed.
    public private(set) var softwareSegmented: UInt64 = 0
    public private(set) var softwareSegments: UInt64 = 0
    public private(set) var softwareChecksums: UInt64 = 0

    public init(maximumPorts: Int = 64, fdbCapacity: Int = 8192, macQuotaPerPort: Int = 256,
                ageingTime: Instant.Duration = .seconds(300), mtu: Int = 1500) {
        self.maximumPorts = max(1, maximumPorts)
        ports = Array(repeating: nil, count: self.maximumPorts)
        directWriters = Array(repeating: nil, count: self.maximumPorts)
        fdb = ForwardingDatabase(capacity: fdbCapacity, perPortQuota: macQuotaPerPort, maximumPorts: self.maximumPorts,
                                 ageingTime: ageingTime)
        maximumFrame = mtu + 18
        scratch = .allocate(byteCount: L2Switch.maximumSuperSegment + 4, alignment: 16)
    }

    deinit { scratch.deallocate() }

    public var portCount: Int { ports.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }

    /// Adds a port; nil when the switch is full (the caller refuses the peer and says so).
    public func addPort(name: String, policy: VLANPolicy, sink: Sink) -> Int? {
        guard let i = ports.firstIndex(where: { $0 == nil }) else { return nil }
        ports[i] = Port(policy: policy, sink: sink, name: name)
        directWriters[i] = nil
        return i
    }

    /// Lets port `i` take frames straight to its device while its queue is empty (see `directWriters`).
    public func setDirectWriter(port i: Int, _ writer: DirectWriter?) {
        guard i >= 0 && i < ports.count, ports[i] != nil else { return }
        directWriters[i] = writer
    }

    /// Removes a port and forgets the MACs learned on it.
    public func removePort(_ i: Int) {
        guard i >= 0 && i < ports.count, ports[i] != nil else { return }
        ports[i] = nil
        directWriters[i] = nil
        fdb.forget(port: i)
    }

    /// The MACs learned on port `i` (the guests behind it).
    public func macs(of i: Int) -> [MACAddress] { fdb.macs(on: i) }

    /// Forgets the MACs of a port that stays (its peer went away and may come back).
    public func forgetMACs(of i: Int) { fdb.forget(port: i) }

    public func expire(now: Instant) { fdb.expire(now: now) }

    @inline(__always) func drop(_ r: SwitchDropReason) { counters.drops[r.rawValue] &+= 1 }

    /// The ingress port of the frame `receive` is handling (for a local sink that wants to know where a frame
    /// came from, e.g. the gateway's DHCP per-port cap); -1 before any frame.
    public private(set) var currentIngress = -1

    /// Handles one frame that arrived on `ingress`, with the virtio-net header it came with (`offload`; nil
    /// or all zero: a plain wire frame). `local` takes frames for the local sink.
    public func receive(from ingress: Int, frame: UnsafeRawBufferPointer, offload: VirtioNetHeader? = nil, now: Instant,
                        local: (UnsafeRawBufferPointer, LocalDelivery) -> Void = { _, _ in }) {
        currentIngress = ingress
        guard ingress >= 0 && ingress < ports.count, ports[ingress] != nil else { return drop(.noSuchPort) }
        ports[ingress]!.counters.rxPackets &+= 1
        ports[ingress]!.counters.rxBytes &+= UInt64(frame.count)
        let offload = offload.flatMap { $0.isPlain ? nil : $0 }
        let limit = offload.map { $0.segmentation == .unsegmented ? maximumFrame : L2Switch.maximumSuperSegment } ?? maximumFrame
        guard frame.count >= 14, frame.count <= limit, let eth = try? EthernetHeader.parse(frame) else {
            ports[ingress]!.counters.rxDrops &+= 1
            return drop(.malformed)
        }
        guard let vlan = ports[ingress]!.policy.ingressVLAN(tag: eth.vlanTag) else {
            ports[ingress]!.counters.rxDrops &+= 1
            return drop(.vlanNotCarried)
        }
        switch fdb.learn(eth.source, vlan: vlan, port: ingress, now: now) {
        case .tableFull: counters.learnRefusedTableFull &+= 1
        case .portQuotaExceeded: counters.learnRefusedPortQuota &+= 1
        case .moved: counters.macMoves &+= 1
        case .learned, .refreshed, .groupSource: break
        }
        let priority = (eth.vlanTag ?? 0) & 0xF000
        if !eth.destination.isMulticast, let out = fdb.lookup(eth.destination, vlan: vlan, now: now) {
            guard out != ingress else { return }   // the destination is on the segment it came from
            counters.forwarded &+= 1
            send(frame, offload: offload, tagged: eth.vlanTag != nil, vlan: vlan, priority: priority, to: out, local: local)
            return
        }
        counters.flooded &+= 1
        for out in 0 ..< ports.count where out != ingress && ports[out] != nil {
            send(frame, offload: offload, tagged: eth.vlanTag != nil, vlan: vlan, priority: priority, to: out, local: local)
        }
    }

    /// Whether port `out` takes offloaded frames as they are: its queue keeps a virtio-net header per frame.
    /// The local sink (the gateway) takes partial checksums and super-segments when `localTakesOffloads`.
    public var localTakesOffloads = false

    @inline(__always)
    func takesOffloads(_ out: Int) -> Bool {
        switch ports[out]!.sink {
        case .queue(let q): return q.frameHeaderLength >= VirtioNetHeader.length
        case .local: return localTakesOffloads
        }
    }

    /// Sends an offloaded frame out of a port: as it is where the port takes offloads, else finished in
    /// software first (cut into wire frames, checksum completed). A frame that cannot be finished is dropped
    /// and counted as malformed.
    @inline(__always)
    func send(_ frame: UnsafeRawBufferPointer, offload: VirtioNetHeader?, tagged: Bool, vlan: UInt16, priority: UInt16, to out: Int,
              local: (UnsafeRawBufferPointer, LocalDelivery) -> Void) {
        guard let o = offload, !takesOffloads(out) else {
            return send(frame, header: offload, inPlace: true, tagged: tagged, vlan: vlan, priority: priority, to: out, local: local)
        }
        if o.segmentation == .tcpv4 || o.segmentation == .tcpv6 {
            let n = SoftwareOffload.segment(frame, segmentSize: Int(o.segmentSize), scratch: scratch) { piece in
                send(piece, header: nil, inPlace: false, tagged: tagged, vlan: vlan, priority: priority, to: out, local: local)
            }
            guard let n else { ports[out]!.counters.txDrops &+= 1; return drop(.malformed) }
            softwareSegmented &+= 1
            softwareSegments &+= UInt64(n)
            return
        }
        guard o.segmentation == .unsegmented, frame.count <= maximumFrame else { ports[out]!.counters.txDrops &+= 1; return drop(.malformed) }
        if o.flags.contains(.needsChecksum) {
            let copy = scratch.slice(0 ..< frame.count)
            copy.copy(frame, to: 0)
            guard SoftwareOffload.completeChecksum(copy, header: o) else { ports[out]!.counters.txDrops &+= 1; return drop(.malformed) }
            softwareChecksums &+= 1
            return send(UnsafeRawBufferPointer(copy), header: nil, inPlace: false, tagged: tagged, vlan: vlan, priority: priority, to: out, local: local)
        }
        send(frame, header: nil, inPlace: true, tagged: tagged, vlan: vlan, priority: priority, to: out, local: local)
    }

    /// Writes `frame` out of port `out` if that port carries `vlan`, tagging or untagging it as needed.
    /// `header` (a port that takes offloads only) goes before the frame in the port's queue; a tag added or
    /// removed moves the checksum start it names by the tag's 4 bytes.
    @inline(__always)
    func send(_ frame: UnsafeRawBufferPointer, header: VirtioNetHeader?, inPlace: Bool, tagged: Bool, vlan: UInt16, priority: UInt16,
              to out: Int, local: (UnsafeRawBufferPointer, LocalDelivery) -> Void) {
        let (member, wantTag) = ports[out]!.policy.egress(vlan: vlan)
        guard member else { return }
        let shift = wantTag == tagged ? 0 : (wantTag ? 4 : -4)
        let outLength = frame.count + shift
        let partial = header?.flags.contains(.needsChecksum) ?? false
        switch ports[out]!.sink {
        case .local:
            if wantTag == tagged {
                local(frame, LocalDelivery(checksumPartial: partial, inPlace: inPlace))
            } else {
                // The local sink takes untagged frames only (the gateway sits on an access VLAN).
                guard !wantTag else { return }
                withUnsafeTemporaryAllocation(byteCount: outLength, alignment: 16) { buf in
                    rewrite(frame, tagged: tagged, into: buf, wantTag: false, tci: 0)
                    local(UnsafeRawBufferPointer(buf), LocalDelivery(checksumPartial: partial, inPlace: false))
                }
            }
        case .queue(let q):
            if shift == 0, q.isEmpty, let write = directWriters[out], writeDirect(frame, header: header, queue: q, write) {
                directWrites &+= 1
                break
            }
            guard let buf = q.reserve(maximumLength: outLength) else {
                ports[out]!.counters.txDrops &+= 1
                return drop(.egressQueueFull)
            }
            rewrite(frame, tagged: tagged, into: buf, wantTag: wantTag, tci: priority | vlan)
            if var h = header, q.frameHeaderLength >= VirtioNetHeader.length {
                if h.flags.contains(.needsChecksum) { h.checksumStart = UInt16(truncatingIfNeeded: Int(h.checksumStart) + shift) }
                if h.headerLength > 0 { h.headerLength = UInt16(truncatingIfNeeded: Int(h.headerLength) + shift) }
                h.emit(into: q.reservedFrameHeader)
                q.commit(length: outLength, keepingFrameHeader: true)
            } else {
                q.commit(length: outLength)
            }
        }
        ports[out]!.counters.txPackets &+= 1
        ports[out]!.counters.txBytes &+= UInt64(outLength)
    }

    /// A frame whose tag stays as it is, written by the port's own writer with the header its queue would keep.
    @inline(__always)
    func writeDirect(_ frame: UnsafeRawBufferPointer, header: VirtioNetHeader?, queue q: FrameQueue, _ write: DirectWriter) -> Bool {
        guard q.frameHeaderLength >= VirtioNetHeader.length else { return write(UnsafeRawBufferPointer(start: nil, count: 0), frame) }
        return withUnsafeTemporaryAllocation(byteCount: VirtioNetHeader.length, alignment: 8) { h in
            h.initializeMemory(as: UInt8.self, repeating: 0)
            header?.emit(into: h)
            return write(UnsafeRawBufferPointer(h), frame)
        }
    }

    /// Copies `frame` into `buf`, adding, keeping (with `tci`) or removing its 802.1Q tag.
    @inline(__always)
    func rewrite(_ frame: UnsafeRawBufferPointer, tagged: Bool, into buf: UnsafeMutableRawBufferPointer, wantTag: Bool, tci: UInt16) {
        guard let dst = buf.baseAddress, let src = frame.baseAddress else { return }
        switch (tagged, wantTag) {
        case (false, false):
            dst.copyMemory(from: src, byteCount: frame.count)
        case (true, true):
            dst.copyMemory(from: src, byteCount: frame.count)
            buf.put16(14, tci)
        case (false, true):
            dst.copyMemory(from: src, byteCount: 12)
            buf.put16(12, EtherType.vlan.rawValue)
            buf.put16(14, tci)
            (dst + 16).copyMemory(from: src + 12, byteCount: frame.count - 12)
        case (true, false):
            dst.copyMemory(from: src, byteCount: 12)
            (dst + 12).copyMemory(from: src + 16, byteCount: frame.count - 16)
        }
    }

    /// Whether a frame to a known unicast `destination` from `ingress` finds room in its port's queue now.
    /// Lets a producer that can wait (the gateway) hold frames back instead of having them dropped.
    public func hasRoom(for frameLength: Int, destination: MACAddress, from ingress: Int, now: Instant) -> Bool {
        guard ingress >= 0 && ingress < ports.count, let p = ports[ingress], let vlan = p.policy.ingressVLAN(tag: nil) else { return true }
        // A super-segment cut in software takes a header copy and a prefix per segment: twice its size is ample.
        let need = (frameLength > maximumFrame ? 2 * frameLength : frameLength) + 4 + FrameQueue.prefixLength + 64
        if !destination.isMulticast, let out = fdb.lookup(destination, vlan: vlan, now: now) {
            if case .queue(let q) = ports[out]?.sink { return q.freeSpace >= need }
            return true
        }
        // Flooded frames are few (ARP, DHCP broadcasts); one stalled peer must not hold them back for all.
        return true
    }

    /// The port a MAC is learned on, for status output.
    public func port(of mac: MACAddress, vlan: UInt16 = VLANPolicy.defaultVLAN, now: Instant) -> Int? {
        fdb.lookup(mac, vlan: vlan, now: now)
    }
}
