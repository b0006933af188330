// Guest IPv6: neighbour discovery, router advertisements for SLAAC, stateless DHCPv6, ICMPv6 echo, and the
// hand-off of TCP and UDP to the same flow tables IPv4 uses (their keys hold either family).
//
// Theory of Operation
// -------------------
// The gateway is a router on the guest's link with three addresses: fe80::2 (link-local, the source of its
// router advertisements and so the guest's default router, as in libslirp), the host address (fec0::2 by
// default, mapped to host ::1 as 10.0.2.2 is to 127.0.0.1) and the DNS address (fec0::3). It answers neighbour
// solicitations for those three, router solicitations with an RA carrying the /64 prefix (on-link,
// autonomous: the guest forms its own address), the MTU, RDNSS and DNSSL (RFC 8106), and sets the O flag so
// DHCPv6 clients ask INFORMATION-REQUEST for the same DNS data (RFC 8415 §6.1); no addresses are leased.
// An unsolicited RA goes to all nodes when the first IPv6 frame of a guest is seen and then every
// `routerAdvertisementInterval`, well inside the router lifetime.
//
// Validation follows RFC 4861 §6.1/§7.1: NDP messages need hop limit 255 and code 0, and options of length 0
// make the message malformed. Guest sources must be link-local, inside the prefix, or unspecified (DAD
// solicitations only). Extension headers are walked with every length checked; fragments are reassembled in
// the same capped reassembler as IPv4's. Frames to the guest larger than the MTU are fragmented (RFC 8200
// §4.5); a reply never carries bytes past the guest's payload length (BAD-INPUTS 3).

import VNetBuffers
import VNetServices
import VNetWire

extension Gateway {
    static var routerAdvertisementInterval: Instant.Duration { .seconds(600) }

    /// The RA every solicitation gets, built once from the configuration (its DNS data also answers DHCPv6).
    /// restrict=on advertises no DNS; a search list that does not fit the option's 255 units is left out, not cut.
    static func makeRouterAdvertisement(_ config: GatewayConfig) -> RouterAdvertisement {
        var ra = RouterAdvertisement(sourceLinkLayer: config.gatewayMAC, mtu: UInt32(config.mtu), prefix: config.ipv6Prefix,
                                     dnsServers: config.restricted ? [] : [config.ipv6DNSAddress],
                                     searchList: config.restricted ? [] : (DNSNameEncoding.encode(config.dnsSearch) ?? []))
        if ra.searchList.count > 1500 { ra.searchList = [] }
        return ra
    }

    // MARK: Neighbours

    @inline(__always) func learnNeighbour6(_ ip: IPv6Address, _ mac: MACAddress) {
        guard ip.isLinkLocal || config.ipv6Prefix.contains(ip), !mac.isMulticast, !config.isVirtualAddress6(ip) else { return }
        if neighbours.v6[ip] == mac { return }
        if neighbours.v6[ip] == nil && neighbours.v6.count >= GatewayConfig.neighbourCapacity { return }
        neighbours.v6[ip] = mac
    }

    /// The MAC of a guest address of either family. An IPv6 address not seen yet is matched by its SLAAC
    /// interface identifier against the MACs of known guests (their leases and IPv4 neighbours).
    func guestMAC(for ip: IPAddress) -> MACAddress? {
        if let v4 = ip.v4 { return guestMAC(for: v4) }
        if let m = neighbours.v6[ip.v6] { return m }
        guard config.ipv6Prefix.contains(ip.v6) else { return nil }
        for s in dhcp.slots { if let m = s.mac, IPv6Address.interfaceIdentifier(of: m) == ip.v6.low { return m } }
        for m in neighbours.v4.values where IPv6Address.interfaceIdentifier(of: m) == ip.v6.low { return m }
        return nil
    }

    /// Where guest traffic to an IPv6 destination goes on the host, or nil with the drop reason.
    func hostDestination6(for dst: IPv6Address) -> (IPv6Address?, DropReason?) {
        if dst == config.ipv6GatewayAddress || dst == GatewayConfig.ipv6LinkLocalGateway {
            guard config.mapGatewayToHostLoopback else { return (nil, .hostLoopbackDisabled) }
            return config.egress.permits(v6: IPv6Address.loopback) ? (.loopback, nil) : (nil, .egressDenied)
        }
        if config.ipv6Prefix.contains(dst) { return (nil, .udpToUnknownLocalAddress) }
        if dst.isUnspecified || dst.isLoopback || dst.isMulticast || dst.isLinkLocal || dst.isIPv4Mapped { return (nil, .martianDestination) }
        guard config.egress.permits(v6: dst) else { return (nil, .egressDenied) }
        return (dst, nil)
    }

    // MARK: Input

    func handleIPv6(_ p: UnsafeRawBufferPointer, ethernet: EthernetHeader, now: Instant) {
        guard let ip = try? IPv6Header.parse(p) else { return drop(.ipv6Malformed) }
        let src = ip.source
        let fromDAD = src.isUnspecified
        if !(src.isLinkLocal || (config.ipv6Prefix.contains(src) && !config.isVirtualAddress6(src))) && !fromDAD {
            return drop(.martianSource)
        }
        let dst = ip.destination
        // Multicast: link-local scope only (all nodes, all routers, solicited-node, DHCPv6 servers, MLD groups).
        guard !dst.isMulticast || dst.high == 0xFF02_0000_0000_0000 else {
            return drop(.notForGateway)
        }
        if !fromDAD { learnNeighbour6(src, ethernet.source) }
        let payload = p.slice(ip.payloadRange)
        guard let upper = try? IPv6Header.upperLayer(payload, nextHeader: ip.nextHeader) else { return drop(.ipv6Malformed) }
        if !routerAdvertiser.advertisedOnce { sendRouterAdvertisement(to: .allNodes, mac: IPv6Address.allNodes.multicastMAC, now: now) }
        if let fragment = upper.fragment {
            return handleFragment6(payload, ip: ip, upper: upper, fragment: fragment, ethernet: ethernet, now: now)
        }
        dispatch6(payload.slice(upper.offset ..< payload.count), ip: ip, protocolNumber: upper.protocolNumber, ethernet: ethernet, now: now)
    }

    func dispatch6(_ l4: UnsafeRawBufferPointer, ip: IPv6Header, protocolNumber: UInt8, ethernet: EthernetHeader, now: Instant) {
        switch protocolNumber {
        case IPProtocol.icmpv6.rawValue: handleICMPv6(l4, ip: ip, ethernet: ethernet, now: now)
        case IPProtocol.udp.rawValue: handleUDP6(l4, ip: ip, ethernet: ethernet, now: now)
        case IPProtocol.tcp.rawValue:
            guard !ip.source.isUnspecified, !ip.destination.isMulticast else { return drop(.martianSource) }
            handleTCP(l4, ip: GuestPacket(ip, protocolNumber: protocolNumber), ethernet: ethernet, now: now)
        default: drop(.unknownIPProtocol)   // no next header (59) included
        }
    }

    /// A fragment (RFC 8200 §4.5): reassembled in the shared reassembler, then dispatched whole.
    func handleFragment6(_ payload: UnsafeRawBufferPointer, ip: IPv6Header, upper: IPv6Header.UpperLayer,
                         fragment: IPv6Header.Fragment, ethernet: EthernetHeader, now: Instant) {
        guestChecksumPartial = false
        let part = payload.slice(upper.fragmentableOffset ..< payload.count)
        // RFC 8200 §4.5: a fragment that is not the last must be a multiple of 8 bytes long.
        if fragment.moreFragments && part.count % 8 != 0 { return drop(.ipv6FragmentInvalid) }
        let key = FragmentKey(source: IPAddress(ip.source), destination: IPAddress(ip.destination), protocolNumber: upper.protocolNumber,
                              identification: fragment.identification)
        let outcome = reassembler.add(part, offset: fragment.offset, more: fragment.moreFragments, key: key, now: now)
        countReassemblyDrops(ipv6: true)
        guard case .complete(let whole, _) = outcome else { return }
        counters.count(.datagramsReassembled)
        // Extension headers may follow the fragment header inside the fragmentable part.
        guard let inner = try? IPv6Header.upperLayer(whole, nextHeader: upper.protocolNumber), inner.fragment == nil else {
            return drop(.ipv6Malformed)
        }
        var header = ip
        header.payloadLength = whole.count
        dispatch6(whole.slice(inner.offset ..< whole.count), ip: header, protocolNumber: inner.protocolNumber, ethernet: ethernet, now: now)
    }

    // MARK: ICMPv6

    func handleICMPv6(_ p: UnsafeRawBufferPointer, ip: IPv6Header, ethernet: EthernetHeader, now: Instant) {
        guard let icmp = try? ICMPv6Header.parse(p) else { return drop(.icmpv6Malformed) }
        guard guestChecksumPartial || ICMPv6Header.checksumValid(p, source: ip.source, destination: ip.destination) else {
            return drop(.icmpv6BadChecksum)
        }
        switch icmp.type {
        case ICMPv6Header.neighborSolicitation: handleNeighborSolicitation(p, ip: ip, icmp: icmp, ethernet: ethernet)
        case ICMPv6Header.routerSolicitation: handleRouterSolicitation(p, ip: ip, icmp: icmp, ethernet: ethernet, now: now)
        case ICMPv6Header.neighborAdvertisement:
            guard ip.hopLimit == 255, icmp.code == 0, let na = try? NeighborAdvertisement.parse(p) else { return drop(.ndpMalformed) }
            if let mac = na.targetLinkLayer { learnNeighbour6(na.target, mac) }
            drop(.ndpIgnored)
        case ICMPv6Header.echoRequest where icmp.code == 0:
            guard !ip.source.isUnspecified else { return drop(.martianSource) }
            handleEcho6(p, ip: ip, icmp: icmp, ethernet: ethernet, now: now)
        default:
            drop(.icmpv6TypeIgnored)
        }
    }

    func handleNeighborSolicitation(_ p: UnsafeRawBufferPointer, ip: IPv6Header, icmp: ICMPv6Header, ethernet: EthernetHeader) {
        guard ip.hopLimit == 255, icmp.code == 0, let ns = try? NeighborSolicitation.parse(p), !ns.target.isMulticast else {
            return drop(.ndpMalformed)
        }
        // RFC 4861 §7.1.1: a solicitation from :: (duplicate address detection) carries no link-layer option.
        if ip.source.isUnspecified && ns.sourceLinkLayer != nil { return drop(.ndpMalformed) }
        guard config.isVirtualAddress6(ns.target) else { return drop(.ndpIgnored) }
        if let mac = ns.sourceLinkLayer { learnNeighbour6(ip.source, mac) }
        // §7.2.4: answer the soliciting address, or all nodes (unsolicited flag clear) for DAD.
        let dad = ip.source.isUnspecified
        let to = dad ? IPv6Address.allNodes : ip.source
        let mac = dad ? IPv6Address.allNodes.multicastMAC : (ns.sourceLinkLayer ?? ethernet.source)
        let na = NeighborAdvertisement(target: ns.target, targetLinkLayer: config.gatewayMAC, router: true, solicited: !dad, override: true)
        let sent = emitIPv6(to: mac, source: ns.target, destination: to, nextHeader: IPProtocol.icmpv6.rawValue, hopLimit: 255,
                            l4Length: na.length) { out in
            na.emit(into: out, source: ns.target, destination: to)
        }
        if sent { counters.count(.neighborAdvertisements) }
    }

    func handleRouterSolicitation(_ p: UnsafeRawBufferPointer, ip: IPv6Header, icmp: ICMPv6Header, ethernet: EthernetHeader, now: Instant) {
        guard ip.hopLimit == 255, icmp.code == 0, p.count >= 8 else { return drop(.ndpMalformed) }
        let slla: MACAddress?
        do { slla = try NDPOption.linkLayerAddress(p.slice(8 ..< p.count), kind: NDPOption.sourceLinkLayer) } catch { return drop(.ndpMalformed) }
        if ip.source.isUnspecified {
            guard slla == nil else { return drop(.ndpMalformed) }
            return sendRouterAdvertisement(to: .allNodes, mac: IPv6Address.allNodes.multicastMAC, now: now)
        }
        if let m = slla { learnNeighbour6(ip.source, m) }
        sendRouterAdvertisement(to: ip.source, mac: slla ?? ethernet.source, now: now)
    }

    /// The RA (see the top of the file). Its DNS search list comes from `dnssearch=`.
    func sendRouterAdvertisement(to destination: IPv6Address, mac: MACAddress, now: Instant) {
        routerAdvertiser.advertisedOnce = true
        routerAdvertiser.next = now + Self.routerAdvertisementInterval
        let ra = routerAdvertiser.advertisement
        let length = ra.length
        guard length + 40 <= config.mtu else { return }
        let source = GatewayConfig.ipv6LinkLocalGateway
        let sent = emitIPv6(to: mac, source: source, destination: destination, nextHeader: IPProtocol.icmpv6.rawValue, hopLimit: 255,
                            l4Length: length) { out in
            ra.emit(into: out, source: source, destination: destination)
        }
        if sent { counters.count(.routerAdvertisements) }
    }

    /// Periodic unsolicited RAs, once a guest has spoken IPv6.
    func sweepRouterAdvertisements(now: Instant) {
        guard config.ipv6Enabled, routerAdvertiser.advertisedOnce, now >= routerAdvertiser.next else { return }
        sendRouterAdvertisement(to: .allNodes, mac: IPv6Address.allNodes.multicastMAC, now: now)
    }

    func handleEcho6(_ p: UnsafeRawBufferPointer, ip: IPv6Header, icmp: ICMPv6Header, ethernet: EthernetHeader, now: Instant) {
        let dst = ip.destination
        if config.isVirtualAddress6(dst) || dst == .allNodes {
            counters.count(.icmpv6EchoLocal)
            // The reply comes from the address asked (a multicast echo from our link-local address).
            let source = dst.isMulticast ? GatewayConfig.ipv6LinkLocalGateway : dst
            let reply = scratch.slice(0 ..< p.count)
            reply.copy(p, to: 0)
            ICMPv6Header(type: ICMPv6Header.echoReply, code: 0, restOfHeader: icmp.restOfHeader)
                .emit(into: reply, messageLength: p.count, source: source, destination: ip.source)
            emitIPv6Fragmenting(to: ethernet.source, source: source, destination: ip.source, nextHeader: IPProtocol.icmpv6.rawValue,
                                l4: UnsafeRawBufferPointer(reply))
            return
        }
        guard !config.restricted else { return drop(.restricted) }
        guard !dst.isMulticast else { return drop(.martianDestination) }
        forwardEcho(p, ip: GuestPacket(ip, protocolNumber: IPProtocol.icmpv6.rawValue), type: icmp.type, code: icmp.code,
                    checksum: icmp.checksum, identifier: icmp.identifier, sequence: icmp.sequence, mac: ethernet.source, now: now)
    }

    // MARK: UDP

    func handleUDP6(_ p: UnsafeRawBufferPointer, ip: IPv6Header, ethernet: EthernetHeader, now: Instant) {
        guard let udp = try? UDPHeader.parse(p) else { return drop(.udpMalformed) }
        let datagram = p.slice(0 ..< udp.length)
        guard guestChecksumPartial || UDPHeader.checksumValid(datagram, source: ip.source, destination: ip.destination) else {
            return drop(.udpBadChecksum)
        }
        let payload = datagram.slice(udp.payloadRange)
        if udp.destinationPort == DHCPv6Message.serverPort && (ip.destination == .allDHCPServers || config.isVirtualAddress6(ip.destination)) {
            return handleDHCPv6(payload, ip: ip, udp: udp, ethernet: ethernet)
        }
        guard udp.sourcePort != 0, !ip.source.isUnspecified else { return drop(.udpSourcePortZero) }
        guard !ip.destination.isMulticast else { return drop(.martianDestination) }
        handleUDPFlow(payload, ip: GuestPacket(ip, protocolNumber: IPProtocol.udp.rawValue), udp: udp, mac: ethernet.source, now: now)
    }

    /// Stateless DHCPv6: INFORMATION-REQUEST is answered with the DNS address and search list.
    func handleDHCPv6(_ p: UnsafeRawBufferPointer, ip: IPv6Header, udp: UDPHeader, ethernet: EthernetHeader) {
        guard let msg = try? DHCPv6Message.parse(p) else { return drop(.dhcpv6Malformed) }
        guard msg.type == DHCPv6Message.informationRequest, !ip.source.isUnspecified else { return drop(.dhcpv6Ignored) }
        // The reply must fit the MTU: room for the IPv6 and UDP headers (BAD-INPUTS 9, an oversized CLIENTID).
        let room = min(config.mtu - 48, scratch.count - 8)
        guard let n = msg.emitReply(request: p, serverMAC: config.gatewayMAC, dnsServers: routerAdvertiser.advertisement.dnsServers,
                                    searchList: routerAdvertiser.advertisement.searchList, into: scratch.slice(8 ..< 8 + room)) else {
            return drop(.dhcpv6Malformed)
        }
        counters.count(.dhcpv6Replies)
        let source = GatewayConfig.ipv6LinkLocalGateway
        sendUDPToGuest(mac: ethernet.source, source: IPAddress(source), sourcePort: DHCPv6Message.serverPort,
                       destination: IPAddress(ip.source), destinationPort: udp.sourcePort, payloadLength: n)
    }

    // MARK: Frames to the guest

    /// Builds Ethernet + IPv6 around a layer-4 part of `l4Length` bytes that `fill` writes, and queues it.
    @discardableResult
    func emitIPv6(to mac: MACAddress, source: IPv6Address, destination: IPv6Address, nextHeader: UInt8, hopLimit: UInt8 = 64,
                  l4Length: Int, offload: VirtioNetHeader? = nil, _ fill: (UnsafeMutableRawBufferPointer) -> Void) -> Bool {
        let total = 14 + 40 + l4Length
        guard let out = toGuest.reserve(maximumLength: total) else { drop(.txQueueFull); return false }
        EthernetHeader(destination: mac, source: config.gatewayMAC, etherType: .ipv6).emit(into: out)
        fill(out.slice(54 ..< total))
        IPv6Header(payloadLength: l4Length, nextHeader: nextHeader, hopLimit: hopLimit, source: source, destination: destination)
            .emit(into: out.slice(14 ..< 54))
        if let o = offload {
            o.emit(into: toGuest.reservedFrameHeader)
            toGuest.commit(length: total, keepingFrameHeader: true)
        } else {
            toGuest.commit(length: total)
        }
        counters.count(.framesToGuest)
        return true
    }

    /// Sends a complete, checksummed layer-4 message, in fragments (RFC 8200 §4.5) when it exceeds the MTU.
    func emitIPv6Fragmenting(to mac: MACAddress, source: IPv6Address, destination: IPv6Address, nextHeader: UInt8,
                             l4: UnsafeRawBufferPointer) {
        if 40 + l4.count <= config.mtu {
            emitIPv6(to: mac, source: source, destination: destination, nextHeader: nextHeader, l4Length: l4.count) { out in
                out.copy(l4, to: 0)
            }
            return
        }
        let maxPayload = (config.mtu - 48) & ~7
        fragmentIdentification &+= 1
        let id = fragmentIdentification
        var offset = 0
        while offset < l4.count {
            let n = min(maxPayload, l4.count - offset)
            let more = offset + n < l4.count
            let sent = emitIPv6(to: mac, source: source, destination: destination, nextHeader: IPv6Header.fragment, l4Length: 8 + n) { out in
                out.put8(0, nextHeader); out.put8(1, 0)
                out.put16(2, UInt16(offset) | (more ? 1 : 0))
                out.put32(4, id)
                out.copy(l4.slice(offset ..< offset + n), to: 8)
            }
            guard sent else { return }
            offset += n
        }
    }

    /// ICMPv6 error to the guest quoting its packet: the IPv6 header and the first 8 bytes of its payload.
    func sendICMPv6Error(type: UInt8, code: UInt8, from source: IPv6Address, to mac: MACAddress, guest: IPv6Address,
                         destination: IPv6Address, quotedNextHeader: UInt8, quotedPayloadLength: Int, hopLimit: UInt8,
                         quotedWords: (UInt16, UInt16, UInt16, UInt16), restOfHeader: UInt32 = 0) {
        let messageLength = 8 + 40 + 8
        counters.count(.icmpErrorsToGuest)
        emitIPv6(to: mac, source: source, destination: guest, nextHeader: IPProtocol.icmpv6.rawValue, l4Length: messageLength) { out in
            let quoted = out.slice(8 ..< messageLength)
            IPv6Header(payloadLength: quotedPayloadLength, nextHeader: quotedNextHeader, hopLimit: hopLimit, source: guest,
                       destination: destination).emit(into: quoted.slice(0 ..< 40))
            let w = quoted.slice(40 ..< 48)
            w.put16(0, quotedWords.0); w.put16(2, quotedWords.1); w.put16(4, quotedWords.2); w.put16(6, quotedWords.3)
            ICMPv6Header(type: type, code: code, restOfHeader: restOfHeader).emit(into: out, messageLength: messageLength, source: source, destination: guest)
        }
    }
}
