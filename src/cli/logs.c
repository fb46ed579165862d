/* sbx logs: a sandbox's log (GET /v2/sandboxes/<id>/logs), also after it ended; -f follows it
 * until the sandbox ends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/limits.h"
#include "base/util.h"
#include "cli/client.h"

#define FOLLOW_INTERVAL_MS 500

static const char usage[] =
    "usage: sbx logs [-f|--follow] [--level debug|info|warn|error] [--format table|json]\n"
    "                [--api-url URL] [--api-key KEY] ID\n"
    "Prints a sandbox's log: its processes (start, exit status, signal, out of memory), its\n"
    "agent's events and the daemon's (created, timed out, killed). Kept after the sandbox\n"
    "ends, for the daemon's log retention. -f follows the log until the sandbox ends.\n";

struct logs_args {
    bool follow;
    bool json;
    const char *level;
};

enum { OPT_FOLLOW = 'f', OPT_LEVEL = 1, OPT_FORMAT };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct logs_args *a = ud;
    switch (opt) {
    case OPT_FOLLOW:
        a->follow = true;
        return 0;
    case OPT_LEVEL:
        if (strcmp(arg, "debug") && strcmp(arg, "info") && strcmp(arg, "warn") &&
            strcmp(arg, "error"))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid --level '%s'", arg);
        a->level = arg;
        return 0;
    case OPT_FORMAT:
        return sbx_cli_format_parse(arg, &a->json, err);
    }
    return -1;
}

static void
print_entry(json_t *e, bool json)
{
    if (json) {
        json_dumpf(e, stdout, JSON_COMPACT);
        fputc('\n', stdout);
        return;
    }
    const char *logger = json_string_value(json_object_get(json_object_get(e, "fields"), "logger"));
    printf("%s  %-5s  %-6s  %s\n", json_string_value(json_object_get(e, "timestamp")),
           json_string_value(json_object_get(e, "level")), logger ? logger : "",
           json_string_value(json_object_get(e, "message")));
}

/* Prints the entries from cursor on, skipping the first *skip (those of time cursor that were
 * printed already); moves cursor and skip past what it printed. */
static int
print_since(const struct sbx_cli_config *cfg, const char *id, const struct logs_args *a,
            int64_t *cursor, size_t *skip, struct sbx_error **err)
{
    for (;;) {
        char path[256];
        snprintf(path, sizeof(path), "/v2/sandboxes/%s/logs?cursor=%lld&limit=%d%s%s", id,
                 (long long)*cursor, SBX_LOG_PAGE_MAX, a->level ? "&level=" : "",
                 a->level ? a->level : "");
        json_t *body = NULL;
        if (sbx_cli_api_json(cfg, "GET", path, NULL, &body, err) < 0)
            return -1;
        json_t *entries = json_object_get(body, "logs");
        size_t i, n = json_array_size(entries), to_skip = *skip, at_cursor = *skip;
        json_t *e;
        json_array_foreach (entries, i, e) {
            int64_t ts = 0;
            sbx_parse_rfc3339(json_string_value(json_object_get(e, "timestamp")), &ts);
            if (ts == *cursor && to_skip > 0) {
                to_skip--;
                continue;
            }
            print_entry(e, a->json);
            if (ts == *cursor) {
                at_cursor++;
            } else {
                *cursor = ts;
                at_cursor = 1;
            }
        }
        *skip = at_cursor;
        json_decref(body);
        fflush(stdout);
        if (n < SBX_LOG_PAGE_MAX)
            return 0;
    }
}

static bool
is_running(const struct sbx_cli_config *cfg, const char *id)
{
    char path[128];
    snprintf(path, sizeof(path), "/sandboxes/%s", id);
    struct sbx_cli_response resp;
    struct sbx_error *err = NULL;
    int rc = sbx_cli_api_call(cfg, "GET", path, NULL, &resp, &err);
    bool running = rc < 0 || resp.status != 404; /* a transport error: try again later */
    sbx_error_free(err);
    sbx_cli_response_fini(&resp);
    return running;
}

int
sbx_cli_logs(int argc, char **argv)
{
    static const struct option opts[] = {
        {"follow", no_argument, NULL, OPT_FOLLOW},
        {"level", required_argument, NULL, OPT_LEVEL},
        {"format", required_argument, NULL, OPT_FORMAT},
        {NULL, 0, NULL, 0},
    };
    static const struct sbx_cli_verb verb = {"logs", usage, "f", opts, on_opt, 1, 1, "sandbox id"};
    struct logs_args a = {0};
    struct sbx_error *err = NULL;
    struct sbx_cli_config cfg;
    int first, status = sbx_cli_begin(&verb, argc, argv, &a, &first, &cfg);
    if (status >= 0)
        return status;
    char id[SBX_CLI_ID_MAX + 1];
    int64_t cursor = 0;
    size_t skip = 0;
    int rc = sbx_cli_resolve_id(&cfg, argv[first], id, sizeof(id), &err);
    if (rc == 0)
        rc = print_since(&cfg, id, &a, &cursor, &skip, &err);
    while (rc == 0 && a.follow) {
        bool running = is_running(&cfg, id);
        /* One more read after the end: the lines of its last moments. */
        rc = print_since(&cfg, id, &a, &cursor, &skip, &err);
        if (!running)
            break;
        struct timespec t = {0, FOLLOW_INTERVAL_MS * 1000000L};
        nanosleep(&t, NULL);
    }
    sbx_cli_config_fini(&cfg);
    if (rc < 0)
        return sbx_cli_fail("logs", err);
    return ferror(stdout) ? SBX_CLI_EXIT_FAILURE : 0;
}
