// Kernel NAT mode: a bridge with no uplink holding the gateway address, IP forwarding, and an nftables table
// with masquerade and port maps. vnet's DHCP and DNS run on the bridge (KernelNatServices).
//
// Theory of Operation
// -------------------
// Setup is a list of steps, each of which first looks at what is there and changes only what is missing: a
// bridge that exists is reused, an address that is present is kept, forwarding that is on stays on, and the
// nft table is replaced in one transaction. What a step changed is written to the state file
// (STATE_DIR/nat-NAME.state, `key=value` lines) before the next step, so a crash at any point leaves a record
// of exactly what to undo. Teardown undoes the record in reverse: delete the table, put ip_forward back,
// remove the address, delete the bridge, in each case only if vnet made the change. A state file whose pid is
// gone (a run that was killed) is undone before a new setup; one whose pid is alive means the network is
// running, and a second start is refused, so running it twice changes nothing more.

import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public struct KernelNatConfig: Sendable {
    public var name: String
    public var bridge: String
    public var network: IPv4Network
    public var gateway: IPv4Address
    public var dhcpStart: IPv4Address
    public var dhcpCount: Int
    public var portMaps: [HostForward]
    public var stateDirectory: String
    public var ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

    public init(name: String, bridge: String, network: IPv4Network, gateway: IPv4Address, dhcpStart: IPv4Address, dhcpCount: Int,
                portMaps: [HostForward], stateDirectory: String) {
        self.name = name
        self.bridge = bridge
        self.network = network
        self.gateway = gateway
        self.dhcpStart = dhcpStart
        self.dhcpCount = dhcpCount
        self.portMaps = portMaps
        self.stateDirectory = stateDirectory
    }

    public var statePath: String { stateDirectory + "/nat-" + name + ".state" }
    public var rulesetPath: String { stateDirectory + "/nat-" + name + ".nft" }
}

/// What a kernel NAT setup changed, as recorded in its state file.
public struct KernelNatRecord: Equatable, Sendable {
    public var pid: Int32 = 0
    public var bridge: String?
    public var bridgeCreated = false
    public var addressAdded: String?
    public var ipForwardWas: String?
    public var nftTable: String?

    public init() {}

    public func render() -> String {
        var s = "pid=\(pid)\n"
        if let b = bridge { s += "bridge=\(b)\nbridge_created=\(bridgeCreated ? 1 : 0)\n" }
        if let a = addressAdded { s += "address_added=\(a)\n" }
        if let f = ipForwardWas { s += "ip_forward_was=\(f)\n" }
        if let t = nftTable { s += "nft_table=\(t)\n" }
        return s
    }

    public static func parse(_ text: String) -> KernelNatRecord {
        var r = KernelNatRecord()
        for line in text.split(separator: "\n") {
            let kv = line.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { continue }
            let v = String(kv[1])
            switch kv[0] {
            case "pid": r.pid = Int32(v) ?? 0
            case "bridge": r.bridge = v
            case "bridge_created": r.bridgeCreated = v == "1"
            case "address_added": r.addressAdded = v
            case "ip_forward_was": r.ipForwardWas = v
            case "nft_table": r.nftTable = v
            default: break
            }
        }
        return r
    }
}

public final class KernelNat {
    /// Another live vnet runs this network; nothing was changed.
    public struct AlreadyRunning: Error, CustomStringConvertible {
        public var name: String
        public var pid: Int32
        public var description: String { "the kernel NAT network \(name) is already running (pid \(pid)); nothing was changed" }
    }

    public let config: KernelNatConfig
    public private(set) var record = KernelNatRecord()
    let log: (String) -> Void

    public init(config: KernelNatConfig, log: @escaping (String) -> Void) {
        self.config = config
        self.log = log
    }

    func save() throws { try writeWholeFile(config.statePath, record.render()) }

    /// Undoes a state file left by a run that is gone; refuses when that run is alive.
    public static func recoverStale(_ config: KernelNatConfig, log: (String) -> Void) throws {
        guard let text = readWholeFile(config.statePath) else { return }
        let old = KernelNatRecord.parse(text)
        if old.pid > 0 && old.pid != getpid() && kill(old.pid, 0) == 0 {
            throw AlreadyRunning(name: config.name, pid: old.pid)
        }
        log("vnet: undoing what an earlier run of \(config.name) (pid \(old.pid)) left behind")
        try undo(old, config: config, log: log)
        _ = unlink(config.statePath)
    }

    public func setUp() throws {
        try makeDirectories(config.stateDirectory)
        try Self.recoverStale(config, log: log)
        record.pid = getpid()
        try save()
        let route = try RouteSocket()

        // 1. The bridge.
        record.bridge = config.bridge
        if let existing = try route.link(named: config.bridge) {
            guard existing.isBridge else { throw KernelModeError("\(config.bridge) exists and is not a bridge") }
        } else {
            try route.createLink(name: config.bridge, kind: "bridge")
            record.bridgeCreated = true
        }
        try save()
        let br = try route.requireBridge(config.bridge)

        // 2. The gateway address.
        let present = try route.addresses(of: br).contains { $0.address == config.gateway && $0.prefixLength == config.network.prefixLength }
        if !present {
            try route.addAddress(br, config.gateway, prefixLength: config.network.prefixLength)
            record.addressAdded = "\(config.gateway)/\(config.network.prefixLength)"
            try save()
        }
        if !br.isUp { try route.setUp(br) }

        // 3. IP forwarding.
        guard let forward = readWholeFile(config.ipForwardPath)?.trimmingWhitespace else {
            throw KernelModeError("cannot read \(config.ipForwardPath)")
        }
        if forward != "1" {
            record.ipForwardWas = forward
            try save()
            try writeProc(config.ipForwardPath, "1")
        }

        // 4. nftables.
        let table = NftRuleset.tableName(config.name)
        record.nftTable = table
        try save()
        let rules = NftRuleset.render(networkName: config.name, bridge: config.bridge, network: config.network, portMaps: config.portMaps)
        try writeWholeFile(config.rulesetPath, rules)
        try Nft.load(file: config.rulesetPath)
    }

    /// Undoes this run's changes and removes the state file.
    public func tearDown() throws {
        guard record.pid == getpid() else { return }  // setUp stopped before this run recorded anything
        try Self.undo(record, config: config, log: log)
        _ = unlink(config.statePath)
        _ = unlink(config.rulesetPath)
    }

    /// Undoes a record in reverse order; carries on past failures and reports the first.
    public static func undo(_ r: KernelNatRecord, config: KernelNatConfig, log: (String) -> Void) throws {
        var errors: [Error] = []
        if let t = r.nftTable {
            do { try Nft.deleteTable(t) } catch { errors.append(error) }
        }
        if let f = r.ipForwardWas {
            do { try writeProc(config.ipForwardPath, f) } catch { errors.append(error) }
        }
        if let b = r.bridge {
            do { try undoBridge(b, r) } catch { errors.append(error) }
        }
        for e in errors { log("vnet: teardown: \(e)") }
        if let e = errors.first { throw e }
    }

    static func undoBridge(_ name: String, _ r: KernelNatRecord) throws {
        let route = try RouteSocket()
        guard let br = try route.link(named: name) else { return }
        if let a = r.addressAdded, !r.bridgeCreated {
            let parts = a.split(separator: "/")
            if parts.count == 2, let addr = IPv4Address(parts[0]), let p = Int(parts[1]),
               try route.addresses(of: br).contains(where: { $0.address == addr && $0.prefixLength == p }) {
                try route.deleteAddress(br, addr, prefixLength: p)
            }
        }
        if r.bridgeCreated && br.isBridge { try route.deleteLink(br) }
    }
}

func writeProc(_ path: String, _ value: String) throws {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw KernelError("write \(path)", errno: errno) }
    defer { close(fd) }
    let bytes = Array((value + "\n").utf8)
    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    guard n == bytes.count else { throw KernelError("write \(path)", errno: n < 0 ? errno : EIO) }
}

extension String {
    var trimmingWhitespace: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
