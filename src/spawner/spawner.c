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
#include "spawner/msg.h"
#include "spawner/templates.h"

#define CONFIG_MAX_BYTES (4 * 1024 * 1024) /* the agent's config: token, env vars */
#define AGENT_SOCK       "agent.sock"
#define SB_LAYERS        "layers" /* in a sandbox's dir: the keys of its layers, for the GC */
#define SB_STEP          "step"   /* in a build step's dir: nothing of it survives a restart */

enum phase { SB_SPAWNING, SB_RUNNING, SB_DESTROYING };

/* A sandbox of ours: spawned here, or found at start in our state dir. */
struct sb {
    char id[SBX_SPAWNER_ID_MAX + 1];
    char *dir;
    int slot; /* -1: unknown (no agent ran when we found it) */
    enum phase phase;
    pid_t pid;
    uint64_t start_time;
    uint32_t seq;                          /* the request being worked on */
    struct sbx_sandbox_spawning *spawning; /* SB_SPAWNING */
    uv_poll_t spawn_poll;                  /* on the spawning child's sync socket */
    uv_timer_t deadline;                   /* of the spawn */
    uv_poll_t exit_poll;                   /* on the agent's pidfd, while destroying */
    int pidfd;
    int handles;       /* initialised handles not yet closed */
    bool dropped;      /* out of the table: freed once no handle is left */
    struct step *step; /* a BUILD_STEP's sandbox, else NULL */
    struct sb *next;
};

/* A build step's sandbox, from spawn to reply: its output, deadline, exit and commit. */
struct step {
    uint32_t seq; /* the BUILD_STEP, answered once all is over */
    char key[SBX_LAYER_KEY_LEN + 1];
    uid_t uid_base;
    int out_fd; /* read end of the step's output (its agent's fd 3) */
    uv_poll_t out_poll;
    uv_timer_t timer;
    bool out_done, exited, timed_out, replied;
    int wstatus;
    int commit_fd; /* result of the commit child */
    pid_t commit_pid;
    uv_poll_t commit_poll;
    struct sbx_spawner_msg reply;
};

/* What a job (a child doing slow work for us) reports. */
struct job_result {
    int32_t code, sys_errno;
    int32_t value; /* the job's answer: a commit's "empty", a GC's count */
    char message[SBX_SPAWNER_TEXT_MAX];
};
typedef int (*job_fn)(void *ud, int32_t *value, struct sbx_error **err);

struct out {
    size_t len;
    struct out *next;
    char buf[];
};

static struct {
    const struct sbx_spawner_config *cfg;
    uv_loop_t *loop;
    char *disks_dir;
    int exe_fd;
    int channel;
    uv_poll_t channel_poll;
    struct out *out_head, *out_tail;
    struct sb *sbs;
    uv_signal_t sigchld;
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

static void
send_msg(const struct sbx_spawner_msg *m)
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

static void
reply_error(uint32_t seq, const struct sbx_error *err)
{
    struct sbx_spawner_msg req = {.seq = seq}, rep;
    sbx_spawner_reply_init(&rep, &req, err);
    send_msg(&rep);
}

static void
reply_fail(uint32_t seq, enum sbx_code code, const char *fmt, const char *arg)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    sbx_error_set(&e, code, 0, fmt, arg);
    reply_error(seq, e);
}

/* ---- the table of our sandboxes ---- */

static struct sb *
sb_find(const char *id)
{
    for (struct sb *s = sp.sbs; s; s = s->next)
        if (strcmp(s->id, id) == 0)
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
    snprintf(s->id, sizeof(s->id), "%s", id);
    s->dir = sandbox_dir(id);
    s->slot = -1;
    s->pidfd = -1;
    s->next = sp.sbs;
    sp.sbs = s;
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
        if (s->step) {
            if (s->step->out_fd >= 0)
                close(s->step->out_fd);
            if (s->step->commit_fd >= 0)
                close(s->step->commit_fd);
            free(s->step);
        }
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

static void
sb_handle_init(struct sb *s, uv_handle_t *h)
{
    h->data = s;
    s->handles++;
}

static void
sb_handle_close(struct sb *s, uv_handle_t *h)
{
    if (h->data == s && !uv_is_closing(h))
        uv_close(h, on_sb_closed);
}

/* Unlinks s and frees it once its handles have closed. */
static void
sb_drop(struct sb *s)
{
    struct sb **pp = &sp.sbs;
    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (*pp)
        *pp = s->next;
    s->dropped = true;
    if (s->handles == 0) {
        release(s);
        return;
    }
    sb_handle_close(s, (uv_handle_t *)&s->spawn_poll);
    sb_handle_close(s, (uv_handle_t *)&s->deadline);
    sb_handle_close(s, (uv_handle_t *)&s->exit_poll);
    if (s->step) {
        sb_handle_close(s, (uv_handle_t *)&s->step->out_poll);
        sb_handle_close(s, (uv_handle_t *)&s->step->timer);
        sb_handle_close(s, (uv_handle_t *)&s->step->commit_poll);
    }
}

static struct sbx_sandbox_ref
ref_of(const struct sb *s)
{
    return (struct sbx_sandbox_ref){
        .id = s->id, .sandbox_dir = s->dir, .pid = s->pid, .start_time = s->start_time};
}

/* ---- spawn ---- */

/* A copy of the front end's config in a sealed memfd of our own: the agent gets a file we
 * made, never an fd the front end chose (which could be, say, a socket to us). */
static int
copy_config(int fd, struct sbx_error **err)
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
    if (chown(addr.sun_path, sp.cfg->frontend_uid, sp.cfg->frontend_gid) < 0 ||
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
        reply_error(s->seq, err);
        sb_drop(s); /* releasing the unfinished spawn removes what was made for it */
        return;
    }
    /* The spawn's socket goes with its handles (release). */
    sb_handle_close(s, (uv_handle_t *)&s->spawn_poll);
    sb_handle_close(s, (uv_handle_t *)&s->deadline);
    s->phase = SB_RUNNING;
    if (s->step)
        return; /* a build step is answered when it is over */
    struct sbx_spawner_msg req = {.seq = s->seq}, rep;
    sbx_spawner_reply_init(&rep, &req, NULL);
    rep.pid = s->pid;
    rep.start_time = s->start_time;
    send_msg(&rep);
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
static void
watch_spawn(struct sb *s)
{
    uv_poll_init(sp.loop, &s->spawn_poll, sbx_sandbox_spawning_fd(s->spawning));
    sb_handle_init(s, (uv_handle_t *)&s->spawn_poll);
    uv_poll_start(&s->spawn_poll, UV_READABLE, on_spawn_readable);
    uv_timer_init(sp.loop, &s->deadline);
    sb_handle_init(s, (uv_handle_t *)&s->deadline);
    uv_timer_start(&s->deadline, on_spawn_deadline, SBX_SPAWN_TIMEOUT_MS, 0);
}

/* Checks a spawn request against what we know; 0 if it may go ahead. */
static int
spawn_allowed(const struct sbx_spawner_msg *m, int config_fd, struct sbx_error **err)
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
static int
layer_paths(const struct sbx_spawner_msg *m, char **paths, size_t *n, struct sbx_error **err)
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

static void
free_paths(char **paths, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
}

/* Records the layers a sandbox uses in its dir, so that no start of ours removes them while
 * it runs. */
static int
record_layers(const struct sb *s, const char *layers, struct sbx_error **err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/" SB_LAYERS, s->dir);
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, layers, strlen(layers)) != (ssize_t)strlen(layers))
        return sbx_error_sys(err, errno, "record the layers of %s", s->id);
    return 0;
}

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

static void
handle_spawn(const struct sbx_spawner_msg *m, int config_fd)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    char *layers[SBX_LAYERS_MAX];
    size_t n_layers = 0;
    int ok = layer_paths(m, layers, &n_layers, &err);
    if (ok == 0)
        ok = spawn_allowed(m, config_fd, &err);
    if (ok < 0) {
        free_paths(layers, n_layers);
        reply_error(m->seq, err);
        return;
    }
    struct sb *s = sb_new(m->id);
    s->slot = (int)m->uid_slot;
    s->seq = m->seq;
    s->phase = SB_SPAWNING;
    _cleanup_close_ int conf =
        record_layers(s, m->layers, &err) < 0 ? -1 : copy_config(config_fd, &err);
    _cleanup_close_ int lfd = conf < 0 ? -1 : listen_agent(s, &err);
    if (lfd < 0) {
        free_paths(layers, n_layers);
        reply_error(m->seq, err);
        struct sbx_sandbox_ref ref = {.id = s->id, .sandbox_dir = s->dir};
        _cleanup_error_ struct sbx_error *ignored = NULL;
        sbx_sandbox_destroy(&ref, &ignored); /* the dir made above */
        sb_drop(s);
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
        .disks_dir = sp.disks_dir,
        .host_uid_base = sp.cfg->uid_base + (uid_t)m->uid_slot * SBX_SANDBOX_UID_COUNT,
        .limits = {.memory_bytes = m->memory_bytes,
                   .pids_max = (uint32_t)m->pids_max,
                   .cpu_millis = (uint32_t)m->cpu_millis,
                   .disk_bytes = m->disk_bytes},
        .hostname = "e2b.local",
        .relaxed = sp.cfg->relaxed,
        .agent_listen_fd = lfd,
        .agent_config_fd = conf,
        .exe_fd = sp.exe_fd,
        .argv = argv,
        .envp = envp,
    };
    int rc = sbx_sandbox_spawn_start(&plan, &s->spawning, &err);
    free_paths(layers, n_layers);
    if (rc < 0) {
        sbx_log_warn("spawn", "sandbox=%s error=\"%s\"", s->id, err->msg);
        reply_error(m->seq, err);
        sb_drop(s);
        return;
    }
    watch_spawn(s);
}

/* ---- destroy ---- */

static void
destroy_finish(struct sb *s)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_sandbox_ref ref = ref_of(s);
    uint32_t seq = s->seq;
    int rc = sbx_sandbox_destroy(&ref, &err);
    sb_drop(s);
    if (rc < 0) {
        sbx_log_warn("destroy", "error=\"%s\"", err->msg);
        reply_error(seq, err);
        return;
    }
    reply_error(seq, NULL);
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
    struct sbx_sandbox_ref ref = ref_of(s);
    int pidfd = s->pid > 0 ? sbx_sandbox_kill(&ref) : -1;
    if (pidfd < 0) {
        destroy_finish(s);
        return;
    }
    /* The agent's exit ends its pid namespace; only then is the rest quick. */
    s->pidfd = pidfd;
    uv_poll_init(sp.loop, &s->exit_poll, pidfd);
    sb_handle_init(s, (uv_handle_t *)&s->exit_poll);
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
            reply_fail(m->seq, SBX_NOT_FOUND, "sandbox %s not found", m->id);
            return;
        }
        s = sb_new(m->id);
        s->phase = SB_RUNNING;
    }
    if (s->phase != SB_RUNNING || s->step) {
        reply_fail(m->seq, SBX_FAILED_PRECONDITION, "sandbox %s is busy", m->id);
        return;
    }
    destroy_start(s, m->seq);
}

/* ---- build steps ---- */

static void
step_reply(struct sb *s)
{
    struct step *st = s->step;
    if (st->replied)
        return;
    st->replied = true;
    st->reply.seq = st->seq;
    send_msg(&st->reply);
}

static void
step_fail(struct sb *s, enum sbx_code code, int e, const char *fmt, const char *arg)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    sbx_error_set(&err, code, e, fmt, arg);
    struct sbx_spawner_msg req = {.seq = s->step->seq};
    sbx_spawner_reply_init(&s->step->reply, &req, err);
}

/* The step's sandbox is gone (destroyed after its exit, or after its commit). */
static void
step_destroyed(struct sb *s)
{
    struct sbx_sandbox_ref ref = ref_of(s);
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_sandbox_destroy(&ref, &err) < 0)
        sbx_log_warn("build_step", "sandbox=%s error=\"destroy: %s\"", s->id, err->msg);
    step_reply(s);
    sb_drop(s);
}

/* Forks a child that runs work(ud) and writes its job_result to the pipe whose read end it
 * returns (*pid: the child): slow work (a walk of a large tree) must not hold up the
 * requests of other sandboxes. The child never returns into the loop. */
static int
job_fork(job_fn work, void *ud, pid_t *pid, struct sbx_error **err)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return sbx_error_sys(err, errno, "pipe");
    *pid = fork();
    if (*pid == 0) {
        close(p[0]);
        struct job_result r = {.code = SBX_OK};
        struct sbx_error *e = NULL;
        if (work(ud, &r.value, &e) < 0) {
            r.code = e->code;
            r.sys_errno = e->sys_errno;
            snprintf(r.message, sizeof(r.message), "%s", e->msg);
        }
        _exit(write(p[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
    }
    close(p[1]);
    if (*pid < 0) {
        close(p[0]);
        return sbx_error_sys(err, errno, "fork");
    }
    return p[0];
}

/* Reads a job's result and reaps it; a job that died without one is an internal error. */
static void
job_finish(int fd, pid_t pid, struct job_result *r)
{
    ssize_t n = read(fd, r, sizeof(*r));
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    r->message[sizeof(r->message) - 1] = '\0';
    if (n != (ssize_t)sizeof(*r)) {
        *r = (struct job_result){.code = SBX_INTERNAL};
        snprintf(r->message, sizeof(r->message), "the process doing the work died");
    }
}

static void
on_commit_result(uv_poll_t *h, int status, int events)
{
    struct sb *s = h->data;
    struct step *st = s->step;
    uv_poll_stop(&st->commit_poll);
    struct job_result r;
    job_finish(st->commit_fd, st->commit_pid, &r);
    st->commit_pid = 0;
    if (r.code != SBX_OK)
        step_fail(s, (enum sbx_code)r.code, r.sys_errno, "commit: %s", r.message);
    else
        st->reply.layer_empty = r.value ? 1 : 0;
    step_destroyed(s);
}

static int
commit_work(void *ud, int32_t *value, struct sbx_error **err)
{
    struct sb *s = ud;
    bool empty = false;
    struct sbx_sandbox_ref ref = ref_of(s);
    int rc =
        sbx_sandbox_commit(&ref, sp.cfg->state_dir, s->step->key, s->step->uid_base, &empty, err);
    *value = empty;
    return rc;
}

/* Commits the step's writable layer in a job. */
static void
step_commit(struct sb *s)
{
    struct step *st = s->step;
    _cleanup_error_ struct sbx_error *err = NULL;
    int fd = job_fork(commit_work, s, &st->commit_pid, &err);
    if (fd < 0) {
        step_fail(s, SBX_INTERNAL, err->sys_errno, "commit: %s", err->msg);
        step_destroyed(s);
        return;
    }
    st->commit_fd = fd;
    uv_poll_init(sp.loop, &st->commit_poll, fd);
    sb_handle_init(s, (uv_handle_t *)&st->commit_poll);
    uv_poll_start(&st->commit_poll, UV_READABLE, on_commit_result);
}

/* Both the agent's exit and the end of its output are needed: the last output may still be
 * in the pipe when the exit is seen. */
static void
step_maybe_done(struct sb *s)
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
        step_fail(s, SBX_DEADLINE_EXCEEDED, 0, "the step did not end within its timeout%s", "");
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
        step_maybe_done(s);
        return;
    }
    /* The message is text: what the step printed, NUL bytes made visible. */
    for (ssize_t i = 0; i < n; i++)
        if (log.message[i] == '\0')
            log.message[i] = '?';
    log.message[n] = '\0';
    send_msg(&log);
}

static void
on_step_timeout(uv_timer_t *t)
{
    struct sb *s = t->data;
    s->step->timed_out = true;
    struct sbx_sandbox_ref ref = ref_of(s);
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

static void
handle_build_step(const struct sbx_spawner_msg *m, int config_fd, int archive_fd)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    char *layers[SBX_LAYERS_MAX];
    size_t n_layers = 0;
    int ok = layer_paths(m, layers, &n_layers, &err);
    if (ok == 0 && sbx_layer_exists(sp.cfg->state_dir, m->layer_key))
        ok = sbx_error_set(&err, SBX_ALREADY_EXISTS, 0, "layer %s exists", m->layer_key);
    if (ok == 0)
        ok = spawn_allowed(m, config_fd, &err);
    if (ok < 0) {
        free_paths(layers, n_layers);
        reply_error(m->seq, err);
        return;
    }
    struct sb *s = sb_new(m->id);
    s->slot = (int)m->uid_slot;
    s->seq = m->seq;
    s->phase = SB_SPAWNING;
    struct step *st = calloc(1, sizeof(*st));
    if (st == NULL)
        abort();
    s->step = st;
    st->seq = m->seq;
    st->out_fd = st->commit_fd = -1;
    st->uid_base = sp.cfg->uid_base + (uid_t)m->uid_slot * SBX_SANDBOX_UID_COUNT;
    snprintf(st->key, sizeof(st->key), "%s", m->layer_key);
    int out[2] = {-1, -1};
    _cleanup_close_ int in = archive_fd >= 0 ? reopen_archive(archive_fd, &err) : -1;
    _cleanup_close_ int conf = (archive_fd >= 0 && in < 0) ||
                                       record_layers(s, m->layers, &err) < 0 ||
                                       mark_step(s, &err) < 0
                                   ? -1
                                   : copy_config(config_fd, &err);
    if (conf < 0 || pipe2(out, O_CLOEXEC) < 0) {
        if (conf >= 0)
            sbx_error_sys(&err, errno, "pipe");
        free_paths(layers, n_layers);
        reply_error(m->seq, err);
        struct sbx_sandbox_ref ref = {.id = s->id, .sandbox_dir = s->dir};
        _cleanup_error_ struct sbx_error *ignored = NULL;
        sbx_sandbox_destroy(&ref, &ignored);
        sb_drop(s);
        return;
    }
    st->out_fd = out[0];
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    char *const argv[] = {"sbx", "agent", "--step", NULL};
    char *const envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          "LANG=C.UTF-8", NULL};
    /* No disk image: the step's writable layer is a dir of the state dir, which becomes the
     * new layer when it succeeds (sbx_sandbox_commit). */
    struct sbx_sandbox_plan plan = {
        .id = s->id,
        .sandbox_dir = s->dir,
        .layers = (const char *const *)layers,
        .n_layers = n_layers,
        .disks_dir = sp.disks_dir,
        .host_uid_base = st->uid_base,
        .limits = {.memory_bytes = m->memory_bytes,
                   .pids_max = (uint32_t)m->pids_max,
                   .cpu_millis = (uint32_t)m->cpu_millis},
        .hostname = "e2b.local",
        .relaxed = sp.cfg->relaxed,
        .agent_listen_fd = out[1],
        .agent_config_fd = conf,
        .agent_stdin_fd = in,
        .exe_fd = sp.exe_fd,
        .argv = argv,
        .envp = envp,
    };
    int rc = sbx_sandbox_spawn_start(&plan, &s->spawning, &err);
    close(out[1]);
    free_paths(layers, n_layers);
    if (rc < 0) {
        sbx_log_warn("build_step", "sandbox=%s error=\"%s\"", s->id, err->msg);
        reply_error(m->seq, err);
        sb_drop(s);
        return;
    }
    watch_spawn(s);
    uv_poll_init(sp.loop, &st->out_poll, st->out_fd);
    sb_handle_init(s, (uv_handle_t *)&st->out_poll);
    uv_poll_start(&st->out_poll, UV_READABLE, on_step_output);
    uv_timer_init(sp.loop, &st->timer);
    sb_handle_init(s, (uv_handle_t *)&st->timer);
    uv_timer_start(&st->timer, on_step_timeout, m->timeout_ms, 0);
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
    if ((k->v[k->n++] = strndup(key, len)) == NULL)
        abort();
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
gc_work(void *ud, int32_t *value, struct sbx_error **err)
{
    struct gc *g = ud;
    int n = sbx_layers_gc(sp.cfg->state_dir, (const char *const *)g->keep.v, g->keep.n, err);
    *value = n;
    return n < 0 ? -1 : 0;
}

static void
gc_free(uv_handle_t *h)
{
    struct gc *g = h->data;
    close(g->fd);
    free_paths(g->keep.v, g->keep.n);
    free(g->keep.v);
    free(g);
}

static void
on_gc_done(uv_poll_t *h, int status, int events)
{
    struct gc *g = h->data;
    uv_poll_stop(h);
    struct job_result r;
    job_finish(g->fd, g->pid, &r);
    _cleanup_error_ struct sbx_error *err = NULL;
    if (r.code != SBX_OK)
        sbx_error_set(&err, (enum sbx_code)r.code, r.sys_errno, "layer GC: %s", r.message);
    else if (r.value > 0)
        sbx_log_info("layer_gc", "removed=%d", r.value);
    struct sbx_spawner_msg req = {.seq = g->seq}, rep;
    sbx_spawner_reply_init(&rep, &req, err);
    rep.layers_removed = r.code == SBX_OK ? (uint64_t)r.value : 0;
    send_msg(&rep);
    uv_close((uv_handle_t *)h, gc_free);
}

/* Removes the layers of the store that are neither in the front end's list (fd: keys one
 * after the other), nor a built-in template's, nor used by a sandbox of ours: whatever the
 * front end says, no layer a sandbox runs on goes. */
static void
handle_gc(const struct sbx_spawner_msg *m, int fd)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > CONFIG_MAX_BYTES ||
        st.st_size % SBX_LAYER_KEY_LEN != 0) {
        reply_fail(m->seq, SBX_INVALID_ARGUMENT, "layer GC: %s", "the list of keys is not a file");
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
        reply_fail(m->seq, SBX_INVALID_ARGUMENT, "layer GC: %s", "bad layer keys");
        return;
    }
    keys_add_all(&g->keep, buf, (size_t)n);
    size_t nb;
    const char *const *builtin = sbx_builtin_layers(&nb);
    for (size_t i = 0; i < nb; i++)
        keys_add(&g->keep, builtin[i], SBX_LAYER_KEY_LEN);
    for (struct sb *s = sp.sbs; s; s = s->next) {
        char path[4096], keys[SBX_LAYERS_MAX * SBX_LAYER_KEY_LEN];
        snprintf(path, sizeof(path), "%s/" SB_LAYERS, s->dir);
        _cleanup_close_ int lfd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        ssize_t len = lfd < 0 ? -1 : read(lfd, keys, sizeof(keys));
        if (len > 0)
            keys_add_all(&g->keep, keys, (size_t)len);
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    g->fd = job_fork(gc_work, g, &g->pid, &err);
    if (g->fd < 0) {
        reply_error(m->seq, err);
        free_paths(g->keep.v, g->keep.n);
        free(g->keep.v);
        free(g);
        return;
    }
    uv_poll_init(sp.loop, &g->poll, g->fd);
    g->poll.data = g;
    uv_poll_start(&g->poll, UV_READABLE, on_gc_done);
}

/* ---- stats ---- */

static void
handle_stats(const struct sbx_spawner_msg *m)
{
    struct sb *s = sb_find(m->id);
    if (s == NULL || s->phase != SB_RUNNING || s->step) {
        reply_fail(m->seq, SBX_NOT_FOUND, "sandbox %s not found", m->id);
        return;
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_spawner_msg rep;
    sbx_spawner_reply_init(&rep, m, NULL);
    struct sbx_sandbox_ref ref = ref_of(s);
    if (sbx_sandbox_stats(&ref, &rep.stats, &err) < 0) {
        reply_error(m->seq, err);
        return;
    }
    rep.has_stats = true;
    send_msg(&rep);
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
        reply_error(seq, err);
        return;
    }
    if (m.op == SBX_SPAWNER_BUILD_STEP)
        handle_build_step(&m, fd, fd2);
    else if (m.op == SBX_SPAWNER_LAYERS_GC && fd2 < 0)
        handle_gc(&m, fd);
    else if (fd2 >= 0 || m.op == SBX_SPAWNER_STEP_LOG)
        reply_fail(m.seq, SBX_INVALID_ARGUMENT, "unexpected message for %s", m.id);
    else if (m.op == SBX_SPAWNER_SPAWN)
        handle_spawn(&m, fd);
    else if (fd >= 0)
        reply_fail(m.seq, SBX_INVALID_ARGUMENT, "unexpected fd with request for %s", m.id);
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
        ssize_t n = sbx_recv_fds_upto(sp.channel, buf, sizeof(buf), fds, SBX_SPAWNER_FDS_MAX);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && (errno == EPROTO || errno == EMSGSIZE)) {
            /* Too long, or too many fds: refused and consumed, and we go on. */
            reply_fail(0, SBX_INVALID_ARGUMENT, "malformed message: %s", strerror(errno));
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
    struct sb *next;
    for (struct sb *s = sp.sbs; s; s = next) {
        next = s->next; /* a finished step may leave the table */
        int st;
        if (s->phase != SB_RUNNING || s->pid <= 0 || waitpid(s->pid, &st, WNOHANG) != s->pid)
            continue;
        s->pid = 0;
        if (s->step && !s->step->exited) {
            s->step->exited = true;
            s->step->wstatus = st;
            step_maybe_done(s);
        }
    }
}

/* ---- start ---- */

/* Brings the built-in templates' layers into our store (the first start of a state dir
 * takes a few seconds: hard links of the cache's files). */
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
        if (sbx_layer_import(sp.cfg->state_dir, sp.cfg->layer_cache, keys[i], err) < 0)
            return -1;
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
            sb_drop(s);
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
        s->slot = (int)((base - sp.cfg->uid_base) / SBX_SANDBOX_UID_COUNT);
        running++;
        /* Sockets made by a daemon before the privilege split belong to root. */
        char sock[4096];
        snprintf(sock, sizeof(sock), "%s/" AGENT_SOCK, s->dir);
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
    if (cfg->lock_fd >= 0)
        close(cfg->lock_fd); /* the supervisor holds the block for all of us */
    sp.loop = uv_default_loop();
    _cleanup_error_ struct sbx_error *err = NULL;
    if (asprintf(&sp.disks_dir, "%s/disks", cfg->state_dir) < 0)
        abort();
    if (import_builtin_layers(&err) < 0 ||
        (sp.exe_fd =
             sbx_sandbox_agent_exe(cfg->agent_exe ? cfg->agent_exe : "/proc/self/exe", &err)) < 0) {
        sbx_log_error("spawner_start", "error=\"%s\"", err->msg);
        return 1;
    }
    scan();
    if (cfg->ready_fd >= 0) {
        (void)!write(cfg->ready_fd, "R", 1);
        close(cfg->ready_fd);
    }
    uv_signal_init(sp.loop, &sp.sigchld);
    uv_signal_start(&sp.sigchld, on_sigchld, SIGCHLD);
    fcntl(channel, F_SETFL, fcntl(channel, F_GETFL) | O_NONBLOCK);
    uv_poll_init(sp.loop, &sp.channel_poll, channel);
    channel_update();
    uv_run(sp.loop, UV_RUN_DEFAULT);
    return 0;
}
