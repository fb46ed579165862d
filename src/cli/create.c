/* sbx create: POST /sandboxes (the v1 create every SDK version understands) and print the
 * new sandbox's id. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/limits.h"
#include "cli/client.h"

static const char usage[] =
    "usage: sbx create [--template T] [--timeout SECONDS] [--metadata K=V]... [--env K=V]...\n"
    "                  [--no-internet] [--api-url URL] [--api-key KEY]\n"
    "Creates a sandbox (template 'base', timeout 300 s by default) and prints its id.\n";

enum { OPT_TEMPLATE = 1, OPT_TIMEOUT, OPT_METADATA, OPT_ENV, OPT_NO_INTERNET };

const struct option sbx_cli_create_options[] = {
    {"template", required_argument, NULL, OPT_TEMPLATE},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"metadata", required_argument, NULL, OPT_METADATA},
    {"env", required_argument, NULL, OPT_ENV},
    {"no-internet", no_argument, NULL, OPT_NO_INTERNET},
    {NULL, 0, NULL, 0},
};

int
sbx_cli_create_on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct sbx_cli_create_args *a = ud;
    switch (opt) {
    case OPT_TEMPLATE:
        if (*arg == '\0')
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "empty --template");
        a->template_id = arg;
        return 0;
    case OPT_TIMEOUT: {
        char *end;
        errno = 0;
        long v = strtol(arg, &end, 10);
        if (errno != 0 || end == arg || *end != '\0' || v < 1 || v > SBX_MAX_TIMEOUT_S)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "--timeout must be a number of seconds in 1..%d",
                                 SBX_MAX_TIMEOUT_S);
        a->timeout_s = v;
        return 0;
    }
    case OPT_METADATA:
        return sbx_cli_add_kv(a->metadata, arg, "--metadata", err);
    case OPT_ENV:
        return sbx_cli_add_kv(a->env, arg, "--env", err);
    case OPT_NO_INTERNET:
        a->allow_internet = false;
        return 0;
    }
    return -1;
}

int
sbx_cli_create_parse(int argc, char **argv, struct sbx_cli_create_args *a, struct sbx_error **err)
{
    sbx_cli_create_args_init(a);
    if (a->metadata == NULL || a->env == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    int first;
    if (sbx_cli_getopt(argc, argv, "", sbx_cli_create_options, &a->common, sbx_cli_create_on_opt, a,
                       &first, err) < 0)
        return -1;
    if (first != argc)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "unexpected argument '%s'", argv[first]);
    return 0;
}

void
sbx_cli_create_args_init(struct sbx_cli_create_args *a)
{
    memset(a, 0, sizeof(*a));
    a->template_id = "base";
    a->timeout_s = SBX_DEFAULT_TIMEOUT_S;
    a->allow_internet = true;
    a->metadata = json_object();
    a->env = json_object();
}

void
sbx_cli_create_args_fini(struct sbx_cli_create_args *a)
{
    json_decref(a->metadata);
    json_decref(a->env);
    a->metadata = a->env = NULL;
}

json_t *
sbx_cli_create_body(const struct sbx_cli_create_args *a)
{
    /* The body the Python SDK sends: every field present. secure:true makes the daemon
     * issue an envdAccessToken, as the SDKs ask by default. */
    return json_pack("{s:s, s:I, s:b, s:b, s:O, s:O}", "templateID", a->template_id, "timeout",
                     (json_int_t)a->timeout_s, "secure", 1, "allow_internet_access",
                     a->allow_internet, "metadata", a->metadata, "envVars", a->env);
}

int
sbx_cli_create_sandbox(const struct sbx_cli_config *cfg, const struct sbx_cli_create_args *a,
                       char *id, size_t n, struct sbx_error **err)
{
    json_t *body = sbx_cli_create_body(a), *sb = NULL;
    int rc = body ? sbx_cli_api_json(cfg, "POST", "/sandboxes", body, &sb, err)
                  : sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    json_decref(body);
    const char *sid = json_string_value(json_object_get(sb, "sandboxID"));
    if (rc == 0 && sid == NULL)
        rc = sbx_error_set(err, SBX_INTERNAL, 0, "the daemon's answer has no sandboxID");
    if (rc == 0)
        snprintf(id, n, "%s", sid);
    json_decref(sb);
    return rc;
}

int
sbx_cli_create(int argc, char **argv)
{
    struct sbx_cli_create_args a;
    struct sbx_error *err = NULL;
    if (sbx_cli_create_parse(argc, argv, &a, &err) < 0) {
        sbx_cli_create_args_fini(&a);
        return sbx_cli_usage_error("create", usage, err);
    }
    if (a.common.help) {
        sbx_cli_create_args_fini(&a);
        fputs(usage, stdout);
        return 0;
    }
    struct sbx_cli_config cfg;
    if (sbx_cli_config_init(&cfg, &a.common, &err) < 0) {
        sbx_cli_create_args_fini(&a);
        return sbx_cli_fail("create", err);
    }
    char id[SBX_CLI_ID_MAX + 1];
    int rc = sbx_cli_create_sandbox(&cfg, &a, id, sizeof(id), &err);
    sbx_cli_create_args_fini(&a);
    sbx_cli_config_fini(&cfg);
    if (rc < 0)
        return sbx_cli_fail("create", err);
    printf("%s\n", id);
    return fflush(stdout) == 0 ? 0 : SBX_CLI_EXIT_FAILURE;
}
