// Helpers for driving DHCPServer directly: client messages, a reply buffer, and an option reader.

import Testing
import VNetBuffers
import VNetServices
import VNetWire

let serverIP = IPv4Address(10, 0, 2, 2)
let net24 = IPv4Network(address: IPv4Address(10, 0, 2, 0), prefixLength: 24)
let t0 = Instant(nanoseconds: 1_000 * 1_000_000_000)

func mac(_ n: Int) -> MACAddress { MACAddress(rawValue: 0x5254_0000_0000 | UInt64(n)) }
func ip(_ last: UInt8) -> IPv4Address { IPv4Address(10, 0, 2, last) }

func config(poolSize: Int = 16, lease: Instant.Duration = .seconds(3600), offerHold: Instant.Duration = .seconds(60),
            domain: String? = nil, search: [String] = [], hostName: String? = nil, mtu: Int = 1500) -> DHCPConfig {
    DHCPConfig(network: net24, serverAddress: serverIP, router: serverIP, dnsServers: [ip(3)], poolStart: ip(15),
               poolSize: poolSize, leaseTime: lease, offerHold: offerHold, domainName: domain, searchDomains: search,
               hostName: hostName, mtu: mtu)
}

/// A client message as the server sees it after parsing.
func message(_ type: DHCPMessageType, _ m: MACAddress, xid: UInt32 = 0x1234_5678, ciaddr: IPv4Address = .any,
             requested: IPv4Address? = nil, serverID: IPv4Address? = nil, broadcast: Bool = false) -> DHCPMessage {
    DHCPMessage(op: 1, transactionID: xid, flags: broadcast ? 0x8000 : 0, clientAddress: ciaddr, clientMAC: m,
                messageType: type, requestedAddress: requested, serverIdentifier: serverID)
}

/// The server's outcome and the reply bytes it wrote.
struct Answer {
    var outcome: DHCPOutcome
    var bytes: [UInt8]

    var reply: DHCPReply? { if case .reply(let r) = outcome { r } else { nil } }
    var ignored: DHCPIgnoreReason? { if case .ignored(let r) = outcome { r } else { nil } }
    var parsed: DHCPMessage? { bytes.withUnsafeBytes { try? DHCPMessage.parse($0) } }
    var options: [UInt8: [UInt8]] { dhcpOptions(bytes) }
}

extension DHCPServer {
    mutating func answer(_ m: DHCPMessage, at now: Instant) -> Answer {
        var buffer = [UInt8](repeating: 0xEE, count: 1024)
        let outcome = buffer.withUnsafeMutableBytes { handle(m, now: now, into: $0) }
        if case .reply(let r) = outcome { return Answer(outcome: outcome, bytes: Array(buffer[..<r.length])) }
        return Answer(outcome: outcome, bytes: [])
    }

    /// DISCOVER then REQUEST of what was offered; returns the ACKed address.
    mutating func lease(_ m: MACAddress, at now: Instant) -> IPv4Address? {
        guard let offer = answer(message(.discover, m), at: now).reply else { return nil }
        let ack = answer(message(.request, m, requested: offer.yourAddress, serverID: serverIP), at: now)
        guard let r = ack.reply, r.type == .ack else { return nil }
        return r.yourAddress
    }
}

/// Options of a DHCP message (after the 240-byte header and cookie); repeated codes are concatenated (RFC 3396).
func dhcpOptions(_ p: [UInt8]) -> [UInt8: [UInt8]] {
    var out: [UInt8: [UInt8]] = [:]
    var i = 240
    while i < p.count {
        let code = p[i]
        if code == 0 { i += 1; continue }
        if code == 255 { break }
        guard i + 1 < p.count, i + 2 + Int(p[i + 1]) <= p.count else { Issue.record("option \(code) runs past the end"); break }
        out[code, default: []] += p[i + 2 ..< i + 2 + Int(p[i + 1])]
        i += 2 + Int(p[i + 1])
    }
    return out
}

func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
func bytes(_ a: IPv4Address) -> [UInt8] { be32(a.rawValue) }
