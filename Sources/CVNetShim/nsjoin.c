// Opening a TAP inside another user's network namespace, rootless, as slirp4netns does.
//
// Theory of operation: setns(CLONE_NEWUSER) is refused to a multithreaded process, and a Swift process
// usually is one. So a child is forked (one thread: the caller's), which joins the user namespace (a failure
// is ignored, as slirp4netns ignores it: a caller that already lives in that namespace gets EINVAL), then the
// network namespace, opens the TAP there (creating it if missing; with offload when the device allows it),
// optionally configures it (MAC, MTU,
// address, netmask, default route, up), and passes the fd back over a socketpair with SCM_RIGHTS. Between fork
// and _exit the child calls only async-signal-safe functions (open, ioctl, socket, setns, sendmsg, close).
// Errors travel back as (step, errno) in the one-byte-plus-struct message; the parent turns them into text.
#define _GNU_SOURCE
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <net/route.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <linux/if_tun.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <string.h>
#include "CVNetShim.h"

struct vnet_ns_reply { int step; int err; int offloaded; unsigned char mac[6]; };

static int ns_child_send(int sock, int step, int err, int fd, const unsigned char *mac, int offloaded) {
    struct vnet_ns_reply r;
    memset(&r, 0, sizeof r);
    r.step = step;
    r.err = err;
    r.offloaded = offloaded;
    memcpy(r.mac, mac, 6);
    struct iovec iov = { &r, sizeof r };
    char control[CMSG_SPACE(sizeof(int))];
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    memset(control, 0, sizeof control);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

static void ns_set_in(struct sockaddr *sa, uint32_t addr_be) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = addr_be;
    memcpy(sa, &sin, sizeof sin);
}

/// Runs in the forked child; returns the step that failed (errno set) or 0 with *out the TAP fd.
static int ns_child_open(const struct vnet_ns_tap_request *q, int *out, unsigned char *mac, int *offloaded) {
    if (q->userns_path[0]) {
        int u = open(q->userns_path, O_RDONLY | O_CLOEXEC);
        if (u < 0) return VNET_NS_STEP_OPEN_USERNS;
        (void)setns(u, CLONE_NEWUSER);  // already a member (EINVAL) or not permitted: go on, as slirp4netns does
        close(u);
    }
    int n = open(q->netns_path, O_RDONLY | O_CLOEXEC);
    if (n < 0) return VNET_NS_STEP_OPEN_NETNS;
    if (setns(n, CLONE_NEWNET) < 0) return VNET_NS_STEP_SETNS_NET;
    close(n);
    // With offload asked for, a device that refuses IFF_VNET_HDR or TUNSETOFFLOAD is opened again without it.
    struct ifreq ifr;
    int fd = -1;
    for (int attempt = q->vnet_hdr ? 0 : 1; attempt < 2; attempt++) {
        int hdr = attempt == 0;
        fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) return VNET_NS_STEP_OPEN_TUN;
        memset(&ifr, 0, sizeof ifr);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (hdr ? IFF_VNET_HDR : 0);
        strncpy(ifr.ifr_name, q->name, IFNAMSIZ - 1);
        if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
            if (!hdr) return VNET_NS_STEP_TUNSETIFF;
            close(fd);
            continue;
        }
        if (hdr && ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) < 0) {
            close(fd);
            continue;
        }
        *offloaded = hdr;
        break;
    }
    if (q->configure) {
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0) return VNET_NS_STEP_CONFIGURE;
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, q->name, IFNAMSIZ - 1);
        if (q->has_mac) {
            ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
            memcpy(ifr.ifr_hwaddr.sa_data, q->mac, 6);
            if (ioctl(s, SIOCSIFHWADDR, &ifr) < 0) return VNET_NS_STEP_MAC;
        }
        ifr.ifr_mtu = q->mtu;
        if (ioctl(s, SIOCSIFMTU, &ifr) < 0) return VNET_NS_STEP_MTU;
        if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) return VNET_NS_STEP_UP;
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) return VNET_NS_STEP_UP;
        ns_set_in(&ifr.ifr_addr, q->address_be);
        if (ioctl(s, SIOCSIFADDR, &ifr) < 0) return VNET_NS_STEP_ADDRESS;
        ns_set_in(&ifr.ifr_netmask, q->netmask_be);
        if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) return VNET_NS_STEP_ADDRESS;
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        ns_set_in(&rt.rt_gateway, q->gateway_be);
        ns_set_in(&rt.rt_dst, 0);
        ns_set_in(&rt.rt_genmask, 0);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = (char *)q->name;
        if (ioctl(s, SIOCADDRT, &rt) < 0) return VNET_NS_STEP_ROUTE;
        close(s);
    }
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s >= 0) {
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, q->name, IFNAMSIZ - 1);
        if (ioctl(s, SIOCGIFHWADDR, &ifr) == 0) memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
        close(s);
    }
    *out = fd;
    return 0;
}

int vnet_ns_tap_open(const struct vnet_ns_tap_request *q, int *failed_step, unsigned char *mac_out, int *offloaded_out) {
    *failed_step = 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) { *failed_step = VNET_NS_STEP_FORK; return -errno; }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(sv[0]); close(sv[1]);
        *failed_step = VNET_NS_STEP_FORK;
        return -e;
    }
    if (pid == 0) {
        close(sv[0]);
        int fd = -1;
        unsigned char mac[6] = { 0 };
        int offloaded = 0;
        int step = ns_child_open(q, &fd, mac, &offloaded);
        ns_child_send(sv[1], step, step ? errno : 0, step ? -1 : fd, mac, offloaded);
        _exit(step ? 1 : 0);
    }
    close(sv[1]);
    struct vnet_ns_reply r;
    memset(&r, 0, sizeof r);
    r.step = VNET_NS_STEP_FORK;
    r.err = EPIPE;
    struct iovec iov = { &r, sizeof r };
    char control[CMSG_SPACE(sizeof(int))];
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t got;
    do { got = recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC); } while (got < 0 && errno == EINTR);
    int fd = -1;
    for (struct cmsghdr *c = got > 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            memcpy(&fd, CMSG_DATA(c), sizeof(int));
        }
    }
    close(sv[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (got != (ssize_t)sizeof r) { if (fd >= 0) close(fd); *failed_step = VNET_NS_STEP_FORK; return -EPIPE; }
    if (r.step != 0 || fd < 0) {
        if (fd >= 0) close(fd);
        *failed_step = r.step ? r.step : VNET_NS_STEP_FORK;
        return -(r.err ? r.err : EPIPE);
    }
    memcpy(mac_out, r.mac, 6);
    *offloaded_out = r.offloaded;
    return fd;
}
