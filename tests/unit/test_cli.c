/* CLI pieces that need no daemon: argument parsing, request bodies, the Connect stream
 * decoder on canned bytes, process events, exit statuses, quoting, base64. The verbs'
 * HTTP traffic is exercised by the integration tests against a real daemon. */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/error.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "connect/connect.h"
#include "base/base64.h"
#include "harness.h"

#define ARGV(...) ((char *[]){__VA_ARGS__, NULL})

static int
count(char **argv)
{
    int n = 0;
    while (argv[n])
        n++;
    return n;
}

static void
check_json(json_t *j, const char *want)
{
    json_t *w = json_loads(want, 0, NULL);
    CHECK(w != NULL);
    if (!json_equal(j, w)) {
        char *got = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
        fprintf(stderr, "got  %s\nwant %s\n", got, want);
        free(got);
        CHECK(0);
    }
    json_decref(w);
}

TEST(exec_parse_and_request)
{
    char **argv = ARGV("exec", "--user", "root", "sb1", "--cwd", "/tmp", "--env", "A=b=c", "--",
                       "ls", "-la", "a b", "it's");
    struct sbx_cli_exec_args a;
    struct sbx_error *err = NULL;
    CHECK(sbx_cli_exec_parse(count(argv), argv, &a, &err) == 0);
    CHECK_STR(a.id, "sb1");
    CHECK_STR(a.user, "root");
    CHECK_STR(a.cwd, "/tmp");
    CHECK(a.ncmd == 4);
    CHECK_STR(a.cmd[0], "ls");
    CHECK_STR(a.cmd[1], "-la");
    json_t *req = sbx_cli_exec_request(&a);
    check_json(req, "{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\","
                    "\"ls -la 'a b' 'it'\\\\''s'\"],\"envs\":{\"A\":\"b=c\"},\"cwd\":\"/tmp\"},"
                    "\"stdin\":false}");
    json_decref(req);
    sbx_cli_exec_args_fini(&a);

    /* Minimal form: no envs/cwd keys at all. */
    char **argv2 = ARGV("exec", "sb1", "true");
    CHECK(sbx_cli_exec_parse(count(argv2), argv2, &a, &err) == 0);
    req = sbx_cli_exec_request(&a);
    check_json(req, "{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\",\"true\"]},"
                    "\"stdin\":false}");
    json_decref(req);
    sbx_cli_exec_args_fini(&a);
}

static int
run_main(char **argv)
{
    return sbx_cli_main(count(argv), argv);
}

static void
expect_exec_usage_error(char **argv)
{
    int argc = count(argv);
    struct sbx_cli_exec_args a;
    struct sbx_error *err = NULL;
    CHECK(sbx_cli_exec_parse(argc, argv, &a, &err) < 0);
    CHECK(err != NULL && err->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(err);
    sbx_cli_exec_args_fini(&a);
}

TEST(exec_usage_errors)
{
    expect_exec_usage_error(ARGV("exec"));                     /* no id */
    expect_exec_usage_error(ARGV("exec", "sb1"));              /* no command */
    expect_exec_usage_error(ARGV("exec", "sb1", "ls", "-la")); /* -l without -- */
    expect_exec_usage_error(ARGV("exec", "../x", "--", "ls")); /* bad id */
    expect_exec_usage_error(ARGV("exec", "sb1", "--user"));    /* missing value */
    expect_exec_usage_error(ARGV("exec", "--env", "novalue", "sb1", "ls"));
    expect_exec_usage_error(ARGV("exec", "--user", "a:b", "sb1", "ls"));
    expect_exec_usage_error(ARGV("exec", "--bogus", "sb1", "ls"));

    /* The verb itself: usage errors exit 2 before any network traffic. */
    CHECK(run_main(ARGV("exec", "sb1")) == 2);
    CHECK(run_main(ARGV("kill")) == 2);
    CHECK(run_main(ARGV("ls", "extra")) == 2);
    CHECK(run_main(ARGV("create", "--timeout=0")) == 2);
    CHECK(run_main(ARGV("shell")) == 2);
    CHECK(run_main(ARGV("frobnicate")) == 2);
    CHECK(run_main(ARGV("ls", "--help")) == 0);
}

TEST(missing_api_key_is_an_error)
{
    unsetenv("E2B_API_KEY");
    CHECK(run_main(ARGV("ls")) == 1);
    struct sbx_cli_common c = {0};
    struct sbx_cli_config cfg;
    struct sbx_error *err = NULL;
    CHECK(sbx_cli_config_init(&cfg, &c, &err) < 0);
    CHECK(strstr(err->msg, "sbx serve") != NULL);
    sbx_error_free(err);
}

TEST(config_resolution)
{
    struct sbx_cli_config cfg;
    struct sbx_error *err = NULL;
    setenv("E2B_API_KEY", "e2b_env", 1);
    unsetenv("E2B_API_URL");
    unsetenv("E2B_SANDBOX_URL");
    struct sbx_cli_common c = {0};
    CHECK(sbx_cli_config_init(&cfg, &c, &err) == 0);
    CHECK_STR(cfg.api_url, "http://127.0.0.1:3000");
    CHECK_STR(cfg.sandbox_url, "http://127.0.0.1:3000");
    CHECK_STR(cfg.api_key, "e2b_env");
    sbx_cli_config_fini(&cfg);

    setenv("E2B_API_URL", "http://h:1/", 1);
    setenv("E2B_SANDBOX_URL", "http://s:2", 1);
    CHECK(sbx_cli_config_init(&cfg, &c, &err) == 0);
    CHECK_STR(cfg.api_url, "http://h:1");
    CHECK_STR(cfg.sandbox_url, "http://s:2");
    sbx_cli_config_fini(&cfg);

    c.api_url = "http://flag:3";
    c.api_key = "e2b_flag";
    CHECK(sbx_cli_config_init(&cfg, &c, &err) == 0);
    CHECK_STR(cfg.api_url, "http://flag:3");
    CHECK_STR(cfg.sandbox_url, "http://flag:3");
    CHECK_STR(cfg.api_key, "e2b_flag");
    sbx_cli_config_fini(&cfg);
}

TEST(create_parse_and_body)
{
    struct sbx_cli_create_args a;
    struct sbx_error *err = NULL;
    char **argv = ARGV("create", "--timeout", "60", "--template", "code-interpreter-v1",
                       "--metadata", "team=x", "--metadata", "k y=v&w", "--env", "FOO=bar",
                       "--no-internet", "--api-key", "e2b_k");
    CHECK(sbx_cli_create_parse(count(argv), argv, &a, &err) == 0);
    CHECK_STR(a.common.api_key, "e2b_k");
    json_t *body = sbx_cli_create_body(&a);
    check_json(body, "{\"templateID\":\"code-interpreter-v1\",\"timeout\":60,\"secure\":true,"
                     "\"allow_internet_access\":false,\"metadata\":{\"team\":\"x\",\"k y\":"
                     "\"v&w\"},\"envVars\":{\"FOO\":\"bar\"}}");
    json_decref(body);
    sbx_cli_create_args_fini(&a);

    CHECK(sbx_cli_create_parse(count(ARGV("create")), ARGV("create"), &a, &err) == 0);
    body = sbx_cli_create_body(&a);
    check_json(body, "{\"templateID\":\"base\",\"timeout\":300,\"secure\":true,"
                     "\"allow_internet_access\":true,\"metadata\":{},\"envVars\":{}}");
    json_decref(body);
    sbx_cli_create_args_fini(&a);

    static const char *const bad[] = {"0", "-5", "abc", "10x", "99999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(sbx_cli_create_parse(3, ARGV("create", "--timeout", (char *)bad[i]), &a, &err) < 0);
        sbx_error_free(err);
        err = NULL;
        sbx_cli_create_args_fini(&a);
    }
    CHECK(sbx_cli_create_parse(3, ARGV("create", "--metadata", "=v"), &a, &err) < 0);
    sbx_error_free(err);
    sbx_cli_create_args_fini(&a);
}

struct collected {
    int n;
    char texts[8][256];
};

static int
collect_cb(json_t *msg, void *ud, struct sbx_error **err)
{
    struct collected *c = ud;
    char *s = json_dumps(msg, JSON_COMPACT);
    if (c->n < 8)
        snprintf(c->texts[c->n], sizeof(c->texts[0]), "%s", s);
    c->n++;
    free(s);
    return 0;
}

static void
envelope(struct sbx_buf *b, uint8_t flags, const char *json)
{
    CHECK(sbx_connect_envelope_format(b, flags, json, strlen(json)) == 0);
}

/* The reply of the spec's request-logging test, §Appendix A. */
static struct sbx_buf
canned_stream(void)
{
    struct sbx_buf b = {0};
    envelope(&b, 0, "{\"event\":{\"start\":{\"pid\":4242}}}");
    envelope(&b, 0, "{\"event\":{\"data\":{\"stdout\":\"aGVsbG8K\"}}}");
    envelope(&b, 0, "{\"event\":{\"keepalive\":{}}}");
    envelope(&b, 0, "{\"event\":{\"end\":{\"exited\":true,\"status\":\"exit status 0\"}}}");
    envelope(&b, SBX_CONNECT_FLAG_END_STREAM, "{}");
    return b;
}

TEST(stream_decoder_any_split)
{
    struct sbx_buf b = canned_stream();
    /* Every split point, and byte-by-byte: envelopes may straddle reads arbitrarily. */
    for (size_t cut = 0; cut <= b.len; cut++) {
        struct collected c = {0};
        struct sbx_cli_stream s = {.cb = collect_cb, .ud = &c};
        struct sbx_error *err = NULL;
        CHECK(sbx_cli_stream_feed(&s, b.data, cut, &err) == 0);
        CHECK(sbx_cli_stream_feed(&s, b.data + cut, b.len - cut, &err) == 0);
        CHECK(sbx_cli_stream_finish(&s, &err) == 0);
        CHECK(c.n == 4);
        CHECK_STR(c.texts[1], "{\"event\":{\"data\":{\"stdout\":\"aGVsbG8K\"}}}");
        sbx_cli_stream_fini(&s);
    }
    struct collected c = {0};
    struct sbx_cli_stream s = {.cb = collect_cb, .ud = &c};
    struct sbx_error *err = NULL;
    for (size_t i = 0; i < b.len; i++)
        CHECK(sbx_cli_stream_feed(&s, b.data + i, 1, &err) == 0);
    CHECK(sbx_cli_stream_finish(&s, &err) == 0 && c.n == 4);
    sbx_cli_stream_fini(&s);
    sbx_buf_fini(&b);
}

TEST(stream_decoder_errors)
{
    struct sbx_error *err = NULL;
    /* End-of-stream envelope carrying an error. */
    struct sbx_buf b = {0};
    envelope(&b, 0, "{\"event\":{\"start\":{\"pid\":1}}}");
    envelope(&b, SBX_CONNECT_FLAG_END_STREAM,
             "{\"error\":{\"code\":\"invalid_argument\",\"message\":\"cwd '/x' does not exist\"}}");
    struct collected c = {0};
    struct sbx_cli_stream s = {.cb = collect_cb, .ud = &c};
    CHECK(sbx_cli_stream_feed(&s, b.data, b.len, &err) < 0);
    CHECK(err->code == SBX_INVALID_ARGUMENT);
    CHECK(strstr(err->msg, "cwd '/x' does not exist") != NULL);
    CHECK(c.n == 1);
    sbx_error_free(err);
    err = NULL;
    CHECK(sbx_cli_stream_finish(&s, &err) < 0); /* stays failed */
    sbx_error_free(err);
    err = NULL;
    sbx_cli_stream_fini(&s);
    sbx_buf_fini(&b);

    /* Cut mid-envelope, and cut before any end-of-stream: both are errors at finish. */
    struct sbx_buf full = canned_stream();
    size_t cuts[] = {full.len - 1, full.len - 7};
    for (size_t i = 0; i < 2; i++) {
        struct sbx_cli_stream s2 = {.cb = collect_cb, .ud = &c};
        CHECK(sbx_cli_stream_feed(&s2, full.data, cuts[i], &err) == 0);
        CHECK(sbx_cli_stream_finish(&s2, &err) < 0);
        CHECK(err->code == SBX_UNAVAILABLE);
        sbx_error_free(err);
        err = NULL;
        sbx_cli_stream_fini(&s2);
    }
    sbx_buf_fini(&full);

    /* Compressed flag, junk JSON, non-object JSON, data after the end. */
    const struct {
        uint8_t flags;
        const char *json;
    } bad[] = {{SBX_CONNECT_FLAG_COMPRESSED, "{}"}, {0, "{nope"}, {0, "[1]"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sbx_buf e = {0};
        envelope(&e, bad[i].flags, bad[i].json);
        struct sbx_cli_stream s3 = {.cb = collect_cb, .ud = &c};
        CHECK(sbx_cli_stream_feed(&s3, e.data, e.len, &err) < 0);
        sbx_error_free(err);
        err = NULL;
        sbx_cli_stream_fini(&s3);
        sbx_buf_fini(&e);
    }
    struct sbx_buf e = {0};
    envelope(&e, SBX_CONNECT_FLAG_END_STREAM, "{}");
    envelope(&e, 0, "{\"event\":{\"keepalive\":{}}}");
    struct sbx_cli_stream s4 = {.cb = collect_cb, .ud = &c};
    CHECK(sbx_cli_stream_feed(&s4, e.data, e.len, &err) < 0);
    sbx_error_free(err);
    sbx_cli_stream_fini(&s4);
    sbx_buf_fini(&e);
}

static void
parse_event(const char *json, struct sbx_cli_event *ev, json_t **keep)
{
    *keep = json_loads(json, 0, NULL);
    CHECK(*keep != NULL);
    struct sbx_error *err = NULL;
    CHECK(sbx_cli_event_parse(*keep, ev, &err) == 0);
}

TEST(process_events_and_exit_status)
{
    struct sbx_cli_event ev;
    json_t *j;
    parse_event("{\"event\":{\"start\":{\"pid\":4242}}}", &ev, &j);
    CHECK(ev.type == SBX_CLI_EVENT_START && ev.pid == 4242);
    json_decref(j);
    parse_event("{\"event\":{\"start\":{\"pid\":\"17\"}}}", &ev, &j); /* proto3 string form */
    CHECK(ev.pid == 17);
    json_decref(j);

    parse_event("{\"event\":{\"data\":{\"stderr\":\"aGVsbG8K\"}}}", &ev, &j);
    CHECK(ev.type == SBX_CLI_EVENT_DATA && ev.kind == SBX_CLI_DATA_STDERR);
    CHECK(ev.len == 6 && memcmp(ev.data, "hello\n", 6) == 0);
    sbx_cli_event_fini(&ev);
    json_decref(j);
    parse_event("{\"event\":{\"data\":{\"pty\":\"_-8\"}}}", &ev, &j); /* url-safe, unpadded */
    CHECK(ev.kind == SBX_CLI_DATA_PTY && ev.len == 2);
    CHECK((unsigned char)ev.data[0] == 0xff && (unsigned char)ev.data[1] == 0xef);
    sbx_cli_event_fini(&ev);
    json_decref(j);

    parse_event("{\"event\":{\"keepalive\":{}}}", &ev, &j);
    CHECK(ev.type == SBX_CLI_EVENT_KEEPALIVE);
    json_decref(j);

    parse_event("{\"event\":{\"end\":{\"exited\":true,\"status\":\"exit status 0\"}}}", &ev, &j);
    CHECK(ev.type == SBX_CLI_EVENT_END && sbx_cli_event_exit_status(&ev) == 0);
    json_decref(j);
    parse_event("{\"event\":{\"end\":{\"exitCode\":3,\"exited\":true,\"status\":\"exit status 3\","
                "\"error\":\"exit status 3\"}}}",
                &ev, &j);
    CHECK(sbx_cli_event_exit_status(&ev) == 3);
    CHECK_STR(ev.error, "exit status 3");
    json_decref(j);
    parse_event("{\"event\":{\"end\":{\"exitCode\":-1,\"status\":\"signal: killed\","
                "\"error\":\"signal: killed\"}}}",
                &ev, &j);
    CHECK(sbx_cli_event_exit_status(&ev) == 128 + SIGKILL);
    json_decref(j);
    parse_event("{\"event\":{\"end\":{\"exitCode\":-1,\"status\":\"signal: terminated\"}}}", &ev,
                &j);
    CHECK(sbx_cli_event_exit_status(&ev) == 128 + SIGTERM);
    json_decref(j);
    parse_event("{\"event\":{\"end\":{\"exitCode\":-1,"
                "\"status\":\"signal: segmentation fault (core dumped)\"}}}",
                &ev, &j);
    CHECK(sbx_cli_event_exit_status(&ev) == 128 + SIGSEGV);
    json_decref(j);

    struct sbx_error *err = NULL;
    j = json_loads("{\"event\":{\"data\":{\"stdout\":\"!!!\"}}}", 0, NULL);
    CHECK(sbx_cli_event_parse(j, &ev, &err) < 0);
    sbx_error_free(err);
    err = NULL;
    json_decref(j);
    j = json_loads("{\"nope\":1}", 0, NULL);
    CHECK(sbx_cli_event_parse(j, &ev, &err) < 0);
    sbx_error_free(err);
    json_decref(j);
}

TEST(shell_quoting_and_base64)
{
    char *w[] = {"echo", "", "a b", "$HOME", "it's", "x=1,y/z"};
    char *s = sbx_cli_shell_join(w, 6);
    CHECK_STR(s, "echo '' 'a b' '$HOME' 'it'\\''s' x=1,y/z");
    free(s);

    const char *vec[][2] = {{"", ""},
                            {"f", "Zg=="},
                            {"fo", "Zm8="},
                            {"foo", "Zm9v"},
                            {"foob", "Zm9vYg=="},
                            {"user:", "dXNlcjo="},
                            {"root:", "cm9vdDo="}};
    for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
        char *e = sbx_base64_encode(vec[i][0], strlen(vec[i][0]), NULL);
        CHECK_STR(e, vec[i][1]);
        free(e);
        size_t n;
        unsigned char *d = sbx_base64_decode(vec[i][1], strlen(vec[i][1]), &n);
        CHECK(d != NULL && n == strlen(vec[i][0]) && memcmp(d, vec[i][0], n) == 0);
        free(d);
    }
    size_t n;
    unsigned char *d = sbx_base64_decode("Zm9vYg", 6, &n); /* unpadded */
    CHECK(d != NULL && n == 4);
    free(d);
    CHECK(sbx_base64_decode("Z", 1, &n) == NULL);
    CHECK(sbx_base64_decode("Zm 9", 4, &n) == NULL);
}

TEST(ids)
{
    CHECK(sbx_cli_is_valid_id("i4f2k0abc"));
    CHECK(sbx_cli_is_valid_id("a-b_C"));
    CHECK(!sbx_cli_is_valid_id(""));
    CHECK(!sbx_cli_is_valid_id("a/b"));
    CHECK(!sbx_cli_is_valid_id("a\r\nX-Evil: 1"));
    CHECK(!sbx_cli_is_valid_id("a?b"));
}

/* sbx template build's Dockerfiles: the instructions the Template SDK's fromDockerfile reads
 * into steps, the rest refused with a reason. */
static json_t *
dockerfile(const char *text, char *why, size_t n)
{
    json_t *def = NULL;
    struct sbx_error *err = NULL;
    if (sbx_cli_dockerfile_parse(text, &def, &err) < 0)
        snprintf(why, n, "%s", err->msg);
    sbx_error_free(err);
    return def;
}

TEST(dockerfile_to_steps)
{
    char why[256] = "";
    json_t *d = dockerfile("# comment\nFROM e2bdev/base\nRUN apt-get update && \\\n"
                           "    echo hi\nENV A=1 B=\"two words\"\nENV C 3\nARG D\n"
                           "WORKDIR /app\nuser root\nEXPOSE 80\nCMD [\"python3\", \"-m\", "
                           "\"http.server\"]\n",
                           why, sizeof(why));
    if (d == NULL)
        fprintf(stderr, "refused: %s\n", why);
    CHECK(d != NULL);
    char *s = json_dumps(d, JSON_COMPACT | JSON_SORT_KEYS);
    fprintf(stderr, "%s\n", s);
    CHECK_STR(s, "{\"force\":false,\"fromImage\":\"e2bdev/base\",\"startCmd\":\"python3 -m "
                 "http.server\",\"steps\":[{\"args\":[\"apt-get update &&  echo "
                 "hi\"],\"force\":false,\"type\":\"RUN\"},{\"args\":[\"A\",\"1\",\"B\","
                 "\"two words\"],\"force\":false,\"type\":\"ENV\"},{\"args\":[\"C\",\"3\"],"
                 "\"force\":false,\"type\":\"ENV\"},{\"args\":[\"D\",\"\"],\"force\":false,"
                 "\"type\":\"ENV\"},{\"args\":[\"/app\"],\"force\":false,\"type\":"
                 "\"WORKDIR\"},{\"args\":[\"root\"],\"force\":false,\"type\":\"USER\"}]}");
    free(s);
    json_decref(d);
    d = dockerfile("FROM my-template\nRUN true\n", why, sizeof(why));
    CHECK(d && strcmp(json_string_value(json_object_get(d, "fromTemplate")), "my-template") == 0);
    json_decref(d);
    CHECK(dockerfile("FROM e2bdev/base\nCOPY a b\n", why, sizeof(why)) == NULL);
    CHECK(strstr(why, "COPY is not supported") != NULL);
    CHECK(dockerfile("RUN true\n", why, sizeof(why)) == NULL && strstr(why, "no FROM"));
    CHECK(dockerfile("FROM a:b\nFROM c:d\n", why, sizeof(why)) == NULL);
    CHECK(dockerfile("FROM a:b\nHEALTHCHECK x\n", why, sizeof(why)) == NULL);
    CHECK(dockerfile("FROM a:b\nENV =x\n", why, sizeof(why)) == NULL);
}

TEST_MAIN(30)
