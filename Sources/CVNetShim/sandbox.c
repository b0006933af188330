// `--sandbox`: drop every capability and install a seccomp-BPF allow-list. See CVNetShim.h for the policy.
//
// Theory of Operation
// -------------------
// The program is built here (not in Swift) because the syscall numbers are the C library's `__NR_*` for the
// architecture being compiled, and a table written out by hand would silently rot on another architecture.
// Layout, in order:
//   1. load seccomp_data.arch; a different audit arch (i386 or x32 syscalls from an x86_64 process) kills the
//      process: those numbers mean other calls, and vnet never makes them;
//   2. load seccomp_data.nr (x86_64: a number with __X32_SYSCALL_BIT set kills too);
//   3. for each call that needs an argument check, `nr == N ?` then a small block that ends in ALLOW or DENY;
//   4. for each plain call, `nr == N ? ALLOW`;
//   5. DENY.
// Every block ends in a return, so the accumulator never carries a value between blocks. Arguments are read as
// the low 32 bits (little-endian layout of seccomp_data.args): the kernel takes every checked argument as an
// int or unsigned int (socket family, ioctl cmd, open flags, mmap prot).
#define _GNU_SOURCE
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <unistd.h>
#include "CVNetShim.h"

#if defined(__x86_64__)
#define VNET_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define VNET_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#undef VNET_AUDIT_ARCH   /* argument offsets below assume little-endian seccomp_data.args */
#endif

#define ARG_LO(n) (offsetof(struct seccomp_data, args) + 8 * (n))

/* The plain allow-list: calls the data path, the control plane, the metrics endpoint, logging and the Swift
 * runtime make after set-up, found by strace of the e2e workloads (see README "Sandbox"). */
static const int plain_allowed[] = {
    /* I/O on descriptors that exist, and the event loop */
    __NR_read, __NR_write, __NR_readv, __NR_writev, __NR_pread64, __NR_pwrite64, __NR_close, __NR_lseek,
    __NR_fstat, __NR_newfstatat,
#ifdef __NR_statx
    __NR_statx,
#endif
#ifdef __NR_fstatat64
    __NR_fstatat64,
#endif
#ifdef __NR_stat
    __NR_stat, __NR_lstat,
#endif
#ifdef __NR_readlink
    __NR_readlink,
#endif
    __NR_readlinkat, __NR_getcwd, __NR_fcntl, __NR_dup, __NR_dup3,
    __NR_epoll_ctl, __NR_epoll_pwait,
#ifdef __NR_epoll_wait
    __NR_epoll_wait,
#endif
#ifdef __NR_epoll_pwait2
    __NR_epoll_pwait2,
#endif
#ifdef __NR_poll
    __NR_poll,
#endif
    __NR_ppoll,
    /* sockets: new flows, hostfwd accepts, control and metrics clients, reconnects */
    __NR_connect, __NR_accept4, __NR_bind, __NR_listen, __NR_shutdown, __NR_sendto, __NR_recvfrom, __NR_sendmsg,
    __NR_recvmsg, __NR_sendmmsg, __NR_recvmmsg, __NR_getsockopt, __NR_setsockopt, __NR_getsockname,
    __NR_getpeername,
#ifdef __NR_accept
    __NR_accept,
#endif
    /* memory (mmap and mprotect are checked: no PROT_EXEC) */
    __NR_munmap, __NR_madvise, __NR_mremap, __NR_brk,
    /* signals, threads' bookkeeping, time, randomness, exit */
    __NR_rt_sigaction, __NR_rt_sigprocmask, __NR_rt_sigreturn, __NR_sigaltstack, __NR_futex, __NR_getpid,
    __NR_gettid, __NR_getuid, __NR_geteuid, __NR_getgid, __NR_getegid, __NR_tgkill, __NR_clock_gettime,
    __NR_clock_getres, __NR_clock_nanosleep, __NR_nanosleep, __NR_gettimeofday, __NR_getrandom,
    __NR_sched_yield, __NR_sched_getaffinity, __NR_restart_syscall, __NR_exit, __NR_exit_group,
#ifdef __NR_rseq
    __NR_rseq,
#endif
    __NR_set_robust_list, __NR_uname, __NR_sysinfo,
};

static const int plain_allowed_count = (int)(sizeof plain_allowed / sizeof plain_allowed[0]);

int vnet_sandbox_plain_count(void) { return plain_allowed_count; }
int vnet_sandbox_plain_syscall(int i) { return i >= 0 && i < plain_allowed_count ? plain_allowed[i] : -1; }

unsigned int vnet_sandbox_audit_arch(void) {
#ifdef VNET_AUDIT_ARCH
    return VNET_AUDIT_ARCH;
#else
    return 0;
#endif
}

struct builder { struct sock_filter *out; int cap; int n; };

static void emit(struct builder *b, unsigned short code, unsigned char jt, unsigned char jf, unsigned int k) {
    if (b->n < b->cap) {
        b->out[b->n].code = code;
        b->out[b->n].jt = jt;
        b->out[b->n].jf = jf;
        b->out[b->n].k = k;
    }
    b->n++;
}

#define LD_ABS(off) emit(b, BPF_LD | BPF_W | BPF_ABS, 0, 0, (unsigned int)(off))
#define RET(v) emit(b, BPF_RET | BPF_K, 0, 0, (v))

/* nr == N ? next : skip `len` instructions (the block that follows). */
static void if_nr(struct builder *b, int nr, int len) { emit(b, BPF_JMP | BPF_JEQ | BPF_K, 0, (unsigned char)len, (unsigned int)nr); }

/* Block: the low word of argument `arg` has none of `bits` set -> ALLOW, else DENY. 4 instructions. */
static void block_no_bits(struct builder *b, int arg, unsigned int bits, unsigned int deny) {
    LD_ABS(ARG_LO(arg));
    emit(b, BPF_JMP | BPF_JSET | BPF_K, 0, 1, bits);
    RET(deny);
    RET(SECCOMP_RET_ALLOW);
}

/* Block: the low word of argument `arg` is one of `values` -> ALLOW, else DENY. count + 3 instructions. */
static void block_one_of(struct builder *b, int arg, const unsigned int *values, int count, unsigned int deny) {
    LD_ABS(ARG_LO(arg));
    for (int i = 0; i < count; i++) {
        /* match: jump to the ALLOW at the end (past the remaining compares and the DENY) */
        emit(b, BPF_JMP | BPF_JEQ | BPF_K, (unsigned char)(count - i), 0, values[i]);
    }
    RET(deny);
    RET(SECCOMP_RET_ALLOW);
}

int vnet_sandbox_build_filter(struct sock_filter *out, int capacity, unsigned int deny) {
#ifndef VNET_AUDIT_ARCH
    (void)out; (void)capacity; (void)deny;
    return -ENOSYS;
#else
    struct builder bb = { out, capacity, 0 }, *b = &bb;
    LD_ABS(offsetof(struct seccomp_data, arch));
    emit(b, BPF_JMP | BPF_JEQ | BPF_K, 1, 0, VNET_AUDIT_ARCH);
    RET(SECCOMP_RET_KILL_PROCESS);
    LD_ABS(offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
    emit(b, BPF_JMP | BPF_JGE | BPF_K, 0, 1, 0x40000000u);   /* __X32_SYSCALL_BIT */
    RET(SECCOMP_RET_KILL_PROCESS);
#endif
    /* Files open read-only: no O_WRONLY/O_RDWR (O_TMPFILE needs one of them), O_CREAT, O_TRUNC or O_APPEND. */
    const unsigned int writeish = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND;
    if_nr(b, __NR_openat, 4); block_no_bits(b, 2, writeish, deny);
#ifdef __NR_open
    if_nr(b, __NR_open, 4); block_no_bits(b, 1, writeish, deny);
#endif
    /* No executable mappings: nothing is loaded or generated after set-up. */
    if_nr(b, __NR_mmap, 4); block_no_bits(b, 2, PROT_EXEC, deny);
    if_nr(b, __NR_mprotect, 4); block_no_bits(b, 2, PROT_EXEC, deny);
    /* Sockets of the families vnet uses; no netlink, packet or raw-family sockets. */
    static const unsigned int families[] = { AF_INET, AF_INET6, AF_UNIX };
    if_nr(b, __NR_socket, 3 + 3); block_one_of(b, 0, families, 3, deny);
    /* ioctl only to ask a socket how many bytes are queued (SIOCINQ = FIONREAD, SIOCOUTQ = TIOCOUTQ). */
    static const unsigned int requests[] = { FIONREAD, TIOCOUTQ };
    if_nr(b, __NR_ioctl, 2 + 3); block_one_of(b, 1, requests, 2, deny);
    for (int i = 0; i < plain_allowed_count; i++) {
        if_nr(b, plain_allowed[i], 1);
        RET(SECCOMP_RET_ALLOW);
    }
    RET(deny);
    return b->n <= capacity ? b->n : -ENOSPC;
#endif
}

unsigned int vnet_seccomp_ret_errno(int e) { return SECCOMP_RET_ERRNO | ((unsigned int)e & SECCOMP_RET_DATA); }
unsigned int vnet_seccomp_ret_allow(void) { return SECCOMP_RET_ALLOW; }
unsigned int vnet_seccomp_ret_kill_process(void) { return SECCOMP_RET_KILL_PROCESS; }

int vnet_sandbox_install_filter(const struct sock_filter *program, int count) {
    if (count <= 0 || count > BPF_MAXINSNS) return -EINVAL;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    struct sock_fprog prog = { .len = (unsigned short)count, .filter = (struct sock_filter *)program };
    /* TSYNC: every thread of the process gets the filter (vnet runs one, but a library may have started more). */
    if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0) {
        int e = errno;
        if (e != ENOSYS && e != EINVAL) return -e;
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) return -errno;
    }
    return 0;
}

int vnet_sandbox_drop_capabilities(int *bounding_dropped) {
    int dropped = 1;
    /* The bounding set first (needs CAP_SETPCAP, which the capset below removes). Without CAP_SETPCAP (an
     * unprivileged vnet) it cannot shrink; no_new_privs and the execve ban make it moot then. */
    for (int cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0) break;   /* EINVAL: past the kernel's last capability */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno != EPERM) return -errno;
            dropped = 0;
            break;
        }
    }
    if (bounding_dropped) *bounding_dropped = dropped;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -errno;
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {{0}};
    if (syscall(__NR_capset, &header, data) != 0) return -errno;
    return 0;
}

int vnet_nr_named(const char *name) {
    static const struct { const char *name; int nr; } table[] = {
        { "read", __NR_read }, { "write", __NR_write }, { "openat", __NR_openat }, { "socket", __NR_socket },
        { "ioctl", __NR_ioctl }, { "mmap", __NR_mmap }, { "mprotect", __NR_mprotect }, { "execve", __NR_execve },
        { "execveat", __NR_execveat }, { "clone", __NR_clone }, { "unlinkat", __NR_unlinkat },
        { "renameat2", __NR_renameat2 }, { "ptrace", __NR_ptrace }, { "capset", __NR_capset },
        { "prctl", __NR_prctl }, { "setns", __NR_setns }, { "mount", __NR_mount }, { "kill", __NR_kill },
        { "epoll_pwait", __NR_epoll_pwait }, { "accept4", __NR_accept4 }, { "exit_group", __NR_exit_group },
#ifdef __NR_fork
        { "fork", __NR_fork },
#endif
#ifdef __NR_unlink
        { "unlink", __NR_unlink },
#endif
#ifdef __NR_open
        { "open", __NR_open },
#endif
#ifdef __NR_clone3
        { "clone3", __NR_clone3 },
#endif
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const char *a = table[i].name, *c = name;
        while (*a && *a == *c) { a++; c++; }
        if (*a == 0 && *c == 0) return table[i].nr;
    }
    return -1;
}
