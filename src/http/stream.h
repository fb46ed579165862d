/* Writing to a libuv stream for the HTTP server and the reverse proxy: the one place that
 * tries a write straight from the caller's buffers and queues a copy of what the socket did
 * not take. Internal to http/; it never closes or frees the stream or its owner. */
#ifndef SBX_HTTP_STREAM_H
#define SBX_HTTP_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* A queued copy; the write callback gets its w and frees the whole struct. */
struct sbx_http_wcopy {
    uv_write_t w;
    void *owner;
    size_t len;
    char data[];
};

/* Writes the bytes of bufs to s in order. With try_first and nothing queued (*queued == 0),
 * first writes what the socket takes at once, straight from bufs, and copies only the rest:
 * streamed bodies then cost no malloc and memcpy per slice. What is queued is added to
 * *queued; cb must subtract it and free the copy. Returns -1 if the copy cannot be allocated
 * or uv_write refuses it (nothing stays queued then), else 0. */
int sbx_http_stream_writev(uv_stream_t *s, const uv_buf_t *bufs, unsigned nbufs, bool try_first,
                           size_t *queued, void *owner, uv_write_cb cb);

#endif
