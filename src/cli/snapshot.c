/* sbx snapshot: POST /sandboxes/<id>/snapshots, like `docker commit ID [NAME]`: the sandbox's
 * files become a snapshot it goes on running beside, and its id (what `sbx create` and the
 * SDKs' Sandbox.create take) is printed. */
#include <stdio.h>

#include "cli/client.h"

static const char usage[] =
    "usage: sbx snapshot [--api-url URL] [--api-key KEY] ID [NAME[:TAG]]\n"
    "Copies the files of a running sandbox into a snapshot (not its processes) and prints the\n"
    "snapshot's id; sandboxes created from that id start with those files.\n";

int
sbx_cli_snapshot(int argc, char **argv)
{
    static const struct sbx_cli_verb verb = {"snapshot", usage, "", NULL, NULL, 1, 2, "sandbox id"};
    struct sbx_error *err = NULL;
    struct sbx_cli_config cfg;
    int first, status = sbx_cli_begin(&verb, argc, argv, NULL, &first, &cfg);
    if (status >= 0)
        return status;
    char id[SBX_CLI_ID_MAX + 1], path[128];
    json_t *body = first + 1 < argc ? json_pack("{s:s}", "name", argv[first + 1]) : json_object();
    json_t *snap = NULL;
    if (sbx_cli_resolve_id(&cfg, argv[first], id, sizeof(id), &err) == 0) {
        snprintf(path, sizeof(path), "/sandboxes/%s/snapshots", id);
        sbx_cli_api_json(&cfg, "POST", path, body, &snap, &err);
    }
    json_decref(body);
    const char *sid = json_string_value(json_object_get(snap, "snapshotID"));
    if (sid)
        printf("%s\n", sid);
    else
        status = sbx_cli_fail("snapshot", err);
    json_decref(snap);
    sbx_cli_config_fini(&cfg);
    return sid ? 0 : status;
}
