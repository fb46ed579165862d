/* Test-side HTTP plumbing shared by test_http.c and test_connect.c: a real sbx HTTP server runs
 * on the default libuv loop in the test process, and a client runs in a second thread with
 * plain blocking sockets, so both ends are real and nothing is mocked. The client parses what
 * it receives with http_parser and may read responses one at a time from one connection. */
#ifndef SBX_TEST_HTTP_CLIENT_H
#define SBX_TEST_HTTP_CLIENT_H

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "base/buf.h"
#include "harness.h"
#include "http/http.h"

/* ---- server side: run the loop while a client thread works ---- */

static uv_async_t tc_done_async;
static void (*tc_on_done)(void);
static pthread_t tc_thread;

static void
tc_done_cb(uv_async_t *a)
{
    uv_close((uv_handle_t *)a, NULL);
    if (tc_on_done)
        tc_on_done(); /* closes servers and whatever else keeps the loop alive */
}

static void *
tc_thread_main(void *arg)
{
    void (*fn)(void) = (void (*)(void))arg;
    fn();
    uv_async_send(&tc_done_async);
    return NULL;
}

/* Runs client() in a thread and the default loop here until on_done() (called on the loop
 * after client() returned) has closed every handle. */
static inline void
tc_run(void (*client)(void), void (*on_done)(void))
{
    signal(SIGPIPE, SIG_IGN);
    tc_on_done = on_done;
    CHECK(uv_async_init(uv_default_loop(), &tc_done_async, tc_done_cb) == 0);
    CHECK(pthread_create(&tc_thread, NULL, tc_thread_main, (void *)client) == 0);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT);
    pthread_join(tc_thread, NULL);
    CHECK(uv_loop_close(uv_default_loop()) == 0); /* nothing leaked a handle */
}

/* ---- client side ---- */

static inline void
tc_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static inline int
tc_connect_tcp(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(fd >= 0);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    tc_timeouts(fd);
    return fd;
}

/* A listening unix socket at path (for sbx_http_server_listen_fd). */
static inline int
tc_listen_unix(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    CHECK(strlen(path) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    unlink(path);
    CHECK(fd >= 0);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(listen(fd, 16) == 0);
    return fd;
}

static inline void
tc_send(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

static inline void
tc_send_str(int fd, const char *s)
{
    tc_send(fd, s, strlen(s));
}

/* One parsed response. */
struct tc_resp {
    int status;
    struct sbx_buf body;
    struct sbx_buf headers; /* "name: value\n" lines, names lowercased */
    bool complete;          /* the message ended properly (terminating chunk, full length) */
    bool chunked;
    bool closed; /* the connection ended (EOF or reset) while reading */
    bool reset;  /* ... with ECONNRESET */
};

/* A client connection that may carry several responses. */
struct tc_conn {
    int fd;
    http_parser p;
    struct tc_resp *cur;
    struct sbx_buf pending; /* received, not yet parsed */
    bool in_value;
    size_t max_body; /* stop once this much body arrived (0 = no limit) */
};

static int
tc_on_header_field(http_parser *p, const char *at, size_t len)
{
    struct tc_conn *c = p->data;
    if (c->in_value) {
        sbx_buf_append(&c->cur->headers, "\n", 1, SIZE_MAX / 2);
        c->in_value = false;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = (char)(at[i] >= 'A' && at[i] <= 'Z' ? at[i] + 32 : at[i]);
        sbx_buf_append(&c->cur->headers, &ch, 1, SIZE_MAX / 2);
    }
    return 0;
}

static int
tc_on_header_value(http_parser *p, const char *at, size_t len)
{
    struct tc_conn *c = p->data;
    if (!c->in_value)
        sbx_buf_append(&c->cur->headers, ": ", 2, SIZE_MAX / 2);
    c->in_value = true;
    sbx_buf_append(&c->cur->headers, at, len, SIZE_MAX / 2);
    return 0;
}

static int
tc_on_headers_complete(http_parser *p)
{
    struct tc_conn *c = p->data;
    if (c->in_value)
        sbx_buf_append(&c->cur->headers, "\n", 1, SIZE_MAX / 2);
    c->in_value = false;
    c->cur->status = (int)p->status_code;
    c->cur->chunked = (p->flags & F_CHUNKED) != 0;
    return 0;
}

static int
tc_on_body(http_parser *p, const char *at, size_t len)
{
    struct tc_conn *c = p->data;
    sbx_buf_append(&c->cur->body, at, len, SIZE_MAX / 2);
    if (c->max_body && c->cur->body.len >= c->max_body)
        http_parser_pause(p, 1);
    return 0;
}

static int
tc_on_message_complete(http_parser *p)
{
    struct tc_conn *c = p->data;
    c->cur->complete = true;
    http_parser_pause(p, 1); /* one response per tc_read */
    return 0;
}

static const http_parser_settings tc_settings = {
    .on_header_field = tc_on_header_field,
    .on_header_value = tc_on_header_value,
    .on_headers_complete = tc_on_headers_complete,
    .on_body = tc_on_body,
    .on_message_complete = tc_on_message_complete,
};

static inline void
tc_conn_init(struct tc_conn *c, int fd)
{
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    http_parser_init(&c->p, HTTP_RESPONSE);
    c->p.data = c;
}

static inline void
tc_resp_fini(struct tc_resp *r)
{
    sbx_buf_fini(&r->body);
    sbx_buf_fini(&r->headers);
}

/* Header value of a response ("" if absent; the returned pointer is static). */
static inline const char *
tc_header(const struct tc_resp *r, const char *lname)
{
    static char val[1024];
    val[0] = '\0';
    if (r->headers.data == NULL)
        return NULL;
    size_t n = strlen(lname);
    for (const char *p = r->headers.data; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, lname, n) == 0 && p[n] == ':') {
            size_t vl = (size_t)((eol ? eol : p + strlen(p)) - (p + n + 2));
            snprintf(val, sizeof(val), "%.*s", (int)vl, p + n + 2);
            return val;
        }
        p = eol ? eol + 1 : NULL;
    }
    return NULL;
}

/* Parses what is pending; returns whether the response is complete or paused. */
static inline bool
tc_parse_pending(struct tc_conn *c)
{
    if (c->pending.len == 0)
        return false;
    if (HTTP_PARSER_ERRNO(&c->p) == HPE_PAUSED)
        http_parser_pause(&c->p, 0);
    size_t n = http_parser_execute(&c->p, &tc_settings, c->pending.data, c->pending.len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
    CHECK(e == HPE_OK || e == HPE_PAUSED);
    sbx_buf_consume(&c->pending, n);
    return e == HPE_PAUSED;
}

/* Continues the current response (after a read stopped at max_body). */
static inline void
tc_read_more(struct tc_conn *c, struct tc_resp *r, size_t max_body)
{
    c->cur = r;
    c->max_body = max_body;
    if (tc_parse_pending(c))
        return;
    for (;;) {
        char buf[65536];
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            CHECK(n == 0 || errno == ECONNRESET); /* a timeout is a failure */
            r->closed = true;
            r->reset = n < 0;
            return;
        }
        sbx_buf_append(&c->pending, buf, (size_t)n, SIZE_MAX / 2);
        if (tc_parse_pending(c))
            return;
    }
}

/* Reads until one response is complete, the connection ends, or (with max_body) that much
 * body arrived. */
static inline void
tc_read(struct tc_conn *c, struct tc_resp *r, size_t max_body)
{
    memset(r, 0, sizeof(*r));
    c->in_value = false;
    tc_read_more(c, r, max_body);
}

/* True if the peer has closed: the next read gives EOF or a reset. */
static inline bool
tc_is_closed(struct tc_conn *c)
{
    if (c->pending.len > 0)
        return false;
    char b;
    ssize_t n = recv(c->fd, &b, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

static inline void
tc_conn_close(struct tc_conn *c)
{
    close(c->fd);
    sbx_buf_fini(&c->pending);
}

/* One request on a fresh connection; returns the response. */
static inline void
tc_request(int port, const char *raw, struct tc_resp *r)
{
    struct tc_conn c;
    tc_conn_init(&c, tc_connect_tcp(port));
    tc_send_str(c.fd, raw);
    tc_read(&c, r, 0);
    tc_conn_close(&c);
}

static inline bool
tc_body_is(const struct tc_resp *r, const char *s)
{
    return r->body.len == strlen(s) && memcmp(r->body.data, s, r->body.len) == 0;
}

#endif
