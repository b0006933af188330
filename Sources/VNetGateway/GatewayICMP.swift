// Guest ICMP: echo to the gateway's own addresses is answered here; echo to anywhere else goes out through a
// host ICMP echo socket per (guest address, echo identifier, destination), and its replies come back with
// the guest's identifier restored. Other ICMP from the guest is counted and dropped.

import VNetBuffers
import VNetWire

struct ICMPFlowKey: GuestFlowKey {
    var guestAddress: IPAddress
    var identifier: UInt16
    var destination: IPAddress
}

struct ICMPFlow {
    var key: ICMPFlowKey
    var handle: Int32
    var guestMAC: MACAddress
    var hostDestination: IPAddress
    var lastActive: Instant
    var ttl: UInt8
}

extension Gateway {
    func handleICMP(_ p: UnsafeRawBufferPointer, ip: IPv4Header, ethernet: EthernetHeader, now: Instant) {
        guard let icmp = try? ICMPv4Header.parse(p) else { return drop(.icmpMalformed) }
        guard ICMPv4Header.checksumValid(p) else { return drop(.icmpBadChecksum) }
        guard icmp.type == ICMPv4Header.echoRequest, icmp.code == 0 else { return drop(.icmpTypeIgnored) }
        guard !ip.source.isUnspecified else { return drop(.martianSource) }
        if isGatewayOwned(ip.destination) {
            // Echo reply: same identifier, sequence and data (exactly the IP payload, never the padding).
            counters.count(.icmpEchoLocal)
            // Built in scratch and fragmented if needed: a reassembled ping can exceed the MTU.
            let reply = scratch.slice(0 ..< p.count)
            reply.copy(p, to: 0)
            ICMPv4Header(type: ICMPv4Header.echoReply, code: 0, restOfHeader: icmp.restOfHeader).emit(into: reply, messageLength: p.count)
            emitIPv4Fragmenting(to: ethernet.source, source: ip.destination, destination: ip.source, protocolNumber: .icmp,
                                l4: UnsafeRawBufferPointer(reply))
            return
        }
        guard !config.restricted else { return drop(.restricted) }
        forwardEcho(p, ip: GuestPacket(ip), type: icmp.type, code: icmp.code, checksum: icmp.checksum, identifier: icmp.identifier,
                    sequence: icmp.sequence, mac: ethernet.source, now: now)
    }

    /// An echo request (`p`, the whole ICMP or ICMPv6 message) to a host of either family: one flow per (guest
    /// address, identifier, destination) with its own host echo socket; the egress policy is checked when it opens.
    func forwardEcho(_ p: UnsafeRawBufferPointer, ip: GuestPacket, type: UInt8, code: UInt8, checksum: UInt16, identifier: UInt16,
                     sequence: UInt16, mac: MACAddress, now: Instant) {
        let key = ICMPFlowKey(guestAddress: ip.source, identifier: identifier, destination: ip.destination)
        var index = icmpEngine.flows.lookup(key)
        if index == nil {
            let (dst, reason) = hostDestination(for: ip.destination)
            guard let hostAddress = dst else {
                if reason == .egressDenied {
                    sendAdministrativelyProhibited(ip: ip, mac: mac, quotedWords: (UInt16(type) << 8 | UInt16(code), checksum, identifier, sequence))
                }
                return drop(reason!)
            }
            guard icmpEngine.flows.count < icmpEngine.flows.capacity else { return drop(.icmpFlowTableFull) }
            let tagIndex = icmpEngine.flows.nextFreeIndex!
            guard let handle = host.openICMPEcho(to: hostAddress, tag: FlowTag(kind: .icmp, index: tagIndex)) else {
                return drop(.hostSocketFailed)
            }
            index = icmpEngine.flows.insert(key, ICMPFlow(key: key, handle: handle, guestMAC: mac, hostDestination: hostAddress, lastActive: now, ttl: 64))
            counters.count(.icmpFlowsOpened)
        }
        let i = index!
        var flow = icmpEngine.flows[i]!
        flow.lastActive = now
        flow.guestMAC = mac
        if flow.ttl != ip.hopLimit {
            host.setTTL(flow.handle, ttl: ip.hopLimit)
            flow.ttl = ip.hopLimit
        }
        icmpEngine.flows[i] = flow
        if !host.sendICMPEcho(flow.handle, identifier: identifier, sequence: sequence, payload: p.slice(8 ..< p.count)) {
            drop(.hostSendFailed)
        }
    }

    func icmpReadable(_ i: Int, now: Instant, budget: Int = 64) {
        guard var flow = icmpEngine.flows[i] else { return }
        for _ in 0 ..< budget {
            let body = scratch.slice(8 ..< scratch.count)
            switch host.receiveICMPEcho(flow.handle, into: body) {
            case .echoReply(let identifier, let sequence, let n):
                if let id = identifier, id != flow.key.identifier { continue }
                flow.lastActive = now
                let length = 8 + n
                let rest = UInt32(flow.key.identifier) << 16 | UInt32(sequence)
                let k = flow.key
                if k.guestAddress.isIPv4 {
                    ICMPv4Header(type: ICMPv4Header.echoReply, code: 0, restOfHeader: rest).emit(into: scratch.slice(0 ..< length), messageLength: length)
                } else {
                    ICMPv6Header(type: ICMPv6Header.echoReply, code: 0, restOfHeader: rest)
                        .emit(into: scratch.slice(0 ..< length), messageLength: length, source: k.destination.v6, destination: k.guestAddress.v6)
                }
                emitIPFragmenting(to: flow.guestMAC, source: k.destination, destination: k.guestAddress,
                                  protocolNumber: k.guestAddress.isIPv4 ? .icmp : .icmpv6, l4: UnsafeRawBufferPointer(scratch.slice(0 ..< length)))
            case .icmpError(let type, let code, let offender, _):
                let k = flow.key
                guard let guest = k.guestAddress.v4, let destination = k.destination.v4,
                      let from = guestFacingSource(hostAddress: IPAddress(offender), flowHostDestination: flow.hostDestination,
                                                   guestDestination: k.destination).v4 else { continue }
                sendICMPError(type: type, code: code, from: from,
                              to: flow.guestMAC, guest: guest, destination: destination, quotedProtocol: .icmp,
                              quotedTotalLength: 28, ttl: flow.ttl,
                              quotedWords: (UInt16(ICMPv4Header.echoRequest) << 8, 0, k.identifier, 0))
            case .icmp6Error(let type, let code, let offender, _):
                let k = flow.key
                guard !k.guestAddress.isIPv4 else { continue }
                let from = guestFacingSource(hostAddress: IPAddress(offender), flowHostDestination: flow.hostDestination,
                                             guestDestination: k.destination)
                sendICMPv6Error(type: type, code: code, from: from.v6, to: flow.guestMAC, guest: k.guestAddress.v6,
                                destination: k.destination.v6, quotedNextHeader: IPProtocol.icmpv6.rawValue, quotedPayloadLength: 8,
                                hopLimit: flow.ttl, quotedWords: (UInt16(ICMPv6Header.echoRequest) << 8, 0, k.identifier, 0))
            case .ignored, .datagram:
                continue
            case .wouldBlock, .failed:
                icmpEngine.flows[i] = flow
                return
            }
        }
        icmpEngine.flows[i] = flow
    }

    func sweepICMP(now: Instant) {
        for i in icmpEngine.flows.activeIndices {
            guard let f = icmpEngine.flows[i] else { continue }
            if now - f.lastActive >= config.icmpIdleTimeout {
                host.close(f.handle)
                icmpEngine.flows.remove(f.key)
                counters.count(.icmpFlowsExpired)
            }
        }
    }
}
