/* Reverse proxy from a server request to an HTTP server on a unix socket (a sandbox's agent).
 *
 * One upstream connection per request (Connection: close upstream), so request boundaries on
 * the client's keep-alive connection never depend on the upstream. The request body streams
 * with back-pressure both ways; the response is re-framed by the server side (chunked unless
 * the upstream gave a length) and flushed as it arrives. */
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/buf.h"
#include "base/limits.h"
#include "http/http.h"
#include "http/stream.h"

struct proxy {
    struct sbx_http_req *req; /* NULL once the client went away */
    uv_pipe_t up;
    uv_connect_t connect;
    http_parser parser;
    sbx_http_req_cb on_unreachable;
    struct sbx_buf field, value;
    bool in_value;
    bool connected;
    bool head_sent;
    bool done;
    bool closed;
    size_t up_queued;
    bool body_ended;
    bool req_chunked;
    bool is_head; /* the response has a length but never a body */
};

static bool
is_hop_by_hop(const char *name)
{
    static const char *const hop[] = {
        "connection", "keep-alive", "proxy-connection",   "transfer-encoding",  "te",
        "trailer",    "upgrade",    "proxy-authenticate", "proxy-authorization"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (strcasecmp(name, hop[i]) == 0)
            return true;
    return false;
}

static void
on_up_closed(uv_handle_t *h)
{
    struct proxy *p = h->data;
    sbx_buf_fini(&p->field);
    sbx_buf_fini(&p->value);
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

static int
flush_header(struct proxy *p)
{
    if (p->field.len == 0)
        return 0;
    if (!is_hop_by_hop(p->field.data) && p->req)
        sbx_http_add_header(p->req, p->field.data, p->value.len ? p->value.data : "");
    p->field.len = p->value.len = 0;
    if (p->field.data)
        p->field.data[0] = '\0';
    if (p->value.data)
        p->value.data[0] = '\0';
    return 0;
}

static int
on_field(http_parser *hp, const char *at, size_t len)
{
    struct proxy *p = hp->data;
    if (p->in_value) {
        flush_header(p);
        p->in_value = false;
    }
    return sbx_buf_append(&p->field, at, len, SBX_HTTP_MAX_HEADER_BYTES);
}

static int
on_value(http_parser *hp, const char *at, size_t len)
{
    struct proxy *p = hp->data;
    p->in_value = true;
    return sbx_buf_append(&p->value, at, len, SBX_HTTP_MAX_HEADER_BYTES);
}

static int
on_headers_complete(http_parser *hp)
{
    struct proxy *p = hp->data;
    if (p->in_value)
        flush_header(p);
    /* 1 tells http_parser to expect no body: a HEAD answer's Content-Length describes the
     * GET body, and waiting for it would stall, then cut, the client connection. */
    int skip_body = p->is_head ? 1 : 0;
    if (p->req == NULL)
        return skip_body;
    p->head_sent = true;
    sbx_http_start(p->req, (int)hp->status_code, NULL);
    return skip_body;
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

static int
on_body(http_parser *hp, const char *at, size_t len)
{
    struct proxy *p = hp->data;
    if (p->req && !sbx_http_write(p->req, at, len)) {
        /* Client is slow: stop reading the upstream until its queue drains. */
        uv_read_stop((uv_stream_t *)&p->up);
        sbx_http_on_drain(p->req, on_client_drain);
    }
    return 0;
}

static int
on_message_complete(http_parser *hp)
{
    struct proxy *p = hp->data;
    p->done = true;
    if (p->req) {
        struct sbx_http_req *req = p->req;
        detach(p);
        sbx_http_end(req);
    }
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings up_settings = {
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
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
    if (p->closed)
        return;
    if (nread < 0) {
        /* EOF: lets an EOF-delimited body finish; anything else is a cut stream. */
        if (nread == UV_EOF)
            http_parser_execute(&p->parser, &up_settings, NULL, 0);
        if (p->done)
            proxy_close(p);
        else
            proxy_fail(p);
        return;
    }
    if (nread == 0)
        return;
    size_t n = http_parser_execute(&p->parser, &up_settings, buf->base, (size_t)nread);
    (void)n;
    if (p->done) {
        proxy_close(p);
        return;
    }
    if (HTTP_PARSER_ERRNO(&p->parser) != HPE_OK)
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
        if (is_hop_by_hop(h->name) || strcmp(h->name, "content-length") == 0 || is_credential(h))
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
    p->is_head = strcmp(req->method, "HEAD") == 0;
    req->data = p;
    http_parser_init(&p->parser, HTTP_RESPONSE);
    p->parser.data = p;
    uv_pipe_init(uv_default_loop(), &p->up, 0);
    p->up.data = p;
    p->connect.data = p;
    sbx_http_req_on_close(req, on_client_close);
    uv_pipe_connect(&p->connect, &p->up, unix_path, on_connected);
    write_request_head(p, req);
    if (!p->closed)
        sbx_http_req_stream_body(req, on_req_data, on_req_end);
}
