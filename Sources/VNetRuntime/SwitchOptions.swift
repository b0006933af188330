// What `vnet switch` and `vnet nat` were asked to do, after argument and config-file parsing.

import VNetBuffers
import VNetGateway
import VNetServices
import VNetSwitch
import VNetWire

/// One way peers join the switch. Listeners and hubs make a switch port per peer; the others are one port.
public enum SwitchEndpoint: Equatable, Sendable, CustomStringConvertible {
    /// QEMU stream clients on a unix socket (mode 0600): one port per connection.
    case unixListen(path: String)
    /// QEMU stream (or `-netdev socket,connect=`) clients on TCP: one port per connection.
    case tcpListen(host: String, port: UInt16)
    /// A QEMU that listens (`server=on`): vnet connects and reconnects; one port.
    case connectUnix(path: String)
    case connectTCP(host: String, port: UInt16)
    /// Datagram peers (`-netdev dgram`), one port per peer address, learned from its first datagram.
    case dgramUnix(path: String)
    case dgramUDP(host: String, port: UInt16)
    /// A `-netdev socket,mcast=GROUP:PORT,localaddr=ADDR` group: one port for the whole group.
    case mcast(group: String, port: UInt16, localAddress: String)
    /// A TAP device created inside a network namespace.
    case tap(netns: String, name: String)
    /// vfkit/krunkit peers on a unixgram socket: each announces itself with a 4-byte "VFKT" datagram, then
    /// sends one frame per datagram; one port per peer address.
    case vfkitUnix(path: String)
    /// A transport with a protocol of its own (vhost-user, VXLAN): one port, opened by its factory.
    case transport(PluggedTransport)

    public var description: String {
        switch self {
        case .unixListen(let p): "unix:\(p)"
        case .tcpListen(let h, let p): "tcp:\(h):\(p)"
        case .connectUnix(let p): "connect unix:\(p)"
        case .connectTCP(let h, let p): "connect tcp:\(h):\(p)"
        case .dgramUnix(let p): "dgram unix:\(p)"
        case .dgramUDP(let h, let p): "dgram udp:\(h):\(p)"
        case .mcast(let g, let p, let l): "mcast \(g):\(p) localaddr \(l)"
        case .tap(let ns, let n): "tap \(n) in netns \(ns)"
        case .vfkitUnix(let p): "vfkit unixgram:\(p)"
        case .transport(let t): t.description
        }
    }
}

public struct SwitchPortSpec: Equatable, Sendable {
    public var endpoint: SwitchEndpoint
    public var vlan: VLANPolicy
    public init(endpoint: SwitchEndpoint, vlan: VLANPolicy = .access(VLANPolicy.defaultVLAN)) {
        self.endpoint = endpoint
        self.vlan = vlan
    }
}

/// A port map of `vnet nat`: a `HostForward` whose target is a VM chosen by address or by its lease host name.
extension HostForward {
    /// Parses `[tcp|udp]:[HOSTADDR]:HOSTPORT-VM:GUESTPORT`, VM being an address or a lease host name.
    public static func parsePortMap(_ text: String) -> Result<HostForward, SwitchOptionError> {
        let bad = SwitchOptionError("port map '\(text)': expected [tcp|udp]:[HOSTADDR]:HOSTPORT-VM:GUESTPORT (VM: an address or a host name; IPv6 in brackets)")
        if text.hasPrefix("unix:") { return parseUnix(text) }
        guard let d = UserNetOptions.sideSeparator(text) else { return .failure(bad) }
        let left = text[..<d]
        guard left.hasPrefix("tcp:") || left.hasPrefix("udp:") || left.hasPrefix(":") else { return .failure(bad) }
        let parsedLeft: (ForwardProtocol, IPAddress?, Substring)
        let right = text[text.index(after: d)...]
        do {
            let (proto, rest) = try UserNetOptions.splitProtocol("port map", left)
            let (address, port) = try UserNetOptions.splitAddressPort("port map", rest)
            parsedLeft = (proto, address, port)
        } catch { return .failure(bad) }
        // As hostfwd: an empty host address is every IPv4 address.
        let (proto, hostAddress, hostPortText) = (parsedLeft.0, parsedLeft.1 ?? IPAddress(IPv4Address(0, 0, 0, 0)), parsedLeft.2)
        guard let hp = UInt16(hostPortText), hp > 0 else { return .failure(bad) }
        let target: ForwardTarget
        let gp: UInt16
        if right.hasPrefix("[") {
            guard let (a, portText) = try? UserNetOptions.splitAddressPort("port map", right), let addr = a,
                  let p = UInt16(portText), p > 0 else { return .failure(bad) }
            target = .address(addr)
            gp = p
        } else {
            let parts = right.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, let p = UInt16(parts[1]), p > 0, !parts[0].isEmpty else { return .failure(bad) }
            gp = p
            if let a = IPv4Address(parts[0]) {
                target = .address(IPAddress(a))
            } else {
                guard let n = DHCPServer.cleanHostName(parts[0]), n == parts[0].lowercased() else { return .failure(bad) }
                target = .hostName(n)
            }
        }
        return .success(HostForward(proto: proto, hostAddress: hostAddress, hostPort: hp, target: target, guestPort: gp))
    }
}

public struct SwitchOptionError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ d: String) { description = d }
}

public struct SwitchOptions: Sendable {
    public var ports: [SwitchPortSpec] = []
    public var maximumPorts = 64
    public var macQuotaPerPort = 256
    public var fdbCapacity = 8192
    public var ageingSeconds: UInt64 = 300
    public var mtu = 1500
    /// `.tap` ports: open them with IFF_VNET_HDR and checksum/TSO offload (on unless --no-tap-offload). The
    /// switch finishes offloaded frames in software for ports without offload.
    public var tapOffload = true
    /// `--busy-poll USEC`: keep polling that long after a turn with events before sleeping (0: off).
    public var busyPollMicroseconds = 0
    /// `vnet nat`: the built-in gateway (DHCP, DNS, NAT) on the segment, and where it sits.
    public var gateway: GatewayConfig? = nil
    public var gatewayVLAN: UInt16 = VLANPolicy.defaultVLAN
    public var portMaps: [HostForward] = []
    /// Static records the gateway's DNS answers (`--dns-record`), before lease names.
    public var dnsRecords: [(name: String, type: LocalDNSType, value: String)] = []
    /// Extra names the gateway's DNS answers (beside lease host names, which they override).
    public var staticNames: [String: IPv4Address] = [:]
    /// Where DHCP leases persist across restarts (nil: not kept).
    public var leasesFile: String? = nil
    public var resolvConfPath = "/etc/resolv.conf"
    public var dnsUpstream: (address: String, port: UInt16)? = nil
    /// Capture every frame entering the switch to this file (`--pcap`).
    public var pcapPath: String? = nil
    /// `--metrics [ADDR:]PORT`: the Prometheus endpoint (the executable installs the renderer).
    public var metrics: MetricsOptions? = nil
    /// The control socket (`--control`), mode 0600.
    public var controlPath: String? = nil
    /// `--sandbox` (`vnet switch`): drop capabilities and install the seccomp filter after set-up (VNetHost/Sandbox.swift).
    public var sandbox = false
    /// Paths vnet chose itself (printed with QEMU arguments).
    public var socketIsDefault = false
    /// Block SIGINT/SIGTERM/SIGHUP/SIGUSR1 and read them on the loop (the CLI). An embedder handles its own.
    public var handleSignals = true
    /// With `handleSignals`: leave SIGINT and SIGTERM to someone else (the CLI's ServiceGroup), read only
    /// SIGHUP (re-read resolv.conf) and SIGUSR1 (print the counters) on the loop.
    public var stopSignalsElsewhere = false
    /// Print the start-up lines on stdout and the counters on stderr at exit (the CLI).
    public var announce = true

    public init() {}
}

extension SwitchPortSpec {
    /// Parses one port flag's value: `ADDRESS[,vlan=N | ,trunk=A:B-C[,native=N]]` plus, for `--mcast`,
    /// `localaddr=IP` and, for `--tap`, `netns=PATH|PID`. `flag` is the flag name without dashes.
    public static func parse(flag: String, _ value: String) -> Result<SwitchPortSpec, SwitchOptionError> {
        var parts = value.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let address = parts.first, !address.isEmpty else { return .failure(SwitchOptionError("--\(flag) '\(value)': no address")) }
        parts.removeFirst()
        var kv: [String: String] = [:]
        for p in parts {
            guard let eq = p.firstIndex(of: "="), !p[..<eq].isEmpty else {
                return .failure(SwitchOptionError("--\(flag) '\(value)': expected key=value after the address, got '\(p)'"))
            }
            let k = String(p[..<eq])
            guard kv[k] == nil else { return .failure(SwitchOptionError("--\(flag) '\(value)': '\(k)' given twice")) }
            kv[k] = String(p[p.index(after: eq)...])
        }
        let known: Set<String> = flag == "mcast" ? ["vlan", "trunk", "native", "localaddr"]
                               : flag == "tap" ? ["vlan", "trunk", "native", "netns"] : ["vlan", "trunk", "native"]
        if let unknown = kv.keys.sorted().first(where: { !known.contains($0) }) {
            return .failure(SwitchOptionError("--\(flag) '\(value)': unknown option '\(unknown)' (known: \(known.sorted().joined(separator: ", ")))"))
        }
        let policy: VLANPolicy
        switch VLANPolicy.parse(access: kv["vlan"], trunk: kv["trunk"], native: kv["native"]) {
        case .success(let p): policy = p
        case .failure(let e): return .failure(SwitchOptionError("--\(flag) '\(value)': \(e)"))
        }
        func hostPort(_ s: String) -> (String, UInt16)? {
            guard let c = s.lastIndex(of: ":"), let p = UInt16(s[s.index(after: c)...]) else { return nil }
            let h = String(s[..<c])
            return (h.isEmpty ? "127.0.0.1" : h, p)
        }
        let endpoint: SwitchEndpoint
        switch flag {
        case "socket":
            endpoint = .unixListen(path: address)
        case "listen":
            guard let (h, p) = hostPort(address) else { return .failure(SwitchOptionError("--listen '\(address)': expected HOST:PORT")) }
            endpoint = .tcpListen(host: h, port: p)
        case "connect":
            if address.hasPrefix("unix:") {
                endpoint = .connectUnix(path: String(address.dropFirst(5)))
            } else {
                guard let (h, p) = hostPort(address), p > 0 else { return .failure(SwitchOptionError("--connect '\(address)': expected unix:PATH or HOST:PORT")) }
                endpoint = .connectTCP(host: h, port: p)
            }
        case "dgram":
            if address.hasPrefix("unix:") || address.contains("/") {
                endpoint = .dgramUnix(path: address.hasPrefix("unix:") ? String(address.dropFirst(5)) : address)
            } else {
                guard let (h, p) = hostPort(address) else { return .failure(SwitchOptionError("--dgram '\(address)': expected PATH or HOST:PORT")) }
                endpoint = .dgramUDP(host: h, port: p)
            }
        case "mcast":
            guard let (g, p) = hostPort(address), p > 0 else { return .failure(SwitchOptionError("--mcast '\(address)': expected GROUP:PORT")) }
            endpoint = .mcast(group: g, port: p, localAddress: kv["localaddr"] ?? "127.0.0.1")
        case "vfkit":
            endpoint = .vfkitUnix(path: address.hasPrefix("unixgram:") ? String(address.dropFirst(9)) : address)
        case "tap":
            guard let ns = kv["netns"], !ns.isEmpty else { return .failure(SwitchOptionError("--tap '\(value)': netns=PATH|PID is required")) }
            guard address.utf8.count < 16 else { return .failure(SwitchOptionError("--tap '\(address)': interface names have at most 15 bytes")) }
            endpoint = .tap(netns: ns, name: address)
        default:
            return .failure(SwitchOptionError("unknown port kind --\(flag)"))
        }
        return .success(SwitchPortSpec(endpoint: endpoint, vlan: policy))
    }
}
