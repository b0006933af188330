// Network namespaces: opening a TAP inside another namespace.
//
// Theory of Operation
// -------------------
// A TAP belongs to the namespace it was created in, and an fd keeps working wherever it is used. So the
// calling thread enters the target namespace (setns), creates the TAP there, sets it up (offloads, MTU, up),
// and returns to its own namespace at once; nothing else happens in between. Callers do this first, before
// any other socket exists, so no socket is ever created in the wrong namespace. Failing to return is fatal:
// the thread would otherwise go on in a namespace it does not own.

import CVNetShim
#if canImport(Glibc)
import Glibc
#endif

extension Sys {
    /// Creates (or attaches) the TAP `name` inside the network namespace `netns` (a path, or a PID), brings it
    /// up with `mtu` and returns its fd. With `offload`, every frame carries a virtio-net header
    /// (IFF_VNET_HDR) and the kernel may hand over partial checksums and TCP super-segments, and take them.
    public static func openTap(inNamespace netns: String, name: String, mtu: Int, offload: Bool) throws -> Int32 {
        guard !name.isEmpty, name.utf8.count < 16 else { throw HostError("--tap: interface name must be 1-15 bytes") }
        let nsPath = netns.allSatisfy(\.isNumber) ? "/proc/\(netns)/ns/net" : netns
        let target = Glibc.open(nsPath, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw HostError("--netns: cannot open \(nsPath): \(errnoString(errno))") }
        defer { Glibc.close(target) }
        let original = Glibc.open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else { throw HostError("cannot open own netns: \(errnoString(errno))") }
        defer { Glibc.close(original) }
        guard vnet_setns_net(target) == 0 else { throw HostError("setns(\(nsPath)): \(errnoString(errno))") }
        let fd = vnet_tap_open(name, offload ? Int32(IFF_VNET_HDR) : 0)
        let offloaded = fd >= 0 && offload ? vnet_tap_enable_offload(fd) : 0
        let up = fd >= 0 ? vnet_link_up(name, Int32(mtu)) : 0
        guard vnet_setns_net(original) == 0 else { fatalError("cannot return to the original network namespace") }
        guard fd >= 0 else { throw HostError("--tap \(name): \(errnoString(-fd))") }
        guard up == 0 else { Glibc.close(fd); throw HostError("--tap \(name): bringing it up: \(errnoString(-up))") }
        guard offloaded == 0 else {
            Glibc.close(fd)
            throw HostError("--tap \(name): TUNSETOFFLOAD: \(errnoString(-offloaded)) (try --no-tap-offload)")
        }
        return fd
    }

    /// Joins the IPv4 multicast `group` on the interface with `local` (addresses in host order) on a bound
    /// receiving socket.
    public static func joinMulticast(_ fd: Int32, group: UInt32, local: UInt32) throws(SyscallError) {
        guard vnet_mcast_join(fd, group.bigEndian, local.bigEndian) == 0 else { throw SyscallError("IP_ADD_MEMBERSHIP", errno) }
    }

    /// Makes `fd` send multicast out of the interface with `local` (host order), looping back to local members.
    public static func sendMulticast(_ fd: Int32, from local: UInt32) throws(SyscallError) {
        guard vnet_mcast_sender(fd, local.bigEndian) == 0 else { throw SyscallError("IP_MULTICAST_IF", errno) }
    }
}
