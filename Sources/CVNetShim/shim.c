// GNU-only calls, compiled with _GNU_SOURCE and exposed through plain prototypes in CVNetShim.h.
#define _GNU_SOURCE
#include <sched.h>
#include <sys/socket.h>
#include <spawn.h>
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
