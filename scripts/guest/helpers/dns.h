/*
 * DNS query building and answer printing shared by dnsudp and dnstcp.
 *
 *   dnsudp|dnstcp [-t TYPE] [-p PORT] [-w TIMEOUT_MS] SERVER NAME
 *
 * TYPE is A (default), AAAA, CNAME, NS, PTR, MX, TXT, SRV or a number.
 * Output, one line per answer record, in answer order:
 *   A 1.2.3.4 | AAAA ::1 | CNAME name | NS name | PTR name | MX pref name
 *   TXT "str" ["str"...] | SRV prio weight port target | TYPE<n> len=<rdlen>
 * then the exit code:
 *   0  RCODE 0 and at least one answer record of the asked TYPE
 *   1  prints "RCODE n" (n != 0), or "RCODE 0" when no record of TYPE came back
 *   2  REFUSED, 3 TIMEOUT, 4 UNREACHABLE, 5 BADREPLY <why>, 64 usage.
 * A "TRUNCATED" line is printed first when the reply has the TC bit set.
 * Names in the output have no trailing dot; the root is ".".
 */
#ifndef VNET_HELPERS_DNS_H
#define VNET_HELPERS_DNS_H

#include "common.h"
#include <ctype.h>
#include <strings.h>
#include <sys/random.h>

#define DNS_MAX_MSG 65535

struct dns_opts {
    int qtype;
    int port;
    int timeout_ms;
    const char *server;
    const char *name;
};

static const struct {
    const char *name;
    int type;
} dns_types[] = {
    {"A", 1}, {"NS", 2}, {"CNAME", 5}, {"PTR", 12}, {"MX", 15}, {"TXT", 16}, {"AAAA", 28}, {"SRV", 33},
};

static int dns_type_from_string(const char *s) {
    for (size_t i = 0; i < sizeof dns_types / sizeof dns_types[0]; i++)
        if (strcasecmp(s, dns_types[i].name) == 0)
            return dns_types[i].type;
    return (int)parse_long("TYPE", s, 1, 65535);
}

static void dns_parse_args(int argc, char **argv, struct dns_opts *o) {
    o->qtype = 1;
    o->port = 53;
    o->timeout_ms = 5000;
    int c;
    while ((c = getopt(argc, argv, "t:p:w:h")) != -1) {
        switch (c) {
        case 't': o->qtype = dns_type_from_string(optarg); break;
        case 'p': o->port = (int)parse_long("PORT", optarg, 1, 65535); break;
        case 'w': o->timeout_ms = (int)parse_long("TIMEOUT_MS", optarg, 1, 3600000); break;
        default: usage(NULL);
        }
    }
    if (argc - optind != 2)
        usage("expected SERVER and NAME");
    o->server = argv[optind];
    o->name = argv[optind + 1];
}

/* Builds the query into buf; returns its length. Usage error on a bad name. */
static size_t dns_build_query(unsigned char *buf, size_t cap, const char *name, int qtype, unsigned short *id_out) {
    unsigned short id;
    if (getrandom(&id, sizeof id, 0) != sizeof id)
        id = (unsigned short)(now_ms() ^ getpid());
    *id_out = id;
    size_t n = 0;
    unsigned char hdr[12] = {id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}; /* RD=1, QDCOUNT=1 */
    memcpy(buf, hdr, sizeof hdr);
    n = sizeof hdr;
    const char *p = name;
    if (strcmp(p, ".") == 0)
        p = "";
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == 0 || len > 63)
            usage("bad label in name '%s'", name);
        if (n + 1 + len + 5 > cap || n + 1 + len > 12 + 254)
            usage("name too long: '%s'", name);
        buf[n++] = (unsigned char)len;
        memcpy(buf + n, p, len);
        n += len;
        p += len;
        if (*p == '.')
            p++;
    }
    buf[n++] = 0;
    buf[n++] = (unsigned char)(qtype >> 8);
    buf[n++] = (unsigned char)qtype;
    buf[n++] = 0;
    buf[n++] = 1; /* class IN */
    return n;
}

static void dns_bad(const char *why) __attribute__((noreturn));
static void dns_bad(const char *why) {
    printf("BADREPLY %s\n", why);
    exit(EXIT_BADREPLY);
}

/*
 * Reads the (possibly compressed) name at *off into out (if not NULL) and
 * advances *off past it in the original position. Bounded: at most 128 jumps.
 */
static void dns_read_name(const unsigned char *m, size_t len, size_t *off, char *out, size_t outcap) {
    size_t pos = *off, o = 0;
    int jumped = 0, jumps = 0;
    for (;;) {
        if (pos >= len)
            dns_bad("name runs past end");
        unsigned char l = m[pos];
        if ((l & 0xc0) == 0xc0) {
            if (pos + 1 >= len)
                dns_bad("truncated pointer");
            if (!jumped)
                *off = pos + 2;
            jumped = 1;
            if (++jumps > 128)
                dns_bad("pointer loop");
            pos = (size_t)((l & 0x3f) << 8 | m[pos + 1]);
            continue;
        }
        if (l & 0xc0)
            dns_bad("bad label type");
        if (l == 0) {
            if (!jumped)
                *off = pos + 1;
            break;
        }
        if (pos + 1 + l > len)
            dns_bad("label runs past end");
        if (out) {
            if (o + l + 2 > outcap)
                dns_bad("name too long");
            if (o)
                out[o++] = '.';
            for (unsigned i = 0; i < l; i++) {
                unsigned char ch = m[pos + 1 + i];
                out[o++] = isprint(ch) ? (char)ch : '?';
            }
        }
        pos += 1 + l;
    }
    if (out) {
        if (o == 0)
            out[o++] = '.';
        out[o] = '\0';
    }
}

static unsigned rd16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

/* Prints the answers and exits with the documented code. */
static void dns_print_reply(const unsigned char *m, size_t len, unsigned short id, int qtype) {
    if (len < 12)
        dns_bad("shorter than a header");
    if (rd16(m) != id)
        dns_bad("id mismatch");
    if (!(m[2] & 0x80))
        dns_bad("QR bit not set");
    if (m[2] & 0x02)
        puts("TRUNCATED");
    int rcode = m[3] & 0x0f;
    unsigned qd = rd16(m + 4), an = rd16(m + 6);
    size_t off = 12;
    for (unsigned i = 0; i < qd; i++) {
        dns_read_name(m, len, &off, NULL, 0);
        if (off + 4 > len)
            dns_bad("question runs past end");
        off += 4;
    }
    int matched = 0;
    char name[1024];
    for (unsigned i = 0; i < an; i++) {
        dns_read_name(m, len, &off, NULL, 0);
        if (off + 10 > len)
            dns_bad("record header runs past end");
        int type = (int)rd16(m + off);
        unsigned rdlen = rd16(m + off + 8);
        off += 10;
        if (off + rdlen > len)
            dns_bad("rdata runs past end");
        const unsigned char *rd = m + off;
        size_t rdoff = off;
        char addr[INET6_ADDRSTRLEN];
        if (type == 1 && rdlen == 4) {
            printf("A %s\n", inet_ntop(AF_INET, rd, addr, sizeof addr));
        } else if (type == 28 && rdlen == 16) {
            printf("AAAA %s\n", inet_ntop(AF_INET6, rd, addr, sizeof addr));
        } else if (type == 5 || type == 2 || type == 12) {
            dns_read_name(m, len, &rdoff, name, sizeof name);
            printf("%s %s\n", type == 5 ? "CNAME" : type == 2 ? "NS" : "PTR", name);
        } else if (type == 15 && rdlen >= 3) {
            rdoff += 2;
            dns_read_name(m, len, &rdoff, name, sizeof name);
            printf("MX %u %s\n", rd16(rd), name);
        } else if (type == 33 && rdlen >= 7) {
            rdoff += 6;
            dns_read_name(m, len, &rdoff, name, sizeof name);
            printf("SRV %u %u %u %s\n", rd16(rd), rd16(rd + 2), rd16(rd + 4), name);
        } else if (type == 16) {
            fputs("TXT", stdout);
            for (unsigned p = 0; p < rdlen;) {
                unsigned sl = rd[p++];
                if (p + sl > rdlen)
                    dns_bad("TXT string runs past rdata");
                fputs(" \"", stdout);
                for (unsigned k = 0; k < sl; k++) {
                    unsigned char ch = rd[p + k];
                    if (ch == '"' || ch == '\\')
                        printf("\\%c", ch);
                    else if (isprint(ch))
                        putchar(ch);
                    else
                        printf("\\%03u", ch);
                }
                putchar('"');
                p += sl;
            }
            putchar('\n');
        } else {
            printf("TYPE%d len=%u\n", type, rdlen);
        }
        if (type == qtype)
            matched++;
        off += rdlen;
    }
    if (rcode != 0 || matched == 0) {
        printf("RCODE %d\n", rcode);
        exit(EXIT_NEGATIVE);
    }
    exit(0);
}

#endif
