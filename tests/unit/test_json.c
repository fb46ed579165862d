/* The typed JSON field helpers shared by the daemon and the agent (src/json/json.c); here the
 * environment-variable rule that create, process Start and /execute all apply. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "base/limits.h"
#include "harness.h"
#include "json/json.h"

/* sbx_json_opt_env_map on {"envs": <map_json>}: its return value, and the message if any. */
static int
env_map(const char *map_json, char *msg, size_t msglen)
{
    char body[4096];
    snprintf(body, sizeof(body), "{\"envs\":%s}", map_json);
    json_error_t jerr;
    json_t *obj = json_loads(body, JSON_ALLOW_NUL, &jerr);
    CHECK(obj != NULL);
    json_t *out = NULL;
    struct sbx_error *e = NULL;
    int rc = sbx_json_opt_env_map(obj, "envs", &out, &e);
    CHECK((rc < 0) == (e != NULL));
    CHECK(rc != 1 || json_is_object(out));
    snprintf(msg, msglen, "%s", e ? e->msg : "");
    if (e)
        CHECK(e->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(e);
    json_decref(obj);
    return rc;
}

TEST(env_names_execve_can_carry_are_accepted)
{
    char msg[512];
    /* E2B requires no POSIX shell name: dots, dashes, digits first, spaces, UTF-8. */
    CHECK(env_map("{\"A\":\"1\",\"my-var.1\":\"\",\"1X\":\"x\",\"A B\":\"y\",\"\\u00e9\":\"z\"}",
                  msg, sizeof(msg)) == 1);
    CHECK(env_map("{}", msg, sizeof(msg)) == 1);
    CHECK(env_map("null", msg, sizeof(msg)) == 0);
    /* A value may hold '=' and newlines: only the name is split at the first '='. */
    CHECK(env_map("{\"A\":\"b=c\\nd\"}", msg, sizeof(msg)) == 1);
}

TEST(env_names_with_equals_or_empty_are_refused_by_name)
{
    char msg[512];
    CHECK(env_map("{\"OK\":\"1\",\"A=B\":\"x\"}", msg, sizeof(msg)) < 0);
    CHECK_STR(msg, "field 'envs': invalid environment variable name 'A=B' (names must be "
                   "non-empty, without '=' or NUL)");
    CHECK(env_map("{\"=\":\"x\"}", msg, sizeof(msg)) < 0);
    CHECK(strstr(msg, "name '='") != NULL);
    CHECK(env_map("{\"\":\"x\"}", msg, sizeof(msg)) < 0);
    CHECK(strstr(msg, "name ''") != NULL);
}

TEST(env_values_must_be_strings_without_nul)
{
    char msg[512];
    CHECK(env_map("{\"A\":1}", msg, sizeof(msg)) < 0);
    CHECK(strstr(msg, "'A' is not a string") != NULL);
    CHECK(env_map("{\"A\":null}", msg, sizeof(msg)) < 0);
    CHECK(env_map("[\"A\"]", msg, sizeof(msg)) < 0);
    CHECK(env_map("{\"CUT\":\"a\\u0000b\"}", msg, sizeof(msg)) < 0);
    CHECK_STR(msg, "field 'envs': the value of environment variable 'CUT' contains a NUL "
                   "character");
}

TEST(env_map_size_is_bounded)
{
    json_t *obj = json_object(), *map = json_object();
    for (int i = 0; i <= SBX_MAX_ENV_VARS; i++) {
        char k[16];
        snprintf(k, sizeof(k), "V%d", i);
        json_object_set_new(map, k, json_string("x"));
    }
    json_object_set_new(obj, "envs", map);
    json_t *out = NULL;
    struct sbx_error *e = NULL;
    CHECK(sbx_json_opt_env_map(obj, "envs", &out, &e) < 0);
    CHECK(strstr(e->msg, "more than") != NULL);
    sbx_error_free(e);
    e = NULL;
    json_object_del(map, "V0");
    CHECK(sbx_json_opt_env_map(obj, "envs", &out, &e) == 1 && out == map);
    json_decref(obj);
}

TEST_MAIN(10)
