/*
 * udpping HOST PORT MESSAGE [TIMEOUT_MS]
 *
 * Sends MESSAGE as one UDP datagram from a connected socket and waits for one
 * reply. Output (one line) and exit code:
 *   REPLY <text>       exit 0   the reply payload, verbatim
 *   REFUSED            exit 2   ICMP port unreachable came back
 *   TIMEOUT            exit 3   nothing within TIMEOUT_MS (default 5000)
 *   UNREACHABLE <why>  exit 4   ICMP host/net unreachable, or no route
 * A connected UDP socket is what makes the kernel report ICMP errors to us
 * (as ECONNREFUSED etc. on recv), so this also tests ICMP error translation.
 */
#include "common.h"
#include <poll.h>

int main(int argc, char **argv) {
    g_usage = "udpping HOST PORT MESSAGE [TIMEOUT_MS]";
    if (argc < 4 || argc > 5)
        usage("expected 3 or 4 arguments, got %d", argc - 1);
    int port = (int)parse_long("PORT", argv[2], 1, 65535);
    int timeout = argc == 5 ? (int)parse_long("TIMEOUT_MS", argv[4], 1, 3600000) : 5000;
    const char *msg = argv[3];
    size_t msglen = strlen(msg);

    struct sockaddr_storage dst;
    socklen_t dstlen = parse_addr(argv[1], port, &dst);
    int fd = socket(dst.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        exit_on_net_errno(errno, "socket");
    if (connect(fd, (struct sockaddr *)&dst, dstlen) < 0)
        exit_on_net_errno(errno, "connect");

    long long deadline = now_ms() + timeout;
    for (;;) {
        ssize_t n = send(fd, msg, msglen, 0);
        if (n >= 0)
            break;
        if (errno != EINTR)
            exit_on_net_errno(errno, "send");
    }

    static char buf[65536];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, remaining_ms(deadline));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            exit_on_net_errno(errno, "poll");
        }
        if (r == 0) {
            puts("TIMEOUT");
            return EXIT_TIMEOUT;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            exit_on_net_errno(errno, "recv");
        }
        fputs("REPLY ", stdout);
        fwrite(buf, 1, (size_t)n, stdout);
        fputc('\n', stdout);
        return 0;
    }
}
