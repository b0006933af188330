// `vnet nat --kernel`: a NAT network made of kernel parts (libvirt's "default" network without dnsmasq):
// a bridge with the gateway address, vnet's DHCP and DNS forwarding on it, IP forwarding, and an nftables
// table with masquerade and port maps. Everything is undone on SIGINT/SIGTERM/SIGHUP; `--undo` undoes what
// a killed run left behind.

import ArgumentParser
import CVNetShim
import VNetKernel
import VNetRuntime
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

struct NatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nat",
        abstract: "Run a NAT network for guests (--kernel: a bridge, nftables masquerade and port maps, vnet's DHCP/DNS).")

    @Flag(name: .customLong("kernel"), help: "Use the kernel's bridge, forwarding and nftables.") var kernel = false
    @Option(name: .customLong("name"), help: "The network's name (nft table vnet-NAME, state file nat-NAME.state).") var name: String = "nat0"
    @Option(name: .customLong("bridge"), help: "The bridge (default vnet-NAME); created unless it exists.") var bridge: String?
    @Option(name: .customLong("net"), help: "The network, ADDRESS/PREFIX.") var net: String = "10.0.3.0/24"
    @Option(name: .customLong("gateway"), help: "The gateway address on the bridge (default: the network's first address).") var gateway: String?
    @Option(name: .customLong("dhcp-start"), help: "The first DHCP address (default: the network's 15th address).") var dhcpStart: String?
    @Option(name: .customLong("dhcp-count"), help: "How many addresses DHCP hands out.") var dhcpCount: Int = 64
    @Option(name: .customLong("hostfwd"), help: "A port map, QEMU's syntax: [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport (repeatable).")
    var hostfwd: [String] = []
    @Option(name: .customLong("dns-upstream"), help: "Forward DNS to ADDR:PORT instead of resolv.conf's first server.") var dnsUpstream: String?
    @Option(name: .customLong("resolv-conf"), help: "Read the upstream DNS server from this file.") var resolvConf: String = "/etc/resolv.conf"
    @Option(name: .customLong("state-dir"), help: "Where what was changed is recorded.") var stateDir: String = "/run/vnet"
    @Flag(name: .customLong("undo"), help: "Undo what a killed run of --name left behind, then exit.") var undo = false

    func makeConfig() throws -> KernelNatConfig {
        guard name.count <= 24, !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
            throw ValidationError("--name must be 1-24 letters, digits or '_'")
        }
        let br = bridge ?? "vnet-" + name
        do { try validateInterfaceName(br) } catch { throw ValidationError("--bridge: \(error)") }
        let (addr, prefix) = try parseCIDR(net)
        guard (8 ... 30).contains(prefix) else { throw ValidationError("--net: the prefix must be 8-30") }
        let network = IPv4Network(address: addr, prefixLength: prefix)
        func address(_ text: String?, _ flag: String, default offset: UInt32) throws -> IPv4Address {
            guard let t = text else { return IPv4Address(rawValue: network.address.rawValue + offset) }
            guard let a = IPv4Address(t), network.contains(a), a != network.address, a != network.broadcast else {
                throw ValidationError("\(flag): '\(t)' is not a host address in \(network)")
            }
            return a
        }
        let gw = try address(gateway, "--gateway", default: 1)
        let start = try address(dhcpStart, "--dhcp-start", default: prefix <= 27 ? 15 : 2)
        guard (1 ... 65536).contains(dhcpCount), UInt64(start.rawValue) + UInt64(dhcpCount) - 1 < UInt64(network.broadcast.rawValue) else {
            throw ValidationError("--dhcp-count: \(dhcpCount) addresses from \(start) do not fit in \(network)")
        }
        if gw.rawValue >= start.rawValue && UInt64(gw.rawValue) < UInt64(start.rawValue) + UInt64(dhcpCount) {
            throw ValidationError("the gateway \(gw) is inside the DHCP range")
        }
        var maps: [PortMap] = []
        for f in hostfwd {
            do { maps.append(try PortMap.parse(f, defaultGuest: start)) } catch { throw ValidationError("--hostfwd: \(error)") }
        }
        return KernelNatConfig(name: name, bridge: br, network: network, gateway: gw, dhcpStart: start, dhcpCount: dhcpCount,
                               portMaps: maps, stateDirectory: stateDir)
    }

    func upstream() throws -> (IPv4Address, UInt16)? {
        if let u = dnsUpstream {
            guard let colon = u.lastIndex(of: ":"), let a = IPv4Address(u[..<colon]), let p = UInt16(u[u.index(after: colon)...]) else {
                throw ValidationError("--dns-upstream: expected ADDR:PORT, got '\(u)'")
            }
            return (a, p)
        }
        guard let text = readSmallFile(resolvConf), let first = ResolvConf.parse(text).first else { return nil }
        return (first, 53)
    }

    func run() throws {
        guard kernel else { fail("the userspace nat mode is not in this build yet; use --kernel", code: 2) }
        let config = try makeConfig()
        let log: (String) -> Void = { line in print(line); fflush(nil) }
        if undo {
            do { try kernelCall { try KernelNat.recoverStale(config, log: log) } } catch let e as KernelNat.AlreadyRunning { fail(e.description, code: 1) }
            print("vnet: nothing left of \(config.name)")
            return
        }
        let dns = try upstream()
        let sfd = vnet_stop_signalfd()
        guard sfd >= 0 else { fail("signalfd: \(String(cString: strerror(-sfd)))", code: 1) }
        let nat = KernelNat(config: config, log: log)
        try kernelCall {
            do {
                try nat.setUp()
            } catch let e as KernelNat.AlreadyRunning {
                fail(e.description, code: 1)
            } catch {
                try? nat.tearDown()
                throw error
            }
            let dhcpConfig = DHCPConfig(network: config.network, serverAddress: config.gateway, router: config.gateway,
                                        dnsServers: dns == nil ? [] : [config.gateway], poolStart: config.dhcpStart,
                                        poolSize: config.dhcpCount, mtu: 1500)
            let services: KernelNatServices
            do {
                services = try KernelNatServices(bridge: config.bridge, dhcpConfig: dhcpConfig, gateway: config.gateway, dnsUpstream: dns)
            } catch {
                try? nat.tearDown()
                throw error
            }
            print("vnet: nat \(config.name): bridge \(config.bridge), gateway \(config.gateway)/\(config.network.prefixLength), "
                  + "DHCP \(config.dhcpStart) (+\(config.dhcpCount - 1)), DNS \(dns.map { "via \($0.0):\($0.1)" } ?? "off (no upstream)")")
            for m in config.portMaps { print("vnet: hostfwd \(m)") }
            print("vnet: start QEMU with: -netdev bridge,id=n0,br=\(config.bridge),helper=\"vnet tap-helper\" -device virtio-net-pci,netdev=n0")
            print("vnet: ready")
            fflush(nil)
            let sig = services.run(signalFD: sfd)
            let c = services.counters
            print("vnet: stopping (signal \(sig)); dhcp replies \(c.dhcpReplies) dropped \(c.dhcpDropped), dns forwarded \(c.dnsForwarded) "
                  + "answered \(c.dnsAnswered) dropped \(c.dnsDropped)")
            try nat.tearDown()
            print("vnet: removed what \(config.name) added")
            fflush(nil)
        }
    }
}
