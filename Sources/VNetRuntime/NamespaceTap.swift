// Opening a TAP in a namespace owned by another user namespace (rootlesskit's, podman's), from Swift.
//
// The work happens in C (CVNetShim/nsjoin.c): a forked single-threaded child joins the user namespace and the
// network namespace, opens (and with `configure` sets up) the TAP, and passes the fd back. This file fills the
// request and turns a failed step into one line of text.

import CVNetShim
import VNetHost
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public struct NamespaceTap: Sendable {
    /// The user namespace to join first ("" to stay in ours); a failure to join is ignored, as slirp4netns does.
    public var userNamespacePath: String
    public var networkNamespacePath: String
    public var name: String
    /// Open with IFF_VNET_HDR and checksum/TSO offload.
    public var offload: Bool
    /// `--configure`: MAC (optional), MTU, address/prefix, default route via `gateway`, up.
    public var configure: Bool
    public var mtu: Int
    public var mac: MACAddress?
    public var address: IPv4Address
    public var prefixLength: Int
    public var gateway: IPv4Address

    public init(userNamespacePath: String, networkNamespacePath: String, name: String, offload: Bool, configure: Bool,
                mtu: Int, mac: MACAddress?, address: IPv4Address, prefixLength: Int, gateway: IPv4Address) {
        self.userNamespacePath = userNamespacePath
        self.networkNamespacePath = networkNamespacePath
        self.name = name
        self.offload = offload
        self.configure = configure
        self.mtu = mtu
        self.mac = mac
        self.address = address
        self.prefixLength = prefixLength
        self.gateway = gateway
    }

    static let stepNames: [Int32: String] = [
        1: "fork", 2: "open the user namespace", 3: "open the network namespace", 4: "setns(CLONE_NEWNET)",
        5: "open /dev/net/tun", 6: "TUNSETIFF", 7: "TUNSETOFFLOAD", 8: "configure: socket",
        9: "configure: set the MAC address", 10: "configure: set the MTU", 11: "configure: bring it up",
        12: "configure: set the address", 13: "configure: add the default route",
    ]

    /// Opens the TAP; returns its fd (non-blocking, close-on-exec), its MAC address as the namespace sees it, and
    /// whether it carries virtio-net headers with offload (asked for, and allowed by the device).
    public func open() throws -> (fd: Int32, mac: MACAddress, offload: Bool) {
        guard !name.isEmpty, name.utf8.count < 16 else { throw RuntimeError("tap name must be 1-15 bytes: '\(name)'") }
        guard userNamespacePath.utf8.count < 4096, networkNamespacePath.utf8.count < 4096, !networkNamespacePath.isEmpty else {
            throw RuntimeError("namespace path too long")
        }
        var q = vnet_ns_tap_request()
        withUnsafeMutableBytes(of: &q.userns_path) { b in copyCString(userNamespacePath, into: b) }
        withUnsafeMutableBytes(of: &q.netns_path) { b in copyCString(networkNamespacePath, into: b) }
        withUnsafeMutableBytes(of: &q.name) { b in copyCString(name, into: b) }
        q.vnet_hdr = offload ? 1 : 0
        q.configure = configure ? 1 : 0
        q.mtu = Int32(mtu)
        if let m = mac {
            q.has_mac = 1
            withUnsafeMutableBytes(of: &q.mac) { b in
                for i in 0 ..< 6 { b[i] = UInt8(truncatingIfNeeded: m.rawValue >> UInt64(40 - 8 * i)) }
            }
        }
        let mask: UInt32 = prefixLength == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefixLength)
        q.address_be = address.rawValue.bigEndian
        q.netmask_be = mask.bigEndian
        q.gateway_be = gateway.rawValue.bigEndian
        var step: Int32 = 0
        var macBytes = [UInt8](repeating: 0, count: 6)
        var offloaded: Int32 = 0
        let fd = vnet_ns_tap_open(&q, &step, &macBytes, &offloaded)
        guard fd >= 0 else {
            throw RuntimeError("tap \(name) in \(networkNamespacePath): \(NamespaceTap.stepNames[step] ?? "step \(step)"): \(Sys.errnoString(-fd))")
        }
        return (fd, MACAddress(macBytes[0], macBytes[1], macBytes[2], macBytes[3], macBytes[4], macBytes[5]), offloaded != 0)
    }

    func copyCString(_ s: String, into b: UnsafeMutableRawBufferPointer) {
        let u = Array(s.utf8.prefix(b.count - 1))
        for (i, c) in u.enumerated() { b[i] = c }
        b[u.count] = 0
    }
}
