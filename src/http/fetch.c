/* A one-shot HTTP/1.1 GET to a server on a unix socket (a sandbox's agent), the whole body
 * buffered up to a bound, with a deadline. The server is untrusted: its answer goes through
 * the proxy's fuzzed parser (upstream.c), and neither its size nor its slowness can hold the
 * caller beyond max_body and timeout_ms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "http/http.h"
#include "http/upstream.h"

struct fetch {
    uv_pipe_t pipe;
    uv_connect_t connect;
    uv_write_t write;
    uv_timer_t timer;
    struct sbx_buf head;
    struct sbx_buf body;
    size_t max_body;
    int status;
    bool done, failed;
    int open_handles;
    struct sbx_http_upstream resp;
    sbx_http_fetch_cb cb;
    void *ud;
};

static void
on_closed(uv_handle_t *h)
{
    struct fetch *f = h->data;
    if (--f->open_handles > 0)
        return;
    sbx_http_upstream_fini(&f->resp);
    sbx_buf_fini(&f->head);
    sbx_buf_fini(&f->body);
    free(f);
}

/* Reports once, then closes both handles. */
static void
finish(struct fetch *f, const char *error)
{
    if (f->done)
        return;
    f->done = true;
    f->cb(error ? 0 : f->status,
          error          ? NULL
          : f->body.data ? f->body.data
                         : "",
          error ? 0 : f->body.len, error, f->ud);
    uv_timer_stop(&f->timer);
    uv_close((uv_handle_t *)&f->pipe, on_closed);
    uv_close((uv_handle_t *)&f->timer, on_closed);
}

static void
on_head(void *ud, int status)
{
    ((struct fetch *)ud)->status = status;
}

static void
on_body(void *ud, const char *data, size_t len)
{
    struct fetch *f = ud;
    if (sbx_buf_append(&f->body, data, len, f->max_body) < 0)
        f->failed = true;
}

/* The upstream parser calls all four. */
static void
on_header(void *ud, const char *name, const char *value)
{
}

static void
on_end(void *ud)
{
}

static const struct sbx_http_upstream_cbs cbs = {
    .on_header = on_header,
    .on_head = on_head,
    .on_body = on_body,
    .on_end = on_end,
};

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[16 * 1024];
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void
on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct fetch *f = s->data;
    if (f->done || nread == 0)
        return;
    int rc = nread == UV_EOF ? sbx_http_upstream_feed(&f->resp, NULL, 0)
             : nread < 0     ? -1
                             : sbx_http_upstream_feed(&f->resp, buf->base, (size_t)nread);
    if (f->failed)
        finish(f, "the answer is larger than allowed");
    else if (rc < 0)
        finish(f, nread < 0 && nread != UV_EOF ? uv_strerror((int)nread) : "malformed answer");
    else if (rc > 0)
        finish(f, NULL);
}

static void
on_written(uv_write_t *w, int status)
{
    struct fetch *f = w->data;
    if (status < 0)
        finish(f, uv_strerror(status));
}

static void
on_connected(uv_connect_t *c, int status)
{
    struct fetch *f = c->data;
    if (f->done)
        return;
    if (status < 0) {
        finish(f, uv_strerror(status));
        return;
    }
    uv_buf_t b = uv_buf_init(f->head.data, (unsigned)f->head.len);
    f->write.data = f;
    uv_write(&f->write, (uv_stream_t *)&f->pipe, &b, 1, on_written);
    uv_read_start((uv_stream_t *)&f->pipe, on_alloc, on_read);
}

static void
on_timeout(uv_timer_t *t)
{
    finish(t->data, "timed out");
}

void
sbx_http_fetch_unix(uv_loop_t *loop, const char *path, const char *target, const char *headers,
                    size_t max_body, uint64_t timeout_ms, sbx_http_fetch_cb cb, void *ud)
{
    struct fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    f->cb = cb;
    f->ud = ud;
    f->max_body = max_body;
    sbx_http_upstream_init(&f->resp, false, &cbs, f);
    if (sbx_buf_printf(&f->head,
                       "GET %s HTTP/1.1\r\nHost: localhost\r\n%sConnection: close\r\n\r\n", target,
                       headers) < 0)
        abort();
    uv_pipe_init(loop, &f->pipe, 0);
    uv_timer_init(loop, &f->timer);
    f->pipe.data = f->timer.data = f->connect.data = f;
    f->open_handles = 2;
    uv_timer_start(&f->timer, on_timeout, timeout_ms, 0);
    uv_pipe_connect(&f->connect, &f->pipe, path, on_connected);
}
