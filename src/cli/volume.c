/* sbx volume ls|create|rm: the volumes of the daemon (GET, POST /volumes, DELETE
 * /volumes/<id>). */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "base/cleanup.h"
#include "cli/client.h"

static const char usage[] = "usage: sbx volume ls [--format table|json]\n"
                            "       sbx volume create [--format table|json] NAME\n"
                            "       sbx volume rm ID...\n"
                            "       (each with [--api-url URL] [--api-key KEY])\n";

enum { OPT_JSON = 1, OPT_FORMAT };

/* --format json, or --json for short, as on the other listing verbs. */
static int
on_json(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    if (opt == OPT_FORMAT)
        return sbx_cli_format_parse(arg, ud, err);
    *(bool *)ud = opt == OPT_JSON;
    return opt == OPT_JSON ? 0 : -1;
}

static const struct option json_opts[] = {{"json", no_argument, NULL, OPT_JSON},
                                          {"format", required_argument, NULL, OPT_FORMAT},
                                          {NULL, 0, NULL, 0}};

/* ls and create: one call, its answer printed as JSON or as "ID  NAME" lines. */
static int
list_or_create(int argc, char **argv, bool create)
{
    const char *verb = create ? "volume create" : "volume ls";
    struct sbx_cli_common common = {0};
    struct sbx_error *err = NULL;
    bool json = false;
    int first;
    if (sbx_cli_getopt(argc, argv, "", json_opts, &common, on_json, &json, &first, &err) < 0)
        return sbx_cli_usage_error(verb, usage, err);
    if (common.help) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc - first != (create ? 1 : 0)) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, create ? "give one name" : "no operands");
        return sbx_cli_usage_error(verb, usage, err);
    }
    struct sbx_cli_config cfg;
    if (sbx_cli_config_init(&cfg, &common, &err) < 0)
        return sbx_cli_fail(verb, err);
    json_t *body = create ? json_pack("{s:s}", "name", argv[first]) : NULL;
    struct sbx_cli_response resp;
    json_t *out = NULL;
    if (sbx_cli_api_call(&cfg, create ? "POST" : "GET", "/volumes", body, &resp, &err) == 0) {
        if (resp.status / 100 != 2)
            sbx_cli_api_error(&resp, &err);
        else
            out = sbx_cli_response_json(&resp, &err);
    }
    json_decref(body);
    sbx_cli_response_fini(&resp);
    sbx_cli_config_fini(&cfg);
    if (out == NULL)
        return sbx_cli_fail(verb, err);
    if (json) {
        _cleanup_free_ char *s = json_dumps(out, JSON_INDENT(2));
        printf("%s\n", s);
    } else if (create) {
        printf("%s\n", json_string_value(json_object_get(out, "volumeID")));
    } else {
        printf("%-22s %s\n", "VOLUME ID", "NAME");
        size_t i;
        json_t *v;
        json_array_foreach (out, i, v)
            printf("%-22s %s\n", json_string_value(json_object_get(v, "volumeID")),
                   json_string_value(json_object_get(v, "name")));
    }
    json_decref(out);
    return fflush(stdout) == 0 ? 0 : SBX_CLI_EXIT_FAILURE;
}

static int
remove_one(const struct sbx_cli_config *cfg, const char *id, void *ud, struct sbx_error **err)
{
    return sbx_cli_object_call(cfg, "volume", id, "DELETE", "", NULL, err);
}

int
sbx_cli_volume(int argc, char **argv)
{
    static const struct sbx_cli_each rm = {
        .verb = "volume rm", .usage = usage, .kind = "volume", .one = remove_one};
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(sub, "ls") == 0)
        return list_or_create(argc - 1, argv + 1, false);
    if (strcmp(sub, "create") == 0)
        return list_or_create(argc - 1, argv + 1, true);
    if (strcmp(sub, "rm") == 0)
        return sbx_cli_each_id(argc - 1, argv + 1, &rm, NULL);
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    fprintf(stderr, "sbx volume: unknown command '%s'\n%s", sub, usage);
    return SBX_CLI_EXIT_USAGE;
}
