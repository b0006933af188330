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
#include <sys/stat.h>
#include <string.h>

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
/// super-segments (TUN_F_CSUM | TUN_F_TSO4). Returns 0 or -errno.
static inline int vnet_tap_enable_offload(int fd) {
    if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4)) < 0) return -errno;
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

/// Reads one IP_RECVERR error from a socket's error queue. On success fills the ICMP type/code, the
/// offender's IPv4 address (network order, 0 if none) and returns 0; returns -errno otherwise.
static inline int vnet_read_icmp_error(int fd, unsigned char *type, unsigned char *code,
                                       unsigned int *offender, unsigned char *payload, int payload_cap,
                                       int *payload_len) {
    char control[512];
    struct sockaddr_in from;
    struct iovec iov = { payload, (size_t)payload_cap };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_name = &from; msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov; msg.msg_iovlen = 1;
    msg.msg_control = control; msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (n < 0) return -errno;
    *payload_len = (int)n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) {
            struct sock_extended_err *ee = (struct sock_extended_err *)CMSG_DATA(c);
            if (ee->ee_origin != SO_EE_ORIGIN_ICMP) return -ENOMSG;
            *type = ee->ee_type; *code = ee->ee_code;
            struct sockaddr_in *off = (struct sockaddr_in *)SO_EE_OFFENDER(ee);
            *offender = off->sin_family == AF_INET ? off->sin_addr.s_addr : 0;
            return 0;
        }
    }
    return -ENOMSG;
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
#endif
