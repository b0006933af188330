// Egress policy: which host addresses guest-initiated flows may reach (`--deny CIDR`, `--allow CIDR`).
//
// Theory of Operation
// -------------------
// A policy is a list of IPv4 prefixes, each with a verdict. The verdict for an address is the verdict of the
// most specific rule that contains it (the longest prefix); at equal prefix length, allow wins. An address
// no rule contains is allowed. So `--deny 10.0.0.0/8 --allow 10.1.0.0/16` reaches 10.1.2.3 but not 10.2.3.4,
// and `--allow 169.254.169.254/32` opens exactly the metadata address inside the default deny.
//
// Default: 169.254.0.0/16 (IPv4 link-local, where cloud metadata services answer at 169.254.169.254) is denied.
// `allowLinkLocal()` (`--allow-link-local`) lifts it. When IPv6 lands, fd00:ec2::254 (the IPv6 metadata address)
// joins the default deny list.
//
// The policy is checked once per new guest flow (TCP SYN, first UDP datagram, first ICMP echo of an id), on
// the host address the flow would reach: after the gateway -> host-loopback mapping, so `--deny 127.0.0.0/8`
// also closes that mapping. It does not apply to vnet's own traffic (DNS to its upstream resolvers), to
// guestfwd targets (chosen by the operator) or to hostfwd connections (inbound).

import VNetWire

public struct EgressRule: Equatable, Sendable, CustomStringConvertible {
    public var network: IPv4Network
    public var allow: Bool

    public init(network: IPv4Network, allow: Bool) {
        self.network = network
        self.allow = allow
    }

    public var description: String { (allow ? "allow " : "deny ") + network.description }
}

public struct EgressRule6: Equatable, Sendable, CustomStringConvertible {
    public var network: IPv6Network
    public var allow: Bool

    public init(network: IPv6Network, allow: Bool) {
        self.network = network
        self.allow = allow
    }

    public var description: String { (allow ? "allow " : "deny ") + network.description }
}

public struct EgressPolicy: Equatable, Sendable {
    /// 169.254.0.0/16: link-local and cloud metadata (169.254.169.254).
    public static let linkLocal = IPv4Network(address: IPv4Address(169, 254, 0, 0), prefixLength: 16)

    public private(set) var rules: [EgressRule]
    /// IPv6 rules, decided the same way. Default: fd00:ec2::254 (the IPv6 cloud metadata address) denied.
    public private(set) var rules6: [EgressRule6]
    public static let metadata6 = IPv6Network(address: IPv6Address("fd00:ec2::254")!, prefixLength: 128)

    /// The default policy: link-local denied, everything else allowed.
    public init() {
        rules = [EgressRule(network: EgressPolicy.linkLocal, allow: false)]
        rules6 = [EgressRule6(network: EgressPolicy.metadata6, allow: false)]
    }

    public mutating func deny(_ n: IPv6Network) { rules6.append(EgressRule6(network: n, allow: false)) }
    public mutating func allow(_ n: IPv6Network) { rules6.append(EgressRule6(network: n, allow: true)) }

    /// True when a guest flow may reach IPv6 `a`: the longest matching prefix decides, allow on a tie.
    public func permits(v6 a: IPv6Address) -> Bool {
        var best: EgressRule6? = nil
        for r in rules6 where r.network.contains(a) {
            guard let b = best else { best = r; continue }
            if r.network.prefixLength > b.network.prefixLength || (r.network.prefixLength == b.network.prefixLength && r.allow) {
                best = r
            }
        }
        return best?.allow ?? true
    }

    /// Parses `ADDR/N` or `ADDR` (a /128) for IPv6, host bits zero.
    public static func parseCIDR6(_ text: String) -> IPv6Network? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, let a = IPv6Address(parts[0]) else { return nil }
        var length = 128
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(parts[1]), n <= 128 else { return nil }
            length = n
        }
        let net = IPv6Network(address: a, prefixLength: length)
        return net.address == a ? net : nil
    }

    public mutating func deny(_ n: IPv4Network) { rules.append(EgressRule(network: n, allow: false)) }
    public mutating func allow(_ n: IPv4Network) { rules.append(EgressRule(network: n, allow: true)) }

    /// Lifts the default link-local and metadata denies (an explicit `--deny` of them still holds).
    public mutating func allowLinkLocal() {
        allow(EgressPolicy.linkLocal)
        allow(EgressPolicy.metadata6)
    }

    /// True when a guest flow may reach `a`: the longest matching prefix decides, allow on a tie.
    public func permits(_ a: IPv4Address) -> Bool {
        var best: EgressRule? = nil
        for r in rules where r.network.contains(a) {
            guard let b = best else { best = r; continue }
            if r.network.prefixLength > b.network.prefixLength || (r.network.prefixLength == b.network.prefixLength && r.allow) {
                best = r
            }
        }
        return best?.allow ?? true
    }

    /// Parses `A.B.C.D/N` or `A.B.C.D` (a /32). Host bits must be zero, so a typo such as 10.1.2.3/8 is refused.
    public static func parseCIDR(_ text: String) -> IPv4Network? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, let a = IPv4Address(parts[0]) else { return nil }
        var length = 32
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(parts[1]), n <= 32 else { return nil }
            length = n
        }
        let net = IPv4Network(address: a, prefixLength: length)
        return net.address == a ? net : nil
    }
}

extension Gateway {
    /// Tells the guest a UDP datagram or echo request was refused by the policy: ICMP destination unreachable,
    /// code 13, "communication administratively prohibited" (RFC 1812 §5.2.7.1), from the gateway, quoting the
    /// guest's IPv4 header and the first 8 bytes of its payload. (TCP is answered with RST instead.)
    func sendAdministrativelyProhibited(ip packet: GuestPacket, mac: MACAddress, quotedWords: (UInt16, UInt16, UInt16, UInt16)) {
        if let v6 = packet.v6 {
            // RFC 4443 §3.1: destination unreachable, code 1, "communication with destination administratively prohibited".
            return sendICMPv6Error(type: ICMPv6Header.destinationUnreachable, code: 1, from: config.ipv6GatewayAddress, to: mac,
                                   guest: v6.source, destination: v6.destination, quotedNextHeader: packet.protocolNumber.rawValue,
                                   quotedPayloadLength: v6.payloadLength, hopLimit: v6.hopLimit, quotedWords: quotedWords)
        }
        guard let ip = packet.v4 else { return }
        sendICMPError(type: ICMPv4Header.destinationUnreachable, code: 13, from: config.gatewayAddress, to: mac, guest: ip.source,
                      destination: ip.destination, quotedProtocol: ip.protocolNumber, quotedTotalLength: ip.totalLength,
                      ttl: ip.ttl, quotedWords: quotedWords)
    }
}

extension EgressPolicy {
    /// One line for the start-up banner: every rule, and whether link-local (cloud metadata) is reachable.
    public var summary: String {
        let metadata = IPv4Address(169, 254, 169, 254)
        let rulesText = (rules.map(\.description) + rules6.map(\.description)).joined(separator: ", ")
        let note = permits(metadata) ? "169.254.169.254 (cloud metadata) is reachable"
                                     : "169.254.169.254 (cloud metadata) is denied; --allow-link-local permits it"
        return "\(rulesText) (longest prefix wins, allow on a tie); \(note)"
    }
}
