/* Prometheus metrics of the front end (GET /metrics, text exposition format 0.0.4): counters
 * kept here, bumped by one-line calls from lifecycle, auth and the HTTP server's observer, and
 * per-sandbox gauges sampled from the spawner (STATS) when scraped.
 *
 * Cardinality is bounded by construction: labels take values from fixed sets (route classes,
 * end reasons, error codes, HTTP statuses 100..599, the built-in templates), but for the
 * other templates, which have series only while they have sandboxes, and the per-sandbox
 * series, which exist only for running sandboxes and only for the first
 * SBX_METRICS_MAX_SANDBOXES of them (sbx_sandbox_series_dropped counts the rest). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/limits.h"
#include "base/util.h"
#include "base/version.h"
#include "daemon/internal.h"

static const char *const route_classes[] = {
    "sandboxes", "sandbox_traffic", "api_keys", "logs",   "pools",
    "volumes",   "templates",       "metrics",  "health", "other"};
#define N_CLASSES (sizeof(route_classes) / sizeof(route_classes[0]))

static const char *const end_reasons[] = {"killed",           "timeout",
                                          "paused_retention", "agent_exited",
                                          "create_failed",    "agent_exited_while_down"};
#define N_REASONS (sizeof(end_reasons) / sizeof(end_reasons[0]))

/* Upper bounds of the histograms, in seconds: creates, and template builds. */
static const double create_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const double build_buckets[] = {1, 5, 15, 30, 60, 120, 300, 600, 1800};
#define MAX_BUCKETS 11

struct histogram {
    const double *bounds;
    size_t n;
    uint64_t le[MAX_BUCKETS]; /* non-cumulative; summed when rendered */
    uint64_t count;
    double sum;
};

#define HISTOGRAM(b)                                                                               \
    {                                                                                              \
        .bounds = b, .n = sizeof(b) / sizeof(b[0])                                                 \
    }

static struct {
    uint64_t requests[N_CLASSES][600];
    uint64_t creates;
    uint64_t create_errors[SBX_UNAUTHENTICATED + 1];
    uint64_t ends[N_REASONS];
    struct histogram create;
    struct histogram build[2]; /* failed, ready */
    uint64_t auth_failures;
    uint64_t spawner_restarts;
    uint64_t pool_takes[2]; /* creates a pool could not serve, and those it did */
    int64_t start_ms;
} m = {.create = HISTOGRAM(create_buckets),
       .build = {HISTOGRAM(build_buckets), HISTOGRAM(build_buckets)}};

static void
observe(struct histogram *h, double s)
{
    h->count++;
    h->sum += s;
    for (size_t i = 0; i < h->n; i++)
        if (s <= h->bounds[i]) {
            h->le[i]++;
            break;
        }
}

/* The series of one histogram; labels: "" or `name="value"`. */
static void
put_histogram(struct sbx_buf *b, const char *name, const char *labels, const struct histogram *h)
{
    const char *sep = labels[0] ? "," : "";
    uint64_t cum = 0;
    for (size_t i = 0; i < h->n; i++) {
        cum += h->le[i];
        sbx_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
                       (unsigned long long)cum);
    }
    sbx_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                   (unsigned long long)h->count);
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    sbx_buf_printf(b, "%s_sum%s%s%s %.6f\n", name, open, labels, close, h->sum);
    sbx_buf_printf(b, "%s_count%s%s%s %llu\n", name, open, labels, close,
                   (unsigned long long)h->count);
}

static size_t
index_of(const char *const *set, size_t n, const char *v)
{
    for (size_t i = 0; i < n; i++)
        if (v && strcmp(set[i], v) == 0)
            return i;
    return n;
}

void
sbx_metrics_request_done(const struct sbx_http_req *req, int status, void *ud)
{
    size_t c = index_of(route_classes, N_CLASSES, req->route_class);
    if (c == N_CLASSES)
        c = N_CLASSES - 1; /* "other" */
    if (status >= 100 && status < 600)
        m.requests[c][status]++;
}

void
sbx_metrics_created(uint64_t spawn_us)
{
    m.creates++;
    observe(&m.create, (double)spawn_us / 1e6);
}

void
sbx_metrics_build_done(bool ready, uint64_t ms)
{
    observe(&m.build[ready], (double)ms / 1000);
}

void
sbx_metrics_create_failed(enum sbx_code code)
{
    m.create_errors[code <= SBX_UNAUTHENTICATED ? code : SBX_UNKNOWN]++;
}

void
sbx_metrics_ended(const char *reason)
{
    size_t r = index_of(end_reasons, N_REASONS, reason);
    if (r < N_REASONS)
        m.ends[r]++;
}

void
sbx_metrics_pool_take(bool hit)
{
    m.pool_takes[hit]++;
}

void
sbx_metrics_auth_failure(void)
{
    m.auth_failures++;
}

void
sbx_metrics_spawner_restart(void)
{
    m.spawner_restarts++;
}

/* ---- rendering ---- */

static void
family(struct sbx_buf *b, const char *name, const char *type, const char *help)
{
    sbx_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The warm pools: what each holds and aims for, and how often a create found one warm. */
static void
render_pools(struct sbx_buf *b)
{
    json_t *pools = sbx_pool_status();
    static const char *const gauges[][3] = {
        {"sbx_pool_target", "target", "Sandboxes a pool keeps warm when it can (--pool)."},
        {"sbx_pool_warm", "warm", "Warm sandboxes waiting in a pool."},
        {"sbx_pool_starting", "starting", "Sandboxes of a pool still starting."},
        {"sbx_pool_memory_estimate_bytes", "memoryEstimateBytes",
         "Memory a pool's sandboxes are estimated to hold."},
    };
    for (size_t g = 0; g < sizeof(gauges) / sizeof(gauges[0]); g++) {
        family(b, gauges[g][0], "gauge", gauges[g][2]);
        size_t i;
        json_t *p;
        json_array_foreach (pools, i, p) {
            sbx_buf_printf(b, "%s{template=\"%s\"} %lld\n", gauges[g][0],
                           json_string_value(json_object_get(p, "template")),
                           (long long)json_integer_value(json_object_get(p, gauges[g][1])));
        }
    }
    json_decref(pools);
    family(b, "sbx_pool_creates_total", "counter",
           "Creates by whether a warm pooled sandbox served them (hit) or one was started.");
    sbx_buf_printf(b, "sbx_pool_creates_total{result=\"hit\"} %llu\n",
                   (unsigned long long)m.pool_takes[1]);
    sbx_buf_printf(b, "sbx_pool_creates_total{result=\"miss\"} %llu\n",
                   (unsigned long long)m.pool_takes[0]);
}

static void
render_counters(struct sbx_buf *b)
{
    family(b, "sbx_build_info", "gauge", "The version of sbx serving, as a label.");
    sbx_buf_printf(b, "sbx_build_info{version=\"%s\"} 1\n", SBX_VERSION);
    family(b, "sbx_start_time_seconds", "gauge", "When the front end started, in Unix time.");
    sbx_buf_printf(b, "sbx_start_time_seconds %.3f\n", (double)m.start_ms / 1000);

    family(b, "sbx_sandboxes", "gauge", "Sandboxes by state and template.");
    /* The built-in templates always (0 when none run), then every other template that has a
     * sandbox: at most one series pair per live sandbox. */
    json_t *by_template = json_object();
    for (size_t t = 0; t < SBX_API_N_TEMPLATES; t++)
        json_object_set_new(by_template, sbx_api_templates[t], json_pack("[ii]", 0, 0));
    for (struct sbx_live *l = sbx_daemon->live; l; l = l->next) {
        if (l->dying)
            continue;
        json_t *n = json_object_get(by_template, l->rec->template_id);
        if (n == NULL)
            json_object_set_new(by_template, l->rec->template_id, n = json_pack("[ii]", 0, 0));
        int col = sbx_live_is_running(l) ? 0 : sbx_live_is_paused(l) ? 1 : -1;
        if (col >= 0)
            json_array_set_new(n, col,
                               json_integer(json_integer_value(json_array_get(n, col)) + 1));
    }
    const char *name;
    json_t *n;
    json_object_foreach (by_template, name, n)
        sbx_buf_printf(b,
                       "sbx_sandboxes{state=\"running\",template=\"%s\"} %lld\n"
                       "sbx_sandboxes{state=\"paused\",template=\"%s\"} %lld\n",
                       name, json_integer_value(json_array_get(n, 0)), name,
                       json_integer_value(json_array_get(n, 1)));
    json_decref(by_template);
    family(b, "sbx_sandbox_creates_total", "counter", "Sandboxes created.");
    sbx_buf_printf(b, "sbx_sandbox_creates_total %llu\n", (unsigned long long)m.creates);
    family(b, "sbx_sandbox_create_errors_total", "counter",
           "Creates that failed, by error code (e.g. resource_exhausted: the sandbox cap).");
    for (int c = 1; c <= SBX_UNAUTHENTICATED; c++)
        if (m.create_errors[c])
            sbx_buf_printf(b, "sbx_sandbox_create_errors_total{code=\"%s\"} %llu\n",
                           sbx_code_name((enum sbx_code)c), (unsigned long long)m.create_errors[c]);
    family(b, "sbx_sandbox_ends_total", "counter",
           "Sandboxes that ended, by reason (timeout: their end time came).");
    for (size_t r = 0; r < N_REASONS; r++)
        sbx_buf_printf(b, "sbx_sandbox_ends_total{reason=\"%s\"} %llu\n", end_reasons[r],
                       (unsigned long long)m.ends[r]);
    family(b, "sbx_sandbox_create_duration_seconds", "histogram",
           "Time from a create request to its sandbox's agent running.");
    put_histogram(b, "sbx_sandbox_create_duration_seconds", "", &m.create);
    family(b, "sbx_template_build_duration_seconds", "histogram",
           "Template builds, from their start to ready or failed, by status.");
    put_histogram(b, "sbx_template_build_duration_seconds", "status=\"error\"", &m.build[0]);
    put_histogram(b, "sbx_template_build_duration_seconds", "status=\"ready\"", &m.build[1]);
    family(b, "sbx_http_requests_total", "counter",
           "Requests answered, by route class and status code.");
    for (size_t c = 0; c < N_CLASSES; c++)
        for (int s = 100; s < 600; s++)
            if (m.requests[c][s])
                sbx_buf_printf(b, "sbx_http_requests_total{class=\"%s\",code=\"%d\"} %llu\n",
                               route_classes[c], s, (unsigned long long)m.requests[c][s]);
    family(b, "sbx_auth_failures_total", "counter",
           "Control-plane requests without a valid API key.");
    sbx_buf_printf(b, "sbx_auth_failures_total %llu\n", (unsigned long long)m.auth_failures);
    family(b, "sbx_spawner_restarts_total", "counter",
           "Times the spawner died and was started again.");
    sbx_buf_printf(b, "sbx_spawner_restarts_total %llu\n", (unsigned long long)m.spawner_restarts);
    render_pools(b);
}

/* One scrape: the counters now, then a STATS request per running sandbox; answered once every
 * reply is in. The client may go away meanwhile (req NULL); the scrape still collects. */
struct scrape {
    struct sbx_http_req *req;
    struct sbx_buf cpu, mem, limit, disk;
    size_t pending;
    size_t dropped;
};

static void
scrape_finish(struct scrape *s)
{
    if (s->req) {
        sbx_http_req_on_close(s->req, NULL);
        s->req->data = NULL;
        struct sbx_buf b = {0};
        render_counters(&b);
        family(&b, "sbx_sandbox_cpu_seconds_total", "counter", "CPU time used by a sandbox.");
        sbx_buf_append(&b, s->cpu.data, s->cpu.len, SIZE_MAX);
        family(&b, "sbx_sandbox_memory_bytes", "gauge",
               "Memory a sandbox uses (its cgroup's, page cache included).");
        sbx_buf_append(&b, s->mem.data, s->mem.len, SIZE_MAX);
        family(&b, "sbx_sandbox_memory_limit_bytes", "gauge", "A sandbox's memory limit.");
        sbx_buf_append(&b, s->limit.data, s->limit.len, SIZE_MAX);
        family(&b, "sbx_sandbox_disk_bytes", "gauge", "Disk a sandbox's writable layer uses.");
        sbx_buf_append(&b, s->disk.data, s->disk.len, SIZE_MAX);
        family(&b, "sbx_sandbox_series_dropped", "gauge",
               "Running sandboxes left out of the per-sandbox series (over the cap).");
        sbx_buf_printf(&b, "sbx_sandbox_series_dropped %zu\n", s->dropped);
        sbx_http_respond(s->req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        sbx_buf_fini(&b);
    }
    sbx_buf_fini(&s->cpu);
    sbx_buf_fini(&s->mem);
    sbx_buf_fini(&s->limit);
    sbx_buf_fini(&s->disk);
    free(s);
}

static void
on_scrape_closed(struct sbx_http_req *req)
{
    struct scrape *s = req->data;
    s->req = NULL;
}

struct sample {
    struct scrape *scrape;
    char id[SBX_STORE_ID_MAX + 1];
    char template_id[64];
};

static void
on_sample(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct sample *x = ud;
    struct scrape *s = x->scrape;
    if (err == NULL) {
        const struct sbx_sandbox_stats *st = &reply->stats;
        char labels[160];
        snprintf(labels, sizeof(labels), "{sandbox_id=\"%s\",template=\"%s\"}", x->id,
                 x->template_id);
        sbx_buf_printf(&s->cpu, "sbx_sandbox_cpu_seconds_total%s %.6f\n", labels,
                       (double)st->cpu_usage_ns / 1e9);
        sbx_buf_printf(&s->mem, "sbx_sandbox_memory_bytes%s %llu\n", labels,
                       (unsigned long long)st->memory_bytes);
        sbx_buf_printf(&s->limit, "sbx_sandbox_memory_limit_bytes%s %llu\n", labels,
                       (unsigned long long)st->memory_limit_bytes);
        sbx_buf_printf(&s->disk, "sbx_sandbox_disk_bytes%s %llu\n", labels,
                       (unsigned long long)st->disk_used_bytes);
    }
    free(x);
    if (--s->pending == 0)
        scrape_finish(s);
}

void
sbx_metrics_handle(struct sbx_http_req *req)
{
    struct scrape *s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    s->req = req;
    req->data = s;
    sbx_http_req_on_close(req, on_scrape_closed);
    s->pending = 1; /* ours, dropped below: the scrape cannot finish while requests go out */
    size_t n = 0;
    for (struct sbx_live *l = sbx_daemon->live; l; l = l->next) {
        if (l->dying)
            continue;
        if (n++ >= SBX_METRICS_MAX_SANDBOXES) {
            s->dropped++;
            continue;
        }
        struct sample *x = calloc(1, sizeof(*x));
        if (x == NULL)
            abort();
        x->scrape = s;
        snprintf(x->id, sizeof(x->id), "%s", l->rec->id);
        snprintf(x->template_id, sizeof(x->template_id), "%s", l->rec->template_id);
        s->pending++;
        struct sbx_spawner_msg msg = {.op = SBX_SPAWNER_STATS};
        snprintf(msg.id, sizeof(msg.id), "%s", l->rec->id);
        sbx_spawner_call(&msg, -1, on_sample, x);
    }
    if (--s->pending == 0)
        scrape_finish(s);
}

void
sbx_metrics_on_request(struct sbx_http_req *req, void *ud)
{
    bool get = strcmp(req->method, "GET") == 0;
    if (get && strcmp(req->path, "/metrics") == 0) {
        req->route_class = "metrics";
        sbx_metrics_handle(req);
    } else if (get && strcmp(req->path, "/health") == 0) {
        req->route_class = "health";
        sbx_http_respond(req, 200, "application/json", "{\"status\":\"ok\"}", 15);
    } else {
        sbx_http_respond_error(req, 404, "this address serves only GET /metrics and GET /health");
    }
}

void
sbx_metrics_init(void)
{
    m.start_ms = sbx_wall_ms();
}
