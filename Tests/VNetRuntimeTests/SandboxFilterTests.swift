// The `--sandbox` seccomp program (CVNetShim/sandbox.c), run through a small classic-BPF interpreter written
// here from the kernel's documentation (Documentation/networking/filter.rst, seccomp_filter.rst), so the test
// checks what the kernel would decide for a call, not how the program happens to be laid out.

import CVNetShim
import Testing
import VNetHost
#if canImport(Glibc)
import Glibc
#endif

/// struct seccomp_data: nr (s32) at 0, arch (u32) at 4, instruction_pointer (u64) at 8, args[6] (u64) at 16.
struct SeccompCall {
    var nr: Int32
    var arch: UInt32 = vnet_sandbox_audit_arch()
    var args: [UInt64] = [0, 0, 0, 0, 0, 0]

    func word(at offset: UInt32) -> UInt32? {
        var bytes = [UInt8](repeating: 0, count: 64)
        withUnsafeBytes(of: nr.littleEndian) { for (i, b) in $0.enumerated() { bytes[i] = b } }
        withUnsafeBytes(of: arch.littleEndian) { for (i, b) in $0.enumerated() { bytes[4 + i] = b } }
        for (n, a) in args.enumerated() {
            withUnsafeBytes(of: a.littleEndian) { for (i, b) in $0.enumerated() { bytes[16 + 8 * n + i] = b } }
        }
        guard offset % 4 == 0, offset + 4 <= 64 else { return nil }
        let o = Int(offset)
        return UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
    }
}

enum BPFError: Error { case badOpcode(UInt16, Int), badLoad(UInt32), fellOffTheEnd, jumpOutOfRange(Int) }

/// Runs a seccomp program: the subset the kernel accepts that vnet's program uses (LD W ABS, JEQ/JGE/JSET K, RET K).
func runFilter(_ program: [sock_filter], _ call: SeccompCall) throws -> UInt32 {
    var a: UInt32 = 0
    var pc = 0
    while pc < program.count {
        let i = program[pc]
        switch i.code {
        case 0x20:   // BPF_LD | BPF_W | BPF_ABS
            guard let w = call.word(at: i.k) else { throw BPFError.badLoad(i.k) }
            a = w
            pc += 1
        case 0x15, 0x35, 0x45:   // BPF_JMP | BPF_JEQ / BPF_JGE / BPF_JSET, BPF_K
            let taken = i.code == 0x15 ? a == i.k : i.code == 0x35 ? a >= i.k : a & i.k != 0
            pc += 1 + Int(taken ? i.jt : i.jf)
            guard pc < program.count else { throw BPFError.jumpOutOfRange(pc) }
        case 0x06:   // BPF_RET | BPF_K
            return i.k
        default:
            throw BPFError.badOpcode(i.code, pc)
        }
    }
    throw BPFError.fellOffTheEnd
}

func nr(_ name: String) -> Int32 {
    let n = vnet_nr_named(name)
    precondition(n >= 0, "no syscall number for \(name) in the shim's table")
    return n
}

@Suite("Sandbox filter")
struct SandboxFilterTests {
    let allow = vnet_seccomp_ret_allow()
    let eperm = vnet_seccomp_ret_errno(EPERM)
    let kill = vnet_seccomp_ret_kill_process()

    func decide(_ call: SeccompCall, program: [sock_filter]? = nil) throws -> UInt32 {
        try runFilter(program ?? Sandbox.filter(), call)
    }

    @Test("builds for this architecture, within the kernel's 4096 instructions, in one program")
    func builds() throws {
        #expect(vnet_sandbox_audit_arch() != 0)
        let p = try Sandbox.filter()
        #expect(p.count > 50 && p.count <= 4096)
        #expect(p[0].code == 0x20 && p[0].k == 4, "the first instruction loads seccomp_data.arch")
        #expect(p.last.map { $0.code == 0x06 && $0.k == eperm } == true, "anything unmatched is denied")
        // Too small a buffer is reported, never truncated silently.
        var small = [sock_filter](repeating: sock_filter(), count: 8)
        #expect(small.withUnsafeMutableBufferPointer { vnet_sandbox_build_filter($0.baseAddress, 8, eperm) } == -ENOSPC)
    }

    @Test("every plain allow-listed call is allowed whatever its arguments")
    func plainAllowed() throws {
        let p = try Sandbox.filter()
        let list = Sandbox.plainAllowed
        #expect(list.count == Set(list).count, "no duplicates")
        for n in list {
            #expect(try decide(SeccompCall(nr: n), program: p) == allow, "syscall \(n)")
            #expect(try decide(SeccompCall(nr: n, args: [.max, .max, .max, .max, .max, .max]), program: p) == allow, "syscall \(n)")
        }
        for name in ["read", "write", "epoll_pwait", "accept4", "exit_group"] {
            #expect(try decide(SeccompCall(nr: nr(name)), program: p) == allow, "\(name)")
        }
    }

    @Test("processes, files changed by path, namespaces, tracing and privileges are refused with EPERM",
          arguments: ["execve", "execveat", "clone", "clone3", "fork", "unlinkat", "unlink", "renameat2", "ptrace", "setns", "mount",
                      "kill", "prctl", "capset"])
    func refused(_ name: String) throws {
        let n = vnet_nr_named(name)
        guard n >= 0 else { return }   // e.g. fork and unlink do not exist on aarch64
        #expect(try decide(SeccompCall(nr: n)) == eperm)
        #expect(try decide(SeccompCall(nr: n), program: Sandbox.filter(deny: kill)) == kill, "the deny action is the caller's")
    }

    @Test("openat: read-only opens only")
    func openat() throws {
        let p = try Sandbox.filter()
        let n = nr("openat")
        func flags(_ f: Int32) throws -> UInt32 { try decide(SeccompCall(nr: n, args: [UInt64(bitPattern: -100), 0, UInt64(UInt32(bitPattern: f)), 0, 0, 0]), program: p) }
        #expect(try flags(O_RDONLY) == allow)
        #expect(try flags(O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK) == allow)
        #expect(try flags(O_RDONLY | O_DIRECTORY | O_CLOEXEC) == allow)
        for f in [O_WRONLY, O_RDWR, O_WRONLY | O_CREAT | O_TRUNC, O_RDONLY | O_CREAT, O_RDONLY | O_TRUNC, O_WRONLY | O_APPEND] {
            #expect(try flags(f | O_CLOEXEC) == eperm, "flags \(f)")
        }
        if let open = Optional(vnet_nr_named("open")), open >= 0 {
            #expect(try decide(SeccompCall(nr: open, args: [0, UInt64(O_RDONLY), 0, 0, 0, 0]), program: p) == allow)
            #expect(try decide(SeccompCall(nr: open, args: [0, UInt64(O_WRONLY | O_CREAT), 0o600, 0, 0, 0]), program: p) == eperm)
        }
    }

    @Test("socket: IPv4, IPv6 and unix only")
    func socket() throws {
        let p = try Sandbox.filter()
        let n = nr("socket")
        for (family, expected) in [(AF_INET, allow), (AF_INET6, allow), (AF_UNIX, allow), (AF_NETLINK, eperm), (AF_PACKET, eperm), (AF_KEY, eperm)] {
            #expect(try decide(SeccompCall(nr: n, args: [UInt64(family), 1, 0, 0, 0, 0]), program: p) == expected, "family \(family)")
        }
    }

    @Test("ioctl: only the queued-bytes questions (FIONREAD, TIOCOUTQ)")
    func ioctl() throws {
        let p = try Sandbox.filter()
        let n = nr("ioctl")
        for (request, expected) in [(UInt64(FIONREAD), allow), (UInt64(TIOCOUTQ), allow), (UInt64(vnet_TUNSETIFF()), eperm),
                                    (UInt64(vnet_TUNSETOFFLOAD()), eperm), (0x8914 /* SIOCSIFFLAGS */, eperm)] {
            #expect(try decide(SeccompCall(nr: n, args: [5, request, 0, 0, 0, 0]), program: p) == expected, "request \(request)")
        }
    }

    @Test("mmap and mprotect: never executable")
    func memory() throws {
        let p = try Sandbox.filter()
        for name in ["mmap", "mprotect"] {
            let n = nr(name)
            #expect(try decide(SeccompCall(nr: n, args: [0, 4096, UInt64(PROT_READ | PROT_WRITE), 0, 0, 0]), program: p) == allow)
            #expect(try decide(SeccompCall(nr: n, args: [0, 4096, UInt64(PROT_READ | PROT_EXEC), 0, 0, 0]), program: p) == eperm)
        }
    }

    @Test("a call from another ABI kills the process")
    func otherABI() throws {
        let p = try Sandbox.filter()
        #expect(try decide(SeccompCall(nr: nr("read"), arch: 0x4000_0003 /* AUDIT_ARCH_I386 */), program: p) == kill)
        #expect(try decide(SeccompCall(nr: nr("read"), arch: 0), program: p) == kill)
        #if arch(x86_64)
        #expect(try decide(SeccompCall(nr: nr("read") | 0x4000_0000 /* __X32_SYSCALL_BIT */), program: p) == kill)
        #endif
    }
}
