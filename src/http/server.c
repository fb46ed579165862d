/* HTTP/1.1 server connections: parsing with http_parser, one request in flight per
 * connection, bodies buffered or streamed with back-pressure, responses full or chunked.
 *
 * Re-entrancy rule: user callbacks may respond, end or abort from inside parser callbacks,
 * so nothing is freed there. A finished request is released at a safe point
 * (conn_process, write completion) and a connection only in its uv_close callbacks.
 *
 * Deadlines (one timer per connection, re-armed only at state changes, never per byte, so a
 * client cannot extend one by trickling input):
 *   accepted, or a request's first byte after an idle wait  ->  header_ms to complete the head
 *   head complete                                            ->  none until the request is released
 *   released, connection kept alive                          ->  idle_ms for the next request
 *   lingering close                                          ->  SBX_HTTP_LINGER_MS
 * A request being handled has no deadline: streamed responses and bodies may take hours. */
#include <ctype.h>
#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "http/http.h"
#include "http/ratelimit.h"
#include "http/stream.h"
#include "http/tls.h"
#include <jansson.h>

enum body_mode { BODY_UNSET, BODY_BUFFER, BODY_STREAM, BODY_DISCARD };

/* Connections with no request being handled wait, oldest first, in one of two queues: those
 * that have never carried an authenticated request, and those that have. See make_room. */
enum conn_queue { Q_NONE, Q_ANON, Q_TRUSTED, Q_COUNT };
enum resp_state { RESP_NONE, RESP_STARTED, RESP_ENDED };

struct req {
    struct sbx_http_req pub; /* first member: struct sbx_http_req * casts to struct req * */
    struct conn *conn;
    size_t headers_cap;
    enum body_mode body_mode;
    struct sbx_buf body;
    size_t body_max;
    bool body_too_large;
    sbx_http_body_done_cb body_done;
    sbx_http_data_cb on_data;
    sbx_http_req_cb on_end;
    sbx_http_req_cb on_close;
    sbx_http_req_cb on_drain;
    bool body_complete;
    bool no_body;
    bool expect_continue; /* the client waits for a 100 before it sends the body */
    bool body_paused;
    enum resp_state resp;
    bool resp_chunked;
    bool resp_no_body;
    int status;
    char *error; /* the message of an error answer, for the log */
    struct sbx_buf extra_headers;
};

struct conn {
    union {
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    bool is_tcp;
    char remote[SBX_HTTP_SOURCE_MAX]; /* the client's address, for the log */
    struct sbx_http_server *srv;
    http_parser parser;
    struct req *req;
    struct sbx_buf inbuf; /* received, not yet parsed */
    struct sbx_buf url;   /* request target being parsed */
    struct sbx_buf field; /* header field being parsed */
    struct sbx_buf value; /* header value being parsed */
    size_t head_bytes;
    bool in_value;
    bool reading;
    bool closing;
    bool keep_alive;
    bool in_parse;
    bool draining;           /* response sent, discarding the unread body before closing */
    bool linger;             /* the client may still be sending: drain before closing */
    bool idle;               /* kept alive, waiting for the first byte of the next request */
    const char *bad_request; /* why a parser callback refused the request (answered 400) */
    bool trusted;            /* has carried an authenticated request */
    bool tunneled;           /* a tunnel (tunnel.c) owns the stream: no more requests */
    bool tunnel_done;        /* ... and is done with it */
    bool seen_input;         /* a first byte arrived (a TLS client's is 0x16) */
    enum conn_queue queue;   /* the eviction queue it waits in, Q_NONE while a request is handled */
    struct conn *qnext, *qprev;
    size_t drained;
    uv_shutdown_t shutdown;
    uv_timer_t timer;
    int open_handles; /* the stream and the timer */
    size_t queued;    /* bytes handed to uv_write and not yet written */
    struct conn *next, *prev;
};

struct sbx_http_server {
    uv_loop_t *loop;
    sbx_http_request_cb on_request;
    void *ud;
    uv_tcp_t *tcp;
    uv_pipe_t *pipe;
    struct conn *conns;
    bool log;
    uv_timer_t *log_tick;                      /* ends the client error log's intervals */
    struct sbx_http_ratelimit *client_errors;  /* log lines of 4xx answers, by client address */
    uint64_t evicted, refused;                 /* by the connection limit, since the last tick */
    uint64_t header_ms, idle_ms, anon_idle_ms; /* 0: no deadline */
    size_t max_conns;                          /* 0: no limit */
    struct sbx_tls *tls;                       /* NULL: plain HTTP only */
    size_t n_conns;                            /* open and not closing */
    void (*observer)(const struct sbx_http_req *req, int status, void *ud);
    void *observer_ud;
    struct conn *queue_head[Q_COUNT], *queue_tail[Q_COUNT];
};

static void conn_process(struct conn *c);
static void conn_parse(struct conn *c, const char *ext, size_t ext_len);
static void conn_close(struct conn *c);
static void conn_drain(struct conn *c);
static void set_reading(struct conn *c, bool on);
static void respond_simple(struct conn *c, int status, const char *msg);
static void on_timeout(uv_timer_t *t);
static void start_tls(struct conn *c, const char *first, size_t n);
static void on_tunnel_end(void *ud);

static struct req *
to_req(struct sbx_http_req *r)
{
    return (struct req *)r;
}

static void
conn_set_deadline(struct conn *c, uint64_t ms)
{
    if (ms > 0)
        uv_timer_start(&c->timer, on_timeout, ms, 0);
    else
        uv_timer_stop(&c->timer);
}

/* ---- the connection limit ---- */

static void
queue_leave(struct conn *c)
{
    struct sbx_http_server *s = c->srv;
    if (c->queue == Q_NONE)
        return;
    if (c->qprev)
        c->qprev->qnext = c->qnext;
    else
        s->queue_head[c->queue] = c->qnext;
    if (c->qnext)
        c->qnext->qprev = c->qprev;
    else
        s->queue_tail[c->queue] = c->qprev;
    c->qnext = c->qprev = NULL;
    c->queue = Q_NONE;
}

/* At the back of q, or at its front: a lingering connection has had its answer. */
static void
queue_enter(struct conn *c, enum conn_queue q, bool front)
{
    struct sbx_http_server *s = c->srv;
    queue_leave(c);
    c->queue = q;
    if (front) {
        c->qnext = s->queue_head[q];
        if (c->qnext)
            c->qnext->qprev = c;
        else
            s->queue_tail[q] = c;
        s->queue_head[q] = c;
    } else {
        c->qprev = s->queue_tail[q];
        if (c->qprev)
            c->qprev->qnext = c;
        else
            s->queue_head[q] = c;
        s->queue_tail[q] = c;
    }
}

/* Connection exhaustion defence: every connection holds a descriptor, and a client that opens
 * enough of them, idle or one unauthenticated request each, would leave none for the clients
 * that matter (every /health and create got an empty reply). At the limit, a new connection
 * closes the one that has waited longest with no request being handled, first among those
 * that never carried an authenticated request; so a newcomer is always served, and a request
 * being handled is never cut for it. Returns false if every connection is handling one. */
static bool
make_room(struct sbx_http_server *s)
{
    if (s->max_conns == 0 || s->n_conns < s->max_conns)
        return true;
    struct conn *victim = s->queue_head[Q_ANON] ? s->queue_head[Q_ANON] : s->queue_head[Q_TRUSTED];
    if (victim == NULL) {
        s->refused++;
        return false;
    }
    s->evicted++;
    conn_close(victim);
    return true;
}

/* An anonymous client has no connection pool worth keeping warm for it, so until a
 * connection has carried an authenticated request its idle wait is the shorter one. */
static uint64_t
idle_deadline(const struct conn *c)
{
    const struct sbx_http_server *s = c->srv;
    if (c->trusted || s->anon_idle_ms == 0 || (s->idle_ms > 0 && s->idle_ms < s->anon_idle_ms))
        return s->idle_ms;
    return s->anon_idle_ms;
}

/* Once closing, a connection no longer counts, nor waits in a queue. */
static void
conn_set_closing(struct conn *c)
{
    c->closing = true;
    if (c->srv == NULL)
        return; /* its server is closing them all */
    queue_leave(c);
    c->srv->n_conns--;
}

/* ---- request bookkeeping ---- */

static void
req_free(struct req *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->pub.n_headers; i++) {
        free(r->pub.headers[i].name);
        free(r->pub.headers[i].value);
    }
    free(r->pub.headers);
    free(r->pub.target);
    free(r->pub.path);
    free(r->pub.query);
    free((char *)r->pub.method);
    free(r->error);
    sbx_buf_fini(&r->body);
    sbx_buf_fini(&r->extra_headers);
    free(r);
}

static void
log_request(struct conn *c, struct req *r)
{
    struct sbx_http_server *s = c->srv;
    if (!s->log || r->pub.quiet)
        return;
    const char *sandbox = r->pub.log_sandbox[0] ? r->pub.log_sandbox : "-";
    const char *route = r->pub.path ? r->pub.path : "-";
    double dur_ms = (double)(sbx_now_ms() - r->pub.start_ms);
    if (r->status < 400) {
        sbx_log_info("request", "sandbox=%s method=%s route=%s status=%d dur_ms=%.1f", sandbox,
                     r->pub.method, route, r->status, dur_ms);
        return;
    }
    /* Client errors are what anyone who reaches the port can cause, at any rate (166,650 bad
     * requests in 10 s once grew the log by 318 MiB): at most one line per client address per
     * interval, the rest counted in a summary at the interval's end (on_log_tick). */
    if (r->status < 500 && !sbx_http_ratelimit_admit(s->client_errors, c->remote))
        return;
    char error[SBX_HTTP_LOG_ERROR_MAX];
    sbx_log_quote(error, sizeof(error), r->error ? r->error : "");
    sbx_log_info("request",
                 "sandbox=%s method=%s route=%s status=%d dur_ms=%.1f remote=%s error=\"%s\"",
                 sandbox, r->pub.method, route, r->status, dur_ms, c->remote, error);
}

static void
report_client_errors(void *ud, const char *source, uint64_t held)
{
    sbx_log_warn("client_errors", "remote=%s suppressed=%llu interval_s=%d", source,
                 (unsigned long long)held, SBX_HTTP_LOG_INTERVAL_MS / 1000);
}

static void
on_log_tick(uv_timer_t *t)
{
    struct sbx_http_server *s = t->data;
    sbx_http_ratelimit_flush(s->client_errors, report_client_errors, NULL);
    if (s->evicted || s->refused)
        sbx_log_warn("conn_limit", "max_connections=%zu evicted=%llu refused=%llu interval_s=%d",
                     s->max_conns, (unsigned long long)s->evicted, (unsigned long long)s->refused,
                     SBX_HTTP_LOG_INTERVAL_MS / 1000);
    s->evicted = s->refused = 0;
}

/* Called at safe points: releases a request whose response ended and whose body was read. */
static void
conn_maybe_finish(struct conn *c)
{
    struct req *r = c->req;
    if (r == NULL || r->resp != RESP_ENDED || c->closing || c->tunneled)
        return;
    if (!r->body_complete) {
        /* The handler answered before reading the whole body: the rest of the body is still
         * on the wire, so the connection cannot carry another request. */
        c->keep_alive = false;
    }
    if (c->queued > 0)
        return; /* finish after the response is flushed */
    log_request(c, r);
    if (c->srv->observer)
        c->srv->observer(&r->pub, r->status, c->srv->observer_ud);
    bool unread_input = !r->body_complete || c->linger;
    c->req = NULL;
    req_free(r);
    if (!c->keep_alive) {
        if (unread_input)
            conn_drain(c);
        else
            conn_close(c);
        return;
    }
    c->idle = true;
    queue_enter(c, c->trusted ? Q_TRUSTED : Q_ANON, false);
    conn_set_deadline(c, idle_deadline(c));
    http_parser_pause(&c->parser, 0);
    conn_process(c);
}

/* ---- writing ---- */

static void
on_write(uv_write_t *w, int status)
{
    struct sbx_http_wcopy *wc = (struct sbx_http_wcopy *)w;
    struct conn *c = wc->owner;
    c->queued -= wc->len;
    free(wc);
    if (status < 0) {
        conn_close(c);
        return;
    }
    struct req *r = c->req;
    if (r && r->on_drain && c->queued < SBX_HTTP_WRITE_HIGH_WATER) {
        sbx_http_req_cb cb = r->on_drain;
        r->on_drain = NULL;
        cb(&r->pub);
    }
    if (c->queued == 0)
        conn_maybe_finish(c);
}

/* Heads and whole responses are always queued (no try_first), so sbx_http_respond never
 * releases its request before it returns; see sbx_http_stream_writev. */
static void
conn_writev(struct conn *c, uv_buf_t *bufs, unsigned nbufs, bool try_first)
{
    if (c->closing)
        return;
    if (sbx_http_stream_writev(&c->h.stream, bufs, nbufs, try_first, &c->queued, c, on_write) < 0)
        conn_close(c);
}

static void
conn_write(struct conn *c, const void *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    conn_writev(c, &b, 1, false);
}

/* ---- connection teardown ---- */

static void
on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    struct sbx_http_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else if (s)
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    req_free(c->req);
    sbx_buf_fini(&c->inbuf);
    sbx_buf_fini(&c->url);
    sbx_buf_fini(&c->field);
    sbx_buf_fini(&c->value);
    free(c);
}

static void
conn_close(struct conn *c)
{
    /* A tunnel's stream closes when the tunnel ends (it restores the stream's owner then). */
    if (c->closing || (c->tunneled && !c->tunnel_done))
        return;
    conn_set_closing(c);
    struct req *r = c->req;
    if (r && r->resp != RESP_ENDED && r->on_close) {
        sbx_http_req_cb cb = r->on_close;
        r->on_close = NULL;
        cb(&r->pub);
    }
    uv_close((uv_handle_t *)&c->h, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

void
sbx_http_abort(struct sbx_http_req *pub)
{
    struct req *r = to_req(pub);
    struct conn *c = r->conn;
    if (c->closing)
        return;
    r->on_close = NULL;
    r->on_drain = NULL;
    conn_set_closing(c);
    /* A reset, not a clean end: streaming clients must see that the stream was cut. */
    if (c->is_tcp)
        uv_tcp_close_reset(&c->h.tcp, on_conn_closed);
    else
        uv_close((uv_handle_t *)&c->h, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

/* Lingering close: closing a socket with unread input makes the kernel send a reset, which
 * can destroy the error response the client has not read yet (408, 413, 431). So send FIN,
 * then read and discard until the client closes, bounded in bytes and in time: a client that
 * never closes must not keep the connection. */
static void
on_shutdown(uv_shutdown_t *s, int status)
{
    (void)s;
    (void)status;
}

static void
conn_drain(struct conn *c)
{
    if (c->closing || c->draining)
        return;
    c->draining = true;
    queue_enter(c, Q_ANON, true);
    c->inbuf.len = 0;
    if (uv_shutdown(&c->shutdown, &c->h.stream, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    conn_set_deadline(c, SBX_HTTP_LINGER_MS);
    set_reading(c, true);
}

/* Slowloris defence: a client that holds a connection without completing a request ties up
 * a file descriptor, and enough of them exhaust the daemon's. */
static void
on_timeout(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->draining || c->req == NULL) {
        conn_close(c); /* the linger is over, or nothing of a request arrived */
        return;
    }
    /* Part of a head arrived (a complete head stops the timer): say why, then close. If even
     * this answer cannot be written in time, the next expiry closes (respond_simple does). */
    respond_simple(c, 408, "request head not received in time");
    if (!c->closing)
        conn_set_deadline(c, SBX_HTTP_LINGER_MS);
}

/* ---- parser callbacks ---- */

static int
head_account(struct conn *c, size_t n)
{
    c->head_bytes += n;
    return c->head_bytes > SBX_HTTP_MAX_HEADER_BYTES ? -1 : 0;
}

static int
on_message_begin(http_parser *p)
{
    struct conn *c = p->data;
    if (c->closing)
        return -1;
    struct req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    r->conn = c;
    r->pub.content_length = -1;
    c->req = r;
    if (c->idle) {
        /* A later request's head is due header_ms after its first byte; the first one's,
         * after the connection's start (armed on accept). */
        c->idle = false;
        conn_set_deadline(c, c->srv->header_ms);
    }
    c->head_bytes = 0;
    c->bad_request = NULL;
    c->in_value = false;
    c->field.len = c->value.len = c->url.len = 0;
    return 0;
}

static int
on_url(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (head_account(c, len) < 0)
        return -1;
    return sbx_buf_append(&c->url, at, len, SBX_HTTP_MAX_HEADER_BYTES);
}

/* Appends a header (taking name and value, freeing them on failure). */
static int
add_req_header(struct req *r, char *name, char *value)
{
    if (name && value && r->pub.n_headers == r->headers_cap) {
        size_t cap = r->headers_cap ? r->headers_cap * 2 : 16;
        struct sbx_http_header *h = realloc(r->pub.headers, cap * sizeof(*h));
        if (h) {
            r->pub.headers = h;
            r->headers_cap = cap;
        }
    }
    if (name == NULL || value == NULL || r->pub.n_headers == r->headers_cap) {
        free(name);
        free(value);
        return -1;
    }
    r->pub.headers[r->pub.n_headers++] = (struct sbx_http_header){name, value};
    return 0;
}

static int
push_header(struct conn *c)
{
    struct req *r = c->req;
    if (c->field.len == 0)
        return 0;
    if (r->pub.n_headers >= SBX_HTTP_MAX_HEADERS)
        return -1;
    for (size_t i = 0; i < c->field.len; i++)
        c->field.data[i] = (char)tolower((unsigned char)c->field.data[i]);
    if (add_req_header(r, strndup(c->field.data, c->field.len),
                       strndup(c->value.len ? c->value.data : "", c->value.len)) < 0)
        return -1;
    c->field.len = c->value.len = 0;
    return 0;
}

static int
on_header_field(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (head_account(c, len) < 0)
        return -1;
    /* http_parser lets a space into a field name, and "Transfer-Encoding : chunked" still
     * frames the body as chunked while the header's name no longer matches, so a proxy would
     * pass it on to a server that frames it otherwise: request smuggling. RFC 9112 §5.1.
     * (A tab there is already a parse error.) */
    if (memchr(at, ' ', len)) {
        c->bad_request = "whitespace between a header field name and the colon";
        return -1;
    }
    if (c->in_value) {
        if (push_header(c) < 0)
            return -1;
        c->in_value = false;
    }
    return sbx_buf_append(&c->field, at, len, SBX_HTTP_MAX_HEADER_BYTES);
}

static int
on_header_value(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (head_account(c, len) < 0)
        return -1;
    c->in_value = true;
    return sbx_buf_append(&c->value, at, len, SBX_HTTP_MAX_HEADER_BYTES);
}

static int
on_headers_complete(http_parser *p)
{
    struct conn *c = p->data;
    struct req *r = c->req;
    if (c->in_value && push_header(c) < 0)
        return -1;
    c->in_value = false;
    if (c->url.len == 0)
        return -1;
    r->pub.target = strndup(c->url.data, c->url.len);
    if (r->pub.target == NULL)
        return -1;
    r->pub.method = strdup(http_method_str((enum http_method)p->method));
    const char *q = strchr(r->pub.target, '?');
    r->pub.path = q ? strndup(r->pub.target, (size_t)(q - r->pub.target)) : strdup(r->pub.target);
    r->pub.query = q ? strdup(q + 1) : NULL;
    if (r->pub.method == NULL || r->pub.path == NULL || (q && r->pub.query == NULL))
        return -1;
    r->pub.chunked = (p->flags & F_CHUNKED) != 0;
    r->pub.upgrade = p->upgrade != 0;
    r->pub.content_length = (p->flags & F_CONTENTLENGTH) ? (int64_t)p->content_length : -1;
    r->no_body = !r->pub.chunked && r->pub.content_length <= 0;
    /* HTTP/1.0 clients' expectations are ignored (RFC 9110 §10.1.1). */
    const char *expect = sbx_http_req_header(&r->pub, "expect");
    r->expect_continue = expect && strcasecmp(expect, "100-continue") == 0 && !r->no_body &&
                         (p->http_major > 1 || (p->http_major == 1 && p->http_minor >= 1));
    r->pub.start_ms = sbx_now_ms();
    c->keep_alive = http_should_keep_alive(p) != 0;
    uv_timer_stop(&c->timer); /* the request is being handled: no deadline, no eviction */
    queue_leave(c);
    c->srv->on_request(&r->pub, c->srv->ud);
    if (c->closing)
        return -1; /* aborted (or the client left): no further callbacks for this request */
    if (r->body_mode == BODY_UNSET) {
        if (r->resp != RESP_NONE || r->no_body)
            r->body_mode = BODY_DISCARD;
        else
            http_parser_pause(p, 1); /* resumes when the handler picks a body mode */
    }
    return 0;
}

static void
deliver_buffered_body(struct req *r)
{
    sbx_http_body_done_cb cb = r->body_done;
    r->body_done = NULL;
    if (r->body_too_large) {
        /* The rest of the body is not worth reading: say so, then close. */
        r->conn->keep_alive = false;
        sbx_http_respond_error(&r->pub, 413, "request body larger than %zu bytes", r->body_max);
        return;
    }
    if (cb)
        cb(&r->pub, &r->body);
}

static int
on_body(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    struct req *r = c->req;
    /* After an abort or a close callback the handler has dropped the request: stop here
     * rather than hand it more of the body that is still in this read. */
    if (c->closing)
        return -1;
    switch (r->body_mode) {
    case BODY_BUFFER:
        if (!r->body_too_large && sbx_buf_append(&r->body, at, len, r->body_max) < 0) {
            r->body_too_large = true;
            sbx_buf_fini(&r->body);
            /* Answer now; the connection closes because the body is not fully read. */
            deliver_buffered_body(r);
        }
        break;
    case BODY_STREAM:
        if (r->on_data)
            r->on_data(&r->pub, at, len);
        if (r->body_paused && !c->closing)
            http_parser_pause(p, 1);
        break;
    case BODY_DISCARD:
    case BODY_UNSET:
        break;
    }
    return 0;
}

static int
on_message_complete(http_parser *p)
{
    struct conn *c = p->data;
    struct req *r = c->req;
    if (c->closing)
        return -1;
    r->body_complete = true;
    /* One request at a time: stop parsing pipelined data until this response has ended. */
    http_parser_pause(p, 1);
    if (r->body_mode == BODY_BUFFER && r->body_done)
        deliver_buffered_body(r);
    else if (r->body_mode == BODY_STREAM && r->on_end)
        r->on_end(&r->pub);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- reading and the parse loop ---- */

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[SBX_HTTP_READ_SLAB];
    (void)h;
    (void)suggested;
    /* The loop is single-threaded: a read is parsed in place, and what is left of it is
     * copied into inbuf, before the next read. */
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void
on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    if (c->srv && c->srv->tls && !c->seen_input && buf->base[0] == 0x16) {
        start_tls(c, buf->base, (size_t)nread); /* a TLS handshake record */
        return;
    }
    c->seen_input = true;
    if (c->draining) {
        c->drained += (size_t)nread;
        if (c->drained > SBX_HTTP_MAX_DRAIN_BYTES)
            conn_close(c);
        return;
    }
    if (c->inbuf.len == 0 && !c->in_parse) {
        /* Nothing older pending: parse the read in place, keeping only what is left. */
        conn_parse(c, buf->base, (size_t)nread);
        return;
    }
    if (sbx_buf_append(&c->inbuf, buf->base, (size_t)nread, SIZE_MAX / 2) < 0) {
        conn_close(c);
        return;
    }
    conn_process(c);
}

static void
set_reading(struct conn *c, bool on)
{
    if (c->closing || c->reading == on)
        return;
    c->reading = on;
    if (on)
        uv_read_start(&c->h.stream, on_alloc, on_read);
    else
        uv_read_stop(&c->h.stream);
}

/* Parses pending input: inbuf, or, when inbuf is empty, the fresh read ext (parsed in place
 * to save a copy per read: callbacks get pointers valid only during the call anyway). What is
 * left of ext is kept in inbuf. */
static void
conn_parse(struct conn *c, const char *ext, size_t ext_len)
{
    if (c->in_parse || c->closing || c->draining || c->tunneled)
        return;
    c->in_parse = true;
    while (!c->closing && (ext_len > 0 || c->inbuf.len > 0)) {
        /* Nothing appends to inbuf during the parse, so it stays empty while ext lasts. */
        const char *data = ext_len > 0 ? ext : c->inbuf.data;
        size_t avail = ext_len > 0 ? ext_len : c->inbuf.len;
        struct req *r = c->req;
        if (r && r->pub.method != NULL && r->body_mode == BODY_UNSET)
            break; /* waiting for the handler to choose how to read the body */
        if (r && (r->body_paused || (r->body_complete && r->resp != RESP_ENDED)))
            break;
        if (r && r->body_complete)
            break; /* finished but not yet released: conn_maybe_finish continues */
        if (HTTP_PARSER_ERRNO(&c->parser) == HPE_PAUSED)
            http_parser_pause(&c->parser, 0);
        size_t n = http_parser_execute(&c->parser, &parser_settings, data, avail);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (ext_len > 0)
            ext += n, ext_len -= n;
        else
            sbx_buf_consume(&c->inbuf, n);
        if (c->closing)
            break; /* a callback closed or aborted the connection: nothing left to answer */
        if (e == HPE_PAUSED) {
            struct req *cur = c->req;
            if (cur == NULL || cur->body_complete || cur->body_paused ||
                cur->body_mode == BODY_UNSET)
                break; /* wait for the response to end, or for the handler */
            continue;
        }
        if (e != HPE_OK) {
            int status =
                e == HPE_HEADER_OVERFLOW || c->head_bytes > SBX_HTTP_MAX_HEADER_BYTES ? 431 : 400;
            if (c->req && c->req->pub.n_headers >= SBX_HTTP_MAX_HEADERS)
                status = 431;
            const char *why = c->bad_request ? c->bad_request : http_errno_description(e);
            respond_simple(c, status, status == 431 ? "request header fields too large" : why);
            break;
        }
        if (n == 0)
            break;
    }
    c->in_parse = false;
    if (c->closing)
        return;
    if (ext_len > 0 && sbx_buf_append(&c->inbuf, ext, ext_len, SIZE_MAX / 2) < 0) {
        conn_close(c);
        return;
    }
    /* Keep reading (bounded) even while a response streams, so that a client that goes
     * away is noticed at once rather than at the next write. */
    set_reading(c, c->inbuf.len < SBX_HTTP_MAX_PENDING_INPUT);
    conn_maybe_finish(c);
}

static void
conn_process(struct conn *c)
{
    conn_parse(c, NULL, 0);
}

/* A parse error: answer with a plain JSON error and close, whatever state we were in. */
static void
respond_simple(struct conn *c, int status, const char *msg)
{
    struct req *r = c->req;
    c->keep_alive = false;
    c->linger = true; /* the rest of the bad (or late) request may be on its way */
    if (r && r->resp != RESP_NONE) {
        conn_close(c);
        return;
    }
    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL) {
            conn_close(c);
            return;
        }
        r->conn = c;
        c->req = r;
    }
    if (r->pub.method == NULL)
        r->pub.method = strdup("-");
    r->pub.start_ms = sbx_now_ms();
    r->body_complete = true;
    /* The handler may hold the request (a body being streamed, an answer being prepared):
     * the error answer ends it, so the handler must drop it now, as if the client left. */
    if (r->on_close) {
        sbx_http_req_cb cb = r->on_close;
        r->on_close = NULL;
        cb(&r->pub);
    }
    r->on_drain = NULL;
    r->body_done = NULL;
    r->on_data = NULL;
    r->on_end = NULL;
    sbx_http_respond_error(&r->pub, status, "%s", msg);
}

/* ---- accepting ---- */

/* A new connection of s, counted and in the eviction queue, not yet open. */
static struct conn *
conn_new(struct sbx_http_server *s, bool is_tcp)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->srv = s;
    c->is_tcp = is_tcp;
    snprintf(c->remote, sizeof(c->remote), "unix");
    if (c->is_tcp)
        uv_tcp_init(s->loop, &c->h.tcp);
    else
        uv_pipe_init(s->loop, &c->h.pipe, 0);
    c->h.stream.data = c;
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    queue_enter(c, Q_ANON, false);
    return c;
}

/* The connection is open: requests may come. */
static void
conn_begin(struct conn *c)
{
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    conn_set_deadline(c, c->srv->header_ms);
    set_reading(c, true);
}

static void
on_connection(uv_stream_t *server, int status)
{
    struct sbx_http_server *s = server->data;
    if (status < 0)
        return;
    bool room = make_room(s);
    struct conn *c = conn_new(s, server->type == UV_TCP);
    /* Without room the connection is still accepted, to be closed at once: left in the
     * backlog, it would stop libuv from accepting any other. */
    if (uv_accept(server, &c->h.stream) < 0 || !room) {
        conn_close(c);
        return;
    }
    if (c->is_tcp) {
        uv_tcp_nodelay(&c->h.tcp, 1);
        struct sockaddr_storage addr;
        int len = sizeof(addr);
        if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&addr, &len) == 0)
            uv_ip_name((struct sockaddr *)&addr, c->remote, sizeof(c->remote));
    }
    conn_begin(c);
}

/* A client's first bytes are a TLS handshake: tls.c terminates it, and the plaintext comes
 * back over a socketpair as a connection of its own, under the client's name. The client's
 * connection is tunneled meanwhile (it closes when the TLS connection ends). */
static void
start_tls(struct conn *c, const char *first, size_t n)
{
    struct sbx_http_server *s = c->srv;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
        conn_close(c);
        return;
    }
    bool room = make_room(s);
    struct conn *plain = conn_new(s, false);
    snprintf(plain->remote, sizeof(plain->remote), "%s", c->remote);
    if (uv_pipe_open(&plain->h.pipe, sv[0]) < 0 || !room) {
        close(sv[0]);
        close(sv[1]);
        conn_close(plain);
        conn_close(c);
        return;
    }
    conn_begin(plain);
    c->tunneled = true;
    set_reading(c, false);
    uv_timer_stop(&c->timer);
    queue_leave(c); /* its plaintext connection is the one that waits, and is evicted */
    if (c->is_tcp)
        uv_tcp_keepalive(&c->h.tcp, 1, SBX_TUNNEL_KEEPALIVE_S);
    sbx_tls_serve(s->tls, s->loop, &c->h.stream, on_tunnel_end, c, first, n, sv[1]);
}

struct sbx_http_server *
sbx_http_server_new(uv_loop_t *loop, sbx_http_request_cb on_request, void *ud)
{
    struct sbx_http_server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    s->on_request = on_request;
    s->ud = ud;
    return s;
}

void
sbx_http_server_set_logging(struct sbx_http_server *s, bool on)
{
    s->log = on;
    if (!on || s->log_tick)
        return;
    s->client_errors = sbx_http_ratelimit_new(SBX_HTTP_LOG_SOURCES_MAX);
    s->log_tick = malloc(sizeof(*s->log_tick));
    if (s->client_errors == NULL || s->log_tick == NULL)
        abort(); /* at start-up: nothing to serve without memory */
    uv_timer_init(s->loop, s->log_tick);
    s->log_tick->data = s;
    uv_timer_start(s->log_tick, on_log_tick, SBX_HTTP_LOG_INTERVAL_MS, SBX_HTTP_LOG_INTERVAL_MS);
    uv_unref((uv_handle_t *)s->log_tick); /* it must not keep the loop alive */
}

void
sbx_http_server_set_observer(struct sbx_http_server *s,
                             void (*done)(const struct sbx_http_req *req, int status, void *ud),
                             void *ud)
{
    s->observer = done;
    s->observer_ud = ud;
}

void
sbx_http_server_set_timeouts(struct sbx_http_server *s, uint64_t header_ms, uint64_t idle_ms,
                             uint64_t anon_idle_ms)
{
    s->header_ms = header_ms;
    s->idle_ms = idle_ms;
    s->anon_idle_ms = anon_idle_ms;
}

void
sbx_http_server_set_max_conns(struct sbx_http_server *s, size_t max)
{
    s->max_conns = max;
}

void
sbx_http_server_set_tls(struct sbx_http_server *s, struct sbx_tls *tls)
{
    s->tls = tls;
}

int
sbx_http_server_listen_tcp(struct sbx_http_server *s, const char *host, int port,
                           struct sbx_error **err)
{
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid listen address '%s'", host);
    s->tcp = calloc(1, sizeof(*s->tcp));
    uv_tcp_init(s->loop, s->tcp);
    s->tcp->data = s;
    int rc = uv_tcp_bind(s->tcp, (struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)s->tcp, 511, on_connection);
    if (rc < 0)
        return sbx_error_set(err, SBX_UNAVAILABLE, -rc, "cannot listen on %s:%d: %s", host, port,
                             uv_strerror(rc));
    return 0;
}

int
sbx_http_server_port(struct sbx_http_server *s)
{
    struct sockaddr_storage addr;
    int len = sizeof(addr);
    if (s->tcp == NULL || uv_tcp_getsockname(s->tcp, (struct sockaddr *)&addr, &len) < 0)
        return -1;
    if (addr.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&addr)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
}

int
sbx_http_server_listen_fd(struct sbx_http_server *s, int fd, struct sbx_error **err)
{
    uv_handle_type t = uv_guess_handle(fd);
    int rc;
    uv_stream_t *st;
    if (t == UV_TCP) {
        uv_tcp_t *tcp = calloc(1, sizeof(*tcp));
        uv_tcp_init(s->loop, tcp);
        rc = uv_tcp_open(tcp, fd);
        st = (uv_stream_t *)tcp;
        if (s->tcp == NULL)
            s->tcp = tcp;
    } else {
        uv_pipe_t *pipe = calloc(1, sizeof(*pipe));
        uv_pipe_init(s->loop, pipe, 0);
        rc = uv_pipe_open(pipe, fd);
        st = (uv_stream_t *)pipe;
        s->pipe = pipe;
    }
    st->data = s;
    if (rc == 0)
        rc = uv_listen(st, 511, on_connection);
    if (rc < 0)
        return sbx_error_set(err, SBX_UNAVAILABLE, -rc, "cannot serve fd %d: %s", fd,
                             uv_strerror(rc));
    return 0;
}

static void
free_on_close(uv_handle_t *h)
{
    free(h);
}

void
sbx_http_server_close(struct sbx_http_server *s)
{
    if (s == NULL)
        return;
    if (s->tcp)
        uv_close((uv_handle_t *)s->tcp, free_on_close);
    if (s->pipe)
        uv_close((uv_handle_t *)s->pipe, free_on_close);
    if (s->log_tick)
        uv_close((uv_handle_t *)s->log_tick, free_on_close);
    sbx_http_ratelimit_free(s->client_errors);
    for (struct conn *c = s->conns; c; c = c->next) {
        conn_close(c);
        c->srv = NULL;
    }
    s->conns = NULL;
    free(s);
}

/* ---- request accessors ---- */

const char *
sbx_http_req_header(const struct sbx_http_req *req, const char *lname)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (strcmp(req->headers[i].name, lname) == 0)
            return req->headers[i].value;
    return NULL;
}

void
sbx_http_req_set_header(struct sbx_http_req *pub, const char *lname, const char *value)
{
    for (size_t i = 0; i < pub->n_headers; i++) {
        if (strcmp(pub->headers[i].name, lname) == 0) {
            char *v = strdup(value);
            if (v == NULL)
                abort();
            free(pub->headers[i].value);
            pub->headers[i].value = v;
            return;
        }
    }
    if (add_req_header(to_req(pub), strdup(lname), strdup(value)) < 0)
        abort(); /* out of memory: one policy, as xmalloc */
}

bool
sbx_http_req_has_secret(const struct sbx_http_req *req, const char *lname, const char *secret)
{
    const char *v = sbx_http_req_header(req, lname);
    return v != NULL && secret != NULL && sbx_secret_equal(v, strlen(v), secret, strlen(secret));
}

static int
hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

char *
sbx_http_percent_decode(const char *s, size_t len, bool plus_is_space, size_t *outlen)
{
    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi = i + 1 < len ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < len ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (s[i] == '+' && plus_is_space) {
            out[o++] = ' ';
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    if (outlen)
        *outlen = o;
    return out;
}

char *
sbx_http_req_query(const struct sbx_http_req *req, const char *key)
{
    const char *q = req->query;
    size_t klen = strlen(key);
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t plen = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', plen);
        size_t nlen = eq ? (size_t)(eq - q) : plen;
        size_t dlen = 0;
        char *name = sbx_http_percent_decode(q, nlen, true, &dlen);
        bool match = name && dlen == klen && memcmp(name, key, klen) == 0;
        free(name);
        if (match) {
            if (eq == NULL)
                return strdup("");
            return sbx_http_percent_decode(eq + 1, plen - nlen - 1, true, NULL);
        }
        q = amp ? amp + 1 : NULL;
    }
    return NULL;
}

/* ---- body ---- */

/* A client that sent Expect: 100-continue holds its body back until it sees a 100 (curl for
 * 1 s, others longer). Say it once the handler asks for the body; a handler that answers
 * without reading it (401, 404, 413) sends its final status alone, and the body is never
 * sent at all. */
static void
send_continue(struct req *r)
{
    if (!r->expect_continue || r->resp != RESP_NONE || r->body_complete)
        return;
    r->expect_continue = false;
    conn_write(r->conn, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

static void
resume_parsing(struct req *r)
{
    struct conn *c = r->conn;
    if (c->closing)
        return;
    conn_process(c);
}

void
sbx_http_req_read_body(struct sbx_http_req *pub, size_t max, sbx_http_body_done_cb done)
{
    struct req *r = to_req(pub);
    r->body_mode = BODY_BUFFER;
    r->body_max = max;
    r->body_done = done;
    if (r->pub.content_length > (int64_t)max) {
        /* Refuse before reading a byte of it, and close rather than read it to discard. */
        r->body_too_large = true;
        r->body_done = NULL;
        r->conn->keep_alive = false;
        sbx_http_respond_error(pub, 413, "request body larger than %zu bytes", max);
        return;
    }
    if (r->body_complete) {
        deliver_buffered_body(r);
        return;
    }
    send_continue(r);
    resume_parsing(r);
}

void
sbx_http_req_stream_body(struct sbx_http_req *pub, sbx_http_data_cb on_data, sbx_http_req_cb on_end)
{
    struct req *r = to_req(pub);
    bool was_streaming = r->body_mode == BODY_STREAM;
    r->body_mode = BODY_STREAM;
    r->on_data = on_data;
    r->on_end = on_end;
    if (was_streaming)
        return; /* only the callbacks change */
    if (r->body_complete) {
        if (on_end)
            on_end(pub);
        return;
    }
    send_continue(r);
    resume_parsing(r);
}

void
sbx_http_req_pause_body(struct sbx_http_req *pub)
{
    struct req *r = to_req(pub);
    r->body_paused = true;
    if (r->conn->in_parse)
        http_parser_pause(&r->conn->parser, 1);
    set_reading(r->conn, false);
}

void
sbx_http_req_resume_body(struct sbx_http_req *pub)
{
    struct req *r = to_req(pub);
    if (!r->body_paused)
        return;
    r->body_paused = false;
    resume_parsing(r);
}

void
sbx_http_req_on_close(struct sbx_http_req *pub, sbx_http_req_cb on_close)
{
    to_req(pub)->on_close = on_close;
}

const char *
sbx_http_req_remote(const struct sbx_http_req *pub)
{
    return ((const struct req *)pub)->conn->remote;
}

void
sbx_http_req_mark_authenticated(struct sbx_http_req *pub)
{
    to_req(pub)->conn->trusted = true;
}

/* ---- responses ---- */

void
sbx_http_add_header(struct sbx_http_req *pub, const char *name, const char *value)
{
    struct req *r = to_req(pub);
    /* Header injection guard: values come from upstreams and user metadata. */
    if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n"))
        return;
    sbx_buf_printf(&r->extra_headers, "%s: %s\r\n", name, value);
}

static bool
has_extra_header(struct req *r, const char *lname)
{
    if (r->extra_headers.data == NULL)
        return false;
    size_t n = strlen(lname);
    const char *p = r->extra_headers.data;
    while (*p) {
        if (strncasecmp(p, lname, n) == 0 && p[n] == ':')
            return true;
        p = strchr(p, '\n');
        if (p == NULL)
            break;
        p++;
    }
    return false;
}

static void
write_head(struct req *r, int status, const char *content_type, int64_t length)
{
    struct conn *c = r->conn;
    struct sbx_buf h = {0};
    const char *reason = http_status_str((enum http_status)status);
    r->status = status;
    r->resp_no_body = status == 204 || status == 304 || (status >= 100 && status < 200) ||
                      strcmp(r->pub.method, "HEAD") == 0;
    sbx_buf_printf(&h, "HTTP/1.1 %d %s\r\n", status, reason ? reason : "Unknown");
    if (content_type)
        sbx_buf_printf(&h, "Content-Type: %s\r\n", content_type);
    if (r->extra_headers.len)
        sbx_buf_append(&h, r->extra_headers.data, r->extra_headers.len, SIZE_MAX / 2);
    if (status != 204 && status != 304 && !(status >= 100 && status < 200)) {
        if (length >= 0)
            sbx_buf_printf(&h, "Content-Length: %lld\r\n", (long long)length);
        else if (!has_extra_header(r, "content-length")) {
            sbx_buf_printf(&h, "Transfer-Encoding: chunked\r\n");
            r->resp_chunked = true;
        }
    }
    if (!r->body_complete && !r->no_body && r->body_mode != BODY_STREAM &&
        r->body_mode != BODY_BUFFER)
        c->keep_alive = false; /* an unread body stays on the wire */
    if (r->pub.upgrade)
        c->keep_alive = false; /* what follows it is another protocol's, unparsed */
    sbx_buf_printf(&h, "Connection: %s\r\n\r\n", c->keep_alive ? "keep-alive" : "close");
    conn_write(c, h.data, h.len);
    sbx_buf_fini(&h);
}

/* The reason of an error answer made elsewhere (a proxied agent's, a JSON error built by a
 * handler) for the log line: the "message" of its JSON body, as envd's, Connect's and the
 * API's errors carry, read from the body's first bytes. */
static void
note_error_body(struct req *r, const void *data, size_t len)
{
    if (r->status < 400 || r->error != NULL || len == 0)
        return;
    json_t *j = len <= SBX_HTTP_LOG_BODY_SCAN_MAX ? json_loadb(data, len, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(j, "message"));
    /* Set also when there is none: only the body's first write is read. */
    if ((r->error = strdup(msg ? msg : "")) == NULL)
        abort();
    json_decref(j);
}

void
sbx_http_respond(struct sbx_http_req *pub, int status, const char *content_type, const void *body,
                 size_t len)
{
    struct req *r = to_req(pub);
    if (r->resp != RESP_NONE)
        return;
    r->resp = RESP_STARTED;
    write_head(r, status, content_type, (int64_t)len);
    note_error_body(r, body, len);
    if (!r->resp_no_body)
        conn_write(r->conn, body, len);
    r->resp = RESP_ENDED;
    if (!r->conn->in_parse)
        conn_maybe_finish(r->conn);
}

void
sbx_http_start(struct sbx_http_req *pub, int status, const char *content_type)
{
    struct req *r = to_req(pub);
    if (r->resp != RESP_NONE)
        return;
    r->resp = RESP_STARTED;
    write_head(r, status, content_type, -1);
}

bool
sbx_http_write(struct sbx_http_req *pub, const void *data, size_t len)
{
    struct req *r = to_req(pub);
    struct conn *c = r->conn;
    if (r->resp != RESP_STARTED || c->closing || r->resp_no_body)
        return true;
    if (len == 0)
        return c->queued < SBX_HTTP_WRITE_HIGH_WATER;
    note_error_body(r, data, len);
    if (r->resp_chunked) {
        char pre[24];
        int n = snprintf(pre, sizeof(pre), "%zx\r\n", len);
        /* One write per chunk keeps frames intact and flushes immediately. */
        uv_buf_t b[3] = {uv_buf_init(pre, (unsigned)n), uv_buf_init((char *)data, (unsigned)len),
                         uv_buf_init("\r\n", 2)};
        conn_writev(c, b, 3, true);
    } else {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        conn_writev(c, &b, 1, true);
    }
    return c->queued < SBX_HTTP_WRITE_HIGH_WATER;
}

void
sbx_http_on_drain(struct sbx_http_req *pub, sbx_http_req_cb on_drain)
{
    to_req(pub)->on_drain = on_drain;
}

void
sbx_http_end(struct sbx_http_req *pub)
{
    struct req *r = to_req(pub);
    if (r->resp != RESP_STARTED)
        return;
    if (r->resp_chunked && !r->resp_no_body)
        conn_write(r->conn, "0\r\n\r\n", 5);
    r->resp = RESP_ENDED;
    r->on_drain = NULL;
    if (!r->conn->in_parse)
        conn_maybe_finish(r->conn);
}

static void
on_tunnel_end(void *ud)
{
    struct conn *c = ud;
    c->tunnel_done = true;
    conn_close(c);
}

void
sbx_http_tunnel(struct sbx_http_req *pub, int status, const struct sbx_tunnel_end *peer)
{
    struct req *r = to_req(pub);
    struct conn *c = r->conn;
    if (c->closing || r->resp != RESP_NONE || !r->pub.upgrade) {
        peer->close(peer->ud);
        return;
    }
    /* The head goes out through the tunnel, ahead of what peer sent: from now on only the
     * tunnel writes to the client. */
    struct sbx_buf head = {0};
    const char *reason = http_status_str((enum http_status)status);
    sbx_buf_printf(&head, "HTTP/1.1 %d %s\r\n", status, reason ? reason : "Unknown");
    if (r->extra_headers.len)
        sbx_buf_append(&head, r->extra_headers.data, r->extra_headers.len, SIZE_MAX / 2);
    sbx_buf_printf(&head, "\r\n");
    if (peer->n_pending)
        sbx_buf_append(&head, peer->pending, peer->n_pending, SIZE_MAX / 2);
    r->status = status;
    r->resp = RESP_ENDED;
    log_request(c, r);
    c->req = NULL;
    req_free(r);
    c->tunneled = true;
    c->keep_alive = false;
    uv_timer_stop(&c->timer);
    set_reading(c, false);
    /* A client that vanishes without a FIN is noticed by keepalive probes. */
    if (c->is_tcp)
        uv_tcp_keepalive(&c->h.tcp, 1, SBX_TUNNEL_KEEPALIVE_S);
    struct sbx_tunnel_end client = {
        .stream = &c->h.stream,
        .close = on_tunnel_end,
        .ud = c,
        .pending = head.data,
        .n_pending = head.len,
    };
    struct sbx_tunnel_end to_peer = *peer;
    to_peer.pending = c->inbuf.data; /* what the client sent after the request */
    to_peer.n_pending = c->inbuf.len;
    sbx_tunnel_start(c->srv->loop, &client, &to_peer);
    sbx_buf_fini(&head);
    c->inbuf.len = 0;
}

static void respond_error(struct sbx_http_req *req, int status, bool strcode, const char *fmt,
                          va_list ap) __attribute__((format(printf, 4, 0)));

static void
respond_error(struct sbx_http_req *req, int status, bool strcode, const char *fmt, va_list ap)
{
    char *msg = sbx_vformat(fmt, ap);
    char code[16];
    snprintf(code, sizeof(code), "%d", status);
    json_t *o = strcode ? json_pack("{s:s,s:s}", "code", code, "message", msg ? msg : "error")
                        : json_pack("{s:i,s:s}", "code", status, "message", msg ? msg : "error");
    char *body = json_dumps(o, JSON_COMPACT);
    if (to_req(req)->resp == RESP_NONE) {
        to_req(req)->error = msg; /* for the log line */
        msg = NULL;
    }
    sbx_http_respond(req, status, "application/json; charset=utf-8", body, body ? strlen(body) : 0);
    free(body);
    json_decref(o);
    free(msg);
}

void
sbx_http_log_error(struct sbx_http_req *pub, const char *msg)
{
    struct req *r = to_req(pub);
    free(r->error);
    if ((r->error = strdup(msg)) == NULL)
        abort();
}

void
sbx_http_respond_error(struct sbx_http_req *req, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    respond_error(req, status, false, fmt, ap);
    va_end(ap);
}

void
sbx_http_respond_error_strcode(struct sbx_http_req *req, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    respond_error(req, status, true, fmt, ap);
    va_end(ap);
}

struct sbx_http_hold {
    struct sbx_http_req *req; /* NULL once the client went away */
};

static void
on_held_closed(struct sbx_http_req *req)
{
    struct sbx_http_hold *h = req->data;
    h->req = NULL;
}

struct sbx_http_hold *
sbx_http_req_hold(struct sbx_http_req *req)
{
    struct sbx_http_hold *h = calloc(1, sizeof(*h));
    if (h == NULL)
        abort();
    h->req = req;
    req->data = h;
    sbx_http_req_on_close(req, on_held_closed);
    return h;
}

struct sbx_http_req *
sbx_http_hold_release(struct sbx_http_hold *h)
{
    struct sbx_http_req *req = h->req;
    if (req) {
        sbx_http_req_on_close(req, NULL);
        req->data = NULL;
    }
    free(h);
    return req;
}
