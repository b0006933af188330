// `vnet slirp4netns ARGS…`, or vnet run as `slirp4netns` (a symlink or a copy): slirp4netns 1.2.0's command line,
// mapped onto `vnet user` with a TAP, so rootlesskit and podman can start vnet where they start slirp4netns.
//
// Theory of operation: the arguments are parsed as slirp4netns parses them (getopt_long: short options may be
// glued, `--long=value` or `--long value`, unique prefixes of long names, options and operands in any order).
// Each flag keeps slirp4netns's meaning and default and becomes a `vnet user` setting: --cidr is `net=`,
// --enable-ipv6 turns on fd00::/64 (gateway fd00::2, DNS fd00::3) as slirp4netns has it, --disable-host-loopback is
// --no-map-host-loopback, --enable-sandbox/--enable-seccomp are --sandbox. A flag vnet cannot honour is refused by
// name. The TAP is opened by a forked child that joins the caller's user namespace and the network namespace
// (NamespaceTap.swift); with --configure it gets 10.0.2.100 (the CIDR's .100), the MTU, the default route and
// --macaddress. Then the runtime starts, the API socket (--api-socket) serves on its loop, "1" goes to --ready-fd,
// and the loop ends when --exit-fd becomes readable or hangs up.
// Settings the caller's command line cannot carry come from the config file named by VNET_SLIRP4NETNS_CONFIG: one
// `vnet user` long flag per line without its dashes (`dns-upstream 127.0.0.1:53`, `no-tap-offload`, `limit
// tcp-flows=100`…), from an allow-list.

import ArgumentParser
import Foundation
import Logging
import VNetGateway
import VNetRuntime
import VNetWire

enum Slirp4netnsCommand {
    static let emulatedVersion = "1.2.0"
    static let configEnvironment = "VNET_SLIRP4NETNS_CONFIG"

    static let helpText = """
    Usage: slirp4netns [OPTION]... PID|PATH [TAPNAME]
    User-mode networking for unprivileged network namespaces (vnet's implementation of slirp4netns \(emulatedVersion)).

    -c, --configure          bring up the interface
    -e, --exit-fd=FD         specify the FD for terminating slirp4netns
    -r, --ready-fd=FD        specify the FD to write to when the network is configured
    -m, --mtu=MTU            specify MTU (default=1500, max=65520)
    -6, --enable-ipv6        enable IPv6
    -a, --api-socket=PATH    specify API socket path
    --cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)
    --disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
    --netns-type=TYPE        specify network namespace type ([path|pid], default=pid)
    --userns-path=PATH       specify user namespace path
    --enable-sandbox         confine vnet after set-up (vnet's --sandbox: capabilities dropped, seccomp)
    --enable-seccomp         enable seccomp to limit syscalls (vnet's --sandbox)
    --outbound-addr=IPv4     sets outbound ipv4 address to bound to (refused by vnet)
    --outbound-addr6=IPv6    sets outbound ipv6 address to bound to (refused by vnet)
    --disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns redirect (refused by vnet)
    --macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
    --target-type=TYPE       specify the target type ([netns|bess], default=netns; bess is refused by vnet)
    -h, --help               show this help and exit
    -v, --version            show version and exit

    vnet settings the command line cannot carry: a file named by \(configEnvironment), one `vnet user` flag per
    line without dashes: \(configKeys.keys.sorted().joined(separator: ", ")).

    """

    static var versionText: String {
        """
        slirp4netns version \(emulatedVersion) (vnet)
        commit: vnet
        libslirp: none (vnet's own user-mode network)
        SLIRP_CONFIG_VERSION_MAX: 4

        """
    }

    /// Config-file keys, each a `vnet user` long flag; true when it takes a value.
    static let configKeys: [String: Bool] = [
        "dns-upstream": true, "resolv-conf": true, "no-tap-offload": false, "limit": true, "deny": true, "allow": true,
        "allow-link-local": false, "log-level": true, "control": true, "pcap": true, "metrics": true,
    ]

    /// What the command line asked for, in slirp4netns's terms.
    struct Parsed: Equatable {
        var configure = false
        var exitFD: Int32? = nil
        var readyFD: Int32? = nil
        var mtu = 1500
        var enableIPv6 = false
        var apiSocket: String? = nil
        var cidr = "10.0.2.0/24"
        var disableHostLoopback = false
        var netnsType = "pid"
        var usernsPath: String? = nil
        var sandbox = false
        var macAddress: String? = nil
        var target = ""
        var tapName = "tap0"
        var help = false
        var version = false
    }

    enum Spec { case flag, value }
    static let longOptions: [(String, Character?, Spec)] = [
        ("configure", "c", .flag), ("exit-fd", "e", .value), ("ready-fd", "r", .value), ("mtu", "m", .value),
        ("enable-ipv6", "6", .flag), ("api-socket", "a", .value), ("cidr", nil, .value), ("disable-host-loopback", nil, .flag),
        ("netns-type", nil, .value), ("userns-path", nil, .value), ("enable-sandbox", nil, .flag), ("enable-seccomp", nil, .flag),
        ("outbound-addr", nil, .value), ("outbound-addr6", nil, .value), ("disable-dns", nil, .flag), ("macaddress", nil, .value),
        ("target-type", nil, .value), ("help", "h", .flag), ("version", "v", .flag),
    ]

    /// getopt_long over slirp4netns's options.
    static func parse(_ args: [String]) throws -> Parsed {
        var p = Parsed()
        var operands: [String] = []
        var i = 0
        func take(_ name: String, _ glued: String?) throws -> String {
            if let g = glued { return g }
            i += 1
            guard i < args.count else { throw ValidationError("option '--\(name)' requires an argument") }
            return args[i]
        }
        while i < args.count {
            let a = args[i]
            if a == "--" { operands += args[(i + 1)...]; break }
            if a.hasPrefix("--") {
                let body = a.dropFirst(2)
                let name = String(body.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0])
                let glued = body.contains("=") ? String(body[body.index(after: body.firstIndex(of: "=")!)...]) : nil
                let exact = longOptions.first { $0.0 == name }
                let prefixed = longOptions.filter { $0.0.hasPrefix(name) }
                guard let opt = exact ?? (prefixed.count == 1 ? prefixed[0] : nil), !name.isEmpty else {
                    throw ValidationError(prefixed.count > 1 ? "option '--\(name)' is ambiguous" : "unrecognized option '--\(name)'")
                }
                if opt.2 == .flag, glued != nil { throw ValidationError("option '--\(opt.0)' doesn't allow an argument") }
                try apply(opt.0, opt.2 == .value ? take(opt.0, glued) : nil, to: &p)
            } else if a.hasPrefix("-"), a.count > 1 {
                var rest = Substring(a.dropFirst())
                while let c = rest.first {
                    rest = rest.dropFirst()
                    guard let opt = longOptions.first(where: { $0.1 == c }) else { throw ValidationError("invalid option -- '\(c)'") }
                    if opt.2 == .value {
                        try apply(opt.0, take(opt.0, rest.isEmpty ? nil : String(rest)), to: &p)
                        break
                    }
                    try apply(opt.0, nil, to: &p)
                }
            } else {
                operands.append(a)
            }
            i += 1
        }
        if p.help || p.version { return p }
        guard !operands.isEmpty else { throw ValidationError("missing PID|PATH (see slirp4netns --help)") }
        guard operands.count <= 2 else { throw ValidationError("too many arguments: \(operands.joined(separator: " "))") }
        p.target = operands[0]
        if operands.count == 2 { p.tapName = operands[1] }
        if p.netnsType == "pid" {
            guard let pid = Int32(p.target), pid > 0 else { throw ValidationError("PID must be a positive number with --netns-type=pid, got '\(p.target)'") }
            _ = pid
        }
        if p.macAddress != nil && !p.configure { throw ValidationError("--macaddress can only be used with -c") }
        return p
    }

    static func fd(_ name: String, _ v: String) throws -> Int32 {
        guard let n = Int32(v), n >= 0 else { throw ValidationError("--\(name): '\(v)' is not a file descriptor") }
        return n
    }

    static func apply(_ name: String, _ value: String?, to p: inout Parsed) throws {
        let v = value ?? ""
        switch name {
        case "configure": p.configure = true
        case "exit-fd": p.exitFD = try fd(name, v)
        case "ready-fd": p.readyFD = try fd(name, v)
        case "mtu":
            guard let m = Int(v), m > 0, m <= 65521 else { throw ValidationError("MTU must be a positive integer (< 65522)") }
            guard m <= GatewayConfig.maximumMTU, m >= GatewayConfig.minimumMTU else {
                throw ValidationError("--mtu \(m): vnet supports \(GatewayConfig.minimumMTU) to \(GatewayConfig.maximumMTU)")
            }
            p.mtu = m
        case "enable-ipv6": p.enableIPv6 = true
        case "api-socket":
            guard !v.isEmpty else { throw ValidationError("--api-socket needs a path") }
            p.apiSocket = v
        case "cidr": p.cidr = v
        case "disable-host-loopback": p.disableHostLoopback = true
        case "netns-type":
            guard v == "pid" || v == "path" else { throw ValidationError("--netns-type must be pid or path, got '\(v)'") }
            p.netnsType = v
        case "userns-path": p.usernsPath = v
        case "enable-sandbox", "enable-seccomp": p.sandbox = true
        case "outbound-addr", "outbound-addr6":
            throw ValidationError("--\(name) is not supported by vnet (outbound connections use the host's routing)")
        case "disable-dns":
            throw ValidationError("--disable-dns is not supported by vnet (the DNS forwarder at the CIDR's .3 is always on)")
        case "macaddress":
            guard MACAddress(v) != nil else { throw ValidationError("--macaddress: '\(v)' is not a MAC address") }
            p.macAddress = v
        case "target-type":
            guard v == "netns" else {
                throw ValidationError(v == "bess" ? "--target-type=bess is not supported by vnet" : "--target-type must be netns or bess, got '\(v)'")
            }
        case "help": p.help = true
        case "version": p.version = true
        default: throw ValidationError("unrecognized option '--\(name)'")
        }
    }

    /// The network of --cidr, checked as slirp4netns checks it (prefix 1-25), host bits cleared.
    static func network(_ cidr: String) throws -> IPv4Network {
        let parts = cidr.split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2, let a = IPv4Address(parts[0]), let len = Int(parts[1]) else {
            throw ValidationError("--cidr: '\(cidr)' is not A.B.C.D/N")
        }
        guard (1 ... 25).contains(len) else { throw ValidationError("--cidr: prefix length must be 1 to 25, got \(len)") }
        let mask: UInt32 = ~UInt32(0) << UInt32(32 - len)
        return IPv4Network(address: IPv4Address(rawValue: a.rawValue & mask), prefixLength: len)
    }

    /// The config file's lines as `vnet user` flags.
    static func configFlags(path: String) throws -> [String] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ValidationError("\(configEnvironment): cannot read \(path)")
        }
        var flags: [String] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let parts = line.split(separator: " ", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard let takesValue = configKeys[parts[0]] else {
                throw ValidationError("\(path):\(n + 1): unknown setting '\(parts[0])' (one of \(configKeys.keys.sorted().joined(separator: ", ")))")
            }
            guard takesValue == (parts.count == 2 && !parts[1].isEmpty) else {
                throw ValidationError("\(path):\(n + 1): '\(parts[0])' \(takesValue ? "needs a value" : "takes no value")")
            }
            flags.append("--" + parts[0])
            if takesValue { flags.append(parts[1]) }
        }
        return flags
    }

    static func run(_ args: [String]) throws {
        let p = try parse(args)
        if p.help { FileHandle.standardOutput.write(Data(helpText.utf8)); return }
        if p.version { FileHandle.standardOutput.write(Data(versionText.utf8)); return }
        let net = try network(p.cidr)
        let base = net.address.rawValue
        let guestAddress = IPv4Address(rawValue: base + 100)
        let gatewayAddress = IPv4Address(rawValue: base + 2)
        let netnsPath = p.netnsType == "pid" ? "/proc/\(p.target)/ns/net" : p.target
        let usernsPath = p.usernsPath ?? (p.netnsType == "pid" ? "/proc/\(p.target)/ns/user" : "")

        var userArgs = ["net=\(net.address)/\(net.prefixLength)" + (p.enableIPv6 ? ",ipv6-net=fd00::/64" : ",ipv6=off"),
                        "--tap", p.tapName, "--netns", netnsPath, "--mtu", String(p.mtu)]
        if p.disableHostLoopback { userArgs.append("--no-map-host-loopback") }
        if p.sandbox { userArgs.append("--sandbox") }
        if let c = ProcessInfo.processInfo.environment[configEnvironment], !c.isEmpty { userArgs += try configFlags(path: c) }
        let user: UserCommand
        do { user = try UserCommand.parse(userArgs) } catch { throw ValidationError(UserCommand.message(for: error)) }
        var (options, extra) = try user.makeOptions()
        let tap = NamespaceTap(userNamespacePath: usernsPath, networkNamespacePath: netnsPath, name: p.tapName,
                               offload: options.tapOffload, configure: p.configure, mtu: p.mtu,
                               mac: p.macAddress.flatMap(MACAddress.init), address: guestAddress,
                               prefixLength: net.prefixLength, gateway: gatewayAddress)
        let tapMAC = TapMACBox()
        options.openTap = {
            let (fd, mac, offload) = try tap.open()
            tapMAC.mac = mac
            tapMAC.offload = offload
            return (fd, offload)
        }
        extra.append("vnet: slirp4netns \(emulatedVersion) command line: tap \(p.tapName) in \(netnsPath)"
                     + (usernsPath.isEmpty ? "" : " (user namespace \(usernsPath))")
                     + (p.configure ? ", configured \(guestAddress)/\(net.prefixLength) via \(gatewayAddress)" : ""))
        let runtime: UserNetRuntime
        do {
            (runtime, extra) = try user.startRuntime(options, extra: extra)
        } catch let e as ValidationError {
            throw e
        } catch {
            throw ValidationError("\(error)")
        }
        // The namespace may stay silent until a forwarded connection arrives (rootlesskit's --port-driver): hostfwd
        // must know the guest's MAC before its first frame, as libslirp finds it by ARP.
        if let m = tapMAC.mac, m != .zero { runtime.gateway.knowGuest(guestAddress, mac: m) }
        extra.append(tapMAC.offload ? "vnet: tap offload on (virtio-net headers, checksum and TSO)"
                     : options.tapOffload ? "vnet: tap offload off: the device refused IFF_VNET_HDR or TUNSETOFFLOAD"
                     : "vnet: tap offload off (no-tap-offload)")
        var api: Slirp4netnsAPIServer? = nil
        if let path = p.apiSocket {
            api = try Slirp4netnsAPIServer(runtime: runtime, path: path, defaultGuestAddress: guestAddress)
            extra.append("vnet: slirp4netns API socket \(path)")
        }
        if let e = p.exitFD {
            guard fcntl(e, F_GETFD) >= 0 else { throw ValidationError("--exit-fd \(e) is not open") }
            try runtime.stopWhenReadable(e)
        }
        if let r = p.readyFD {
            var one: UInt8 = UInt8(ascii: "1")
            guard write(r, &one, 1) == 1 else { throw ValidationError("--ready-fd \(r): \(String(cString: strerror(errno)))") }
            close(r)
        }
        try runtime.run(extraStartupLines: extra)
        withExtendedLifetime(api) {}
    }
}

/// The TAP's MAC and offload state, handed out of the runtime's TAP opener.
final class TapMACBox: @unchecked Sendable {
    var mac: MACAddress?
    var offload = false
}
