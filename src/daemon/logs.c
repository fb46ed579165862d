/* Sandbox logs in the front end. A sandbox's log is its agent's lines (the ring in its memory:
 * process starts and ends with exit statuses, signals and OOM kills, kernels, requests) and the
 * daemon's events about it (created, timed out, killed, agent exited). The daemon's events are
 * stored as they happen; the agent's ring is read live while the sandbox runs and stored when
 * it ends, so the log outlives the sandbox for --log-retention-hours (and within
 * --log-store-mb). Served as GET /v2/sandboxes/{id}/logs and /sandboxes/{id}/logs in the
 * E2B schema, which `e2b sandbox logs` reads. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "http/client.h"

/* ---- the daemon's events ---- */

void
sbx_logs_event(const char *id, const char *level, const char *event, const char *fmt, ...)
{
    int64_t now = sbx_wall_ms();
    char ts[40], tail[512];
    sbx_format_rfc3339(now, ts, sizeof(ts));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tail, sizeof(tail), fmt, ap);
    va_end(ap);
    _cleanup_free_ char *line = NULL;
    if (asprintf(&line, "ts=%s level=%s event=%s%s%s", ts, level, event, *tail ? " " : "", tail) <
        0)
        abort();
    struct sbx_log_line l = {.ts_ms = now, .line = line};
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_store_log_append(sbx_daemon->store, id, "daemon", &l, 1, &err) < 0)
        sbx_log_warn("sandbox_log", "sandbox=%s error=\"%s\"", id, err->msg);
}

/* ---- the agent's ring ---- */

/* The lines of an agent's ring, each with the time of its ts= field (lines without one, e.g.
 * the tail of one cut by the ring, take the time of the line before). */
static struct sbx_log_lines *
split_ring(const char *body, size_t len)
{
    struct sbx_log_lines *l = calloc(1, sizeof(*l));
    if (l == NULL)
        abort();
    size_t cap = 0;
    int64_t last = 0;
    for (const char *p = body, *end = body + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0 && n < SBX_LOG_LINE_MAX) {
            if (l->n == cap) {
                cap = cap ? 2 * cap : 256;
                if ((l->items = realloc(l->items, cap * sizeof(*l->items))) == NULL)
                    abort();
            }
            struct sbx_log_line *x = &l->items[l->n++];
            x->line = strndup(p, n);
            x->source = strdup("agent");
            if (x->line == NULL || x->source == NULL)
                abort();
            /* Control bytes would break the line format: the agent is in the sandbox's hands. */
            for (char *c = x->line; *c; c++)
                if ((unsigned char)*c < 0x20)
                    *c = ' ';
            char key[8], ts[64];
            const char *q = x->line;
            if (sbx_logfmt_next(&q, key, sizeof(key), ts, sizeof(ts)) && strcmp(key, "ts") == 0)
                sbx_parse_rfc3339(ts, &last);
            x->ts_ms = last;
        }
        p += n + 1;
    }
    return l;
}

struct ring_fetch {
    char id[SBX_STORE_ID_MAX + 1];
    void (*done)(struct sbx_log_lines *agent, const char *error, void *ud);
    void *ud;
};

static void
on_ring(int status, const char *body, size_t len, const char *error, void *ud)
{
    struct ring_fetch *f = ud;
    char why[96];
    if (error == NULL && status != 200)
        snprintf(why, sizeof(why), "the agent answered %d", status);
    const char *e = error ? error : status != 200 ? why : NULL;
    struct sbx_log_lines *lines = e ? NULL : split_ring(body, len);
    f->done(lines, e, f->ud);
    sbx_log_lines_free(lines);
    free(f);
}

/* Reads l's agent ring (bounded in size and time: the agent may be hostile or stuck). */
static void
fetch_ring(struct sbx_live *l, void (*done)(struct sbx_log_lines *, const char *, void *), void *ud)
{
    struct ring_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    snprintf(f->id, sizeof(f->id), "%s", l->rec->id);
    f->done = done;
    f->ud = ud;
    _cleanup_free_ char *headers = NULL;
    if (asprintf(&headers, "X-Access-Token: %s\r\n",
                 l->rec->access_token ? l->rec->access_token : "") < 0)
        abort();
    sbx_http_call(sbx_daemon->loop, l->sock_path, "GET", "/sbx/log", headers, NULL,
                  SBX_AGENT_LOG_BYTES + SBX_LOG_LINE_MAX, SBX_LOG_FETCH_TIMEOUT_MS, on_ring, f);
    explicit_bzero(headers, strlen(headers));
}

/* ---- the end of a sandbox ---- */

struct capture {
    char id[SBX_STORE_ID_MAX + 1];
    void (*done)(void *ud);
    void *ud;
};

static void
on_captured(struct sbx_log_lines *agent, const char *error, void *ud)
{
    struct capture *c = ud;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (agent &&
        sbx_store_log_append(sbx_daemon->store, c->id, "agent", agent->items, agent->n, &err) < 0)
        sbx_log_warn("sandbox_log", "sandbox=%s error=\"%s\"", c->id, err->msg);
    if (error)
        sbx_logs_event(c->id, "warn", "agent_log_lost", "error=\"%s\"", error);
    c->done(c->ud);
    free(c);
}

void
sbx_logs_capture(struct sbx_live *l, bool agent_alive, void (*done)(void *ud), void *ud)
{
    if (!agent_alive) {
        sbx_logs_event(l->rec->id, "warn", "agent_log_lost",
                       "error=\"the agent had exited: its log died with it\"");
        done(ud);
        return;
    }
    struct capture *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    snprintf(c->id, sizeof(c->id), "%s", l->rec->id);
    c->done = done;
    c->ud = ud;
    fetch_ring(l, on_captured, c);
}

void
sbx_logs_prune(void)
{
    const struct sbx_daemon_config *cfg = &sbx_daemon->cfg;
    int64_t before = sbx_wall_ms() - (int64_t)cfg->log_retention_h * 3600 * 1000;
    int pruned = 0;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_store_log_prune(sbx_daemon->store, before, (int64_t)cfg->log_store_mb << 20, &pruned,
                            &err) < 0)
        sbx_log_warn("sandbox_log", "action=prune error=\"%s\"", err->msg);
    else if (pruned)
        sbx_log_info("sandbox_log", "action=prune logs=%d", pruned);
}

/* ---- GET /v2/sandboxes/{id}/logs and /sandboxes/{id}/logs ---- */

struct query {
    bool v2;
    int64_t cursor_ms; /* v1: start; v2: cursor */
    long limit;
    bool backward;
    int min_level; /* enum sbx_log_level */
    char *search;
};

static int
level_of(const char *name)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (name && strcasecmp(name, names[i]) == 0)
            return i;
    return -1;
}

static int
parse_query(struct sbx_http_req *req, bool v2, struct query *q, struct sbx_error **err)
{
    *q = (struct query){.v2 = v2, .limit = SBX_LOG_PAGE_MAX};
    _cleanup_free_ char *cursor = sbx_http_req_query(req, v2 ? "cursor" : "start");
    _cleanup_free_ char *limit = sbx_http_req_query(req, "limit");
    _cleanup_free_ char *direction = v2 ? sbx_http_req_query(req, "direction") : NULL;
    _cleanup_free_ char *level = v2 ? sbx_http_req_query(req, "level") : NULL;
    q->search = v2 ? sbx_http_req_query(req, "search") : NULL;
    char *end = NULL;
    if (cursor &&
        (q->cursor_ms = strtoll(cursor, &end, 10), *cursor == '\0' || *end || q->cursor_ms < 0))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "'%s' must be a time in milliseconds since the epoch",
                             v2 ? "cursor" : "start");
    if (limit && (q->limit = strtol(limit, &end, 10),
                  *limit == '\0' || *end || q->limit < 0 || q->limit > SBX_LOG_PAGE_MAX))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "'limit' must be 0 to %d",
                             SBX_LOG_PAGE_MAX);
    if (direction && strcmp(direction, "forward") != 0 && strcmp(direction, "backward") != 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "'direction' must be 'forward' or 'backward'");
    q->backward = direction && strcmp(direction, "backward") == 0;
    if (level && (q->min_level = level_of(level)) < 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "'level' must be debug, info, warn or error");
    if (q->search && strlen(q->search) > 256)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "'search' is longer than 256 bytes");
    if (!q->backward && !cursor)
        q->cursor_ms = 0;
    else if (q->backward && !cursor)
        q->cursor_ms = INT64_MAX;
    return 0;
}

/* One entry: SandboxLogEntry {timestamp, level, message, fields} and, for v1, SandboxLog
 * {timestamp, line} whose line is the entry's fields as JSON with level and logger. */
static void
append_entry(json_t *entries, json_t *v1_logs, const struct sbx_log_line *x, int min_level,
             const char *search)
{
    char key[128], value[SBX_LOG_LINE_MAX];
    const char *p = x->line;
    json_t *fields = json_object(), *plain = json_object();
    char level[16] = "info";
    json_object_set_new(fields, "logger", json_string(x->source));
    while (sbx_logfmt_next(&p, key, sizeof(key), value, sizeof(value))) {
        json_t *v = json_string(value);
        if (v == NULL || strcmp(key, "ts") == 0) { /* not UTF-8, or the timestamp */
            json_decref(v);
            continue;
        }
        if (strcmp(key, "level") == 0)
            snprintf(level, sizeof(level), "%.15s", value);
        else
            json_object_set(plain, key, v);
        json_object_set_new(fields, key, v);
    }
    json_object_set_new(plain, "logger", json_string(x->source));
    /* The message: the line from its event on ("process_end pid=7 status=..."). */
    const char *event = strstr(x->line, "event=");
    const char *message = event ? event + 6 : x->line;
    int lv = level_of(level);
    if (lv >= min_level && (search == NULL || strstr(message, search))) {
        char ts[40];
        sbx_format_rfc3339(x->ts_ms, ts, sizeof(ts));
        json_t *msg = json_string(message);
        json_array_append_new(entries,
                              json_pack("{s:s,s:s,s:o,s:O}", "timestamp", ts, "level",
                                        lv >= 0 ? level : "info", "message",
                                        msg ? msg : json_string("(not UTF-8)"), "fields", plain));
        if (v1_logs) {
            char *line = json_dumps(fields, JSON_COMPACT);
            json_array_append_new(
                v1_logs, json_pack("{s:s,s:s}", "timestamp", ts, "line", line ? line : "{}"));
            free(line);
        }
    }
    json_decref(plain);
    json_decref(fields);
}

static int
by_time(const void *a, const void *b)
{
    const struct sbx_log_line *x = a, *y = b;
    return (x->ts_ms > y->ts_ms) - (x->ts_ms < y->ts_ms);
}

static void
respond_lines(struct sbx_http_req *req, struct query *q, struct sbx_log_lines *stored,
              struct sbx_log_lines *agent)
{
    /* Merge (a stable order: stored lines first at equal times), then page. */
    size_t n = (stored ? stored->n : 0) + (agent ? agent->n : 0);
    struct sbx_log_line *all = calloc(n ? n : 1, sizeof(*all));
    if (all == NULL)
        abort();
    size_t k = 0;
    for (size_t i = 0; stored && i < stored->n; i++)
        all[k++] = stored->items[i];
    for (size_t i = 0; agent && i < agent->n; i++)
        all[k++] = agent->items[i];
    qsort(all, n, sizeof(*all), by_time);
    json_t *entries = json_array(), *v1_logs = q->v2 ? NULL : json_array();
    for (size_t i = 0; i < n && json_array_size(entries) < (size_t)q->limit; i++) {
        const struct sbx_log_line *x = q->backward ? &all[n - 1 - i] : &all[i];
        if (q->backward ? x->ts_ms > q->cursor_ms : x->ts_ms < q->cursor_ms)
            continue;
        append_entry(entries, v1_logs, x, q->min_level, q->search);
    }
    free(all);
    if (q->v2)
        sbx_api_respond_json(req, 200, json_pack("{s:o}", "logs", entries));
    else
        sbx_api_respond_json(req, 200,
                             json_pack("{s:o,s:o}", "logs", v1_logs, "logEntries", entries));
}

struct live_read {
    struct sbx_http_req *req; /* NULL once the client has gone */
    struct query q;
    struct sbx_log_lines *stored;
};

static void
on_read_closed(struct sbx_http_req *req)
{
    ((struct live_read *)req->data)->req = NULL;
}

static void
on_live_ring(struct sbx_log_lines *agent, const char *error, void *ud)
{
    struct live_read *r = ud;
    if (r->req) {
        sbx_http_req_on_close(r->req, NULL);
        r->req->data = NULL;
        /* An agent that cannot be read (it is ending) leaves what the daemon knows. */
        respond_lines(r->req, &r->q, r->stored, agent);
    }
    sbx_log_lines_free(r->stored);
    free(r->q.search);
    free(r);
}

void
sbx_logs_handle(struct sbx_http_req *req, const char *id, bool v2)
{
    req->route_class = "logs";
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", id);
    _cleanup_error_ struct sbx_error *err = NULL;
    struct query q;
    struct sbx_log_lines *stored = NULL;
    if (parse_query(req, v2, &q, &err) < 0 ||
        sbx_store_log_get(sbx_daemon->store, id, &stored, &err) < 0) {
        if (err->code == SBX_NOT_FOUND)
            sbx_http_respond_error(req, 404,
                                   "no log for sandbox '%s': it does not exist, or it ended more "
                                   "than the log retention ago",
                                   id);
        else
            sbx_api_respond_err(req, err);
        free(q.search);
        return;
    }
    struct sbx_live *l = sbx_lifecycle_find(id);
    if (l == NULL) { /* ended (or ending): its log is all in the store */
        respond_lines(req, &q, stored, NULL);
        sbx_log_lines_free(stored);
        free(q.search);
        return;
    }
    struct live_read *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    *r = (struct live_read){.req = req, .q = q, .stored = stored};
    req->data = r;
    sbx_http_req_on_close(req, on_read_closed);
    fetch_ring(l, on_live_ring, r);
}
