// A NETLINK_ROUTE socket and the operations vnet performs over it (bridges, links, addresses).
//
// Theory of Operation
// -------------------
// Each request carries a fresh sequence number and asks for an acknowledgement; `transact` reads replies
// until the NLMSG_ERROR with that sequence arrives (errno 0 is success). Dumps read until NLMSG_DONE. Replies
// with another sequence number (stale ones) are skipped. A reply that does not parse is an error, never a
// guess. Kernel errors become `KernelError`, whose text says what went wrong in words (see its description).

import CVNetShim
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

/// A failed kernel operation: what vnet tried, the errno, and the kernel's own text when it sent one.
public struct KernelError: Error, CustomStringConvertible, Equatable {
    public var operation: String
    public var errno: Int32
    public var kernelMessage: String?

    public init(_ operation: String, errno: Int32, kernelMessage: String? = nil) {
        self.operation = operation
        self.errno = errno
        self.kernelMessage = kernelMessage
    }

    /// The errno in plain words, for the errors people meet.
    public static func explain(_ e: Int32) -> String {
        switch e {
        case EEXIST: "it exists already"
        case ENODEV: "no such interface"
        case ENOENT: "no such file or interface"
        case EPERM, EACCES: "not permitted (needs root or CAP_NET_ADMIN)"
        case EBUSY: "the device is busy"
        case EOPNOTSUPP: "not supported by this kernel or device"
        case EADDRNOTAVAIL: "no such address on the interface"
        case ELOOP: "that would make a loop"
        case EINVAL: "invalid argument"
        default: String(cString: strerror(e))
        }
    }

    public var description: String {
        var s = "\(operation): \(KernelError.explain(errno))"
        if let k = kernelMessage, !k.isEmpty { s += " (kernel: \(k))" }
        return s
    }
}

/// A plain failure with a message for people (not an errno).
public struct KernelModeError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public final class RouteSocket {
    public let fd: Int32
    var sequence: UInt32 = 1
    var buffer = [UInt8](repeating: 0, count: 1 << 16)

    public init() throws {
        let r = vnet_netlink_route_open()
        guard r >= 0 else { throw KernelError("open a NETLINK_ROUTE socket", errno: -r) }
        fd = r
    }

    deinit { Glibc.close(fd) }

    func nextSequence() -> UInt32 {
        sequence &+= 1
        return sequence
    }

    func receive() throws -> [NetlinkMessage] {
        let n = buffer.withUnsafeMutableBytes { vnet_netlink_recv(fd, $0.baseAddress, $0.count) }
        guard n >= 0 else { throw KernelError("read from netlink", errno: Int32(-n)) }
        guard n <= buffer.count else { throw KernelModeError("netlink: a reply of \(n) bytes exceeded the \(buffer.count)-byte buffer") }
        do { return try NetlinkMessages.parse(Array(buffer[0 ..< n])) } catch { throw KernelModeError("\(error)") }
    }

    func send(_ message: [UInt8], _ operation: String) throws {
        let r = message.withUnsafeBytes { vnet_netlink_send(fd, $0.baseAddress, $0.count) }
        guard r == 0 else { throw KernelError(operation, errno: -r) }
    }

    /// Sends a request that asks for an ack and waits for it.
    public func transact(_ operation: String, _ build: (UInt32) -> [UInt8]) throws {
        let seq = nextSequence()
        try send(build(seq), operation)
        while true {
            for m in try receive() where m.sequence == seq {
                guard m.type == Netlink.error else { continue }
                let ack: NetlinkAck
                do { ack = try NetlinkAck.parse(m) } catch { throw KernelModeError("\(error)") }
                if ack.errno != 0 { throw KernelError(operation, errno: ack.errno, kernelMessage: ack.message) }
                return
            }
        }
    }

    /// Sends a dump request and collects the payloads of messages of `type` until NLMSG_DONE.
    func dump(_ operation: String, type: UInt16, _ build: (UInt32) -> [UInt8]) throws -> [ArraySlice<UInt8>] {
        let seq = nextSequence()
        try send(build(seq), operation)
        var out: [ArraySlice<UInt8>] = []
        while true {
            for m in try receive() where m.sequence == seq {
                switch m.type {
                case Netlink.done: return out
                case Netlink.error:
                    let ack: NetlinkAck
                    do { ack = try NetlinkAck.parse(m) } catch { throw KernelModeError("\(error)") }
                    if ack.errno != 0 { throw KernelError(operation, errno: ack.errno, kernelMessage: ack.message) }
                    return out
                case type: out.append(m.payload)
                default: continue
                }
            }
        }
    }

    // MARK: links

    public func links() throws -> [LinkInfo] {
        try dump("list interfaces", type: Netlink.newLink) { LinkRequests.dumpLinks(sequence: $0) }.map { p in
            do { return try LinkInfo.parse(p) } catch { throw KernelModeError("\(error)") }
        }
    }

    public func link(named name: String) throws -> LinkInfo? { try links().first { $0.name == name } }

    /// The link `name`, or a "no such interface" error naming it.
    public func requireLink(_ name: String, role: String = "interface") throws -> LinkInfo {
        guard let l = try link(named: name) else { throw KernelError("\(role) \(name)", errno: ENODEV) }
        return l
    }

    public func requireBridge(_ name: String) throws -> LinkInfo {
        let l = try requireLink(name, role: "bridge")
        guard l.isBridge else { throw KernelModeError("\(name) is not a bridge (it is \(l.kind.map { "a \($0) device" } ?? "a plain device"))") }
        return l
    }

    public func createLink(name: String, kind: String) throws {
        try validateInterfaceName(name)
        try transact("create \(kind) \(name)") { LinkRequests.create(name: name, kind: kind, sequence: $0) }
    }

    public func deleteLink(_ link: LinkInfo) throws {
        try transact("delete \(link.name)") { LinkRequests.delete(index: link.index, sequence: $0) }
    }

    public func setMaster(_ link: LinkInfo, bridge: LinkInfo?) throws {
        let what = bridge.map { "add \(link.name) to \($0.name)" } ?? "remove \(link.name) from its bridge"
        try transact(what) { LinkRequests.setMaster(index: link.index, master: bridge?.index ?? 0, sequence: $0) }
    }

    public func setUp(_ link: LinkInfo, _ up: Bool = true) throws {
        try transact("set \(link.name) \(up ? "up" : "down")") { LinkRequests.setUp(index: link.index, up: up, sequence: $0) }
    }

    public func setMTU(_ link: LinkInfo, _ mtu: UInt32) throws {
        try transact("set the MTU of \(link.name) to \(mtu)") { LinkRequests.setMTU(index: link.index, mtu: mtu, sequence: $0) }
    }

    public func setSTP(_ bridge: LinkInfo, on: Bool) throws {
        try transact("turn STP \(on ? "on" : "off") on \(bridge.name)") { LinkRequests.setSTP(index: bridge.index, on: on, sequence: $0) }
    }

    // MARK: addresses

    public func addresses() throws -> [AddressInfo] {
        try dump("list addresses", type: Netlink.newAddress) { LinkRequests.dumpAddresses(sequence: $0) }.compactMap { p in
            do { return try AddressInfo.parse(p) } catch { throw KernelModeError("\(error)") }
        }
    }

    public func addresses(of link: LinkInfo) throws -> [AddressInfo] { try addresses().filter { $0.index == link.index } }

    public func addAddress(_ link: LinkInfo, _ address: IPv4Address, prefixLength: Int) throws {
        try transact("add \(address)/\(prefixLength) to \(link.name)") {
            LinkRequests.address(add: true, index: link.index, address: address, prefixLength: prefixLength, sequence: $0)
        }
    }

    public func deleteAddress(_ link: LinkInfo, _ address: IPv4Address, prefixLength: Int) throws {
        try transact("remove \(address)/\(prefixLength) from \(link.name)") {
            LinkRequests.address(add: false, index: link.index, address: address, prefixLength: prefixLength, sequence: $0)
        }
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
public func validateInterfaceName(_ name: String) throws {
    let b = Array(name.utf8)
    guard !b.isEmpty, b.count <= 15, name != ".", name != "..",
          !b.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }) else {
        throw KernelModeError("'\(name)' is not a valid interface name (1-15 characters, no '/', ':' or spaces)")
    }
}

/// `brctl show`'s table, from the interfaces the kernel reported.
public enum BrctlShow {
    public static func render(_ links: [LinkInfo], only: String? = nil) -> String {
        var out = "bridge name\tbridge id\t\tSTP enabled\tinterfaces\n"
        let bridges = links.filter { $0.isBridge && (only == nil || $0.name == only) }.sorted { $0.name < $1.name }
        for br in bridges {
            out += br.name + "\t\t" + br.bridgeIDText + "\t" + ((br.stpState ?? 0) != 0 ? "yes" : "no") + "\t\t"
            let ports = links.filter { $0.master == br.index }.map(\.name).sorted()
            if ports.isEmpty { out += "\n" }
            for (i, p) in ports.enumerated() { out += (i == 0 ? "" : "\t\t\t\t\t\t\t") + p + "\n" }
        }
        return out
    }
}
