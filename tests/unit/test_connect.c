/* Connect protocol (src/connect): envelopes byte for byte, and request decoding and responses
 * through a real sbx HTTP server and a real client (http_client.h). */
#include "base/limits.h"
#include "connect/connect.h"
#include "http_client.h"

/* ---- envelopes ---- */

static int
next(struct sbx_connect_reader *r, uint8_t *flags, char **msg, size_t *len, struct sbx_error **err)
{
    *msg = NULL;
    return sbx_connect_reader_next(r, flags, msg, len, err);
}

TEST(envelope_round_trip)
{
    struct sbx_buf b = {0};
    CHECK(sbx_connect_envelope_format(&b, 0, "{\"a\":1}", 7) == 0);
    CHECK(b.len == 12);
    CHECK(memcmp(b.data, "\x00\x00\x00\x00\x07{\"a\":1}", 12) == 0);
    struct sbx_connect_reader r = {0};
    struct sbx_error *err = NULL;
    CHECK(sbx_connect_reader_feed(&r, b.data, b.len, &err) == 0);
    uint8_t flags = 0xff;
    char *msg;
    size_t len;
    CHECK(next(&r, &flags, &msg, &len, &err) == 1);
    CHECK(flags == 0 && len == 7);
    CHECK_STR(msg, "{\"a\":1}");
    free(msg);
    CHECK(next(&r, &flags, &msg, &len, &err) == 0 && msg == NULL);
    sbx_connect_reader_fini(&r);
    sbx_buf_fini(&b);
}

TEST(envelope_split_feeding)
{
    struct sbx_buf b = {0};
    sbx_connect_envelope_format(&b, 0, "hello", 5);
    sbx_connect_envelope_format(&b, 0, "", 0);
    sbx_connect_envelope_format(&b, SBX_CONNECT_FLAG_END_STREAM, "{}", 2);
    struct sbx_connect_reader r = {0};
    struct sbx_error *err = NULL;
    const char *want[] = {"hello", "", "{}"};
    int got = 0;
    for (size_t i = 0; i < b.len; i++) {
        CHECK(sbx_connect_reader_feed(&r, b.data + i, 1, &err) == 0);
        uint8_t flags;
        char *msg;
        size_t len;
        int rc;
        while ((rc = next(&r, &flags, &msg, &len, &err)) == 1) {
            CHECK(got < 3);
            CHECK(len == strlen(want[got]) && memcmp(msg, want[got], len) == 0);
            CHECK(flags == (got == 2 ? SBX_CONNECT_FLAG_END_STREAM : 0));
            /* A message is returned exactly when its last byte arrived. */
            size_t end = got == 0 ? 10 : got == 1 ? 15 : 22;
            CHECK(i + 1 == end);
            free(msg);
            got++;
        }
        CHECK(rc == 0);
    }
    CHECK(got == 3);
    sbx_connect_reader_fini(&r);
    sbx_buf_fini(&b);
}

TEST(envelope_oversize_length_is_an_error)
{
    struct sbx_connect_reader r = {0};
    struct sbx_error *err = NULL;
    CHECK(sbx_connect_reader_feed(&r, "\x00\xff\xff\xff\xff{}", 7, &err) == 0);
    uint8_t flags;
    char *msg;
    size_t len;
    /* Refused from the prefix alone, long before 4 GiB could arrive. */
    CHECK(next(&r, &flags, &msg, &len, &err) == -1);
    CHECK(err && err->code == SBX_RESOURCE_EXHAUSTED && msg == NULL);
    sbx_error_free(err);
    sbx_connect_reader_fini(&r);

    /* Exactly the limit is allowed to wait for more bytes; one more is not. */
    struct sbx_connect_reader r2 = {0};
    err = NULL;
    unsigned char pre[5] = {0, (SBX_CONNECT_MAX_MESSAGE >> 24) & 0xff,
                            (SBX_CONNECT_MAX_MESSAGE >> 16) & 0xff,
                            (SBX_CONNECT_MAX_MESSAGE >> 8) & 0xff, SBX_CONNECT_MAX_MESSAGE & 0xff};
    CHECK(sbx_connect_reader_feed(&r2, (char *)pre, 5, &err) == 0);
    CHECK(next(&r2, &flags, &msg, &len, &err) == 0);
    sbx_connect_reader_fini(&r2);
    pre[4]++;
    struct sbx_connect_reader r3 = {0};
    CHECK(sbx_connect_reader_feed(&r3, (char *)pre, 5, &err) == 0);
    CHECK(next(&r3, &flags, &msg, &len, &err) == -1);
    sbx_error_free(err);
    sbx_connect_reader_fini(&r3);
}

TEST(envelope_compressed_flag_is_an_error)
{
    struct sbx_connect_reader r = {0};
    struct sbx_error *err = NULL;
    CHECK(sbx_connect_reader_feed(&r, "\x01\x00\x00\x00\x02{}", 7, &err) == 0);
    uint8_t flags;
    char *msg;
    size_t len;
    CHECK(next(&r, &flags, &msg, &len, &err) == -1);
    CHECK(err && strstr(err->msg, "compress") != NULL);
    sbx_error_free(err);
    sbx_connect_reader_fini(&r);
    /* Unknown flag bits too. */
    struct sbx_connect_reader r2 = {0};
    err = NULL;
    CHECK(sbx_connect_reader_feed(&r2, "\x80\x00\x00\x00\x00", 5, &err) == 0);
    CHECK(next(&r2, &flags, &msg, &len, &err) == -1);
    CHECK(err && err->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(err);
    sbx_connect_reader_fini(&r2);
}

TEST(end_stream_flag_is_passed_through)
{
    struct sbx_connect_reader r = {0};
    struct sbx_error *err = NULL;
    const char *end = "{\"error\":{\"code\":\"not_found\",\"message\":\"x\"}}";
    struct sbx_buf b = {0};
    sbx_connect_envelope_format(&b, SBX_CONNECT_FLAG_END_STREAM, end, strlen(end));
    CHECK(sbx_connect_reader_feed(&r, b.data, b.len, &err) == 0);
    uint8_t flags;
    char *msg;
    size_t len;
    CHECK(next(&r, &flags, &msg, &len, &err) == 1);
    CHECK(flags == SBX_CONNECT_FLAG_END_STREAM);
    CHECK_STR(msg, end);
    free(msg);
    sbx_connect_reader_fini(&r);
    sbx_buf_fini(&b);
}

TEST(status_table_and_timeout_header)
{
    CHECK(sbx_connect_http_status(SBX_NOT_FOUND) == 404);
    CHECK(sbx_connect_http_status(SBX_INVALID_ARGUMENT) == 400);
    CHECK(sbx_connect_http_status(SBX_UNAUTHENTICATED) == 401);
    CHECK(sbx_connect_http_status(SBX_RESOURCE_EXHAUSTED) == 429);
    CHECK(sbx_connect_http_status(SBX_INTERNAL) == 500);
    struct sbx_http_header h[] = {{"connect-timeout-ms", "1500"}};
    struct sbx_http_req req = {.headers = h, .n_headers = 1};
    CHECK(sbx_connect_timeout_ms(&req) == 1500);
    h[0].value = "15x";
    CHECK(sbx_connect_timeout_ms(&req) == 0);
    h[0].value = "99999999999";
    CHECK(sbx_connect_timeout_ms(&req) == 0);
}

/* ---- through a real server ---- */

static struct sbx_http_server *g_srv;
static int g_port;

static void
on_msg(struct sbx_http_req *req, json_t *msg, struct sbx_error *err)
{
    if (msg == NULL) {
        sbx_connect_error(req, err);
        return;
    }
    if (sbx_connect_is_stream(req)) {
        sbx_connect_stream_start(req);
        sbx_connect_stream_send(req, json_incref(msg));
        sbx_connect_stream_send(req, json_pack("{s:i}", "second", 2));
        sbx_connect_stream_end(req, NULL);
    } else {
        sbx_connect_unary_ok(req, json_incref(msg));
    }
}

static void
on_request(struct sbx_http_req *req, void *ud)
{
    sbx_connect_read_request(req, on_msg);
}

static void
teardown(void)
{
    sbx_http_server_close(g_srv);
}

static void
run(void (*client)(void))
{
    struct sbx_error *err = NULL;
    g_srv = sbx_http_server_new(uv_default_loop(), on_request, NULL);
    CHECK(sbx_http_server_listen_tcp(g_srv, "127.0.0.1", 0, &err) == 0);
    g_port = sbx_http_server_port(g_srv);
    tc_run(client, teardown);
}

/* Sends a request whose body is given raw, reads the response. */
static void
post(const char *ctype, const char *body, size_t len, struct tc_resp *r)
{
    struct tc_conn c;
    tc_conn_init(&c, tc_connect_tcp(g_port));
    char head[256];
    snprintf(head, sizeof(head),
             "POST /process.Process/Start HTTP/1.1\r\nContent-Type: %s\r\n"
             "Content-Length: %zu\r\n\r\n",
             ctype, len);
    tc_send_str(c.fd, head);
    tc_send(c.fd, body, len);
    tc_read(&c, r, 0);
    tc_conn_close(&c);
}

/* Splits a response body into envelopes; returns how many. */
static int
envelopes(const struct tc_resp *r, uint8_t *flags, char **msgs, int max)
{
    struct sbx_connect_reader rd = {0};
    struct sbx_error *err = NULL;
    CHECK(sbx_connect_reader_feed(&rd, r->body.data, r->body.len, &err) == 0);
    int n = 0;
    size_t len;
    while (n < max && sbx_connect_reader_next(&rd, &flags[n], &msgs[n], &len, &err) == 1)
        n++;
    CHECK(rd.buf.len == 0); /* nothing trailing, nothing truncated */
    sbx_connect_reader_fini(&rd);
    return n;
}

static void
client_unary(void)
{
    struct tc_resp r;
    post("application/json", "{\"a\":1}", 7, &r);
    CHECK(r.complete && r.status == 200);
    CHECK_STR(r.body.data, "{\"a\":1}");
    tc_resp_fini(&r);
    post("application/json", "", 0, &r); /* the empty message */
    CHECK(r.status == 200);
    CHECK_STR(r.body.data, "{}");
    tc_resp_fini(&r);
    post("application/json", "{\"a\":", 5, &r);
    CHECK(r.status == 400 && strstr(r.body.data, "\"invalid_argument\"") != NULL);
    tc_resp_fini(&r);
    post("application/json", "[1]", 3, &r);
    CHECK(r.status == 400);
    tc_resp_fini(&r);
    post("application/json", "{\"a\":1,\"a\":2}", 13, &r); /* duplicate keys */
    CHECK(r.status == 400);
    tc_resp_fini(&r);
}

TEST(read_request_unary)
{
    run(client_unary);
}

static void
client_stream(void)
{
    struct tc_resp r;
    struct sbx_buf b = {0};
    sbx_connect_envelope_format(&b, 0, "{\"cmd\":\"ls\"}", 12);
    post("application/connect+json", b.data, b.len, &r);
    CHECK(r.complete && r.status == 200);
    CHECK_STR(tc_header(&r, "content-type"), "application/connect+json");
    uint8_t flags[4];
    char *msgs[4];
    CHECK(envelopes(&r, flags, msgs, 4) == 3);
    CHECK(flags[0] == 0 && flags[1] == 0 && flags[2] == SBX_CONNECT_FLAG_END_STREAM);
    CHECK_STR(msgs[0], "{\"cmd\":\"ls\"}");
    CHECK_STR(msgs[1], "{\"second\":2}");
    CHECK_STR(msgs[2], "{}");
    for (int i = 0; i < 3; i++)
        free(msgs[i]);
    tc_resp_fini(&r);
    sbx_buf_fini(&b);

    /* Errors of a streaming call are an end-stream envelope with status 200. */
    struct {
        const char *body;
        size_t len;
        const char *code;
    } bad[] = {
        {"\x00\x00\x00\x00\x09{}", 7, "invalid_argument"},                        /* truncated */
        {"\x01\x00\x00\x00\x02{}", 7, "internal"},                                /* compressed */
        {"\x00\x00\x00\x00\x02{}\x00\x00\x00\x00\x02{}", 14, "invalid_argument"}, /* two */
        {"\x00\x00\x00\x00\x02[]", 7, "invalid_argument"}, /* not an object */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        post("application/connect+json", bad[i].body, bad[i].len, &r);
        CHECK(r.complete && r.status == 200);
        CHECK(envelopes(&r, flags, msgs, 4) == 1);
        CHECK(flags[0] == SBX_CONNECT_FLAG_END_STREAM);
        json_t *end = json_loads(msgs[0], 0, NULL);
        CHECK_STR(json_string_value(json_object_get(json_object_get(end, "error"), "code")),
                  bad[i].code);
        json_decref(end);
        free(msgs[0]);
        tc_resp_fini(&r);
    }
}

TEST(read_request_streaming)
{
    run(client_stream);
}

TEST_MAIN(60)
