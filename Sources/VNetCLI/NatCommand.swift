// `vnet nat`: libvirt's default network, rootless: the switch of `vnet switch` plus the built-in gateway on
// 192.168.122.1/24 (DHCP range, static leases, persistent leases, DNS names for leases, NAT to host
// sockets, port maps to a VM by address or host name). Flags, or one YAML file (`--config`), or both: the
// file is read first, flags given on the command line override its scalars and add to its lists. With
// `--kernel` the same addressing flags drive the kernel NAT mode instead (KernelNatCommand.swift).

import ArgumentParser
import Foundation
import Logging
import VNetBuffers
import VNetGateway
import VNetRuntime
import VNetServices
import VNetSwitch
import VNetWire
import Yams

struct NatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nat",
        abstract: "A NAT network for several VMs (libvirt's default network, rootless): switch + DHCP + DNS + NAT + port maps.",
        discussion: """
        Defaults: network 192.168.122.0/24, gateway and DNS 192.168.122.1, DHCP 192.168.122.2-192.168.122.254, \
        leases kept in $XDG_STATE_HOME/vnet/NAME.leases (~/.local/state/vnet; /var/lib/vnet as root). Guest \
        traffic to the gateway address reaches host loopback. Port maps: [tcp|udp]:[HOSTADDR]:HOSTPORT-VM:GUESTPORT \
        where VM is an address or a lease host name. The config file (YAML) takes the same names as the long \
        flags, with lists for repeatable ones, e.g. 'static-lease: ["52:54:00:00:00:10,192.168.122.10,web"]'.
        """)

    @Option(name: .customLong("config"), help: "A YAML file with any of these settings (same names as the flags).")
    var configFile: String?

    @Option(name: .customLong("name"), help: "The network's name: default socket and lease file names (default 'default').")
    var name: String?

    @Option(name: .customLong("network"), help: "Subnet, CIDR (default 192.168.122.0/24).")
    var network: String?

    @Option(name: .customLong("gateway"), help: "The gateway's (and DNS's) address (default: the first host, .1).")
    var gateway: String?

    @Option(name: .customLong("dhcp-range"), help: "FIRST-LAST addresses handed out (default: .2 to the last host).")
    var dhcpRange: String?

    @Option(name: .customLong("lease-time"), help: "DHCP lease time in seconds (default 3600).")
    var leaseTime: UInt64?

    @Option(name: .customLong("static-lease"), help: "MAC,IP[,HOSTNAME]: a fixed address (inside the DHCP range). Repeatable.")
    var staticLeases: [String] = []

    @Option(name: .customLong("host"), help: "NAME=IP: an extra DNS name answered by the gateway. Repeatable.")
    var hosts: [String] = []

    @Option(name: .customLong("dns-record"), help: "'NAME TYPE VALUE': a DNS record the gateway answers (A, AAAA, TXT, or SRV 'PRIO WEIGHT PORT TARGET'). Repeatable.")
    var dnsRecords: [String] = []

    @Option(name: .customLong("port-map"), help: "[tcp|udp]:[HOSTADDR]:HOSTPORT-VM:GUESTPORT (VM: address or lease host name). Repeatable.")
    var portMaps: [String] = []

    @Option(name: .customLong("leases-file"), help: "Where leases persist across restarts.")
    var leasesFile: String?

    @Option(name: .customLong("domain"), help: "DNS domain given over DHCP; lease names also answer under it.")
    var domain: String?

    @Option(name: .customLong("ipv6-prefix"), help: "The IPv6 prefix advertised for SLAAC, PREFIX/LEN (default fec0::/64; gateway PREFIX::2, DNS PREFIX::3), or 'off'.")
    var ipv6Prefix: String?

    @Option(name: .customLong("dns-upstream"), help: "Forward DNS to ADDR:PORT instead of resolv.conf's servers.")
    var dnsUpstream: String?

    @Option(name: .customLong("resolv-conf"), help: "Read upstream DNS servers from this file (default /etc/resolv.conf).")
    var resolvConf: String?

    @Flag(name: .customLong("kernel"), help: "Kernel NAT mode (bridge + nftables + vnet's DHCP/DNS on the bridge); needs root.")
    var kernel = false

    @Option(name: .customLong("bridge"), help: "--kernel: the bridge (default vnet-NAME); created unless it exists.")
    var bridge: String?

    @Option(name: .customLong("state-dir"), help: "--kernel: where what was changed is recorded (default /run/vnet).")
    var stateDir: String?

    @Flag(name: .customLong("undo"), help: "--kernel: undo what a killed run of --name left behind, then exit.")
    var undo = false

    @Flag(name: .customLong("libvirt"), help: "Print the libvirt <interface> XML for each --listen (type='client') and --dgram HOST:PORT (type='udp') port.")
    var libvirt = false

    @OptionGroup var ports: SwitchPortFlags

    @OptionGroup var policy: GatewayPolicyFlags

    func run() throws {
        if kernel { return try runKernel() }
        if bridge != nil || stateDir != nil || undo { throw ValidationError("--bridge, --state-dir and --undo go with --kernel") }
        guard Logger.Level(rawValue: ports.logLevel) != nil else { throw ValidationError("--log-level: unknown level '\(ports.logLevel)'") }
        let file = try configFile.map(NatConfigFile.load) ?? NatConfigFile()
        var o = SwitchOptions()
        let netName = name ?? file.string("name") ?? "default"
        guard !netName.isEmpty, !netName.contains("/") else { throw ValidationError("--name must be a plain name") }
        var portFlags = ports
        let lists: [(String, WritableKeyPath<SwitchPortFlags, [String]>)] = [
            ("socket", \.sockets), ("listen", \.listens), ("connect", \.connects), ("dgram", \.dgrams), ("vfkit", \.vfkits), ("mcast", \.mcasts), ("tap", \.taps)]
        for (key, keyPath) in lists {
            portFlags[keyPath: keyPath] = try file.list(key) + portFlags[keyPath: keyPath]
        }
        if let m = try file.int("mtu"), ports.mtu == 1500 { portFlags.mtu = m }
        if portFlags.controlPath == nil { portFlags.controlPath = file.string("control") }
        var extra = try portFlags.apply(to: &o, defaultName: netName)
        if libvirt { extra += try LibvirtXML.lines(for: o.ports) }

        // Addressing.
        let netText = network ?? file.string("network") ?? "192.168.122.0/24"
        let cidr = netText.split(separator: "/").map(String.init)
        let parsedNet: IPv4Network? = cidr.count == 2 ? IPv4Address(cidr[0]).flatMap { a in
            Int(cidr[1]).flatMap { (8 ... 30).contains($0) ? IPv4Network(address: a, prefixLength: $0) : nil }
        } : nil
        guard let net = parsedNet, net.prefixLength <= 30 else { throw ValidationError("--network '\(netText)': expected a CIDR such as 192.168.122.0/24 (/8 to /30)") }
        let addressing = try KernelNatMode.addressing(network: net, gateway: gateway ?? file.string("gateway"),
                                                         dhcpRange: dhcpRange ?? file.string("dhcp-range"))

        var g = GatewayConfig()
        g.network = addressing.network
        g.gatewayAddress = addressing.gateway
        g.dnsAddress = addressing.gateway
        g.dhcpStart = addressing.dhcpFirst
        g.dhcpPoolSize = addressing.dhcpCount
        let fileLeaseTime = try file.uint("lease-time")
        g.leaseTime = .seconds(leaseTime ?? fileLeaseTime ?? 3600)
        g.domainName = domain ?? file.string("domain")
        g.mtu = o.mtu
        g.id = netName
        if let p = ipv6Prefix ?? file.string("ipv6-prefix") {
            if p == "off" {
                g.ipv6Enabled = false
            } else {
                let parts = p.split(separator: "/", omittingEmptySubsequences: false)
                guard parts.count == 2, let a = IPv6Address(parts[0]), let n = Int(parts[1]), (1 ... 126).contains(n),
                      IPv6Network(address: a, prefixLength: n).address == a, !a.isLinkLocal, !a.isMulticast, !a.isLoopback, !a.isUnspecified else {
                    throw ValidationError("--ipv6-prefix '\(p)': expected PREFIX/LEN (1-126, host bits zero) or off")
                }
                let net6 = IPv6Network(address: a, prefixLength: n)
                g.ipv6Prefix = net6
                g.ipv6GatewayAddress = net6.address(withInterface: 2)
                g.ipv6DNSAddress = net6.address(withInterface: 3)
            }
        }

        var statics: [DHCPStaticLease] = []
        for s in try file.list("static-lease") + staticLeases {
            let p = s.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard p.count == 2 || p.count == 3, let mac = MACAddress(p[0]), !mac.isMulticast, let a = IPv4Address(p[1]) else {
                throw ValidationError("--static-lease '\(s)': expected MAC,IP[,HOSTNAME]")
            }
            let (first, last) = (addressing.dhcpFirst, addressing.dhcpLast)
            guard (first.rawValue ... last.rawValue).contains(a.rawValue) else {
                throw ValidationError("--static-lease '\(s)': \(a) is outside the DHCP range \(first)-\(last)")
            }
            var host: String? = nil
            if p.count == 3 {
                guard let h = DHCPServer.cleanHostName(p[2]), h == p[2].lowercased() else {
                    throw ValidationError("--static-lease '\(s)': '\(p[2])' is not a valid host name (letters, digits, '-')")
                }
                host = h
            }
            guard !statics.contains(where: { $0.mac == mac || $0.address == a }) else {
                throw ValidationError("--static-lease '\(s)': that MAC or address is already bound")
            }
            statics.append(DHCPStaticLease(mac: mac, address: a, hostName: host))
        }
        g.staticLeases = statics
        try policy.apply(to: &g, extraDeny: try file.list("deny"), extraAllow: try file.list("allow"), extraLimits: try file.list("limit"))
        o.gateway = g

        for h in try file.list("host") + hosts {
            guard let eq = h.firstIndex(of: "="), let n = DHCPServer.cleanHostName(String(h[..<eq])),
                  let a = IPv4Address(String(h[h.index(after: eq)...])) else {
                throw ValidationError("--host '\(h)': expected NAME=IP")
            }
            o.staticNames[n] = a
        }
        var check = LocalDNSRecords()
        for r in try file.list("dns-record") + dnsRecords {
            let f = r.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true).map(String.init)
            guard f.count == 3, let type = LocalDNSType(name: f[1]) else {
                throw ValidationError("--dns-record '\(r)': expected 'NAME TYPE VALUE' with TYPE one of \(LocalDNSType.names)")
            }
            do { try check.add(name: f[0], type: type, value: f[2]) } catch { throw ValidationError("--dns-record '\(r)': \(error)") }
            o.dnsRecords.append((f[0], type, f[2]))
        }
        for m in try file.list("port-map") + portMaps {
            switch HostForward.parsePortMap(m) {
            case .success(let pm): o.portMaps.append(pm)
            case .failure(let e): throw ValidationError(e.description)
            }
        }
        if let u = dnsUpstream ?? file.string("dns-upstream") {
            guard let c = u.lastIndex(of: ":"), let p = UInt16(u[u.index(after: c)...]) else {
                throw ValidationError("--dns-upstream '\(u)': expected ADDR:PORT")
            }
            guard let a = IPAddress(text: u[..<c]) else {   // IPAddress(text:) takes IPv6 with or without brackets
                throw ValidationError("--dns-upstream '\(u)': '\(u[..<c])' is not an IP address (IPv6 in brackets: [::1]:53)")
            }
            o.dnsUpstream = (a.description, p)
        }
        o.resolvConfPath = resolvConf ?? file.string("resolv-conf") ?? "/etc/resolv.conf"
        o.leasesFile = try leasesFile ?? file.string("leases-file") ?? NatCommand.defaultLeasesFile(name: netName)

        let network = try portFlags.makeRuntime(o, extra: &extra)
        try portFlags.runNetwork(network, extra: extra)
    }

    func runKernel() throws {
        let unsupported: [(Bool, String)] = [(configFile != nil, "--config"), (!staticLeases.isEmpty, "--static-lease"), (!hosts.isEmpty, "--host"), (!dnsRecords.isEmpty, "--dns-record"), (!policy.isEmpty, "--deny/--allow/--limit"),
                                             (leasesFile != nil, "--leases-file"), (ports.hasPorts, "switch ports (--socket, --tap, ...)"), (ports.metricsAddress != nil, "--metrics"), (ports.pcapPath != nil, "--pcap")]
        if let (_, flag) = unsupported.first(where: { $0.0 }) { throw ValidationError("\(flag) is not available with --kernel") }
        try KernelNatMode(name: name ?? "default", bridge: bridge, network: network ?? "192.168.122.0/24", gateway: gateway,
                          dhcpRange: dhcpRange, leaseTime: leaseTime, domain: domain, portMaps: portMaps, dnsUpstream: dnsUpstream,
                          resolvConf: resolvConf ?? "/etc/resolv.conf", stateDir: stateDir ?? "/run/vnet", undo: undo,
                          controlPath: ports.controlPath).run()
    }

    /// $XDG_STATE_HOME/vnet/NAME.leases, ~/.local/state/vnet/NAME.leases, or /var/lib/vnet/NAME.leases as root.
    static func defaultLeasesFile(name: String) throws -> String {
        let env = ProcessInfo.processInfo.environment
        let dir: String
        if getuid() == 0 {
            dir = "/var/lib/vnet"
        } else if let x = env["XDG_STATE_HOME"], !x.isEmpty {
            dir = x + "/vnet"
        } else if let h = env["HOME"], !h.isEmpty {
            dir = h + "/.local/state/vnet"
        } else {
            dir = "/tmp/vnet-\(getuid())"
        }
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw ValidationError("cannot create \(dir) for the lease file: \(error.localizedDescription); pass --leases-file")
        }
        return dir + "/" + name + ".leases"
    }
}

/// The YAML config file of `vnet nat`: a mapping from flag names to values (lists for repeatable flags).
struct NatConfigFile {
    var values: [String: Any] = [:]
    var path = ""

    static let known: Set<String> = ["name", "network", "gateway", "dhcp-range", "lease-time", "static-lease", "host", "port-map",
                                     "leases-file", "domain", "ipv6-prefix", "dns-upstream", "resolv-conf", "mtu", "dns-record", "control", "deny", "allow", "limit",
                                     "socket", "listen", "connect", "dgram", "vfkit", "mcast", "tap"]

    static func load(_ path: String) throws -> NatConfigFile {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ValidationError("--config \(path): cannot read it") }
        let doc: Any?
        do {
            doc = try Yams.load(yaml: text)
        } catch {
            throw ValidationError("--config \(path): not valid YAML: \(String(describing: error).split(separator: "\n").first ?? "")")
        }
        guard let map = doc as? [String: Any] else { throw ValidationError("--config \(path): expected a mapping of settings") }
        if let unknown = map.keys.sorted().first(where: { !known.contains($0) }) {
            throw ValidationError("--config \(path): unknown setting '\(unknown)' (known: \(known.sorted().joined(separator: ", ")))")
        }
        return NatConfigFile(values: map, path: path)
    }

    func string(_ key: String) -> String? {
        guard let v = values[key] else { return nil }
        return "\(v)"
    }

    func int(_ key: String) throws -> Int? {
        guard let v = values[key] else { return nil }
        guard let i = v as? Int else { throw ValidationError("--config \(path): '\(key)' must be a number") }
        return i
    }

    func uint(_ key: String) throws -> UInt64? {
        guard let i = try int(key) else { return nil }
        guard i >= 0 else { throw ValidationError("--config \(path): '\(key)' must not be negative") }
        return UInt64(i)
    }

    func list(_ key: String) throws -> [String] {
        guard let v = values[key] else { return [] }
        if let l = v as? [Any] { return l.map { "\($0)" } }
        return ["\(v)"]
    }
}
