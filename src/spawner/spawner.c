/* The spawner process (see spawner.h): one libuv loop, no threads. A spawn's setup runs in
 * the sandbox's own child after a few milliseconds of work here, and a destroy or a stop waits
 * for the agent's exit on a pidfd, so requests overlap and no request waits for another's
 * sandbox. Pausing (freeze, thaw, stop) is in pause.c, build steps and the layer store's
 * upkeep in build.c. */
#include "spawner/spawner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "base/cleanup.h"
#include "base/fdpass.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "spawner/internal.h"
#include "spawner/msg.h"
#include "spawner/net.h"
#include "spawner/templates.h"

struct out {
    size_t len;
    struct out *next;
    char buf[];
};

static struct {
    const struct sbx_spawner_config *cfg;
    uv_loop_t *loop;
    char *disks_dir;
    char lxcfs_dir[64];  /* "" when lxcfs is not available */
    char *agent_runtime; /* sbx_agent_runtime_make's dir */
    int channel;
    uv_poll_t channel_poll;
    struct out *out_head, *out_tail;
    struct sb *sbs;
    uv_signal_t sigchld, sigterm;
} sp;

/* ---- replies ---- */

static void channel_update(void);

static void
flush_out(void)
{
    while (sp.out_head) {
        struct out *o = sp.out_head;
        ssize_t n = send(sp.channel, o->buf, o->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* Sent, or the front end is gone (its EOF ends the loop): drop it either way. */
        sp.out_head = o->next;
        if (sp.out_head == NULL)
            sp.out_tail = NULL;
        free(o);
    }
    channel_update();
}

void
sbx_spawner_send(const struct sbx_spawner_msg *m)
{
    char buf[SBX_SPAWNER_MSG_MAX];
    ssize_t n = sbx_spawner_msg_encode(m, buf, sizeof(buf));
    if (n < 0)
        abort(); /* every field is bounded: a reply always fits */
    struct out *o = malloc(sizeof(*o) + (size_t)n);
    if (o == NULL)
        abort();
    o->len = (size_t)n;
    o->next = NULL;
    memcpy(o->buf, buf, (size_t)n);
    if (sp.out_tail)
        sp.out_tail->next = o;
    else
        sp.out_head = o;
    sp.out_tail = o;
    flush_out();
}

void
sbx_spawner_reply(uint32_t seq, const struct sbx_error *err)
{
    struct sbx_spawner_msg req = {.seq = seq}, rep;
    sbx_spawner_reply_init(&rep, &req, err);
    sbx_spawner_send(&rep);
}

void
sbx_spawner_reply_fail(uint32_t seq, enum sbx_code code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *msg = sbx_vformat(fmt, ap);
    va_end(ap);
    struct sbx_error e = {.code = code, .msg = msg};
    sbx_spawner_reply(seq, &e);
}

/* ---- the table of our sandboxes ---- */

const char *
sbx_spawner_state_dir(void)
{
    return sp.cfg->state_dir;
}

const char *
sbx_spawner_disks_dir(void)
{
    return sp.disks_dir;
}

const struct sbx_spawner_config *
sbx_spawner_cfg(void)
{
    return sp.cfg;
}

uv_loop_t *
sbx_spawner_loop(void)
{
    return sp.loop;
}

struct sb *
sbx_spawner_first(void)
{
    return sp.sbs;
}

struct sb *
sbx_spawner_find(const char *id)
{
    for (struct sb *s = sp.sbs; s; s = s->next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

struct sb *
sbx_spawner_find_in(const struct sbx_spawner_msg *m, unsigned phases, const char *refusal)
{
    struct sb *s = sbx_spawner_find(m->id);
    if (s == NULL)
        sbx_spawner_reply_fail(m->seq, SBX_NOT_FOUND, "sandbox %s not found", m->id);
    else if (s->step) /* a build step's sandbox is the spawner's own until its reply */
        sbx_spawner_reply_fail(m->seq, SBX_FAILED_PRECONDITION, "sandbox %s is a build step",
                               m->id);
    else if (!(phases & 1u << s->phase))
        sbx_spawner_reply_fail(m->seq, SBX_FAILED_PRECONDITION, "sandbox %s %s", m->id, refusal);
    else
        return s;
    return NULL;
}

static bool
slot_taken(int slot)
{
    for (struct sb *s = sp.sbs; s; s = s->next)
        if (s->slot == slot)
            return true;
    return false;
}

static char *
sandbox_dir(const char *id)
{
    char *p = NULL;
    if (asprintf(&p, "%s/sandboxes/%s", sp.cfg->state_dir, id) < 0)
        abort();
    return p;
}

static struct sb *
sb_new(const char *id)
{
    struct sb *s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    snprintf(s->id, sizeof(s->id), "%.*s", SBX_SPAWNER_ID_MAX, id); /* ids are checked before */
    s->dir = sandbox_dir(id);
    s->slot = -1;
    s->pidfd = -1;
    s->disk_fd = -1;
    uv_timer_init(sp.loop, &s->timer);
    s->timer.data = s;
    s->next = sp.sbs;
    sp.sbs = s;
    return s;
}

static void
on_poll_closed(uv_handle_t *h)
{
    free(h);
}

/* A poll handle of its own on fd, for one wait (a spawn's socket, an agent's pidfd): a sandbox
 * may be spawned and stopped many times, and a libuv handle is not reusable before its close
 * has completed. */
static uv_poll_t *
watch(struct sb *s, int fd, uv_poll_cb cb)
{
    uv_poll_t *h = calloc(1, sizeof(*h));
    if (h == NULL || uv_poll_init(sp.loop, h, fd) < 0)
        abort(); /* a fresh fd of ours: cannot be watched already */
    h->data = s;
    uv_poll_start(h, UV_READABLE, cb);
    return h;
}

/* Stops watching; the fd may be closed right after (libuv, uv_poll_stop: "the fd can be
 * safely closed immediately after a call to uv_poll_stop()"). */
static void
unwatch(uv_poll_t **h)
{
    if (*h == NULL)
        return;
    uv_poll_stop(*h);
    uv_close((uv_handle_t *)*h, on_poll_closed);
    *h = NULL;
}

/* Forgets what s waits for: an unfinished spawn is undone here, an agent's pidfd closed. */
static void
sb_release(struct sb *s)
{
    unwatch(&s->spawn_poll);
    unwatch(&s->exit_poll);
    uv_timer_stop(&s->timer);
    sbx_sandbox_spawning_free(s->spawning);
    s->spawning = NULL;
    if (s->pidfd >= 0)
        close(s->pidfd);
    s->pidfd = -1;
}

static void
on_timer_closed(uv_handle_t *h)
{
    struct sb *s = h->data;
    free(s->dir);
    free(s);
}

/* Unlinks s and frees it once its timer has closed. Its egress rules go now: its slot's
 * address may be the next sandbox's. */
void
sbx_spawner_sb_drop(struct sb *s)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sp.cfg->net && s->slot >= 0 && sbx_net_policy_set(sp.cfg->net, s->slot, NULL, &err) < 0)
        sbx_log_warn("network", "sandbox=%s error=\"%s\"", s->id, err->msg);
    struct sb **pp = &sp.sbs;
    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (*pp)
        *pp = s->next;
    sb_release(s);
    if (s->disk_fd >= 0)
        close(s->disk_fd);
    s->disk_fd = -1;
    if (s->step)
        sbx_spawner_step_close(s);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

struct sbx_sandbox_ref
sbx_spawner_ref(const struct sb *s)
{
    return (struct sbx_sandbox_ref){
        .id = s->id, .sandbox_dir = s->dir, .pid = s->pid, .start_time = s->start_time};
}

/* ---- spawn ---- */

/* A copy of the front end's config in a sealed memfd of our own: the agent gets a file we
 * made, never an fd the front end chose (which could be, say, a socket to us). */
int
sbx_spawner_copy_config(int fd, struct sbx_error **err)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > CONFIG_MAX_BYTES)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "the agent config is not a small file");
    size_t len = (size_t)st.st_size;
    _cleanup_free_ char *buf = malloc(len + 1);
    if (buf == NULL || pread(fd, buf, len, 0) != (ssize_t)len)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "cannot read the agent config");
    _cleanup_close_ int m = memfd_create("sbx-agent-config", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    bool ok = m >= 0 && write(m, buf, len) == (ssize_t)len && lseek(m, 0, SEEK_SET) == 0 &&
              fcntl(m, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) == 0;
    explicit_bzero(buf, len); /* it holds the access token */
    if (!ok)
        return sbx_error_sys(err, errno, "agent config memfd");
    return steal_fd(&m);
}

/* The agent's listening socket, in the sandbox's host dir (which the sandbox cannot see),
 * owned by the front end: only the daemon ever connects to it. */
static int
listen_agent(const struct sb *s, struct sbx_error **err)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/" SB_AGENT_SOCK, s->dir) >=
        (int)sizeof(addr.sun_path))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "socket path in '%s' is too long; use a shorter --state-dir", s->dir);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sbx_error_sys(err, errno, "socket");
    unlink(addr.sun_path);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return sbx_error_sys(err, errno, "bind %s", addr.sun_path);
    if (chown(addr.sun_path, sp.cfg->frontend_uid, sp.cfg->frontend_gid) < 0 ||
        chmod(addr.sun_path, 0600) < 0 || listen(fd, 1024) < 0)
        return sbx_error_sys(err, errno, "listen %s", addr.sun_path);
    return steal_fd(&fd);
}

static void on_sigchld(uv_signal_t *h, int signum);

static void
spawn_done(struct sb *s, struct sbx_error *err)
{
    /* An unfinished spawn is undone here (but the disk of a reboot), before the answer: the
     * next request for this sandbox finds nothing of it left. */
    sb_release(s);
    if (err) {
        sbx_log_warn("spawn", "sandbox=%s error=\"%s\"", s->id, err->msg);
        sbx_spawner_reply(s->seq, err);
        if (s->keep_dir)
            s->phase = SB_STOPPED;
        else
            sbx_spawner_sb_drop(s);
        return;
    }
    s->phase = SB_RUNNING;
    if (s->step) {
        /* A build step is answered when it is over. Its agent may have exited already, its
         * SIGCHLD seen while it was still spawning. */
        on_sigchld(NULL, SIGCHLD);
        return;
    }
    struct sbx_spawner_msg req = {.seq = s->seq}, rep;
    sbx_spawner_reply_init(&rep, &req, NULL);
    rep.pid = s->pid;
    rep.start_time = s->start_time;
    sbx_spawner_send(&rep);
}

static void
on_spawn_readable(uv_poll_t *h, int status, int events)
{
    struct sb *s = h->data;
    _cleanup_error_ struct sbx_error *err = NULL;
    int rc = sbx_sandbox_spawn_step(s->spawning, &s->pid, &s->start_time, &err);
    if (rc != 1)
        spawn_done(s, rc == 0 ? NULL : err);
}

static void
on_spawn_deadline(uv_timer_t *t)
{
    struct sb *s = t->data;
    _cleanup_error_ struct sbx_error *err = NULL;
    sbx_error_set(&err, SBX_DEADLINE_EXCEEDED, 0, "spawn %s: setup timed out", s->id);
    spawn_done(s, err);
}

/* The uid slot of a sandbox, kept in its dir: after a restart of ours, the only record of
 * the slot of a stopped sandbox, whose files on its disk belong to that slot's uids. */
static void
record_slot(const struct sb *s)
{
    char path[4096], v[16];
    snprintf(path, sizeof(path), "%s/" SB_SLOT, s->dir);
    int n = snprintf(v, sizeof(v), "%d\n", s->slot);
    _cleanup_close_ int fd =
        open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, v, (size_t)n) != n)
        sbx_log_warn("spawn", "sandbox=%s error=\"record its uid slot: %s\"", s->id,
                     strerror(errno));
}

static int
recorded_slot(const char *dir)
{
    char path[4096], v[16] = "";
    snprintf(path, sizeof(path), "%s/" SB_SLOT, dir);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, v, sizeof(v) - 1);
    char *end = NULL;
    long slot = n > 0 ? strtol(v, &end, 10) : -1;
    return end && *end == '\n' && slot >= 0 && slot < SBX_MAX_SANDBOXES ? (int)slot : -1;
}

/* A new sandbox (its dir made here), or for a reboot, a stopped one of ours on the slot it
 * had. */
struct sb *
sbx_spawner_spawn_target(const struct sbx_spawner_msg *m, int config_fd, struct sbx_error **err)
{
    if (config_fd < 0) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "spawn %s: no config fd", m->id);
        return NULL;
    }
    struct sb *s = sbx_spawner_find(m->id);
    if (m->reboot) {
        /* Its disk's files belong to the uids of the slot it had: never another. */
        if (s == NULL || s->phase != SB_STOPPED)
            sbx_error_set(err, s ? SBX_FAILED_PRECONDITION : SBX_NOT_FOUND, 0,
                          "sandbox %s is not stopped", m->id);
        else if (s->slot < 0 || s->slot != (int)m->uid_slot)
            sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "sandbox %s had uid slot %d", m->id,
                          s->slot);
        else
            return s;
        return NULL;
    }
    if (s) {
        sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "sandbox %s exists", m->id);
        return NULL;
    }
    /* Two sandboxes on one host uid range would share uids: never. */
    if (slot_taken((int)m->uid_slot)) {
        sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "uid slot %llu is in use",
                      (unsigned long long)m->uid_slot);
        return NULL;
    }
    _cleanup_free_ char *dir = sandbox_dir(m->id);
    /* Its dir must not exist either. A kept dir or one from the disk stock was an earlier
     * sandbox's, but holds nothing it could write: its disk was emptied, or its image is the
     * blank's bytes again (disk.c). */
    int kept = -1;
    int taken = m->disk_bytes > 0 ? sbx_spawner_kept_take(m->disk_bytes, dir, &kept) : 0;
    if (taken == 0 && m->disk_bytes > 0)
        taken = sbx_disk_stock_take(sp.disks_dir, m->disk_bytes, dir, err);
    if (taken < 0 || (taken == 0 && mkdir(dir, 0711) < 0)) {
        if (taken == 0)
            sbx_error_sys(err, errno, "create the dir of sandbox %s", m->id);
        return NULL;
    }
    s = sb_new(m->id);
    s->disk_ready = taken == 1;
    s->disk_fd = kept;
    s->slot = (int)m->uid_slot;
    record_slot(s);
    return s;
}

void
sbx_spawner_spawn_refused(struct sb *s, const struct sbx_error *err)
{
    sbx_spawner_reply(s->seq, err);
    if (s->keep_dir) {
        s->phase = SB_STOPPED;
        return;
    }
    struct sbx_sandbox_ref ref = {.id = s->id, .sandbox_dir = s->dir};
    _cleanup_error_ struct sbx_error *ignored = NULL;
    sbx_sandbox_destroy(&ref, &ignored); /* the dir made for it */
    sbx_spawner_sb_drop(s);
}

void
sbx_spawner_watch_spawn(struct sb *s)
{
    if (s->disk_fd < 0)
        s->disk_fd = sbx_sandbox_spawning_disk(s->spawning);
    s->spawn_poll = watch(s, sbx_sandbox_spawning_fd(s->spawning), on_spawn_readable);
    uv_timer_start(&s->timer, on_spawn_deadline, SBX_SPAWN_TIMEOUT_MS, 0);
}

/* The dirs of the layers of m, from their keys (checked by the decoder), into paths (n
 * malloc'd strings); each must be in our layer store. */
int
sbx_spawner_layer_paths(const struct sbx_spawner_msg *m, char **paths, size_t *n,
                        struct sbx_error **err)
{
    *n = 0;
    for (const char *k = m->layers; *k; k += SBX_LAYER_KEY_LEN) {
        char key[SBX_LAYER_KEY_LEN + 1];
        memcpy(key, k, SBX_LAYER_KEY_LEN);
        key[SBX_LAYER_KEY_LEN] = '\0';
        if (!sbx_layer_exists(sp.cfg->state_dir, key))
            return sbx_error_set(err, SBX_NOT_FOUND, 0, "spawn %s: no layer %s", m->id, key);
        paths[(*n)++] = sbx_layer_path(sp.cfg->state_dir, key);
    }
    return 0;
}

void
sbx_spawner_free_paths(char **paths, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
}

/* The layers a sandbox runs on, in its dir, so that no GC of ours removes them while it runs
 * or is paused (a reboot records the ones it boots on again). */
int
sbx_spawner_record_layers(const struct sb *s, const char *layers, struct sbx_error **err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/" SB_LAYERS, s->dir);
    _cleanup_close_ int fd =
        open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, layers, strlen(layers)) != (ssize_t)strlen(layers))
        return sbx_error_sys(err, errno, "record the layers of %s", s->id);
    return 0;
}

/* The agent's fixed environment: nothing of ours (or of the front end's) reaches a sandbox. */
static char *const agent_envp[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", NULL};

void
sbx_spawner_plan_init(struct sbx_sandbox_plan *plan, const struct sb *s,
                      const struct sbx_spawner_msg *m, char *const *layers, size_t n_layers)
{
    *plan = (struct sbx_sandbox_plan){
        .id = s->id,
        .sandbox_dir = s->dir,
        .layers = (const char *const *)layers,
        .n_layers = n_layers,
        .disks_dir = sp.disks_dir,
        .disk_ready = s->disk_ready,
        .disk_mount = s->disk_fd >= 0 ? &s->disk_fd : NULL,
        .keep_disk = true,
        .host_uid_base = sp.cfg->uid_base + (uid_t)m->uid_slot * SBX_SANDBOX_UID_COUNT,
        .limits = {.memory_bytes = m->memory_bytes,
                   .pids_max = (uint32_t)m->pids_max,
                   .cpu_millis = (uint32_t)m->cpu_millis,
                   .disk_bytes = m->disk_bytes},
        .hostname = "e2b.local",
        .relaxed = sp.cfg->relaxed,
        .lxcfs_dir = sp.lxcfs_dir[0] ? sp.lxcfs_dir : NULL,
        .agent_listen_fd = -1,
        .agent_config_fd = -1,
        .agent_runtime = sp.agent_runtime,
        .exe_fd = -1,
        .envp = agent_envp,
        .net = sp.cfg->net,
        .net_slot = s->slot,
    };
}

static void
handle_spawn(const struct sbx_spawner_msg *m, int config_fd)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    char *layers[SBX_LAYERS_MAX];
    size_t n_layers = 0;
    struct sb *s = NULL;
    if (sbx_spawner_layer_paths(m, layers, &n_layers, &err) == 0)
        s = sbx_spawner_spawn_target(m, config_fd, &err);
    if (s == NULL) {
        sbx_spawner_free_paths(layers, n_layers);
        sbx_spawner_reply(m->seq, err);
        return;
    }
    s->seq = m->seq;
    s->phase = SB_SPAWNING;
    s->keep_dir = m->reboot;
    _cleanup_close_ int conf = sbx_spawner_record_layers(s, m->layers, &err) < 0
                                   ? -1
                                   : sbx_spawner_copy_config(config_fd, &err);
    _cleanup_close_ int lfd = conf < 0 ? -1 : listen_agent(s, &err);
    /* The sandbox's egress rules are in place before it runs anything (and replace whatever
     * a sandbox of the same slot may have left). */
    if (lfd < 0 || (sp.cfg->net && sbx_spawner_net_policy(sp.cfg->net, s->slot, m, &err) < 0)) {
        sbx_spawner_free_paths(layers, n_layers);
        sbx_spawner_spawn_refused(s, err);
        return;
    }
    /* The decoder checked the volumes; their images are ours, by id. */
    struct sbx_spawner_volume vols[SBX_SANDBOX_MAX_VOLUMES];
    struct sbx_volume_mount mounts[SBX_SANDBOX_MAX_VOLUMES];
    char *images[SBX_SANDBOX_MAX_VOLUMES] = {0};
    size_t n_vols = 0;
    if (sbx_spawner_volumes_parse(m->volumes, vols, &n_vols, &err) < 0) {
        sbx_spawner_free_paths(layers, n_layers);
        sbx_spawner_spawn_refused(s, err);
        return;
    }
    for (size_t i = 0; i < n_vols; i++) {
        images[i] = sbx_spawner_volume_image(vols[i].id);
        mounts[i] = (struct sbx_volume_mount){.image = images[i], .path = vols[i].path};
    }
    char *const argv[] = {"sbx", "agent", NULL};
    struct sbx_sandbox_plan plan;
    sbx_spawner_plan_init(&plan, s, m, layers, n_layers);
    plan.reboot = m->reboot;
    plan.volumes = mounts;
    plan.n_volumes = n_vols;
    plan.agent_listen_fd = lfd;
    plan.agent_config_fd = conf;
    plan.argv = argv;
    int rc = sbx_sandbox_spawn_start(&plan, &s->spawning, &err);
    for (size_t i = 0; i < n_vols; i++)
        free(images[i]);
    sbx_spawner_free_paths(layers, n_layers);
    if (rc < 0) {
        sbx_log_warn("spawn", "sandbox=%s error=\"%s\"", s->id, err->msg);
        sbx_spawner_spawn_refused(s, err);
        return;
    }
    if (plan.limits.disk_bytes > 0 && !plan.reboot)
        sbx_spawner_sweep_poke(); /* it took a ready disk image, or found none */
    sbx_spawner_watch_spawn(s);
}

/* ---- destroy, and stop ---- */

static void
kill_finish(struct sb *s)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_sandbox_ref ref = sbx_spawner_ref(s);
    uint32_t seq = s->seq;
    bool keep_dir = s->keep_dir;
    int rc;
    if (keep_dir) {
        /* Its disk stays mounted (s->disk_fd) for a reboot, which makes its root on the same
         * mount: never a second one of the image while a copy of this fd lives on (a job
         * forked meanwhile holds one). */
        rc = sbx_sandbox_stop(&ref, &err);
        /* Stopped even if some process lingers: a later STOP or DESTROY drains it again. */
        s->phase = SB_STOPPED;
        s->pid = 0;
        sb_release(s); /* its pidfd */
    } else {
        /* Its processes and cgroups go now; its dir, the disk image above all, goes in the
         * sweeper (sweep.c), or here if it cannot be moved there. */
        rc = sbx_sandbox_stop(&ref, &err);
        _cleanup_error_ struct sbx_error *moved = NULL;
        /* Its disk serves a later sandbox only if every process of it is gone. */
        int moved_rc = s->disk_fd >= 0
                           ? sbx_spawner_sweep_kept(s->dir, s->id, s->disk_fd, rc == 0, &moved)
                           : sbx_spawner_sweep(s->dir, s->id, &moved);
        s->disk_fd = -1;
        if (moved_rc < 0) {
            sbx_log_warn("destroy", "sandbox=%s error=\"%s\"", s->id, moved->msg);
            sbx_error_free(err);
            err = NULL;
            rc = sbx_sandbox_destroy(&ref, &err);
        }
        sbx_spawner_sb_drop(s);
    }
    if (rc < 0)
        sbx_log_warn(keep_dir ? "stop" : "destroy", "error=\"%s\"", err->msg);
    sbx_spawner_reply(seq, rc < 0 ? err : NULL);
}

static void
on_agent_gone(uv_poll_t *h, int status, int events)
{
    kill_finish(h->data);
}

void
sbx_spawner_kill(struct sb *s, uint32_t seq, bool keep_dir)
{
    s->phase = keep_dir ? SB_STOPPING : SB_DESTROYING;
    s->keep_dir = keep_dir;
    s->seq = seq;
    struct sbx_sandbox_ref ref = sbx_spawner_ref(s);
    int pidfd = s->pid > 0 ? sbx_sandbox_kill(&ref) : -1;
    if (pidfd < 0) {
        kill_finish(s);
        return;
    }
    /* The agent's exit ends its pid namespace; only then is the rest quick. */
    s->pidfd = pidfd;
    s->exit_poll = watch(s, pidfd, on_agent_gone);
}

static void
handle_destroy(const struct sbx_spawner_msg *m)
{
    struct sb *s = sbx_spawner_find(m->id);
    if (s == NULL) {
        /* Not in the table: only a leftover dir in our state dir may be cleaned up. */
        _cleanup_free_ char *dir = sandbox_dir(m->id);
        struct stat st;
        if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
            sbx_spawner_reply_fail(m->seq, SBX_NOT_FOUND, "sandbox %s not found", m->id);
            return;
        }
        s = sb_new(m->id);
        s->phase = SB_STOPPED;
    }
    /* Running, paused in place, or stopped: anything but a request in flight. */
    if (sbx_spawner_find_in(m, PHASE(SB_RUNNING) | PHASE(SB_FROZEN) | PHASE(SB_STOPPED), "is busy"))
        sbx_spawner_kill(s, m->seq, false);
}

/* ---- stats ---- */

static void
handle_stats(const struct sbx_spawner_msg *m)
{
    struct sb *s = sbx_spawner_find_in(m, PHASE(SB_RUNNING) | PHASE(SB_FROZEN), "is not running");
    if (s == NULL)
        return;
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_spawner_msg rep;
    sbx_spawner_reply_init(&rep, m, NULL);
    struct sbx_sandbox_ref ref = sbx_spawner_ref(s);
    if (sbx_sandbox_stats(&ref, &rep.stats, &err) < 0) {
        sbx_spawner_reply(m->seq, err);
        return;
    }
    rep.has_stats = true;
    sbx_spawner_send(&rep);
}

/* ---- network ---- */

static void
handle_net(const struct sbx_spawner_msg *m)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    if (m->op == SBX_SPAWNER_NET_PORTS) {
        sbx_spawner_net_ports(sp.cfg->net, m, &err);
        sbx_spawner_reply(m->seq, err);
        return;
    }
    /* A paused sandbox's rules change too: they hold once it runs again. */
    struct sb *s = sbx_spawner_find_in(m, PHASE(SB_RUNNING) | PHASE(SB_FROZEN), "is not running");
    if (s == NULL)
        return;
    if (s->slot < 0) {
        sbx_spawner_reply_fail(m->seq, SBX_NOT_FOUND, "sandbox %s has no network", m->id);
        return;
    }
    sbx_spawner_net_policy(sp.cfg->net, s->slot, m, &err);
    sbx_spawner_reply(m->seq, err);
}

static bool
slot_running(int slot, void *ud)
{
    for (struct sb *s = sp.sbs; s; s = s->next)
        if (s->slot == slot && s->pid > 0)
            return true;
    return false;
}

/* ---- the channel ---- */

static void
handle(const char *buf, size_t len, int fd, int fd2)
{
    struct sbx_spawner_msg m;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_spawner_msg_decode(buf, len, &m, &err) < 0 || m.op == SBX_SPAWNER_REPLY) {
        /* The seq of a message that does not decode is unknown: answer with what its header
         * says, so a confused front end still sees its request fail. */
        uint32_t seq = len >= 8
                           ? (uint32_t)(uint8_t)buf[4] | (uint32_t)(uint8_t)buf[5] << 8 |
                                 (uint32_t)(uint8_t)buf[6] << 16 | (uint32_t)(uint8_t)buf[7] << 24
                           : 0;
        if (err == NULL)
            sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "a reply is not a request");
        sbx_log_warn("spawner_request", "error=\"%s\"", err->msg);
        sbx_spawner_reply(seq, err);
        return;
    }
    if (m.op == SBX_SPAWNER_BUILD_STEP)
        sbx_spawner_build_step(&m, fd, fd2);
    else if (m.op == SBX_SPAWNER_LAYERS_GC && fd2 < 0)
        sbx_spawner_gc(&m, fd);
    else if (m.op == SBX_SPAWNER_IMAGE_LAYER && fd2 < 0)
        sbx_spawner_image_layer(&m, fd);
    else if (fd2 >= 0 || m.op == SBX_SPAWNER_STEP_LOG)
        sbx_spawner_reply_fail(m.seq, SBX_INVALID_ARGUMENT, "unexpected message for %s", m.id);
    else if (m.op == SBX_SPAWNER_SPAWN)
        handle_spawn(&m, fd);
    else if (fd >= 0)
        sbx_spawner_reply_fail(m.seq, SBX_INVALID_ARGUMENT, "unexpected fd with request for %s",
                               m.id);
    else if (m.op == SBX_SPAWNER_DESTROY)
        handle_destroy(&m);
    else if (m.op == SBX_SPAWNER_STATS)
        handle_stats(&m);
    else if (m.op == SBX_SPAWNER_FREEZE)
        sbx_spawner_freeze(&m);
    else if (m.op == SBX_SPAWNER_THAW)
        sbx_spawner_thaw(&m);
    else if (m.op == SBX_SPAWNER_STOP)
        sbx_spawner_stop(&m);
    else if (m.op == SBX_SPAWNER_VOLUME_CREATE)
        sbx_spawner_volume_create(&m);
    else if (m.op == SBX_SPAWNER_VOLUME_DELETE)
        sbx_spawner_volume_delete(&m);
    else if (m.op == SBX_SPAWNER_DEBIAN_LAYER)
        sbx_spawner_debian_layer(&m);
    else if (m.op == SBX_SPAWNER_SNAPSHOT)
        sbx_spawner_snapshot(&m);
    else
        handle_net(&m);
}

static void
on_channel(uv_poll_t *h, int status, int events)
{
    if (events & UV_WRITABLE)
        flush_out();
    if (!(events & UV_READABLE))
        return;
    for (;;) {
        char buf[SBX_SPAWNER_MSG_MAX];
        int fds[SBX_SPAWNER_FDS_MAX];
        ssize_t n = sbx_recv_fds_upto(sp.channel, buf, sizeof(buf), fds, SBX_SPAWNER_FDS_MAX);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && (errno == EPROTO || errno == EMSGSIZE)) {
            /* Too long, or too many fds: refused and consumed, and we go on. */
            sbx_spawner_reply_fail(0, SBX_INVALID_ARGUMENT, "malformed message: %s",
                                   strerror(errno));
            continue;
        }
        if (n <= 0) {
            /* The front end is gone: the supervisor starts a new pair. Sandboxes stay. */
            sbx_log_info("spawner_stop", "reason=\"%s\"",
                         n == 0 ? "channel closed" : strerror(errno));
            uv_stop(sp.loop);
            return;
        }
        handle(buf, (size_t)n, fds[0], fds[1]);
        for (size_t i = 0; i < SBX_SPAWNER_FDS_MAX; i++)
            if (fds[i] >= 0)
                close(fds[i]);
    }
}

static void
channel_update(void)
{
    uv_poll_start(&sp.channel_poll, UV_READABLE | (sp.out_head ? UV_WRITABLE : 0), on_channel);
}

/* Agents are our children: reap those that died on their own (the front end then asks for
 * the destroy). Only pids of running sandboxes: a spawning child is reaped by its spawn. */
static void
on_sigchld(uv_signal_t *h, int signum)
{
    sbx_spawner_sweep_reap();
    struct sb *next;
    for (struct sb *s = sp.sbs; s; s = next) {
        next = s->next; /* a finished step may leave the table */
        int st;
        if (!(s->phase == SB_RUNNING || s->phase == SB_FREEZING || s->phase == SB_FROZEN ||
              s->phase == SB_SNAPSHOTTING) ||
            s->pid <= 0 || waitpid(s->pid, &st, WNOHANG) != s->pid)
            continue;
        s->pid = 0;
        if (s->step && !s->step->exited) {
            s->step->exited = true;
            s->step->wstatus = st;
            sbx_spawner_step_maybe_done(s);
        }
    }
}

/* The supervisor's stop: the same end as the front end's going away. */
static void
on_sigterm(uv_signal_t *h, int signum)
{
    sbx_log_info("spawner_stop", "reason=\"signal %d\"", signum);
    uv_stop(sp.loop);
}

/* ---- start ---- */

/* Brings the built-in templates' layers into our store (the first start of a state dir
 * takes a few seconds: hard links of the cache's files). A layer the cache lacks is logged. */
static int
import_builtin_layers(struct sbx_error **err)
{
    if (sbx_layers_prepare(sp.cfg->state_dir, err) < 0)
        return -1;
    size_t n;
    const char *const *keys = sbx_builtin_layers(&n);
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = uv_hrtime();
        bool had = sbx_layer_exists(sp.cfg->state_dir, keys[i]);
        struct sbx_error *e = NULL;
        if (sbx_layer_import(sp.cfg->state_dir, sp.cfg->layer_cache, keys[i], &e) < 0) {
            /* A layer the cache lacks leaves its templates unusable (their creates fail with
             * its key), not the others: log it and go on. */
            if (e->code != SBX_NOT_FOUND) {
                *err = e;
                return -1;
            }
            sbx_log_warn("layer_import", "error=\"%s\"", e->msg);
            sbx_error_free(e);
            continue;
        }
        if (!had)
            sbx_log_info("layer_import", "layer=%s ms=%llu", keys[i],
                         (unsigned long long)((uv_hrtime() - t0) / 1000000));
    }
    return 0;
}

/* Finds the sandboxes of our state dir, running or not, as they were left by an earlier
 * spawner (a restart, a crash, an upgrade). */
static void
scan(void)
{
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/sandboxes", sp.cfg->state_dir) < 0)
        abort();
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    size_t running = 0, found = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        bool ok = n > 0 && n <= SBX_SPAWNER_ID_MAX;
        for (size_t i = 0; ok && i < n; i++)
            ok = (e->d_name[i] >= 'a' && e->d_name[i] <= 'z') ||
                 (e->d_name[i] >= '0' && e->d_name[i] <= '9');
        if (!ok)
            continue;
        struct sb *s = sb_new(e->d_name);
        /* No agent: paused to its disk (its slot recorded), or what a dead one left. */
        s->phase = SB_STOPPED;
        s->slot = recorded_slot(s->dir);
        found++;
        char mark[4096];
        snprintf(mark, sizeof(mark), "%s/" SB_STEP, s->dir);
        if (access(mark, F_OK) == 0) {
            /* A build step of an earlier spawner: its build has failed; nothing to keep. */
            s->slot = -1; /* it has no egress rules to drop */
            struct sbx_sandbox_ref ref = {.id = s->id, .sandbox_dir = s->dir};
            _cleanup_error_ struct sbx_error *err = NULL;
            if (sbx_sandbox_destroy(&ref, &err) < 0)
                sbx_log_warn("spawner_start", "sandbox=%s error=\"%s\"", s->id, err->msg);
            sbx_spawner_sb_drop(s);
            continue;
        }
        uid_t base;
        if (sbx_sandbox_find_agent(s->id, &s->pid, &s->start_time, &base) < 0)
            continue;
        /* Only an agent in our own uid block is ours to act on. */
        if (base < sp.cfg->uid_base || base >= sp.cfg->uid_base + SBX_UID_BLOCK_SIZE ||
            (base - sp.cfg->uid_base) % SBX_SANDBOX_UID_COUNT != 0) {
            s->pid = 0;
            continue;
        }
        int slot = (int)((base - sp.cfg->uid_base) / SBX_SANDBOX_UID_COUNT);
        if (s->slot != slot) {
            s->slot = slot;
            record_slot(s);
        }
        /* Paused in place when we stopped (or while it was being paused): still frozen. */
        s->phase = sbx_sandbox_freeze_asked(s->id) == 1 ? SB_FROZEN : SB_RUNNING;
        running++;
        /* Sockets made by a daemon before the privilege split belong to root. */
        char sock[4096];
        snprintf(sock, sizeof(sock), "%s/" SB_AGENT_SOCK, s->dir);
        if (lchown(sock, sp.cfg->frontend_uid, sp.cfg->frontend_gid) < 0 && errno != ENOENT)
            sbx_log_warn("spawner_start", "sandbox=%s error=\"chown socket: %s\"", s->id,
                         strerror(errno));
    }
    closedir(d);
    sbx_log_info("spawner_start", "sandboxes=%zu running=%zu", found, running);
}

int
sbx_spawner_main(const struct sbx_spawner_config *cfg, int channel)
{
    sp.cfg = cfg;
    sp.channel = channel;
    /* We stop when the front end closes our channel, after it has had us destroy what it
     * wanted (its pools): a SIGTERM sent to every process of the daemon must not cut that. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    if (cfg->lock_fd >= 0)
        close(cfg->lock_fd); /* the supervisor holds the block for all of us */
    /* Setting sandboxes up (creates, pool refills, kills) yields the CPU to serving the live
     * ones: the front end and the sandboxes' processes run at the default priority, and on
     * a small host what a create costs the spawner would otherwise delay every command of a
     * running sandbox. Each new agent is set back to the default (spawn.c). */
    (void)setpriority(PRIO_PROCESS, 0, SBX_SPAWNER_NICE);
    sp.loop = uv_default_loop();
    _cleanup_error_ struct sbx_error *err = NULL;
    if (asprintf(&sp.disks_dir, "%s/disks", cfg->state_dir) < 0)
        abort();
    if (import_builtin_layers(&err) < 0 ||
        sbx_agent_runtime_make(cfg->state_dir, cfg->agent, cfg->agent_len, &sp.agent_runtime,
                               &err) < 0) {
        sbx_log_error("spawner_start", "error=\"%s\"", err->msg);
        return 1;
    }
    _cleanup_error_ struct sbx_error *lxcfs_err = NULL;
    if (sbx_sandbox_lxcfs(sp.lxcfs_dir, sizeof(sp.lxcfs_dir), &lxcfs_err) < 0)
        sbx_log_warn("spawner_start", "lxcfs=none error=\"%s\"", lxcfs_err->msg);
    else
        sbx_log_info("spawner_start", "lxcfs=%s", sp.lxcfs_dir);
    scan();
    /* Forked before the loop's signal handlers exist, while we hold little memory. */
    if (sbx_spawner_sweep_start(&err) < 0) {
        sbx_log_error("spawner_start", "error=\"%s\"", err->msg);
        return 1;
    }
    if (cfg->net && sbx_spawner_net_start(cfg->net, slot_running, NULL, &err) < 0) {
        sbx_log_error("spawner_start", "error=\"%s\"", err->msg);
        return 1;
    }
    if (cfg->ready_fd >= 0) {
        (void)!write(cfg->ready_fd, "R", 1);
        close(cfg->ready_fd);
    }
    uv_signal_init(sp.loop, &sp.sigchld);
    uv_signal_start(&sp.sigchld, on_sigchld, SIGCHLD);
    uv_signal_init(sp.loop, &sp.sigterm);
    uv_signal_start(&sp.sigterm, on_sigterm, SIGTERM);
    fcntl(channel, F_SETFL, fcntl(channel, F_GETFL) | O_NONBLOCK);
    uv_poll_init(sp.loop, &sp.channel_poll, channel);
    channel_update();
    uv_run(sp.loop, UV_RUN_DEFAULT);
    sbx_spawner_sweep_stop();
    /* Sandboxes outlive the daemon, and so do their rules; with none left, the table goes
     * (a next start makes it again). */
    bool running = false;
    for (struct sb *s = sp.sbs; s; s = s->next)
        running |= s->pid > 0;
    if (cfg->net && !running)
        sbx_net_host_fini(cfg->net);
    return 0;
}
