/* Reverse proxy from a server request to an HTTP server on a unix socket (a sandbox's agent).
 *
 * One upstream connection per request (Connection: close upstream), so request boundaries on
 * the client's keep-alive connection never depend on the upstream. The request body streams
 * with back-pressure both ways; the response is re-framed by the server side (chunked unless
 * the upstream gave a length) and flushed as it arrives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/buf.h"
#include "base/limits.h"
#include "http/http.h"
#include "http/stream.h"
#include "http/upstream.h"

struct proxy {
    struct sbx_http_req *req; /* NULL once the client went away */
    uv_pipe_t up;
    uv_connect_t connect;
    struct sbx_http_upstream resp;
    sbx_http_req_cb on_unreachable;
    bool connected;
    bool head_sent;
    bool closed;
    size_t up_queued;
    bool body_ended;
    bool req_chunked;
};

static void
on_up_closed(uv_handle_t *h)
{
    struct proxy *p = h->data;
    sbx_http_upstream_fini(&p->resp);
    free(p);
}

/* Detaches from the client request so no callback can reach a freed proxy. */
static void
detach(struct proxy *p)
{
    if (p->req == NULL)
        return;
    sbx_http_req_on_close(p->req, NULL);
    sbx_http_req_stream_body(p->req, NULL, NULL);
    sbx_http_on_drain(p->req, NULL);
    p->req = NULL;
}

static void
proxy_close(struct proxy *p)
{
    if (p->closed)
        return;
    p->closed = true;
    detach(p);
    uv_close((uv_handle_t *)&p->up, on_up_closed);
}

/* The upstream failed: before any response byte, answer 502 through the caller; after,
 * cut the client connection so a streaming client sees the stream die. */
static void
proxy_fail(struct proxy *p)
{
    struct sbx_http_req *req = p->req;
    if (req) {
        detach(p);
        if (p->head_sent)
            sbx_http_abort(req);
        else
            p->on_unreachable(req);
    }
    proxy_close(p);
}

static void
on_client_close(struct sbx_http_req *req)
{
    struct proxy *p = req->data;
    p->req = NULL; /* the request is being freed; nothing to detach */
    proxy_close(p);
}

/* ---- request direction ---- */

static void
on_up_write(uv_write_t *w, int status)
{
    struct sbx_http_wcopy *wc = (struct sbx_http_wcopy *)w;
    struct proxy *p = wc->owner;
    p->up_queued -= wc->len;
    free(wc);
    if (p->closed)
        return;
    if (status < 0) {
        /* The upstream may already have answered and closed; the read side decides. */
        return;
    }
    if (p->req && p->up_queued < SBX_HTTP_WRITE_HIGH_WATER && !p->body_ended)
        sbx_http_req_resume_body(p->req);
}

/* Sends bufs upstream in order; see sbx_http_stream_writev. Before the connection completes
 * libuv refuses the try, so the head queues. */
static void
up_writev(struct proxy *p, uv_buf_t *bufs, unsigned nbufs)
{
    if (p->closed)
        return;
    if (sbx_http_stream_writev((uv_stream_t *)&p->up, bufs, nbufs, true, &p->up_queued, p,
                               on_up_write) < 0)
        proxy_fail(p);
}

static void
up_write(struct proxy *p, const void *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    up_writev(p, &b, 1);
}

static void
on_req_data(struct sbx_http_req *req, const char *data, size_t len)
{
    struct proxy *p = req->data;
    if (p->req_chunked) {
        char pre[24];
        int n = snprintf(pre, sizeof(pre), "%zx\r\n", len);
        uv_buf_t b[3] = {uv_buf_init(pre, (unsigned)n), uv_buf_init((char *)data, (unsigned)len),
                         uv_buf_init("\r\n", 2)};
        up_writev(p, b, 3);
    } else {
        up_write(p, data, len);
    }
    if (p->up_queued >= SBX_HTTP_WRITE_HIGH_WATER && p->req)
        sbx_http_req_pause_body(p->req);
}

static void
on_req_end(struct sbx_http_req *req)
{
    struct proxy *p = req->data;
    p->body_ended = true;
    if (p->req_chunked)
        up_write(p, "0\r\n\r\n", 5);
}

/* ---- response direction ---- */

static void
on_resp_header(void *ud, const char *name, const char *value)
{
    struct proxy *p = ud;
    if (p->req)
        sbx_http_add_header(p->req, name, value);
}

static void
on_resp_head(void *ud, int status)
{
    struct proxy *p = ud;
    if (p->req == NULL)
        return;
    p->head_sent = true;
    sbx_http_start(p->req, status, NULL);
}

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_up_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void
on_client_drain(struct sbx_http_req *req)
{
    struct proxy *p = req->data;
    if (!p->closed)
        uv_read_start((uv_stream_t *)&p->up, on_up_alloc, on_up_read);
}

static void
on_resp_body(void *ud, const char *data, size_t len)
{
    struct proxy *p = ud;
    if (p->req && !sbx_http_write(p->req, data, len)) {
        /* Client is slow: stop reading the upstream until its queue drains. */
        uv_read_stop((uv_stream_t *)&p->up);
        sbx_http_on_drain(p->req, on_client_drain);
    }
}

static void
on_resp_end(void *ud)
{
    struct proxy *p = ud;
    if (p->req) {
        struct sbx_http_req *req = p->req;
        detach(p);
        sbx_http_end(req);
    }
}

static const struct sbx_http_upstream_cbs resp_cbs = {
    .on_header = on_resp_header,
    .on_head = on_resp_head,
    .on_body = on_resp_body,
    .on_end = on_resp_end,
};

static void
on_up_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[64 * 1024];
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void
on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct proxy *p = s->data;
    if (p->closed || nread == 0)
        return;
    /* EOF lets an EOF-delimited body finish; any other error is a cut stream. */
    int rc = nread == UV_EOF ? sbx_http_upstream_feed(&p->resp, NULL, 0)
             : nread < 0     ? -1
                             : sbx_http_upstream_feed(&p->resp, buf->base, (size_t)nread);
    if (rc > 0)
        proxy_close(p);
    else if (rc < 0)
        proxy_fail(p);
}

static void
on_connected(uv_connect_t *creq, int status)
{
    struct proxy *p = creq->data;
    if (p->closed)
        return;
    if (status < 0 || p->req == NULL) {
        proxy_fail(p);
        return;
    }
    p->connected = true;
    /* A deeper socket buffer than the default (~208 KiB) keeps an upload streaming while
     * the agent is busy writing to disk; the kernel caps it at net.core.wmem_max. */
    int sndbuf = SBX_PROXY_SNDBUF;
    uv_send_buffer_size((uv_handle_t *)&p->up, &sndbuf);
    uv_read_start((uv_stream_t *)&p->up, on_up_alloc, on_up_read);
}

/* Control-plane credentials never reach an upstream: the code in a sandbox controls its
 * agent, and an API key grants every sandbox. Authorization is the exception only in its
 * Basic form, which the envd protocol uses to name the user an operation runs as (with an
 * empty password; the agent ignores any); no control-plane credential takes that form. */
static bool
is_credential(const struct sbx_http_header *h)
{
    if (strcmp(h->name, "x-api-key") == 0)
        return true;
    return strcmp(h->name, "authorization") == 0 && strncasecmp(h->value, "basic ", 6) != 0;
}

/* Queues the request head; libuv keeps writes made while connecting in order. */
static void
write_request_head(struct proxy *p, struct sbx_http_req *req)
{
    struct sbx_buf head = {0};
    sbx_buf_printf(&head, "%s %s HTTP/1.1\r\n", req->method, req->target);
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct sbx_http_header *h = &req->headers[i];
        /* Expect is answered here: the server says 100 as the body starts streaming, and
         * the agent must not say it a second time. */
        if (sbx_http_is_hop_by_hop(h->name) || strcmp(h->name, "content-length") == 0 ||
            strcmp(h->name, "expect") == 0 || is_credential(h))
            continue;
        sbx_buf_printf(&head, "%s: %s\r\n", h->name, h->value);
    }
    if (p->req_chunked)
        sbx_buf_printf(&head, "Transfer-Encoding: chunked\r\n");
    else if (req->content_length >= 0)
        sbx_buf_printf(&head, "Content-Length: %lld\r\n", (long long)req->content_length);
    sbx_buf_printf(&head, "Connection: close\r\n\r\n");
    up_write(p, head.data, head.len);
    sbx_buf_fini(&head);
}

void
sbx_http_proxy(struct sbx_http_req *req, const char *unix_path, sbx_http_req_cb on_unreachable)
{
    struct proxy *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        on_unreachable(req);
        return;
    }
    p->req = req;
    p->on_unreachable = on_unreachable;
    p->req_chunked = req->chunked;
    req->data = p;
    sbx_http_upstream_init(&p->resp, strcmp(req->method, "HEAD") == 0, &resp_cbs, p);
    uv_pipe_init(uv_default_loop(), &p->up, 0);
    p->up.data = p;
    p->connect.data = p;
    sbx_http_req_on_close(req, on_client_close);
    uv_pipe_connect(&p->connect, &p->up, unix_path, on_connected);
    write_request_head(p, req);
    if (!p->closed)
        sbx_http_req_stream_body(req, on_req_data, on_req_end);
}
