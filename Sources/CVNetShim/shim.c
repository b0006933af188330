// GNU-only calls, compiled with _GNU_SOURCE and exposed through plain prototypes in CVNetShim.h.
#define _GNU_SOURCE
#include <sched.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <stdio.h>
#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include "CVNetShim.h"

extern char **environ;

int vnet_accept_nonblocking(int fd) {
    int r;
    do { r = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); } while (r < 0 && errno == EINTR);
    return r;
}

int vnet_accept_from(int fd, struct sockaddr *addr, socklen_t *len) {
    int r;
    do { r = accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC); } while (r < 0 && errno == EINTR);
    return r;
}

int vnet_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

int vnet_spawn_command(const char *command) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
    signal(SIGCHLD, SIG_IGN);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 1);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);   /* vnet blocks signals for its signalfd; the child must not */
    sigset_t dfl;
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    sigaddset(&dfl, SIGCHLD);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
    char *argv[] = { "/bin/sh", "-c", (char *)command, NULL };
    pid_t pid;
    int r = posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(sv[1]);
    if (r != 0) { close(sv[0]); return -r; }
    int flags = fcntl(sv[0], F_GETFL);
    fcntl(sv[0], F_SETFL, flags | O_NONBLOCK);
    return sv[0];
}

int vnet_spawn_process(char *const argv[], int *pid_out) {
    int report[2];   /* the child writes errno here if exec fails; close-on-exec closes it on success */
    if (pipe2(report, O_CLOEXEC) < 0) return -errno;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) { int e = errno; close(report[0]); close(report[1]); return -e; }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);   /* vnet blocks signals for its signalfd; the child must not */
        signal(SIGPIPE, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        execvp(argv[0], argv);
        int e = errno;
        ssize_t unused = write(report[1], &e, sizeof e);
        (void)unused;
        _exit(127);
    }
    close(report[1]);
    int childErrno = 0;
    ssize_t n;
    do { n = read(report[0], &childErrno, sizeof childErrno); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof childErrno) {
        waitpid(pid, NULL, 0);
        return -childErrno;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) { int e = errno; kill(pid, SIGTERM); waitpid(pid, NULL, 0); return -e; }
    *pid_out = pid;
    return pidfd;
}

int vnet_wait_child(int pid) {
    int status = 0;
    pid_t r;
    do { r = waitpid(pid, &status, 0); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 0;
}

int vnet_run_and_wait(char *const argv[], int quiet) {
    fflush(NULL);   /* what vnet printed comes before the child's output */
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (quiet) {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    }
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int r = posix_spawn(&pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (r != 0) return -r;
    int status = 0;
    pid_t w;
    do { w = waitpid(pid, &status, 0); } while (w < 0 && errno == EINTR);
    if (w < 0) return -errno;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 256 + WTERMSIG(status);
    return -ECHILD;
}

static void vnet_stop_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGINT); sigaddset(set, SIGTERM); sigaddset(set, SIGHUP);
}

int vnet_wait_for_stop_signal(void) {
    sigset_t set;
    vnet_stop_set(&set);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {}
    return sig;
}

int vnet_stop_signalfd(void) {
    sigset_t set;
    vnet_stop_set(&set);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) return -errno;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

long vnet_send_udp_segments(int fd, const void *buf, unsigned long len, unsigned short segment_size) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union {
        char bytes[CMSG_SPACE(sizeof(unsigned short))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof(control.bytes) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = IPPROTO_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(unsigned short));
    memcpy(CMSG_DATA(c), &segment_size, sizeof(segment_size));
    long n;
    do { n = sendmsg(fd, &m, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n;
}
