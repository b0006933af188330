// GNU-only calls, compiled with _GNU_SOURCE and exposed through plain prototypes in CVNetShim.h.
#define _GNU_SOURCE
#include <sched.h>
#include <sys/socket.h>
#include "CVNetShim.h"

int vnet_accept_nonblocking(int fd) {
    int r;
    do { r = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); } while (r < 0 && errno == EINTR);
    return r;
}

int vnet_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }
