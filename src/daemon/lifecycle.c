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
    sbx_lifecycle_unwatch(l);
    if (l->rec->uid_slot >= 0 && l->rec->uid_slot < SBX_MAX_SANDBOXES &&
        sbx_daemon->by_slot[l->rec->uid_slot] == l)
        sbx_daemon->by_slot[l->rec->uid_slot] = NULL;
    sbx_netset_free(l->net);
    sbx_sandbox_rec_free(l->rec);
    free(l->dir);
    free(l->sock_path);
    free(l);
}

static void
on_watch_closed(uv_handle_t *h)
{
    free(h);
}

void
sbx_lifecycle_unwatch(struct sbx_live *l)
{
    if (l->poll) {
        uv_poll_stop(l->poll);
        uv_close((uv_handle_t *)l->poll, on_watch_closed);
        l->poll = NULL;
    }
    /* Safe right after uv_poll_stop (libuv: "the fd can be safely closed immediately after a
     * call to uv_poll_stop()"): the number cannot reach a poll again. */
    if (l->pidfd >= 0)
        close(l->pidfd);
    l->pidfd = -1;
}

/* Unlinks l from the table and frees it. */
static void
live_drop(struct sbx_live *l)
{
    sbx_live_remove(sbx_daemon, l);
    sbx_pool_forget(l);
    sbx_volumes_forget(l);
    live_free(l);
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
    l->net = sbx_netset_load(rec->network_json);
    return l;
}

/* From now on its slot (its network address) names it. */
static void
index_slot(struct sbx_live *l)
{
    if (l->rec->uid_slot >= 0 && l->rec->uid_slot < SBX_MAX_SANDBOXES)
        sbx_daemon->by_slot[l->rec->uid_slot] = l;
}

/* ---- destroy ---- */

struct destroy {
    struct sbx_live *l;
    struct sbx_error *err; /* what to answer, once the sandbox is forgotten */
    char *why;
    sbx_lifecycle_done_cb cb;
    void *ud;
};

static void destroy_send(struct destroy *d);

static void
destroy_answer(void *ud)
{
    struct destroy *d = ud;
    if (d->cb)
        d->cb(d->err, d->ud);
    sbx_error_free(d->err);
    free(d->why);
    free(d);
}

/* The store row goes only once the spawner says nothing is left, so a crash in between leaves
 * a row that recovery cleans up rather than an orphan. The caller hears back once the sandbox
 * is forgotten here too: a client told "killed" finds nothing of it left. */
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
        if (!l->rec->pooled) {
            sbx_logs_event(l->rec->id, "info", "sandbox_end", "reason=%s", d->why);
            if (sbx_store_log_close(sbx_daemon->store, l->rec->id, sbx_wall_ms(), &store_err) < 0)
                sbx_log_warn("sandbox_log", "sandbox=%s error=\"%s\"", l->rec->id, store_err->msg);
            sbx_metrics_ended(d->why);
        }
    }
    live_drop(l);
    sbx_lifecycle_arm_expiry();
    sbx_durable(sbx_durable_mark(), destroy_answer, d);
}

static void
destroy_send(struct destroy *d)
{
    struct sbx_spawner_msg req = {.op = SBX_SPAWNER_DESTROY};
    snprintf(req.id, sizeof(req.id), "%s", d->l->rec->id);
    sbx_spawner_call(&req, -1, on_destroyed, d);
}

static void
on_log_captured(void *ud)
{
    destroy_send(ud);
}

/* The sandbox's log gets why it ends and, while its agent still runs, the agent's own log;
 * then the spawner destroys it. */
void
sbx_lifecycle_destroy(struct sbx_live *l, const char *why, sbx_lifecycle_done_cb cb, void *ud)
{
    l->dying = true;
    if (sbx_pause_queue_kill(l, why, cb, ud))
        return;
    struct destroy *d = calloc(1, sizeof(*d));
    if (d == NULL || (d->why = strdup(why)) == NULL)
        abort();
    d->l = l;
    d->cb = cb;
    d->ud = ud;
    sbx_lifecycle_unwatch(l);
    if (l->rec->pooled) {
        destroy_send(d); /* nobody's sandbox: no log to write */
        return;
    }
    /* A paused sandbox's agent is frozen or gone: its ring cannot be read. */
    bool alive =
        (strcmp(why, "killed") == 0 || strcmp(why, "timeout") == 0) && sbx_live_is_running(l);
    if (strcmp(why, "timeout") == 0)
        sbx_logs_event(l->rec->id, "warn", "sandbox_timeout",
                       "message=\"sandbox timed out\" timeout_s=%lld",
                       (long long)(l->rec->end_at_ms - l->rec->started_at_ms) / 1000);
    else if (strcmp(why, "killed") == 0)
        sbx_logs_event(l->rec->id, "info", "sandbox_killed", "by=api");
    else
        sbx_logs_event(l->rec->id, "warn", why, "%s", "");
    if (strcmp(why, "create_failed") == 0)
        destroy_send(d);
    else
        sbx_logs_capture(l, alive, on_log_captured, d);
}

void
sbx_lifecycle_kill(struct sbx_live *l, sbx_lifecycle_done_cb cb, void *ud)
{
    sbx_lifecycle_destroy(l, "killed", cb, ud);
}

void
sbx_lifecycle_agent_gone(struct sbx_live *l)
{
    if (l->dying)
        return;
    if (l->ops) {
        l->agent_gone = true; /* pause.c decides once what is under way has ended */
        return;
    }
    l->agent_gone = false;
    /* A paused sandbox keeps its disk: it is resumed from there (booted again). */
    if (sbx_live_is_paused(l))
        sbx_pause_quietly(l, false, "processes_gone");
    else
        sbx_lifecycle_destroy(l, "agent_exited", NULL, NULL);
}

static void
on_agent_exit(uv_poll_t *h, int status, int events)
{
    struct sbx_live *l = h->data;
    sbx_lifecycle_unwatch(l);
    sbx_lifecycle_agent_gone(l);
}

int
sbx_lifecycle_watch(struct sbx_live *l, struct sbx_error **err)
{
    struct sbx_sandbox_ref ref = ref_of(l);
    l->pidfd = sbx_sandbox_open_pidfd(&ref, err);
    if (l->pidfd < 0)
        return -1;
    l->poll = calloc(1, sizeof(*l->poll));
    if (l->poll == NULL)
        abort();
    int rc = uv_poll_init(sbx_daemon->loop, l->poll, l->pidfd);
    if (rc < 0) {
        free(l->poll);
        l->poll = NULL;
        return sbx_error_set(err, SBX_INTERNAL, 0, "watch the agent: %s", uv_strerror(rc));
    }
    l->poll->data = l;
    uv_poll_start(l->poll, UV_READABLE, on_agent_exit);
    return 0;
}

/* ---- expiry ---- */

/* When l is due: a running sandbox at its end, a paused one when it has been kept for the
 * operator's retention (its end_at is when it was paused). Never while a pause or resume is
 * under way: its end re-arms the timer. */
static int64_t
due_at(const struct sbx_live *l)
{
    if (l->dying || l->ops)
        return INT64_MAX;
    if (sbx_live_is_paused(l))
        return l->rec->end_at_ms + sbx_daemon->cfg.paused_retention_s * 1000;
    return l->rec->end_at_ms;
}

static void
on_expiry(uv_timer_t *t)
{
    int64_t now = sbx_wall_ms();
    struct sbx_live *l = sbx_daemon->live;
    while (l) {
        struct sbx_live *next = l->next;
        if (due_at(l) > now) {
            l = next;
            continue;
        }
        if (sbx_live_is_paused(l))
            sbx_lifecycle_destroy(l, "paused_retention", NULL, NULL);
        else if (l->rec->auto_pause)
            sbx_pause_quietly(l, l->rec->auto_pause_memory, "timeout");
        else
            sbx_lifecycle_destroy(l, "timeout", NULL, NULL);
        l = next;
    }
    sbx_lifecycle_arm_expiry();
}

void
sbx_lifecycle_arm_expiry(void)
{
    int64_t soonest = INT64_MAX;
    for (struct sbx_live *l = sbx_daemon->live; l; l = l->next) {
        int64_t due = due_at(l);
        if (due < soonest)
            soonest = due;
    }
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
    sbx_lifecycle_arm_expiry();
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
    /* A pooled row with a volume is that volume's content service (volumes.c). */
    if (rec->pooled && strcmp(rec->volume_mounts_json, "[]") != 0)
        json_object_set_new(cfg, "volumeService", json_true());
    else if (rec->pooled)
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

/* The template a sandbox is of: the name the client gave (with its tag), else the
 * template's id or a pool's name. */
int
sbx_lifecycle_template_of(const struct sbx_sandbox_rec *rec, struct sbx_template_ref *ref,
                          struct sbx_error **err)
{
    return sbx_templates_resolve(sbx_daemon->store, rec->alias ? rec->alias : rec->template_id, ref,
                                 err);
}

int
sbx_lifecycle_config_fd(const struct sbx_live *l, struct sbx_error **err)
{
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    return sbx_lifecycle_template_of(l->rec, &ref, err) < 0 ? -1 : config_fd(l->rec, &ref, err);
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
    rec->auto_pause_memory = o->auto_pause_memory;
    rec->auto_resume = o->auto_resume;
    rec->timeout_s = o->timeout_s;
    free(rec->volume_mounts_json);
    rec->volume_mounts_json = strdup(o->volume_mounts_json ? o->volume_mounts_json : "[]");
    rec->pooled = false;
    if (o->cpu_count > 0)
        rec->cpu_count = o->cpu_count;
    if (o->memory_mb > 0)
        rec->memory_mb = o->memory_mb;
    free(rec->network_json);
    rec->network_json = o->network && json_object_size(o->network) > 0
                            ? json_dumps(o->network, JSON_COMPACT | JSON_SORT_KEYS)
                            : NULL;
}

/* The settings of l->rec take effect in the front end (the spawner is told separately). */
static void
load_network(struct sbx_live *l)
{
    sbx_netset_free(l->net);
    l->net = sbx_netset_load(l->rec->network_json);
}

/* A client's sandbox gets its log when it becomes the client's (a pool's has none). */
static void
open_log(const struct sbx_sandbox_rec *rec)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_store_log_open(sbx_daemon->store, rec->id, rec->template_id, rec->started_at_ms, &err) <
        0)
        sbx_log_warn("sandbox_log", "sandbox=%s error=\"%s\"", rec->id, err->msg);
    sbx_logs_event(rec->id, "info", "sandbox_create", "template=%s timeout_s=%lld memory_mb=%d",
                   rec->template_id, (long long)(rec->end_at_ms - rec->started_at_ms) / 1000,
                   rec->memory_mb);
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
    rec->auto_pause_memory = true;
    rec->timeout_s = SBX_DEFAULT_TIMEOUT_S;
    rec->volume_mounts_json = strdup("[]");
    rec->pooled = true;
    if (o)
        assign(rec, o);
    rec->uid_slot = -1;
    struct sbx_live *l = live_new(rec);
    if (l == NULL)
        abort();
    if (sbx_store_free_uid_slot(d->store, &rec->uid_slot, err) < 0 ||
        sbx_store_sandbox_insert(d->store, rec, err) < 0) {
        rec->uid_slot = -1;
        live_drop(l);
        return NULL;
    }
    if (!rec->pooled)
        open_log(rec);
    index_slot(l);
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
    MOVE(volume_mounts_json);
    MOVE(network_json);
#undef MOVE
    to->started_at_ms = from->started_at_ms;
    to->end_at_ms = from->end_at_ms;
    to->allow_internet = from->allow_internet;
    to->auto_pause = from->auto_pause;
    to->auto_pause_memory = from->auto_pause_memory;
    to->auto_resume = from->auto_resume;
    to->timeout_s = from->timeout_s;
    to->pooled = false;
}

/* A create that waits for the spawner, or for a pooled sandbox's agent. */
struct spawning {
    struct sbx_live *l;
    uint64_t start_us;
    sbx_lifecycle_create_cb cb;          /* a client's create */
    sbx_lifecycle_spawned_cb spawned_cb; /* a pool's */
    void *ud;
    bool wait_ready;       /* the template has a start command: answer once it is ready */
    uint64_t durable_mark; /* the row's latest write (sbx_durable) */
};

/* Undoes a create that failed half way: what the spawner may have made, and the row. */
static void
abandon(struct sbx_live *l, bool spawner_may_hold_it)
{
    if (spawner_may_hold_it) {
        sbx_lifecycle_destroy(l, "create_failed", NULL, NULL); /* deletes the row too */
        return;
    }
    _cleanup_error_ struct sbx_error *ignored = NULL;
    sbx_store_sandbox_delete(sbx_daemon->store, l->rec->id, &ignored);
    live_drop(l);
}

static void
hand_out_now(void *ud)
{
    struct spawning *c = ud;
    sbx_live_insert(sbx_daemon, c->l);
    sbx_lifecycle_arm_expiry();
    uint64_t us = sbx_now_us() - c->start_us;
    sbx_metrics_created(us);
    c->cb(c->l, NULL, us, c->ud);
    free(c);
}

/* A client's sandbox is ready: into the table, and the answer, once its row is on disk. */
static void
hand_out(struct spawning *c)
{
    sbx_durable(c->durable_mark, hand_out_now, c);
}

/* The agent answered GET /sbx/ready: the template's start command is ready, or failed. */
static void
on_started(int status, const char *body, size_t len, const char *error, void *ud)
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
    sbx_lifecycle_destroy(c->l, "create_failed", NULL, NULL);
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
        if (sbx_lifecycle_watch(l, &e) < 0 ||
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
        sbx_http_call(sbx_daemon->loop, l->sock_path, "GET", "/sbx/ready", NULL, NULL, 4096,
                      SBX_START_READY_MS, on_started, c);
    } else if (l) {
        hand_out(c);
    } else {
        sbx_metrics_create_failed(err->code);
        c->cb(NULL, err, 0, c->ud);
        free(c);
    }
}

/* The SPAWN of l (for a reboot: on the disk its earlier boot left) on the layers of ref. */
static int
spawn_req(const struct sbx_live *l, const struct sbx_template_ref *ref, bool reboot,
          struct sbx_spawner_msg *req, struct sbx_error **err)
{
    const struct sbx_sandbox_rec *rec = l->rec;
    *req = (struct sbx_spawner_msg){
        .op = SBX_SPAWNER_SPAWN,
        .uid_slot = (uint64_t)rec->uid_slot,
        .memory_bytes = (uint64_t)rec->memory_mb << 20,
        .pids_max = (uint64_t)sbx_daemon->cfg.pids_max,
        .cpu_millis = (uint64_t)rec->cpu_count * 1000,
        .disk_bytes = (uint64_t)rec->disk_mb << 20,
        .reboot = reboot,
    };
    snprintf(req->id, sizeof(req->id), "%s", rec->id);
    snprintf(req->template_name, sizeof(req->template_name), "%s", rec->template_id);
    snprintf(req->layers, sizeof(req->layers), "%s", ref->layers);
    sbx_netset_to_msg(l->net, req); /* in place before the agent starts */
    return sbx_volumes_spawn_lines(rec->volume_mounts_json, req->volumes, sizeof(req->volumes),
                                   err);
}

int
sbx_lifecycle_spawn_req(const struct sbx_live *l, bool reboot, struct sbx_spawner_msg *req,
                        struct sbx_error **err)
{
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    return sbx_lifecycle_template_of(l->rec, &ref, err) < 0 ? -1
                                                            : spawn_req(l, &ref, reboot, req, err);
}

static void
spawn_now(void *ud)
{
    struct spawning *c = ud;
    _cleanup_error_ struct sbx_error *err = NULL;
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    struct sbx_spawner_msg req;
    int cfd = -1;
    if (sbx_lifecycle_template_of(c->l->rec, &ref, &err) < 0 ||
        spawn_req(c->l, &ref, false, &req, &err) < 0 ||
        (cfd = config_fd(c->l->rec, &ref, &err)) < 0) {
        on_spawned(NULL, err, c);
        return;
    }
    c->wait_ready = ref.start != NULL;
    sbx_spawner_call(&req, cfd, on_spawned, c);
}

/* Its row is on disk first: a power cut then leaves a row that recovery cleans up, never a
 * sandbox dir that nothing knows of. */
static void
spawn(struct spawning *c)
{
    c->durable_mark = sbx_durable_mark();
    sbx_durable(c->durable_mark, spawn_now, c);
}

void
sbx_lifecycle_spawn(struct sbx_live *l, sbx_lifecycle_spawned_cb cb, void *ud)
{
    struct spawning *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    *c = (struct spawning){.l = l, .spawned_cb = cb, .ud = ud};
    c->start_us = sbx_now_us();
    spawn(c);
}

/* ---- a pooled sandbox for a client ---- */

static void
fail_create(struct spawning *c, struct sbx_error *err)
{
    sbx_metrics_create_failed(err->code);
    c->cb(NULL, err, 0, c->ud);
    free(c);
}

/* A pooled sandbox did not become the client's: never hand it out; the client gets a cold
 * one. */
static void
adopt_failed(struct spawning *c, const char *why)
{
    struct sbx_live *l = c->l;
    sbx_log_warn("pool", "sandbox=%s error=\"%s\" action=\"create cold\"", l->rec->id, why);
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_live *fresh = new_live(l->rec->template_id, NULL, &err);
    if (fresh) {
        move_client_fields(fresh->rec, l->rec);
        load_network(fresh);
    }
    if (!l->dying)
        sbx_lifecycle_destroy(l, "pool_refused_client", NULL, NULL);
    if (fresh && sbx_store_sandbox_adopt(sbx_daemon->store, fresh->rec, &err) < 0) {
        abandon(fresh, false);
        fresh = NULL;
    }
    if (fresh)
        open_log(fresh->rec);
    if (fresh == NULL) {
        fail_create(c, err);
        return;
    }
    c->l = fresh;
    spawn(c);
}

static void
on_adopted(int status, const char *body, size_t len, const char *error, void *ud)
{
    struct spawning *c = ud;
    if (status == 204) {
        hand_out(c);
        return;
    }
    /* The agent did not take its identity: never hand it out; the client gets a cold one. */
    char why[128];
    if (error)
        snprintf(why, sizeof(why), "POST /init: %s", error);
    else
        snprintf(why, sizeof(why), "POST /init answered %d", status);
    adopt_failed(c, why);
}

/* The agent learns its client's tokens and env vars. */
static void
init_agent(struct spawning *c)
{
    struct sbx_live *l = c->l;
    json_error_t jerr;
    json_t *body =
        json_pack("{s:s*,s:s*,s:o}", "accessToken", l->rec->access_token, "trafficAccessToken",
                  l->rec->traffic_token, "envVars", json_loads(l->rec->env_vars_json, 0, &jerr));
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    sbx_http_call(sbx_daemon->loop, l->sock_path, "POST", "/init", NULL, s, 1024, SBX_POOL_INIT_MS,
                  on_adopted, c);
    sbx_secret_free(s);
}

static void
on_policy_applied(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct spawning *c = ud;
    if (err)
        adopt_failed(c, err->msg);
    else
        init_agent(c);
}

/* The pooled sandbox l becomes the client's: its row first (a crash after this leaves a
 * listed sandbox that recovery finds), then its egress rules (it was spawned with none, as
 * nobody's), and only then does the agent take the client's identity: the client's code
 * never runs with more network than the client asked for. */
static void
adopt(struct spawning *c, const struct sbx_create_opts *o)
{
    struct sbx_live *l = c->l;
    _cleanup_error_ struct sbx_error *err = NULL;
    assign(l->rec, o);
    if (sbx_store_sandbox_adopt(sbx_daemon->store, l->rec, &err) < 0) {
        l->rec->pooled = true; /* still the pool's in the store: nobody's log to write */
        sbx_lifecycle_destroy(l, "adopt_failed", NULL, NULL);
        fail_create(c, err);
        return;
    }
    c->durable_mark = sbx_durable_mark();
    open_log(l->rec);
    load_network(l);
    if (sbx_netset_is_default(l->net)) {
        init_agent(c);
        return;
    }
    struct sbx_spawner_msg req = {.op = SBX_SPAWNER_NET_POLICY};
    snprintf(req.id, sizeof(req.id), "%s", l->rec->id);
    sbx_netset_to_msg(l->net, &req);
    sbx_spawner_call(&req, -1, on_policy_applied, c);
}

void
sbx_lifecycle_create(const struct sbx_create_opts *o, sbx_lifecycle_create_cb cb, void *ud)
{
    struct spawning *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    *c = (struct spawning){.cb = cb, .ud = ud};
    c->start_us = sbx_now_us();
    /* A pooled sandbox runs already, without the volumes this one would mount. Pools go by
     * the name the client gave. */
    c->l = o->volume_mounts_json ? NULL : sbx_pool_take(o->alias ? o->alias : o->template_id);
    sbx_metrics_pool_take(c->l != NULL);
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
    size_t alive = 0, paused = 0, gone = 0;
    for (size_t i = 0; i < all->n; i++) {
        struct sbx_sandbox_rec *rec = all->items[i];
        all->items[i] = NULL;
        struct sbx_live *l = live_new(rec);
        if (l == NULL) {
            sbx_sandbox_rec_free(rec);
            return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
        }
        sbx_live_insert(d, l);
        /* Sandboxes of an sbx from before sandbox logs get one now. */
        _cleanup_error_ struct sbx_error *log_err = NULL;
        if (!rec->pooled)
            sbx_store_log_open(d->store, rec->id, rec->template_id, rec->started_at_ms, &log_err);
        index_slot(l);
        struct sbx_sandbox_ref ref = ref_of(l);
        _cleanup_error_ struct sbx_error *e = NULL;
        if (rec->pooled) {
            /* A pool's sandbox of the front end before: never handed out, so nobody's. The
             * pools start afresh. */
            gone++;
            sbx_lifecycle_destroy(l, "pooled_by_earlier_frontend", NULL, NULL);
            continue;
        }
        bool agent = rec->pid > 0 && sbx_sandbox_is_alive(&ref) && sbx_lifecycle_watch(l, &e) == 0;
        if (sbx_live_is_paused(l)) {
            /* Kept: frozen (its agent's pidfd still alive), or on its disk. Either way what a
             * pause or resume cut short is brought in line with the record. */
            paused++;
            sbx_pause_settle(l, agent);
            continue;
        }
        if (agent) {
            alive++;
            sbx_pause_settle(l, true);
            continue;
        }
        /* Its agent died while we were away (or never started): clean up what is left. */
        gone++;
        sbx_lifecycle_destroy(l, "agent_exited_while_down", NULL, NULL);
    }
    sbx_log_info("recover", "running=%zu paused=%zu cleaned=%zu", alive, paused, gone);
    sbx_lifecycle_arm_expiry();
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
