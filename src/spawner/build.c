/* The spawner's build steps (BUILD_STEP: a sandbox that runs one step of a template build,
 * its output relayed as STEP_LOG, its writable layer committed on success), its layer GC
 * (LAYERS_GC) and its Debian roots (DEBIAN_LAYER). The slow parts, a commit, a GC, a Debian root,
 * run in child processes ("jobs"), so that no request waits for them. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "spawner/internal.h"
#include "spawner/layer_keys.h"
#include "spawner/net.h"
#include "spawner/templates.h"

/* Marks a build step's dir: a spawner that finds it at start destroys it. */
static int
mark_step(const struct sb *s, struct sbx_error **err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/" SB_STEP, s->dir);
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return sbx_error_sys(err, errno, "mark the build step %s", s->id);
    return 0;
}

/* ---- build steps ---- */

/* The step's handles point at its sandbox while it runs, and at the step once closing. */
static void
step_handle_init(struct sb *s, uv_handle_t *h)
{
    h->data = s;
    s->step->handles++;
}

static void
step_reply(struct sb *s)
{
    struct step *st = s->step;
    if (st->replied)
        return;
    st->replied = true;
    st->reply.seq = st->seq;
    sbx_spawner_send(&st->reply);
}

static void __attribute__((format(printf, 4, 5)))
step_fail(struct sb *s, enum sbx_code code, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *msg = sbx_vformat(fmt, ap);
    va_end(ap);
    _cleanup_error_ struct sbx_error *err = NULL;
    sbx_error_set(&err, code, e, "%s", msg);
    struct sbx_spawner_msg req = {.seq = s->step->seq};
    sbx_spawner_reply_init(&s->step->reply, &req, err);
}

/* The step's sandbox is gone (destroyed after its exit, or after its commit). */
static void
step_destroyed(struct sb *s)
{
    struct sbx_sandbox_ref ref = sbx_spawner_ref(s);
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_sandbox_destroy(&ref, &err) < 0)
        sbx_log_warn("build_step", "sandbox=%s error=\"destroy: %s\"", s->id, err->msg);
    step_reply(s);
    sbx_spawner_sb_drop(s);
}

static void
on_commit_result(uv_poll_t *h, int status, int events)
{
    struct sb *s = h->data;
    struct step *st = s->step;
    uv_poll_stop(&st->commit_poll);
    struct sbx_spawner_job_result r;
    sbx_spawner_job_finish(st->commit_fd, st->commit_pid, &r);
    st->commit_pid = 0;
    if (r.code != SBX_OK)
        step_fail(s, (enum sbx_code)r.code, r.sys_errno, "commit: %s", r.message);
    else
        st->reply.layer_empty = r.value ? 1 : 0;
    step_destroyed(s);
}

static int
commit_work(void *ud, struct sbx_spawner_job_result *r, struct sbx_error **err)
{
    struct sb *s = ud;
    bool empty = false;
    struct sbx_sandbox_ref ref = sbx_spawner_ref(s);
    int rc = sbx_sandbox_commit(&ref, sbx_spawner_cfg()->state_dir, s->step->key, s->step->uid_base,
                                &empty, err);
    r->value = empty;
    return rc;
}

/* Commits the step's writable layer in a job. */
static void
step_commit(struct sb *s)
{
    struct step *st = s->step;
    _cleanup_error_ struct sbx_error *err = NULL;
    int fd = sbx_spawner_job_fork(commit_work, s, &st->commit_pid, &err);
    if (fd < 0) {
        step_fail(s, SBX_INTERNAL, err->sys_errno, "commit: %s", err->msg);
        step_destroyed(s);
        return;
    }
    st->commit_fd = fd;
    uv_poll_init(sbx_spawner_loop(), &st->commit_poll, fd);
    step_handle_init(s, (uv_handle_t *)&st->commit_poll);
    uv_poll_start(&st->commit_poll, UV_READABLE, on_commit_result);
}

/* Both the agent's exit and the end of its output are needed: the last output may still be
 * in the pipe when the exit is seen. */
void
sbx_spawner_step_maybe_done(struct sb *s)
{
    struct step *st = s->step;
    if (!st->exited || !st->out_done)
        return;
    uv_timer_stop(&st->timer);
    int code = WIFEXITED(st->wstatus) ? WEXITSTATUS(st->wstatus) : 128 + WTERMSIG(st->wstatus);
    struct sbx_spawner_msg req = {.seq = st->seq};
    sbx_spawner_reply_init(&st->reply, &req, NULL);
    st->reply.exit_status = (uint64_t)code;
    if (st->timed_out) {
        step_fail(s, SBX_DEADLINE_EXCEEDED, 0, "the step did not end within its timeout");
        step_destroyed(s);
    } else if (code == 0) {
        step_commit(s);
    } else {
        step_destroyed(s);
    }
}

static void
on_step_output(uv_poll_t *h, int status, int events)
{
    struct sb *s = h->data;
    struct step *st = s->step;
    struct sbx_spawner_msg log = {.op = SBX_SPAWNER_STEP_LOG, .seq = st->seq};
    ssize_t n = read(st->out_fd, log.message, SBX_SPAWNER_TEXT_MAX);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        uv_poll_stop(&st->out_poll);
        st->out_done = true;
        sbx_spawner_step_maybe_done(s);
        return;
    }
    /* The message is text: what the step printed, NUL bytes made visible. */
    for (ssize_t i = 0; i < n; i++)
        if (log.message[i] == '\0')
            log.message[i] = '?';
    log.message[n] = '\0';
    sbx_spawner_send(&log);
}

static void
on_step_timeout(uv_timer_t *t)
{
    struct sb *s = t->data;
    s->step->timed_out = true;
    struct sbx_sandbox_ref ref = sbx_spawner_ref(s);
    int pidfd = sbx_sandbox_kill(&ref); /* its exit comes as SIGCHLD */
    if (pidfd >= 0)
        close(pidfd);
}

/* A COPY's archive as the step's stdin: a regular file, reopened read-only, so the sandbox
 * gets no write access the front end's fd may have had. */
static int
reopen_archive(int fd, struct sbx_error **err)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "the archive is not a regular file");
    char p[64];
    snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
    int r = open(p, O_RDONLY | O_CLOEXEC);
    if (r < 0)
        return sbx_error_sys(err, errno, "reopen the archive");
    return r;
}

void
sbx_spawner_build_step(const struct sbx_spawner_msg *m, int config_fd, int archive_fd)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    char *layers[SBX_LAYERS_MAX];
    size_t n_layers = 0;
    int ok = sbx_spawner_layer_paths(m, layers, &n_layers, &err);
    if (ok == 0 && sbx_layer_exists(sbx_spawner_cfg()->state_dir, m->layer_key))
        ok = sbx_error_set(&err, SBX_ALREADY_EXISTS, 0, "layer %s exists", m->layer_key);
    struct sb *s = ok < 0 ? NULL : sbx_spawner_spawn_target(m, config_fd, &err);
    if (s == NULL) {
        sbx_spawner_free_paths(layers, n_layers);
        sbx_spawner_reply(m->seq, err);
        return;
    }
    s->seq = m->seq;
    s->phase = SB_SPAWNING;
    struct step *st = calloc(1, sizeof(*st));
    if (st == NULL)
        abort();
    s->step = st;
    st->seq = m->seq;
    st->out_fd = st->commit_fd = -1;
    st->uid_base = sbx_spawner_cfg()->uid_base + (uid_t)m->uid_slot * SBX_SANDBOX_UID_COUNT;
    snprintf(st->key, sizeof(st->key), "%s", m->layer_key);
    int out[2] = {-1, -1};
    _cleanup_close_ int in = archive_fd >= 0 ? reopen_archive(archive_fd, &err) : -1;
    _cleanup_close_ int conf = (archive_fd >= 0 && in < 0) ||
                                       sbx_spawner_record_layers(s, m->layers, &err) < 0 ||
                                       mark_step(s, &err) < 0
                                   ? -1
                                   : sbx_spawner_copy_config(config_fd, &err);
    if (conf >= 0 && pipe2(out, O_CLOEXEC) < 0) {
        sbx_error_sys(&err, errno, "pipe");
        close(conf);
        conf = -1;
    }
    /* A step reaches the internet as a sandbox of the default network does, with no egress
     * rules (E2B's build steps install packages): a step's message carries none. */
    const struct sbx_net_config *net = sbx_spawner_cfg()->net;
    if (conf < 0 || (net && sbx_spawner_net_policy(net, s->slot, m, &err) < 0)) {
        sbx_spawner_free_paths(layers, n_layers);
        sbx_spawner_spawn_refused(s, err);
        return;
    }
    st->out_fd = out[0];
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    char *const argv[] = {"sbx", "agent", "--step", NULL};
    /* The step writes into a disk of its own (m->disk_bytes), whose upper dir is copied into
     * the new layer when it succeeds (sbx_sandbox_commit). */
    struct sbx_sandbox_plan plan;
    sbx_spawner_plan_init(&plan, s, m, layers, n_layers);
    plan.agent_listen_fd = out[1];
    plan.agent_config_fd = conf;
    plan.agent_stdin_fd = in;
    plan.argv = argv;
    int rc = sbx_sandbox_spawn_start(&plan, &s->spawning, &err);
    close(out[1]);
    sbx_spawner_free_paths(layers, n_layers);
    if (rc < 0) {
        sbx_log_warn("build_step", "sandbox=%s error=\"%s\"", s->id, err->msg);
        sbx_spawner_spawn_refused(s, err);
        return;
    }
    sbx_spawner_watch_spawn(s);
    uv_poll_init(sbx_spawner_loop(), &st->out_poll, st->out_fd);
    step_handle_init(s, (uv_handle_t *)&st->out_poll);
    uv_poll_start(&st->out_poll, UV_READABLE, on_step_output);
    uv_timer_init(sbx_spawner_loop(), &st->timer);
    step_handle_init(s, (uv_handle_t *)&st->timer);
    uv_timer_start(&st->timer, on_step_timeout, m->timeout_ms, 0);
}

/* ---- snapshots ---- */

/* A SNAPSHOT under way: the sandbox frozen, its writable layer copied by a job. */
struct snap {
    uint32_t seq;
    char id[SBX_SPAWNER_ID_MAX + 1];
    char key[SBX_LAYER_KEY_LEN + 1];
    char layers[SBX_LAYERS_MAX * SBX_LAYER_KEY_LEN + 1]; /* the sandbox's, as recorded */
    uid_t uid_base;
    struct sbx_sandbox_ref ref; /* for the job: strings of the sandbox's sb */
};

static int
snapshot_work(void *ud, struct sbx_spawner_job_result *r, struct sbx_error **err)
{
    struct snap *sn = ud;
    return sbx_sandbox_snapshot(&sn->ref, sbx_spawner_cfg()->state_dir, sn->key, sn->uid_base, err);
}

/* Thaws the sandbox whatever the copy did (a snapshot never leaves it frozen), then answers
 * with the layers it runs on. */
static void
snapshot_end(struct snap *sn, const struct sbx_error *err)
{
    struct sb *s = sbx_spawner_find(sn->id);
    _cleanup_error_ struct sbx_error *thaw_err = NULL;
    if (sbx_sandbox_thaw(sn->id, &thaw_err) < 0)
        sbx_log_warn("snapshot", "sandbox=%s error=\"thaw: %s\"", sn->id, thaw_err->msg);
    if (s && s->snap == sn) {
        s->snap = NULL;
        s->phase = SB_RUNNING;
    }
    struct sbx_spawner_msg req = {.seq = sn->seq}, rep;
    sbx_spawner_reply_init(&rep, &req, err);
    if (err == NULL)
        memcpy(rep.layers, sn->layers, sizeof(rep.layers));
    sbx_spawner_send(&rep);
    free(sn);
}

static void
on_snapshot_copied(void *ud, const struct sbx_spawner_job_result *r)
{
    struct snap *sn = ud;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (r->code != SBX_OK)
        sbx_error_set(&err, (enum sbx_code)r->code, r->sys_errno, "%s", r->message);
    sbx_log_info("snapshot", "sandbox=%s layer=%s ok=%d", sn->id, sn->key, r->code == SBX_OK);
    snapshot_end(sn, err);
}

/* Frozen: the copy runs in a job, so that other sandboxes' requests go on meanwhile. */
static void
snapshot_copy(struct sb *s, const struct sbx_error *ferr)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct snap *sn = s->snap;
    if (ferr) {
        snapshot_end(sn, ferr);
        return;
    }
    s->phase = SB_SNAPSHOTTING;
    sn->ref = sbx_spawner_ref(s);
    if (sbx_spawner_job_start(snapshot_work, on_snapshot_copied, sn, &err) < 0)
        snapshot_end(sn, err);
}

void
sbx_spawner_snapshot(const struct sbx_spawner_msg *m)
{
    struct sb *s = sbx_spawner_find_in(m, PHASE(SB_RUNNING), "is not running");
    if (s == NULL)
        return;
    if (s->slot < 0) {
        sbx_spawner_reply_fail(m->seq, SBX_FAILED_PRECONDITION, "sandbox %s has no uid slot",
                               m->id);
        return;
    }
    struct snap *sn = calloc(1, sizeof(*sn));
    if (sn == NULL)
        abort();
    /* The stack the new layer goes on is the one the sandbox runs on, as recorded at its
     * spawn: whatever the front end believes. */
    char path[4096];
    snprintf(path, sizeof(path), "%s/" SB_LAYERS, s->dir);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, sn->layers, sizeof(sn->layers) - 1);
    if (n <= 0 || n % SBX_LAYER_KEY_LEN != 0 ||
        strspn(sn->layers, "0123456789abcdef") != (size_t)n) {
        free(sn);
        sbx_spawner_reply_fail(m->seq, SBX_FAILED_PRECONDITION,
                               "sandbox %s: its layers are not recorded", m->id);
        return;
    }
    /* One more layer on top would make a template no sandbox can start from. */
    if (n == SBX_LAYERS_MAX * SBX_LAYER_KEY_LEN) {
        free(sn);
        sbx_spawner_reply_fail(m->seq, SBX_FAILED_PRECONDITION,
                               "sandbox %s runs on %d layers, the most a template may have: a "
                               "snapshot of it would be one more",
                               m->id, SBX_LAYERS_MAX);
        return;
    }
    if (sbx_layer_exists(sbx_spawner_cfg()->state_dir, m->layer_key)) {
        free(sn);
        sbx_spawner_reply_fail(m->seq, SBX_ALREADY_EXISTS, "layer %s exists", m->layer_key);
        return;
    }
    sn->seq = m->seq;
    snprintf(sn->id, sizeof(sn->id), "%s", s->id);
    snprintf(sn->key, sizeof(sn->key), "%s", m->layer_key);
    sn->uid_base = sbx_spawner_cfg()->uid_base + (uid_t)s->slot * SBX_SANDBOX_UID_COUNT;
    s->snap = sn;
    s->seq = m->seq;
    sbx_spawner_freeze_then(s, snapshot_copy);
}

/* ---- layer GC ---- */

struct keys {
    char **v;
    size_t n, cap;
};

static void
keys_add(struct keys *k, const char *key, size_t len)
{
    if (k->n == k->cap &&
        (k->v = reallocarray(k->v, k->cap = k->cap * 2 + 16, sizeof(*k->v))) == NULL)
        abort();
    k->v[k->n++] = sbx_memdup_str(key, len); /* keys are not NUL-terminated in buf */
}

/* Adds every whole key of buf (keys one after the other, as in messages and SB_LAYERS). */
static void
keys_add_all(struct keys *k, const char *buf, size_t len)
{
    for (size_t i = 0; i + SBX_LAYER_KEY_LEN <= len; i += SBX_LAYER_KEY_LEN)
        keys_add(k, buf + i, SBX_LAYER_KEY_LEN);
}

struct gc {
    uint32_t seq;
    struct keys keep;
    pid_t pid;
    int fd;
    uv_poll_t poll;
};

static int
gc_work(void *ud, struct sbx_spawner_job_result *r, struct sbx_error **err)
{
    struct gc *g = ud;
    int n =
        sbx_layers_gc(sbx_spawner_cfg()->state_dir, (const char *const *)g->keep.v, g->keep.n, err);
    r->value = n;
    return n < 0 ? -1 : 0;
}

static void
gc_free(uv_handle_t *h)
{
    struct gc *g = h->data;
    close(g->fd);
    sbx_spawner_free_paths(g->keep.v, g->keep.n);
    free(g->keep.v);
    free(g);
}

static void
on_gc_done(uv_poll_t *h, int status, int events)
{
    struct gc *g = h->data;
    uv_poll_stop(h);
    struct sbx_spawner_job_result r;
    sbx_spawner_job_finish(g->fd, g->pid, &r);
    _cleanup_error_ struct sbx_error *err = NULL;
    if (r.code != SBX_OK)
        sbx_error_set(&err, (enum sbx_code)r.code, r.sys_errno, "layer GC: %s", r.message);
    else if (r.value > 0)
        sbx_log_info("layer_gc", "removed=%d", r.value);
    struct sbx_spawner_msg req = {.seq = g->seq}, rep;
    sbx_spawner_reply_init(&rep, &req, err);
    rep.layers_removed = r.code == SBX_OK ? (uint64_t)r.value : 0;
    sbx_spawner_send(&rep);
    uv_close((uv_handle_t *)h, gc_free);
}

/* Removes the layers of the store that are neither in the front end's list (fd: keys one
 * after the other), nor a built-in template's, nor used by a sandbox of ours: whatever the
 * front end says, no layer a sandbox runs on goes. */
void
sbx_spawner_gc(const struct sbx_spawner_msg *m, int fd)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > CONFIG_MAX_BYTES ||
        st.st_size % SBX_LAYER_KEY_LEN != 0) {
        sbx_spawner_reply_fail(m->seq, SBX_INVALID_ARGUMENT, "layer GC: %s",
                               "the list of keys is not a file");
        return;
    }
    struct gc *g = calloc(1, sizeof(*g));
    _cleanup_free_ char *buf = malloc((size_t)st.st_size + 1);
    if (g == NULL || buf == NULL)
        abort();
    g->seq = m->seq;
    ssize_t n = pread(fd, buf, (size_t)st.st_size, 0);
    buf[n > 0 ? n : 0] = '\0';
    if (n != st.st_size || strspn(buf, "0123456789abcdef") != (size_t)n) {
        free(g);
        sbx_spawner_reply_fail(m->seq, SBX_INVALID_ARGUMENT, "layer GC: %s", "bad layer keys");
        return;
    }
    keys_add_all(&g->keep, buf, (size_t)n);
    size_t nb;
    const char *const *builtin = sbx_builtin_layers(&nb);
    for (size_t i = 0; i < nb; i++)
        keys_add(&g->keep, builtin[i], SBX_LAYER_KEY_LEN);
    for (struct sb *s = sbx_spawner_first(); s; s = s->next) {
        char path[4096], keys[SBX_LAYERS_MAX * SBX_LAYER_KEY_LEN];
        snprintf(path, sizeof(path), "%s/" SB_LAYERS, s->dir);
        _cleanup_close_ int lfd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        ssize_t len = lfd < 0 ? -1 : read(lfd, keys, sizeof(keys));
        if (len > 0)
            keys_add_all(&g->keep, keys, (size_t)len);
        if (s->snap) { /* the layer a snapshot is making, and its unfinished dir */
            char tmp[sizeof(SBX_LAYER_NEW_PREFIX) + SBX_LAYER_KEY_LEN];
            snprintf(tmp, sizeof(tmp), SBX_LAYER_NEW_PREFIX "%s", s->snap->key);
            keys_add(&g->keep, s->snap->key, SBX_LAYER_KEY_LEN);
            keys_add(&g->keep, tmp, strlen(tmp));
        }
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    g->fd = sbx_spawner_job_fork(gc_work, g, &g->pid, &err);
    if (g->fd < 0) {
        sbx_spawner_reply(m->seq, err);
        sbx_spawner_free_paths(g->keep.v, g->keep.n);
        free(g->keep.v);
        free(g);
        return;
    }
    uv_poll_init(sbx_spawner_loop(), &g->poll, g->fd);
    g->poll.data = g;
    uv_poll_start(&g->poll, UV_READABLE, on_gc_done);
}

static void
step_free(struct step *st)
{
    if (st->out_fd >= 0)
        close(st->out_fd);
    if (st->commit_fd >= 0)
        close(st->commit_fd);
    free(st);
}

static void
on_step_handle_closed(uv_handle_t *h)
{
    struct step *st = h->data;
    if (--st->handles == 0)
        step_free(st);
}

/* A handle of the step (initialised: it points at s, and not yet closing) closes, and points
 * at the step from now on: s may be freed before the close completes. */
static void
step_handle_close(const struct sb *s, struct step *st, uv_handle_t *h)
{
    if (h->data != s || uv_is_closing(h))
        return;
    h->data = st;
    uv_close(h, on_step_handle_closed);
}

void
sbx_spawner_step_close(struct sb *s)
{
    struct step *st = s->step;
    s->step = NULL;
    if (st->handles == 0) {
        step_free(st);
        return;
    }
    step_handle_close(s, st, (uv_handle_t *)&st->out_poll);
    step_handle_close(s, st, (uv_handle_t *)&st->timer);
    step_handle_close(s, st, (uv_handle_t *)&st->commit_poll);
}

/* ---- Debian roots (fromDebianImage) ---- */

#define MMDEBSTRAP     "/usr/bin/mmdebstrap"
#define DEBIAN_MIRROR  "http://deb.debian.org/debian"
#define DEBIAN_LOG_MAX 600 /* of mmdebstrap's output, in an error */

struct debian {
    uint32_t seq;
    char key[SBX_LAYER_KEY_LEN + 1];
    char suite[SBX_SPAWNER_SUITE_MAX + 1];
    struct debian *next;
};

static struct debian *debians; /* being made */

/* The base's package list for suite: Debian 12 names its libraries without the "t64" of
 * the 64-bit time_t transition (Debian 13 on). */
static char *
debian_packages(const char *suite)
{
    char *p = strdup(SBX_BASE_PACKAGES);
    if (p == NULL)
        abort();
    if (strcmp(suite, "bookworm") != 0)
        return p;
    char *w = p;
    for (const char *r = p; *r;) {
        if (strncmp(r, "t64", 3) == 0 && (r[3] == ',' || r[3] == '\0')) {
            r += 3;
            continue;
        }
        *w++ = *r++;
    }
    *w = '\0';
    return p;
}

/* In a job: mmdebstrap of the suite with the base's packages and customize script into
 * .new-<key>, then into the store. Its output goes to .new-<key>.log, whose end is the
 * error when it fails. */
static int
debian_work(void *ud, struct sbx_spawner_job_result *r, struct sbx_error **err)
{
    struct debian *d = ud;
    const char *state = sbx_spawner_cfg()->state_dir;
    char tmp[4096], script[4200], logp[4200], hook[4400];
    _cleanup_free_ char *dst = sbx_layer_path(state, d->key);
    snprintf(tmp, sizeof(tmp), "%s/" SBX_LAYERS_DIR "/.new-%s", state, d->key);
    snprintf(script, sizeof(script), "%s.sh", tmp);
    snprintf(logp, sizeof(logp), "%s.log", tmp);
    snprintf(hook, sizeof(hook), "chroot \"$1\" /bin/sh /tmp/.new-%s.sh", d->key);
    if (mkdir(tmp, 0755) < 0)
        return sbx_error_sys(err, errno, "mkdir %s", tmp);
    _cleanup_close_ int s = open(script, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
    _cleanup_close_ int log = open(logp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t len = strlen(SBX_BASE_CUSTOMIZE);
    if (s < 0 || log < 0 || write(s, SBX_BASE_CUSTOMIZE, len) != (ssize_t)len)
        return sbx_error_sys(err, errno, "prepare %s", tmp);
    _cleanup_free_ char *pkgs = debian_packages(d->suite);
    char include[8192], copy[4400];
    snprintf(include, sizeof(include), "--include=%s", pkgs);
    snprintf(copy, sizeof(copy), "--customize-hook=copy-in %s /tmp", script);
    char custom[4500];
    snprintf(custom, sizeof(custom), "--customize-hook=%s", hook);
    /* Files owned by the uids they have in sandboxes: the layer stores them so. */
    char *const argv[] = {"mmdebstrap",
                          "--mode=root",
                          "--variant=apt",
                          "--format=directory",
                          "--components=main",
                          include,
                          copy,
                          custom,
                          "--",
                          d->suite,
                          tmp,
                          DEBIAN_MIRROR,
                          NULL};
    struct sbx_spawner_tool_io io = {.out = -1, .log = log, .fd3 = -1};
    int st = sbx_spawner_run_tool(MMDEBSTRAP, argv, &io, 0, err);
    unlink(script);
    unlink(logp); /* log stays open: its end is read below */
    if (st < 0)
        return -1;
    if (st != 0) {
        char tail[DEBIAN_LOG_MAX + 1];
        sbx_spawner_log_tail(log, tail, sizeof(tail));
        for (char *c = tail; *c; c++)
            if (*c == '\n')
                *c = ' ';
        return sbx_error_set(err, SBX_UNAVAILABLE, 0, "mmdebstrap %s exited with status %d: %s",
                             d->suite, st, tail);
    }
    if (chmod(tmp, 0755) < 0 || rename(tmp, dst) < 0)
        return sbx_error_sys(err, errno, "move %s into the layer store", tmp);
    r->value = 0;
    return 0;
}

static void
on_debian_done(void *ud, const struct sbx_spawner_job_result *r)
{
    struct debian *d = ud;
    struct debian **pp = &debians;
    while (*pp && *pp != d)
        pp = &(*pp)->next;
    if (*pp)
        *pp = d->next;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (r->code != SBX_OK) {
        sbx_error_set(&err, (enum sbx_code)r->code, r->sys_errno, "%s", r->message);
        /* Whatever the failed run left (a half-made root) goes. */
        struct sbx_error *ignored = NULL;
        if (sbx_layer_drop_unfinished(sbx_spawner_cfg()->state_dir, d->key, &ignored) < 0)
            sbx_error_free(ignored);
    }
    sbx_log_info("debian_layer", "suite=%s layer=%s ok=%d", d->suite, d->key, r->code == SBX_OK);
    sbx_spawner_reply(d->seq, err);
    free(d);
}

void
sbx_spawner_debian_layer(const struct sbx_spawner_msg *m)
{
    if (sbx_layer_exists(sbx_spawner_cfg()->state_dir, m->layer_key)) {
        sbx_spawner_reply(m->seq, NULL);
        return;
    }
    for (struct debian *o = debians; o; o = o->next)
        if (strcmp(o->key, m->layer_key) == 0) {
            sbx_spawner_reply_fail(m->seq, SBX_UNAVAILABLE,
                                   "a root of Debian %s is being made for another build; try "
                                   "again when it is done",
                                   m->suite);
            return;
        }
    struct debian *d = calloc(1, sizeof(*d));
    if (d == NULL)
        abort();
    d->seq = m->seq;
    snprintf(d->key, sizeof(d->key), "%s", m->layer_key);
    snprintf(d->suite, sizeof(d->suite), "%s", m->suite);
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_spawner_job_start(debian_work, on_debian_done, d, &err) < 0) {
        sbx_spawner_reply(m->seq, err);
        free(d);
        return;
    }
    sbx_log_info("debian_layer", "suite=%s layer=%s action=\"mmdebstrap\"", d->suite, d->key);
    d->next = debians;
    debians = d;
}
