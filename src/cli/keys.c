/* sbx keys: the daemon's API keys (an admin key is needed). create prints the new key, once;
 * ls shows names and masks, never secrets; revoke takes ids or unique names. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"

static const char usage[] =
    "usage: sbx keys create NAME [--admin] [--format table|json]\n"
    "       sbx keys ls [--format table|json]\n"
    "       sbx keys revoke ID|NAME...\n"
    "Manages the daemon's API keys (needs an admin key). create prints the new key on stdout;\n"
    "it is never shown again. An admin key may also manage keys and read /metrics.\n";

struct keys_args {
    bool admin;
    bool json;
};

enum { OPT_ADMIN = 1, OPT_FORMAT };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct keys_args *a = ud;
    if (opt == OPT_ADMIN) {
        a->admin = true;
        return 0;
    }
    if (opt == OPT_FORMAT)
        return sbx_cli_format_parse(arg, &a->json, err);
    return -1;
}

static void
print_mask(json_t *k, char *out, size_t n)
{
    json_t *m = json_object_get(k, "mask");
    const char *type = json_string_value(json_object_get(m, "prefix"));
    const char *pre = json_string_value(json_object_get(m, "maskedValuePrefix"));
    const char *suf = json_string_value(json_object_get(m, "maskedValueSuffix"));
    if (pre == NULL || *pre == '\0')
        snprintf(out, n, "(unknown)");
    else
        snprintf(out, n, "%s%s...%s", type ? type : "", pre, suf ? suf : "");
}

static int
list(const struct sbx_cli_config *cfg, bool json, struct sbx_error **err)
{
    json_t *keys = NULL;
    if (sbx_cli_api_json(cfg, "GET", "/api-keys", NULL, &keys, err) < 0)
        return -1;
    int rc = 0;
    if (json) {
        rc = sbx_cli_print_json(keys);
    } else {
        printf("%-36s  %-20s  %-15s  %-5s  %-20s  %s\n", "ID", "NAME", "KEY", "ADMIN", "CREATED",
               "LAST USED");
        size_t i;
        json_t *k;
        json_array_foreach (keys, i, k) {
            char mask[64];
            print_mask(k, mask, sizeof(mask));
            const char *last = json_string_value(json_object_get(k, "lastUsed"));
            printf("%-36s  %-20s  %-15s  %-5s  %-20.19s  %.19s\n",
                   json_string_value(json_object_get(k, "id")),
                   json_string_value(json_object_get(k, "name")), mask,
                   json_is_true(json_object_get(k, "admin")) ? "yes" : "no",
                   json_string_value(json_object_get(k, "createdAt")), last ? last : "never");
        }
        rc = fflush(stdout) == 0 ? 0 : SBX_CLI_EXIT_FAILURE;
    }
    json_decref(keys);
    return rc;
}

static int
create(const struct sbx_cli_config *cfg, const char *name, const struct keys_args *a,
       struct sbx_error **err)
{
    json_t *body = json_pack("{s:s,s:b}", "name", name, "admin", a->admin);
    json_t *key = NULL;
    int rc = body ? sbx_cli_api_json(cfg, "POST", "/api-keys", body, &key, err)
                  : sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "the name is not valid UTF-8");
    json_decref(body);
    if (rc < 0)
        return -1;
    if (a->json) {
        rc = sbx_cli_print_json(key);
    } else {
        printf("%s\n", json_string_value(json_object_get(key, "key")));
        fprintf(stderr, "created %skey '%s' (id %s); it is not shown again\n",
                a->admin ? "admin " : "", name, json_string_value(json_object_get(key, "id")));
        rc = fflush(stdout) == 0 ? 0 : SBX_CLI_EXIT_FAILURE;
    }
    json_decref(key);
    return rc;
}

/* The id of the key named by id_or_name: an id as is, else the one key of that name. */
static int
resolve(const struct sbx_cli_config *cfg, const char *id_or_name, char *id, size_t n,
        struct sbx_error **err)
{
    json_t *keys = NULL;
    if (sbx_cli_api_json(cfg, "GET", "/api-keys", NULL, &keys, err) < 0)
        return -1;
    size_t i, found = 0;
    json_t *k;
    json_array_foreach (keys, i, k) {
        const char *kid = json_string_value(json_object_get(k, "id"));
        if (kid && strcmp(kid, id_or_name) == 0) {
            found = 1;
            snprintf(id, n, "%s", kid);
            break;
        }
        const char *name = json_string_value(json_object_get(k, "name"));
        if (name && strcmp(name, id_or_name) == 0 && found++ == 0)
            snprintf(id, n, "%s", kid);
    }
    json_decref(keys);
    if (found == 0)
        return sbx_error_set(err, SBX_NOT_FOUND, 0, "no API key has the id or name '%s'",
                             id_or_name);
    if (found > 1)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "%zu keys are named '%s': revoke by id (sbx keys ls)", found,
                             id_or_name);
    return 0;
}

static int
revoke_key(const struct sbx_cli_config *cfg, const char *id_or_name, struct sbx_error **err)
{
    char id[64], path[128];
    if (resolve(cfg, id_or_name, id, sizeof(id), err) < 0)
        return -1;
    char *esc = curl_easy_escape(NULL, id, 0);
    snprintf(path, sizeof(path), "/api-keys/%s", esc ? esc : "");
    curl_free(esc);
    if (sbx_cli_api_json(cfg, "DELETE", path, NULL, NULL, err) < 0)
        return -1;
    fprintf(stderr, "revoked %s\n", id);
    return 0;
}

int
sbx_cli_keys(int argc, char **argv)
{
    static const struct option opts[] = {
        {"admin", no_argument, NULL, OPT_ADMIN},
        {"format", required_argument, NULL, OPT_FORMAT},
        {NULL, 0, NULL, 0},
    };
    static const struct sbx_cli_verb verb = {"keys", usage, "", opts, on_opt, 1, -1, "subcommand"};
    struct keys_args a = {0};
    struct sbx_error *err = NULL;
    struct sbx_cli_config cfg;
    int first, status = sbx_cli_begin(&verb, argc, argv, &a, &first, &cfg);
    if (status >= 0)
        return status;
    const char *sub = argv[first];
    int nargs = argc - first - 1;
    bool ok = (strcmp(sub, "create") == 0 && nargs == 1) ||
              (strcmp(sub, "ls") == 0 && nargs == 0) || (strcmp(sub, "revoke") == 0 && nargs >= 1);
    if (!ok) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "wrong arguments for 'keys %s'", sub);
        sbx_cli_config_fini(&cfg);
        return sbx_cli_usage_error("keys", usage, err);
    }
    status = 0;
    if (strcmp(sub, "ls") == 0) {
        if ((status = list(&cfg, a.json, &err)) < 0)
            status = sbx_cli_fail("keys", err);
    } else if (strcmp(sub, "create") == 0) {
        if ((status = create(&cfg, argv[first + 1], &a, &err)) < 0)
            status = sbx_cli_fail("keys", err);
    } else {
        for (int i = first + 1; i < argc; i++) {
            if (revoke_key(&cfg, argv[i], &err) < 0) {
                status = sbx_cli_fail("keys", err);
                err = NULL;
            }
        }
    }
    sbx_cli_config_fini(&cfg);
    return status;
}
