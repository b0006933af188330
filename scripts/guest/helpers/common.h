/*
 * Shared bits for the vnet test-guest helpers (udpping, udpecho, dnsudp,
 * dnstcp). Each helper is one .c file compiled with `gcc -static -O2`; this
 * header holds only static functions so every helper stays self-contained.
 *
 * Conventions shared by all helpers (tests parse these):
 *   exit 0   success
 *   exit 1   a well-formed negative answer (e.g. DNS RCODE) or a local error
 *   exit 2   REFUSED      (ICMP port unreachable / TCP RST)
 *   exit 3   TIMEOUT      (no answer before the deadline)
 *   exit 4   UNREACHABLE  (ICMP host/net unreachable, no route)
 *   exit 5   BADREPLY     (an answer arrived but could not be parsed)
 *   exit 64  usage error
 * Addresses are numeric only (IPv4 or IPv6): the guest has no resolver
 * library, and tests must name exactly where traffic goes.
 */
#ifndef VNET_HELPERS_COMMON_H
#define VNET_HELPERS_COMMON_H

/* Every helper uses a different subset of these static functions. */
#pragma GCC diagnostic ignored "-Wunused-function"

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    EXIT_NEGATIVE = 1,
    EXIT_REFUSED = 2,
    EXIT_TIMEOUT = 3,
    EXIT_UNREACHABLE = 4,
    EXIT_BADREPLY = 5,
    EXIT_USAGE = 64,
};

static const char *g_usage;

static void usage(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void usage(const char *fmt, ...) {
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs("error: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    fprintf(stderr, "usage: %s\n", g_usage);
    exit(EXIT_USAGE);
}

/* Strict decimal parse into [lo, hi]; usage error otherwise. */
static long parse_long(const char *what, const char *s, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi)
        usage("%s must be an integer in %ld..%ld, got '%s'", what, lo, hi, s);
    return v;
}

/* Numeric IPv4 or IPv6 address (IPv6 may be written [addr]) plus port. */
static socklen_t parse_addr(const char *host, int port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    char buf[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof buf) {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        host = buf;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((unsigned short)port);
        return sizeof *sin;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((unsigned short)port);
        return sizeof *sin6;
    }
    usage("'%s' is not a numeric IPv4 or IPv6 address", host);
}

static const char *addr_str(const struct sockaddr_storage *ss, char *buf, size_t len, int *port) {
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        *port = ntohs(sin->sin_port);
        return inet_ntop(AF_INET, &sin->sin_addr, buf, (socklen_t)len);
    }
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    *port = ntohs(sin6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
        return inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], buf, (socklen_t)len);
    return inet_ntop(AF_INET6, &sin6->sin6_addr, buf, (socklen_t)len);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Remaining milliseconds until deadline, never negative. */
static int remaining_ms(long long deadline) {
    long long left = deadline - now_ms();
    return left > 0 ? (int)left : 0;
}

/*
 * Map a socket error to the shared outcome lines and exit codes.
 * Returns only for errors that are not network outcomes (caller decides).
 */
static void exit_on_net_errno(int err, const char *op) {
    switch (err) {
    case ECONNREFUSED:
        puts("REFUSED");
        exit(EXIT_REFUSED);
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EHOSTDOWN:
    case ENETDOWN:
        printf("UNREACHABLE %s\n", strerror(err));
        exit(EXIT_UNREACHABLE);
    case ETIMEDOUT:
        puts("TIMEOUT");
        exit(EXIT_TIMEOUT);
    default:
        printf("ERROR %s: %s\n", op, strerror(err));
        exit(EXIT_NEGATIVE);
    }
}

#endif
