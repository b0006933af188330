// Parsing QEMU's `-netdev user` option string verbatim (QEMU's QemuOpts syntax: comma-separated
// key=value pairs, a literal comma written as ",,"). Every option libslirp knows is recognised; the ones vnet
// does not implement yet are refused by name, so nothing is silently ignored.

import VNetWire

public struct UserNetOptionError: Error, Equatable, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum UserNetOptions {
    /// libslirp options that vnet recognises but does not implement yet.
    public static let notYetSupported: Set<String> = [
        "hostfwd", "guestfwd", "tftp", "bootfile", "tftp-server-name", "smb", "smbserver", "ipv6-net", "ipv6-prefix",
        "ipv6-prefixlen", "ipv6-host", "ipv6-dns", "dnssearch6", "vlan", "domainname6",
    ]
    public static let supported: Set<String> = [
        "id", "net", "host", "dhcpstart", "dns", "dnssearch", "domainname", "hostname", "restrict", "ipv4", "ipv6",
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
        let pairs = text.isEmpty ? [] : try split(text)
        for (key, value) in pairs {
            if notYetSupported.contains(key) {
                throw UserNetOptionError("option '\(key)' is not supported yet")
            }
            guard supported.contains(key) else { throw UserNetOptionError("unknown option '\(key)'") }
            if key != "dnssearch" && seen.contains(key) { throw UserNetOptionError("option '\(key)' given twice") }
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
                if try parseBool(key, value) { throw UserNetOptionError("option 'restrict=on' is not supported yet") }
            case "ipv4":
                if !(try parseBool(key, value)) { throw UserNetOptionError("option 'ipv4=off' is not supported yet") }
            case "ipv6":
                // vnet has no IPv6 yet, so ipv6=off is exactly what it does; ipv6=on is refused, not ignored.
                if try parseBool(key, value) { throw UserNetOptionError("option 'ipv6=on' is not supported yet") }
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
        if let h = host { c.gatewayAddress = h }
        if let d = dns { c.dnsAddress = d }
        if let s = start { c.dhcpStart = s }
        try validate(c)
        return c
    }

    static func validate(_ c: GatewayConfig) throws(UserNetOptionError) {
        let n = c.network
        func inside(_ name: String, _ a: IPv4Address) throws(UserNetOptionError) {
            guard n.contains(a), a != n.address, a != n.broadcast else {
                throw UserNetOptionError("option '\(name)': \(a) is not a usable address in \(n)")
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
    }
}
