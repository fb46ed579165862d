/* Unit tests of the agent's process service pieces that need no namespaces: request decoding,
 * end-event formatting, base64, Basic auth, environment and cwd rules. The service itself is
 * exercised end to end by tests/agent/host_smoke.py and the SDK suites. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "base/base64.h"
#include "agent/process.h"
#include "agent/users.h"
#include "harness.h"

static json_t *
parse(const char *s)
{
    json_t *j = json_loads(s, 0, NULL);
    CHECK(j != NULL);
    return j;
}

TEST(start_request_command)
{
    json_t *m = parse("{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\",\"echo hi\"],"
                      "\"envs\":{\"A\":\"b\"},\"cwd\":\"/tmp\"},\"stdin\":false,\"tag\":\"t\"}");
    struct sbx_agent_start_req r;
    struct sbx_error *e = NULL;
    CHECK(sbx_agent_start_req_parse(m, &r, &e) == 0);
    CHECK_STR(r.cmd, "/bin/bash");
    CHECK(r.n_args == 3);
    CHECK_STR(r.args[2], "echo hi");
    CHECK(r.args[3] == NULL);
    CHECK_STR(json_string_value(json_object_get(r.envs, "A")), "b");
    CHECK_STR(r.cwd, "/tmp");
    CHECK_STR(r.tag, "t");
    CHECK(!r.stdin_open && !r.pty);
    json_t *c = sbx_agent_config_json(&r);
    char *s = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
    CHECK_STR(s, "{\"args\":[\"-l\",\"-c\",\"echo hi\"],\"cmd\":\"/bin/bash\",\"cwd\":\"/tmp\","
                 "\"envs\":{\"A\":\"b\"}}");
    free(s);
    json_decref(c);
    sbx_agent_start_req_fini(&r);
    json_decref(m);
}

TEST(start_request_pty_defaults)
{
    json_t *m = parse("{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-i\",\"-l\"]},"
                      "\"pty\":{\"size\":{\"cols\":80,\"rows\":\"24\"}}}");
    struct sbx_agent_start_req r;
    struct sbx_error *e = NULL;
    CHECK(sbx_agent_start_req_parse(m, &r, &e) == 0);
    CHECK(r.pty && r.cols == 80 && r.rows == 24);
    CHECK(r.stdin_open); /* absent stdin means enabled */
    CHECK(r.cwd == NULL && r.tag == NULL);
    CHECK(json_object_size(r.envs) == 0);
    sbx_agent_start_req_fini(&r);
    json_decref(m);
}

static void
expect_invalid(const char *json)
{
    json_t *m = parse(json);
    struct sbx_agent_start_req r;
    struct sbx_error *e = NULL;
    CHECK(sbx_agent_start_req_parse(m, &r, &e) < 0);
    CHECK(e != NULL && e->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(e);
    json_decref(m);
}

TEST(start_request_wrong_types)
{
    expect_invalid("{}");
    expect_invalid("{\"process\":{}}");
    expect_invalid("{\"process\":{\"cmd\":1}}");
    expect_invalid("{\"process\":{\"cmd\":\"x\",\"args\":\"a\"}}");
    expect_invalid("{\"process\":{\"cmd\":\"x\",\"args\":[1]}}");
    expect_invalid("{\"process\":{\"cmd\":\"x\",\"envs\":{\"A\":1}}}");
    expect_invalid("{\"process\":{\"cmd\":\"x\",\"envs\":{\"A=B\":\"1\"}}}");
    expect_invalid("{\"process\":{\"cmd\":\"x\"},\"stdin\":\"yes\"}");
    expect_invalid("{\"process\":{\"cmd\":\"x\"},\"pty\":{\"size\":{\"cols\":-1}}}");
    expect_invalid("{\"process\":{\"cmd\":\"x\"},\"pty\":{\"size\":{\"cols\":70000}}}");
}

TEST(selector_and_signal)
{
    struct sbx_agent_selector s;
    struct sbx_error *e = NULL;
    json_t *m = parse("{\"process\":{\"pid\":42},\"signal\":\"SIGNAL_SIGKILL\"}");
    CHECK(sbx_agent_selector_parse(m, "process", &s, &e) == 0 && s.pid == 42 && !s.tag);
    int sig = 0;
    CHECK(sbx_agent_signal_parse(json_object_get(m, "signal"), &sig, &e) == 0 && sig == SIGKILL);
    json_decref(m);
    m = parse("{\"process\":{\"tag\":\"x\"},\"signal\":15}");
    CHECK(sbx_agent_selector_parse(m, "process", &s, &e) == 0 && strcmp(s.tag, "x") == 0);
    sbx_agent_selector_fini(&s);
    CHECK(sbx_agent_signal_parse(json_object_get(m, "signal"), &sig, &e) == 0 && sig == SIGTERM);
    json_decref(m);
    m = parse("{\"signal\":\"SIGNAL_UNSPECIFIED\"}");
    CHECK(sbx_agent_signal_parse(json_object_get(m, "signal"), &sig, &e) < 0);
    CHECK(e->code == SBX_UNIMPLEMENTED);
    sbx_error_free(e);
    e = NULL;
    CHECK(sbx_agent_selector_parse(m, "process", &s, &e) < 0 && e->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(e);
    json_decref(m);
}

TEST(input)
{
    struct sbx_error *e = NULL;
    json_t *m = parse("{\"stdin\":\"aGVsbG8K\"}");
    bool pty = true;
    unsigned char *d;
    size_t n;
    CHECK(sbx_agent_input_parse(m, &pty, &d, &n, &e) == 0 && !pty && n == 6);
    CHECK(memcmp(d, "hello\n", 6) == 0);
    free(d);
    json_decref(m);
    m = parse("{\"pty\":\"aGVsbG8\"}"); /* unpadded is accepted */
    CHECK(sbx_agent_input_parse(m, &pty, &d, &n, &e) == 0 && pty && n == 5);
    free(d);
    json_decref(m);
    m = parse("{\"stdin\":\"*\"}");
    CHECK(sbx_agent_input_parse(m, &pty, &d, &n, &e) < 0 && e->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(e);
    json_decref(m);
}

static char *
end_json_why(int wstatus, const char *killed_by)
{
    json_t *j = sbx_agent_end_event_format(wstatus, killed_by);
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    return s;
}

static char *
end_json(int wstatus)
{
    return end_json_why(wstatus, NULL);
}

TEST(end_event_matches_envd)
{
    char *s = end_json(0);
    CHECK_STR(s, "{\"exited\":true,\"status\":\"exit status 0\"}");
    free(s);
    s = end_json(3 << 8);
    CHECK_STR(s, "{\"error\":\"exit status 3\",\"exitCode\":3,\"exited\":true,"
                 "\"status\":\"exit status 3\"}");
    free(s);
    s = end_json(SIGKILL);
    CHECK_STR(s, "{\"error\":\"signal: killed\",\"exitCode\":-1,\"status\":\"signal: killed\"}");
    free(s);
    s = end_json(SIGSEGV | 0x80);
    CHECK_STR(s, "{\"error\":\"signal: segmentation fault (core dumped)\",\"exitCode\":-1,"
                 "\"status\":\"signal: segmentation fault (core dumped)\"}");
    free(s);
    /* An OOM kill says so, whether the process itself or the shell's command was killed. */
    s = end_json_why(SIGKILL, "out of memory (limit 512 MiB)");
    CHECK_STR(s, "{\"error\":\"killed: out of memory (limit 512 MiB)\",\"exitCode\":-1,"
                 "\"status\":\"signal: killed\"}");
    free(s);
    s = end_json_why(137 << 8, "out of memory (limit 512 MiB)");
    CHECK_STR(s, "{\"error\":\"killed: out of memory (limit 512 MiB)\",\"exitCode\":137,"
                 "\"exited\":true,\"status\":\"exit status 137\"}");
    free(s);
}

TEST(base64_round_trip)
{
    const char *cases[][2] = {
        {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"hello\n", "aGVsbG8K"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n;
        char *enc = sbx_base64_encode(cases[i][0], strlen(cases[i][0]), &n);
        CHECK_STR(enc, cases[i][1]);
        unsigned char *dec = sbx_base64_decode(enc, n, &n);
        CHECK(n == strlen(cases[i][0]) && memcmp(dec, cases[i][0], n) == 0);
        free(enc);
        free(dec);
    }
    size_t n;
    unsigned char *d = sbx_base64_decode("-_8", 3, &n); /* url-safe, unpadded */
    CHECK(d && n == 2 && d[0] == 0xfb && d[1] == 0xff);
    free(d);
    CHECK(sbx_base64_decode("a", 1, &n) == NULL);
    CHECK(sbx_base64_decode("ab$d", 4, &n) == NULL);
}

TEST(basic_auth_and_users)
{
    char *u = sbx_agent_basic_auth_user("Basic cm9vdDo="); /* root: */
    CHECK_STR(u, "root");
    free(u);
    u = sbx_agent_basic_auth_user("Basic dXNlcjo="); /* user: */
    CHECK_STR(u, "user");
    free(u);
    CHECK(sbx_agent_basic_auth_user("Bearer x") == NULL);
    CHECK(sbx_agent_basic_auth_user("Basic !!!") == NULL);

    struct sbx_agent_user usr;
    struct sbx_error *e = NULL;
    /* A directory without passwd/group files: the built-in E2B users. */
    CHECK(sbx_agent_user_lookup("/nonexistent", "user", &usr, &e) == 0);
    CHECK(usr.uid == 1000 && usr.gid == 1000 && usr.n_groups == 2 && usr.groups[1] == 27);
    CHECK_STR(usr.home, "/home/user");
    sbx_agent_user_fini(&usr);
    CHECK(sbx_agent_user_lookup("/nonexistent", "bob", &usr, &e) < 0);
    CHECK(e->code == SBX_UNAUTHENTICATED);
    CHECK_STR(e->msg, "invalid username: 'bob'");
    sbx_error_free(e);
    e = NULL;
    CHECK(sbx_agent_user_lookup("/etc", "root", &usr, &e) == 0 && usr.uid == 0);
    sbx_agent_user_fini(&usr);
}

TEST(environment_order)
{
    struct sbx_agent_user u = {.name = "user", .home = "/home/user"};
    json_t *sandbox = parse("{\"G\":\"1\",\"LANG\":\"x\"}");
    json_t *req = parse("{\"G\":\"2\",\"R\":\"3\"}");
    char **env = sbx_agent_env_build(&u, sandbox, req, true);
    CHECK(env != NULL);
    const char *want[] = {"PATH=" SBX_AGENT_BASE_PATH,
                          "HOME=/home/user",
                          "USER=user",
                          "LOGNAME=user",
                          "SHELL=/bin/bash",
                          "LANG=x",
                          "TERM=xterm-256color",
                          "G=2",
                          "R=3",
                          NULL};
    for (size_t i = 0; want[i]; i++)
        CHECK_STR(env[i], want[i]);
    CHECK(env[9] == NULL);
    sbx_agent_strv_free(env);
    json_decref(sandbox);
    json_decref(req);
}

TEST(cwd_rules)
{
    char *s;
    s = sbx_agent_resolve_cwd(NULL, "/home/user");
    CHECK_STR(s, "/home/user");
    free(s);
    s = sbx_agent_resolve_cwd("~/a", "/home/user");
    CHECK_STR(s, "/home/user/a");
    free(s);
    s = sbx_agent_resolve_cwd("rel", "/home/user");
    CHECK_STR(s, "/home/user/rel");
    free(s);
    s = sbx_agent_resolve_cwd("/tmp", "/home/user");
    CHECK_STR(s, "/tmp");
    free(s);
}

TEST_MAIN(30)
