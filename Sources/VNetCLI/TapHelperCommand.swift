// `vnet tap-helper`: a drop-in for qemu-bridge-helper.
//
// QEMU runs `-netdev tap,id=n0,helper="vnet tap-helper --br=br0"` (or `-netdev bridge,br=br0,helper=...`) as
// `/bin/sh -c "vnet tap-helper --br=br0 --use-vnet --fd=N"` with N one end of a unix socketpair. The helper
// creates a tap (the kernel names it tapN), gives it the bridge's MTU, attaches it to the bridge, brings it up,
// and sends the tap's fd back over fd N as SCM_RIGHTS with one byte; then exits 0. The tap is not persistent:
// it goes away when QEMU closes it. Any failure exits non-zero with one line on stderr, which QEMU shows.
//
// Access control follows qemu-bridge-helper when vnet is installed setuid root (real uid != effective uid):
// only bridges allowed by /etc/qemu/bridge.conf (`allow NAME`, `allow all`, `deny NAME`, `deny all`; a deny
// wins over an allow, as there) may be used. Run by root directly, any bridge may be used.

import ArgumentParser
import CVNetShim
import VNetKernel
#if canImport(Glibc)
import Glibc
#endif

struct TapHelperCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap-helper",
        abstract: "qemu-bridge-helper's protocol: create a tap on a bridge and pass its fd to QEMU.")

    @Option(name: .customLong("br"), help: "The bridge to attach the tap to.") var bridge: String = "br0"
    @Option(name: .customLong("fd"), help: "The unix socket (from QEMU) to send the tap's fd over.") var fd: Int32?
    @Flag(name: .customLong("use-vnet"), help: "Open the tap with IFF_VNET_HDR (QEMU asks for it).") var useVnet = false
    @Option(name: .customLong("acl"), help: "The access list consulted when vnet runs setuid.") var aclPath: String = "/etc/qemu/bridge.conf"

    func validate() throws {
        guard let f = fd, f >= 0 else { throw ValidationError("--fd=N is required (QEMU passes it)") }
    }

    func run() throws {
        let sock = fd!
        if getuid() != geteuid() {
            let text = readSmallFile(aclPath) ?? ""
            guard BridgeACL.allows(bridge, config: text) else {
                fail("access denied by \(aclPath): bridge \(bridge) is not allowed", code: 1)
            }
        }
        try kernelCall {
            let route = try RouteSocket()
            let br = try route.requireBridge(bridge)
            let (tapFD, name) = try TapDevice.open(TapOptions(name: "", vnetHeader: useVnet))
            let tap = try route.requireLink(name, role: "tap")
            if let m = br.mtu, m != tap.mtu { try route.setMTU(tap, m) }
            try route.setMaster(tap, bridge: br)
            try route.setUp(tap)
            let r = vnet_send_fd(sock, tapFD)
            guard r == 0 else { throw KernelError("send the tap's fd over fd \(sock)", errno: -r) }
            Glibc.close(tapFD)
        }
    }
}

/// Reads a small text file (up to 64 KiB), or nil.
func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while out.count < 65536 {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0 ..< n]
    }
    return String(decoding: out, as: UTF8.self)
}
