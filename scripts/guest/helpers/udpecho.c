/*
 * udpecho PORT [COUNT]
 *
 * UDP echo server for the guest side of forwarding tests. Binds PORT on all
 * addresses (dual-stack IPv6 socket, IPv4-only if IPv6 is unavailable),
 * prints "LISTENING <port>" once bound, then for every datagram prints
 * "ECHO from=<addr> port=<port> len=<n>" and sends the payload back to its
 * sender. Exits 0 after COUNT datagrams if COUNT is given, else runs forever.
 * Lines are flushed one by one so a log file shows progress immediately.
 */
#include "common.h"

static int bind_any(int port) {
    int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int off = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)port),
                                 .sin6_addr = IN6ADDR_ANY_INIT};
        if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0)
            return fd;
        if (errno != EAFNOSUPPORT && errno != EADDRNOTAVAIL) {
            printf("ERROR bind: %s\n", strerror(errno));
            exit(EXIT_NEGATIVE);
        }
        close(fd);
    }
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        printf("ERROR socket: %s\n", strerror(errno));
        exit(EXIT_NEGATIVE);
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                            .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        printf("ERROR bind: %s\n", strerror(errno));
        exit(EXIT_NEGATIVE);
    }
    return fd;
}

int main(int argc, char **argv) {
    g_usage = "udpecho PORT [COUNT]";
    if (argc < 2 || argc > 3)
        usage("expected 1 or 2 arguments, got %d", argc - 1);
    int port = (int)parse_long("PORT", argv[1], 1, 65535);
    long count = argc == 3 ? parse_long("COUNT", argv[2], 1, 1000000000L) : -1;
    setvbuf(stdout, NULL, _IOLBF, 0);

    int fd = bind_any(port);
    printf("LISTENING %d\n", port);

    static char buf[65536];
    for (long seen = 0; count < 0 || seen < count;) {
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) {
            if (errno == EINTR || errno == ECONNREFUSED)
                continue;
            printf("ERROR recvfrom: %s\n", strerror(errno));
            return EXIT_NEGATIVE;
        }
        seen++;
        char host[INET6_ADDRSTRLEN];
        int fport = 0;
        addr_str(&from, host, sizeof host, &fport);
        printf("ECHO from=%s port=%d len=%zd\n", host, fport, n);
        if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fromlen) < 0)
            printf("ERROR sendto: %s\n", strerror(errno));
    }
    return 0;
}
