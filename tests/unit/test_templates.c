/* The pure parts of src/daemon/templates.c: template names and tags as the Template SDK sends
 * them (templates.md §2.1, §2.8), and build definitions (§2.5). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "daemon/templates.h"
#include "harness.h"

static int
parse(const char *s, struct sbx_template_name *n)
{
    struct sbx_error *err = NULL;
    int rc = sbx_template_name_parse(s, n, &err);
    if (rc < 0)
        fprintf(stderr, "%s -> %s\n", s, err->msg);
    sbx_error_free(err);
    return rc;
}

TEST(names)
{
    struct sbx_template_name n;
    CHECK(parse("  My-Env_1 ", &n) == 0);
    CHECK_STR(n.alias, "my-env_1");
    CHECK_STR(n.tag, "");
    CHECK(parse("team/my-env:v1.2", &n) == 0);
    CHECK_STR(n.ns, "team");
    CHECK_STR(n.alias, "my-env");
    CHECK_STR(n.tag, "v1.2");
    CHECK(parse("x:default", &n) == 0 && n.tag[0] == '\0'); /* "default" is no tag */
    CHECK(parse("", &n) < 0);
    CHECK(parse("a b", &n) < 0);
    CHECK(parse("x:", &n) < 0);
    CHECK(parse(":x", &n) < 0);
    CHECK(parse("x:a:b", &n) < 0);
    CHECK(parse("x:123e4567-e89b-12d3-a456-426614174000", &n) < 0); /* a tag is no UUID */
    CHECK(parse("../x", &n) < 0);
    char longname[200];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK(parse(longname, &n) < 0);
}

/* The bodies def() parsed: a definition borrows from its body, which must outlive the test's
 * checks of it; bodies_free() releases them at the end. */
static json_t *bodies[16];
static size_t n_bodies;

static void
bodies_free(void)
{
    while (n_bodies > 0)
        json_decref(bodies[--n_bodies]);
}

static int
def(const char *json, struct sbx_build_def *d)
{
    json_error_t jerr;
    json_t *body = json_loads(json, 0, &jerr);
    CHECK(body != NULL && n_bodies < sizeof(bodies) / sizeof(bodies[0]));
    bodies[n_bodies++] = body;
    struct sbx_error *err = NULL;
    int rc = sbx_build_def_parse(body, d, &err);
    if (rc < 0)
        fprintf(stderr, "%s\n", err->msg);
    sbx_error_free(err);
    return rc;
}

TEST(build_definitions)
{
    struct sbx_build_def d;
    const char *hash = "3a7b0000000000000000000000000000000000000000000000000000000000ff";
    char ok[1024];
    snprintf(ok, sizeof(ok),
             "{\"startCmd\":\"echo hi\",\"readyCmd\":\"sleep 1\",\"force\":true,"
             "\"fromImage\":\"e2bdev/base\",\"steps\":["
             "{\"type\":\"COPY\",\"args\":[\"folder/*\",\"folder\",\"\",\"\"],\"force\":true,"
             "\"forceUpload\":true,\"filesHash\":\"%s\"},"
             "{\"type\":\"RUN\",\"args\":[\"cat folder/test.txt\"],\"force\":false,\"x\":1},"
             "{\"type\":\"ENV\",\"args\":[\"A\",\"1\",\"B\",\"2\"],\"force\":false},"
             "{\"type\":\"WORKDIR\",\"args\":[\"/app\"],\"force\":false},"
             "{\"type\":\"USER\",\"args\":[\"root\"],\"force\":false}]}",
             hash);
    CHECK(def(ok, &d) == 0);
    CHECK(d.n_steps == 5 && d.force && d.steps[0].force && !d.steps[1].force);
    CHECK(d.steps[0].type == SBX_STEP_COPY && strcmp(d.steps[0].files_hash, hash) == 0);
    CHECK(d.steps[2].type == SBX_STEP_ENV && d.steps[2].n_args == 4);
    CHECK_STR(d.from_image, "e2bdev/base");
    CHECK_STR(d.start_cmd, "echo hi");
    sbx_build_def_fini(&d);
    /* Refused: no base, two bases, bad step types and arguments. */
    CHECK(def("{\"steps\":[]}", &d) < 0);
    CHECK(def("{\"fromImage\":\"a\",\"fromTemplate\":\"b\"}", &d) < 0);
    CHECK(def("{\"fromTemplate\":\"b\",\"steps\":[{\"type\":\"ADD\",\"args\":[]}]}", &d) < 0);
    CHECK(def("{\"fromTemplate\":\"b\",\"steps\":[{\"type\":\"ENV\",\"args\":[\"A\"]}]}", &d) < 0);
    CHECK(def("{\"fromTemplate\":\"b\",\"steps\":[{\"type\":\"COPY\",\"args\":[\"a\",\"b\"]}]}",
              &d) < 0);
    CHECK(def("{\"fromTemplate\":\"b\",\"steps\":[{\"type\":\"USER\",\"args\":[\"a b\"]}]}", &d) <
          0);
    CHECK(def("{\"fromTemplate\":\"b\",\"steps\":[{\"type\":\"RUN\",\"args\":[1]}]}", &d) < 0);
    CHECK(def("{\"fromTemplate\":\"b\",\"steps\":{}}", &d) < 0);
    bodies_free();
}

static void
expands(const char *in, const char *want)
{
    char *got = sbx_template_env_expand(in);
    CHECK_STR(got, want);
    free(got);
}

TEST(env_values_are_expanded_as_e2b_does)
{
    expands("/opt/x/bin:$PATH", "/opt/x/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                "/sbin:/bin");
    expands("${HOME}/.cache", "/root/.cache");
    expands("$EARLIER-x", "-x"); /* not the build's env: empty */
    expands("a\\$b \\\\ \\\"", "a$b \\ \"");
    expands("$(id) `id` $1 ${X:-y} $", "$(id) `id` $1 ${X:-y} $");
    expands("plain", "plain");
}

TEST_MAIN(30)
