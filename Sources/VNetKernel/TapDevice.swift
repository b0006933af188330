// TAP devices through /dev/net/tun, and QEMU's ifup/ifdown script convention.
//
// Theory of Operation
// -------------------
// TUNSETIFF creates a TAP (or attaches to an existing one) and ties it to the fd. A TAP lives as long as an
// fd holds it, unless TUNSETPERSIST marks it persistent; then it lives until it is deleted. vnet makes the
// taps it is asked to keep (and the taps `vnet tap run` hands to QEMU by name) persistent and deletes them
// over rtnetlink. TUNSETOWNER/TUNSETGROUP let an unprivileged QEMU open a persistent tap. The flags given at
// creation (IFF_VNET_HDR, IFF_MULTI_QUEUE) are the tap's; a multiqueue tap must be reopened as multiqueue.
//
// Scripts follow QEMU: `script IFNAME` after the tap exists, `downscript IFNAME` before it goes; "no" (or
// nothing) skips them; a script that cannot start, exits non-zero or dies of a signal is an error that says
// which.

import CVNetShim
#if canImport(Glibc)
import Glibc
#endif

public struct TapOptions: Equatable, Sendable {
    public var name: String
    public var owner: UInt32?
    public var group: UInt32?
    public var vnetHeader = false
    public var multiQueue = false

    public init(name: String, owner: UInt32? = nil, group: UInt32? = nil, vnetHeader: Bool = false, multiQueue: Bool = false) {
        self.name = name
        self.owner = owner
        self.group = group
        self.vnetHeader = vnetHeader
        self.multiQueue = multiQueue
    }

    public var flags: Int32 {
        (vnetHeader ? Int32(vnet_IFF_VNET_HDR()) : 0) | (multiQueue ? Int32(vnet_IFF_MULTI_QUEUE()) : 0)
    }
}

public enum TapDevice {
    /// Opens (creating if needed) a TAP; returns the fd and the name the kernel used (it picks "tapN" for "").
    public static func open(_ options: TapOptions) throws -> (fd: Int32, name: String) {
        if !options.name.isEmpty { try validateInterfaceName(options.name) }
        var nameBuffer = [CChar](repeating: 0, count: Int(IFNAMSIZ))
        for (i, b) in options.name.utf8.enumerated() { nameBuffer[i] = CChar(bitPattern: b) }
        let fd = vnet_tap_create(&nameBuffer, options.flags)
        guard fd >= 0 else {
            let label = options.name.isEmpty ? "a new tap" : "tap \(options.name)"
            if -fd == EINVAL { throw KernelModeError("create \(label): invalid flags (an existing tap must be reopened with the same multiqueue setting)") }
            if -fd == EBUSY { throw KernelModeError("create \(label): it is in use by another program") }
            throw KernelError("create \(label)", errno: -fd)
        }
        let name = nameBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return (fd, name)
    }

    /// Creates a persistent tap (owner/group set) and closes vnet's fd; the tap stays until deleted.
    /// Returns the tap's name. Fails with "it exists already" when a link of that name exists.
    public static func createPersistent(_ options: TapOptions, route: RouteSocket) throws -> String {
        if !options.name.isEmpty, try route.link(named: options.name) != nil {
            throw KernelError("create tap \(options.name)", errno: EEXIST)
        }
        let (fd, name) = try open(options)
        defer { Glibc.close(fd) }
        if let uid = options.owner {
            let r = vnet_tap_set_owner(fd, uid)
            guard r == 0 else { throw KernelError("set the owner of \(name)", errno: -r) }
        }
        if let gid = options.group {
            let r = vnet_tap_set_group(fd, gid)
            guard r == 0 else { throw KernelError("set the group of \(name)", errno: -r) }
        }
        let r = vnet_tap_set_persist(fd, 1)
        guard r == 0 else { throw KernelError("make \(name) persistent", errno: -r) }
        return name
    }

    /// Deletes a tap by name (it must be a tun/tap device).
    public static func delete(_ name: String, route: RouteSocket) throws {
        let link = try route.requireLink(name, role: "tap")
        guard link.kind == "tun" else {
            throw KernelModeError("\(name) is not a tap (it is \(link.kind.map { "a \($0) device" } ?? "a plain device"))")
        }
        try route.deleteLink(link)
    }
}

/// QEMU's `script=` / `downscript=`: a program run with the interface name as its only argument.
public enum InterfaceScript {
    /// nil for "no", "" or nil (skip); otherwise the path.
    public static func path(_ value: String?) -> String? {
        guard let v = value, !v.isEmpty, v != "no" else { return nil }
        return v
    }

    /// Runs `path IFNAME` and waits; throws a message naming the script and its status unless it exits 0.
    public static func run(_ path: String, interface: String, role: String) throws {
        let args = [path, interface]
        var cArgs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
        cArgs.append(nil)
        defer { for p in cArgs { free(p) } }
        let status = cArgs.withUnsafeBufferPointer { vnet_run_and_wait($0.baseAddress!, 0) }
        if status < 0 { throw KernelModeError("\(role) \(path) \(interface) could not be started: \(String(cString: strerror(-status)))") }
        if status >= 256 { throw KernelModeError("\(role) \(path) \(interface) was killed by signal \(status - 256)") }
        if status != 0 { throw KernelModeError("\(role) \(path) \(interface) failed with exit status \(status)") }
    }
}
