// Parsing QEMU's `-netdev user` option string verbatim (QEMU's QemuOpts syntax: comma-separated
// key=value pairs, a literal comma written as ",,"). Every option libslirp knows is recognised; the ones vnet
// does not implement yet are refused by name, so nothing is silently ignored.

import VNetServices
import VNetWire

public struct UserNetOptionError: Error, Equatable, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum UserNetOptions {
    /// libslirp options that vnet recognises but does not implement yet.
    public static let notYetSupported: Set<String> = [
        "smb", "smbserver",
    ]
    public static let supported: Set<String> = [
        "id", "net", "host", "dhcpstart", "dns", "dnssearch", "domainname", "hostname", "restrict", "ipv4", "ipv6",
        "hostfwd", "guestfwd", "tftp", "bootfile", "tftp-server-name",
        "ipv6-net", "ipv6-prefix", "ipv6-prefixlen", "ipv6-host", "ipv6-dns",
    ]

    /// Splits a QemuOpts string into (key, value) pairs, honouring ",," as an escaped comma.
    public static func split(_ text: String) throws(UserNetOptionError) -> [(String, String)] {
        var pairs: [(String, String)] = []
        var current = ""
        var items: [String] = []
        var chars = Array(text)
        if chars.last == "," && !(chars.count >= 2 && chars[chars.count - 2] == ",") { chars.removeLast() }
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if c == "," {
                if i + 1 < chars.count && chars[i + 1] == "," { current.append(","); i += 2; continue }
                items.append(current); current = ""
            } else {
                current.append(c)
            }
            i += 1
        }
        items.append(current)
        for (n, item) in items.enumerated() {
            if item.isEmpty { throw UserNetOptionError("empty option in '\(text)'") }
            if let eq = item.firstIndex(of: "=") {
                pairs.append((String(item[..<eq]), String(item[item.index(after: eq)...])))
            } else if n == 0 && item == "user" {
                continue  // the netdev type, as in `-netdev user,…`
            } else {
                throw UserNetOptionError("option '\(item)' needs a value (key=value)")
            }
        }
        return pairs
    }

    static func parseBool(_ key: String, _ v: String) throws(UserNetOptionError) -> Bool {
        switch v.lowercased() {
        case "on", "yes", "true", "y": return true
        case "off", "no", "false", "n": return false
        default: throw UserNetOptionError("option '\(key)' expects on or off, not '\(v)'")
        }
    }

    static func parseAddress(_ key: String, _ v: String) throws(UserNetOptionError) -> IPv4Address {
        guard let a = IPv4Address(v) else { throw UserNetOptionError("option '\(key)': '\(v)' is not an IPv4 address") }
        return a
    }

    static func parseAddress6(_ key: String, _ v: String) throws(UserNetOptionError) -> IPv6Address {
        guard let a = IPv6Address(v) else { throw UserNetOptionError("option '\(key)': '\(v)' is not an IPv6 address") }
        return a
    }

    static func parsePrefixLength6(_ key: String, _ v: String) throws(UserNetOptionError) -> Int {
        // QEMU refuses prefixes longer than 126 bits; SLAAC needs a /64.
        guard let n = Int(v), v.allSatisfy(\.isNumber), (1 ... 126).contains(n) else {
            throw UserNetOptionError("option '\(key)': prefix length must be 1 to 126, not '\(v)'")
        }
        return n
    }

    /// QEMU's classful default mask for `net=ADDR` without a prefix.
    static func classfulPrefix(_ a: IPv4Address) -> Int {
        let v = a.rawValue
        if v & 0x8000_0000 == 0 { return 8 }
        if v & 0xFFF0_0000 == 0xAC10_0000 { return 12 }
        if v & 0xC000_0000 == 0x8000_0000 { return 16 }
        if v & 0xFFFF_0000 == 0xC0A8_0000 { return 16 }
        return 24
    }

    static func parseNetwork(_ v: String) throws(UserNetOptionError) -> IPv4Network {
        let parts = v.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let addr = try parseAddress("net", String(parts[0]))
        if parts.count == 1 { return IPv4Network(address: addr, prefixLength: classfulPrefix(addr)) }
        let m = String(parts[1])
        if let bits = Int(m), (0 ... 32).contains(bits), m.allSatisfy(\.isNumber) {
            guard bits <= 30 else { throw UserNetOptionError("option 'net': prefix /\(bits) leaves no room for guests") }
            return IPv4Network(address: addr, prefixLength: bits)
        }
        guard let mask = IPv4Address(m) else { throw UserNetOptionError("option 'net': bad netmask '\(m)'") }
        let ones = mask.rawValue.nonzeroBitCount
        guard IPv4Network.mask(ones) == mask.rawValue, ones <= 30 else { throw UserNetOptionError("option 'net': bad netmask '\(m)'") }
        return IPv4Network(address: addr, prefixLength: ones)
    }

    /// Parses the option strings given on vnet's command line (joined with commas) into a configuration.
    public static func parse(_ text: String, into base: GatewayConfig = GatewayConfig()) throws(UserNetOptionError) -> GatewayConfig {
        var c = base
        var net: IPv4Network? = nil
        var host: IPv4Address? = nil, dns: IPv4Address? = nil, start: IPv4Address? = nil
        var seen: Set<String> = []
        var hostForwards: [(ForwardProtocol, IPAddress, UInt16, IPAddress?, UInt16, String?)] = []
        var v6Prefix: IPv6Address? = nil, v6PrefixLength: Int? = nil, v6Host: IPv6Address? = nil, v6DNS: IPv6Address? = nil
        let pairs = text.isEmpty ? [] : try split(text)
        for (key, value) in pairs {
            if notYetSupported.contains(key) {
                throw UserNetOptionError("option '\(key)' is not supported yet")
            }
            guard supported.contains(key) else { throw UserNetOptionError("unknown option '\(key)'") }
            if !["dnssearch", "hostfwd", "guestfwd"].contains(key) && seen.contains(key) { throw UserNetOptionError("option '\(key)' given twice") }
            seen.insert(key)
            switch key {
            case "id": c.id = value
            case "net": net = try parseNetwork(value)
            case "host": host = try parseAddress(key, value)
            case "dns": dns = try parseAddress(key, value)
            case "dhcpstart": start = try parseAddress(key, value)
            case "dnssearch":
                guard DNSNameEncoding.encode([value]) != nil else { throw UserNetOptionError("option 'dnssearch': bad domain '\(value)'") }
                c.dnsSearch.append(value)
            case "domainname":
                guard DNSNameEncoding.encode([value]) != nil else { throw UserNetOptionError("option 'domainname': bad domain '\(value)'") }
                c.domainName = value
            case "hostname":
                guard !value.isEmpty, value.utf8.count <= 255 else { throw UserNetOptionError("option 'hostname': bad host name") }
                c.hostName = value
            case "restrict":
                c.restricted = try parseBool(key, value)
            case "hostfwd":
                hostForwards.append(try parseHostForward(value))
            case "guestfwd":
                c.guestForwards.append(try parseGuestForward(value))
            case "tftp":
                guard !value.isEmpty else { throw UserNetOptionError("option 'tftp': empty directory") }
                c.tftpRoot = value
            case "bootfile":
                // The DHCP reply's file field holds 127 bytes and a NUL.
                guard !value.isEmpty, value.utf8.count <= 127, !value.utf8.contains(0) else {
                    throw UserNetOptionError("option 'bootfile': must be 1 to 127 bytes")
                }
                c.bootfile = value
            case "tftp-server-name":
                guard !value.isEmpty, value.utf8.count <= 255, !value.utf8.contains(0) else {
                    throw UserNetOptionError("option 'tftp-server-name': must be 1 to 255 bytes")
                }
                c.tftpServerName = value
            case "ipv4":
                if !(try parseBool(key, value)) { throw UserNetOptionError("option 'ipv4=off' is not supported yet") }
            case "ipv6":
                c.ipv6Enabled = try parseBool(key, value)
            case "ipv6-net":
                // QEMU: ipv6-net=PREFIX/LEN (the length defaults to 64).
                let parts = value.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
                v6Prefix = try parseAddress6(key, String(parts[0]))
                if parts.count == 2 { v6PrefixLength = try parsePrefixLength6(key, String(parts[1])) }
            case "ipv6-prefix": v6Prefix = try parseAddress6(key, value)
            case "ipv6-prefixlen": v6PrefixLength = try parsePrefixLength6(key, value)
            case "ipv6-host": v6Host = try parseAddress6(key, value)
            case "ipv6-dns": v6DNS = try parseAddress6(key, value)
            default: break
            }
        }
        if let n = net {
            c.network = n
            // QEMU derives the defaults from the network: host = net|2, dns = net|3, dhcpstart = net|15.
            c.gatewayAddress = IPv4Address(rawValue: n.address.rawValue | 2)
            c.dnsAddress = IPv4Address(rawValue: n.address.rawValue | 3)
            c.dhcpStart = IPv4Address(rawValue: n.address.rawValue | 15)
        }
        if v6Prefix != nil || v6PrefixLength != nil {
            let net = IPv6Network(address: v6Prefix ?? c.ipv6Prefix.address, prefixLength: v6PrefixLength ?? c.ipv6Prefix.prefixLength)
            if let p = v6Prefix, net.address != p { throw UserNetOptionError("option 'ipv6-net': \(p) has bits set past /\(net.prefixLength)") }
            c.ipv6Prefix = net
            // As in QEMU: the host and DNS addresses default to PREFIX::2 and PREFIX::3.
            c.ipv6GatewayAddress = net.address(withInterface: 2)
            c.ipv6DNSAddress = net.address(withInterface: 3)
        }
        if let h = v6Host { c.ipv6GatewayAddress = h }
        if let d = v6DNS { c.ipv6DNSAddress = d }
        if let h = host { c.gatewayAddress = h }
        if let d = dns { c.dnsAddress = d }
        if let s = start { c.dhcpStart = s }
        // An empty guest address means the first DHCP address, as in QEMU.
        c.hostForwards = hostForwards.map {
            var f = HostForward(proto: $0.0, hostAddress: $0.1, hostPort: $0.2, guestAddress: $0.3 ?? IPAddress(c.dhcpStart), guestPort: $0.4)
            f.unixPath = $0.5
            return f
        }
        try validate(c)
        return c
    }

    static func parsePort(_ key: String, _ text: Substring, allowZero: Bool) throws(UserNetOptionError) -> UInt16 {
        guard let p = UInt16(text), allowZero || p != 0 else { throw UserNetOptionError("option '\(key)': bad port '\(text)'") }
        return p
    }

    /// Splits `ADDR:PORT` where ADDR is empty, dotted IPv4 or bracketed IPv6 (`[::1]:22`).
    public static func splitAddressPort(_ key: String, _ text: Substring) throws(UserNetOptionError) -> (IPAddress?, Substring) {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw UserNetOptionError("option '\(key)': bad address '\(text)'")
            }
            let inner = text[text.index(after: text.startIndex) ..< close]
            guard let a = IPv6Address(inner) else { throw UserNetOptionError("option '\(key)': '\(inner)' is not an IPv6 address") }
            return (a.isIPv4Mapped ? IPAddress(IPv4Address(rawValue: UInt32(truncatingIfNeeded: a.low))) : IPAddress(a),
                    text[text.index(close, offsetBy: 2)...])
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 else { throw UserNetOptionError("option '\(key)': bad address and port '\(text)' (IPv6 goes in brackets)") }
        if parts[0].isEmpty { return (nil, parts[1]) }
        return (IPAddress(try parseAddress(key, String(parts[0]))), parts[1])
    }

    /// The dash between a forward rule's host and guest sides: the first one outside brackets (IPv6 addresses and
    /// host names never hide it).
    public static func sideSeparator(_ text: String) -> String.Index? {
        var depth = 0
        for i in text.indices {
            switch text[i] {
            case "[": depth += 1
            case "]": depth -= 1
            case "-" where depth == 0: return i
            default: break
            }
        }
        return nil
    }

    /// The `[tcp|udp]:` prefix of a forward rule, and the rest.
    public static func splitProtocol(_ key: String, _ text: Substring) throws(UserNetOptionError) -> (ForwardProtocol, Substring) {
        // The protocol is there when the text has a colon before any bracket and more than one colon outside brackets
        // ("tcp:[::1]:22", "udp::53", ":127.0.0.1:22"); "127.0.0.1:22" and "[::1]:22" have none.
        if text.hasPrefix("[") { return (.tcp, text) }
        let outside = text.split(separator: "[", maxSplits: 1, omittingEmptySubsequences: false)[0]
        let colons = outside.filter { $0 == ":" }.count
        guard colons >= 2 || (colons == 1 && text.contains("[")) else { return (.tcp, text) }
        let colon = text.firstIndex(of: ":")!
        let rest = text[text.index(after: colon)...]
        switch text[..<colon] {
        case "", "tcp": return (.tcp, rest)
        case "udp": return (.udp, rest)
        default: throw UserNetOptionError("option '\(key)': protocol must be tcp or udp, not '\(text[..<colon])'")
        }
    }

    /// `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`, each address IPv4 or bracketed IPv6.
    /// `unix:PATH-[guestaddr]:guestport` (HostForwardUnix.swift) gives the path as the last element.
    static func parseHostForward(_ v: String) throws(UserNetOptionError) -> (ForwardProtocol, IPAddress, UInt16, IPAddress?, UInt16, String?) {
        if v.hasPrefix("unix:") { return try parseUnixHostForward(v) }
        guard let d = sideSeparator(v) else { throw UserNetOptionError("option 'hostfwd': expected [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport, got '\(v)'") }
        let (proto, hostSide) = try splitProtocol("hostfwd", v[..<d])
        let (hostAddress, hostPortText) = try splitAddressPort("hostfwd", hostSide)
        let hostPort = try parsePort("hostfwd", hostPortText, allowZero: true)
        let (guestAddress, guestPortText) = try splitAddressPort("hostfwd", v[v.index(after: d)...])
        let guestPort = try parsePort("hostfwd", guestPortText, allowZero: false)
        return (proto, hostAddress ?? IPAddress(IPv4Address.any), hostPort, guestAddress, guestPort, nil)
    }

    /// `[tcp]:server:port-dev`, dev = `tcp:HOST:PORT` or `cmd:COMMAND`.
    static func parseGuestForward(_ v: String) throws(UserNetOptionError) -> GuestForward {
        guard let dash = v.firstIndex(of: "-") else { throw UserNetOptionError("option 'guestfwd': expected [tcp]:server:port-dev, got '\(v)'") }
        var server = v[..<dash].split(separator: ":", omittingEmptySubsequences: false)
        if server.count == 3 {
            guard server[0] == "tcp" || server[0].isEmpty else { throw UserNetOptionError("option 'guestfwd': only tcp is supported, not '\(server[0])'") }
            server.removeFirst()
        }
        guard server.count == 2 else { throw UserNetOptionError("option 'guestfwd': bad server side '\(v[..<dash])'") }
        let address = try parseAddress("guestfwd", String(server[0]))
        let port = try parsePort("guestfwd", server[1], allowZero: false)
        let dev = v[v.index(after: dash)...]
        if dev.hasPrefix("cmd:") {
            let command = String(dev.dropFirst(4))
            guard !command.isEmpty else { throw UserNetOptionError("option 'guestfwd': empty command") }
            return GuestForward(serverAddress: address, serverPort: port, target: .command(command))
        }
        if dev.hasPrefix("tcp:") {
            let parts = dev.dropFirst(4).split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw UserNetOptionError("option 'guestfwd': expected tcp:HOST:PORT, got '\(dev)'") }
            return GuestForward(serverAddress: address, serverPort: port,
                                target: .tcp(try parseAddress("guestfwd", String(parts[0])), try parsePort("guestfwd", parts[1], allowZero: false)))
        }
        throw UserNetOptionError("option 'guestfwd': device must be tcp:HOST:PORT or cmd:COMMAND, not '\(dev)'")
    }

    static func validate(_ c: GatewayConfig) throws(UserNetOptionError) {
        let n = c.network
        func inside(_ name: String, _ a: IPv4Address) throws(UserNetOptionError) {
            guard n.contains(a), a != n.address, a != n.broadcast else {
                throw UserNetOptionError("option '\(name)': \(a) is not a usable address in \(n)")
            }
        }
        if c.ipv6Enabled {
            let p = c.ipv6Prefix
            for (name, a) in [("ipv6-host", c.ipv6GatewayAddress), ("ipv6-dns", c.ipv6DNSAddress)] {
                guard p.contains(a), a != p.address, !a.isMulticast else {
                    throw UserNetOptionError("option '\(name)': \(a) is not a usable address in \(p)")
                }
            }
            guard c.ipv6GatewayAddress != c.ipv6DNSAddress else { throw UserNetOptionError("options 'ipv6-host' and 'ipv6-dns' must differ") }
            guard !p.address.isLinkLocal, !p.address.isMulticast, !p.address.isLoopback, !p.address.isUnspecified else {
                throw UserNetOptionError("option 'ipv6-net': \(p) is not a usable prefix")
            }
        }
        try inside("host", c.gatewayAddress)
        try inside("dns", c.dnsAddress)
        try inside("dhcpstart", c.dhcpStart)
        guard c.gatewayAddress != c.dnsAddress else { throw UserNetOptionError("options 'host' and 'dns' must differ") }
        let last = IPv4Address(rawValue: c.dhcpStart.rawValue &+ UInt32(c.dhcpPoolSize - 1))
        guard n.contains(last), last != n.broadcast else {
            throw UserNetOptionError("option 'dhcpstart': \(c.dhcpStart) leaves no room for \(c.dhcpPoolSize) leases in \(n)")
        }
        let pool = c.dhcpStart.rawValue ... last.rawValue
        if pool.contains(c.gatewayAddress.rawValue) || pool.contains(c.dnsAddress.rawValue) {
            throw UserNetOptionError("option 'dhcpstart': the DHCP pool overlaps the host or dns address")
        }
        for f in c.hostForwards {
            guard let guest = f.guestAddress else { throw UserNetOptionError("option 'hostfwd': \(f) has no guest address") }
            if let g = guest.v4 {
                guard n.contains(g), g != n.address, g != n.broadcast, g != c.gatewayAddress, g != c.dnsAddress else {
                    throw UserNetOptionError("option 'hostfwd': guest address \(g) is not a guest address in \(n)")
                }
            } else {
                let g = guest.v6
                guard c.ipv6Enabled else { throw UserNetOptionError("option 'hostfwd': guest address \(g) needs IPv6 (ipv6=off)") }
                guard c.ipv6Prefix.contains(g), !c.isVirtualAddress6(g), g != c.ipv6Prefix.address else {
                    throw UserNetOptionError("option 'hostfwd': guest address \(g) is not a guest address in \(c.ipv6Prefix)")
                }
            }
        }
        for (k, f) in c.guestForwards.enumerated() {
            guard n.contains(f.serverAddress), f.serverAddress != n.address, f.serverAddress != n.broadcast,
                  !pool.contains(f.serverAddress.rawValue) else {
                throw UserNetOptionError("option 'guestfwd': \(f.serverAddress) must be a free address in \(n), outside the DHCP pool")
            }
            if c.guestForwards[..<k].contains(where: { $0.serverAddress == f.serverAddress && $0.serverPort == f.serverPort }) {
                throw UserNetOptionError("option 'guestfwd': \(f.serverAddress):\(f.serverPort) given twice")
            }
        }
    }
}

// hostfwd rules given at run time (the control socket's hostfwd_add / hostfwd_remove), in QEMU's syntax.
extension UserNetOptions {
    /// `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`; an empty guest address is `config`'s first DHCP
    /// address, and the guest address must be a guest address of `config`'s network.
    public static func parseHostForwardRule(_ text: String, config: GatewayConfig) throws(UserNetOptionError) -> HostForward {
        let (proto, hostAddress, hostPort, guest, guestPort, path) = try parseHostForward(text)
        var rule = HostForward(proto: proto, hostAddress: hostAddress, hostPort: hostPort, guestAddress: guest ?? IPAddress(config.dhcpStart),
                               guestPort: guestPort)
        rule.unixPath = path
        var c = config
        c.hostForwards = [rule]
        try validate(c)
        return rule
    }

    /// hostfwd_remove's `[tcp|udp]:[hostaddr]:hostport` (QEMU's syntax; an empty address is 0.0.0.0).
    public static func parseHostForwardKey(_ text: String) throws(UserNetOptionError) -> (ForwardProtocol, IPAddress, UInt16) {
        let (proto, rest) = try splitProtocol("hostfwd_remove", text[...])
        let (address, port) = try splitAddressPort("hostfwd_remove", rest)
        return (proto, address ?? IPAddress(IPv4Address.any), try parsePort("hostfwd_remove", port, allowZero: true))
    }
}
