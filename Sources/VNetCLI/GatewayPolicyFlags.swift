// Egress policy and limits of the built-in gateway, shared by `vnet user` and `vnet nat`.

import ArgumentParser
import VNetGateway

struct GatewayPolicyFlags: ParsableArguments {
    @Option(name: .customLong("deny"), help: ArgumentHelp("Refuse guest flows to this IPv4 prefix (repeatable). 169.254.0.0/16 is denied by default.", valueName: "CIDR"))
    var deny: [String] = []

    @Option(name: .customLong("allow"), help: ArgumentHelp("Allow guest flows to this IPv4 prefix (repeatable): the longest matching prefix wins, allow on a tie.", valueName: "CIDR"))
    var allow: [String] = []

    @Flag(name: .customLong("allow-link-local"), help: "Let the guest reach 169.254.0.0/16 (link-local, cloud metadata).")
    var allowLinkLocal = false

    @Option(name: .customLong("limit"), help: ArgumentHelp("Set a limit (repeatable): \(GatewayLimit.allCases.map(\.rawValue).joined(separator: ", ")) (seconds).", valueName: "NAME=N"))
    var limits: [String] = []

    /// Extra entries (from `vnet nat`'s config file) are applied before the command line's. `singleGuest` (`vnet
    /// user`: the gateway serves one VM) makes the per-guest flow limits default to the whole table's, since a
    /// quarter of the table would only cap the one guest there is; a `guest-*-flows` limit given still applies.
    func apply(to gw: inout GatewayConfig, extraDeny: [String] = [], extraAllow: [String] = [], extraLimits: [String] = [],
               singleGuest: Bool = false) throws {
        let limits = extraLimits + self.limits
        let deny = extraDeny + self.deny
        let allow = extraAllow + self.allow
        if allowLinkLocal { gw.egress.allowLinkLocal() }
        for text in limits {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let l = GatewayLimit(rawValue: parts[0]) else {
                throw ValidationError("--limit: '\(text)' is not NAME=N with NAME one of \(GatewayLimit.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard let v = Int(parts[1]), gw.setLimit(l, v) else {
                throw ValidationError("--limit \(l.rawValue) must be a number from \(l.range.lowerBound) to \(l.range.upperBound)")
            }
        }
        if singleGuest {
            let named = Set(limits.compactMap { $0.split(separator: "=", maxSplits: 1).first.map(String.init) })
            if !named.contains(GatewayLimit.guestTCPFlows.rawValue) { gw.guestTCPFlowCapacity = gw.tcpFlowCapacity }
            if !named.contains(GatewayLimit.guestUDPFlows.rawValue) { gw.guestUDPFlowCapacity = gw.udpFlowCapacity }
        }
        for (flag, list) in [("--deny", deny), ("--allow", allow)] {
            for text in list {
                if text.contains(":") {
                    guard let n6 = EgressPolicy.parseCIDR6(text) else {
                        throw ValidationError("\(flag): '\(text)' is not an IPv6 prefix (ADDR/N with the host bits zero)")
                    }
                    if flag == "--deny" { gw.egress.deny(n6) } else { gw.egress.allow(n6) }
                    continue
                }
                guard let n = EgressPolicy.parseCIDR(text) else {
                    throw ValidationError("\(flag): '\(text)' is not an IPv4 prefix (A.B.C.D/N with the host bits zero)")
                }
                if flag == "--deny" { gw.egress.deny(n) } else { gw.egress.allow(n) }
            }
        }
    }

    var isEmpty: Bool { deny.isEmpty && allow.isEmpty && limits.isEmpty && !allowLinkLocal }
}
