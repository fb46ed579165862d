/* Passing fds with a datagram over a SOCK_SEQPACKET unix socket (SCM_RIGHTS). */
#ifndef SBX_BASE_FDPASS_H
#define SBX_BASE_FDPASS_H

#include <stddef.h>
#include <sys/types.h>

/* fds one datagram may carry: what a sandbox's child gets at SYNC_PARENT_READY (its root
 * overlay, volumes and agent runtime, and the detached mounts its root was made of: up to 100
 * layers and its disk); the kernel's own limit is 253 (SCM_MAX_FD) */
#define SBX_FDPASS_MAX 112

/* One datagram of len bytes carrying nfds (<= SBX_FDPASS_MAX) fds. */
int sbx_send_fds(int sock, const void *msg, size_t len, const int *fds, size_t nfds);
/* Receives one such datagram: returns its length (0 at EOF, -1 with errno); fds[] gets the
 * fds it carried (O_CLOEXEC), or -1s when it carried none. A datagram carrying fds, but
 * not exactly nfds (EPROTO), or longer than len (EMSGSIZE) is consumed and refused, its fds
 * closed. A non-blocking socket gives EAGAIN when nothing is queued. */
ssize_t sbx_recv_fds(int sock, void *msg, size_t len, int *fds, size_t nfds);
/* The same, but a datagram may carry fewer fds than nfds (the rest of fds[] stays -1). */
ssize_t sbx_recv_fds_upto(int sock, void *msg, size_t len, int *fds, size_t nfds);

#endif
