/* Warm pools: per template, sandboxes spawned ahead of any client, their agent up and, for a
 * code interpreter, the default Python kernel started and warm. A create takes one (its id is
 * its own, random and never shown before) and gives it the client's tokens, env vars,
 * metadata and timeout (lifecycle.c, adopt); the pool then starts a replacement in the
 * background.
 *
 * A pooled sandbox has never run a client's code: it is spawned for the pool, handed out once,
 * and never returns to it. It is not in the table of running sandboxes (not routable, not
 * listed); its row is marked pooled, and a restarted front end destroys such rows.
 *
 * Failures to fill a pool (a template that does not start, the memory budget) never fail a
 * create: it is then served cold. They are logged with the reason, and retried later. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "daemon/internal.h"
#include "http/client.h"

struct sbx_pool {
    char template_id[SBX_SPAWNER_NAME_MAX + 1];
    int target;
    int warm;              /* in the list */
    int starting;          /* spawning, or waiting to be warm */
    uint64_t mem_estimate; /* bytes one warm sandbox uses, as last measured; 0: not yet */
    struct sbx_live *list; /* warm, oldest first */
    bool backing_off;
    bool budget_logged;
    uv_timer_t retry;
    struct sbx_pool *next;
};

static struct sbx_pool *pools;

/* A clean stop destroys what the pools hold (nobody's sandboxes, and a stopped daemon would
 * leave them running); see sbx_pool_drain. */
static struct {
    bool draining;
    int outstanding; /* pooled sandboxes still to destroy */
    void (*done)(void);
    uv_timer_t deadline;
} drain;

static void
drained_one(void)
{
    if (--drain.outstanding == 0 && drain.done) {
        void (*done)(void) = drain.done;
        drain.done = NULL;
        uv_timer_stop(&drain.deadline);
        done();
    }
}

static void
on_discarded(struct sbx_error *err, void *ud)
{
    drained_one();
}

static void
discard_while_draining(struct sbx_live *l)
{
    if (l)
        sbx_lifecycle_kill(l, on_discarded, NULL);
    else
        drained_one();
}

static struct sbx_pool *
find_pool(const char *template_id)
{
    for (struct sbx_pool *p = pools; p; p = p->next)
        if (strcmp(p->template_id, template_id) == 0)
            return p;
    return NULL;
}

int
sbx_pool_configure(const char *spec, struct sbx_error **err)
{
    _cleanup_free_ char *copy = strdup(spec ? spec : "");
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        char *end = NULL;
        long n = eq ? strtol(eq + 1, &end, 10) : -1;
        if (eq == NULL || end == eq + 1 || *end != '\0' || n < 0 || n > SBX_POOL_MAX)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "pool '%s': expected TEMPLATE=N with N from 0 to %d", item,
                                 SBX_POOL_MAX);
        *eq = '\0';
        /* A built-in template or one built later: a name that does not resolve yet only
         * keeps its pool empty (and says so in the log). */
        struct sbx_template_name name;
        struct sbx_error *bad = NULL;
        bool ok = sbx_template_name_parse(item, &name, &bad) == 0;
        sbx_error_free(bad);
        if (!ok || strlen(item) > SBX_SPAWNER_NAME_MAX)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "pool: bad template name '%s'",
                                 item);
        struct sbx_pool *p = find_pool(item);
        if (p == NULL) {
            p = calloc(1, sizeof(*p));
            if (p == NULL)
                abort();
            snprintf(p->template_id, sizeof(p->template_id), "%s", item);
            p->next = pools;
            pools = p;
        }
        p->target = (int)n;
    }
    return 0;
}

/* Memory the pools hold or are about to, as estimated. */
static uint64_t
pooled_bytes(void)
{
    uint64_t sum = 0;
    for (struct sbx_pool *p = pools; p; p = p->next)
        sum += p->mem_estimate * (uint64_t)(p->warm + p->starting);
    return sum;
}

static void fill(struct sbx_pool *p);

static void
on_retry(uv_timer_t *t)
{
    struct sbx_pool *p = t->data;
    p->backing_off = false;
    fill(p);
}

/* A member failed to start: try again later, not in a loop. */
static void
back_off(struct sbx_pool *p, const char *why)
{
    sbx_log_warn("pool",
                 "template=%s error=\"%s\" action=\"retry in %d ms; creates are served "
                 "cold meanwhile\"",
                 p->template_id, why, SBX_POOL_RETRY_MS);
    if (p->backing_off)
        return;
    p->backing_off = true;
    if (p->retry.data != p) {
        uv_timer_init(sbx_daemon->loop, &p->retry);
        p->retry.data = p;
    }
    uv_timer_start(&p->retry, on_retry, SBX_POOL_RETRY_MS, 0);
}

/* A sandbox of the pool between its spawn and its being warm. */
struct sbx_pool_member {
    struct sbx_pool *pool;
    struct sbx_live *l; /* NULL once it is gone (sbx_pool_forget) */
};

static void
on_measured(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct sbx_pool *p = ud;
    if (err == NULL && reply->stats.memory_bytes > 0)
        p->mem_estimate = reply->stats.memory_bytes;
    fill(p);
}

static void
on_warm(int status, const char *body, size_t len, const char *error, void *ud)
{
    struct sbx_pool_member *m = ud;
    struct sbx_pool *p = m->pool;
    struct sbx_live *l = m->l;
    free(m);
    if (l)
        l->warming = NULL;
    p->starting--;
    if (drain.draining) {
        discard_while_draining(l && !l->dying ? l : NULL);
        return;
    }
    if (l == NULL || l->dying) {
        back_off(p, "the sandbox died while warming up");
        return;
    }
    if (status != 204) {
        char why[128];
        if (error)
            snprintf(why, sizeof(why), "GET /sbx/ready: %s", error);
        else
            snprintf(why, sizeof(why), "GET /sbx/ready answered %d", status);
        sbx_lifecycle_destroy(l, "pool_not_ready", NULL, NULL);
        back_off(p, why);
        return;
    }
    l->pool = p;
    struct sbx_live **pp = &p->list;
    while (*pp)
        pp = &(*pp)->pool_next;
    *pp = l;
    p->warm++;
    /* Its memory, now that it is warm, is what the next ones are budgeted at. */
    struct sbx_spawner_msg req = {.op = SBX_SPAWNER_STATS};
    snprintf(req.id, sizeof(req.id), "%s", l->rec->id);
    sbx_spawner_call(&req, -1, on_measured, p);
}

static void
on_member_spawned(struct sbx_live *l, struct sbx_error *err, void *ud)
{
    struct sbx_pool_member *m = ud;
    if (l == NULL || drain.draining) {
        struct sbx_pool *p = m->pool;
        p->starting--;
        free(m);
        if (drain.draining)
            discard_while_draining(l);
        else
            back_off(p, err->msg);
        return;
    }
    m->l = l;
    l->warming = m;
    /* Answered once the agent (and a code interpreter's default kernel) is ready. */
    sbx_http_call(sbx_daemon->loop, l->sock_path, "GET", "/sbx/ready", NULL, NULL, 1024,
                  SBX_POOL_READY_MS, on_warm, m);
}

static void
fill(struct sbx_pool *p)
{
    if (drain.draining)
        return;
    uint64_t budget = (uint64_t)sbx_daemon->cfg.pool_memory_mb << 20;
    while (!p->backing_off && p->warm + p->starting < p->target) {
        /* Until one has been measured, what a member costs is unknown: one at a time. */
        if (p->mem_estimate == 0 && p->starting > 0)
            return;
        if (pooled_bytes() + p->mem_estimate > budget) {
            if (!p->budget_logged)
                sbx_log_warn("pool",
                             "template=%s warm=%d target=%d error=\"memory budget of %d MiB "
                             "reached (--pool-memory-mb)\"",
                             p->template_id, p->warm, p->target, sbx_daemon->cfg.pool_memory_mb);
            p->budget_logged = true;
            return;
        }
        _cleanup_error_ struct sbx_error *err = NULL;
        struct sbx_live *l = sbx_lifecycle_new(p->template_id, &err);
        if (l == NULL) {
            back_off(p, err->msg);
            return;
        }
        struct sbx_pool_member *m = calloc(1, sizeof(*m));
        if (m == NULL)
            abort();
        m->pool = p;
        p->starting++;
        sbx_lifecycle_spawn(l, on_member_spawned, m);
    }
}

void
sbx_pool_fill(void)
{
    for (struct sbx_pool *p = pools; p; p = p->next)
        fill(p);
}

struct sbx_live *
sbx_pool_take(const char *template_id)
{
    struct sbx_pool *p = find_pool(template_id);
    if (p == NULL || p->list == NULL)
        return NULL;
    struct sbx_live *l = p->list;
    p->list = l->pool_next;
    l->pool_next = NULL;
    l->pool = NULL;
    p->warm--;
    p->budget_logged = false;
    fill(p);
    return l;
}

void
sbx_pool_forget(struct sbx_live *l)
{
    if (l->warming) {
        l->warming->l = NULL; /* its readiness answer finds it gone */
        l->warming = NULL;
    }
    struct sbx_pool *p = l->pool;
    if (p == NULL)
        return;
    for (struct sbx_live **pp = &p->list; *pp; pp = &(*pp)->pool_next) {
        if (*pp == l) {
            *pp = l->pool_next;
            p->warm--;
            break;
        }
    }
    l->pool = NULL;
    l->pool_next = NULL;
    fill(p); /* a warm one died: replace it */
}

json_t *
sbx_pool_status(void)
{
    json_t *arr = json_array();
    for (struct sbx_pool *p = pools; p; p = p->next)
        json_array_append_new(arr, json_pack("{s:s,s:i,s:i,s:i,s:I}", "template", p->template_id,
                                             "target", p->target, "warm", p->warm, "starting",
                                             p->starting, "memoryEstimateBytes",
                                             (json_int_t)p->mem_estimate));
    return arr;
}

static void
on_drain_deadline(uv_timer_t *t)
{
    sbx_log_warn("pool",
                 "error=\"%d pooled sandboxes not destroyed in time\" action=\"stop "
                 "anyway; the next start destroys them\"",
                 drain.outstanding);
    void (*done)(void) = drain.done;
    drain.done = NULL;
    if (done)
        done();
}

void
sbx_pool_drain(void (*done)(void))
{
    drain.draining = true;
    drain.done = done;
    for (struct sbx_pool *p = pools; p; p = p->next) {
        if (p->retry.data == p)
            uv_timer_stop(&p->retry);
        drain.outstanding += p->starting; /* discarded when their spawn or warm-up answers */
        while (p->list) {
            struct sbx_live *l = p->list;
            p->list = l->pool_next;
            l->pool_next = NULL;
            l->pool = NULL;
            p->warm--;
            drain.outstanding++;
            sbx_lifecycle_kill(l, on_discarded, NULL);
        }
    }
    /* Volumes' content services are nobody's sandboxes too. */
    drain.outstanding += sbx_volumes_drain(on_discarded);
    if (drain.outstanding == 0) {
        drain.done = NULL;
        done();
        return;
    }
    uv_timer_init(sbx_daemon->loop, &drain.deadline);
    uv_timer_start(&drain.deadline, on_drain_deadline, SBX_POOL_DRAIN_MS, 0);
}
