/* A raw bidirectional tunnel between two libuv streams: what a connection becomes after a
 * 101 Switching Protocols (WebSocket) or a 2xx to CONNECT, and what the egress proxy pipes.
 * Bytes go each way as they arrive, with back-pressure (a side whose peer has
 * SBX_HTTP_WRITE_HIGH_WATER bytes queued is not read), an end of stream is passed on as a
 * shutdown of the other side's writing, and the tunnel ends when both directions have ended,
 * when either side fails, or after SBX_TUNNEL_IDLE_MS without a byte either way.
 *
 * Ownership: the streams stay their owners'. The tunnel borrows each (its data pointer and
 * its reading) from start until it calls that end's close(ud), once, at its end; the owner
 * then closes and frees the stream. The tunnel frees itself once its writes have completed. */
#ifndef SBX_HTTP_TUNNEL_H
#define SBX_HTTP_TUNNEL_H

#include <stddef.h>
#include <uv.h>

struct sbx_tunnel_end {
    uv_stream_t *stream;
    void (*close)(void *ud); /* the tunnel is done with stream */
    void *ud;
    const char *pending; /* bytes already read from the other end, written to this one first */
    size_t n_pending;
};

/* Starts piping; a and b must be open and connected, neither being read by its owner. */
void sbx_tunnel_start(uv_loop_t *loop, const struct sbx_tunnel_end *a,
                      const struct sbx_tunnel_end *b);

#endif
