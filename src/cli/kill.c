/* sbx kill: DELETE /sandboxes/<id> for each id given, or for every running sandbox (--all),
 * optionally only those whose metadata has every -m KEY=VALUE given. */
#include <stdio.h>
#include <string.h>

#include "cli/client.h"

static const char usage[] =
    "usage: sbx kill [--api-url URL] [--api-key KEY] ID...\n"
    "       sbx kill --all [-m KEY=VALUE]...\n"
    "--all kills every sandbox, or with -m, --metadata those whose metadata matches all pairs.\n";

struct kill_args {
    bool all;
    json_t *metadata;
};

enum { OPT_ALL = 1, OPT_METADATA = 'm' };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct kill_args *a = ud;
    if (opt == OPT_ALL) {
        a->all = true;
        return 0;
    }
    return opt == OPT_METADATA ? sbx_cli_add_kv(a->metadata, arg, "-m", err) : -1;
}

static bool
matches(json_t *sandbox, json_t *want)
{
    json_t *have = json_object_get(sandbox, "metadata");
    const char *k;
    json_t *v;
    json_object_foreach (want, k, v)
        if (!json_equal(json_object_get(have, k), v))
            return false;
    return true;
}

/* The ids of every sandbox that matches; *n of them. */
static json_t *
select_all(const struct sbx_cli_config *cfg, json_t *metadata, struct sbx_error **err)
{
    json_t *all = json_array(), *ids = json_array();
    if (sbx_cli_list_sandboxes(cfg, NULL, all, err) < 0) {
        json_decref(all);
        json_decref(ids);
        return NULL;
    }
    size_t i;
    json_t *s;
    json_array_foreach (all, i, s)
        if (matches(s, metadata))
            json_array_append(ids, json_object_get(s, "sandboxID"));
    json_decref(all);
    return ids;
}

int
sbx_cli_kill(int argc, char **argv)
{
    static const struct option opts[] = {{"all", no_argument, NULL, OPT_ALL},
                                         {"metadata", required_argument, NULL, OPT_METADATA},
                                         {NULL, 0, NULL, 0}};
    struct sbx_cli_common common = {0};
    struct kill_args a = {.metadata = json_object()};
    struct sbx_error *err = NULL;
    int first, status = 0;
    if (sbx_cli_getopt(argc, argv, "m:", opts, &common, on_opt, &a, &first, &err) < 0) {
        status = sbx_cli_usage_error("kill", usage, err);
    } else if (common.help) {
        fputs(usage, stdout);
    } else if (a.all == (first < argc) || (!a.all && json_object_size(a.metadata))) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0,
                      a.all           ? "--all takes no ids"
                      : first == argc ? "missing sandbox id"
                                      : "-m needs --all");
        status = sbx_cli_usage_error("kill", usage, err);
    } else {
        struct sbx_cli_config cfg;
        json_t *ids = NULL;
        if (sbx_cli_config_init(&cfg, &common, &err) < 0) {
            json_decref(a.metadata);
            return sbx_cli_fail("kill", err);
        }
        if (a.all && (ids = select_all(&cfg, a.metadata, &err)) == NULL)
            status = sbx_cli_fail("kill", err);
        size_t n = a.all ? json_array_size(ids) : (size_t)(argc - first);
        for (size_t i = 0; status == 0 && i < n; i++) {
            const char *id = a.all ? json_string_value(json_array_get(ids, i)) : argv[first + i];
            if (sbx_cli_object_call(&cfg, "sandbox", id, "DELETE", "", NULL, &err) < 0) {
                status = sbx_cli_fail("kill", err);
                err = NULL;
            } else if (a.all) {
                printf("%s\n", id);
            }
        }
        if (a.all && ids)
            fprintf(stderr, "killed %zu sandbox%s\n", n, n == 1 ? "" : "es");
        json_decref(ids);
        sbx_cli_config_fini(&cfg);
    }
    json_decref(a.metadata);
    return status;
}
