// Guest UDP: DHCP and DNS served by the gateway, everything else NAT'd to connected host sockets.
//
// A UDP flow is keyed by (guest address, guest port, destination, destination port) and owns one connected
// host socket, so replies need no lookup: the socket's tag names the flow. DNS to the gateway's DNS address
// is a flow like any other whose host end is the first upstream resolver; with no upstream, the guest gets
// SERVFAIL at once. Flows expire after `udpIdleTimeout` (`dnsIdleTimeout` for DNS) without traffic.
// The guest's TTL is carried to the host socket, and ICMP errors the host socket receives (IP_RECVERR) go
// back to the guest as ICMP errors quoting its datagram, so traceroute and "connection refused" work.

import VNetBuffers
import VNetServices
import VNetWire

struct UDPFlowKey: GuestFlowKey {
    var guestAddress: IPAddress
    var guestPort: UInt16
    var destination: IPAddress
    var destinationPort: UInt16
}

struct UDPFlow {
    var key: UDPFlowKey
    var handle: Int32
    var guestMAC: MACAddress
    var hostDestination: IPAddress
    var lastActive: Instant
    var ttl: UInt8
    var isDNS: Bool
    /// hostfwd flows share the forward's listening socket and answer its client with sendto.
    var replyTo: (IPAddress, UInt16)? = nil
    /// DNS: when the oldest unanswered query went upstream (zero when none is outstanding).
    var queryPendingSince: Instant = .zero
}

extension Gateway {
    func handleUDP(_ p: UnsafeRawBufferPointer, ip: IPv4Header, ethernet: EthernetHeader, now: Instant) {
        guard let udp = try? UDPHeader.parse(p) else { return drop(.udpMalformed) }
        let datagram = p.slice(0 ..< udp.length)
        guard guestChecksumPartial || UDPHeader.checksumValid(datagram, source: ip.source, destination: ip.destination) else {
            return drop(.udpBadChecksum)
        }
        let payload = datagram.slice(udp.payloadRange)

        if udp.destinationPort == DHCPMessage.serverPort && (ip.destination == .broadcast || ip.destination == config.gatewayAddress) {
            return handleDHCP(payload, ethernet: ethernet, now: now)
        }
        guard udp.sourcePort != 0, !ip.source.isUnspecified else { return drop(.udpSourcePortZero) }
        if tftp != nil && udp.destinationPort == TFTPServer.port && ip.destination == config.gatewayAddress { return handleTFTP(payload, ip: ip, udp: udp, mac: ethernet.source, now: now) }
        handleUDPFlow(payload, ip: GuestPacket(ip), udp: udp, mac: ethernet.source, now: now)
    }

    /// Guest UDP of either family that is not DHCP or TFTP: hostfwd replies, the DNS forwarder, NAT.
    func handleUDPFlow(_ payload: UnsafeRawBufferPointer, ip: GuestPacket, udp: UDPHeader, mac: MACAddress, now: Instant) {
        let key = UDPFlowKey(guestAddress: ip.source, guestPort: udp.sourcePort, destination: ip.destination, destinationPort: udp.destinationPort)
        let existing = udpEngine.flows.lookup(key)
        if let i = existing, let to = udpEngine.flows[i]?.replyTo {
            // A reply to a hostfwd client: out through the forward's own socket.
            udpEngine.flows[i]!.lastActive = now
            if !host.sendUDP(udpEngine.flows[i]!.handle, payload, to: to.0, port: to.1) { drop(.hostSendFailed) }
            return
        }
        // libslirp's restrict=on: only DHCP (and TFTP) reach the gateway; nothing is NAT'd, not even DNS.
        guard !config.restricted else { return drop(.restricted) }
        if config.isDNSAddress(ip.destination) && (udp.destinationPort == 53 || config.dnsAddress != config.gatewayAddress) {
            guard udp.destinationPort == 53 else { return drop(.dnsWrongPort) }
            if !localDNS.isEmpty, answerLocalDNS(from: localDNS, payload, ip: ip, udp: udp, mac: mac) { return }
            if !leaseNames.isEmpty, answerLocalDNS(from: leaseNames, payload, ip: ip, udp: udp, mac: mac) { return }
            return forwardUDP(payload, ip: ip, udp: udp, key: key, existing: existing, mac: mac, dns: true, now: now)
        }
        forwardUDP(payload, ip: ip, udp: udp, key: key, existing: existing, mac: mac, dns: false, now: now)
    }

    // MARK: DHCP

    func handleDHCP(_ p: UnsafeRawBufferPointer, ethernet: EthernetHeader, now: Instant) {
        guard let msg = try? DHCPMessage.parse(p) else { return drop(.dhcpMalformed) }
        let out = scratch.slice(8 ..< 8 + 1024)
        switch dhcp.handle(msg, now: now, clientGroup: ingressGroup, into: out) {
        case .ignored(.poolExhausted):
            drop(.dhcpPoolExhausted)
        case .ignored:
            drop(.dhcpIgnored)
        case .reply(let r):
            counters.count(.dhcpReplies)
            if r.type == .ack, !r.yourAddress.isUnspecified { leaseObserver?(r.yourAddress, msg.clientMAC) }
            // RFC 2131 4.1: a client with an address (ciaddr, e.g. INFORM or renewal) is answered there.
            let dstIP = r.broadcast ? IPv4Address.broadcast : (msg.clientAddress.isUnspecified ? r.yourAddress : msg.clientAddress)
            let dstMAC = r.broadcast ? MACAddress.broadcast : msg.clientMAC
            sendUDPToGuest(mac: dstMAC, source: IPAddress(config.gatewayAddress), sourcePort: DHCPMessage.serverPort,
                           destination: IPAddress(dstIP), destinationPort: DHCPMessage.clientPort, payloadLength: r.length)
        }
    }

    /// Sends `scratch[8 ..< 8+payloadLength]` to the guest as one UDP datagram (fragmented if needed).
    func sendUDPToGuest(mac: MACAddress, source: IPAddress, sourcePort: UInt16, destination: IPAddress,
                        destinationPort: UInt16, payloadLength: Int) {
        let length = 8 + payloadLength
        UDPHeader(sourcePort: sourcePort, destinationPort: destinationPort, length: length)
            .emit(into: scratch.slice(0 ..< length),
                  pseudoHeader: InternetChecksum.pseudoHeader(source: source, destination: destination, protocolNumber: 17, length: length))
        emitIPFragmenting(to: mac, source: source, destination: destination, protocolNumber: .udp,
                          l4: UnsafeRawBufferPointer(scratch.slice(0 ..< length)))
    }

    // MARK: NAT

    /// `existing` is the flow `key` already names (looked up once by the caller), if any.
    func forwardUDP(_ payload: UnsafeRawBufferPointer, ip: GuestPacket, udp: UDPHeader, key: UDPFlowKey, existing: Int?,
                    mac: MACAddress, dns: Bool, now: Instant) {
        var index = existing
        if index == nil {
            let hostAddress: IPAddress
            let hostPort: UInt16
            if dns {
                counters.count(.dnsQueries)
                guard let upstream = currentDNSUpstream else { return answerDNSFailure(payload, ip: ip, udp: udp, mac: mac) }
                (hostAddress, hostPort) = upstream
            } else {
                let (dst, reason) = hostDestination(for: ip.destination)
                guard let d = dst else {
                    if reason == .egressDenied {
                        sendAdministrativelyProhibited(ip: ip, mac: mac, quotedWords: (udp.sourcePort, udp.destinationPort,
                                                                                       UInt16(truncatingIfNeeded: udp.length), udp.checksum))
                    }
                    return drop(reason!)
                }
                hostAddress = d
                hostPort = udp.destinationPort
            }
            guard udpEngine.flows.count < udpEngine.flows.capacity else { return drop(.udpFlowTableFull) }
            guard udpEngine.flows.count(forGuest: key.guestAddress) < config.guestUDPFlowCapacity else { return drop(.udpGuestFlowsFull) }
            guard !dns || dnsForwarder.flowCount < config.dnsFlowCapacity else { return drop(.dnsFlowTableFull) }
            let tagIndex = udpEngine.flows.nextFreeIndex!
            guard let handle = host.openUDP(to: hostAddress, port: hostPort, tag: FlowTag(kind: .udp, index: tagIndex)) else {
                return drop(.hostSocketFailed)
            }
            index = udpEngine.flows.insert(key, UDPFlow(key: key, handle: handle, guestMAC: mac, hostDestination: hostAddress,
                                                 lastActive: now, ttl: 64, isDNS: dns))
            if dns { dnsForwarder.flowCount += 1 }
            counters.count(.udpFlowsOpened)
        } else if dns {
            counters.count(.dnsQueries)
        }
        let i = index!
        var flow = udpEngine.flows[i]!
        flow.lastActive = now
        flow.guestMAC = mac
        if flow.ttl != ip.hopLimit {
            flushGuestDatagrams(of: i)
            host.setTTL(flow.handle, ttl: ip.hopLimit)
            flow.ttl = ip.hopLimit
        }
        if flow.isDNS && flow.queryPendingSince == .zero { flow.queryPendingSince = now }
        udpEngine.flows[i] = flow
        if flow.isDNS {
            if !host.sendUDP(flow.handle, payload) { drop(.hostSendFailed) }
        } else {
            sendGuestDatagram(i, handle: flow.handle, payload)
        }
    }

    /// The upstream new DNS flows use: the first one, or the next after one stopped answering.
    var currentDNSUpstream: (IPAddress, UInt16)? { dnsForwarder.upstreams.current.map { ($0.address, $0.port) } }

    /// The upstream of `flow` failed (ICMP error, or no answer within `dnsFailoverTimeout`): later queries
    /// go to the next resolver, and the flow is closed so the guest's retry opens a flow to it.
    func failOverDNS(_ flow: UDPFlow) {
        if dnsForwarder.upstreams.failed(flow.hostDestination) { counters.count(.dnsFailovers) }
        host.close(flow.handle)
        forgetUDPFlow(flow)
    }

    /// Frees a flow's slot (its socket is closed or shared), keeping the DNS flow count.
    func forgetUDPFlow(_ f: UDPFlow) {
        // Its socket is closed (or shared) by now, and its fd may be reused: gathered datagrams are dropped.
        if let i = udpEngine.flows.lookup(f.key), udpEngine.sendBatch.flow == i { udpEngine.sendBatch.reset() }
        if f.isDNS { dnsForwarder.flowCount -= 1 }
        udpEngine.flows.remove(f.key)
    }

    /// A query for a name in `table` (`localDNS`, then the lease names): answered here (true), never forwarded.
    func answerLocalDNS(from table: LocalDNSRecords, _ payload: UnsafeRawBufferPointer, ip: GuestPacket, udp: UDPHeader,
                        mac: MACAddress) -> Bool {
        guard let n = table.answer(query: payload, into: scratch.slice(8 ..< 8 + 512)) else { return false }
        counters.count(.dnsQueries)
        counters.count(.dnsLocalAnswers)
        sendUDPToGuest(mac: mac, source: ip.destination, sourcePort: udp.destinationPort, destination: ip.source,
                       destinationPort: udp.sourcePort, payloadLength: n)
        return true
    }

    func answerDNSFailure(_ payload: UnsafeRawBufferPointer, ip: GuestPacket, udp: UDPHeader, mac: MACAddress) {
        drop(.dnsNoUpstream)
        guard payload.count <= 1400 else { return }
        let body = scratch.slice(8 ..< 8 + payload.count)
        body.copy(payload, to: 0)
        guard let n = DNSReplies.failure(body, length: payload.count, rcode: 2) else { return }
        counters.count(.dnsServfail)
        sendUDPToGuest(mac: mac, source: ip.destination, sourcePort: udp.destinationPort, destination: ip.source,
                       destinationPort: udp.sourcePort, payloadLength: n)
    }

    /// Drains a readable UDP flow socket (at most `budget` datagrams, so one flow cannot starve the rest).
    func udpReadable(_ i: Int, now: Instant, budget: Int = 64) {
        guard var flow = udpEngine.flows[i] else { return }
        for _ in 0 ..< budget {
            switch host.receiveUDP(flow.handle, into: scratch.slice(8 ..< scratch.count)) {
            case .datagram(let n):
                flow.lastActive = now
                flow.queryPendingSince = .zero
                sendUDPToGuest(mac: flow.guestMAC, source: flow.key.destination, sourcePort: flow.key.destinationPort,
                               destination: flow.key.guestAddress, destinationPort: flow.key.guestPort, payloadLength: n)
            case .icmpError(_, _, _, _) where flow.isDNS, .icmp6Error(_, _, _, _) where flow.isDNS:
                // The resolver is unreachable: try the next one rather than relaying the error.
                return failOverDNS(flow)
            case .icmpError(let type, let code, let offender, let length):
                let k = flow.key
                guard let guest = k.guestAddress.v4, let destination = k.destination.v4,
                      let from = guestFacingSource(hostAddress: IPAddress(offender), flowHostDestination: flow.hostDestination,
                                                   guestDestination: k.destination).v4 else {
                    drop(.hostDatagramDropped); continue
                }
                sendICMPError(type: type, code: code, from: from,
                              to: flow.guestMAC, guest: guest, destination: destination, quotedProtocol: .udp,
                              quotedTotalLength: 20 + 8 + length, ttl: flow.ttl,
                              quotedWords: (k.guestPort, k.destinationPort, UInt16(truncatingIfNeeded: 8 + length), 0))
            case .icmp6Error(let type, let code, let offender, let length):
                let k = flow.key
                guard !k.guestAddress.isIPv4 else { drop(.hostDatagramDropped); continue }
                let from = guestFacingSource(hostAddress: IPAddress(offender), flowHostDestination: flow.hostDestination,
                                             guestDestination: k.destination)
                sendICMPv6Error(type: type, code: code, from: from.v6, to: flow.guestMAC, guest: k.guestAddress.v6,
                                destination: k.destination.v6, quotedNextHeader: IPProtocol.udp.rawValue,
                                quotedPayloadLength: 8 + length, hopLimit: flow.ttl,
                                quotedWords: (k.guestPort, k.destinationPort, UInt16(truncatingIfNeeded: 8 + length), 0))
            case .ignored, .echoReply:
                drop(.hostDatagramDropped)
            case .wouldBlock, .failed:
                udpEngine.flows[i] = flow
                return
            }
        }
        udpEngine.flows[i] = flow
    }

    /// ICMP error to the guest quoting its packet (RFC 792): the original IPv4 header plus the first 8 bytes of
    /// its payload, given as four 16-bit words (ports and length for UDP, type/code, id and sequence for echo).
    func sendICMPError(type: UInt8, code: UInt8, from source: IPv4Address, to mac: MACAddress, guest: IPv4Address,
                       destination: IPv4Address, quotedProtocol: IPProtocol, quotedTotalLength: Int, ttl: UInt8,
                       quotedWords: (UInt16, UInt16, UInt16, UInt16), restOfHeader: UInt32 = 0) {
        let messageLength = 8 + 20 + 8
        counters.count(.icmpErrorsToGuest)
        emitIPv4(to: mac, source: source, destination: guest, protocolNumber: .icmp, l4Length: messageLength) { out in
            let quoted = out.slice(8 ..< messageLength)
            IPv4Header(totalLength: quotedTotalLength, identification: 0, ttl: ttl, protocolNumber: quotedProtocol,
                       source: guest, destination: destination).emit(into: quoted.slice(0 ..< 20))
            let w = quoted.slice(20 ..< 28)
            w.put16(0, quotedWords.0); w.put16(2, quotedWords.1); w.put16(4, quotedWords.2); w.put16(6, quotedWords.3)
            ICMPv4Header(type: type, code: code, restOfHeader: restOfHeader).emit(into: out, messageLength: messageLength)
        }
    }

    /// A datagram from a hostfwd client (already in `scratch[8...]`, `length` bytes) for guest:guestPort.
    /// Loopback clients appear as the gateway address, everyone else with their real address and port.
    public func forwardedUDPDatagram(listener: Int32, from client: IPv4Address, port clientPort: UInt16,
                                     to guest: IPv4Address, port guestPort: UInt16, length: Int, now: Instant) {
        forwardedUDPDatagram(listener: listener, from: IPAddress(client), port: clientPort, to: IPAddress(guest), port: guestPort,
                             length: length, now: now)
    }

    /// As above, for either family on either side (see `acceptForwardedTCP`).
    public func forwardedUDPDatagram(listener: Int32, from client: IPAddress, port clientPort: UInt16,
                                     to guest: IPAddress, port guestPort: UInt16, length: Int, now: Instant) {
        guard let mac = guestMAC(for: guest) else { return drop(.forwardNoGuestMAC) }
        let facing = forwardFacingAddress(client: client, guest: guest)
        let key = UDPFlowKey(guestAddress: guest, guestPort: guestPort, destination: facing, destinationPort: clientPort)
        if let i = udpEngine.flows.lookup(key) {
            udpEngine.flows[i]!.lastActive = now
            udpEngine.flows[i]!.replyTo = (client, clientPort)
        } else {
            guard udpEngine.flows.count(forGuest: guest) < config.guestUDPFlowCapacity else { return drop(.udpGuestFlowsFull) }
            guard udpEngine.flows.insert(key, UDPFlow(key: key, handle: listener, guestMAC: mac, hostDestination: client, lastActive: now,
                                               ttl: 64, isDNS: false, replyTo: (client, clientPort))) != nil else {
                return drop(.udpFlowTableFull)
            }
        }
        counters.count(.udpForwardDatagrams)
        sendUDPToGuest(mac: mac, source: facing, sourcePort: clientPort, destination: guest, destinationPort: guestPort, payloadLength: length)
    }

    /// Where a hostfwd datagram must be written before `forwardedUDPDatagram`: room for a UDP header before it.
    public var forwardReceiveBuffer: UnsafeMutableRawBufferPointer { scratch.slice(8 ..< scratch.count) }

    func sweepUDP(now: Instant) {
        for i in udpEngine.flows.activeIndices {
            guard let f = udpEngine.flows[i] else { continue }
            if f.isDNS && f.queryPendingSince != .zero && now - f.queryPendingSince >= config.dnsFailoverTimeout {
                failOverDNS(f)
                continue
            }
            let timeout = f.isDNS ? config.dnsIdleTimeout : config.udpIdleTimeout
            if now - f.lastActive >= timeout {
                if f.replyTo == nil { host.close(f.handle) }
                forgetUDPFlow(f)
                counters.count(.udpFlowsExpired)
            }
        }
    }

    /// Replaces the upstream resolvers; open DNS flows to the old ones are closed so new queries follow the change.
    @_disfavoredOverload
    public func replaceDNSUpstreams(_ upstreams: [(IPv4Address, UInt16)]) {
        replaceDNSUpstreams(upstreams.map { (IPAddress($0.0), $0.1) })
    }

    public func replaceDNSUpstreams(_ upstreams: [(IPAddress, UInt16)]) {
        setDNSUpstreams(upstreams)
        for i in udpEngine.flows.activeIndices {
            guard let f = udpEngine.flows[i], f.isDNS, f.replyTo == nil else { continue }
            host.close(f.handle)
            forgetUDPFlow(f)
        }
    }

    /// Called by the event loop when a host socket registered under `tag` is readable.
    /// `peerClosing`: the event also reported a hang-up, reset or error (EPOLLRDHUP, EPOLLHUP, EPOLLERR). A loop
    /// that cannot tell passes true, which costs one extra peek after a short one.
    public func hostReadable(_ tag: FlowTag, now: Instant, peerClosing: Bool = true) {
        switch tag.kind {
        case .udp: udpReadable(tag.index, now: now)
        case .icmp: icmpReadable(tag.index, now: now)
        case .tcp: tcpReadable(tag.index, now: now, peerClosing: peerClosing)
        }
    }

    /// Called by the event loop when a host socket registered under `tag` is writable (TCP connect done, or
    /// send space freed).
    public func hostWritable(_ tag: FlowTag, now: Instant) {
        if tag.kind == .tcp { tcpWritable(tag.index, now: now) }
    }
}
