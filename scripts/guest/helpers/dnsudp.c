/*
 * dnsudp [-t TYPE] [-p PORT] [-w TIMEOUT_MS] SERVER NAME
 * One DNS query over UDP from a connected socket; see dns.h for the output.
 * Replies with another ID are ignored (keep waiting) rather than reported.
 */
#include "dns.h"
#include <poll.h>

int main(int argc, char **argv) {
    g_usage = "dnsudp [-t TYPE] [-p PORT] [-w TIMEOUT_MS] SERVER NAME";
    struct dns_opts o;
    dns_parse_args(argc, argv, &o);
    struct sockaddr_storage dst;
    socklen_t dstlen = parse_addr(o.server, o.port, &dst);

    static unsigned char q[512], r[DNS_MAX_MSG];
    unsigned short id;
    size_t qlen = dns_build_query(q, sizeof q, o.name, o.qtype, &id);

    int fd = socket(dst.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        exit_on_net_errno(errno, "socket");
    if (connect(fd, (struct sockaddr *)&dst, dstlen) < 0)
        exit_on_net_errno(errno, "connect");
    if (send(fd, q, qlen, 0) < 0)
        exit_on_net_errno(errno, "send");

    long long deadline = now_ms() + o.timeout_ms;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int rc = poll(&p, 1, remaining_ms(deadline));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            exit_on_net_errno(errno, "poll");
        if (rc == 0) {
            puts("TIMEOUT");
            return EXIT_TIMEOUT;
        }
        ssize_t n = recv(fd, r, sizeof r, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            exit_on_net_errno(errno, "recv");
        }
        if (n >= 2 && rd16(r) != id)
            continue; /* stale or spoofed: keep waiting */
        dns_print_reply(r, (size_t)n, id, o.qtype);
    }
}
