// Guest ICMP: echo to the gateway's own addresses is answered here; echo to anywhere else goes out through a
// host ICMP echo socket per (guest address, echo identifier, destination), and its replies come back with
// the guest's identifier restored. Other ICMP from the guest is counted and dropped.

import VNetBuffers
import VNetWire

struct ICMPFlowKey: GuestFlowKey {
    var guestAddress: IPv4Address
    var identifier: UInt16
    var destination: IPv4Address
}

struct ICMPFlow {
    var key: ICMPFlowKey
    var handle: Int32
    var guestMAC: MACAddress
    var hostDestination: IPv4Address
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
        let key = ICMPFlowKey(guestAddress: ip.source, identifier: icmp.identifier, destination: ip.destination)
        var index = icmpFlows.lookup(key)
        if index == nil {
            let (dst, reason) = hostDestination(for: ip.destination)
            guard let hostAddress = dst else {
                if reason == .egressDenied {
                    sendAdministrativelyProhibited(ip: ip, mac: ethernet.source,
                                                   quotedWords: (UInt16(icmp.type) << 8 | UInt16(icmp.code), icmp.checksum, icmp.identifier, icmp.sequence))
                }
                return drop(reason!)
            }
            guard icmpFlows.count < icmpFlows.capacity else { return drop(.icmpFlowTableFull) }
            let tagIndex = icmpFlows.nextFreeIndex!
            guard let handle = host.openICMPEcho(destination: hostAddress, tag: FlowTag(kind: .icmp, index: tagIndex)) else {
                return drop(.hostSocketFailed)
            }
            index = icmpFlows.insert(key, ICMPFlow(key: key, handle: handle, guestMAC: ethernet.source, hostDestination: hostAddress,
                                                   lastActive: now, ttl: 64))
            counters.count(.icmpFlowsOpened)
        }
        let i = index!
        var flow = icmpFlows[i]!
        flow.lastActive = now
        flow.guestMAC = ethernet.source
        if flow.ttl != ip.ttl {
            host.setTTL(flow.handle, ttl: ip.ttl)
            flow.ttl = ip.ttl
        }
        icmpFlows[i] = flow
        if !host.sendICMPEcho(flow.handle, identifier: icmp.identifier, sequence: icmp.sequence, payload: p.slice(8 ..< p.count)) {
            drop(.hostSendFailed)
        }
    }

    func icmpReadable(_ i: Int, now: Instant, budget: Int = 64) {
        guard var flow = icmpFlows[i] else { return }
        for _ in 0 ..< budget {
            let body = scratch.slice(8 ..< scratch.count)
            switch host.receiveICMPEcho(flow.handle, into: body) {
            case .echoReply(let identifier, let sequence, let n):
                if let id = identifier, id != flow.key.identifier { continue }
                flow.lastActive = now
                let length = 8 + n
                ICMPv4Header(type: ICMPv4Header.echoReply, code: 0, restOfHeader: UInt32(flow.key.identifier) << 16 | UInt32(sequence))
                    .emit(into: scratch.slice(0 ..< length), messageLength: length)
                emitIPv4Fragmenting(to: flow.guestMAC, source: flow.key.destination, destination: flow.key.guestAddress,
                                    protocolNumber: .icmp, l4: UnsafeRawBufferPointer(scratch.slice(0 ..< length)))
            case .icmpError(let type, let code, let offender, _):
                let k = flow.key
                sendICMPError(type: type, code: code,
                              from: guestFacingSource(hostAddress: offender, flowHostDestination: flow.hostDestination,
                                                      guestDestination: k.destination),
                              to: flow.guestMAC, guest: k.guestAddress, destination: k.destination, quotedProtocol: .icmp,
                              quotedTotalLength: 28, ttl: flow.ttl,
                              quotedWords: (UInt16(ICMPv4Header.echoRequest) << 8, 0, k.identifier, 0))
            case .ignored, .datagram:
                continue
            case .wouldBlock, .failed:
                icmpFlows[i] = flow
                return
            }
        }
        icmpFlows[i] = flow
    }

    func sweepICMP(now: Instant) {
        for i in icmpFlows.activeIndices {
            guard let f = icmpFlows[i] else { continue }
            if now - f.lastActive >= config.icmpIdleTimeout {
                host.close(f.handle)
                icmpFlows.remove(f.key)
                counters.count(.icmpFlowsExpired)
            }
        }
    }
}
