// CVNetShim: the Linux APIs that Swift's Glibc module does not import.
// Function-like macros (TUNSETIFF, ...) do not import into Swift, so each is wrapped in a static inline.
#ifndef CVNETSHIM_H
#define CVNETSHIM_H
// No _GNU_SOURCE here: it would change struct layouts (fd_set, __SOCKADDR_ARG) against Swift's Glibc
// module. GNU-only calls are wrapped in shim.c, which is compiled with _GNU_SOURCE.
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <linux/errqueue.h>
#include <net/if.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <string.h>
#include <linux/filter.h>

static inline unsigned long vnet_TUNSETIFF(void) { return TUNSETIFF; }
static inline unsigned long vnet_TUNSETVNETHDRSZ(void) { return TUNSETVNETHDRSZ; }
static inline unsigned long vnet_TUNSETOFFLOAD(void) { return TUNSETOFFLOAD; }
static inline short vnet_IFF_TAP(void) { return IFF_TAP; }
static inline short vnet_IFF_NO_PI(void) { return IFF_NO_PI; }
static inline short vnet_IFF_VNET_HDR(void) { return IFF_VNET_HDR; }

/// accept4(fd, NULL, NULL, SOCK_NONBLOCK|SOCK_CLOEXEC).
int vnet_accept_nonblocking(int fd);
/// accept4 with the peer's address (non-blocking, close-on-exec).
int vnet_accept_from(int fd, struct sockaddr *addr, socklen_t *len);
/// setns(fd, CLONE_NEWNET) for the calling thread.
int vnet_setns_net(int fd);

/// What `vnet_ns_tap_open` (nsjoin.c) opens: the TAP `name` in the network namespace at `netns_path`, after
/// joining the user namespace at `userns_path` (empty: stay in ours). With `configure`, the TAP gets `mac`
/// (when `has_mac`), `mtu`, `address_be`/`netmask_be` and a default route via `gateway_be`, and is brought up.
struct vnet_ns_tap_request {
    char userns_path[4096];
    char netns_path[4096];
    char name[16];
    int vnet_hdr;
    int configure;
    int mtu;
    int has_mac;
    unsigned char mac[6];
    uint32_t address_be, netmask_be, gateway_be;
};
enum {
    VNET_NS_STEP_FORK = 1, VNET_NS_STEP_OPEN_USERNS, VNET_NS_STEP_OPEN_NETNS, VNET_NS_STEP_SETNS_NET,
    VNET_NS_STEP_OPEN_TUN, VNET_NS_STEP_TUNSETIFF, VNET_NS_STEP_OFFLOAD, VNET_NS_STEP_CONFIGURE, VNET_NS_STEP_MAC,
    VNET_NS_STEP_MTU, VNET_NS_STEP_UP, VNET_NS_STEP_ADDRESS, VNET_NS_STEP_ROUTE,
};
/// Opens the TAP from a forked single-threaded child (see nsjoin.c). Returns the fd, or -errno with
/// `*failed_step` naming the step that failed; `mac_out` (6 bytes) gets the TAP's MAC address, `*offloaded_out`
/// 1 when the TAP carries virtio-net headers with offload (asked for with `vnet_hdr` and allowed by the device).
int vnet_ns_tap_open(const struct vnet_ns_tap_request *q, int *failed_step, unsigned char *mac_out, int *offloaded_out);

/// Opens /dev/net/tun and attaches the tap `name` (created if missing). Returns the fd or -errno.
static inline int vnet_tap_open(const char *name, int flags_extra) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (short)flags_extra;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

/// Joins the IPv4 multicast group `group` (network order) on the interface holding `local` (network order).
/// Returns 0 or -1 with errno set.
static inline int vnet_mcast_join(int fd, uint32_t group, uint32_t local) {
    struct ip_mreq m;
    memset(&m, 0, sizeof m);
    m.imr_multiaddr.s_addr = group;
    m.imr_interface.s_addr = local;
    return setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m);
}

/// Makes `fd` send multicast out of the interface holding `local` (network order), looped back to local
/// members (other QEMUs on this host), TTL 1. Returns 0 or -1 with errno set.
static inline int vnet_mcast_sender(int fd, uint32_t local) {
    struct in_addr a;
    a.s_addr = local;
    if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &a, sizeof a) < 0) return -1;
    unsigned char loop = 1, ttl = 1;
    if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) < 0) return -1;
    return setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl);
}

/// Turns on what the kernel may hand a TAP opened with IFF_VNET_HDR: partial checksums and TCPv4
/// and TCPv6 super-segments (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6). Returns 0 or -errno.
static inline int vnet_tap_enable_offload(int fd) {
    if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) < 0) return -errno;
    return 0;
}

/// Brings an interface up and sets its MTU, using an AF_INET control socket in the current netns.
static inline int vnet_link_up(const char *name, int mtu) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (mtu > 0) {
        ifr.ifr_mtu = mtu;
        if (ioctl(s, SIOCSIFMTU, &ifr) < 0) { int e = errno; close(s); return -e; }
    }
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) { int e = errno; close(s); return -e; }
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) { int e = errno; close(s); return -e; }
    close(s);
    return 0;
}

/// Reads one extended error (IP_RECVERR or IPV6_RECVERR) from a socket's error queue: the quoted payload into
/// `payload`, the ICMP/ICMPv6 type and code, and the offender's address (`offender_len` bytes copied from
/// `sin_addr`/`sin6_addr`, zeros if none). 0 on success, -errno otherwise (-ENOMSG: not an ICMP error).
static inline int vnet_read_error_queue(int fd, int level, int cmsg_type, int origin, int family,
                                        unsigned char *type, unsigned char *code, void *offender, int offender_len,
                                        unsigned char *payload, int payload_cap, int *payload_len) {
    char control[512];
    struct sockaddr_storage from;
    struct iovec iov = { payload, (size_t)payload_cap };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_name = &from; msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov; msg.msg_iovlen = 1;
    msg.msg_control = control; msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (n < 0) return -errno;
    *payload_len = (int)n;
    memset(offender, 0, (size_t)offender_len);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == level && c->cmsg_type == cmsg_type) {
            struct sock_extended_err *ee = (struct sock_extended_err *)CMSG_DATA(c);
            if (ee->ee_origin != origin) return -ENOMSG;
            *type = ee->ee_type; *code = ee->ee_code;
            struct sockaddr *off = SO_EE_OFFENDER(ee);
            if (off->sa_family == family) {
                if (family == AF_INET) memcpy(offender, &((struct sockaddr_in *)off)->sin_addr, (size_t)offender_len);
                else memcpy(offender, &((struct sockaddr_in6 *)off)->sin6_addr, (size_t)offender_len);
            }
            return 0;
        }
    }
    return -ENOMSG;
}

/// Reads one IP_RECVERR error from a socket's error queue. On success fills the ICMP type/code, the
/// offender's IPv4 address (network order, 0 if none) and returns 0; returns -errno otherwise.
static inline int vnet_read_icmp_error(int fd, unsigned char *type, unsigned char *code,
                                       unsigned int *offender, unsigned char *payload, int payload_cap,
                                       int *payload_len) {
    return vnet_read_error_queue(fd, SOL_IP, IP_RECVERR, SO_EE_ORIGIN_ICMP, AF_INET, type, code, offender, 4,
                                 payload, payload_cap, payload_len);
}

/// The IPv6 twin of vnet_read_icmp_error (IPV6_RECVERR): fills the ICMPv6 type/code and the offender's
/// 16-byte address (zeros if none).
static inline int vnet_read_icmp6_error(int fd, unsigned char *type, unsigned char *code,
                                        unsigned char *offender16, unsigned char *payload, int payload_cap,
                                        int *payload_len) {
    return vnet_read_error_queue(fd, SOL_IPV6, IPV6_RECVERR, SO_EE_ORIGIN_ICMP6, AF_INET6, type, code, offender16, 16,
                                 payload, payload_cap, payload_len);
}

/// Builds a sockaddr_in6 (address as 16 network-order bytes) into `out`; returns its length.
static inline int vnet_sockaddr_in6(void *out, const unsigned char *addr16, unsigned short port) {
    struct sockaddr_in6 sin6;
    memset(&sin6, 0, sizeof sin6);
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    memcpy(&sin6.sin6_addr, addr16, 16);
    memcpy(out, &sin6, sizeof sin6);
    return (int)sizeof sin6;
}

/// Receives a unix-socket datagram carrying one fd (SCM_RIGHTS). Returns the fd or -errno.
static inline int vnet_recv_fd(int sock) {
    char byte;
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { &byte, 1 };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov; msg.msg_iovlen = 1;
    msg.msg_control = control; msg.msg_controllen = sizeof control;
    if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) < 0) return -errno;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) return -EBADMSG;
    int fd; memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}
/// A non-blocking, close-on-exec eventfd (the library API's command queue wakes the loop with it).
static inline int vnet_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

/// A signalfd for SIGINT, SIGTERM, SIGHUP and SIGUSR1, which are blocked for normal delivery. SIGPIPE is ignored.
static inline int vnet_signalfd(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT); sigaddset(&set, SIGTERM); sigaddset(&set, SIGHUP); sigaddset(&set, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) return -errno;
    signal(SIGPIPE, SIG_IGN);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/// A signalfd for SIGHUP and SIGUSR1 only (blocked for normal delivery), when something else (a
/// swift-service-lifecycle ServiceGroup) handles SIGINT and SIGTERM. SIGPIPE is ignored.
static inline int vnet_signalfd_aux(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP); sigaddset(&set, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) return -errno;
    signal(SIGPIPE, SIG_IGN);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/// Reads one signal from a signalfd; returns its number, or 0 when none is pending.
static inline int vnet_signalfd_read(int fd) {
    struct signalfd_siginfo si;
    ssize_t n = read(fd, &si, sizeof si);
    return n == (ssize_t)sizeof si ? (int)si.ssi_signo : 0;
}

/// Binds a unix socket with mode 0600 (umask applied around bind, so there is no window with wider mode).
static inline int vnet_bind_private(int fd, const struct sockaddr *addr, socklen_t len) {
    mode_t old = umask(0177);
    int r = bind(fd, addr, len);
    int e = errno;
    umask(old);
    return r < 0 ? -e : 0;
}
/// Bytes waiting in a socket's receive queue (SIOCINQ / FIONREAD), or -errno.
static inline int vnet_inq(int fd) {
    int v = 0;
    if (ioctl(fd, FIONREAD, &v) < 0) return -errno;
    return v;
}
/// Bytes in a socket's send queue not yet acknowledged by the peer (SIOCOUTQ), or -errno.
static inline int vnet_outq(int fd) {
    int v = 0;
    if (ioctl(fd, TIOCOUTQ, &v) < 0) return -errno;
    return v;
}

/// Peeks up to `len` bytes after skipping `skip` bytes (for kernels without SO_PEEK_OFF on TCP): the
/// skipped bytes land in `discard`, which must hold `skip` bytes.
static inline ssize_t vnet_peek_skipping(int fd, void *discard, size_t skip, void *buf, size_t len) {
    struct iovec iov[2] = { { discard, skip }, { buf, len } };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = skip > 0 ? iov : iov + 1;
    msg.msg_iovlen = skip > 0 ? 2 : 1;
    ssize_t n = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) return -errno;
    if ((size_t)n <= skip) return n == 0 ? 0 : -EAGAIN;
    return n - (ssize_t)skip;
}

/// Closes a TCP socket with RST (SO_LINGER 0).
static inline void vnet_abort_close(int fd) {
    struct linger l = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}
/// Starts `/bin/sh -c command` with stdin and stdout on one end of a new unix stream socketpair; returns
/// the other end (non-blocking, close-on-exec) or -errno. Children are reaped automatically (SIGCHLD ignored).
int vnet_spawn_command(const char *command);
/// Starts argv[0] (searched in PATH) with `argv`, all signals unblocked, dying with SIGTERM when vnet dies
/// (PR_SET_PDEATHSIG). Returns a pidfd for the child (readable once it exits) and stores its pid in `pid`,
/// or returns -errno (exec failures included: ENOENT for a missing program).
int vnet_spawn_process(char *const argv[], int *pid);
/// Waits for child `pid` and returns its exit status (128+N when killed by signal N), or -errno.
int vnet_wait_child(int pid);

// ---- Kernel mode (VNetKernel): netlink sockets, TAP devices, fd passing, child programs ----
#include <linux/netlink.h>
#include <sys/wait.h>
#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

/// A NETLINK_ROUTE socket (blocking, close-on-exec) bound to a kernel-chosen port id, with capped acks and
/// extended acks (error strings) turned on. Returns the fd or -errno.
static inline int vnet_netlink_route_open(void) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -errno;
    struct sockaddr_nl sa;
    memset(&sa, 0, sizeof sa);
    sa.nl_family = AF_NETLINK;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { int e = errno; close(fd); return -e; }
    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
    return fd;
}

/// Sends one netlink message to the kernel (port 0). Returns 0 or -errno.
static inline int vnet_netlink_send(int fd, const void *buf, size_t len) {
    struct sockaddr_nl sa;
    memset(&sa, 0, sizeof sa);
    sa.nl_family = AF_NETLINK;
    ssize_t n;
    do { n = sendto(fd, buf, len, 0, (struct sockaddr *)&sa, sizeof sa); } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    return n == (ssize_t)len ? 0 : -EMSGSIZE;
}

/// Receives one netlink datagram; returns its real length (may exceed cap: MSG_TRUNC) or -errno.
static inline ssize_t vnet_netlink_recv(int fd, void *buf, size_t cap) {
    ssize_t n;
    do { n = recv(fd, buf, cap, MSG_TRUNC); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static inline short vnet_IFF_MULTI_QUEUE(void) { return IFF_MULTI_QUEUE; }

/// Creates (or attaches to) the TAP `name` (in/out, IFNAMSIZ bytes; empty: the kernel picks tapN) with
/// IFF_TAP|IFF_NO_PI|flags_extra. Blocking, close-on-exec fd, or -errno.
static inline int vnet_tap_create(char *name, int flags_extra) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (short)flags_extra;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { int e = errno; close(fd); return -e; }
    memcpy(name, ifr.ifr_name, IFNAMSIZ);
    name[IFNAMSIZ - 1] = 0;
    return fd;
}

/// TUNSETPERSIST, TUNSETOWNER, TUNSETGROUP on an attached TAP fd. Each returns 0 or -errno.
static inline int vnet_tap_set_persist(int fd, int on) { return ioctl(fd, TUNSETPERSIST, (unsigned long)on) < 0 ? -errno : 0; }
static inline int vnet_tap_set_owner(int fd, unsigned int uid) { return ioctl(fd, TUNSETOWNER, (unsigned long)uid) < 0 ? -errno : 0; }
static inline int vnet_tap_set_group(int fd, unsigned int gid) { return ioctl(fd, TUNSETGROUP, (unsigned long)gid) < 0 ? -errno : 0; }

/// Sends `fd` over the unix socket `sock` as SCM_RIGHTS with one zero byte, as qemu-bridge-helper does.
/// Returns 0 or -errno.
static inline int vnet_send_fd(int sock, int fd) {
    char byte = 0;
    char control[CMSG_SPACE(sizeof(int))];
    memset(control, 0, sizeof control);
    struct iovec iov = { &byte, 1 };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov; msg.msg_iovlen = 1;
    msg.msg_control = control; msg.msg_controllen = sizeof control;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : 0;
}

/// Runs argv[0] (a path) with argv and waits for it, with every signal unblocked and at its default in the
/// child. stdin is /dev/null. Returns the exit status (0-255), 256+N when killed by signal N, or -errno when it
/// could not be started. With `quiet`, its stdout and stderr go to /dev/null too.
int vnet_run_and_wait(char *const argv[], int quiet);
/// Blocks until one of SIGINT, SIGTERM or SIGHUP arrives (they are blocked for normal delivery first);
/// returns its number.
int vnet_wait_for_stop_signal(void);
/// Blocks SIGINT, SIGTERM and SIGHUP for normal delivery, so they can be waited for (signalfd, poll).
/// Returns a signalfd for them (non-blocking, close-on-exec) or -errno.
int vnet_stop_signalfd(void);

/* One sendmsg of `len` bytes as UDP datagrams of `segment_size` bytes each (the last may be shorter):
   UDP GSO (UDP_SEGMENT, Linux 4.18). Returns bytes sent, or -1 with errno. */
long vnet_send_udp_segments(int fd, const void *buf, unsigned long len, unsigned short segment_size);
// MARK: --sandbox (sandbox.c)
//
// Policy: calls outside the allow-list fail with the `deny` action the caller picks (vnet passes EPERM, so a
// path nobody traced reports an error instead of killing the network); a syscall of another ABI (i386, x32)
// kills the process. Checked arguments: openat/open only without O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND;
// mmap/mprotect without PROT_EXEC; socket only AF_INET, AF_INET6, AF_UNIX; ioctl only FIONREAD and TIOCOUTQ.
// Not allowed at all: execve, fork/clone, unlink/rename/mkdir, chmod/chown, ptrace, mount, setns, prctl,
// capset, kill, bpf, and everything else not listed in sandbox.c.

/// Builds the seccomp program into `out` (room for `capacity` instructions). Returns its length, -ENOSPC when
/// `capacity` is too small, or -ENOSYS on an
/// architecture without a table (anything but little-endian x86_64 and aarch64).
int vnet_sandbox_build_filter(struct sock_filter *out, int capacity, unsigned int deny);
/// PR_SET_NO_NEW_PRIVS, then seccomp(SECCOMP_SET_MODE_FILTER, TSYNC) with `program`. 0 or -errno.
int vnet_sandbox_install_filter(const struct sock_filter *program, int count);
/// Drops the bounding set (when CAP_SETPCAP allows; `*bounding_dropped` says whether it did), clears the
/// ambient set, and sets the effective, permitted and inheritable sets to empty. 0 or -errno.
int vnet_sandbox_drop_capabilities(int *bounding_dropped);
/// The calls allowed without an argument check, for tests and the documentation.
int vnet_sandbox_plain_count(void);
int vnet_sandbox_plain_syscall(int i);
/// AUDIT_ARCH_* of this build (0 when unsupported).
unsigned int vnet_sandbox_audit_arch(void);
unsigned int vnet_seccomp_ret_errno(int e);
unsigned int vnet_seccomp_ret_allow(void);
unsigned int vnet_seccomp_ret_kill_process(void);
/// This architecture's number for a few syscalls by name (tests), or -1.
int vnet_nr_named(const char *name);
#endif
