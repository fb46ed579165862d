/* Reverse proxy from a server request to an HTTP server on a unix socket (a sandbox's agent),
 * or, through it, to a TCP port inside the sandbox.
 *
 * One upstream connection per request (Connection: close upstream), so request boundaries on
 * the client's keep-alive connection never depend on the upstream. The request body streams
 * with back-pressure both ways; the response is re-framed by the server side (chunked unless
 * the upstream gave a length) and flushed as it arrives.
 *
 * A user port (tunnel_port) is reached by asking the agent first, on the same connection,
 * "CONNECT 127.0.0.1:<port>" (with "Sbx-Tls: 1" where the service serves HTTPS itself, for
 * the agent to speak TLS to it): once it answers 200 the connection is a byte pipe to that
 * port and the request goes through as to any upstream. An upgrade request (WebSocket) that the
 * upstream answers with 101 turns the client connection and this one into a tunnel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/buf.h"
#include "base/limits.h"
#include "http/http.h"
#include "http/stream.h"
#include "http/upstream.h"

#define CONNECT_ANSWER_MAX 1024 /* the agent's answer to CONNECT: a status line, no more */

struct proxy {
    struct sbx_http_req *req; /* NULL once the client went away */
    uv_pipe_t up;
    uv_connect_t connect;
    struct sbx_http_upstream resp;
    struct sbx_http_proxy_opts o;
    char *host, *forwarded_host;   /* copies of what the head needs */
    struct sbx_buf connect_answer; /* while waiting for the agent's answer to CONNECT */
    bool tunnel_open;              /* the agent said 200 (or there was no CONNECT) */
    bool connected;
    bool head_sent;
    bool closed;
    bool switched; /* the connection belongs to a tunnel now */
    size_t up_queued;
    bool body_ended;
    bool req_chunked;
};

static void
on_up_closed(uv_handle_t *h)
{
    struct proxy *p = h->data;
    sbx_http_upstream_fini(&p->resp);
    sbx_buf_fini(&p->connect_answer);
    free(p->host);
    free(p->forwarded_host);
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
            p->o.on_unreachable(req);
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
    if (p->req == NULL || status == 101)
        return; /* a switch has no response body to frame (on_resp_switch) */
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

static void
release_to_tunnel(void *ud)
{
    struct proxy *p = ud;
    p->closed = true;
    uv_close((uv_handle_t *)&p->up, on_up_closed);
}

/* 101: the client's connection and ours become one tunnel. */
static void
on_resp_switch(void *ud, const char *rest, size_t len)
{
    struct proxy *p = ud;
    struct sbx_http_req *req = p->req;
    if (req == NULL)
        return; /* the read callback closes */
    detach(p);
    p->switched = true;
    uv_read_stop((uv_stream_t *)&p->up);
    sbx_http_add_header(req, "Connection", "Upgrade");
    struct sbx_tunnel_end end = {.stream = (uv_stream_t *)&p->up,
                                 .close = release_to_tunnel,
                                 .ud = p,
                                 .pending = rest,
                                 .n_pending = len};
    sbx_http_tunnel(req, 101, &end);
}

static const struct sbx_http_upstream_cbs resp_cbs = {
    .on_header = on_resp_header,
    .on_head = on_resp_head,
    .on_body = on_resp_body,
    .on_end = on_resp_end,
    .on_switch = on_resp_switch,
};

static void
on_up_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[SBX_RELAY_READ_SLAB];
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(slab, sizeof(slab));
}

/* Control-plane credentials never reach an upstream: the code in a sandbox controls its
 * agent and its ports, and an API key grants every sandbox. Authorization is the exception
 * towards the agent only in its Basic form, which the envd protocol uses to name the user an
 * operation runs as (with an empty password; the agent ignores any); no control-plane
 * credential takes that form. Towards a user port Authorization is the service's own
 * business, and the sandbox's tokens are ours. */
static bool
is_credential(const struct sbx_http_header *h, bool user_port)
{
    if (strcmp(h->name, "x-api-key") == 0)
        return true;
    if (user_port)
        return strcmp(h->name, "x-access-token") == 0 ||
               strcmp(h->name, "e2b-traffic-access-token") == 0;
    return strcmp(h->name, "authorization") == 0 && strncasecmp(h->value, "basic ", 6) != 0;
}

/* Queues the request head; libuv keeps writes made while connecting in order. */
static void
write_request_head(struct proxy *p, struct sbx_http_req *req)
{
    struct sbx_buf head = {0};
    const char *upgrade = req->upgrade ? sbx_http_req_header(req, "upgrade") : NULL;
    sbx_buf_printf(&head, "%s %s HTTP/1.1\r\n", req->method, req->target);
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct sbx_http_header *h = &req->headers[i];
        /* Expect is answered here: the server says 100 as the body starts streaming, and
         * the agent must not say it a second time. */
        if (sbx_http_is_hop_by_hop(h->name) || strcmp(h->name, "content-length") == 0 ||
            strcmp(h->name, "expect") == 0 || is_credential(h, p->o.tunnel_port > 0) ||
            (p->host && strcmp(h->name, "host") == 0))
            continue;
        sbx_buf_printf(&head, "%s: %s\r\n", h->name, h->value);
    }
    if (p->host)
        sbx_buf_printf(&head, "Host: %s\r\nX-Forwarded-Host: %s\r\n", p->host,
                       p->forwarded_host ? p->forwarded_host : "");
    if (p->req_chunked)
        sbx_buf_printf(&head, "Transfer-Encoding: chunked\r\n");
    else if (req->content_length >= 0)
        sbx_buf_printf(&head, "Content-Length: %lld\r\n", (long long)req->content_length);
    if (upgrade && strpbrk(upgrade, "\r\n") == NULL)
        sbx_buf_printf(&head, "Connection: Upgrade\r\nUpgrade: %s\r\n\r\n", upgrade);
    else
        sbx_buf_printf(&head, "Connection: close\r\n\r\n");
    up_write(p, head.data, head.len);
    sbx_buf_fini(&head);
}

/* The upstream is (through the agent's tunnel, for a user port) the server: send the
 * request. */
static void
send_request(struct proxy *p)
{
    p->tunnel_open = true;
    write_request_head(p, p->req);
    if (!p->closed && p->req)
        sbx_http_req_stream_body(p->req, on_req_data, on_req_end);
}

/* The agent's answer to CONNECT, as it arrives: 1 once the tunnel is open (the bytes after
 * the answer's head are in *rest), 0 while incomplete, -1 if refused. The agent is the
 * sandbox's: its answer is bounded and only "HTTP/1.1 200" opens. */
static int
read_connect_answer(struct proxy *p, const char *data, size_t len, const char **rest,
                    size_t *rest_len)
{
    size_t before = p->connect_answer.len;
    if (len == 0 || sbx_buf_append(&p->connect_answer, data, len, CONNECT_ANSWER_MAX) < 0)
        return -1;
    const char *a = p->connect_answer.data;
    const char *end = memmem(a, p->connect_answer.len, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    if (strncmp(a, "HTTP/1.1 200", 12) != 0 && strncmp(a, "HTTP/1.0 200", 12) != 0)
        return -1;
    size_t head_len = (size_t)(end + 4 - a);
    *rest = data + (head_len - before);
    *rest_len = len - (head_len - before);
    return 1;
}

static void
on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct proxy *p = s->data;
    if (p->closed || nread == 0)
        return;
    const char *data = nread > 0 ? buf->base : NULL;
    size_t len = nread > 0 ? (size_t)nread : 0;
    if (!p->tunnel_open) {
        int rc = nread < 0 ? -1 : read_connect_answer(p, data, len, &data, &len);
        if (rc < 0 || p->req == NULL)
            proxy_fail(p);
        if (rc <= 0 || p->req == NULL)
            return;
        send_request(p);
        if (len == 0 || p->closed)
            return;
    }
    /* EOF lets an EOF-delimited body finish; any other error is a cut stream. */
    int rc = nread == UV_EOF ? sbx_http_upstream_feed(&p->resp, NULL, 0)
             : nread < 0     ? -1
                             : sbx_http_upstream_feed(&p->resp, data, len);
    if (p->switched)
        return; /* the tunnel has the connection */
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

void
sbx_http_proxy(struct sbx_http_req *req, const struct sbx_http_proxy_opts *o)
{
    struct proxy *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        o->on_unreachable(req);
        return;
    }
    p->req = req;
    p->o = *o;
    if (o->host) {
        const char *h = sbx_http_req_header(req, "host");
        p->host = strdup(o->host);
        p->forwarded_host = h ? strdup(h) : NULL;
    }
    p->req_chunked = req->chunked;
    req->data = p;
    sbx_http_upstream_init(&p->resp, strcmp(req->method, "HEAD") == 0, &resp_cbs, p);
    p->resp.upgrade = req->upgrade && sbx_http_req_header(req, "upgrade") != NULL;
    uv_pipe_init(uv_default_loop(), &p->up, 0);
    p->up.data = p;
    p->connect.data = p;
    sbx_http_req_on_close(req, on_client_close);
    uv_pipe_connect(&p->connect, &p->up, o->unix_path, on_connected);
    if (o->tunnel_port > 0) {
        char line[96];
        int n = snprintf(line, sizeof(line), "CONNECT 127.0.0.1:%d HTTP/1.1\r\n%s\r\n",
                         o->tunnel_port, o->tunnel_tls ? "Sbx-Tls: 1\r\n" : "");
        up_write(p, line, (size_t)n);
        return; /* the request goes once the agent has opened the tunnel */
    }
    send_request(p);
}
