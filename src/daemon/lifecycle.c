/* Sandbox lifecycle in the daemon: create (store first, then spawn), kill, expiry at end_at,
 * death of an agent, and recovery of running sandboxes after a daemon restart. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"

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

static void
on_poll_closed(uv_handle_t *h)
{
    live_free(h->data);
}

/* Unlinks l from the table and frees it (after its poll handle has closed). */
static void
live_drop(struct sbx_live *l)
{
    sbx_live_remove(sbx_daemon, l);
    if (l->polling) {
        l->polling = false;
        /* Stop watching and close the pidfd now, not on the next loop turn: a client told
         * "killed" must find nothing of the sandbox left. */
        uv_poll_stop(&l->poll);
        close(l->pidfd);
        l->pidfd = -1;
        uv_close((uv_handle_t *)&l->poll, on_poll_closed);
    } else {
        live_free(l);
    }
}

/* Destroys the sandbox and forgets it. The store row goes last, so a crash in between
 * leaves a row that recovery cleans up rather than an orphan. */
static int
teardown(struct sbx_live *l, const char *why, struct sbx_error **err)
{
    struct sbx_sandbox_ref ref = ref_of(l);
    if (sbx_sandbox_destroy(&ref, err) < 0)
        return sbx_error_prefix(err, "destroy sandbox %s", l->rec->id);
    if (sbx_store_sandbox_delete(sbx_daemon->store, l->rec->id, err) < 0 &&
        (*err)->code != SBX_NOT_FOUND)
        return -1;
    sbx_error_free(*err);
    *err = NULL;
    sbx_log_info("sandbox_end", "sandbox=%s reason=%s", l->rec->id, why);
    live_drop(l);
    arm_expiry();
    return 0;
}

static void
on_agent_exit(uv_poll_t *h, int status, int events)
{
    struct sbx_live *l = h->data;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (teardown(l, "agent exited", &err) < 0)
        sbx_log_error("sandbox_end", "sandbox=%s error=\"%s\"", l->rec->id, err->msg);
}

static int
watch(struct sbx_live *l, struct sbx_error **err)
{
    struct sbx_sandbox_ref ref = ref_of(l);
    l->pidfd = sbx_sandbox_open_pidfd(&ref, err);
    if (l->pidfd < 0)
        return -1;
    uv_poll_init(sbx_daemon->loop, &l->poll, l->pidfd);
    l->poll.data = l;
    l->polling = true;
    uv_poll_start(&l->poll, UV_READABLE, on_agent_exit);
    return 0;
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

/* ---- expiry ---- */

static void
on_expiry(uv_timer_t *t)
{
    int64_t now = sbx_wall_ms();
    struct sbx_live *l = sbx_daemon->live;
    while (l) {
        struct sbx_live *next = l->next;
        if (l->rec->end_at_ms <= now) {
            _cleanup_error_ struct sbx_error *err = NULL;
            if (teardown(l, "timeout", &err) < 0)
                sbx_log_error("sandbox_end", "sandbox=%s error=\"%s\"", l->rec->id, err->msg);
        }
        l = next;
    }
    arm_expiry();
}

static void
arm_expiry(void)
{
    int64_t soonest = INT64_MAX;
    for (struct sbx_live *l = sbx_daemon->live; l; l = l->next)
        if (l->rec->end_at_ms < soonest)
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

/* The listening socket is created here, in a directory the sandbox cannot see, and only
 * its fd crosses into the sandbox: no path inside a sandbox ever leads to the daemon. */
static int
listen_unix(const char *path, struct sbx_error **err)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "socket path '%s' is too long; use a shorter --state-dir", path);
    strcpy(addr.sun_path, path);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sbx_error_sys(err, errno, "socket");
    unlink(path);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return sbx_error_sys(err, errno, "bind %s", path);
    if (chmod(path, 0600) < 0 || listen(fd, 1024) < 0)
        return sbx_error_sys(err, errno, "listen %s", path);
    return steal_fd(&fd);
}

static int
config_fd(const struct sbx_sandbox_rec *rec, struct sbx_error **err)
{
    json_error_t jerr;
    json_t *env = json_loads(rec->env_vars_json, 0, &jerr);
    json_t *cfg =
        json_pack("{s:s,s:o*}", "sandboxId", rec->id, "envVars", env ? env : json_object());
    if (rec->access_token)
        json_object_set_new(cfg, "accessToken", json_string(rec->access_token));
    if (rec->traffic_token)
        json_object_set_new(cfg, "trafficAccessToken", json_string(rec->traffic_token));
    json_object_set_new(cfg, "codeInterpreter",
                        json_boolean(strncmp(rec->template_id, "code-interpreter", 16) == 0));
    char *s = json_dumps(cfg, JSON_COMPACT);
    json_decref(cfg);
    if (s == NULL)
        return sbx_error_set(err, SBX_INTERNAL, 0, "cannot encode agent config");
    /* A sealed memfd: the agent reads its token from it, and nothing else can. */
    _cleanup_close_ int fd = memfd_create("sbx-agent-config", MFD_CLOEXEC);
    size_t len = strlen(s);
    bool ok = fd >= 0 && write(fd, s, len) == (ssize_t)len && lseek(fd, 0, SEEK_SET) == 0;
    sbx_secret_free(s);
    if (!ok)
        return sbx_error_sys(err, errno, "agent config");
    return steal_fd(&fd);
}

static int
spawn(struct sbx_live *l, struct sbx_error **err)
{
    const struct sbx_daemon_config *cfg = &sbx_daemon->cfg;
    if (mkdir(l->dir, 0711) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", l->dir);
    _cleanup_close_ int lfd = listen_unix(l->sock_path, err);
    if (lfd < 0)
        return -1;
    _cleanup_close_ int cfd = config_fd(l->rec, err);
    if (cfd < 0)
        return -1;
    _cleanup_free_ char *log_path = NULL;
    if (asprintf(&log_path, "%s/agent.log", l->dir) < 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "out of memory");
    _cleanup_close_ int logfd =
        open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (logfd < 0)
        return sbx_error_sys(err, errno, "open %s", log_path);
    char *const argv[] = {"sbx", "agent", NULL};
    char *const envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          "LANG=C.UTF-8", NULL};
    struct sbx_sandbox_plan plan = {
        .id = l->rec->id,
        .sandbox_dir = l->dir,
        .template_dir = sbx_daemon->template_dir,
        .host_uid_base = SBX_DAEMON_UID_BASE + (uid_t)l->rec->uid_slot * SBX_SANDBOX_UID_COUNT,
        .limits = {.memory_bytes = (uint64_t)l->rec->memory_mb << 20,
                   .pids_max = (uint32_t)cfg->pids_max,
                   .cpu_millis = (uint32_t)l->rec->cpu_count * 1000,
                   .disk_bytes = (uint64_t)l->rec->disk_mb << 20},
        .hostname = "e2b.local",
        .agent_listen_fd = lfd,
        .agent_config_fd = cfd,
        .log_fd = logfd,
        .exe_fd = sbx_daemon->exe_fd,
        .argv = argv,
        .envp = envp,
    };
    pid_t pid = 0;
    uint64_t start_time = 0;
    if (sbx_sandbox_spawn(&plan, &pid, &start_time, err) < 0)
        return -1;
    l->rec->pid = pid;
    l->rec->pid_start_time = start_time;
    return 0;
}

/* Undoes a create that failed half way; its error is already reported. */
static void
abandon(struct sbx_live *l)
{
    struct sbx_sandbox_ref ref = ref_of(l);
    _cleanup_error_ struct sbx_error *ignored = NULL;
    sbx_sandbox_destroy(&ref, &ignored);
    sbx_error_free(ignored);
    ignored = NULL;
    sbx_store_sandbox_delete(sbx_daemon->store, l->rec->id, &ignored);
    live_drop(l);
}

static char *
dump_or_empty(json_t *obj)
{
    return obj ? json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS) : strdup("{}");
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

struct sbx_live *
sbx_lifecycle_create(const struct sbx_create_opts *o, uint64_t *spawn_us, struct sbx_error **err)
{
    struct sbx_daemon *d = sbx_daemon;
    struct sbx_sandbox_rec *rec = calloc(1, sizeof(*rec));
    if (rec == NULL) {
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
        return NULL;
    }
    sbx_random_id(rec->id, SBX_DAEMON_ID_LEN);
    rec->template_id = strdup(o->template_id);
    rec->alias = o->alias ? strdup(o->alias) : NULL;
    rec->metadata_json = dump_or_empty(o->metadata);
    rec->env_vars_json = dump_or_empty(o->env_vars);
    if (o->secure) {
        rec->access_token = new_token();
        /* What the code-interpreter SDKs send on /contexts (E2B-Traffic-Access-Token); a
         * secret of its own, so that it never opens envd. */
        rec->traffic_token = new_token();
    }
    rec->started_at_ms = sbx_wall_ms();
    rec->end_at_ms = rec->started_at_ms + (int64_t)o->timeout_s * 1000;
    rec->cpu_count = d->cfg.cpu_millis / 1000 > 0 ? d->cfg.cpu_millis / 1000 : 1;
    rec->memory_mb = d->cfg.memory_mb;
    rec->disk_mb = d->cfg.disk_mb;
    rec->state = strdup("running");
    rec->allow_internet = o->allow_internet;
    rec->auto_pause = o->auto_pause;
    struct sbx_live *l = live_new(rec);
    if (l == NULL) {
        sbx_sandbox_rec_free(rec);
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
        return NULL;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (sbx_store_free_uid_slot(d->store, &rec->uid_slot, err) < 0 ||
        sbx_store_sandbox_insert(d->store, rec, err) < 0) {
        live_drop(l);
        return NULL;
    }
    if (spawn(l, err) < 0 || watch(l, err) < 0 ||
        sbx_store_sandbox_update_pid(d->store, rec->id, rec->pid, rec->pid_start_time, err) < 0) {
        abandon(l);
        return NULL;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (spawn_us)
        *spawn_us = (uint64_t)((b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000);
    sbx_live_insert(d, l);
    arm_expiry();
    return l;
}

int
sbx_lifecycle_kill(struct sbx_live *l, struct sbx_error **err)
{
    return teardown(l, "killed", err);
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
        struct sbx_sandbox_ref ref = ref_of(l);
        _cleanup_error_ struct sbx_error *e = NULL;
        if (rec->pid > 0 && sbx_sandbox_is_alive(&ref) && watch(l, &e) == 0) {
            sbx_live_insert(d, l);
            alive++;
            continue;
        }
        /* Its agent died while we were away (or never started): clean up what is left. */
        gone++;
        if (sbx_sandbox_destroy(&ref, &e) < 0)
            sbx_log_warn("recover", "sandbox=%s error=\"%s\"", rec->id, e->msg);
        sbx_error_free(e);
        e = NULL;
        sbx_store_sandbox_delete(d->store, rec->id, &e);
        live_drop(l);
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
