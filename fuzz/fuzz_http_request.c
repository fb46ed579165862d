/* Fuzz target: the input is everything a client sends on one connection to a real sbx HTTP
 * server (src/http/server.c): request lines, headers, bodies, pipelined requests, garbage.
 *
 * Each input gets a fresh libuv loop and server listening on a unix socket in a private temp
 * directory. A non-blocking client socket writes the input in pieces (the piece size comes
 * from the first byte, so the parser sees the same bytes split in different places), reads
 * and checks whatever the server answers, then shuts its write side down. When the server has
 * closed the connection (or stopped making progress), the server is closed and the loop run
 * until every handle is gone: uv_loop_close failing means a leaked handle, and LeakSanitizer
 * catches leaked memory.
 *
 * The handler picks its behaviour from the request path, so that every body and response mode
 * of the server is reachable: buffered bodies, streamed bodies with pause/resume, streamed
 * (chunked) responses written across loop turns, early answers, aborts and Connect requests. */
#include <errno.h>
#include <http_parser.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "connect/connect.h"
#include "fuzz_common.h"
#include "http/http.h"

#define MAX_IDLE_SPINS 2000 /* loop turns without progress before the client gives up */

static uv_loop_t *g_loop;

/* ---- the handler under test ---- */

enum mode { M_STREAM, M_SLOW, M_ABORT_BODY, M_LATE };

/* Per-request state of handlers that outlive on_request. Freed in the idle handle's close
 * callback; req is NULL once the request may no longer be touched. */
struct hctx {
    struct sbx_http_req *req;
    uv_idle_t idle;
    enum mode mode;
    int ticks;
    size_t body_bytes;
    bool paused;
    bool done;
};

static void
hctx_free_cb(uv_handle_t *h)
{
    free(h->data);
}

/* The request is gone or answered: never touch it again. */
static void
hctx_finish(struct hctx *x)
{
    if (x->done)
        return;
    x->done = true;
    x->req = NULL;
    uv_close((uv_handle_t *)&x->idle, hctx_free_cb);
}

static struct hctx *
ctx_of(struct sbx_http_req *req)
{
    struct hctx *x = req->data;
    /* A callback for a request whose handler state is gone is the bug this target hunts. */
    if (x == NULL || x->done || x->req != req)
        abort();
    return x;
}

static void
on_req_close(struct sbx_http_req *req)
{
    hctx_finish(ctx_of(req));
}

static void on_tick(uv_idle_t *h);

static struct hctx *
hctx_new(struct sbx_http_req *req, enum mode mode)
{
    struct hctx *x = calloc(1, sizeof(*x));
    if (x == NULL)
        abort();
    x->req = req;
    x->mode = mode;
    uv_idle_init(g_loop, &x->idle);
    x->idle.data = x;
    req->data = x;
    sbx_http_req_on_close(req, on_req_close);
    return x;
}

static void
on_tick(uv_idle_t *h)
{
    struct hctx *x = h->data;
    struct sbx_http_req *req = x->req;
    if (req == NULL)
        return;
    x->ticks++;
    switch (x->mode) {
    case M_STREAM:
        if (x->paused) {
            x->paused = false;
            uv_idle_stop(&x->idle);
            sbx_http_req_resume_body(req); /* may run on_data/on_end re-entrantly */
        }
        break;
    case M_SLOW:
        if (x->ticks <= 3) {
            char line[32];
            int n = snprintf(line, sizeof(line), "tick %d\n", x->ticks);
            sbx_http_write(req, line, (size_t)n);
        } else {
            hctx_finish(x);
            sbx_http_end(req);
        }
        break;
    case M_LATE:
        hctx_finish(x);
        sbx_http_respond(req, 202, "text/plain", "late\n", 5);
        break;
    case M_ABORT_BODY:
        break;
    }
}

static void
stream_on_data(struct sbx_http_req *req, const char *data, size_t len)
{
    struct hctx *x = ctx_of(req);
    x->body_bytes += len;
    if (x->mode == M_ABORT_BODY) {
        hctx_finish(x);
        sbx_http_abort(req);
        return;
    }
    /* Back-pressure: every piece pauses the body until the next loop turn. */
    if (!x->paused) {
        x->paused = true;
        sbx_http_req_pause_body(req);
        uv_idle_start(&x->idle, on_tick);
    }
}

static void
stream_on_end(struct sbx_http_req *req)
{
    struct hctx *x = ctx_of(req);
    char line[64];
    int n = snprintf(line, sizeof(line), "%zu bytes\n", x->body_bytes);
    hctx_finish(x);
    sbx_http_start(req, 200, "text/plain");
    sbx_http_write(req, "streamed: ", 10);
    sbx_http_write(req, line, (size_t)n);
    sbx_http_end(req);
}

static void
buffer_done(struct sbx_http_req *req, struct sbx_buf *body)
{
    sbx_http_add_header(req, "X-Body-Len", "echo");
    sbx_http_respond(req, 200, "application/octet-stream", body->data, body->len);
}

static void
connect_done(struct sbx_http_req *req, json_t *msg, struct sbx_error *err)
{
    if (msg == NULL) {
        sbx_connect_error(req, err);
        return;
    }
    if (sbx_connect_is_stream(req)) {
        sbx_connect_stream_start(req);
        sbx_connect_stream_send(req, json_incref(msg));
        sbx_connect_stream_end(req, NULL);
    } else {
        sbx_connect_unary_ok(req, json_incref(msg));
    }
}

static bool
path_is(const struct sbx_http_req *req, const char *p)
{
    return strcmp(req->path, p) == 0;
}

static void
on_request(struct sbx_http_req *req, void *ud)
{
    (void)ud;
    if (path_is(req, "/buffer")) {
        sbx_http_req_read_body(req, 256, buffer_done);
    } else if (path_is(req, "/stream")) {
        hctx_new(req, M_STREAM);
        sbx_http_req_stream_body(req, stream_on_data, stream_on_end);
    } else if (path_is(req, "/abort-body")) {
        hctx_new(req, M_ABORT_BODY);
        sbx_http_req_stream_body(req, stream_on_data, stream_on_end);
    } else if (path_is(req, "/slow")) {
        struct hctx *x = hctx_new(req, M_SLOW);
        sbx_http_start(req, 200, "text/plain");
        uv_idle_start(&x->idle, on_tick);
    } else if (path_is(req, "/late")) {
        struct hctx *x = hctx_new(req, M_LATE);
        uv_idle_start(&x->idle, on_tick);
    } else if (path_is(req, "/abort")) {
        sbx_http_start(req, 200, "text/plain");
        sbx_http_write(req, "partial", 7);
        sbx_http_abort(req);
    } else if (path_is(req, "/length")) {
        /* A streamed response with a declared length: written raw, not chunked. */
        sbx_http_add_header(req, "Content-Length", "4");
        sbx_http_start(req, 200, "text/plain");
        sbx_http_write(req, "ab", 2);
        sbx_http_write(req, "cd", 2);
        sbx_http_end(req);
    } else if (path_is(req, "/connect")) {
        sbx_connect_timeout_ms(req);
        sbx_connect_read_request(req, connect_done);
    } else if (path_is(req, "/query")) {
        static const char *const keys[] = {"a", "b", "path", "", "a b"};
        struct sbx_buf out = {0};
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
            char *v = sbx_http_req_query(req, keys[i]);
            sbx_buf_printf(&out, "%s=%s\n", keys[i], v ? v : "(absent)");
            free(v);
        }
        const char *h = sbx_http_req_header(req, "x-echo");
        if (h)
            sbx_http_add_header(req, "X-Echo", h); /* injection guard under test */
        sbx_http_respond(req, 200, "text/plain", out.data ? out.data : "", out.len);
        sbx_buf_fini(&out);
    } else if (path_is(req, "/empty")) {
        sbx_http_respond(req, 204, NULL, NULL, 0);
    } else {
        sbx_http_respond_error(req, 404, "no route for %s", req->path);
    }
}

/* ---- the client ---- */

struct client {
    int fd;
    http_parser parser;
    bool check; /* validate the responses (off when HEAD makes framing ambiguous) */
    bool eof;
    size_t received;
};

static int
noop_cb(http_parser *p)
{
    (void)p;
    return 0;
}

static const http_parser_settings resp_settings = {
    .on_message_complete = noop_cb,
};

/* Reads what the server sent so far; returns whether anything happened. */
static bool
client_drain(struct client *cl)
{
    bool progress = false;
    char buf[16384];
    while (!cl->eof) {
        ssize_t n = read(cl->fd, buf, sizeof(buf));
        if (n > 0) {
            progress = true;
            cl->received += (size_t)n;
            if (cl->check) {
                size_t used = http_parser_execute(&cl->parser, &resp_settings, buf, (size_t)n);
                /* The server must only ever produce well-framed HTTP/1.1. */
                if (HTTP_PARSER_ERRNO(&cl->parser) != HPE_OK || used != (size_t)n) {
                    fprintf(stderr, "server sent malformed HTTP: %s\n",
                            http_errno_description(HTTP_PARSER_ERRNO(&cl->parser)));
                    abort();
                }
            }
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            cl->eof = true; /* EOF or reset: the server closed the connection */
            progress = true;
        }
        break;
    }
    return progress;
}

static char g_dir[] = "/tmp/sbx-fuzz-http-XXXXXX";
static char g_path[100]; /* fits sockaddr_un.sun_path */

static void
cleanup_dir(void)
{
    unlink(g_path);
    rmdir(g_dir);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN); /* as the daemon does: a vanished peer is an error, not a signal */
    if (mkdtemp(g_dir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(g_path, sizeof(g_path), "%s/s", g_dir);
    atexit(cleanup_dir);
    return 0;
}

static int
listen_unix(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g_path);
    unlink(g_path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 8) < 0) {
        perror("listen_unix");
        abort();
    }
    return fd;
}

static int
connect_unix(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g_path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("connect_unix");
        abort();
    }
    return fd;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_path[0] == '\0')
        LLVMFuzzerInitialize(NULL, NULL);
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        abort();
    g_loop = &loop;
    struct sbx_http_server *srv = sbx_http_server_new(&loop, on_request, NULL);
    struct sbx_error *err = NULL;
    if (srv == NULL || sbx_http_server_listen_fd(srv, listen_unix(), &err) < 0)
        abort();

    struct client cl = {.fd = connect_unix()};
    http_parser_init(&cl.parser, HTTP_RESPONSE);
    cl.check = memmem(data, size, "HEAD", 4) == NULL;
    size_t piece = size ? 1 + data[0] % 97 : 1;
    size_t off = 0;
    int spins = 0;
    bool shut = false;
    while (!cl.eof && spins < MAX_IDLE_SPINS) {
        bool progress = false;
        if (off < size) {
            size_t n = size - off < piece ? size - off : piece;
            ssize_t w = write(cl.fd, data + off, n);
            if (w > 0) {
                off += (size_t)w;
                progress = true;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                off = size; /* the server closed on us: stop sending */
            }
        } else if (!shut) {
            shutdown(cl.fd, SHUT_WR);
            shut = true;
            progress = true;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        progress |= client_drain(&cl);
        spins = progress ? 0 : spins + 1;
    }
    close(cl.fd);
    sbx_http_server_close(srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "a libuv handle outlived its server\n");
        uv_print_all_handles(&loop, stderr);
        abort();
    }
    g_loop = NULL;
    return 0;
}
