/* sbx ls: GET /v2/sandboxes, every page, as a table or as JSON. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/cleanup.h"
#include "base/util.h"
#include "cli/client.h"

static const char usage[] =
    "usage: sbx ls [--format table|json] [--state running|paused|running,paused]\n"
    "              [--api-url URL] [--api-key KEY]\n"
    "--json is --format json.\n";

struct ls_args {
    bool json;
    const char *state;
};

enum { OPT_JSON = 1, OPT_STATE, OPT_FORMAT };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct ls_args *a = ud;
    if (opt == OPT_JSON) {
        a->json = true;
        return 0;
    }
    if (opt == OPT_FORMAT)
        return sbx_cli_format_parse(arg, &a->json, err);
    if (opt == OPT_STATE) {
        if (strcmp(arg, "running") != 0 && strcmp(arg, "paused") != 0 &&
            strcmp(arg, "running,paused") != 0 && strcmp(arg, "paused,running") != 0)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid --state '%s'", arg);
        a->state = arg;
        return 0;
    }
    return -1;
}

static const char *
str_field(json_t *item, const char *key)
{
    const char *s = json_string_value(json_object_get(item, key));
    return s ? s : "-";
}

/* RFC 3339 from the daemon → local "YYYY-MM-DD HH:MM:SS"; unparsable text as is. */
static void
local_time(const char *rfc3339, char *out, size_t outlen)
{
    int64_t ms;
    if (sbx_parse_rfc3339(rfc3339, &ms) < 0) {
        snprintf(out, outlen, "%s", rfc3339);
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, outlen, "%Y-%m-%d %H:%M:%S", &tm);
}

static char *
metadata_text(json_t *item)
{
    json_t *m = json_object_get(item, "metadata");
    struct sbx_buf b = {0};
    const char *k;
    json_t *v;
    int bad = 0;
    json_object_foreach (m, k, v) {
        const char *s = json_is_string(v) ? json_string_value(v) : "?";
        bad |= sbx_buf_printf(&b, "%s%s=%s", b.len ? "," : "", k, s);
    }
    if (b.len == 0)
        bad |= sbx_buf_printf(&b, "-");
    if (bad) {
        sbx_buf_fini(&b);
        return NULL;
    }
    return b.data;
}

#define N_COLS 6

static void
print_cell(const char *s, int width, bool last)
{
    if (last)
        printf("%s\n", s);
    else
        printf("%-*s  ", width, s);
}

static void
print_table(json_t *items)
{
    static const char *const head[N_COLS] = {"ID",   "TEMPLATE", "STARTED",
                                             "ENDS", "STATE",    "METADATA"};
    size_t n = json_array_size(items);
    char *(*cells)[N_COLS] = calloc(n ? n : 1, sizeof(*cells));
    if (cells == NULL)
        return;
    size_t width[N_COLS];
    for (int c = 0; c < N_COLS; c++)
        width[c] = strlen(head[c]);
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        char started[64], ends[64];
        local_time(str_field(it, "startedAt"), started, sizeof(started));
        local_time(str_field(it, "endAt"), ends, sizeof(ends));
        const char *tmpl = json_string_value(json_object_get(it, "alias"));
        cells[i][0] = strdup(str_field(it, "sandboxID"));
        cells[i][1] = strdup(tmpl ? tmpl : str_field(it, "templateID"));
        cells[i][2] = strdup(started);
        cells[i][3] = strdup(ends);
        cells[i][4] = strdup(str_field(it, "state"));
        cells[i][5] = metadata_text(it);
        for (int c = 0; c < N_COLS; c++) {
            size_t w = cells[i][c] ? strlen(cells[i][c]) : 1;
            if (w > width[c])
                width[c] = w;
        }
    }
    for (int c = 0; c < N_COLS; c++)
        print_cell(head[c], (int)width[c], c == N_COLS - 1);
    for (size_t i = 0; i < n; i++) {
        for (int c = 0; c < N_COLS; c++) {
            print_cell(cells[i][c] ? cells[i][c] : "?", (int)width[c], c == N_COLS - 1);
            free(cells[i][c]);
        }
    }
    free(cells);
}

int
sbx_cli_ls(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"state", required_argument, NULL, OPT_STATE},
        {NULL, 0, NULL, 0},
    };
    static const struct sbx_cli_verb verb = {"ls", usage, "", opts, on_opt, 0, 0, NULL};
    struct ls_args a = {0};
    struct sbx_error *err = NULL;
    struct sbx_cli_config cfg;
    int first, status = sbx_cli_begin(&verb, argc, argv, &a, &first, &cfg);
    if (status >= 0)
        return status;
    json_t *all = json_array();
    int rc = all ? sbx_cli_list_sandboxes(&cfg, a.state, all, &err) : -1;
    sbx_cli_config_fini(&cfg);
    if (rc < 0) {
        json_decref(all);
        return sbx_cli_fail("ls", err);
    }
    if (a.json) {
        json_dumpf(all, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
    } else {
        print_table(all);
    }
    json_decref(all);
    if (fflush(stdout) != 0)
        return SBX_CLI_EXIT_FAILURE;
    return 0;
}
