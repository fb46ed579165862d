/* sbx inspect: the daemon's full record of sandboxes (GET /sandboxes/<id>), as a JSON array
 * like `docker inspect`; --format table shows the main fields one per line. */
#include <stdio.h>
#include <string.h>

#include "cli/client.h"

static const char usage[] =
    "usage: sbx inspect [--format json|table] [--api-url URL] [--api-key KEY] ID...\n"
    "Prints what the daemon knows of each sandbox: template, times, limits, metadata, state.\n";

enum { OPT_FORMAT = 1 };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    bool *table = ud;
    bool json = true;
    if (opt != OPT_FORMAT || sbx_cli_format_parse(arg, &json, err) < 0)
        return -1;
    *table = !json;
    return 0;
}

static void
print_fields(json_t *info)
{
    const char *k;
    json_t *v;
    json_object_foreach (info, k, v) {
        char *s = json_is_string(v) ? NULL : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        printf("%-20s %s\n", k, s ? s : json_string_value(v));
        free(s);
    }
}

int
sbx_cli_inspect(int argc, char **argv)
{
    static const struct option opts[] = {{"format", required_argument, NULL, OPT_FORMAT},
                                         {NULL, 0, NULL, 0}};
    static const struct sbx_cli_verb verb = {"inspect", usage, "", opts,
                                             on_opt,    1,     -1, "sandbox id"};
    bool table = false;
    struct sbx_error *err = NULL;
    struct sbx_cli_config cfg;
    int first, status = sbx_cli_begin(&verb, argc, argv, &table, &first, &cfg);
    if (status >= 0)
        return status;
    json_t *all = json_array();
    status = 0;
    for (int i = first; i < argc; i++) {
        char id[SBX_CLI_ID_MAX + 1], path[128];
        json_t *info = NULL;
        if (sbx_cli_resolve_id(&cfg, argv[i], id, sizeof(id), &err) == 0) {
            snprintf(path, sizeof(path), "/sandboxes/%s", id);
            sbx_cli_api_json(&cfg, "GET", path, NULL, &info, &err);
        }
        if (info == NULL) {
            status = sbx_cli_fail("inspect", err);
            err = NULL;
            continue;
        }
        json_array_append_new(all, info);
    }
    sbx_cli_config_fini(&cfg);
    if (!table) {
        int rc = sbx_cli_print_json(all);
        json_decref(all);
        return status ? status : rc;
    }
    size_t i;
    json_t *info;
    json_array_foreach (all, i, info) {
        if (i > 0)
            putchar('\n');
        print_fields(info);
    }
    json_decref(all);
    return status ? status : (fflush(stdout) == 0 ? 0 : SBX_CLI_EXIT_FAILURE);
}
