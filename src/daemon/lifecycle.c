/* Sandbox lifecycle in the front end: create (store first, then the spawner), kill, expiry
 * at end_at, death of an agent, and recovery of running sandboxes after a restart. Every
 * step that needs the spawner is a request answered later; the loop never waits. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "http/client.h"

static void arm_expiry(void);

static struct sbx_sandbox_ref
ref_of(const struct sbx_live *l)
{
    return (struct sbx_sandbox_ref){
        .id = l->rec->id,
        .sandbox_dir = l->dir,
        .pid = l->rec->pid,
        .start_time = l->rec->pid_start_time,
    };
}

struct sbx_live *
sbx_lifecycle_find(const char *id)
{
    struct sbx_live *l = sbx_live_find(sbx_daemon, id);
    return l && !l->dying ? l : NULL;
}

static void
live_free(struct sbx_live *l)
{
    if (l->pidfd >= 0)
        close(l->pidfd); /* only now: the poll handle no longer watches it */
    sbx_sandbox_rec_free(l->rec);
    free(l->dir);
    free(l->sock_path);
    free(l);
}

struct destroy {
    struct sbx_live *l;
    struct sbx_error *err; /* what to answer, once the sandbox is forgotten */
    char *why;
    sbx_lifecycle_done_cb cb;
    void *ud;
};

static void destroy_done(struct destroy *d);

static void
on_poll_closed(uv_handle_t *h)
{
    struct sbx_live *l = h->data;
    struct destroy *d = l->destroy;
    live_free(l);
    if (d)
        destroy_done(d);
}

/* The pidfd stays open until the handle has closed (live_free): closing a watched fd early
 * lets its number be reused by a new sandbox's pidfd while libuv still knows the old one. */
static void
stop_watching(struct sbx_live *l)
{
    if (!l->polling)
        return;
    l->polling = false;
    uv_poll_stop(&l->poll);
}

/* Unlinks l from the table and frees it (after its poll handle has closed). */
static void
live_drop(struct sbx_live *l)
{
    sbx_live_remove(sbx_daemon, l);
    sbx_pool_forget(l);
    if (l->poll.data == l) { /* watched once: its handle must close first */
        stop_watching(l);
        uv_close((uv_handle_t *)&l->poll, on_poll_closed);
    } else {
        live_free(l);
    }
}

static char *
sandbox_dir(const char *id)
{
    char *p = NULL;
    if (asprintf(&p, "%s/sandboxes/%s", sbx_daemon->cfg.state_dir, id) < 0)
        return NULL;
    return p;
}

static struct sbx_live *
live_new(struct sbx_sandbox_rec *rec)
{
    struct sbx_live *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->rec = rec;
    l->pidfd = -1;
    l->dir = sandbox_dir(rec->id);
    if (l->dir == NULL || asprintf(&l->sock_path, "%s/agent.sock", l->dir) < 0) {
        free(l->dir);
        free(l);
        return NULL;
    }
    l->last_cpu_wall_ms = rec->started_at_ms;
    return l;
}

/* ---- destroy ---- */

static void destroy_send(struct destroy *d);

/* The caller hears back only once the sandbox is forgotten here too, its pidfd closed: a
 * client told "killed" finds nothing of it left. */
static void
destroy_done(struct destroy *d)
{
    if (d->cb)
        d->cb(d->err, d->ud);
    sbx_error_free(d->err);
    free(d->why);
    free(d);
}

/* The store row goes only once the spawner says nothing is left, so a crash in between leaves
 * a row that recovery cleans up rather than an orphan. */
static void
on_destroyed(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct destroy *d = ud;
    struct sbx_live *l = d->l;
    if (err && err->code == SBX_UNAVAILABLE) {
        destroy_send(d); /* the spawner restarted: ask the next one */
        return;
    }
    _cleanup_error_ struct sbx_error *store_err = NULL;
    if (err && err->code != SBX_NOT_FOUND) {
        sbx_log_error("sandbox_end", "sandbox=%s error=\"%s\"", l->rec->id, err->msg);
        sbx_error_set(&d->err, err->code, err->sys_errno, "%s", err->msg);
    } else {
        if (sbx_store_sandbox_delete(sbx_daemon->store, l->rec->id, &store_err) < 0 &&
            store_err->code != SBX_NOT_FOUND)
            sbx_log_error("sandbox_end", "sandbox=%s error=\"%s\"", l->rec->id, store_err->msg);
        sbx_log_info("sandbox_end", "sandbox=%s reason=%s", l->rec->id, d->why);
    }
    bool has_handle = l->poll.data == l;
    l->destroy = has_handle ? d : NULL;
    live_drop(l);
    arm_expiry();
    if (!has_handle)
        destroy_done(d);
}

static void
destroy_send(struct destroy *d)
{
    struct sbx_spawner_msg req = {.op = SBX_SPAWNER_DESTROY};
    snprintf(req.id, sizeof(req.id), "%s", d->l->rec->id);
    sbx_spawner_call(&req, -1, on_destroyed, d);
}

static void
destroy(struct sbx_live *l, const char *why, sbx_lifecycle_done_cb cb, void *ud)
{
    struct destroy *d = calloc(1, sizeof(*d));
    if (d == NULL || (d->why = strdup(why)) == NULL)
        abort();
    d->l = l;
    d->cb = cb;
    d->ud = ud;
    l->dying = true;
    stop_watching(l);
    destroy_send(d);
}

void
sbx_lifecycle_kill(struct sbx_live *l, sbx_lifecycle_done_cb cb, void *ud)
{
    destroy(l, "killed", cb, ud);
}

void
sbx_lifecycle_discard(struct sbx_live *l, const char *why)
{
    destroy(l, why, NULL, NULL);
}

static void
on_agent_exit(uv_poll_t *h, int status, int events)
{
    struct sbx_live *l = h->data;
    if (!l->dying)
        destroy(l, "agent exited", NULL, NULL);
}

static int
watch(struct sbx_live *l, struct sbx_error **err)
{
    struct sbx_sandbox_ref ref = ref_of(l);
    l->pidfd = sbx_sandbox_open_pidfd(&ref, err);
    if (l->pidfd < 0)
        return -1;
    int rc = uv_poll_init(sbx_daemon->loop, &l->poll, l->pidfd);
    if (rc < 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "watch the agent: %s", uv_strerror(rc));
    l->poll.data = l;
    l->polling = true;
    uv_poll_start(&l->poll, UV_READABLE, on_agent_exit);
    return 0;
}

/* ---- expiry ---- */

static void
on_expiry(uv_timer_t *t)
{
    int64_t now = sbx_wall_ms();
    struct sbx_live *l = sbx_daemon->live;
    while (l) {
        struct sbx_live *next = l->next;
        if (!l->dying && l->rec->end_at_ms <= now)
            destroy(l, "timeout", NULL, NULL);
        l = next;
    }
    arm_expiry();
}

static void
arm_expiry(void)
{
    int64_t soonest = INT64_MAX;
    for (struct sbx_live *l = sbx_daemon->live; l; l = l->next)
        if (!l->dying && l->rec->end_at_ms < soonest)
            soonest = l->rec->end_at_ms;
    if (soonest == INT64_MAX) {
        uv_timer_stop(&sbx_daemon->expiry);
        return;
    }
    int64_t delay = soonest - sbx_wall_ms();
    uv_timer_start(&sbx_daemon->expiry, on_expiry, delay > 0 ? (uint64_t)delay : 0, 0);
}

int
sbx_lifecycle_set_end(struct sbx_live *l, int64_t end_at_ms, struct sbx_error **err)
{
    if (sbx_store_sandbox_update_end_at(sbx_daemon->store, l->rec->id, end_at_ms, err) < 0)
        return -1;
    l->rec->end_at_ms = end_at_ms;
    arm_expiry();
    return 0;
}

/* ---- create ---- */

/* The agent's config, in a memfd: the spawner copies it into a sealed one of its own. A
 * pooled sandbox's has no client's identity yet: it gets it with POST /init (adopt). */
static int
config_fd(const struct sbx_sandbox_rec *rec, const struct sbx_template_ref *ref,
          struct sbx_error **err)
{
    json_error_t jerr;
    json_t *env = json_loads(rec->env_vars_json, 0, &jerr);
    json_t *cfg =
        json_pack("{s:s,s:o*}", "sandboxId", rec->id, "envVars", env ? env : json_object());
    if (rec->access_token)
        json_object_set_new(cfg, "accessToken", json_string(rec->access_token));
    if (rec->traffic_token)
        json_object_set_new(cfg, "trafficAccessToken", json_string(rec->traffic_token));
    json_object_set_new(cfg, "codeInterpreter", json_boolean(ref->code_interpreter));
    if (ref->start)
        json_object_set(cfg, "start", ref->start);
    if (ref->user[0])
        json_object_set_new(cfg, "defaultUser", json_string(ref->user));
    if (ref->workdir[0])
        json_object_set_new(cfg, "defaultWorkdir", json_string(ref->workdir));
    json_object_set_new(cfg, "memoryMiB", json_integer(rec->memory_mb));
    if (rec->pooled)
        json_object_set_new(cfg, "pooled", json_true());
    char *s = json_dumps(cfg, JSON_COMPACT);
    json_decref(cfg);
    if (s == NULL)
        return sbx_error_set(err, SBX_INTERNAL, 0, "cannot encode agent config");
    _cleanup_close_ int fd = memfd_create("sbx-agent-config", MFD_CLOEXEC);
    size_t len = strlen(s);
    bool ok = fd >= 0 && write(fd, s, len) == (ssize_t)len && lseek(fd, 0, SEEK_SET) == 0;
    sbx_secret_free(s);
    if (!ok)
        return sbx_error_sys(err, errno, "agent config");
    return steal_fd(&fd);
}

static char *
new_token(void)
{
    char tok[65];
    sbx_random_hex(tok, 32);
    char *s = strdup(tok);
    explicit_bzero(tok, sizeof(tok));
    return s;
}

/* What a client asked for, into rec: its template name, metadata, env vars, tokens, times. */
static void
assign(struct sbx_sandbox_rec *rec, const struct sbx_create_opts *o)
{
    free(rec->template_id);
    rec->template_id = strdup(o->template_id);
    free(rec->alias);
    rec->alias = o->alias ? strdup(o->alias) : NULL;
    free(rec->metadata_json);
    rec->metadata_json =
        o->metadata ? json_dumps(o->metadata, JSON_COMPACT | JSON_SORT_KEYS) : strdup("{}");
    free(rec->env_vars_json);
    rec->env_vars_json =
        o->env_vars ? json_dumps(o->env_vars, JSON_COMPACT | JSON_SORT_KEYS) : strdup("{}");
    if (o->secure) {
        rec->access_token = new_token();
        /* What the code-interpreter SDKs send on /contexts (E2B-Traffic-Access-Token); a
         * secret of its own, so that it never opens envd. */
        rec->traffic_token = new_token();
    }
    rec->started_at_ms = sbx_wall_ms();
    rec->end_at_ms = rec->started_at_ms + (int64_t)o->timeout_s * 1000;
    rec->allow_internet = o->allow_internet;
    rec->auto_pause = o->auto_pause;
    rec->pooled = false;
    if (o->cpu_count > 0)
        rec->cpu_count = o->cpu_count;
    if (o->memory_mb > 0)
        rec->memory_mb = o->memory_mb;
}

/* A new sandbox's record, row and live object (not in the table yet): a client's when o is
 * given, else a pool's, with no client's identity yet. */
static struct sbx_live *
new_live(const char *template_id, const struct sbx_create_opts *o, struct sbx_error **err)
{
    struct sbx_daemon *d = sbx_daemon;
    struct sbx_sandbox_rec *rec = calloc(1, sizeof(*rec));
    if (rec == NULL)
        abort();
    sbx_random_id(rec->id, SBX_DAEMON_ID_LEN);
    rec->template_id = strdup(template_id);
    rec->metadata_json = strdup("{}");
    rec->env_vars_json = strdup("{}");
    rec->started_at_ms = sbx_wall_ms();
    rec->end_at_ms = rec->started_at_ms + (int64_t)SBX_MAX_TIMEOUT_S * 1000;
    rec->cpu_count = d->cfg.cpu_millis / 1000 > 0 ? d->cfg.cpu_millis / 1000 : 1;
    rec->memory_mb = d->cfg.memory_mb;
    rec->disk_mb = d->cfg.disk_mb;
    rec->state = strdup("running");
    rec->pooled = true;
    if (o)
        assign(rec, o);
    struct sbx_live *l = live_new(rec);
    if (l == NULL)
        abort();
    if (sbx_store_free_uid_slot(d->store, &rec->uid_slot, err) < 0 ||
        sbx_store_sandbox_insert(d->store, rec, err) < 0) {
        live_drop(l);
        return NULL;
    }
    return l;
}

struct sbx_live *
sbx_lifecycle_new(const char *template_id, struct sbx_error **err)
{
    return new_live(template_id, NULL, err);
}

/* Moves what a client asked for from one record to another (a pooled sandbox that refused
 * its client, to a cold one). */
static void
move_client_fields(struct sbx_sandbox_rec *to, struct sbx_sandbox_rec *from)
{
#define MOVE(f)                                                                                    \
    do {                                                                                           \
        free(to->f);                                                                               \
        to->f = from->f;                                                                           \
        from->f = NULL;                                                                            \
    } while (0)
    MOVE(template_id);
    MOVE(alias);
    MOVE(metadata_json);
    MOVE(env_vars_json);
    MOVE(access_token);
    MOVE(traffic_token);
#undef MOVE
    to->started_at_ms = from->started_at_ms;
    to->end_at_ms = from->end_at_ms;
    to->allow_internet = from->allow_internet;
    to->auto_pause = from->auto_pause;
    to->pooled = false;
}

/* A create that waits for the spawner, or for a pooled sandbox's agent. */
struct spawning {
    struct sbx_live *l;
    struct timespec start;
    sbx_lifecycle_create_cb cb;          /* a client's create */
    sbx_lifecycle_spawned_cb spawned_cb; /* a pool's */
    void *ud;
    bool wait_ready; /* the template has a start command: answer once it is ready */
};

static uint64_t
since_us(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)((now.tv_sec - start->tv_sec) * 1000000 +
                      (now.tv_nsec - start->tv_nsec) / 1000);
}

/* Undoes a create that failed half way: what the spawner may have made, and the row. */
static void
abandon(struct sbx_live *l, bool spawner_may_hold_it)
{
    if (spawner_may_hold_it) {
        destroy(l, "create failed", NULL, NULL); /* deletes the row too */
        return;
    }
    _cleanup_error_ struct sbx_error *ignored = NULL;
    sbx_store_sandbox_delete(sbx_daemon->store, l->rec->id, &ignored);
    live_drop(l);
}

/* A client's sandbox is ready: into the table, and the answer. */
static void
hand_out(struct spawning *c)
{
    sbx_live_insert(sbx_daemon, c->l);
    arm_expiry();
    c->cb(c->l, NULL, since_us(&c->start), c->ud);
    free(c);
}

/* The agent answered GET /sbx/ready: the template's start command is ready, or failed. */
static void
on_started(int status, const char *body, size_t len, void *ud)
{
    struct spawning *c = ud;
    if (status == 204) {
        hand_out(c);
        return;
    }
    json_error_t jerr;
    json_t *j = body ? json_loadb(body, len, 0, &jerr) : NULL;
    const char *why = json_string_value(json_object_get(j, "message"));
    _cleanup_error_ struct sbx_error *err = NULL;
    sbx_error_set(&err, SBX_FAILED_PRECONDITION, 0, "the template's %s",
                  why ? why : "start command did not become ready");
    json_decref(j);
    destroy(c->l, "start command failed", NULL, NULL);
    c->cb(NULL, err, 0, c->ud);
    free(c);
}

static void
on_spawned(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct spawning *c = ud;
    struct sbx_live *l = c->l;
    _cleanup_error_ struct sbx_error *e = NULL;
    if (err == NULL) {
        l->rec->pid = (int)reply->pid;
        l->rec->pid_start_time = reply->start_time;
        if (watch(l, &e) < 0 ||
            sbx_store_sandbox_update_pid(sbx_daemon->store, l->rec->id, l->rec->pid,
                                         l->rec->pid_start_time, &e) < 0) {
            abandon(l, true);
            err = e;
            l = NULL;
        }
    } else {
        /* The spawner cleans up a spawn it refused or that failed; one it was doing when it
         * died may have left a dir and a cgroup: ask the next spawner to remove them. */
        abandon(l, err->code == SBX_UNAVAILABLE);
        l = NULL;
    }
    if (c->spawned_cb) {
        c->spawned_cb(l, err, c->ud);
        free(c);
    } else if (l && c->wait_ready) {
        /* Up to the ready command's 10 minutes and a little more (templates.md §4.3). */
        sbx_http_call(sbx_daemon->loop, l->sock_path, "GET", "/sbx/ready", NULL, 4096,
                      SBX_START_READY_MS, on_started, c);
    } else if (l) {
        hand_out(c);
    } else {
        c->cb(NULL, err, 0, c->ud);
        free(c);
    }
}

static void
spawn(struct spawning *c)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_sandbox_rec *rec = c->l->rec;
    /* The name the client gave (with its tag), else the template's id or a pool's name. */
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    int cfd = sbx_templates_resolve(sbx_daemon->store, rec->alias ? rec->alias : rec->template_id,
                                    &ref, &err) < 0
                  ? -1
                  : config_fd(rec, &ref, &err);
    c->wait_ready = ref.start != NULL;
    if (cfd < 0) {
        on_spawned(NULL, err, c);
        return;
    }
    struct sbx_spawner_msg req = {
        .op = SBX_SPAWNER_SPAWN,
        .uid_slot = (uint64_t)rec->uid_slot,
        .memory_bytes = (uint64_t)rec->memory_mb << 20,
        .pids_max = (uint64_t)sbx_daemon->cfg.pids_max,
        .cpu_millis = (uint64_t)rec->cpu_count * 1000,
        .disk_bytes = (uint64_t)rec->disk_mb << 20,
    };
    snprintf(req.id, sizeof(req.id), "%s", rec->id);
    snprintf(req.template_name, sizeof(req.template_name), "%s", rec->template_id);
    snprintf(req.layers, sizeof(req.layers), "%s", ref.layers);
    sbx_spawner_call(&req, cfd, on_spawned, c);
}

void
sbx_lifecycle_spawn(struct sbx_live *l, sbx_lifecycle_spawned_cb cb, void *ud)
{
    struct spawning *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    *c = (struct spawning){.l = l, .spawned_cb = cb, .ud = ud};
    clock_gettime(CLOCK_MONOTONIC, &c->start);
    spawn(c);
}

/* ---- a pooled sandbox for a client ---- */

static void
fail_create(struct spawning *c, struct sbx_error *err)
{
    c->cb(NULL, err, 0, c->ud);
    free(c);
}

static void
on_adopted(int status, const char *body, size_t len, void *ud)
{
    struct spawning *c = ud;
    struct sbx_live *l = c->l;
    if (status == 204) {
        hand_out(c);
        return;
    }
    /* The agent did not take its identity: never hand it out; the client gets a cold one. */
    sbx_log_warn("pool", "sandbox=%s error=\"POST /init answered %d\" action=\"create cold\"",
                 l->rec->id, status);
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_live *fresh = new_live(l->rec->template_id, NULL, &err);
    if (fresh)
        move_client_fields(fresh->rec, l->rec);
    destroy(l, "pooled sandbox refused its client", NULL, NULL);
    if (fresh && sbx_store_sandbox_adopt(sbx_daemon->store, fresh->rec, &err) < 0) {
        abandon(fresh, false);
        fresh = NULL;
    }
    if (fresh == NULL) {
        fail_create(c, err);
        return;
    }
    c->l = fresh;
    spawn(c);
}

/* The pooled sandbox l becomes the client's: its row first (a crash after this leaves a
 * listed sandbox that recovery finds), then the agent learns its tokens and env vars. */
static void
adopt(struct spawning *c, const struct sbx_create_opts *o)
{
    struct sbx_live *l = c->l;
    _cleanup_error_ struct sbx_error *err = NULL;
    assign(l->rec, o);
    if (sbx_store_sandbox_adopt(sbx_daemon->store, l->rec, &err) < 0) {
        destroy(l, "adopt failed", NULL, NULL);
        fail_create(c, err);
        return;
    }
    json_error_t jerr;
    json_t *body =
        json_pack("{s:s*,s:s*,s:o}", "accessToken", l->rec->access_token, "trafficAccessToken",
                  l->rec->traffic_token, "envVars", json_loads(l->rec->env_vars_json, 0, &jerr));
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    sbx_http_call(sbx_daemon->loop, l->sock_path, "POST", "/init", s, 1024, SBX_POOL_INIT_MS,
                  on_adopted, c);
    sbx_secret_free(s);
}

void
sbx_lifecycle_create(const struct sbx_create_opts *o, sbx_lifecycle_create_cb cb, void *ud)
{
    struct spawning *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    *c = (struct spawning){.cb = cb, .ud = ud};
    clock_gettime(CLOCK_MONOTONIC, &c->start);
    c->l = sbx_pool_take(o->alias ? o->alias : o->template_id); /* pools go by name */
    if (c->l) {
        adopt(c, o);
        return;
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    /* Written with the client's values before the sandbox starts: a crash in between leaves
     * a row that recovery cleans up. */
    c->l = new_live(o->template_id, o, &err);
    if (c->l == NULL) {
        fail_create(c, err);
        return;
    }
    spawn(c);
}

/* ---- recovery ---- */

int
sbx_lifecycle_recover(struct sbx_error **err)
{
    struct sbx_daemon *d = sbx_daemon;
    _cleanup_sandbox_list_ struct sbx_sandbox_list *all = NULL;
    if (sbx_store_sandbox_list_all(d->store, &all, err) < 0)
        return -1;
    size_t alive = 0, gone = 0;
    for (size_t i = 0; i < all->n; i++) {
        struct sbx_sandbox_rec *rec = all->items[i];
        all->items[i] = NULL;
        struct sbx_live *l = live_new(rec);
        if (l == NULL) {
            sbx_sandbox_rec_free(rec);
            return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
        }
        sbx_live_insert(d, l);
        struct sbx_sandbox_ref ref = ref_of(l);
        _cleanup_error_ struct sbx_error *e = NULL;
        if (rec->pooled) {
            /* A pool's sandbox of the front end before: never handed out, so nobody's. The
             * pools start afresh. */
            gone++;
            destroy(l, "pooled by an earlier front end", NULL, NULL);
            continue;
        }
        if (rec->pid > 0 && sbx_sandbox_is_alive(&ref) && watch(l, &e) == 0) {
            alive++;
            continue;
        }
        /* Its agent died while we were away (or never started): clean up what is left. */
        gone++;
        destroy(l, "agent exited while the daemon was down", NULL, NULL);
    }
    sbx_log_info("recover", "running=%zu cleaned=%zu", alive, gone);
    arm_expiry();
    return 0;
}

/* Forgets the table without touching the sandboxes: they outlive the daemon. */
void
sbx_lifecycle_shutdown(void)
{
    while (sbx_daemon->live)
        live_drop(sbx_daemon->live);
    uv_timer_stop(&sbx_daemon->expiry);
}
