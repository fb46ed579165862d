/* The spawner process (see spawner.h): one libuv loop, no threads. A spawn's setup runs in
 * the sandbox's own child after a few milliseconds of work here, and a destroy waits for the
 * agent's exit on a pidfd, so requests overlap and no request waits for another's sandbox. */
#include "spawner/spawner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
#include "spawner/internal.h"
#include "spawner/msg.h"
#include "spawner/templates.h"

struct out {
    size_t len;
    struct out *next;
    char buf[];
};

struct sbx_spawner_state sbx_sp;

/* ---- replies ---- */

static void channel_update(void);

static void
flush_out(void)
{
    while (sbx_sp.out_head) {
        struct out *o = sbx_sp.out_head;
        ssize_t n = send(sbx_sp.channel, o->buf, o->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* Sent, or the front end is gone (its EOF ends the loop): drop it either way. */
        sbx_sp.out_head = o->next;
        if (sbx_sp.out_head == NULL)
            sbx_sp.out_tail = NULL;
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
    if (sbx_sp.out_tail)
        sbx_sp.out_tail->next = o;
    else
        sbx_sp.out_head = o;
    sbx_sp.out_tail = o;
    flush_out();
}

void
sbx_spawner_reply_error(uint32_t seq, const struct sbx_error *err)
{
    struct sbx_spawner_msg req = {.seq = seq}, rep;
    sbx_spawner_reply_init(&rep, &req, err);
    sbx_spawner_send(&rep);
}

void
sbx_spawner_reply_fail(uint32_t seq, enum sbx_code code, const char *fmt, const char *arg)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    sbx_error_set(&e, code, 0, fmt, arg);
    sbx_spawner_reply_error(seq, e);
}

/* ---- the table of our sandboxes ---- */

static struct sb *
sb_find(const char *id)
{
    for (struct sb *s = sbx_sp.sbs; s; s = s->next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

static bool
slot_taken(int slot)
{
    for (struct sb *s = sbx_sp.sbs; s; s = s->next)
        if (s->slot == slot)
            return true;
    return false;
}

static char *
sandbox_dir(const char *id)
{
    char *p = NULL;
    if (asprintf(&p, "%s/sandboxes/%s", sbx_sp.cfg->state_dir, id) < 0)
        abort();
    return p;
}

struct sb *
sbx_spawner_sb_new(const char *id)
{
    struct sb *s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    snprintf(s->id, sizeof(s->id), "%s", id);
    s->dir = sandbox_dir(id);
    s->slot = -1;
    s->pidfd = -1;
    s->next = sbx_sp.sbs;
    sbx_sp.sbs = s;
    return s;
}

/* What the handles watched (the spawn's socket, the pidfd) is closed only once they have
 * closed: an fd closed earlier could be reused while libuv still watches its number. */
static void
release(struct sb *s)
{
    sbx_sandbox_spawning_free(s->spawning); /* an unfinished spawn is undone here */
    s->spawning = NULL;
    if (s->pidfd >= 0)
        close(s->pidfd);
    s->pidfd = -1;
    if (s->dropped) {
        sbx_spawner_step_free(s->step);
        free(s->dir);
        free(s);
    }
}

static void
on_sb_closed(uv_handle_t *h)
{
    struct sb *s = h->data;
    if (--s->handles == 0)
        release(s);
}

void
sbx_spawner_sb_handle_init(struct sb *s, uv_handle_t *h)
{
    h->data = s;
    s->handles++;
}

void
sbx_spawner_sb_handle_close(struct sb *s, uv_handle_t *h)
{
    if (h->data == s && !uv_is_closing(h))
        uv_close(h, on_sb_closed);
}

/* Unlinks s and frees it once its handles have closed. */
void
sbx_spawner_sb_drop(struct sb *s)
{
    struct sb **pp = &sbx_sp.sbs;
    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (*pp)
        *pp = s->next;
    s->dropped = true;
    if (s->handles == 0) {
        release(s);
        return;
    }
    sbx_spawner_sb_handle_close(s, (uv_handle_t *)&s->spawn_poll);
    sbx_spawner_sb_handle_close(s, (uv_handle_t *)&s->deadline);
    sbx_spawner_sb_handle_close(s, (uv_handle_t *)&s->exit_poll);
    if (s->step)
        sbx_spawner_step_close(s);
}

struct sbx_sandbox_ref
sbx_spawner_ref_of(const struct sb *s)
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
    if (snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/" AGENT_SOCK, s->dir) >=
        (int)sizeof(addr.sun_path))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "socket path in '%s' is too long; use a shorter --state-dir", s->dir);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sbx_error_sys(err, errno, "socket");
    unlink(addr.sun_path);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return sbx_error_sys(err, errno, "bind %s", addr.sun_path);
    if (chown(addr.sun_path, sbx_sp.cfg->frontend_uid, sbx_sp.cfg->frontend_gid) < 0 ||
        chmod(addr.sun_path, 0600) < 0 || listen(fd, 1024) < 0)
        return sbx_error_sys(err, errno, "listen %s", addr.sun_path);
    return steal_fd(&fd);
}

static void
spawn_done(struct sb *s, struct sbx_error *err)
{
    uv_timer_stop(&s->deadline);
    uv_poll_stop(&s->spawn_poll);
    if (err) {
        sbx_log_warn("spawn", "sandbox=%s error=\"%s\"", s->id, err->msg);
        sbx_spawner_reply_error(s->seq, err);
        sbx_spawner_sb_drop(s); /* releasing the unfinished spawn removes what was made for it */
        return;
    }
    /* The spawn's socket goes with its handles (release). */
    sbx_spawner_sb_handle_close(s, (uv_handle_t *)&s->spawn_poll);
    sbx_spawner_sb_handle_close(s, (uv_handle_t *)&s->deadline);
    s->phase = SB_RUNNING;
    if (s->step)
        return; /* a build step is answered when it is over */
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

/* Watches a started spawn: its child's sync socket, and its deadline. */
void
sbx_spawner_watch_spawn(struct sb *s)
{
    uv_poll_init(sbx_sp.loop, &s->spawn_poll, sbx_sandbox_spawning_fd(s->spawning));
    sbx_spawner_sb_handle_init(s, (uv_handle_t *)&s->spawn_poll);
    uv_poll_start(&s->spawn_poll, UV_READABLE, on_spawn_readable);
    uv_timer_init(sbx_sp.loop, &s->deadline);
    sbx_spawner_sb_handle_init(s, (uv_handle_t *)&s->deadline);
    uv_timer_start(&s->deadline, on_spawn_deadline, SBX_SPAWN_TIMEOUT_MS, 0);
}

/* Checks a spawn request against what we know; 0 if it may go ahead. */
int
sbx_spawner_spawn_allowed(const struct sbx_spawner_msg *m, int config_fd, struct sbx_error **err)
{
    if (config_fd < 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "spawn %s: no config fd", m->id);
    if (sb_find(m->id))
        return sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "sandbox %s exists", m->id);
    /* Two sandboxes on one host uid range would share uids: never. */
    if (slot_taken((int)m->uid_slot))
        return sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "uid slot %llu is in use",
                             (unsigned long long)m->uid_slot);
    _cleanup_free_ char *dir = sandbox_dir(m->id);
    /* Its dir must not exist either: nothing of an earlier sandbox is ever reused. */
    if (mkdir(dir, 0711) < 0)
        return sbx_error_sys(err, errno, "create the dir of sandbox %s", m->id);
    return 0;
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
        if (!sbx_layer_exists(sbx_sp.cfg->state_dir, key))
            return sbx_error_set(err, SBX_NOT_FOUND, 0, "spawn %s: no layer %s", m->id, key);
        paths[(*n)++] = sbx_layer_path(sbx_sp.cfg->state_dir, key);
    }
    return 0;
}

void
sbx_spawner_free_paths(char **paths, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
}

/* Records the layers a sandbox uses in its dir, so that no start of ours removes them while
 * it runs. */
int
sbx_spawner_record_layers(const struct sb *s, const char *layers, struct sbx_error **err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/" SB_LAYERS, s->dir);
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, layers, strlen(layers)) != (ssize_t)strlen(layers))
        return sbx_error_sys(err, errno, "record the layers of %s", s->id);
    return 0;
}

static void
handle_spawn(const struct sbx_spawner_msg *m, int config_fd)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    char *layers[SBX_LAYERS_MAX];
    size_t n_layers = 0;
    int ok = sbx_spawner_layer_paths(m, layers, &n_layers, &err);
    if (ok == 0)
        ok = sbx_spawner_spawn_allowed(m, config_fd, &err);
    if (ok < 0) {
        sbx_spawner_free_paths(layers, n_layers);
        sbx_spawner_reply_error(m->seq, err);
        return;
    }
    struct sb *s = sbx_spawner_sb_new(m->id);
    s->slot = (int)m->uid_slot;
    s->seq = m->seq;
    s->phase = SB_SPAWNING;
    _cleanup_close_ int conf = sbx_spawner_record_layers(s, m->layers, &err) < 0
                                   ? -1
                                   : sbx_spawner_copy_config(config_fd, &err);
    _cleanup_close_ int lfd = conf < 0 ? -1 : listen_agent(s, &err);
    if (lfd < 0) {
        sbx_spawner_free_paths(layers, n_layers);
        sbx_spawner_reply_error(m->seq, err);
        struct sbx_sandbox_ref ref = {.id = s->id, .sandbox_dir = s->dir};
        _cleanup_error_ struct sbx_error *ignored = NULL;
        sbx_sandbox_destroy(&ref, &ignored); /* the dir made above */
        sbx_spawner_sb_drop(s);
        return;
    }
    char *const argv[] = {"sbx", "agent", NULL};
    char *const envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          "LANG=C.UTF-8", NULL};
    struct sbx_sandbox_plan plan = {
        .id = s->id,
        .sandbox_dir = s->dir,
        .layers = (const char *const *)layers,
        .n_layers = n_layers,
        .disks_dir = sbx_sp.disks_dir,
        .host_uid_base = sbx_sp.cfg->uid_base + (uid_t)m->uid_slot * SBX_SANDBOX_UID_COUNT,
        .limits = {.memory_bytes = m->memory_bytes,
                   .pids_max = (uint32_t)m->pids_max,
                   .cpu_millis = (uint32_t)m->cpu_millis,
                   .disk_bytes = m->disk_bytes},
        .hostname = "e2b.local",
        .relaxed = sbx_sp.cfg->relaxed,
        .agent_listen_fd = lfd,
        .agent_config_fd = conf,
        .exe_fd = sbx_sp.exe_fd,
        .argv = argv,
        .envp = envp,
    };
    int rc = sbx_sandbox_spawn_start(&plan, &s->spawning, &err);
    sbx_spawner_free_paths(layers, n_layers);
    if (rc < 0) {
        sbx_log_warn("spawn", "sandbox=%s error=\"%s\"", s->id, err->msg);
        sbx_spawner_reply_error(m->seq, err);
        sbx_spawner_sb_drop(s);
        return;
    }
    sbx_spawner_watch_spawn(s);
}

/* ---- destroy ---- */

static void
destroy_finish(struct sb *s)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_sandbox_ref ref = sbx_spawner_ref_of(s);
    uint32_t seq = s->seq;
    int rc = sbx_sandbox_destroy(&ref, &err);
    sbx_spawner_sb_drop(s);
    if (rc < 0) {
        sbx_log_warn("destroy", "error=\"%s\"", err->msg);
        sbx_spawner_reply_error(seq, err);
        return;
    }
    sbx_spawner_reply_error(seq, NULL);
}

static void
on_agent_gone(uv_poll_t *h, int status, int events)
{
    struct sb *s = h->data;
    uv_poll_stop(&s->exit_poll);
    destroy_finish(s);
}

static void
destroy_start(struct sb *s, uint32_t seq)
{
    s->phase = SB_DESTROYING;
    s->seq = seq;
    struct sbx_sandbox_ref ref = sbx_spawner_ref_of(s);
    int pidfd = s->pid > 0 ? sbx_sandbox_kill(&ref) : -1;
    if (pidfd < 0) {
        destroy_finish(s);
        return;
    }
    /* The agent's exit ends its pid namespace; only then is the rest quick. */
    s->pidfd = pidfd;
    uv_poll_init(sbx_sp.loop, &s->exit_poll, pidfd);
    sbx_spawner_sb_handle_init(s, (uv_handle_t *)&s->exit_poll);
    uv_poll_start(&s->exit_poll, UV_READABLE, on_agent_gone);
}

static void
handle_destroy(const struct sbx_spawner_msg *m)
{
    struct sb *s = sb_find(m->id);
    if (s == NULL) {
        /* Not in the table: only a leftover dir in our state dir may be cleaned up. */
        _cleanup_free_ char *dir = sandbox_dir(m->id);
        struct stat st;
        if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
            sbx_spawner_reply_fail(m->seq, SBX_NOT_FOUND, "sandbox %s not found", m->id);
            return;
        }
        s = sbx_spawner_sb_new(m->id);
        s->phase = SB_RUNNING;
    }
    if (s->phase != SB_RUNNING || s->step) {
        sbx_spawner_reply_fail(m->seq, SBX_FAILED_PRECONDITION, "sandbox %s is busy", m->id);
        return;
    }
    destroy_start(s, m->seq);
}

/* ---- stats ---- */

static void
handle_stats(const struct sbx_spawner_msg *m)
{
    struct sb *s = sb_find(m->id);
    if (s == NULL || s->phase != SB_RUNNING || s->step) {
        sbx_spawner_reply_fail(m->seq, SBX_NOT_FOUND, "sandbox %s not found", m->id);
        return;
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_spawner_msg rep;
    sbx_spawner_reply_init(&rep, m, NULL);
    struct sbx_sandbox_ref ref = sbx_spawner_ref_of(s);
    if (sbx_sandbox_stats(&ref, &rep.stats, &err) < 0) {
        sbx_spawner_reply_error(m->seq, err);
        return;
    }
    rep.has_stats = true;
    sbx_spawner_send(&rep);
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
        sbx_spawner_reply_error(seq, err);
        return;
    }
    if (m.op == SBX_SPAWNER_BUILD_STEP)
        sbx_spawner_build_step(&m, fd, fd2);
    else if (m.op == SBX_SPAWNER_LAYERS_GC && fd2 < 0)
        sbx_spawner_gc(&m, fd);
    else if (m.op == SBX_SPAWNER_DEBIAN_LAYER && fd < 0)
        sbx_spawner_debian_layer(&m);
    else if (fd2 >= 0 || m.op == SBX_SPAWNER_STEP_LOG)
        sbx_spawner_reply_fail(m.seq, SBX_INVALID_ARGUMENT, "unexpected message for %s", m.id);
    else if (m.op == SBX_SPAWNER_SPAWN)
        handle_spawn(&m, fd);
    else if (fd >= 0)
        sbx_spawner_reply_fail(m.seq, SBX_INVALID_ARGUMENT, "unexpected fd with request for %s",
                               m.id);
    else if (m.op == SBX_SPAWNER_DESTROY)
        handle_destroy(&m);
    else
        handle_stats(&m);
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
        ssize_t n = sbx_recv_fds_upto(sbx_sp.channel, buf, sizeof(buf), fds, SBX_SPAWNER_FDS_MAX);
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
            uv_stop(sbx_sp.loop);
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
    uv_poll_start(&sbx_sp.channel_poll, UV_READABLE | (sbx_sp.out_head ? UV_WRITABLE : 0),
                  on_channel);
}

/* Agents are our children: reap those that died on their own (the front end then asks for
 * the destroy). Only pids of running sandboxes: a spawning child is reaped by its spawn. */
static void
on_sigchld(uv_signal_t *h, int signum)
{
    struct sb *next;
    for (struct sb *s = sbx_sp.sbs; s; s = next) {
        next = s->next; /* a finished step may leave the table */
        int st;
        if (s->phase != SB_RUNNING || s->pid <= 0 || waitpid(s->pid, &st, WNOHANG) != s->pid)
            continue;
        s->pid = 0;
        if (s->step && !s->step->exited) {
            s->step->exited = true;
            s->step->wstatus = st;
            sbx_spawner_step_maybe_done(s);
        }
    }
}

/* ---- start ---- */

/* Brings the built-in templates' layers into our store (the first start of a state dir
 * takes a few seconds: hard links of the cache's files). A layer the cache lacks is logged. */
static int
import_builtin_layers(struct sbx_error **err)
{
    if (sbx_layers_prepare(sbx_sp.cfg->state_dir, err) < 0)
        return -1;
    size_t n;
    const char *const *keys = sbx_builtin_layers(&n);
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = uv_hrtime();
        bool had = sbx_layer_exists(sbx_sp.cfg->state_dir, keys[i]);
        struct sbx_error *e = NULL;
        if (sbx_layer_import(sbx_sp.cfg->state_dir, sbx_sp.cfg->layer_cache, keys[i], &e) < 0) {
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
    if (asprintf(&path, "%s/sandboxes", sbx_sp.cfg->state_dir) < 0)
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
        struct sb *s = sbx_spawner_sb_new(e->d_name);
        s->phase = SB_RUNNING;
        found++;
        char mark[4096];
        snprintf(mark, sizeof(mark), "%s/" SB_STEP, s->dir);
        if (access(mark, F_OK) == 0) {
            /* A build step of an earlier spawner: its build has failed; nothing to keep. */
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
        if (base < sbx_sp.cfg->uid_base || base >= sbx_sp.cfg->uid_base + SBX_UID_BLOCK_SIZE ||
            (base - sbx_sp.cfg->uid_base) % SBX_SANDBOX_UID_COUNT != 0) {
            s->pid = 0;
            continue;
        }
        s->slot = (int)((base - sbx_sp.cfg->uid_base) / SBX_SANDBOX_UID_COUNT);
        running++;
        /* Sockets made by a daemon before the privilege split belong to root. */
        char sock[4096];
        snprintf(sock, sizeof(sock), "%s/" AGENT_SOCK, s->dir);
        if (lchown(sock, sbx_sp.cfg->frontend_uid, sbx_sp.cfg->frontend_gid) < 0 && errno != ENOENT)
            sbx_log_warn("spawner_start", "sandbox=%s error=\"chown socket: %s\"", s->id,
                         strerror(errno));
    }
    closedir(d);
    sbx_log_info("spawner_start", "sandboxes=%zu running=%zu", found, running);
}

int
sbx_spawner_main(const struct sbx_spawner_config *cfg, int channel)
{
    sbx_sp.cfg = cfg;
    sbx_sp.channel = channel;
    if (cfg->lock_fd >= 0)
        close(cfg->lock_fd); /* the supervisor holds the block for all of us */
    sbx_sp.loop = uv_default_loop();
    _cleanup_error_ struct sbx_error *err = NULL;
    if (asprintf(&sbx_sp.disks_dir, "%s/disks", cfg->state_dir) < 0)
        abort();
    if (import_builtin_layers(&err) < 0 ||
        (sbx_sp.exe_fd =
             sbx_sandbox_agent_exe(cfg->agent_exe ? cfg->agent_exe : "/proc/self/exe", &err)) < 0) {
        sbx_log_error("spawner_start", "error=\"%s\"", err->msg);
        return 1;
    }
    scan();
    if (cfg->ready_fd >= 0) {
        (void)!write(cfg->ready_fd, "R", 1);
        close(cfg->ready_fd);
    }
    uv_signal_init(sbx_sp.loop, &sbx_sp.sigchld);
    uv_signal_start(&sbx_sp.sigchld, on_sigchld, SIGCHLD);
    fcntl(channel, F_SETFL, fcntl(channel, F_GETFL) | O_NONBLOCK);
    uv_poll_init(sbx_sp.loop, &sbx_sp.channel_poll, channel);
    channel_update();
    uv_run(sbx_sp.loop, UV_RUN_DEFAULT);
    return 0;
}
