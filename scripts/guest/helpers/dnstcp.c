/*
 * dnstcp [-t TYPE] [-p PORT] [-w TIMEOUT_MS] SERVER NAME
 * One DNS query over TCP (RFC 1035 4.2.2: two-byte length prefix); see dns.h
 * for the output. The whole exchange (connect, send, read) shares one deadline.
 */
#include "dns.h"
#include <fcntl.h>
#include <poll.h>

static void wait_fd(int fd, short events, long long deadline) {
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, remaining_ms(deadline));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            exit_on_net_errno(errno, "poll");
        if (rc == 0) {
            puts("TIMEOUT");
            exit(EXIT_TIMEOUT);
        }
        return;
    }
}

static void read_exact(int fd, unsigned char *buf, size_t len, long long deadline) {
    size_t got = 0;
    while (got < len) {
        wait_fd(fd, POLLIN, deadline);
        ssize_t n = recv(fd, buf + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            if (errno == ECONNRESET) {
                puts("BADREPLY connection reset");
                exit(EXIT_BADREPLY);
            }
            exit_on_net_errno(errno, "recv");
        }
        if (n == 0) {
            printf("BADREPLY eof after %zu of %zu bytes\n", got, len);
            exit(EXIT_BADREPLY);
        }
        got += (size_t)n;
    }
}

int main(int argc, char **argv) {
    g_usage = "dnstcp [-t TYPE] [-p PORT] [-w TIMEOUT_MS] SERVER NAME";
    struct dns_opts o;
    dns_parse_args(argc, argv, &o);
    struct sockaddr_storage dst;
    socklen_t dstlen = parse_addr(o.server, o.port, &dst);

    static unsigned char q[2 + 512], r[DNS_MAX_MSG];
    unsigned short id;
    size_t qlen = dns_build_query(q + 2, sizeof q - 2, o.name, o.qtype, &id);
    q[0] = (unsigned char)(qlen >> 8);
    q[1] = (unsigned char)qlen;

    long long deadline = now_ms() + o.timeout_ms;
    int fd = socket(dst.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        exit_on_net_errno(errno, "socket");
    if (connect(fd, (struct sockaddr *)&dst, dstlen) < 0) {
        if (errno != EINPROGRESS)
            exit_on_net_errno(errno, "connect");
        wait_fd(fd, POLLOUT, deadline);
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err)
            exit_on_net_errno(err, "connect");
    }
    size_t sent = 0;
    while (sent < qlen + 2) {
        ssize_t n = send(fd, q + sent, qlen + 2 - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                wait_fd(fd, POLLOUT, deadline);
                continue;
            }
            exit_on_net_errno(errno, "send");
        }
        sent += (size_t)n;
    }
    unsigned char lenbuf[2];
    read_exact(fd, lenbuf, 2, deadline);
    size_t rlen = rd16(lenbuf);
    read_exact(fd, r, rlen, deadline);
    dns_print_reply(r, rlen, id, o.qtype);
}
