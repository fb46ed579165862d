/* sbx kill: DELETE /sandboxes/<id> for each id given. */
#include <stdio.h>

#include "cli/client.h"

static const char usage[] = "usage: sbx kill [--api-url URL] [--api-key KEY] ID...\n";

static int
kill_one(const struct sbx_cli_config *cfg, const char *id, struct sbx_error **err)
{
    char full[SBX_CLI_ID_MAX + 1], path[32 + SBX_CLI_ID_MAX];
    if (sbx_cli_resolve_id(cfg, id, full, sizeof(full), err) < 0)
        return -1;
    id = full;
    snprintf(path, sizeof(path), "/sandboxes/%s", id);
    struct sbx_cli_response resp;
    int rc = sbx_cli_api_call(cfg, "DELETE", path, NULL, &resp, err);
    if (rc == 0 && resp.status == 404)
        rc = sbx_error_set(err, SBX_NOT_FOUND, 0, "sandbox %s not found", id);
    else if (rc == 0 && resp.status / 100 != 2)
        rc = sbx_cli_api_error(&resp, err);
    sbx_cli_response_fini(&resp);
    return rc;
}

int
sbx_cli_kill(int argc, char **argv)
{
    struct sbx_cli_common common = {0};
    struct sbx_error *err = NULL;
    int first;
    if (sbx_cli_getopt(argc, argv, "", NULL, &common, NULL, NULL, &first, &err) < 0)
        return sbx_cli_usage_error("kill", usage, err);
    if (common.help) {
        fputs(usage, stdout);
        return 0;
    }
    if (first == argc) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "missing sandbox id");
        return sbx_cli_usage_error("kill", usage, err);
    }
    struct sbx_cli_config cfg;
    if (sbx_cli_config_init(&cfg, &common, &err) < 0)
        return sbx_cli_fail("kill", err);
    int status = 0;
    for (int i = first; i < argc; i++) {
        if (kill_one(&cfg, argv[i], &err) < 0) {
            status = sbx_cli_fail("kill", err);
            err = NULL;
        }
    }
    sbx_cli_config_fini(&cfg);
    return status;
}
