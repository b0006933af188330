/* vnb-helper: small TCP load generators for scripts/bench/vnet-bench (compiled on the fly with cc).
 *
 *   vnb-helper connrate-server PORT
 *       Sequential accept loop on 0.0.0.0:PORT: per connection read 1 byte, write 1 byte and close (the
 *       server closes first, so TIME_WAIT stays on the server's side and the client's ports never run out).
 *       Prints LISTENING once bound.
 *   vnb-helper connrate-client HOST PORT SECONDS
 *       Sequential: connect, write 1 byte, read 1 byte, read the FIN, close; for SECONDS. Prints
 *       "CONNS n SECONDS s RATE r" (r in connections per second). Exit 1 on the first failure.
 *   vnb-helper flows-server PORT
 *       epoll server on 0.0.0.0:PORT holding every connection open; echoes each byte it reads. Prints
 *       LISTENING, then "OPEN n" whenever the count of open connections changes (at most every 200 ms).
 *   vnb-helper flows-client HOST PORT N
 *       Opens N connections (sequential blocking connect), writes 1 byte on each and waits for the echo on
 *       all of them. Prints "ESTABLISHED n SECONDS s", then holds them until stdin reaches EOF, then closes
 *       them all and prints "CLOSED".
 *   vnb-helper pingpong-server PORT / pingpong-client HOST PORT SECONDS
 *       TCP ping-pong with 1-byte messages (the fallback when sockperf is missing); the client prints
 *       "RTT n N p50 US p99 US" (round trip, microseconds).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stdout, "ERROR %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static int listener(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (s < 0) die("socket");
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(s, 4096) < 0) die("listen");
    printf("LISTENING\n");
    fflush(stdout);
    return s;
}

static struct sockaddr_in addr_of(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stdout, "ERROR bad address %s\n", host);
        exit(1);
    }
    return a;
}

static int connect_to(struct sockaddr_in *a) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (s < 0) die("socket");
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s, (struct sockaddr *)a, sizeof *a) < 0) die("connect");
    return s;
}

static int read_exact1(int s, char *c) {
    for (;;) {
        ssize_t n = read(s, c, 1);
        if (n == 1) return 1;
        if (n == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

static int connrate_server(int port) {
    int l = listener(port), one = 1;
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char b;
        if (read_exact1(c, &b) == 1 && write(c, &b, 1) == 1) {}
        close(c);
    }
    return 0;
}

static int connrate_client(const char *host, int port, double seconds) {
    struct sockaddr_in a = addr_of(host, port);
    long n = 0;
    double t0 = now(), t;
    do {
        int s = connect_to(&a);
        char b = 'x';
        if (write(s, &b, 1) != 1) die("write");
        int r = read_exact1(s, &b);
        if (r != 1) { if (r == 0) errno = ECONNRESET; die("read"); }
        if (read_exact1(s, &b) != 0) { errno = EPROTO; die("expected FIN"); }
        close(s);
        n++;
        t = now();
    } while (t - t0 < seconds);
    printf("CONNS %ld SECONDS %.4f RATE %.1f\n", n, t - t0, n / (t - t0));
    return 0;
}

static int flows_server(int port) {
    int l = listener(port);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    long open_ = 0, reported = -1;
    double last = 0;
    for (;;) {
        int n = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c = accept4(l, NULL, NULL, SOCK_NONBLOCK);
                if (c < 0) continue;
                struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                open_++;
            } else {
                char buf[256];
                ssize_t r = read(fd, buf, sizeof buf);
                if (r > 0) {
                    if (write(fd, buf, r) < 0) {}
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    close(fd);
                    open_--;
                }
            }
        }
        double t = now();
        if (open_ != reported && t - last >= 0.2) {
            printf("OPEN %ld\n", open_);
            fflush(stdout);
            reported = open_;
            last = t;
        }
    }
    return 0;
}

static int flows_client(const char *host, int port, int count) {
    struct sockaddr_in a = addr_of(host, port);
    int *fds = calloc(count, sizeof(int));
    double t0 = now();
    for (int i = 0; i < count; i++) {
        /* A backend that stops answering SYNs fails this in ~15 s, not after the default ~2 min of retries. */
        int s = socket(AF_INET, SOCK_STREAM, 0), syn = 3;
        if (s < 0) die("socket");
        setsockopt(s, IPPROTO_TCP, TCP_SYNCNT, &syn, sizeof syn);
        if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
            fprintf(stdout, "ERROR connect of flow %d: %s\n", i, strerror(errno));
            return 1;
        }
        fds[i] = s;
        char b = 'f';
        if (write(fds[i], &b, 1) != 1) die("write");
    }
    for (int i = 0; i < count; i++) {
        struct pollfd p = {.fd = fds[i], .events = POLLIN};
        if (poll(&p, 1, 30000) != 1) { fprintf(stdout, "ERROR no echo on flow %d\n", i); return 1; }
        char b;
        if (read_exact1(fds[i], &b) != 1) die("read echo");
    }
    printf("ESTABLISHED %d SECONDS %.3f\n", count, now() - t0);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    for (int i = 0; i < count; i++) close(fds[i]);
    printf("CLOSED\n");
    return 0;
}

static int pingpong_server(int port) {
    int l = listener(port), one = 1;
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char b;
        while (read_exact1(c, &b) == 1 && write(c, &b, 1) == 1) {}
        close(c);
    }
    return 0;
}

static int cmpd(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static int pingpong_client(const char *host, int port, double seconds) {
    struct sockaddr_in a = addr_of(host, port);
    int s = connect_to(&a);
    size_t cap = 1 << 20, n = 0;
    double *rtt = malloc(cap * sizeof(double)), t0 = now(), warm = t0 + 0.3, t = t0;
    while (t - t0 < seconds) {
        char b = 'p';
        double s0 = now();
        if (write(s, &b, 1) != 1) die("write");
        if (read_exact1(s, &b) != 1) die("read");
        t = now();
        if (s0 < warm) continue;
        if (n == cap) rtt = realloc(rtt, (cap *= 2) * sizeof(double));
        rtt[n++] = (t - s0) * 1e6;
    }
    qsort(rtt, n, sizeof(double), cmpd);
    if (!n) { printf("ERROR no samples\n"); return 1; }
    printf("RTT n %zu p50 %.3f p99 %.3f\n", n, rtt[n / 2], rtt[(size_t)(n * 0.99)]);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && !strcmp(argv[1], "connrate-server")) return connrate_server(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "connrate-client")) return connrate_client(argv[2], atoi(argv[3]), atof(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "flows-server")) return flows_server(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "flows-client")) return flows_client(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "pingpong-server")) return pingpong_server(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "pingpong-client")) return pingpong_client(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: see the comment at the top of vnb-helper.c\n");
    return 2;
}
