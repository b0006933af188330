/*
 * vnetsession: the console command session of the vnet test guest.
 *
 * /init execs this as PID 1 once the guest is set up. It replaces a shell
 * `read` loop, which lost partial input lines when SIGCHLD from reparented
 * orphans interrupted it. Here input is read with plain read(2) into a line
 * buffer, children are reaped through a signalfd, and every deadline is a
 * poll timeout.
 *
 * Protocol on stdin/stdout (the serial console, raw mode, no echo):
 *   __VNET_CMD <id> <limit_s> <base64 sh script>
 *       -> "__VNET_BEGIN_<id>\n", then the script's stdout and stderr
 *          (`sh -c SCRIPT` in a new session, stdin /dev/null), then
 *          "__VNET_DONE_<id> rc=<n>\n" once the script's own process exits
 *          (n = exit status, or 128+signal). If it still runs after limit_s
 *          seconds, its whole process group gets SIGKILL (rc=137).
 *          Background jobs it leaves running are not waited for.
 *   __VNET_EXIT -> "__VNET_POWEROFF__", then power off.
 * Other lines are ignored. "__VNET_READY__ kernel=<release>" is printed once
 * at start. As PID 1 it also reaps every orphan, so no zombies pile up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (1 << 20)

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    for (int off = 0; off < n;) {
        ssize_t w = write(1, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (int)w;
    }
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int b64val(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes in place; returns the decoded length or -1 if malformed. */
static long b64decode(char *s) {
    long o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (char *p = s; *p && *p != '='; p++) {
        int v = b64val((unsigned char)*p);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            s[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    s[o] = '\0';
    return o;
}

static int sfd;
static sigset_t blocked;

/* Reaps every exited child; returns 1 and sets *status if `want` was among them. */
static int reap(pid_t want, int *status) {
    int found = 0;
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p <= 0)
            return found;
        if (p == want) {
            *status = st;
            found = 1;
        }
    }
}

static void drain_signalfd(void) {
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) == sizeof si) {
    }
}

static void run_command(const char *id, long limit, char *b64) {
    out("__VNET_BEGIN_%s\n", id);
    long len = b64decode(b64);
    if (len < 0 || (long)strlen(b64) != len) {
        out("vnetsession: malformed base64 command\n__VNET_DONE_%s rc=126\n", id);
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        out("vnetsession: fork: %s\n__VNET_DONE_%s rc=126\n", strerror(errno), id);
        return;
    }
    if (pid == 0) {
        setsid();
        int fd = open("/dev/null", O_RDONLY);
        if (fd >= 0 && fd != 0) {
            dup2(fd, 0);
            close(fd);
        }
        close(sfd);
        sigprocmask(SIG_UNBLOCK, &blocked, NULL);
        execl("/bin/sh", "sh", "-c", b64, (char *)NULL);
        _exit(127);
    }
    long long deadline = now_ms() + limit * 1000;
    int killed = 0, status = 0;
    for (;;) {
        if (reap(pid, &status))
            break;
        int timeout = -1;
        if (!killed) {
            long long left = deadline - now_ms();
            if (left <= 0) {
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                killed = 1;
                continue;
            }
            timeout = left > 1000000 ? 1000000 : (int)left;
        }
        struct pollfd p = {.fd = sfd, .events = POLLIN};
        if (poll(&p, 1, timeout) > 0)
            drain_signalfd();
    }
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 255;
    out("__VNET_DONE_%s rc=%d\n", id, rc);
}

static void handle_line(char *line) {
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\r' || line[n - 1] == '\n'))
        line[--n] = '\0';
    if (strncmp(line, "__VNET_EXIT", 11) == 0) {
        out("__VNET_POWEROFF__\n");
        sync();
        reboot(RB_POWER_OFF);
        _exit(0);
    }
    if (strncmp(line, "__VNET_CMD ", 11) != 0)
        return;
    char *save = NULL;
    strtok_r(line, " ", &save);
    char *id = strtok_r(NULL, " ", &save);
    char *limit_s = strtok_r(NULL, " ", &save);
    char *b64 = strtok_r(NULL, " ", &save);
    if (!id || !limit_s || !b64 || strlen(id) > 64)
        return;
    for (char *c = id; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_'))
            return;
    char *end;
    long limit = strtol(limit_s, &end, 10);
    if (*end || limit <= 0 || limit > 86400)
        limit = 60;
    run_command(id, limit, b64);
}

int main(void) {
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, NULL);
    sfd = signalfd(-1, &blocked, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        out("__VNET_INIT_ERROR signalfd: %s\n", strerror(errno));
        return 1;
    }
    struct utsname u;
    uname(&u);
    out("__VNET_READY__ kernel=%s\n", u.release);

    static char buf[MAX_LINE + 1];
    size_t have = 0;
    for (;;) {
        struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0)
            continue;
        if (p[1].revents) {
            drain_signalfd();
            int dummy;
            reap(-1, &dummy);
        }
        if (!p[0].revents)
            continue;
        ssize_t r = read(0, buf + have, MAX_LINE - have);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0) {
            out("__VNET_INIT_ERROR console read: %s\n", r < 0 ? strerror(errno) : "EOF");
            sync();
            reboot(RB_POWER_OFF);
            _exit(1);
        }
        have += (size_t)r;
        char *start = buf, *nl;
        while ((nl = memchr(start, '\n', have - (size_t)(start - buf))) != NULL) {
            *nl = '\0';
            handle_line(start);
            start = nl + 1;
        }
        have -= (size_t)(start - buf);
        memmove(buf, start, have);
        if (have == MAX_LINE)
            have = 0; /* an overlong line: drop it */
    }
}
