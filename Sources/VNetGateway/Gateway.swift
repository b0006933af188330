// VNetGateway: vnet's own host on the guest's segment.
//
// Theory of Operation
// -------------------
// The gateway owns everything a guest talks to that is not another guest: ARP for its addresses, ICMP echo,
// DHCP, the DNS forwarder, and NAT of guest UDP and ICMP echo to host sockets. Frames arrive through
// `handleGuestFrame(_:now:)`; replies and NAT'd traffic leave through `toGuest`, a bounded `FrameQueue`
// the transport drains. Host sockets are reached only through `HostIO`, so tests drive the whole gateway
// with injected frames, a fake clock and fake sockets.
//
// Invariants:
// - Every frame from the guest is either served or dropped under exactly one `DropReason`.
// - Lengths are checked by the wire layer before any field is read; bytes past an IPv4 total length
//   (Ethernet padding) are never read or echoed; frames shorter than 60 bytes go out zero-padded.
// - Flow tables have fixed caps. A full table refuses the new flow and counts it; existing flows go on.
// - Time comes in as `now`; `poll(now:)` expires idle flows and DHCP holds. Nothing reads the clock.
// - Guest traffic never reaches host loopback except through the gateway address, and only while
//   `mapGatewayToHostLoopback` is on. vnet's own DNS upstream traffic is not guest-initiated and may use a
//   loopback resolver either way.
// - State is kept per guest address and MAC (flows, leases), so one gateway can later serve many guests
//   behind a switch.

import VNetBuffers
import VNetServices
import VNetWire

public final class Gateway<Host: HostIO> {
    public let config: GatewayConfig
    public let host: Host
    /// Frames for the guest, in stream framing. The transport drains it.
    public let toGuest: FrameQueue
    public internal(set) var counters = GatewayCounters()
    public internal(set) var dhcp: DHCPServer
    /// Upstream DNS resolvers (host side), tried in order; set by the runtime from resolv.conf.
    public var dnsUpstreams: [(IPAddress, UInt16)] { dnsForwarder.upstreams.servers.map { ($0.address, $0.port) } }
    /// Names the gateway's DNS answers itself (see LocalDNSRecords.swift).
    public var localDNS = LocalDNSRecords()
    /// Where the frame being handled came from (vnet nat: its ingress switch port), set by the runtime before
    /// each frame; DHCP caps the unconfirmed offers of each such group. nil: one source (vnet user).
    public var ingressGroup: Int?
    /// Called when DHCP acknowledges a lease (address, client MAC): control-plane events.
    public var leaseObserver: ((IPv4Address, MACAddress) -> Void)?

    // The engines (GatewayEngines.swift): each protocol's state, each with its own reset.
    var tcpEngine: TCPEngine
    var udpEngine: UDPEngine
    var icmpEngine: ICMPEngine
    var dnsForwarder = DNSForwarder()
    var neighbours = Neighbours()
    var routerAdvertiser: RouterAdvertiser
    /// `now` of the last `poll`, for timers armed outside it.
    var lastPollTime: Instant = .zero
    /// Set by a runtime that calls `flushGuestSends` after every read of the guest port: datagrams are gathered.
    public var gathersGuestDatagrams = false
    /// The frame being handled when its caller holds it in place until `flushGuestSends` (else empty).
    var heldGuestFrame = UnsafeRawBufferPointer(start: nil, count: 0)
    /// Host bytes peeked for the guest, cut into segments from here.
    let tcpPeekBuffer: UnsafeMutableRawBufferPointer
    let isnSecret: UInt64
    var ipIdentification: UInt16 = 0
    /// Identification of IPv6 fragments sent to the guest.
    var fragmentIdentification: UInt32 = 0
    let reassembler: Reassembler
    var lastSweep: Instant = .zero
    var lastAnnouncement: Instant?
    /// Lease host names answered locally, after `localDNS` (see GatewayLocalNames.swift).
    var leaseNames = LocalDNSRecords()
    /// The frame being handled came with a partial layer-4 checksum (see `handleGuestFrame`).
    var guestChecksumPartial = false
    /// The TFTP server (`tftp=`), once the runtime gave it a file source (see GatewayTFTP.swift).
    var tftp: TFTPServer?
    /// Scratch for host datagrams and DHCP replies (largest UDP datagram).
    let scratch: UnsafeMutableRawBufferPointer

    public init(config: GatewayConfig, host: Host, queueCapacity: Int = 4 << 20) {
        self.config = config
        self.host = host
        toGuest = FrameQueue(capacity: max(queueCapacity, 4 * (config.mtu + 18) + 65_540 + 2 * VirtioNetHeader.length),
                             frameHeaderLength: config.guestOffloads ? VirtioNetHeader.length : 0)
        var dhcpConfig = DHCPConfig(
            network: config.network, serverAddress: config.gatewayAddress, router: config.gatewayAddress,
            dnsServers: [config.dnsAddress], poolStart: config.dhcpStart, poolSize: config.dhcpPoolSize,
            leaseTime: config.leaseTime, domainName: config.domainName, searchDomains: config.dnsSearch,
            hostName: config.hostName, mtu: config.mtu, tftpServerName: config.tftpServerName, bootfile: config.bootfile)
        dhcpConfig.staticLeases = config.staticLeases
        dhcp = DHCPServer(config: dhcpConfig)
        udpEngine = UDPEngine(capacity: config.udpFlowCapacity)
        icmpEngine = ICMPEngine(capacity: config.icmpFlowCapacity)
        tcpEngine = TCPEngine(capacity: config.tcpFlowCapacity, reorderSlots: config.tcpReorderSlots,
                              reorderSlotsPerFlow: config.tcpReorderSlotsPerFlow)
        reassembler = Reassembler(slotCount: max(1, config.fragmentSlots), timeout: config.fragmentTimeout)
        routerAdvertiser = RouterAdvertiser(Gateway.makeRouterAdvertisement(config))
        tcpPeekBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
        var rng = SystemRandomNumberGenerator()
        isnSecret = rng.next()
        scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)
        scratch.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit {
        for i in udpEngine.flows.activeIndices { if let f = udpEngine.flows[i], f.replyTo == nil { host.close(f.handle) } }
        for i in icmpEngine.flows.activeIndices { if let f = icmpEngine.flows[i] { host.close(f.handle) } }
        for i in tcpEngine.flows.activeIndices { if let f = tcpEngine.flows[i] { host.close(f.handle) } }
        tftp?.closeAll()
        scratch.deallocate()
        tcpPeekBuffer.deallocate()
        tcpEngine.sendBatch.parts.deallocate()
        udpEngine.sendBatch.storage.deallocate()
    }

    /// Upstream resolvers of either family: an IPv4 guest's query may go to an IPv6 resolver and back.
    public func setDNSUpstreams(_ upstreams: [(IPAddress, UInt16)]) { dnsForwarder.upstreams.replace(upstreams) }
    @_disfavoredOverload
    public func setDNSUpstreams(_ upstreams: [(IPv4Address, UInt16)]) { setDNSUpstreams(upstreams.map { (IPAddress($0.0), $0.1) }) }

    public var udpFlowCount: Int { udpEngine.flows.count }
    public var icmpFlowCount: Int { icmpEngine.flows.count }
    public var tcpFlowCount: Int { tcpEngine.flows.count }
    public var tcpHalfOpenFlowCount: Int { tcpEngine.halfOpenCount }
    public var dnsFlowOpenCount: Int { dnsForwarder.flowCount }
    public var hasFlowsBlockedOnQueue: Bool { !tcpEngine.queueBlocked.isEmpty }

    /// When `poll` next has work to do (the loop's epoll timeout).
    public var nextDeadline: Instant {
        let sweep = lastSweep + .seconds(1)
        var next = tcpEngine.nextDeadline == .zero ? sweep : min(sweep, tcpEngine.nextDeadline)
        if !tcpEngine.windowWatch.isEmpty { next = min(next, tcpEngine.windowWatchDeadline) }
        if let t = tftp?.nextDeadline { next = min(next, t) }
        return next
    }

    @inline(__always) func drop(_ r: DropReason) { counters.drop(r) }

    // MARK: Guest input

    /// Handles one Ethernet frame from the guest. `checksumPartial` (a TAP's virtio-net NEEDS_CSUM) says the
    /// layer-4 checksum holds only the pseudo-header sum: the local kernel left it for the "device" to finish,
    /// so it is not verified.
    /// `held`: the caller keeps the frame's bytes in place until it calls `flushGuestSends`, so TCP data in it
    /// may be gathered with the data of the next frames into one send (GatewayTCPBatch.swift).
    public func handleGuestFrame(_ frame: UnsafeRawBufferPointer, now: Instant, checksumPartial: Bool = false, held: Bool = false) {
        counters.count(.framesFromGuest)
        guestChecksumPartial = checksumPartial && config.guestOffloads
        if held { heldGuestFrame = frame }
        defer {
            guestChecksumPartial = false
            heldGuestFrame = UnsafeRawBufferPointer(start: nil, count: 0)
        }
        guard let eth = try? EthernetHeader.parse(frame) else { return drop(.ethernetTruncated) }
        guard eth.vlanTag == nil else { return drop(.vlanTagged) }
        // IPv6 reaches the gateway at multicast groups (all-nodes, all-routers, solicited-node, DHCPv6 servers).
        guard eth.destination == config.gatewayMAC || eth.destination.isBroadcast
              || (eth.destination.rawValue >> 32 == 0x3333 && eth.etherType == .ipv6) else { return drop(.notForGateway) }
        let body = frame.slice(eth.headerLength ..< frame.count)
        switch eth.etherType {
        case .arp: handleARP(body, ethernet: eth)
        case .ipv4: handleIPv4(body, ethernet: eth, now: now)
        case .ipv6:
            guard config.ipv6Enabled else { return drop(.ipv6Disabled) }
            handleIPv6(body, ethernet: eth, now: now)
        default: drop(.unknownEtherType)
        }
    }

    /// Expires idle flows. Call once per loop iteration; it sweeps at most once a second.
    public func poll(now: Instant) {
        lastPollTime = now
        tcpWindowWatchPass(now: now)
        tcpTimers(now: now)
        tftpTimers(now: now)
        guard now - lastSweep >= .seconds(1) || lastSweep == .zero else { return }
        lastSweep = now
        reassembler.expire(now: now)
        for _ in reassembler.takeDrops() { drop(.ipv4FragmentTimeout) }
        sweepRouterAdvertisements(now: now)
        sweepUDP(now: now)
        sweepICMP(now: now)
        if config.announcesAddress { announceIfDue(now: now) }
    }

    // MARK: ARP

    func handleARP(_ p: UnsafeRawBufferPointer, ethernet: EthernetHeader) {
        guard let arp = try? ARPPacket.parse(p) else { return drop(.arpMalformed) }
        // On a segment across hosts: the gateway sends no ARP but replies and its own announcements, and the switch
        // never reflects, so an ARP from one of its addresses is another station's (GatewayAnnounce.swift).
        if config.announcesAddress, isGatewayOwned(arp.senderIP) { return drop(.arpDuplicateGateway) }
        if !arp.senderIP.isUnspecified && arp.senderMAC == ethernet.source { learnNeighbour(arp.senderIP, arp.senderMAC) }
        guard arp.operation == .request, isGatewayOwned(arp.targetIP), arp.senderIP != arp.targetIP else { return drop(.arpIgnored) }
        guard let out = toGuest.reserve(maximumLength: 14 + ARPPacket.length) else { return drop(.txQueueFull) }
        EthernetHeader(destination: arp.senderMAC, source: config.gatewayMAC, etherType: .arp).emit(into: out)
        ARPPacket(operation: .reply, senderMAC: config.gatewayMAC, senderIP: arp.targetIP,
                  targetMAC: arp.senderMAC, targetIP: arp.senderIP).emit(into: out.slice(14 ..< out.count))
        toGuest.commit(length: 14 + ARPPacket.length)
        counters.count(.arpReplies)
        counters.count(.framesToGuest)
    }

    /// Addresses the gateway itself answers for.
    @inline(__always) func isGatewayOwned(_ a: IPv4Address) -> Bool { config.isVirtualAddress(a) }

    /// Remembers which MAC a guest address uses (capped; used to open flows towards the guest).
    @inline(__always) func learnNeighbour(_ ip: IPv4Address, _ mac: MACAddress) {
        guard config.network.contains(ip), !mac.isMulticast else { return }
        if neighbours.v4[ip] == mac { return }
        if neighbours.v4[ip] == nil && neighbours.v4.count >= GatewayConfig.neighbourCapacity { return }
        neighbours.v4[ip] = mac
    }

    /// The MAC of a guest address: learned from its traffic, else from its DHCP lease.
    func guestMAC(for ip: IPv4Address) -> MACAddress? {
        if let m = neighbours.v4[ip] { return m }
        for (i, s) in dhcp.slots.enumerated() where dhcp.address(ofSlot: i) == ip { return s.mac }
        return nil
    }

    // MARK: IPv4

    func handleIPv4(_ p: UnsafeRawBufferPointer, ethernet: EthernetHeader, now: Instant) {
        guard let ip = try? IPv4Header.parse(p) else { return drop(.ipv4Malformed) }
        guard IPv4Header.headerChecksumValid(p, headerLength: ip.headerLength) else { return drop(.ipv4BadChecksum) }
        if ip.isFragment { return handleFragment(p, ip: ip, ethernet: ethernet, now: now) }
        let src = ip.source
        // A guest may only speak from its network, or from 0.0.0.0 while it has no lease (DHCP).
        if !(config.network.contains(src) && src != config.network.broadcast && !isGatewayOwned(src)) && !src.isUnspecified {
            return drop(.martianSource)
        }
        if !src.isUnspecified { learnNeighbour(src, ethernet.source) }
        let payload = p.slice(ip.payloadRange)
        let packet = GuestPacket(ip)
        switch ip.protocolNumber {
        case .udp: handleUDP(payload, ip: ip, ethernet: ethernet, now: now)
        case .icmp: handleICMP(payload, ip: ip, ethernet: ethernet, now: now)
        case .tcp: handleTCP(payload, ip: packet, ethernet: ethernet, now: now)
        default: drop(.unknownIPProtocol)
        }
    }

    /// Feeds a fragment to the reassembler and dispatches the datagram once it is whole.
    func handleFragment(_ p: UnsafeRawBufferPointer, ip: IPv4Header, ethernet: EthernetHeader, now: Instant) {
        guestChecksumPartial = false   // a checksum is never left partial across fragments
        let key = FragmentKey(source: IPAddress(ip.source), destination: IPAddress(ip.destination), protocolNumber: ip.protocolNumber.rawValue,
                              identification: UInt32(ip.identification))
        let outcome = reassembler.add(p.slice(ip.payloadRange), offset: ip.fragmentOffset, more: ip.moreFragments, key: key, now: now)
        countReassemblyDrops(ipv6: false)
        guard case .complete(let payload, _) = outcome else { return }
        counters.count(.datagramsReassembled)
        var whole = ip
        whole.headerLength = 20
        whole.totalLength = 20 + payload.count
        whole.flagsFragmentOffset = 0
        if !ip.source.isUnspecified { learnNeighbour(ip.source, ethernet.source) }
        switch ip.protocolNumber {
        case .udp: handleUDP(payload, ip: whole, ethernet: ethernet, now: now)
        case .icmp: handleICMP(payload, ip: whole, ethernet: ethernet, now: now)
        case .tcp: handleTCP(payload, ip: GuestPacket(whole), ethernet: ethernet, now: now)
        default: drop(.unknownIPProtocol)
        }
    }

    /// Counts what the reassembler refused or gave up on while handling the last fragment, under the family's reasons.
    func countReassemblyDrops(ipv6: Bool) {
        for d in reassembler.takeDrops() {
            switch d {
            case .tooLong, .badLength: drop(ipv6 ? .ipv6FragmentInvalid : .ipv4FragmentInvalid)
            case .overlap: drop(ipv6 ? .ipv6FragmentOverlap : .ipv4FragmentOverlap)
            case .evicted, .timedOut: drop(ipv6 ? .ipv6FragmentTimeout : .ipv4FragmentTimeout)
            }
        }
    }

    /// Where guest traffic to `dst` goes on the host, or nil (with the drop reason) when it must not leave.
    func hostDestination(for dst: IPv4Address) -> (IPv4Address?, DropReason?) {
        if dst == config.gatewayAddress {
            guard config.mapGatewayToHostLoopback else { return (nil, .hostLoopbackDisabled) }
            return config.egress.permits(.loopback) ? (.loopback, nil) : (nil, .egressDenied)
        }
        if config.network.contains(dst) { return (nil, .udpToUnknownLocalAddress) }
        if dst.isUnspecified || dst.isLoopback || dst.isMulticast || dst == .broadcast || dst.rawValue >> 24 == 0 {
            return (nil, .martianDestination)
        }
        // --deny/--allow (EgressPolicy.swift): 169.254.0.0/16 (cloud metadata) is denied by default.
        guard config.egress.permits(dst) else { return (nil, .egressDenied) }
        return (dst, nil)
    }

    /// `hostDestination` for either family: IPv6 traffic to the gateway's IPv6 address reaches host ::1.
    func hostDestination(for dst: IPAddress) -> (IPAddress?, DropReason?) {
        if let v4 = dst.v4 {
            let (d, r) = hostDestination(for: v4)
            return (d.map { IPAddress($0) }, r)
        }
        let (d, r) = hostDestination6(for: dst.v6)
        return (d.map { IPAddress($0) }, r)
    }

    /// Guest-facing source (either family) for traffic from `hostAddress`, as below.
    func guestFacingSource(hostAddress: IPAddress, flowHostDestination: IPAddress, guestDestination: IPAddress) -> IPAddress {
        if hostAddress == flowHostDestination { return guestDestination }
        if guestDestination.isIPv4 {
            guard let h = hostAddress.v4, !h.isLoopback, !h.isUnspecified else { return IPAddress(config.gatewayAddress) }
            return hostAddress
        }
        if hostAddress.isIPv4 || hostAddress.isLoopback || hostAddress.isUnspecified { return IPAddress(config.ipv6GatewayAddress) }
        return hostAddress
    }

    // MARK: Frames to the guest

    @inline(__always) func nextIPIdentification() -> UInt16 {
        ipIdentification &+= 1
        return ipIdentification
    }

    /// Builds Ethernet + IPv4 for a packet whose layer-4 part (`l4Length` bytes) `fill` writes, and queues it.
    /// Returns false (counted) if the queue is full.
    /// `offload` (only with `config.guestOffloads`) goes into the frame's virtio-net header.
    @discardableResult
    func emitIPv4(to mac: MACAddress, source: IPv4Address, destination: IPv4Address, protocolNumber: IPProtocol, ttl: UInt8 = 64,
                  l4Length: Int, offload: VirtioNetHeader? = nil, _ fill: (UnsafeMutableRawBufferPointer) -> Void) -> Bool {
        let total = 14 + 20 + l4Length
        guard let out = toGuest.reserve(maximumLength: total) else { drop(.txQueueFull); return false }
        EthernetHeader(destination: mac, source: config.gatewayMAC, etherType: .ipv4).emit(into: out)
        fill(out.slice(34 ..< total))
        IPv4Header(totalLength: 20 + l4Length, identification: nextIPIdentification(), flagsFragmentOffset: 0x4000, ttl: ttl,
                   protocolNumber: protocolNumber, source: source, destination: destination).emit(into: out.slice(14 ..< 34))
        if let o = offload {
            o.emit(into: toGuest.reservedFrameHeader)
            toGuest.commit(length: total, keepingFrameHeader: true)
        } else {
            toGuest.commit(length: total)
        }
        counters.count(.framesToGuest)
        return true
    }

    /// Builds Ethernet + IPv4 or IPv6 (by the addresses' family) around a layer-4 part, as `emitIPv4` does.
    @discardableResult
    @inline(__always)
    func emitIP(to mac: MACAddress, source: IPAddress, destination: IPAddress, protocolNumber: IPProtocol, ttl: UInt8 = 64,
                l4Length: Int, offload: VirtioNetHeader? = nil, _ fill: (UnsafeMutableRawBufferPointer) -> Void) -> Bool {
        if let s = source.v4, let d = destination.v4 {
            return emitIPv4(to: mac, source: s, destination: d, protocolNumber: protocolNumber, ttl: ttl, l4Length: l4Length,
                            offload: offload, fill)
        }
        return emitIPv6(to: mac, source: source.v6, destination: destination.v6, nextHeader: protocolNumber.rawValue, hopLimit: ttl,
                        l4Length: l4Length, offload: offload, fill)
    }

    /// `emitIPv4Fragmenting` for either family.
    func emitIPFragmenting(to mac: MACAddress, source: IPAddress, destination: IPAddress, protocolNumber: IPProtocol,
                           l4: UnsafeRawBufferPointer) {
        if let s = source.v4, let d = destination.v4 {
            return emitIPv4Fragmenting(to: mac, source: s, destination: d, protocolNumber: protocolNumber, l4: l4)
        }
        emitIPv6Fragmenting(to: mac, source: source.v6, destination: destination.v6, nextHeader: protocolNumber.rawValue, l4: l4)
    }

    /// Sends a complete layer-4 message (already checksummed, in `l4`) to the guest, fragmenting it (RFC 791)
    /// when it does not fit the MTU.
    func emitIPv4Fragmenting(to mac: MACAddress, source: IPv4Address, destination: IPv4Address, protocolNumber: IPProtocol,
                             l4: UnsafeRawBufferPointer) {
        let maxPayload = (config.mtu - 20) & ~7
        if l4.count <= config.mtu - 20 {
            emitIPv4(to: mac, source: source, destination: destination, protocolNumber: protocolNumber, l4Length: l4.count) { out in
                out.copy(l4, to: 0)
            }
            return
        }
        let id = nextIPIdentification()
        var offset = 0
        while offset < l4.count {
            let n = min(maxPayload, l4.count - offset)
            let more = offset + n < l4.count
            let total = 14 + 20 + n
            guard let out = toGuest.reserve(maximumLength: total) else { return drop(.txQueueFull) }
            EthernetHeader(destination: mac, source: config.gatewayMAC, etherType: .ipv4).emit(into: out)
            out.copy(l4.slice(offset ..< offset + n), to: 34)
            IPv4Header(totalLength: 20 + n, identification: id, flagsFragmentOffset: (more ? 0x2000 : 0) | UInt16(offset / 8),
                       ttl: 64, protocolNumber: protocolNumber, source: source, destination: destination).emit(into: out.slice(14 ..< 34))
            toGuest.commit(length: total)
            counters.count(.framesToGuest)
            offset += n
        }
    }
}

/// The network-layer facts of one guest packet, for either family: what the layer-4 handlers need.
struct GuestPacket {
    var source: IPAddress
    var destination: IPAddress
    var hopLimit: UInt8
    /// The IPv4 header, or nil for IPv6 (then `v6` is set).
    var v4: IPv4Header?
    var v6: IPv6Header?
    var protocolNumber: IPProtocol

    init(_ ip: IPv4Header) {
        source = IPAddress(ip.source)
        destination = IPAddress(ip.destination)
        hopLimit = ip.ttl
        v4 = ip
        v6 = nil
        protocolNumber = ip.protocolNumber
    }

    init(_ ip: IPv6Header, protocolNumber p: UInt8) {
        source = IPAddress(ip.source)
        destination = IPAddress(ip.destination)
        hopLimit = ip.hopLimit
        v4 = nil
        v6 = ip
        protocolNumber = IPProtocol(rawValue: p)
    }

    /// The pseudo-header sum for a layer-4 message of `length` bytes in this packet.
    @inline(__always) func pseudoHeader(length: Int) -> UInt64 {
        InternetChecksum.pseudoHeader(source: source, destination: destination, protocolNumber: protocolNumber.rawValue, length: length)
    }
}
