// The nftables ruleset of a kernel NAT network, as text for `nft -f`, and running the nft binary.
//
// Theory of Operation
// -------------------
// Everything vnet adds lives in one table, `ip vnet-NAME`, so removing that table undoes all of it and nothing
// else is touched. The ruleset file first declares the table (a no-op when it exists), deletes it, then
// declares it in full: nft applies a file as one transaction, so loading it twice leaves exactly one copy and
// there is never a moment without rules. Masquerade covers traffic from the network to anywhere else; each
// port map is a DNAT in prerouting (traffic arriving from outside) and in output (connections from the host
// itself to one of its own addresses).

import CVNetShim
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

/// Kernel NAT's port maps are `HostForward`s (VNetServices) rendered as DNAT rules: IPv4 only, an address target.
extension HostForward {
    /// QEMU's hostfwd syntax: `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`; an empty guest address
    /// is `defaultGuest`.
    public static func parseKernelPortMap(_ text: String, defaultGuest: IPv4Address) throws -> HostForward {
        func bad(_ why: String) -> KernelModeError { KernelModeError("port map '\(text)': \(why)") }
        let halves = text.split(separator: "-", omittingEmptySubsequences: false)
        guard halves.count == 2 else { throw bad("expected [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport") }
        let h = halves[0].split(separator: ":", omittingEmptySubsequences: false)
        let g = halves[1].split(separator: ":", omittingEmptySubsequences: false)
        guard h.count == 3, g.count == 2 else { throw bad("expected [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport") }
        let proto: ForwardProtocol? = h[0].isEmpty ? .tcp : ForwardProtocol(rawValue: String(h[0]))
        guard let proto else { throw bad("protocol must be tcp or udp") }
        var hostAddress = IPv4Address(0, 0, 0, 0)
        if !h[1].isEmpty {
            guard let a = IPv4Address(h[1]) else { throw bad("'\(h[1])' is not an IPv4 address") }
            hostAddress = a
        }
        guard let hp = UInt16(h[2]), hp > 0 else { throw bad("bad host port '\(h[2])'") }
        var guest = defaultGuest
        if !g[0].isEmpty {
            guard let a = IPv4Address(g[0]) else { throw bad("'\(g[0])' is not an IPv4 address") }
            guest = a
        }
        guard let gp = UInt16(g[1]), gp > 0 else { throw bad("bad guest port '\(g[1])'") }
        return HostForward(proto: proto, hostAddress: hostAddress, hostPort: hp, guestAddress: guest, guestPort: gp)
    }
}

public enum NftRuleset {
    public static func tableName(_ networkName: String) -> String { "vnet-" + networkName }

    /// The whole ruleset for a NAT network on `bridge` covering `network`. Port maps with an IPv6 or host-name
    /// target, or an IPv6 host address, have no IPv4 DNAT rule and are left out (the parser makes none).
    public static func render(networkName: String, bridge: String, network: IPv4Network, portMaps: [HostForward]) -> String {
        let portMaps = portMaps.compactMap { m -> (proto: ForwardProtocol, hostAddress: IPv4Address?, hostPort: UInt16, guestAddress: IPv4Address, guestPort: UInt16)? in
            guard let host = m.hostAddress.v4, let guest = m.guestAddress?.v4 else { return nil }
            return (m.proto, host.isUnspecified ? nil : host, m.hostPort, guest, m.guestPort)
        }
        let t = tableName(networkName)
        var s = "table ip \(t) {\n}\ndelete table ip \(t)\n"
        s += "table ip \(t) {\n"
        s += "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        s += "\t\tip saddr \(network) ip daddr != \(network) masquerade\n\t}\n"
        s += "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        for m in portMaps {
            let daddr = m.hostAddress.map { "ip daddr \($0) " } ?? ""
            s += "\t\tiifname != \"\(bridge)\" \(daddr)\(m.proto.rawValue) dport \(m.hostPort) dnat to \(m.guestAddress):\(m.guestPort)\n"
        }
        s += "\t}\n"
        s += "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n"
        for m in portMaps {
            let daddr = m.hostAddress.map { "ip daddr \($0)" } ?? "fib daddr type local"
            s += "\t\t\(daddr) \(m.proto.rawValue) dport \(m.hostPort) dnat to \(m.guestAddress):\(m.guestPort)\n"
        }
        s += "\t}\n}\n"
        return s
    }
}

/// The `nft` binary (from the nftables package).
public enum Nft {
    public static func binary() throws -> String {
        var dirs = (getenv("PATH").map { String(cString: $0) } ?? "").split(separator: ":").map(String.init)
        dirs += ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        for d in dirs where !d.isEmpty {
            let p = d + "/nft"
            if access(p, X_OK) == 0 { return p }
        }
        throw KernelModeError("the nft program is not installed (install the nftables package)")
    }

    /// Runs nft with `arguments`; returns its exit status (0 success).
    public static func run(_ arguments: [String], quiet: Bool = false) throws -> Int32 {
        let argv = [try binary()] + arguments
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArgs.append(nil)
        defer { for p in cArgs { free(p) } }
        let status = cArgs.withUnsafeBufferPointer { vnet_run_and_wait($0.baseAddress!, quiet ? 1 : 0) }
        if status < 0 { throw KernelModeError("nft could not be started: \(String(cString: strerror(-status)))") }
        return status
    }

    public static func load(file: String) throws {
        let s = try run(["-f", file])
        guard s == 0 else { throw KernelModeError("nft -f \(file) failed with exit status \(s)") }
    }

    public static func tableExists(_ table: String) throws -> Bool { try run(["list", "table", "ip", table], quiet: true) == 0 }

    public static func deleteTable(_ table: String) throws {
        guard try tableExists(table) else { return }
        let s = try run(["delete", "table", "ip", table])
        guard s == 0 else { throw KernelModeError("nft delete table ip \(table) failed with exit status \(s)") }
    }
}
