// Frames too big for a port's path (a VXLAN uplink's underlay): the gateway tells their sender, as a router
// on the path would (RFC 1191, RFC 8201).
//
// A port that must drop a frame because its path cannot carry it (DF set, never fragmented) hands it here
// through the runtime. An IPv4 packet with DF gets ICMP "fragmentation needed" (type 3, code 4) with the
// next-hop MTU; an IPv6 packet gets "packet too big" with the MTU. Both quote the packet's header and first 8
// bytes of payload and go from the gateway's address to the sender's MAC. Nothing is sent for a packet without
// DF (IPv4 fragments it on the path: here it is only dropped and counted by the port), for the gateway's own
// packets, or for anything that is not a whole IPv4 or IPv6 header.

import VNetWire

extension Gateway {
    /// `frame` (an Ethernet frame, read only) did not fit a path whose IP MTU is `mtu`.
    public func answerFrameTooBig(_ frame: UnsafeRawBufferPointer, mtu: Int) {
        guard let eth = try? EthernetHeader.parse(frame), eth.vlanTag == nil, mtu >= 68 else { return }
        let packet = frame.slice(eth.headerLength ..< frame.count)
        func words(_ payload: UnsafeRawBufferPointer) -> (UInt16, UInt16, UInt16, UInt16) {
            guard payload.count >= 8 else { return (0, 0, 0, 0) }
            return (payload.u16(0), payload.u16(2), payload.u16(4), payload.u16(6))
        }
        switch eth.etherType {
        case .ipv4:
            guard let ip = try? IPv4Header.parse(packet), ip.dontFragment, ip.source != config.gatewayAddress,
                  !ip.source.isUnspecified, ip.totalLength <= packet.count else { return }
            sendICMPError(type: ICMPv4Header.destinationUnreachable, code: 4, from: config.gatewayAddress, to: eth.source,
                          guest: ip.source, destination: ip.destination, quotedProtocol: ip.protocolNumber,
                          quotedTotalLength: ip.totalLength, ttl: ip.ttl, quotedWords: words(packet.slice(ip.headerLength ..< ip.totalLength)),
                          restOfHeader: UInt32(min(mtu, 0xFFFF)))
        case .ipv6:
            guard config.ipv6Enabled, let ip = try? IPv6Header.parse(packet), ip.source != config.ipv6GatewayAddress,
                  !ip.source.isUnspecified, !ip.source.isMulticast, 40 + ip.payloadLength <= packet.count else { return }
            sendICMPv6Error(type: ICMPv6Header.packetTooBig, code: 0, from: config.ipv6GatewayAddress, to: eth.source, guest: ip.source,
                            destination: ip.destination, quotedNextHeader: ip.nextHeader, quotedPayloadLength: ip.payloadLength,
                            hopLimit: ip.hopLimit, quotedWords: words(packet.slice(40 ..< 40 + ip.payloadLength)),
                            restOfHeader: UInt32(max(mtu, 1280)))
        default:
            return
        }
    }
}
