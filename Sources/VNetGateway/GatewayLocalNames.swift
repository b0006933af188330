// Names the gateway answers itself: the host names of DHCP leases on a NAT network (`vnet nat`), so one
// VM reaches another by name, as with libvirt's dnsmasq.
//
// A query (standard opcode, one question, class IN) for a known name, bare or under the network's domain, is
// answered here: type A with the address (TTL 10 s, authoritative); any other type with an empty answer
// (NODATA), so the guest does not fall back to the upstream for a name that is ours. Every other query is
// forwarded as before. The table is replaced whole by the runtime when leases change; lookups never allocate
// beyond the name being matched.

import VNetBuffers
import VNetServices
import VNetWire

extension Gateway {
    /// Replaces the table of local names (lowercase DNS labels or dotted names) and their addresses.
    public func setLeaseNames(_ names: [String: IPv4Address]) { localNames = names }

    /// Puts back leases saved by an earlier run.
    @discardableResult
    public func restoreLeases(_ saved: [DHCPLease], now: Instant) -> Int { dhcp.restore(saved, now: now) }

    /// Answers `payload` (a DNS query to the gateway's DNS address) from the local names; false when the
    /// name is not ours and the query must be forwarded.
    func answerLocalName(_ payload: UnsafeRawBufferPointer, ip: IPv4Header, udp: UDPHeader, mac: MACAddress) -> Bool {
        guard !localNames.isEmpty, payload.count <= 512, let h = try? DNSHeader.parse(payload), !h.isResponse, h.opcode == 0,
              h.questionCount == 1, let end = DNSReplies.questionEnd(payload) else { return false }
        var name = ""
        var i = 12
        while payload[i] != 0 {
            let len = Int(payload[i])
            if !name.isEmpty { name.append(".") }
            for b in payload[(i + 1) ..< (i + 1 + len)] {
                let c = (b >= 0x41 && b <= 0x5A) ? b + 32 : b
                name.unicodeScalars.append(Unicode.Scalar(c))
            }
            i += 1 + len
        }
        let qtype = payload.u16(end - 4), qclass = payload.u16(end - 2)
        guard qclass == 1 else { return false }
        var address = localNames[name]
        if address == nil, let d = config.domainName?.lowercased(), !d.isEmpty, name.hasSuffix("." + d) {
            address = localNames[String(name.dropLast(d.count + 1))]
        }
        guard let a = address else { return false }
        counters.count(.dnsQueries)
        counters.count(.dnsLocalAnswers)
        let body = scratch.slice(8 ..< 8 + end + 16)
        body.copy(UnsafeRawBufferPointer(rebasing: payload[0 ..< end]), to: 0)
        let answer = qtype == 1   // A; anything else: NODATA
        DNSHeader(id: h.id, flags: 0x8000 | 0x0400 | (h.flags & 0x0100) | 0x0080, questionCount: 1, answerCount: answer ? 1 : 0)
            .emit(into: body)
        var length = end
        if answer {
            body.put16(end, 0xC00C)        // the name: a pointer to the question's
            body.put16(end + 2, 1)         // A
            body.put16(end + 4, 1)         // IN
            body.put32(end + 6, 10)        // TTL: leases change
            body.put16(end + 10, 4)
            body.put32(end + 12, a.rawValue)
            length = end + 16
        }
        sendUDPToGuest(mac: mac, source: ip.destination, sourcePort: udp.destinationPort, destination: ip.source,
                       destinationPort: udp.sourcePort, payloadLength: length)
        return true
    }
}
