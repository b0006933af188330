// A VXLAN uplink (RFC 7348): one switch port that joins a VNI shared with Linux vxlan devices, Open vSwitch or
// other vnet instances on other machines, over plain UDP sockets (no root needed).
//
// Theory of Operation
// -------------------
// `VxlanUplink` is the parsed `--vxlan VNI,local=ADDR[:PORT],remote=ADDR[:PORT][,…]` option (a
// `PortTransportFactory`); `VxlanPort` is the open port (a `PortTransport`); `VxlanTable` is its state with no
// sockets (remotes, learned and static MACs, counters), so unit tests and the fuzzer drive it directly.
//   - in: one socket bound to local ADDR:PORT. A datagram is taken only from a configured remote's address (any
//     source port: Linux and OVS pick it per flow); then the 8-byte header (length, the I flag, our VNI), then the
//     inner frame (at least an Ethernet header, at most MTU + 14, no 802.1Q tag: §6.1). Each failure is a named
//     drop counter. A good frame's source MAC is learned against the remote it came from (unless
//     `learning=off`), with ageing and a fixed cap, and the frame goes to the switch.
//   - out: the switch queues frames for this port as for any other. A frame for a MAC with a static or learned
//     entry goes to that remote; broadcast, multicast and unknown unicast go to every remote (head-end
//     replication, as the kernel does with all-zero FDB entries). The outer source port comes from a hash of
//     the inner flow: eight send sockets on ephemeral ports, one picked by `VXLANHeader.flowHash`. Every socket
//     sets DF (IP_PMTUDISC_DO / IPV6_PMTUDISC_DO): a frame too big for the underlay is dropped and counted, never
//     fragmented. IPv4 datagrams carry checksum 0 (SO_NO_CHECK, as RFC 7348 allows); IPv6 ones a real checksum
//     (the kernel's).
//   - loops: a frame that came in from an uplink never leaves by an uplink. One uplink never gets its own frames
//     back (the switch does not reflect), but two uplinks on one VLAN would flood each other's frames. Uplinks of
//     one loop know each other (`VxlanUplinkGroup`); while one hands a frame to the switch, the others note
//     which of their queue's slots the switch filled, and drop those frames instead of sending them. The note
//     is a bitmap with one bit per possible frame in the queue (its capacity over the smallest frame), so it
//     never allocates and never wraps onto a live frame.
//   - MTU: the underlay MTU is the path MTU towards each remote (IP_MTU on a connected socket), the smallest
//     wins; the CLI advertises it minus 50 (IPv4) or 70 (IPv6) when no --mtu is given.
//   - one socket, many VNIs: uplinks of different VNIs on one local ADDR:PORT share its receive socket (the first
//     reads it and hands each datagram to the uplink of its VNI), as the kernel and OVS do on 4789.
// Control commands (`vxlan-fdb-add|remove|list`, `vxlan-remote-add|remove|list`) take `vni=` and are answered
// by the uplink of that VNI only.

import Foundation
import Logging
import VNetBuffers
import VNetHost
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

/// A UDP endpoint of the underlay: an address of either family and a port.
public struct VxlanEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    public var description: String { "\(address.bracketed):\(port)" }

    /// `ADDR`, `ADDR:PORT`, `[V6ADDR]:PORT` or a bare IPv6 address.
    public static func parse(_ text: Substring, defaultPort: UInt16 = VXLANHeader.ianaPort) -> VxlanEndpoint? {
        var host = text, port = defaultPort
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex) ..< close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let p = UInt16(rest.dropFirst()) else { return nil }
                port = p
            }
        } else if text.filter({ $0 == ":" }).count == 1, let c = text.firstIndex(of: ":") {
            host = text[..<c]
            guard let p = UInt16(text[text.index(after: c)...]) else { return nil }
            port = p
        }
        guard port != 0, let a = IPAddress(text: host), !a.isUnspecified else { return nil }
        return VxlanEndpoint(address: a, port: port)
    }

    var socketAddress: SocketAddress {
        if let v4 = address.v4 { return SocketAddress(ipv4: v4.rawValue, port: port) }
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes.withUnsafeMutableBytes { address.v6.write(to: $0, at: 0) }
        return SocketAddress(ipv6: bytes, port: port)
    }

    var family: Int32 { address.isIPv4 ? AF_INET : AF_INET6 }

    /// The address a datagram came from, read without allocating.
    static func sourceAddress(_ a: inout SocketAddress) -> IPAddress? {
        let family = a.family
        return withUnsafeBytes(of: &a.storage) { raw -> IPAddress? in
            if family == AF_INET { return IPAddress(IPv4Address(rawValue: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))) }
            if family == AF_INET6 { return IPAddress(IPv6Address(reading: raw, at: 8)) }
            return nil
        }
    }
}

/// `--vxlan VNI,local=ADDR[:PORT],remote=ADDR[:PORT][,remote=…][,vlan=N][,learning=on|off]`.
public struct VxlanUplink: PortTransportFactory, Equatable {
    public var vni: UInt32
    public var local: VxlanEndpoint
    public var remotes: [VxlanEndpoint]
    /// The vnet VLAN mapped to this VNI (the port is an access port of it).
    public var vlan: UInt16
    public var learning: Bool

    /// Remotes per uplink (configured and added at run time).
    public static let maximumRemotes = 64
    /// Learned inner MACs per uplink; a MAC beyond it is not learned (its frames still flood) and is counted.
    public static let maximumLearned = 4096
    /// Static FDB entries per uplink.
    public static let maximumStatic = 1024
    /// Seconds a learned MAC is kept without traffic from it (the kernel vxlan device's default ageing).
    public static let ageingSeconds: UInt64 = 300

    public init(vni: UInt32, local: VxlanEndpoint, remotes: [VxlanEndpoint], vlan: UInt16 = 1, learning: Bool = true) {
        self.vni = vni
        self.local = local
        self.remotes = remotes
        self.vlan = vlan
        self.learning = learning
    }

    public var description: String {
        "vxlan vni \(vni) local \(local) remotes \(remotes.map(\.description).joined(separator: ","))" + (learning ? "" : " (learning off)")
    }

    public var carriesOffloads: Bool { false }

    public func make(logger: Logger) throws -> PortTransport { VxlanPort(self) }

    /// Parses the option's value; errors are one line, naming what is wrong.
    public static func parse(_ text: String) throws -> VxlanUplink {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard let first = parts.first, let vni = UInt32(first), vni <= VXLANHeader.maximumVNI else {
            throw RuntimeError("--vxlan: expected VNI (0-16777215) first, as in 42,local=ADDR,remote=ADDR; got '\(text)'")
        }
        var local: VxlanEndpoint?
        var remotes: [VxlanEndpoint] = []
        var vlan: UInt16 = 1
        var learning = true
        for p in parts.dropFirst() {
            guard let eq = p.firstIndex(of: "=") else { throw RuntimeError("--vxlan: expected key=value, got '\(p)'") }
            let key = p[..<eq], value = p[p.index(after: eq)...]
            switch key {
            case "local":
                guard local == nil else { throw RuntimeError("--vxlan: local= given twice") }
                guard let e = VxlanEndpoint.parse(value) else { throw RuntimeError("--vxlan: local='\(value)' is not ADDR[:PORT]") }
                local = e
            case "remote":
                guard let e = VxlanEndpoint.parse(value) else { throw RuntimeError("--vxlan: remote='\(value)' is not ADDR[:PORT]") }
                guard !remotes.contains(e) else { throw RuntimeError("--vxlan: remote \(e) given twice") }
                remotes.append(e)
            case "vlan":
                guard let v = UInt16(value), (1 ... 4094).contains(v) else { throw RuntimeError("--vxlan: vlan='\(value)' must be 1-4094") }
                vlan = v
            case "learning":
                switch value {
                case "on": learning = true
                case "off": learning = false
                default: throw RuntimeError("--vxlan: learning='\(value)' must be on or off")
                }
            default:
                throw RuntimeError("--vxlan: unknown key '\(key)' (local, remote, vlan, learning)")
            }
        }
        guard let local else { throw RuntimeError("--vxlan \(vni): local=ADDR[:PORT] is required") }
        guard !remotes.isEmpty else { throw RuntimeError("--vxlan \(vni): at least one remote=ADDR[:PORT] is required") }
        guard remotes.count <= maximumRemotes else { throw RuntimeError("--vxlan \(vni): at most \(maximumRemotes) remotes") }
        for r in remotes where r.address.isIPv4 != local.address.isIPv4 {
            throw RuntimeError("--vxlan \(vni): remote \(r) is not of the local address's family (\(local))")
        }
        return VxlanUplink(vni: vni, local: local, remotes: remotes, vlan: vlan, learning: learning)
    }

    /// What the underlay costs per frame: outer IP, UDP, VXLAN and the inner Ethernet header.
    public var overhead: Int { local.address.isIPv4 ? VXLANHeader.ipv4Overhead : VXLANHeader.ipv6Overhead }

    /// The smallest path MTU from the local address towards the remotes (IP_MTU of a connected socket: the
    /// route's, or a smaller one learned from ICMP); nil when none can be found.
    public func underlayMTU() -> Int? {
        var smallest: Int?
        for r in remotes {
            if let m = VxlanUplink.pathMTU(from: local, to: r) { smallest = min(smallest ?? m, m) }
        }
        return smallest
    }

    static func pathMTU(from local: VxlanEndpoint, to remote: VxlanEndpoint) -> Int? {
        guard let fd = try? Sys.socket(remote.family, VxlanSocketOptions.datagram, 0) else { return nil }
        defer { Sys.close(fd) }
        var l = VxlanEndpoint(address: local.address, port: 0)
        l.port = 0
        _ = try? Sys.bind(fd, l.socketAddress)
        guard (try? Sys.connect(fd, remote.socketAddress)) != nil else { return nil }
        var mtu: Int32 = 0
        var len = socklen_t(4)
        let (level, name) = remote.address.isIPv4 ? (VxlanSocketOptions.ipLevel, VxlanSocketOptions.ipMTU) : (VxlanSocketOptions.ipv6Level, VxlanSocketOptions.ipv6MTU)
        guard getsockopt(fd, level, name, &mtu, &len) == 0, mtu > 0 else { return nil }
        return Int(mtu)
    }

    /// The `--mtu` to advertise: the smallest underlay MTU of these uplinks less each one's overhead.
    public static func segmentMTU(_ uplinks: [VxlanUplink]) -> Int? {
        var smallest: Int?
        for u in uplinks {
            if let m = u.underlayMTU() { smallest = min(smallest ?? (m - u.overhead), m - u.overhead) }
        }
        return smallest
    }
}

/// Linux socket options Glibc's module may not export.
enum VxlanSocketOptions {
    static let ipMTUDiscover: Int32 = 10      // IP_MTU_DISCOVER
    static let ipMTU: Int32 = 14              // IP_MTU
    static let ipv6MTUDiscover: Int32 = 23    // IPV6_MTU_DISCOVER
    static let ipv6MTU: Int32 = 24            // IPV6_MTU
    static let pmtuDiscoverDo: Int32 = 2      // IP_PMTUDISC_DO, IPV6_PMTUDISC_DO
    static let noCheck: Int32 = 11            // SO_NO_CHECK
    static let datagram: Int32 = 2            // SOCK_DGRAM
    static let ipLevel: Int32 = 0             // IPPROTO_IP
    static let ipv6Level: Int32 = 41          // IPPROTO_IPV6
    static let ipv6Only: Int32 = 26           // IPV6_V6ONLY
    static let sendBuffer: Int32 = 7          // SO_SNDBUF
    static let receiveBuffer: Int32 = 8       // SO_RCVBUF
    static let sendBufferForce: Int32 = 32    // SO_SNDBUFFORCE
    static let receiveBufferForce: Int32 = 33 // SO_RCVBUFFORCE
}

/// What an uplink counts beyond the frame counters, each a `port<N>_vxlan_<name>` line in `stats`/metrics.
public struct VxlanCounters: Sendable, Equatable {
    public var datagramsIn: UInt64 = 0
    public var datagramsOut: UInt64 = 0
    /// Copies of broadcast, multicast and unknown-unicast frames (one per remote).
    public var replicated: UInt64 = 0
    public var dropUntrustedSource: UInt64 = 0
    public var dropShortHeader: UInt64 = 0
    public var dropBadFlags: UInt64 = 0
    public var dropUnknownVNI: UInt64 = 0
    public var dropInnerTooShort: UInt64 = 0
    public var dropInnerTooLong: UInt64 = 0
    public var dropInnerTagged: UInt64 = 0
    /// Frames bigger than the underlay can carry with DF set.
    public var dropTooBigForUnderlay: UInt64 = 0
    /// Frames from one uplink the switch flooded to another.
    public var dropUplinkToUplink: UInt64 = 0
    /// Sends the kernel refused (no route, buffer full).
    public var sendErrors: UInt64 = 0
    public var learned: UInt64 = 0
    public var learnRefusedTableFull: UInt64 = 0
    public var learnedMoved: UInt64 = 0
    public var learnedAged: UInt64 = 0

    public var lines: [(String, UInt64)] {
        [("vxlan_datagrams_in", datagramsIn), ("vxlan_datagrams_out", datagramsOut), ("vxlan_replicated", replicated),
         ("vxlan_drop_untrusted_source", dropUntrustedSource), ("vxlan_drop_short_header", dropShortHeader),
         ("vxlan_drop_bad_flags", dropBadFlags), ("vxlan_drop_unknown_vni", dropUnknownVNI),
         ("vxlan_drop_inner_too_short", dropInnerTooShort), ("vxlan_drop_inner_too_long", dropInnerTooLong),
         ("vxlan_drop_inner_tagged", dropInnerTagged), ("vxlan_drop_too_big_for_underlay", dropTooBigForUnderlay),
         ("vxlan_drop_uplink_to_uplink", dropUplinkToUplink), ("vxlan_send_errors", sendErrors),
         ("vxlan_learned", learned), ("vxlan_learn_refused_table_full", learnRefusedTableFull),
         ("vxlan_learned_moved", learnedMoved), ("vxlan_learned_aged", learnedAged)]
    }
}

/// An uplink's forwarding state without sockets: remotes, learned and static MACs, the receive checks.
public final class VxlanTable {
    public struct Learned: Equatable {
        public var remote: VxlanEndpoint
        public var lastSeen: UInt64
    }

    public let vni: UInt32
    public let learning: Bool
    public private(set) var remotes: [VxlanEndpoint]
    public private(set) var learned: [MACAddress: Learned]
    public private(set) var statics: [MACAddress: VxlanEndpoint] = [:]
    public var counters = VxlanCounters()
    /// Longest inner frame taken from the underlay (MTU + Ethernet header).
    public var maximumInnerFrame: Int
    let ageing: UInt64

    public init(vni: UInt32, remotes: [VxlanEndpoint], learning: Bool, mtu: Int, ageingSeconds: UInt64 = VxlanUplink.ageingSeconds) {
        self.vni = vni
        self.remotes = remotes
        self.learning = learning
        self.maximumInnerFrame = mtu + 14
        self.ageing = ageingSeconds * 1_000_000_000
        learned = Dictionary(minimumCapacity: VxlanUplink.maximumLearned)
        self.remotes.reserveCapacity(VxlanUplink.maximumRemotes)
    }

    /// The configured remote at `address` (any port), if any.
    @inline(__always)
    public func remote(at address: IPAddress) -> VxlanEndpoint? {
        for r in remotes where r.address == address { return r }
        return nil
    }

    /// Checks one received datagram (the UDP payload) from `source`; returns the inner frame's range, or nil
    /// when it was dropped (and counted). Learns the inner source MAC.
    public func accept(_ datagram: UnsafeRawBufferPointer, from source: IPAddress, now: UInt64) -> Range<Int>? {
        guard let remote = remote(at: source) else { counters.dropUntrustedSource &+= 1; return nil }
        let header: VXLANHeader
        do { header = try VXLANHeader.parse(datagram) } catch {
            switch error {
            case .short: counters.dropShortHeader &+= 1
            case .badFlags: counters.dropBadFlags &+= 1
            }
            return nil
        }
        guard header.vni == vni else { counters.dropUnknownVNI &+= 1; return nil }
        let inner = VXLANHeader.length ..< datagram.count
        guard inner.count >= 14 else { counters.dropInnerTooShort &+= 1; return nil }
        guard inner.count <= maximumInnerFrame else { counters.dropInnerTooLong &+= 1; return nil }
        let frame = datagram.slice(inner)
        guard !VXLANHeader.isTaggedInner(frame) else { counters.dropInnerTagged &+= 1; return nil }
        counters.datagramsIn &+= 1
        if learning { learn(MACAddress(reading: frame, at: 6), remote: remote, now: now) }
        return inner
    }

    @inline(__always)
    func learn(_ mac: MACAddress, remote: VxlanEndpoint, now: UInt64) {
        guard !mac.isMulticast, mac != .zero, statics[mac] == nil else { return }
        if let e = learned[mac] {
            if e.remote != remote { counters.learnedMoved &+= 1 }
            learned[mac] = Learned(remote: remote, lastSeen: now)
            return
        }
        guard learned.count < VxlanUplink.maximumLearned else { counters.learnRefusedTableFull &+= 1; return }
        learned[mac] = Learned(remote: remote, lastSeen: now)
        counters.learned &+= 1
    }

    /// Where a frame for `destination` goes: one remote, or nil for every remote (flood).
    @inline(__always)
    public func unicastRemote(for destination: MACAddress, now: UInt64) -> VxlanEndpoint? {
        guard !destination.isMulticast else { return nil }
        if let s = statics[destination] { return s }
        if let e = learned[destination], now &- e.lastSeen < ageing { return e.remote }
        return nil
    }

    /// Forgets learned MACs idle longer than the ageing time.
    public func expire(now: UInt64) {
        guard !learned.isEmpty else { return }
        let stale = learned.filter { now &- $0.value.lastSeen >= ageing }.map(\.key)
        for m in stale { learned[m] = nil }
        counters.learnedAged &+= UInt64(stale.count)
    }

    public enum ChangeError: Error, Equatable, CustomStringConvertible {
        case full(String), exists(String), absent(String), family(String)
        public var description: String {
            switch self { case .full(let s), .exists(let s), .absent(let s), .family(let s): s }
        }
    }

    public func addRemote(_ r: VxlanEndpoint) throws(ChangeError) {
        guard !remotes.contains(r) else { throw .exists("remote \(r) is already configured") }
        guard remotes.count < VxlanUplink.maximumRemotes else { throw .full("at most \(VxlanUplink.maximumRemotes) remotes") }
        if let f = remotes.first, f.address.isIPv4 != r.address.isIPv4 { throw .family("remote \(r) is not of the underlay's family") }
        remotes.append(r)
    }

    /// Removes a remote and the MACs learned behind it.
    public func removeRemote(_ r: VxlanEndpoint) throws(ChangeError) {
        guard let i = remotes.firstIndex(of: r) else { throw .absent("no remote \(r)") }
        remotes.remove(at: i)
        for (m, e) in learned where e.remote == r { learned[m] = nil }
    }

    public func addStatic(_ mac: MACAddress, _ r: VxlanEndpoint) throws(ChangeError) {
        guard !mac.isMulticast, mac != .zero else { throw .family("\(mac) is not a unicast MAC (add remotes for flooding)") }
        if let f = remotes.first, f.address.isIPv4 != r.address.isIPv4 { throw .family("remote \(r) is not of the underlay's family") }
        guard statics[mac] != nil || statics.count < VxlanUplink.maximumStatic else { throw .full("at most \(VxlanUplink.maximumStatic) static entries") }
        statics[mac] = r
        learned[mac] = nil
    }

    public func removeStatic(_ mac: MACAddress) throws(ChangeError) {
        guard statics.removeValue(forKey: mac) != nil else { throw .absent("no static entry for \(mac)") }
    }
}

/// The uplinks of one event loop, so that none sends out what another took in (see the header).
final class VxlanUplinkGroup {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var groups: [ObjectIdentifier: VxlanUplinkGroup] = [:]
    private(set) var members: [VxlanPort] = []
    let key: ObjectIdentifier

    init(key: ObjectIdentifier) { self.key = key }

    static func join(_ p: VxlanPort, loop key: ObjectIdentifier) -> VxlanUplinkGroup {
        lock.lock(); defer { lock.unlock() }
        let g = groups[key] ?? VxlanUplinkGroup(key: key)
        groups[key] = g
        g.members.append(p)
        return g
    }

    func leave(_ p: VxlanPort) {
        VxlanUplinkGroup.lock.lock(); defer { VxlanUplinkGroup.lock.unlock() }
        members.removeAll { $0 === p }
        if members.isEmpty { VxlanUplinkGroup.groups[key] = nil }
    }

    /// Receive sockets by local ADDR:PORT. The first uplink on one binds it and reads it (the owner); uplinks of
    /// other VNIs on the same ADDR:PORT share it, as Linux and OVS serve many VNIs on one 4789 socket. The owner
    /// hands each datagram to the uplink of its VNI. Used on the loop's thread only.
    final class SharedSocket {
        let fd: Int32
        var owner: VxlanPort
        var byVNI: [UInt32: VxlanPort] = [:]
        init(fd: Int32, owner: VxlanPort) { self.fd = fd; self.owner = owner }
    }
    var sockets: [VxlanEndpoint: SharedSocket] = [:]
}

public final class VxlanPort: PortTransport {
    public let uplink: VxlanUplink
    public private(set) var table: VxlanTable
    var context: PortContext?
    var receiveFD: Int32 = -1
    var sendFDs: [Int32] = []
    /// Which send sockets wait for EPOLLOUT.
    var armed: [Bool] = []
    var frameCounters = PortCounters()
    var group: VxlanUplinkGroup?
    /// Largest inner frame the underlay carries with DF set (the smallest path MTU less outer IP, UDP, VXLAN).
    public private(set) var underlayFrameLimit = Int.max
    public private(set) var underlayMTU: Int?
    let receiveBuffer: UnsafeMutableRawBufferPointer
    let header: UnsafeMutableRawBufferPointer
    let iov: UnsafeMutablePointer<iovec>
    var lastExpiry: UInt64 = 0
    // Loop marks: bit (sequence & markMask) set means "the frame at that queue sequence came from an uplink".
    var marks: [UInt64] = []
    var markMask: UInt64 = 0
    /// Frames taken off the queue so far: the sequence number of the queue's first frame.
    var dequeued: UInt64 = 0

    static let sendSockets = 8
    static let readsPerEvent = 64

    init(_ uplink: VxlanUplink) {
        self.uplink = uplink
        table = VxlanTable(vni: uplink.vni, remotes: uplink.remotes, learning: uplink.learning, mtu: 1500)
        receiveBuffer = .allocate(byteCount: 65_536 + 1, alignment: 16)
        header = .allocate(byteCount: VXLANHeader.length, alignment: 8)
        VXLANHeader(vni: uplink.vni).emit(into: header)
        iov = .allocate(capacity: 2)
    }

    deinit {
        close()
        receiveBuffer.deallocate()
        header.deallocate()
        iov.deallocate()
    }

    public var typeName: String { "vxlan" }
    public var isConnected: Bool { receiveFD >= 0 }

    public var description: String {
        "vxlan vni \(uplink.vni) local \(uplink.local) remotes \(table.remotes.map(\.description).joined(separator: ","))"
            + (uplink.learning ? "" : " (learning off)") + (underlayMTU.map { ", underlay mtu \($0)" } ?? "")
    }

    public var counters: PortCounters { frameCounters }
    public var extraCounters: [(String, UInt64)] {
        table.counters.lines + [("vxlan_remotes", UInt64(table.remotes.count)), ("vxlan_learned_macs", UInt64(table.learned.count))]
    }
    public var peers: [String] { table.remotes.map(\.description) }
    public var startupLines: [String] {
        ["vnet: vxlan vni \(uplink.vni) on \(uplink.local), remotes \(table.remotes.map(\.description).joined(separator: " "))"
         + (underlayMTU.map { ", underlay mtu \($0)" } ?? "") + (uplink.learning ? "" : ", learning off")]
    }

    public func start(_ context: PortContext) throws {
        self.context = context
        table.maximumInnerFrame = context.mtu + 14
        let family = uplink.local.family
        let g = VxlanUplinkGroup.join(self, loop: ObjectIdentifier(context.epoll))
        group = g
        if let shared = g.sockets[uplink.local] {
            guard shared.byVNI[uplink.vni] == nil else { throw RuntimeError("--vxlan \(uplink.vni): VNI \(uplink.vni) is already on \(uplink.local)") }
            shared.byVNI[uplink.vni] = self
            receiveFD = shared.fd
        } else {
            let fd = try Sys.socket(family, VxlanSocketOptions.datagram, 0)
            receiveFD = fd
            let shared = VxlanUplinkGroup.SharedSocket(fd: fd, owner: self)
            shared.byVNI[uplink.vni] = self
            g.sockets[uplink.local] = shared
            try configure(fd)
            // A sender's TCP burst arrives as a train of datagrams: a small receive buffer overflows and the
            // gateway, which keeps no out-of-order segments, then waits for retransmissions.
            VxlanPort.setBuffer(fd, VxlanSocketOptions.receiveBuffer, VxlanSocketOptions.receiveBufferForce, 8 << 20)
            do { try Sys.bind(fd, uplink.local.socketAddress) } catch {
                throw RuntimeError("--vxlan \(uplink.vni): cannot bind \(uplink.local): \(error)")
            }
            try context.register(fd, events: Epoll.readable, token: 0)
        }
        for i in 0 ..< VxlanPort.sendSockets {
            let s = try Sys.socket(family, VxlanSocketOptions.datagram, 0)
            sendFDs.append(s)
            armed.append(false)
            try configure(s)
            VxlanPort.setBuffer(s, VxlanSocketOptions.sendBuffer, VxlanSocketOptions.sendBufferForce, 1 << 20)
            do { try Sys.bind(s, VxlanEndpoint(address: uplink.local.address, port: 0).socketAddress) } catch {
                throw RuntimeError("--vxlan \(uplink.vni): cannot bind a send socket on \(uplink.local.address): \(error)")
            }
            try context.register(s, events: 0, token: 1 + i)
        }
        for r in table.remotes { _ = socketAddress(r) }
        refreshUnderlay()
        // One bit per frame the queue can hold at once (every frame takes at least prefix + 60 bytes).
        let slots = context.queue.capacity / (FrameQueue.prefixLength + FrameQueue.minimumFrameLength) + 1
        var bits = 64
        while bits < slots { bits <<= 1 }
        marks = [UInt64](repeating: 0, count: bits / 64)
        markMask = UInt64(bits - 1)
    }

    func configure(_ fd: Int32) throws {
        try Sys.setNonBlocking(fd)
        if uplink.local.address.isIPv4 {
            try Sys.setOption(fd, VxlanSocketOptions.ipLevel, VxlanSocketOptions.ipMTUDiscover, VxlanSocketOptions.pmtuDiscoverDo)
            try Sys.setOption(fd, SOL_SOCKET, VxlanSocketOptions.noCheck, 1)
        } else {
            try Sys.setOption(fd, VxlanSocketOptions.ipv6Level, VxlanSocketOptions.ipv6MTUDiscover, VxlanSocketOptions.pmtuDiscoverDo)
            try Sys.setOption(fd, VxlanSocketOptions.ipv6Level, VxlanSocketOptions.ipv6Only, 1)
        }
    }

    /// Sets a socket buffer size, past net.core.[rw]mem_max when permitted (the FORCE option needs CAP_NET_ADMIN).
    static func setBuffer(_ fd: Int32, _ option: Int32, _ force: Int32, _ size: Int32) {
        if (try? Sys.setOption(fd, SOL_SOCKET, force, size)) == nil { try? Sys.setOption(fd, SOL_SOCKET, option, size) }
    }

    /// Re-reads the path MTU towards every remote (at start and when remotes change).
    func refreshUnderlay() {
        var u = uplink
        u.remotes = table.remotes
        underlayMTU = u.underlayMTU()
        underlayFrameLimit = underlayMTU.map { $0 - u.overhead + 14 } ?? Int.max
    }

    public func close() {
        if let g = group, let shared = g.sockets[uplink.local], shared.byVNI[uplink.vni] === self {
            shared.byVNI[uplink.vni] = nil
            if shared.owner === self {
                context?.unregister(shared.fd)
                if let next = shared.byVNI.values.first(where: { $0.context != nil }),
                   (try? next.context?.register(shared.fd, events: Epoll.readable, token: 0)) != nil {
                    shared.owner = next   // the socket stays open for the other VNIs
                } else {
                    Sys.close(shared.fd)
                    g.sockets[uplink.local] = nil
                }
            }
        } else if receiveFD >= 0 {
            context?.unregister(receiveFD)
            Sys.close(receiveFD)
        }
        group?.leave(self)
        group = nil
        for fd in sendFDs where fd >= 0 {
            context?.unregister(fd)
            Sys.close(fd)
        }
        receiveFD = -1
        sendFDs = []
        armed = []
    }

    // MARK: In

    public func handle(token: Int, events: UInt32, now: UInt64) {
        guard let context else { return }
        if token > 0 {
            if events & (Epoll.writable | Epoll.error) != 0, token - 1 < armed.count {
                armed[token - 1] = false
                try? context.modify(sendFDs[token - 1], events: 0, token: token)
                _ = flush(now: now)
            }
            return
        }
        var delivered = false
        let siblings = group.map { $0.members.count > 1 } ?? false
        // Other VNIs on this socket (see SharedSocket); nil when it is ours alone.
        let shared = siblings ? group?.sockets[uplink.local].flatMap { $0.byVNI.count > 1 ? $0 : nil } : nil
        for _ in 0 ..< VxlanPort.readsPerEvent {
            var from = SocketAddress()
            guard case .done(let n) = Sys.receiveFrom(receiveFD, into: receiveBuffer, from: &from) else { break }
            guard let source = VxlanEndpoint.sourceAddress(&from) else { table.counters.dropUntrustedSource &+= 1; continue }
            if n > receiveBuffer.count - 1 { table.counters.dropInnerTooLong &+= 1; continue }
            let datagram = UnsafeRawBufferPointer(receiveBuffer.slice(0 ..< n))
            // The uplink of the datagram's VNI; a datagram for no uplink is checked (and counted) by this one.
            var target = self
            if let shared, n >= VXLANHeader.length, let t = shared.byVNI[UInt32(datagram[4]) << 16 | UInt32(datagram[5]) << 8 | UInt32(datagram[6])] {
                target = t
            }
            guard let inner = target.table.accept(datagram, from: source, now: now), let into = target.context else { continue }
            let frame = datagram.slice(inner)
            target.frameCounters.framesIn &+= 1
            target.frameCounters.bytesIn &+= UInt64(frame.count)
            if siblings, let g = group {
                for s in g.members where s !== target { s.countBefore = s.context?.queue.frameCount ?? 0 }
                into.deliver(frame, offload: nil)
                for s in g.members where s !== target { s.markArrivals() }
            } else {
                into.deliver(frame, offload: nil)
            }
            delivered = true
        }
        if delivered { context.deliveredBatch() }
    }

    /// The queue length before a sibling uplink handed the switch a frame.
    var countBefore = 0

    /// Frames the switch just queued here came from another uplink: note their sequence numbers.
    func markArrivals() {
        guard let q = context?.queue, q.frameCount > countBefore else { return }
        for k in countBefore ..< q.frameCount {
            let s = (dequeued &+ UInt64(k)) & markMask
            marks[Int(s >> 6)] |= 1 << (s & 63)
        }
    }

    // MARK: Out

    public func flush(now: UInt64) -> Bool {
        guard let q = context?.queue else { return false }
        while let frame = q.firstFrame {
            let s = dequeued & markMask
            let bit: UInt64 = 1 << (s & 63)
            if marks[Int(s >> 6)] & bit != 0 {
                marks[Int(s >> 6)] &= ~bit
                table.counters.dropUplinkToUplink &+= 1
            } else if receiveFD < 0 {
                // closed: discard
            } else if frame.count > underlayFrameLimit {
                table.counters.dropTooBigForUnderlay &+= 1
                context?.frameTooBig(frame, mtu: underlayFrameLimit - 14)
            } else if !send(frame, now: now) {
                return true   // a socket is full: EPOLLOUT brings us back
            }
            q.removeFirstFrame()
            dequeued &+= 1
        }
        return false
    }

    /// Encapsulates and sends one frame (to its remote, or to every remote). False when the socket is full.
    func send(_ frame: UnsafeRawBufferPointer, now: UInt64) -> Bool {
        let i = Int(VXLANHeader.flowHash(frame) % UInt32(sendFDs.count))
        let dst = MACAddress(reading: frame, at: 0)
        if let r = table.unicastRemote(for: dst, now: now) {
            switch sendOne(frame, to: r, socket: i) {
            case .wouldBlock:
                if !armed[i] { armed[i] = true; try? context?.modify(sendFDs[i], events: Epoll.writable, token: 1 + i) }
                return false
            case .sent: frameCounters.framesOut &+= 1; frameCounters.bytesOut &+= UInt64(frame.count)
            case .failed: break
            }
            return true
        }
        var any = false
        for r in table.remotes {
            switch sendOne(frame, to: r, socket: i) {
            case .sent: any = true; table.counters.replicated &+= 1
            case .wouldBlock: table.counters.sendErrors &+= 1   // one copy of a flood is lost, as UDP may
            case .failed: break
            }
        }
        if any { frameCounters.framesOut &+= 1; frameCounters.bytesOut &+= UInt64(frame.count) }
        return true
    }

    enum SendOutcome { case sent, wouldBlock, failed }

    /// Socket addresses of remotes and static entries, built once (an IPv6 one would allocate per send).
    var socketAddresses: [VxlanEndpoint: SocketAddress] = [:]

    func socketAddress(_ r: VxlanEndpoint) -> SocketAddress {
        if let a = socketAddresses[r] { return a }
        let a = r.socketAddress
        if socketAddresses.count < VxlanUplink.maximumRemotes + VxlanUplink.maximumStatic { socketAddresses[r] = a }
        return a
    }

    func sendOne(_ frame: UnsafeRawBufferPointer, to remote: VxlanEndpoint, socket i: Int) -> SendOutcome {
        var address = socketAddress(remote)
        iov[0] = iovec(iov_base: header.baseAddress, iov_len: VXLANHeader.length)
        iov[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: frame.count)
        let n = withUnsafeMutableBytes(of: &address.storage) { sa -> Int in
            var msg = msghdr()
            msg.msg_name = sa.baseAddress
            msg.msg_namelen = address.length
            msg.msg_iov = iov
            msg.msg_iovlen = 2
            return Glibc.sendmsg(sendFDs[i], &msg, Int32(MSG_NOSIGNAL))
        }
        if n >= 0 { table.counters.datagramsOut &+= 1; return .sent }
        let e = errno
        if e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS { return .wouldBlock }
        if e == EMSGSIZE {
            table.counters.dropTooBigForUnderlay &+= 1
            refreshUnderlay()   // the path MTU shrank (an ICMP reached the kernel)
        } else {
            table.counters.sendErrors &+= 1
            frameCounters.sendErrors &+= 1
        }
        return .failed
    }

    public func tick(now: UInt64) -> UInt64? {
        if now &- lastExpiry >= 1_000_000_000 {
            lastExpiry = now
            table.expire(now: now)
        }
        return lastExpiry &+ 1_000_000_000
    }

    // MARK: Control

    public var controlCommands: [TransportCommand] {
        [
            TransportCommand("vxlan-fdb-add", help: "vni=N mac=MAC remote=ADDR[:PORT]: a static entry (frames for MAC go to that remote)") { [unowned self] a in
                guard try self.isMine(a) else { return nil }
                let mac = try Self.mac(a), r = try self.endpoint(a)
                do { try self.table.addStatic(mac, r) } catch { throw ControlError("vxlan-fdb-add: \(error)") }
                _ = self.socketAddress(r)
                return ControlResult(value: ["vni": Int(self.uplink.vni), "mac": mac.description, "remote": r.description], text: "vni \(self.uplink.vni): \(mac) -> \(r)")
            },
            TransportCommand("vxlan-fdb-remove", help: "vni=N mac=MAC: remove a static entry") { [unowned self] a in
                guard try self.isMine(a) else { return nil }
                let mac = try Self.mac(a)
                do { try self.table.removeStatic(mac) } catch { throw ControlError("vxlan-fdb-remove: \(error)") }
                return ControlResult(value: ["vni": Int(self.uplink.vni), "mac": mac.description], text: "vni \(self.uplink.vni): \(mac) removed")
            },
            TransportCommand("vxlan-fdb-list", help: "vni=N: static and learned MACs with their remotes") { [unowned self] a in
                guard try self.isMine(a) else { return nil }
                return self.fdbList()
            },
            TransportCommand("vxlan-remote-add", help: "vni=N remote=ADDR[:PORT]: flood to and accept from one more remote") { [unowned self] a in
                guard try self.isMine(a) else { return nil }
                let r = try self.endpoint(a)
                do { try self.table.addRemote(r) } catch { throw ControlError("vxlan-remote-add: \(error)") }
                _ = self.socketAddress(r)
                self.refreshUnderlay()
                return self.remoteList()
            },
            TransportCommand("vxlan-remote-remove", help: "vni=N remote=ADDR[:PORT]: stop flooding to and accepting from a remote") { [unowned self] a in
                guard try self.isMine(a) else { return nil }
                let r = try self.endpoint(a)
                do { try self.table.removeRemote(r) } catch { throw ControlError("vxlan-remote-remove: \(error)") }
                self.refreshUnderlay()
                return self.remoteList()
            },
            TransportCommand("vxlan-remote-list", help: "vni=N: the remotes and the underlay MTU") { [unowned self] a in
                guard try self.isMine(a) else { return nil }
                return self.remoteList()
            },
        ]
    }

    func isMine(_ a: ControlArguments) throws -> Bool {
        guard let v = try a.optionalInt("vni") else { throw ControlError("missing argument 'vni'") }
        return v == Int(uplink.vni)
    }

    static func mac(_ a: ControlArguments) throws -> MACAddress {
        let s = try a.string("mac")
        guard let m = MACAddress(s) else { throw ControlError("mac='\(s)' is not a MAC address") }
        return m
    }

    func endpoint(_ a: ControlArguments) throws -> VxlanEndpoint {
        let s = try a.string("remote")
        guard let e = VxlanEndpoint.parse(Substring(s)) else { throw ControlError("remote='\(s)' is not ADDR[:PORT]") }
        guard e.address.isIPv4 == uplink.local.address.isIPv4 else { throw ControlError("remote \(e) is not of the local address's family (\(uplink.local))") }
        return e
    }

    func fdbList() -> ControlResult {
        let now = Sys.monotonicNanoseconds()
        var rows: [[String: Any]] = []
        var lines = ["MAC                Remote                         Type     Seen (s ago)"]
        for (m, r) in table.statics.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            rows.append(["mac": m.description, "remote": r.description, "type": "static"])
            lines.append("\(m)  \(UserNetRuntime.pad(r.description, 29, left: true))  static   -")
        }
        for (m, e) in table.learned.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            let age = (now &- e.lastSeen) / 1_000_000_000
            rows.append(["mac": m.description, "remote": e.remote.description, "type": "learned", "seen": Int(age)])
            lines.append("\(m)  \(UserNetRuntime.pad(e.remote.description, 29, left: true))  learned  \(age)")
        }
        if rows.isEmpty { lines.append("(empty)") }
        return ControlResult(value: ["vni": Int(uplink.vni), "entries": rows], text: lines.joined(separator: "\n"))
    }

    func remoteList() -> ControlResult {
        let remotes = table.remotes.map(\.description)
        var value: [String: Any] = ["vni": Int(uplink.vni), "local": uplink.local.description, "remotes": remotes, "learning": uplink.learning]
        if let m = underlayMTU { value["underlay_mtu"] = m }
        return ControlResult(value: value, text: "vni \(uplink.vni) local \(uplink.local): " + (remotes.isEmpty ? "(no remotes)" : remotes.joined(separator: " "))
                             + (underlayMTU.map { " (underlay mtu \($0))" } ?? ""))
    }
}
