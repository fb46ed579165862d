/* HTTP/1.1 server and reverse proxy (src/http): a real server on loopback in the test process,
 * a real client in a thread (http_client.h), real unix sockets for the proxy's upstream. */
#include <dirent.h>
#include <poll.h>
#include <stdatomic.h>

#include "base/limits.h"
#include "base/log.h"
#include "http/ratelimit.h"
#include "http/upstream.h"
#include "http_client.h"

static struct sbx_http_server *g_srv; /* on 127.0.0.1, random port */
static struct sbx_http_server *g_up;  /* the proxy's upstream, on a unix socket */
static int g_port;
static char g_dir[64];
static char g_up_path[128];

static uv_timer_t g_timer;          /* delays one handler step per test */
static uv_async_t g_second;         /* client → loop: "write the second chunk" */
static struct sbx_http_req *g_held; /* the request a timer or async will act on */
static atomic_int g_close_called;
static atomic_int g_second_written;
static int g_stream_pieces;

/* Deadlines of the front server in the deadline tests (0: none, as in the others), and the
 * silence, several times longer, that requests being handled must survive. */
#define DEADLINE_MS 200
#define SILENCE_MS  1000
static uint64_t g_head_ms, g_idle_ms, g_anon_idle_ms;
static size_t g_max_conns; /* of the front server, 0: no limit */

/* ---- front server routes ---- */

static void
echo_body(struct sbx_http_req *req, struct sbx_buf *body)
{
    sbx_http_respond(req, 200, "text/plain", body->data ? body->data : "", body->len);
}

static void
delayed_reply(uv_timer_t *t)
{
    struct sbx_http_req *req = g_held;
    g_held = NULL;
    if (req)
        sbx_http_respond(req, 200, "text/plain", "1", 1);
}

static void
held_gone(struct sbx_http_req *req)
{
    if (g_held == req)
        g_held = NULL;
    atomic_store(&g_close_called, 1);
}

/* Streamed request body: every piece pauses the body until a timer resumes it, so the server's
 * back-pressure path runs for real. */
static struct sbx_buf g_streamed;

static void
resume_stream(uv_timer_t *t)
{
    if (g_held)
        sbx_http_req_resume_body(g_held);
}

static void
stream_data(struct sbx_http_req *req, const char *data, size_t len)
{
    g_stream_pieces++;
    sbx_buf_append(&g_streamed, data, len, SIZE_MAX / 2);
    sbx_http_req_pause_body(req);
    uv_timer_start(&g_timer, resume_stream, 5, 0);
}

static void
stream_end(struct sbx_http_req *req)
{
    char head[64];
    int n = snprintf(head, sizeof(head), "%zu bytes: ", g_streamed.len);
    g_held = NULL;
    uv_timer_stop(&g_timer);
    sbx_http_start(req, 200, "text/plain");
    sbx_http_write(req, head, (size_t)n);
    sbx_http_write(req, g_streamed.data ? g_streamed.data : "", g_streamed.len);
    sbx_http_end(req);
    sbx_buf_fini(&g_streamed);
}

static void
write_second(uv_async_t *a)
{
    struct sbx_http_req *req = g_held;
    g_held = NULL;
    if (req == NULL)
        return;
    atomic_store(&g_second_written, 1);
    sbx_http_write(req, "second", 6);
    sbx_http_end(req);
}

static void
abort_held(uv_timer_t *t)
{
    struct sbx_http_req *req = g_held;
    g_held = NULL;
    if (req)
        sbx_http_abort(req);
}

static void
end_late(uv_timer_t *t)
{
    struct sbx_http_req *req = g_held;
    g_held = NULL;
    if (req == NULL)
        return;
    sbx_http_write(req, "last", 4);
    sbx_http_end(req);
}

static void
unreachable(struct sbx_http_req *req)
{
    sbx_http_respond_error(req, 502, "upstream unreachable");
}

static void
query_route(struct sbx_http_req *req)
{
    static const char *const keys[] = {"a", "b", "c", "d", "e", "f", "missing", "sp ace"};
    struct sbx_buf out = {0};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char *v = sbx_http_req_query(req, keys[i]);
        sbx_buf_printf(&out, "%s=%s%s%s;", keys[i], v ? "[" : "", v ? v : "NULL", v ? "]" : "");
        free(v);
    }
    sbx_http_respond(req, 200, "text/plain", out.data, out.len);
    sbx_buf_fini(&out);
}

static void
on_front(struct sbx_http_req *req, void *ud)
{
    const char *p = req->path;
    if (strcmp(p, "/hello") == 0) {
        sbx_http_respond(req, 200, "text/plain", "hello", 5);
    } else if (strcmp(p, "/auth") == 0) {
        sbx_http_req_mark_authenticated(req);
        sbx_http_respond(req, 200, "text/plain", "authenticated", 13);
    } else if (strcmp(p, "/n") == 0) {
        /* Request 1 answers late: pipelined answers must still come back in order. */
        char *n = sbx_http_req_query(req, "n");
        if (n && strcmp(n, "1") == 0) {
            g_held = req;
            sbx_http_req_on_close(req, held_gone);
            uv_timer_start(&g_timer, delayed_reply, 50, 0);
        } else {
            sbx_http_respond(req, 200, "text/plain", n ? n : "?", n ? strlen(n) : 1);
        }
        free(n);
    } else if (strcmp(p, "/buffer") == 0) {
        sbx_http_req_read_body(req, 1024, echo_body);
    } else if (strcmp(p, "/stream") == 0) {
        g_held = req;
        sbx_http_req_on_close(req, held_gone);
        sbx_http_req_stream_body(req, stream_data, stream_end);
    } else if (strcmp(p, "/chunks") == 0) {
        g_held = req;
        sbx_http_req_on_close(req, held_gone);
        sbx_http_start(req, 200, "text/plain");
        sbx_http_write(req, "first", 5);
    } else if (strcmp(p, "/hang") == 0) {
        g_held = req;
        sbx_http_req_on_close(req, held_gone);
        sbx_http_start(req, 200, "text/plain");
        sbx_http_write(req, "x", 1);
    } else if (strcmp(p, "/abort") == 0) {
        g_held = req;
        sbx_http_req_on_close(req, held_gone);
        sbx_http_start(req, 200, "text/plain");
        sbx_http_write(req, "partial", 7);
        uv_timer_start(&g_timer, abort_held, 30, 0);
    } else if (strcmp(p, "/late") == 0) {
        /* A streamed response with a long silence in the middle. */
        g_held = req;
        sbx_http_req_on_close(req, held_gone);
        sbx_http_start(req, 200, "text/plain");
        sbx_http_write(req, "first", 5);
        uv_timer_start(&g_timer, end_late, SILENCE_MS, 0);
    } else if (strcmp(p, "/q") == 0) {
        query_route(req);
    } else if (strncmp(p, "/proxy/", 7) == 0) {
        sbx_http_proxy(req, &(struct sbx_http_proxy_opts){.unix_path = g_up_path,
                                                          .on_unreachable = unreachable});
    } else if (strncmp(p, "/proxy-bad/", 11) == 0) {
        char bad[160];
        snprintf(bad, sizeof(bad), "%s/nobody-listens", g_dir);
        sbx_http_proxy(
            req, &(struct sbx_http_proxy_opts){.unix_path = bad, .on_unreachable = unreachable});
    } else {
        sbx_http_respond_error(req, 404, "no route");
    }
}

/* ---- upstream routes (what an agent would be) ---- */

static uv_timer_t g_up_timer;
static struct sbx_http_req *g_up_held;
static int g_up_ticks;

static void
up_gone(struct sbx_http_req *req)
{
    g_up_held = NULL;
}

static void
up_tick(uv_timer_t *t)
{
    struct sbx_http_req *req = g_up_held;
    if (req == NULL)
        return;
    char piece[16];
    int n = snprintf(piece, sizeof(piece), "piece%d;", ++g_up_ticks);
    sbx_http_write(req, piece, (size_t)n);
    if (g_up_ticks == 3) {
        g_up_held = NULL;
        uv_timer_stop(t);
        sbx_http_end(req);
    }
}

static void
up_die(uv_timer_t *t)
{
    struct sbx_http_req *req = g_up_held;
    g_up_held = NULL;
    if (req)
        sbx_http_abort(req);
}

static void
up_echo(struct sbx_http_req *req, struct sbx_buf *body)
{
    sbx_http_add_header(req, "X-Up-Method", req->method);
    sbx_http_add_header(req, "X-Up-Chunked", req->chunked ? "yes" : "no");
    const char *expect = sbx_http_req_header(req, "expect");
    sbx_http_add_header(req, "X-Up-Expect", expect ? expect : "none");
    sbx_http_respond(req, 200, "text/plain", body->data ? body->data : "", body->len);
}

static void
on_up(struct sbx_http_req *req, void *ud)
{
    const char *p = req->path;
    if (strcmp(p, "/proxy/hello") == 0) {
        sbx_http_add_header(req, "X-Up", "yes");
        const char *conn = sbx_http_req_header(req, "connection");
        sbx_http_add_header(req, "X-Saw-Connection", conn ? conn : "none");
        sbx_http_respond(req, 200, "text/plain", "hello from upstream", 19);
    } else if (strcmp(p, "/proxy/echo") == 0) {
        sbx_http_req_read_body(req, 1 << 20, up_echo);
    } else if (strcmp(p, "/proxy/headers") == 0) {
        /* What the upstream received, one "name: value" line per header. */
        struct sbx_buf out = {0};
        for (size_t i = 0; i < req->n_headers; i++)
            sbx_buf_printf(&out, "%s: %s\n", req->headers[i].name, req->headers[i].value);
        sbx_http_respond(req, 200, "text/plain", out.data, out.len);
        sbx_buf_fini(&out);
    } else if (strcmp(p, "/proxy/chunks") == 0) {
        g_up_held = req;
        sbx_http_req_on_close(req, up_gone);
        sbx_http_start(req, 200, "text/plain");
        uv_timer_start(&g_up_timer, up_tick, 10, 10);
    } else if (strcmp(p, "/proxy/die") == 0) {
        g_up_held = req;
        sbx_http_req_on_close(req, up_gone);
        sbx_http_start(req, 200, "text/plain");
        sbx_http_write(req, "partial", 7);
        uv_timer_start(&g_up_timer, up_die, 30, 0);
    } else {
        sbx_http_respond_error(req, 404, "upstream has no %s", p);
    }
}

/* ---- setup and teardown ---- */

static void
setup(void)
{
    uv_loop_t *loop = uv_default_loop();
    struct sbx_error *err = NULL;
    snprintf(g_dir, sizeof(g_dir), "/tmp/sbx-test-http-XXXXXX");
    CHECK(mkdtemp(g_dir) != NULL);
    snprintf(g_up_path, sizeof(g_up_path), "%s/up.sock", g_dir);
    g_srv = sbx_http_server_new(loop, on_front, NULL);
    sbx_http_server_set_timeouts(g_srv, g_head_ms, g_idle_ms, g_anon_idle_ms);
    sbx_http_server_set_max_conns(g_srv, g_max_conns);
    CHECK(sbx_http_server_listen_tcp(g_srv, "127.0.0.1", 0, &err) == 0);
    g_port = sbx_http_server_port(g_srv);
    CHECK(g_port > 0);
    g_up = sbx_http_server_new(loop, on_up, NULL);
    CHECK(sbx_http_server_listen_fd(g_up, tc_listen_unix(g_up_path), &err) == 0);
    uv_timer_init(loop, &g_timer);
    uv_timer_init(loop, &g_up_timer);
    uv_async_init(loop, &g_second, write_second);
}

static void
teardown(void)
{
    sbx_http_server_close(g_srv);
    sbx_http_server_close(g_up);
    uv_close((uv_handle_t *)&g_timer, NULL);
    uv_close((uv_handle_t *)&g_up_timer, NULL);
    uv_close((uv_handle_t *)&g_second, NULL);
    unlink(g_up_path);
    rmdir(g_dir);
}

static void
run(void (*client)(void))
{
    setup();
    tc_run(client, teardown);
}

/* ---- tests ---- */

static void
client_keep_alive(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    for (int i = 0; i < 2; i++) {
        tc_send_str(c.fd, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        tc_read(&c, &r, 0);
        CHECK(r.complete && r.status == 200);
        CHECK(tc_body_is(&r, "hello"));
        CHECK_STR(tc_header(&r, "connection"), "keep-alive");
        tc_resp_fini(&r);
    }
    tc_conn_close(&c);
}

TEST(keep_alive_two_requests_one_connection)
{
    run(client_keep_alive);
}

static void
client_pipelined(void)
{
    struct tc_conn c;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /n?n=1 HTTP/1.1\r\n\r\nGET /n?n=2 HTTP/1.1\r\n\r\n"
                      "GET /n?n=3 HTTP/1.1\r\n\r\n");
    const char *want[] = {"1", "2", "3"};
    for (int i = 0; i < 3; i++) {
        struct tc_resp r;
        tc_read(&c, &r, 0);
        CHECK(r.complete && r.status == 200);
        CHECK(tc_body_is(&r, want[i]));
        tc_resp_fini(&r);
    }
    tc_conn_close(&c);
}

TEST(pipelined_requests_answered_in_order)
{
    run(client_pipelined);
}

static void
client_chunked_buffered(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "POST /buffer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    usleep(20000);
    tc_send_str(c.fd, "6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 200);
    CHECK(tc_body_is(&r, "hello world"));
    tc_resp_fini(&r);
    /* The connection stays usable after a chunked body. */
    tc_send_str(c.fd, "GET /hello HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && tc_body_is(&r, "hello"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(chunked_request_body_buffered)
{
    run(client_chunked_buffered);
}

static void
client_chunked_streamed(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "POST /stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    const char *pieces[] = {"3\r\nabc\r\n", "4\r\ndefg\r\n", "1\r\nh\r\n", "0\r\n\r\n"};
    for (int i = 0; i < 4; i++) {
        tc_send_str(c.fd, pieces[i]);
        usleep(20000);
    }
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 200 && r.chunked);
    CHECK(tc_body_is(&r, "8 bytes: abcdefgh"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(chunked_request_body_streamed)
{
    run(client_chunked_streamed);
    CHECK(g_stream_pieces >= 3); /* delivered piece by piece, not buffered whole */
}

static void
client_content_length(void)
{
    struct tc_resp r;
    tc_request(g_port, "POST /buffer HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world", &r);
    CHECK(r.complete && r.status == 200);
    CHECK(tc_body_is(&r, "hello world"));
    CHECK_STR(tc_header(&r, "content-length"), "11");
    tc_resp_fini(&r);
    /* A Content-Length body streamed in pieces. */
    struct tc_conn c;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "POST /stream HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc");
    usleep(20000);
    tc_send_str(c.fd, "def");
    tc_read(&c, &r, 0);
    CHECK(r.complete && tc_body_is(&r, "6 bytes: abcdef"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(content_length_body)
{
    run(client_content_length);
}

static void
client_incremental(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /chunks HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 5);
    CHECK(r.status == 200 && r.chunked && !r.complete);
    CHECK(tc_body_is(&r, "first"));
    CHECK(atomic_load(&g_second_written) == 0); /* we saw chunk 1 before chunk 2 existed */
    uv_async_send(&g_second);
    tc_read_more(&c, &r, 0);
    CHECK(r.complete && tc_body_is(&r, "firstsecond"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(streamed_response_read_incrementally)
{
    run(client_incremental);
}

/* Sends without caring whether the server already hung up (it answers before reading all). */
static void
send_lossy(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        s += n;
        len -= (size_t)n;
    }
}

static void
client_431(void)
{
    struct sbx_buf req = {0};
    sbx_buf_printf(&req, "GET /hello HTTP/1.1\r\nX-Big: ");
    for (int i = 0; i < 100 * 1024; i++)
        sbx_buf_append(&req, "a", 1, SIZE_MAX / 2);
    sbx_buf_printf(&req, "\r\n\r\n");
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    send_lossy(c.fd, req.data, req.len);
    tc_read(&c, &r, 0);
    CHECK(r.status == 431);
    CHECK(strstr(r.body.data, "\"code\":431") != NULL);
    tc_resp_fini(&r);
    tc_conn_close(&c);
    sbx_buf_fini(&req);
}

TEST(header_of_100k_is_431)
{
    run(client_431);
}

static void
client_413(void)
{
    struct tc_conn c;
    struct tc_resp r;
    /* Refused from the head alone: the client has sent no byte of the body yet. */
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "POST /buffer HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 413);
    CHECK_STR(tc_header(&r, "connection"), "close");
    CHECK(tc_is_closed(&c));
    tc_resp_fini(&r);
    tc_conn_close(&c);

    /* A chunked body that grows past the limit. */
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "POST /buffer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[700];
    memset(chunk, 'z', sizeof(chunk));
    for (int i = 0; i < 2; i++) {
        char pre[16];
        snprintf(pre, sizeof(pre), "%zx\r\n", sizeof(chunk));
        send_lossy(c.fd, pre, strlen(pre));
        send_lossy(c.fd, chunk, sizeof(chunk));
        send_lossy(c.fd, "\r\n", 2);
    }
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 413);
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(body_over_limit_is_413)
{
    run(client_413);
}

static void
client_garbage(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send(c.fd, "\x01\x02 garbage\r\n\r\n", 14);
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 400);
    CHECK(tc_is_closed(&c));
    tc_resp_fini(&r);
    tc_conn_close(&c);
    /* A bad chunk size in the middle of a streamed body: 400, and the handler is told. */
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "POST /stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    usleep(30000);
    tc_send_str(c.fd, "zz\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 400);
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(garbage_is_400)
{
    run(client_garbage);
    CHECK(atomic_load(&g_close_called) == 1);
}

static void
client_space_before_colon(void)
{
    /* A name that http_parser still reads as Transfer-Encoding (it frames the body as
     * chunked), then one with the space inside. */
    static const char *const reqs[] = {
        "POST /proxy/echo HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "GET /hello HTTP/1.1\r\nX Forwarded: a\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        struct tc_conn c;
        struct tc_resp r;
        tc_conn_init(&c, tc_connect_tcp(g_port));
        tc_send_str(c.fd, reqs[i]);
        tc_read(&c, &r, 0);
        fprintf(stderr, "request %zu: status %d, body %s\n", i, r.status, r.body.data);
        CHECK(r.complete && r.status == 400);
        CHECK(strstr(r.body.data, "whitespace between a header field name and the colon"));
        CHECK(tc_is_closed(&c));
        tc_resp_fini(&r);
        tc_conn_close(&c);
    }
}

TEST(whitespace_before_header_colon_is_400)
{
    run(client_space_before_colon);
}

/* Sends a head with Expect: 100-continue, and the body only once a 100 came (the first
 * response read is the 100, or the final answer if none was sent); returns the final one. */
static void
expect_exchange(struct tc_conn *c, const char *head, const char *body, struct tc_resp *r)
{
    tc_send_str(c->fd, head);
    tc_read(c, r, 0);
    fprintf(stderr, "%.*s -> %d\n", (int)strcspn(head, "\r"), head, r->status);
    if (r->status != 100)
        return;
    tc_resp_fini(r);
    tc_send_str(c->fd, body);
    tc_read(c, r, 0);
    fprintf(stderr, "  body sent -> %d\n", r->status);
}

static void
client_expect_continue(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    /* Read whole, streamed, and then proxied: one 100 each, before the body is sent. */
    const char *paths[] = {"/buffer", "/stream", "/proxy/echo"};
    for (int i = 0; i < 3; i++) {
        char head[160];
        snprintf(head, sizeof(head),
                 "POST %s HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", paths[i]);
        expect_exchange(&c, head, "hello", &r);
        CHECK(r.complete && r.status == 200); /* a 200 that needed no second 100 */
        CHECK(strstr(r.body.data, "hello") != NULL);
        if (i == 2)
            CHECK_STR(tc_header(&r, "x-up-expect"), "none"); /* the agent never sees it */
        tc_resp_fini(&r);
    }
    /* Answered without reading the body: the final status at once, no 100. */
    expect_exchange(&c,
                    "POST /nowhere HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                    "hello", &r);
    CHECK(r.complete && r.status == 404);
    tc_resp_fini(&r);
    tc_conn_close(&c);
    tc_conn_init(&c, tc_connect_tcp(g_port));
    expect_exchange(&c,
                    "POST /buffer HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
                    "", &r);
    CHECK(r.complete && r.status == 413);
    tc_resp_fini(&r);
    tc_conn_close(&c);
    /* HTTP/1.0 clients get no 100 (RFC 9110 §10.1.1). */
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd,
                "POST /buffer HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 200 && tc_body_is(&r, "ok"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(expect_100_continue_only_when_the_body_is_read)
{
    run(client_expect_continue);
}

static void
client_disconnect(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /hang HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 1);
    CHECK(r.status == 200 && !r.complete && tc_body_is(&r, "x"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
    for (int i = 0; i < 300 && !atomic_load(&g_close_called); i++)
        usleep(10000);
    CHECK(atomic_load(&g_close_called) == 1);
}

TEST(client_disconnect_mid_stream_calls_close_callback)
{
    run(client_disconnect);
}

static void
client_abort(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /abort HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 0);
    /* Cut, not ended: no terminating chunk ever arrives. */
    CHECK(r.closed && !r.complete);
    CHECK(r.body.len == 0 || tc_body_is(&r, "partial"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(abort_cuts_without_terminating_chunk)
{
    run(client_abort);
    CHECK(atomic_load(&g_close_called) == 0); /* abort does not call the close callback */
}

static void
client_query(void)
{
    struct tc_resp r;
    tc_request(g_port, "GET /q?a=1%202&b=x+y&c=%zz&d&e=%4&f=%41%42&sp+ace=%2B HTTP/1.1\r\n\r\n",
               &r);
    CHECK(r.complete && r.status == 200);
    CHECK_STR(r.body.data, "a=[1 2];b=[x y];c=NULL;d=[];e=NULL;f=[AB];missing=NULL;sp ace=[+];");
    tc_resp_fini(&r);
}

TEST(query_decoding)
{
    run(client_query);
    size_t n = 0;
    char *s = sbx_http_percent_decode("a%00b", 5, false, &n);
    CHECK(s != NULL && n == 3 && s[0] == 'a' && s[1] == '\0' && s[2] == 'b');
    free(s);
    s = sbx_http_percent_decode("a+b", 3, false, &n);
    CHECK_STR(s, "a+b");
    free(s);
    CHECK(sbx_http_percent_decode("%", 1, true, &n) == NULL);
    CHECK(sbx_http_percent_decode("%g0", 3, true, &n) == NULL);
}

/* ---- deadlines ---- */

static void
run_with_deadlines(void (*client)(void))
{
    g_head_ms = g_idle_ms = DEADLINE_MS;
    run(client);
}

/* Waits (up to 10 s) until the server has closed its side of a connection. */
static void
wait_fds(int want)
{
    for (int i = 0; i < 1000 && sbx_test_open_fds() != want; i++)
        usleep(10000);
    CHECK(sbx_test_open_fds() == want);
}

static void
check_408(struct tc_conn *c)
{
    struct tc_resp r;
    tc_read(c, &r, 0);
    CHECK(r.complete && r.status == 408);
    CHECK(strstr(r.body.data, "\"code\":408") != NULL);
    CHECK_STR(tc_header(&r, "connection"), "close");
    CHECK(tc_is_closed(c));
    tc_resp_fini(&r);
}

static void
client_partial_head(void)
{
    struct tc_conn c;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /hello HTTP/1.1\r\nHost: t\r\n");
    check_408(&c);
    tc_conn_close(&c);
    /* Also for the second request of a kept-alive connection. */
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\nHo");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 200);
    tc_resp_fini(&r);
    check_408(&c);
    tc_conn_close(&c);
}

TEST(partial_head_gets_408_and_close)
{
    run_with_deadlines(client_partial_head);
}

static void
client_trickle(void)
{
    /* One byte at a time, each well within the deadline: the head is still due on time. */
    const char *head =
        "GET /hello HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    struct tc_conn c;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    struct pollfd pfd = {.fd = c.fd, .events = POLLIN};
    size_t i = 0;
    for (; head[i] && poll(&pfd, 1, DEADLINE_MS / 10) == 0; i++)
        tc_send(c.fd, head + i, 1);
    CHECK(head[i] != '\0'); /* answered before the head was complete */
    check_408(&c);
    tc_conn_close(&c);
}

TEST(trickled_head_gets_408)
{
    run_with_deadlines(client_trickle);
}

static void
client_idle(void)
{
    int before = sbx_test_open_fds();
    struct tc_conn c;
    struct tc_resp r;
    /* Connected and silent: closed without a word. */
    tc_conn_init(&c, tc_connect_tcp(g_port));
    CHECK(tc_is_closed(&c));
    tc_conn_close(&c);
    /* Kept alive after a request, then silent: closed. */
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /hello HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 200);
    CHECK_STR(tc_header(&r, "connection"), "keep-alive");
    tc_resp_fini(&r);
    CHECK(tc_is_closed(&c));
    tc_conn_close(&c);
    wait_fds(before);
}

TEST(idle_connections_closed)
{
    run_with_deadlines(client_idle);
}

static void
client_long_requests(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    /* A streamed response that goes silent for longer than the deadlines. */
    tc_send_str(c.fd, "GET /late HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 200 && tc_body_is(&r, "firstlast"));
    tc_resp_fini(&r);
    /* A request body that stops arriving for as long, on the same connection. */
    tc_send_str(c.fd, "POST /stream HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc");
    usleep(SILENCE_MS * 1000);
    tc_send_str(c.fd, "def");
    tc_read(&c, &r, 0);
    CHECK(r.complete && tc_body_is(&r, "6 bytes: abcdef"));
    tc_resp_fini(&r);
    /* Still a working keep-alive connection, and idle again after it. */
    tc_send_str(c.fd, "GET /hello HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && tc_body_is(&r, "hello"));
    tc_resp_fini(&r);
    CHECK(tc_is_closed(&c));
    tc_conn_close(&c);
}

TEST(requests_being_handled_have_no_deadline)
{
    run_with_deadlines(client_long_requests);
}

static void
client_linger_bounded(void)
{
    int before = sbx_test_open_fds();
    struct tc_conn c;
    struct tc_resp r;
    /* Answered 413 from the head; the client neither sends the body nor closes. */
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "POST /buffer HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 413);
    tc_resp_fini(&r);
    CHECK(sbx_test_open_fds() == before + 2); /* both ends open: the server lingers */
    wait_fds(before + 1);                     /* until the linger time is over */
    tc_conn_close(&c);
}

TEST(lingering_close_is_bounded_in_time)
{
    run(client_linger_bounded); /* without client deadlines too */
}

/* ---- the connection limit ---- */

/* True if the server has not closed c: nothing, not even EOF, arrives within a short wait. */
static bool
still_open(struct tc_conn *c)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    return poll(&pfd, 1, 100) == 0;
}

/* A new connection that is served (so the server has accepted it, and evicted whoever it
 * had to); with authenticated, it carried an authenticated request. */
static void
served_conn(struct tc_conn *c, bool authenticated)
{
    struct tc_resp r;
    tc_conn_init(c, tc_connect_tcp(g_port));
    tc_send_str(c->fd,
                authenticated ? "GET /auth HTTP/1.1\r\n\r\n" : "GET /hello HTTP/1.1\r\n\r\n");
    tc_read(c, &r, 0);
    CHECK(r.complete && r.status == 200);
    tc_resp_fini(&r);
}

/* A connection whose request is being handled: a response that never ends. */
static void
busy_conn(struct tc_conn *c)
{
    struct tc_resp r;
    tc_conn_init(c, tc_connect_tcp(g_port));
    tc_send_str(c->fd, "GET /hang HTTP/1.1\r\n\r\n");
    tc_read(c, &r, 1);
    CHECK(r.status == 200 && !r.complete);
    tc_resp_fini(&r);
}

#define LIMIT 4

static void
client_eviction_order(void)
{
    /* Full: a trusted idle connection (the oldest), a silent one, an anonymous idle one, and
     * one handling a request. Each newcomer is served and evicts, in this order: anonymous
     * ones by age, then trusted ones by age, never the busy one; when every connection is
     * busy, the newcomer itself is closed. */
    struct tc_conn trusted, silent, anon, busy, c[4];
    served_conn(&trusted, true);
    tc_conn_init(&silent, tc_connect_tcp(g_port));
    served_conn(&anon, false);
    busy_conn(&busy);
    struct {
        struct tc_conn *newcomer, *evicted;
        bool authenticated;
        const char *what;
    } steps[] = {
        {&c[0], &silent, false, "the silent one"},
        {&c[1], &anon, true, "the anonymous idle one"},
        {&c[2], &c[0], true, "the first newcomer (anonymous)"},
        {&c[3], &trusted, true, "the oldest trusted one"},
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        served_conn(steps[i].newcomer, steps[i].authenticated);
        CHECK(tc_is_closed(steps[i].evicted));
        tc_conn_close(steps[i].evicted);
        fprintf(stderr, "newcomer %zu served, evicted %s\n", i + 1, steps[i].what);
        CHECK(still_open(&busy));
    }
    int open = 0;
    struct tc_conn *left[] = {&busy, &c[1], &c[2], &c[3]};
    for (int i = 0; i < 4; i++)
        open += still_open(left[i]);
    fprintf(stderr, "%d of %d connections still open\n", open, LIMIT);
    CHECK(open == LIMIT);
    /* Every connection busy: no room, and no request is cut for the newcomer. */
    for (int i = 1; i < 4; i++) {
        tc_conn_close(&c[i]);
        busy_conn(&c[i]);
    }
    struct tc_conn refused;
    tc_conn_init(&refused, tc_connect_tcp(g_port));
    CHECK(tc_is_closed(&refused));
    fprintf(stderr, "all %d busy: the newcomer was closed\n", LIMIT);
    tc_conn_close(&refused);
    for (int i = 0; i < 4; i++) {
        CHECK(still_open(left[i]));
        tc_conn_close(left[i]);
    }
}

TEST(connection_limit_evicts_idle_anonymous_first)
{
    g_max_conns = LIMIT;
    run(client_eviction_order);
}

static void
client_anon_idle(void)
{
    struct tc_conn anon, trusted;
    served_conn(&trusted, true);
    served_conn(&anon, false);
    CHECK(tc_is_closed(&anon)); /* after the short idle deadline */
    /* The trusted one has the long one, many times longer. */
    struct pollfd pfd = {.fd = trusted.fd, .events = POLLIN};
    CHECK(poll(&pfd, 1, 5 * DEADLINE_MS) == 0);
    fprintf(stderr, "anonymous closed, authenticated still open after %d ms more\n",
            5 * DEADLINE_MS);
    tc_conn_close(&anon);
    tc_conn_close(&trusted);
}

TEST(anonymous_connections_idle_shorter)
{
    g_idle_ms = 60 * 1000;
    g_anon_idle_ms = DEADLINE_MS;
    run(client_anon_idle);
}

/* ---- proxy ---- */

static void
client_proxy_get(void)
{
    struct tc_resp r;
    tc_request(g_port, "GET /proxy/hello HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", &r);
    CHECK(r.complete && r.status == 200);
    CHECK(tc_body_is(&r, "hello from upstream"));
    CHECK_STR(tc_header(&r, "x-up"), "yes");
    CHECK_STR(tc_header(&r, "x-saw-connection"), "close"); /* hop-by-hop replaced */
    tc_resp_fini(&r);
}

TEST(proxy_get)
{
    run(client_proxy_get);
}

static void
client_proxy_credentials(void)
{
    struct tc_resp r;
    /* The API key and a bearer token stay here; the envd user (Basic) and the rest go on. */
    tc_request(g_port,
               "GET /proxy/headers HTTP/1.1\r\nX-API-Key: e2b_secret\r\n"
               "Authorization: Bearer e2b_token\r\nX-Access-Token: envd\r\n\r\n",
               &r);
    fprintf(stderr, "upstream saw:\n%s", r.body.data);
    CHECK(r.complete && r.status == 200);
    CHECK(strstr(r.body.data, "e2b_secret") == NULL && strstr(r.body.data, "x-api-key") == NULL);
    CHECK(strstr(r.body.data, "e2b_token") == NULL && strstr(r.body.data, "authorization") == NULL);
    CHECK(strstr(r.body.data, "x-access-token: envd\n") != NULL);
    tc_resp_fini(&r);
    tc_request(g_port, "GET /proxy/headers HTTP/1.1\r\nAuthorization: Basic dXNlcjo=\r\n\r\n", &r);
    fprintf(stderr, "upstream saw:\n%s", r.body.data);
    CHECK(r.complete && strstr(r.body.data, "authorization: Basic dXNlcjo=\n") != NULL);
    tc_resp_fini(&r);
}

TEST(proxy_never_forwards_control_plane_credentials)
{
    run(client_proxy_credentials);
}

static void
client_proxy_head(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "HEAD /proxy/hello HTTP/1.1\r\n\r\n");
    /* The response to HEAD has a length but no body: read the head only. */
    char buf[4096];
    ssize_t n = recv(c.fd, buf, sizeof(buf) - 1, 0);
    CHECK(n > 0);
    buf[n] = '\0';
    CHECK(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    CHECK(strstr(buf, "\r\n\r\n") != NULL && strstr(buf, "\r\n\r\n")[4] == '\0');
    /* And the connection carries the next request. */
    tc_send_str(c.fd, "GET /hello HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && tc_body_is(&r, "hello"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(proxy_head)
{
    run(client_proxy_head);
}

static void
client_proxy_post_chunked(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "POST /proxy/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "4\r\nabcd\r\n");
    usleep(20000);
    tc_send_str(c.fd, "2\r\nef\r\n0\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.complete && r.status == 200);
    CHECK(tc_body_is(&r, "abcdef"));
    CHECK_STR(tc_header(&r, "x-up-method"), "POST");
    CHECK_STR(tc_header(&r, "x-up-chunked"), "yes");
    tc_resp_fini(&r);
    /* The client connection outlives the upstream one. */
    tc_send_str(c.fd, "POST /proxy/echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz");
    tc_read(&c, &r, 0);
    CHECK(r.complete && tc_body_is(&r, "xyz"));
    CHECK_STR(tc_header(&r, "x-up-chunked"), "no");
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(proxy_post_chunked_body)
{
    run(client_proxy_post_chunked);
}

static void
client_proxy_stream(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /proxy/chunks HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 7);
    CHECK(r.status == 200 && r.chunked && !r.complete); /* the first piece arrives alone */
    tc_read_more(&c, &r, 0);
    CHECK(r.complete && tc_body_is(&r, "piece1;piece2;piece3;"));
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(proxy_streamed_response)
{
    run(client_proxy_stream);
}

static void
client_proxy_die(void)
{
    struct tc_conn c;
    struct tc_resp r;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    tc_send_str(c.fd, "GET /proxy/die HTTP/1.1\r\n\r\n");
    tc_read(&c, &r, 0);
    CHECK(r.status == 200 && r.closed && !r.complete);
    tc_resp_fini(&r);
    tc_conn_close(&c);
}

TEST(proxy_upstream_dies_mid_response)
{
    run(client_proxy_die);
}

static void
client_proxy_unreachable(void)
{
    struct tc_resp r;
    tc_request(g_port, "GET /proxy-bad/x HTTP/1.1\r\n\r\n", &r);
    CHECK(r.complete && r.status == 502);
    CHECK(strstr(r.body.data, "upstream unreachable") != NULL);
    tc_resp_fini(&r);
    /* With a body that the unreachable upstream never reads. */
    tc_request(g_port, "POST /proxy-bad/x HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody", &r);
    CHECK(r.complete && r.status == 502);
    tc_resp_fini(&r);
}

TEST(proxy_upstream_unreachable)
{
    run(client_proxy_unreachable);
}

/* ---- the proxy's parser of upstream responses (pure) ---- */

static void
up_rec_header(void *ud, const char *name, const char *value)
{
    sbx_buf_printf(ud, "%s=%s;", name, value);
}

static void
up_rec_head(void *ud, int status)
{
    sbx_buf_printf(ud, "head %d;", status);
}

static void
up_rec_body(void *ud, const char *data, size_t len)
{
    sbx_buf_printf(ud, "body %.*s;", (int)len, data);
}

static void
up_rec_end(void *ud)
{
    sbx_buf_printf(ud, "end");
}

static void
up_rec_switch(void *ud, const char *rest, size_t len)
{
    sbx_buf_printf(ud, "switch %.*s", (int)len, rest);
}

/* Feeds raw in one piece, then EOF if the response has not ended; returns the last result and
 * what the callbacks saw. */
static int
parse_upstream(const char *raw, bool head_request, struct sbx_buf *seen)
{
    static const struct sbx_http_upstream_cbs cbs = {up_rec_header, up_rec_head, up_rec_body,
                                                     up_rec_end};
    struct sbx_http_upstream u;
    sbx_http_upstream_init(&u, head_request, &cbs, seen);
    int rc = sbx_http_upstream_feed(&u, raw, strlen(raw));
    if (rc == 0)
        rc = sbx_http_upstream_feed(&u, NULL, 0);
    sbx_http_upstream_fini(&u);
    fprintf(stderr, "rc %d: %s\n", rc, seen->data ? seen->data : "");
    return rc;
}

TEST(upstream_response_parser)
{
    struct sbx_buf seen = {0};
    /* Interim answers (even one claiming a body), hop-by-hop headers and trailers stay here. */
    CHECK(parse_upstream("HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\n"
                         "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                         "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nX-A: 1\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: t\r\n\r\n"
                         "HTTP/1.1 500 Ignored\r\n\r\n",
                         false, &seen) == 1);
    CHECK_STR(seen.data, "X-A=1;head 200;body ok;end");
    sbx_buf_fini(&seen);
    /* No body after HEAD, nor with 204, whatever the length says. */
    CHECK(parse_upstream("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, &seen) == 1);
    CHECK_STR(seen.data, "Content-Length=9;head 200;end");
    sbx_buf_fini(&seen);
    CHECK(parse_upstream("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", false, &seen) ==
          1);
    CHECK_STR(seen.data, "Content-Length=9;head 204;end");
    /* Refused: protocol switches, statuses outside 1xx-5xx, a space before a colon, a cut
     * response; nothing of them is relayed. */
    static const char *const bad[] = {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        "HTTP/1.1 600 Nope\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Len",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sbx_buf_fini(&seen);
        CHECK(parse_upstream(bad[i], false, &seen) == -1);
        CHECK(seen.len == 0);
    }
    /* A switch has no body, whatever its head says: what follows the head is the new
     * protocol's, all of it handed over. */
    {
        static const char sw[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 "Connection: Upgrade\r\nContent-Length: 5\r\n\r\nhello";
        struct sbx_http_upstream_cbs cbs = {up_rec_header, up_rec_head, up_rec_body, up_rec_end,
                                            up_rec_switch};
        struct sbx_http_upstream u;
        sbx_buf_fini(&seen);
        sbx_http_upstream_init(&u, false, &cbs, &seen);
        u.upgrade = true;
        CHECK(sbx_http_upstream_feed(&u, sw, strlen(sw)) == 1);
        sbx_http_upstream_fini(&u);
        CHECK_STR(seen.data, "Upgrade=websocket;Content-Length=5;head 101;switch hello");
    }
    /* More headers than a client may send. */
    struct sbx_buf many = {0};
    sbx_buf_printf(&many, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i <= SBX_HTTP_MAX_HEADERS; i++)
        sbx_buf_printf(&many, "X-%d: v\r\n", i);
    sbx_buf_printf(&many, "\r\n");
    sbx_buf_fini(&seen);
    CHECK(parse_upstream(many.data, false, &seen) == -1);
    CHECK(strstr(seen.data, "head") == NULL);
    sbx_buf_fini(&many);
    sbx_buf_fini(&seen);
}

/* ---- rate-limited logging of client errors (pure) ---- */

static void
record_held(void *ud, const char *source, uint64_t held)
{
    sbx_buf_printf(ud, "%s=%llu;", source, (unsigned long long)held);
}

TEST(client_error_log_rate_limit)
{
    struct sbx_http_ratelimit *rl = sbx_http_ratelimit_new(1024);
    struct sbx_buf out = {0};
    /* One line per source, then only a count, reported when the interval ends. */
    int logged = 0;
    for (int i = 0; i < 5000; i++)
        logged += sbx_http_ratelimit_admit(rl, i % 5 ? "10.0.0.1" : "::1");
    CHECK(logged == 2);
    sbx_http_ratelimit_flush(rl, record_held, &out);
    fprintf(stderr, "5000 errors from 2 sources: %d logged, summaries %s\n", logged, out.data);
    CHECK(strstr(out.data, "10.0.0.1=3999;") && strstr(out.data, "::1=999;"));
    /* A flood that goes on stays muted: its next interval is only a summary. */
    CHECK(!sbx_http_ratelimit_admit(rl, "10.0.0.1"));
    sbx_buf_fini(&out);
    sbx_http_ratelimit_flush(rl, record_held, &out);
    CHECK_STR(out.data, "10.0.0.1=1;");
    /* A quiet interval and it is forgotten: its next error is logged again. */
    sbx_buf_fini(&out);
    sbx_http_ratelimit_flush(rl, record_held, &out);
    CHECK(out.len == 0);
    CHECK(sbx_http_ratelimit_admit(rl, "10.0.0.1"));
    sbx_http_ratelimit_flush(rl, record_held, &out);
    sbx_http_ratelimit_free(rl);
    /* Many sources: beyond the table they share one entry, so memory and lines stay bounded. */
    rl = sbx_http_ratelimit_new(16);
    logged = 0;
    for (int i = 0; i < 100000; i++) {
        char src[32];
        snprintf(src, sizeof(src), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        logged += sbx_http_ratelimit_admit(rl, src);
    }
    sbx_http_ratelimit_flush(rl, record_held, &out);
    fprintf(stderr, "100000 errors from 100000 sources, table of 16: %d logged, summaries %s\n",
            logged, out.data ? out.data : "");
    CHECK(logged == 17);
    CHECK_STR(out.data, "others=99983;");
    sbx_buf_fini(&out);
    sbx_http_ratelimit_free(rl);
}

TEST(log_quote)
{
    char q[64], small[24];
    sbx_log_quote(q, sizeof(q), "no route for \"x\"\n\\");
    CHECK_STR(q, "no route for \\\"x\\\"\\x0a\\\\");
    sbx_log_quote(small, sizeof(small), "a path longer than the room there is");
    CHECK_STR(small, "a path longer than t...");
}

TEST_MAIN(60)
