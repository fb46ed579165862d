/* Passing fds with a datagram over a SOCK_SEQPACKET unix socket (SCM_RIGHTS). */
#include "base/fdpass.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PASSED_FDS SBX_FDPASS_MAX

int
sbx_send_fds(int sock, const void *msg, size_t len, const int *fds, size_t nfds)
{
    char cbuf[CMSG_SPACE(MAX_PASSED_FDS * sizeof(int))];
    memset(cbuf, 0, sizeof(cbuf));
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > MAX_PASSED_FDS) {
        errno = EINVAL;
        return -1;
    }
    if (nfds > 0) {
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n >= 0 && (size_t)n != len) {
        errno = EMSGSIZE;
        return -1;
    }
    return n < 0 ? -1 : 0;
}

static ssize_t
recv_fds(int sock, void *msg, size_t len, int *fds, size_t nfds, bool exact)
{
    char cbuf[CMSG_SPACE(MAX_PASSED_FDS * sizeof(int))];
    struct iovec iov = {.iov_base = msg, .iov_len = len};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    for (size_t i = 0; i < nfds; i++)
        fds[i] = -1;
    ssize_t n;
    do
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    struct cmsghdr *c = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL;
    if (n > 0 && (mh.msg_flags & MSG_TRUNC)) {
        /* A datagram longer than len: its cut-off prefix must not pass for a message. */
        if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++)
                close(((int *)CMSG_DATA(c))[i]);
        errno = EMSGSIZE;
        return -1;
    }
    if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
        return n;
    /* Take exactly what came; never leave an fd we were sent open and unknown. */
    size_t got = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int passed[MAX_PASSED_FDS];
    memcpy(passed, CMSG_DATA(c), (got < MAX_PASSED_FDS ? got : MAX_PASSED_FDS) * sizeof(int));
    for (size_t i = 0; i < got && i < MAX_PASSED_FDS; i++) {
        if (i < nfds)
            fds[i] = passed[i];
        else
            close(passed[i]);
    }
    if ((exact ? got != nfds : got > nfds) || (mh.msg_flags & MSG_CTRUNC)) {
        for (size_t i = 0; i < nfds; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        errno = EPROTO;
        return -1;
    }
    return n;
}

ssize_t
sbx_recv_fds(int sock, void *msg, size_t len, int *fds, size_t nfds)
{
    return recv_fds(sock, msg, len, fds, nfds, true);
}

ssize_t
sbx_recv_fds_upto(int sock, void *msg, size_t len, int *fds, size_t nfds)
{
    return recv_fds(sock, msg, len, fds, nfds, false);
}
