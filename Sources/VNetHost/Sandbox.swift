// `--sandbox`: after set-up, give up every capability and confine the process to the syscalls vnet's data path
// and control plane make. The BPF program and the prctl/seccomp/capset calls live in CVNetShim (sandbox.c);
// this file is the Swift face of them.
//
// Order matters: capabilities first (capset is not on the allow-list), then no_new_privs and the filter.

import CVNetShim
#if canImport(Glibc)
import Glibc
#endif

public enum Sandbox {
    /// What a denied call returns: EPERM (see CVNetShim.h for why not kill).
    public static var denyAction: UInt32 { vnet_seccomp_ret_errno(EPERM) }

    /// The seccomp program for this architecture, denying with `deny`.
    public static func filter(deny: UInt32 = Sandbox.denyAction) throws -> [sock_filter] {
        var program = [sock_filter](repeating: sock_filter(), count: 512)
        let n = program.withUnsafeMutableBufferPointer { vnet_sandbox_build_filter($0.baseAddress, Int32($0.count), deny) }
        guard n > 0 else { throw SyscallError("building the seccomp filter", -n) }
        return Array(program[..<Int(n)])
    }

    /// The syscall numbers allowed without an argument check.
    public static var plainAllowed: [Int32] {
        (0 ..< vnet_sandbox_plain_count()).map { vnet_sandbox_plain_syscall($0) }
    }

    public struct Report: Sendable {
        /// Whether the bounding set was emptied (needs CAP_SETPCAP: root, or a capable user namespace).
        public var boundingSetDropped: Bool
        public var filterLength: Int
    }

    /// Drops every capability, sets no_new_privs and installs the filter. Irreversible for this process.
    /// Enters the sandbox and returns the start-up line that says what took effect; `refused` names what the
    /// caller refuses from now on (a second line). Errors name the flag (`--sandbox: …`).
    public static func enter(refusing refused: String) throws -> [String] {
        let report: Report
        do { report = try enter() } catch { throw SandboxError(description: "--sandbox: \(error)") }
        return ["vnet: sandbox: capabilities dropped\(report.boundingSetDropped ? " (bounding set too)" : " (bounding set kept: no CAP_SETPCAP)"), no_new_privs, seccomp filter of \(report.filterLength) instructions (other syscalls fail with EPERM)",
                "vnet: sandbox: refused from now on: \(refused); socket files stay behind on exit"]
    }

    public struct SandboxError: Error, CustomStringConvertible {
        public var description: String
    }

    public static func enter() throws -> Report {
        let program = try filter()
        var bounding: Int32 = 0
        let c = vnet_sandbox_drop_capabilities(&bounding)
        guard c == 0 else { throw SyscallError("dropping capabilities", -c) }
        let r = program.withUnsafeBufferPointer { vnet_sandbox_install_filter($0.baseAddress, Int32($0.count)) }
        guard r == 0 else { throw SyscallError("installing the seccomp filter", -r) }
        return Report(boundingSetDropped: bounding != 0, filterLength: program.count)
    }

    /// The lowest port an unprivileged process may bind (net.ipv4.ip_unprivileged_port_start, default 1024).
    /// Read before the drop: after it, binding below this fails without CAP_NET_BIND_SERVICE.
    public static func unprivilegedPortStart() -> Int {
        let fd = open("/proc/sys/net/ipv4/ip_unprivileged_port_start", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 1024 }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 16)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 1024 }
        var v = 0
        for b in buf[..<n] where b >= 0x30 && b <= 0x39 { v = v * 10 + Int(b - 0x30) }
        return v
    }
}
