#include "http/client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "http/upstream.h"

struct call {
    uv_pipe_t pipe;
    uv_connect_t connect;
    uv_write_t write;
    uv_timer_t timer;
    struct sbx_http_upstream resp;
    struct sbx_buf out, body;
    size_t max_body;
    int status;
    bool done, too_large;
    int open_handles;
    sbx_http_call_cb cb;
    void *ud;
};

static void
on_closed(uv_handle_t *h)
{
    struct call *c = h->data;
    if (--c->open_handles > 0)
        return;
    sbx_http_upstream_fini(&c->resp);
    sbx_buf_fini(&c->out);
    sbx_buf_fini(&c->body);
    free(c);
}

/* Answers once (error NULL: a complete answer), then closes both handles. */
static void
finish(struct call *c, const char *error)
{
    if (c->done)
        return;
    c->done = true;
    if (error == NULL && c->too_large)
        error = "the answer is larger than allowed";
    c->cb(error ? 0 : c->status,
          error          ? ""
          : c->body.data ? c->body.data
                         : "",
          error ? 0 : c->body.len, error, c->ud);
    uv_close((uv_handle_t *)&c->pipe, on_closed);
    uv_close((uv_handle_t *)&c->timer, on_closed);
}

static void
on_header(void *ud, const char *name, const char *value)
{
}

static void
on_head(void *ud, int status)
{
    ((struct call *)ud)->status = status;
}

static void
on_body(void *ud, const char *data, size_t len)
{
    struct call *c = ud;
    if (sbx_buf_append(&c->body, data, len, c->max_body) < 0)
        c->too_large = true;
}

static void
on_end(void *ud)
{
    finish(ud, NULL);
}

static const struct sbx_http_upstream_cbs cbs = {on_header, on_head, on_body, on_end};

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[16 * 1024];
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void
on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct call *c = s->data;
    if (c->done || nread == 0)
        return;
    int rc = nread == UV_EOF ? sbx_http_upstream_feed(&c->resp, NULL, 0)
             : nread < 0     ? -1
                             : sbx_http_upstream_feed(&c->resp, buf->base, (size_t)nread);
    if (rc < 0 || (rc == 0 && nread < 0))
        finish(c, nread < 0 && nread != UV_EOF ? uv_strerror((int)nread) : "malformed answer");
}

static void
on_written(uv_write_t *w, int status)
{
    if (status < 0)
        finish(w->data, uv_strerror(status));
}

static void
on_connected(uv_connect_t *creq, int status)
{
    struct call *c = creq->data;
    if (c->done)
        return;
    if (status < 0) {
        finish(c, uv_strerror(status));
        return;
    }
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    c->write.data = c;
    uv_write(&c->write, (uv_stream_t *)&c->pipe, &b, 1, on_written);
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void
on_timeout(uv_timer_t *t)
{
    finish(t->data, "timed out");
}

void
sbx_http_call(uv_loop_t *loop, const char *unix_path, const char *method, const char *path,
              const char *headers, const char *json_body, size_t max_body, uint64_t timeout_ms,
              sbx_http_call_cb cb, void *ud)
{
    struct call *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->cb = cb;
    c->ud = ud;
    c->max_body = max_body;
    sbx_http_upstream_init(&c->resp, strcmp(method, "HEAD") == 0, &cbs, c);
    size_t blen = json_body ? strlen(json_body) : 0;
    sbx_buf_printf(&c->out, "%s %s HTTP/1.1\r\nHost: sbx\r\nConnection: close\r\n%s", method, path,
                   headers ? headers : "");
    if (json_body)
        sbx_buf_printf(&c->out, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
    sbx_buf_printf(&c->out, "\r\n");
    if (json_body)
        sbx_buf_append(&c->out, json_body, blen, SIZE_MAX);
    uv_pipe_init(loop, &c->pipe, 0);
    uv_timer_init(loop, &c->timer);
    c->pipe.data = c->timer.data = c->connect.data = c;
    c->open_handles = 2;
    uv_timer_start(&c->timer, on_timeout, timeout_ms, 0);
    uv_pipe_connect(&c->connect, &c->pipe, unix_path, on_connected);
}
