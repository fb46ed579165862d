/* sbx stats: live CPU, memory and disk of running sandboxes (GET /sandboxes/<id>/metrics),
 * refreshed every 2 s on a terminal like `docker stats`; once with --no-stream or when stdout
 * is not a terminal. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/client.h"

#define REFRESH_S 2

static const char usage[] =
    "usage: sbx stats [--no-stream] [--format table|json] [--api-url URL] [--api-key KEY]\n"
    "                 [ID...]\n"
    "Shows CPU, memory and disk use of the given sandboxes (all running ones by default).\n";

struct stats_args {
    bool no_stream;
    bool json;
};

enum { OPT_NO_STREAM = 1, OPT_FORMAT };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct stats_args *a = ud;
    if (opt == OPT_NO_STREAM) {
        a->no_stream = true;
        return 0;
    }
    return opt == OPT_FORMAT ? sbx_cli_format_parse(arg, &a->json, err) : -1;
}

static void
human(double bytes, char *out, size_t n)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(out, n, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

/* One sample of each sandbox: {"sandboxID", ...the metric} in rows. */
static int
sample(const struct sbx_cli_config *cfg, json_t *ids, json_t *rows, struct sbx_error **err)
{
    size_t i;
    json_t *id;
    json_array_foreach (ids, i, id) {
        char path[160];
        snprintf(path, sizeof(path), "/sandboxes/%s/metrics", json_string_value(id));
        json_t *m = NULL;
        struct sbx_error *e = NULL;
        if (sbx_cli_api_json(cfg, "GET", path, NULL, &m, &e) < 0) {
            /* A sandbox that ended since the list: leave it out. */
            bool gone = e->code == SBX_NOT_FOUND;
            if (!gone) {
                *err = e;
                return -1;
            }
            sbx_error_free(e);
            continue;
        }
        json_t *last = json_array_get(m, json_array_size(m) - 1);
        if (last) {
            json_t *row = json_deep_copy(last);
            json_object_set(row, "sandboxID", id);
            json_array_append_new(rows, row);
        }
        json_decref(m);
    }
    return 0;
}

static void
print_table(json_t *rows)
{
    printf("%-22s %7s %23s %6s %21s\n", "SANDBOX", "CPU %", "MEM USAGE / LIMIT", "MEM %",
           "DISK USAGE / LIMIT");
    size_t i;
    json_t *r;
    json_array_foreach (rows, i, r) {
        double mem = json_number_value(json_object_get(r, "memUsed"));
        double limit = json_number_value(json_object_get(r, "memTotal"));
        char mu[16], ml[16], du[16], dl[16], memcol[40], diskcol[40];
        human(mem, mu, sizeof(mu));
        human(limit, ml, sizeof(ml));
        human(json_number_value(json_object_get(r, "diskUsed")), du, sizeof(du));
        human(json_number_value(json_object_get(r, "diskTotal")), dl, sizeof(dl));
        snprintf(memcol, sizeof(memcol), "%s / %s", mu, ml);
        snprintf(diskcol, sizeof(diskcol), "%s / %s", du, dl);
        printf("%-22s %6.1f%% %23s %5.1f%% %21s\n",
               json_string_value(json_object_get(r, "sandboxID")),
               json_number_value(json_object_get(r, "cpuUsedPct")), memcol,
               limit > 0 ? 100.0 * mem / limit : 0.0, diskcol);
    }
}

int
sbx_cli_stats(int argc, char **argv)
{
    static const struct option opts[] = {{"no-stream", no_argument, NULL, OPT_NO_STREAM},
                                         {"format", required_argument, NULL, OPT_FORMAT},
                                         {NULL, 0, NULL, 0}};
    static const struct sbx_cli_verb verb = {"stats", usage, "", opts, on_opt, 0, -1, NULL};
    struct stats_args a = {0};
    struct sbx_error *err = NULL;
    struct sbx_cli_config cfg;
    int first, status = sbx_cli_begin(&verb, argc, argv, &a, &first, &cfg);
    if (status >= 0)
        return status;
    bool stream = !a.no_stream && !a.json && isatty(STDOUT_FILENO);
    int rc = 0;
    for (;;) {
        json_t *ids = json_array(), *rows = json_array();
        if (first < argc) {
            for (int i = first; i < argc && rc == 0; i++) {
                char id[SBX_CLI_ID_MAX + 1];
                rc = sbx_cli_resolve_id(&cfg, argv[i], id, sizeof(id), &err);
                json_array_append_new(ids, json_string(id));
            }
        } else {
            json_t *all = json_array();
            rc = sbx_cli_list_sandboxes(&cfg, "running", all, &err);
            size_t i;
            json_t *s;
            json_array_foreach (all, i, s)
                json_array_append(ids, json_object_get(s, "sandboxID"));
            json_decref(all);
        }
        if (rc == 0)
            rc = sample(&cfg, ids, rows, &err);
        if (rc == 0) {
            if (stream)
                fputs("\033[H\033[2J", stdout); /* the terminal's top, cleared */
            if (a.json)
                sbx_cli_print_json(rows);
            else
                print_table(rows);
            fflush(stdout);
        }
        json_decref(ids);
        json_decref(rows);
        if (rc < 0 || !stream)
            break;
        sleep(REFRESH_S);
    }
    sbx_cli_config_fini(&cfg);
    return rc < 0 ? sbx_cli_fail("stats", err) : 0;
}
