/* The process table and the process.Process RPCs.
 *
 * A process has up to three agent-side streams (stdin pipe, stdout pipe, stderr pipe; or one
 * PTY master for all) and any number of subscribers: the Start stream and Connect streams,
 * each a streamed HTTP response. Output is base64'd into data events and fanned out to the
 * subscribers attached at that moment (nothing is buffered for later ones, as in envd). If
 * any subscriber's connection is backed up, reading the process output stops until it
 * drains, so a slow client slows the process instead of growing memory.
 *
 * Lifetime: the table holds a reference, every open uv handle holds one; a process is freed
 * after it ended, its end event was retained SBX_AGENT_END_RETAIN_MS for late Connects, and
 * all its handles' close callbacks ran. A subscriber is freed after its timers closed. */
#include "agent/process.h"

#include <stdint.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent/agent.h"
#include "base/base64.h"
#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "connect/connect.h"

enum { OUT_STDOUT, OUT_STDERR, N_OUT };

struct proc;

struct sub {
    struct proc *p;
    struct sbx_http_req *req; /* NULL once detached */
    struct sub *next;
    uv_timer_t keepalive;
    uv_timer_t deadline;
    uint64_t keepalive_ms;
    int open_handles;
    bool blocked;
    bool is_start;
};

struct proc {
    int refs;
    pid_t pid;
    char *tag;
    json_t *config; /* ProcessConfig for List */
    bool pty;
    uv_pipe_t out[N_OUT]; /* PTY: out[OUT_STDOUT] is the master, read and written */
    bool out_open[N_OUT]; /* handle initialised and not closed */
    bool out_eof[N_OUT];
    uv_pipe_t in;
    bool in_open;
    bool in_close_pending; /* CloseStdin waiting for queued writes */
    size_t in_pending;     /* bytes queued to stdin, not yet written */
    size_t in_writes;      /* write requests in flight */
    uv_timer_t deadline;   /* process lifetime (Connect-Timeout-Ms of Start) */
    uv_timer_t linger;     /* end event retention */
    bool timers_open;
    bool reading;
    bool ended;
    int n_blocked;
    json_t *end; /* EndEvent once ended */
    struct sub *subs;
    struct proc *next;
};

struct watch {
    pid_t pid;
    uint64_t oom_kills; /* the sandbox's OOM kill count when the child started */
    sbx_agent_exit_cb cb;
    void *ud;
    struct watch *next;
};

static struct {
    uv_loop_t *loop;
    const struct sbx_agent_config *cfg;
    uv_signal_t sigchld;
    struct proc *procs;
    struct watch *watches;
} svc;

static char read_buf[SBX_AGENT_OUTPUT_CHUNK];

/* ---- reaping ---- */

/* The sandbox's OOM kill count, from the "oom_kill N" line of the cgroup file the spawner
 * passed as SBX_AGENT_OOM_FD (0 if it cannot be read, e.g. an agent started by hand). */
static uint64_t
oom_kills(void)
{
    char buf[1024];
    ssize_t n = pread(SBX_AGENT_OOM_FD, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    for (char *line = buf; line; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        if (strncmp(line, "oom_kill ", 9) == 0)
            return strtoull(line + 9, NULL, 10);
    }
    return 0;
}

int
sbx_agent_watch_child(pid_t pid, sbx_agent_exit_cb cb, void *ud)
{
    struct watch *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return -1;
    *w = (struct watch){pid, oom_kills(), cb, ud, svc.watches};
    svc.watches = w;
    return 0;
}

/* Why a child was killed, when the OOM killer did it: it died of SIGKILL (or, as a shell
 * whose command was killed, exited with 128 + SIGKILL), and the sandbox's cgroup counted an
 * OOM kill during its lifetime. Then the user learns the cause and the limit, not just
 * "signal: killed". */
static const char *
oom_cause(const struct watch *w, int wstatus, char *buf, size_t n)
{
    bool killed = (WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) ||
                  (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 128 + SIGKILL);
    if (!killed || oom_kills() <= w->oom_kills)
        return NULL;
    if (svc.cfg->memory_mib > 0)
        snprintf(buf, n, "out of memory (limit %d MiB)", svc.cfg->memory_mib);
    else
        snprintf(buf, n, "out of memory");
    return buf;
}

static void
on_sigchld(uv_signal_t *h, int signum)
{
    /* PID 1 inherits every orphan of the sandbox: reap them all, notify the watched ones. */
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0)
            break;
        for (struct watch **wp = &svc.watches; *wp; wp = &(*wp)->next) {
            if ((*wp)->pid != pid)
                continue;
            struct watch *w = *wp;
            *wp = w->next;
            char why[64];
            w->cb(pid, st, oom_cause(w, st, why, sizeof(why)), w->ud);
            free(w);
            break;
        }
    }
}

/* ---- process object ---- */

static void
proc_unref(struct proc *p)
{
    if (--p->refs > 0)
        return;
    free(p->tag);
    json_decref(p->config);
    json_decref(p->end);
    free(p);
}

static void
on_handle_closed(uv_handle_t *h)
{
    proc_unref(h->data);
}

static void
close_handle(struct proc *p, uv_handle_t *h)
{
    h->data = p;
    uv_close(h, on_handle_closed);
}

static struct proc *
proc_find(const struct sbx_agent_selector *sel, bool include_ended)
{
    for (struct proc *p = svc.procs; p; p = p->next) {
        if (p->ended && !include_ended)
            continue;
        if (sel->tag ? (p->tag && strcmp(p->tag, sel->tag) == 0) : p->pid == (pid_t)sel->pid)
            return p;
    }
    return NULL;
}

static int
proc_lookup(const struct sbx_agent_selector *sel, bool include_ended, struct proc **out,
            struct sbx_error **err)
{
    *out = proc_find(sel, include_ended);
    if (*out)
        return 0;
    if (sel->tag)
        return sbx_error_set(err, SBX_NOT_FOUND, 0, "process with tag %s not found", sel->tag);
    return sbx_error_set(err, SBX_NOT_FOUND, 0, "process with pid %u not found", sel->pid);
}

/* ---- subscribers ---- */

static void sub_detach(struct sub *s);
static void proc_set_reading(struct proc *p, bool on);

static void
sub_handle_closed(uv_handle_t *h)
{
    struct sub *s = h->data;
    if (--s->open_handles == 0)
        free(s);
}

static void
on_sub_drain(struct sbx_http_req *req)
{
    struct sub *s = req->data;
    if (s == NULL || !s->blocked)
        return;
    s->blocked = false;
    if (--s->p->n_blocked == 0)
        proc_set_reading(s->p, true);
}

/* Sends one event to one subscriber; steals ev. */
static void
sub_send(struct sub *s, json_t *ev)
{
    if (s->req == NULL) {
        json_decref(ev);
        return;
    }
    bool ok = sbx_connect_stream_send(s->req, ev);
    if (s->keepalive_ms)
        uv_timer_again(&s->keepalive);
    if (!ok && !s->blocked) {
        s->blocked = true;
        s->p->n_blocked++;
        sbx_http_on_drain(s->req, on_sub_drain);
    }
}

/* Ends the subscriber's stream (with e, or cleanly) and forgets it. */
static void
sub_end(struct sub *s, const struct sbx_error *e)
{
    struct sbx_http_req *req = s->req;
    sub_detach(s);
    if (req) {
        req->data = NULL;
        sbx_connect_stream_end(req, e);
    }
}

static void
on_sub_closed_by_client(struct sbx_http_req *req)
{
    /* E2B semantics: a client that goes away does not kill the process. */
    struct sub *s = req->data;
    if (s == NULL)
        return;
    req->data = NULL;
    s->req = NULL;
    sub_detach(s);
}

static void
on_keepalive(uv_timer_t *t)
{
    struct sub *s = t->data;
    if (s->blocked)
        return; /* the connection is backed up with output anyway */
    sub_send(s, sbx_agent_event("keepalive", json_object()));
}

static void
on_sub_deadline(uv_timer_t *t)
{
    struct sub *s = t->data;
    _cleanup_error_ struct sbx_error *e = NULL;
    sbx_error_set(&e, SBX_DEADLINE_EXCEEDED, 0, "context deadline exceeded");
    sub_end(s, e);
}

static void
sub_detach(struct sub *s)
{
    struct proc *p = s->p;
    if (p == NULL)
        return;
    for (struct sub **sp = &p->subs; *sp; sp = &(*sp)->next) {
        if (*sp == s) {
            *sp = s->next;
            break;
        }
    }
    if (s->blocked) {
        s->blocked = false;
        if (--p->n_blocked == 0)
            proc_set_reading(p, true);
    }
    s->p = NULL;
    s->req = NULL;
    s->keepalive.data = s;
    s->deadline.data = s;
    uv_close((uv_handle_t *)&s->keepalive, sub_handle_closed);
    uv_close((uv_handle_t *)&s->deadline, sub_handle_closed);
}

/* Starts the response stream on req, sends the start event and subscribes req to p. */
static struct sub *
sub_attach(struct proc *p, struct sbx_http_req *req, bool is_start, uint64_t deadline_ms)
{
    struct sub *s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    s->p = p;
    s->req = req;
    s->is_start = is_start;
    s->keepalive_ms = sbx_connect_keepalive_ms(req);
    uv_timer_init(svc.loop, &s->keepalive);
    uv_timer_init(svc.loop, &s->deadline);
    s->open_handles = 2;
    s->keepalive.data = s;
    s->deadline.data = s;
    uv_timer_start(&s->keepalive, on_keepalive, s->keepalive_ms, s->keepalive_ms);
    if (deadline_ms)
        uv_timer_start(&s->deadline, on_sub_deadline, deadline_ms, 0);
    req->data = s;
    sbx_http_req_on_close(req, on_sub_closed_by_client);
    s->next = p->subs;
    p->subs = s;
    sbx_connect_stream_start(req);
    json_t *start = json_object();
    json_object_set_new(start, "pid", json_integer(p->pid));
    sub_send(s, sbx_agent_event("start", start));
    return s;
}

/* ---- output ---- */

static void
fan_out(struct proc *p, const char *kind, const char *data, size_t len)
{
    if (p->subs == NULL)
        return; /* nobody attached: dropped, as in envd */
    size_t blen;
    _cleanup_free_ char *b64 = sbx_base64_encode(data, len, &blen);
    if (b64 == NULL)
        abort();
    json_t *d = json_object();
    json_object_set_new(d, kind, json_stringn(b64, blen));
    json_t *ev = sbx_agent_event("data", d);
    for (struct sub *s = p->subs, *next; s; s = next) {
        next = s->next;
        sub_send(s, json_incref(ev));
    }
    json_decref(ev);
    if (p->n_blocked > 0)
        proc_set_reading(p, false);
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    /* One static buffer: libuv hands every read to on_read before the next alloc. */
    *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static int
out_index(struct proc *p, uv_stream_t *st)
{
    return st == (uv_stream_t *)&p->out[OUT_STDOUT] ? OUT_STDOUT : OUT_STDERR;
}

static void
on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct proc *p = st->data;
    int i = out_index(p, st);
    if (n > 0) {
        fan_out(p, p->pty ? "pty" : (i == OUT_STDOUT ? "stdout" : "stderr"), buf->base, (size_t)n);
        return;
    }
    if (n < 0) {
        /* EOF on a pipe; EIO on a PTY master once every slave fd is closed. */
        p->out_eof[i] = true;
        uv_read_stop(st);
    }
}

static void
proc_set_reading(struct proc *p, bool on)
{
    if (p->ended || p->reading == on)
        return;
    p->reading = on;
    for (int i = 0; i < N_OUT; i++) {
        if (!p->out_open[i] || p->out_eof[i])
            continue;
        if (on)
            uv_read_start((uv_stream_t *)&p->out[i], on_alloc, on_read);
        else
            uv_read_stop((uv_stream_t *)&p->out[i]);
    }
}

/* After the child exited, whatever it wrote is already in the pipe or PTY buffer: read it
 * synchronously (bounded by the kernel buffer size) so the end event follows all output,
 * without waiting for EOF, which a background grandchild holding the pipe could delay
 * forever. */
static void
drain_output(struct proc *p)
{
    for (int i = 0; i < N_OUT; i++) {
        if (!p->out_open[i] || p->out_eof[i])
            continue;
        int fd = -1;
        uv_fileno((uv_handle_t *)&p->out[i], &fd);
        for (int rounds = 0; fd >= 0 && rounds < 64; rounds++) {
            ssize_t n = read(fd, read_buf, sizeof(read_buf));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            fan_out(p, p->pty ? "pty" : (i == OUT_STDOUT ? "stdout" : "stderr"), read_buf,
                    (size_t)n);
        }
    }
}

/* ---- end of a process ---- */

static void
on_linger(uv_timer_t *t)
{
    struct proc *p = t->data;
    for (struct proc **pp = &svc.procs; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    p->timers_open = false;
    close_handle(p, (uv_handle_t *)&p->deadline);
    close_handle(p, (uv_handle_t *)&p->linger);
    proc_unref(p); /* the table's reference */
}

static void
proc_close_io(struct proc *p)
{
    for (int i = 0; i < N_OUT; i++) {
        if (p->out_open[i]) {
            p->out_open[i] = false;
            close_handle(p, (uv_handle_t *)&p->out[i]);
        }
    }
    if (p->in_open) {
        p->in_open = false;
        close_handle(p, (uv_handle_t *)&p->in);
    }
}

static void
on_child_exit(pid_t pid, int wstatus, const char *killed_by, void *ud)
{
    struct proc *p = ud;
    drain_output(p);
    p->ended = true;
    p->reading = false;
    proc_close_io(p);
    uv_timer_stop(&p->deadline);
    p->end = sbx_agent_end_event_format(wstatus, killed_by);
    const char *status = json_string_value(json_object_get(p->end, "status"));
    if (killed_by)
        sbx_log_warn("process_end", "pid=%d status=\"%s\" killed=\"%s\"", (int)pid, status,
                     killed_by);
    else
        sbx_log_info("process_end", "pid=%d status=\"%s\"", (int)pid, status);
    while (p->subs) {
        struct sub *s = p->subs;
        sub_send(s, sbx_agent_event("end", json_incref(p->end)));
        sub_end(s, NULL);
    }
    uv_timer_start(&p->linger, on_linger, SBX_AGENT_END_RETAIN_MS, 0);
}

static void
on_proc_deadline(uv_timer_t *t)
{
    struct proc *p = t->data;
    /* Connect-Timeout-Ms of Start is the process lifetime (envd): kill the whole process
     * group and end the Start stream with deadline_exceeded; other streams see the end. */
    if (kill(-p->pid, SIGKILL) < 0)
        kill(p->pid, SIGKILL);
    _cleanup_error_ struct sbx_error *e = NULL;
    sbx_error_set(&e, SBX_DEADLINE_EXCEEDED, 0, "context deadline exceeded");
    for (struct sub *s = p->subs, *next; s; s = next) {
        next = s->next;
        if (s->is_start)
            sub_end(s, e);
    }
}

/* ---- spawning ---- */

static int
set_winsize(int fd, uint16_t cols, uint16_t rows)
{
    struct winsize ws = {.ws_row = rows ? rows : 24, .ws_col = cols ? cols : 80};
    return ioctl(fd, TIOCSWINSZ, &ws);
}

static int
open_pty(int *master, int *slave, uint16_t cols, uint16_t rows, struct sbx_error **err)
{
    _cleanup_close_ int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0)
        return sbx_error_sys(err, errno, "open /dev/ptmx");
    char name[64];
    if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, sizeof(name)) != 0)
        return sbx_error_sys(err, errno, "unlock pty");
    int s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0)
        return sbx_error_sys(err, errno, "open %s", name);
    if (set_winsize(m, cols, rows) < 0) {
        close(s);
        return sbx_error_sys(err, errno, "TIOCSWINSZ");
    }
    *slave = s;
    *master = steal_fd(&m);
    return 0;
}

static int
open_pipe(uv_pipe_t *h, int fd, struct sbx_error **err)
{
    uv_pipe_init(svc.loop, h, 0);
    int r = uv_pipe_open(h, fd);
    if (r < 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "uv_pipe_open: %s", uv_strerror(r));
    return 0;
}

static void
close_fds(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

static struct proc *
proc_start(const struct sbx_agent_start_req *r, const struct sbx_agent_user *u,
           struct sbx_error **err)
{
    char **envp = sbx_agent_env_build(u, svc.cfg->env_vars, r->envs, r->pty);
    _cleanup_free_ char *cwd = sbx_agent_resolve_cwd(r->cwd, u->home);
    _cleanup_free_ char *path = sbx_agent_find_executable(r->cmd, envp, err);
    if (path == NULL) {
        sbx_agent_strv_free(envp);
        return NULL;
    }
    /* argv[0] is the command as given, as Go's exec.Command does. */
    char **argv = calloc(r->n_args + 2, sizeof(char *));
    if (argv == NULL)
        abort();
    argv[0] = r->cmd;
    for (size_t i = 0; i < r->n_args; i++)
        argv[i + 1] = r->args[i];

    /* parent ends: [0] stdout/master, [1] stderr, [2] stdin; child ends: [3] in [4] out [5] err */
    int fds[6] = {-1, -1, -1, -1, -1, -1};
    int pfd[2];
    pid_t pid = -1;
    if (r->pty) {
        int m = -1, s = -1;
        if (open_pty(&m, &s, r->cols, r->rows, err) < 0)
            goto fail;
        fds[0] = m;
        fds[3] = s;
        fds[4] = s;
        fds[5] = s;
    } else {
        if (pipe2(pfd, O_CLOEXEC) < 0)
            goto sys_fail;
        fds[0] = pfd[0], fds[4] = pfd[1];
        if (pipe2(pfd, O_CLOEXEC) < 0)
            goto sys_fail;
        fds[1] = pfd[0], fds[5] = pfd[1];
        if (r->stdin_open) {
            if (pipe2(pfd, O_CLOEXEC) < 0)
                goto sys_fail;
            fds[3] = pfd[0], fds[2] = pfd[1];
        } else {
            /* stdin:false means no stdin at all, as in envd: the command reads EOF. */
            fds[3] = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fds[3] < 0)
                goto sys_fail;
        }
    }
    struct sbx_agent_spawn sp = {
        .path = path,
        .argv = argv,
        .envp = envp,
        .cwd = cwd,
        .user = u,
        .stdin_fd = fds[3],
        .stdout_fd = fds[4],
        .stderr_fd = fds[5],
        .ctty_fd = r->pty ? fds[3] : -1,
    };
    pid = sbx_agent_spawn(&sp, err);
    free(argv);
    argv = NULL;
    sbx_agent_strv_free(envp);
    envp = NULL;
    if (fds[3] == fds[4])
        fds[4] = fds[5] = -1; /* the PTY slave appears three times; close it once */
    close_fds(fds + 3, 3);
    if (pid < 0)
        goto fail;

    struct proc *p = calloc(1, sizeof(*p));
    if (p == NULL)
        abort();
    p->refs = 1; /* the table */
    p->pid = pid;
    p->pty = r->pty;
    p->tag = r->tag ? strdup(r->tag) : NULL;
    p->config = sbx_agent_config_json(r);
    for (int i = 0; i < N_OUT; i++) {
        if (fds[i] < 0)
            continue;
        if (open_pipe(&p->out[i], fds[i], err) < 0) {
            /* Cannot happen for a fresh fd; the child is killed and reaped as an orphan. */
            kill(pid, SIGKILL);
            close_fds(fds, 3);
            free(p);
            return NULL;
        }
        fds[i] = -1;
        p->out[i].data = p;
        p->out_open[i] = true;
        p->refs++;
    }
    if (fds[2] >= 0) {
        open_pipe(&p->in, fds[2], NULL);
        fds[2] = -1;
        p->in.data = p;
        p->in_open = true;
        p->refs++;
    }
    uv_timer_init(svc.loop, &p->deadline);
    uv_timer_init(svc.loop, &p->linger);
    p->deadline.data = p;
    p->linger.data = p;
    p->refs += 2;
    p->timers_open = true;
    p->next = svc.procs;
    svc.procs = p;
    sbx_agent_watch_child(pid, on_child_exit, p);
    proc_set_reading(p, true);
    return p;

sys_fail:
    sbx_error_sys(err, errno, "creating process pipes");
fail:
    free(argv);
    sbx_agent_strv_free(envp);
    if (fds[3] >= 0 && fds[3] == fds[4])
        fds[4] = fds[5] = -1;
    close_fds(fds, 6);
    return NULL;
}

/* ---- input ---- */

struct in_write {
    uv_write_t w;
    struct proc *p;
    size_t len;
    char data[];
};

static void
maybe_close_stdin(struct proc *p)
{
    if (p->in_close_pending && p->in_writes == 0 && p->in_open) {
        p->in_open = false;
        close_handle(p, (uv_handle_t *)&p->in);
    }
}

static void
on_in_written(uv_write_t *w, int status)
{
    struct in_write *iw = (struct in_write *)w;
    struct proc *p = iw->p;
    p->in_pending -= iw->len;
    p->in_writes--;
    maybe_close_stdin(p);
    free(iw);
    proc_unref(p);
}

static int
proc_write_input(struct proc *p, bool to_pty, const unsigned char *data, size_t len,
                 struct sbx_error **err)
{
    uv_stream_t *st;
    if (to_pty) {
        if (!p->pty || !p->out_open[OUT_STDOUT])
            return sbx_error_set(err, SBX_INTERNAL, 0, "tty not assigned to process");
        st = (uv_stream_t *)&p->out[OUT_STDOUT];
    } else {
        if (p->pty || !p->in_open || p->in_close_pending)
            return sbx_error_set(err, SBX_INTERNAL, 0, "stdin not enabled or closed");
        st = (uv_stream_t *)&p->in;
    }
    if (len == 0)
        return 0;
    if (p->in_pending + len > SBX_AGENT_STDIN_MAX_PENDING)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0,
                             "too much input queued: the process is not reading it");
    struct in_write *iw = malloc(sizeof(*iw) + len);
    if (iw == NULL)
        abort();
    iw->p = p;
    iw->len = len;
    memcpy(iw->data, data, len);
    uv_buf_t b = uv_buf_init(iw->data, (unsigned)len);
    int r = uv_write(&iw->w, st, &b, 1, on_in_written);
    if (r < 0) {
        free(iw);
        return sbx_error_set(err, SBX_INTERNAL, 0, "write input: %s", uv_strerror(r));
    }
    p->refs++;
    p->in_pending += len;
    p->in_writes++;
    return 0;
}

/* ---- RPC handlers ---- */

static void
reply_error(struct sbx_http_req *req, struct sbx_error *e)
{
    sbx_connect_error(req, e);
}

static void
on_start(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    if (rerr) {
        reply_error(req, rerr);
        return;
    }
    _cleanup_error_ struct sbx_error *e = NULL;
    struct sbx_agent_start_req r;
    if (sbx_agent_start_req_parse(msg, &r, &e) < 0) {
        reply_error(req, e);
        return;
    }
    struct sbx_agent_user u;
    if (sbx_agent_user_from_request(req, &u, &e) < 0) {
        sbx_agent_start_req_fini(&r);
        reply_error(req, e);
        return;
    }
    struct proc *p = proc_start(&r, &u, &e);
    char line[512], cmd[512];
    int n = snprintf(line, sizeof(line), "%s", r.cmd);
    for (size_t i = 0; i < r.n_args && n >= 0 && (size_t)n < sizeof(line); i++)
        n += snprintf(line + n, sizeof(line) - (size_t)n, " %s", r.args[i]);
    sbx_log_quote(cmd, sizeof(cmd), line);
    /* The sandbox's log (its daemon keeps it after the sandbox ends): what ran, as whom. */
    if (p)
        sbx_log_info("process_start", "pid=%d cmd=\"%s\" user=%s pty=%d", (int)p->pid, cmd, u.name,
                     r.pty);
    sbx_agent_user_fini(&u);
    if (p == NULL) {
        char why[512];
        sbx_log_quote(why, sizeof(why), e ? e->msg : "");
        sbx_log_warn("process_start_failed", "cmd=\"%s\" error=\"%s\"", cmd, why);
        sbx_agent_start_req_fini(&r);
        reply_error(req, e);
        return;
    }
    sbx_agent_start_req_fini(&r);
    uint64_t timeout = sbx_connect_timeout_ms(req);
    if (timeout > 0)
        uv_timer_start(&p->deadline, on_proc_deadline, timeout, 0);
    sub_attach(p, req, true, 0);
}

static void
on_connect(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    if (rerr) {
        reply_error(req, rerr);
        return;
    }
    _cleanup_error_ struct sbx_error *e = NULL;
    struct sbx_agent_selector sel;
    struct proc *p;
    if (sbx_agent_selector_parse(msg, "process", &sel, &e) < 0 ||
        proc_lookup(&sel, true, &p, &e) < 0) {
        sbx_agent_selector_fini(&sel);
        reply_error(req, e);
        return;
    }
    sbx_agent_selector_fini(&sel);
    struct sub *s = sub_attach(p, req, false, sbx_connect_timeout_ms(req));
    if (p->ended) {
        sub_send(s, sbx_agent_event("end", json_incref(p->end)));
        sub_end(s, NULL);
    }
}

static void
on_list(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    if (rerr) {
        reply_error(req, rerr);
        return;
    }
    json_t *list = json_array();
    for (struct proc *p = svc.procs; p; p = p->next) {
        if (p->ended)
            continue;
        json_t *info = json_object();
        json_object_set(info, "config", p->config);
        json_object_set_new(info, "pid", json_integer(p->pid));
        if (p->tag)
            json_object_set_new(info, "tag", json_string(p->tag));
        json_array_append_new(list, info);
    }
    json_t *resp = json_object();
    json_object_set_new(resp, "processes", list);
    sbx_connect_unary_ok(req, resp);
}

/* Shared prologue of the unary RPCs addressed to one running process. */
static struct proc *
target(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr, struct sbx_error **e)
{
    if (rerr) {
        reply_error(req, rerr);
        return NULL;
    }
    struct sbx_agent_selector sel;
    struct proc *p = NULL;
    if (sbx_agent_selector_parse(msg, "process", &sel, e) < 0 ||
        proc_lookup(&sel, false, &p, e) < 0) {
        sbx_agent_selector_fini(&sel);
        reply_error(req, *e);
        return NULL;
    }
    sbx_agent_selector_fini(&sel);
    return p;
}

static void
on_send_input(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    struct proc *p = target(req, msg, rerr, &e);
    if (p == NULL)
        return;
    bool to_pty;
    _cleanup_free_ unsigned char *data = NULL;
    size_t len;
    if (sbx_agent_input_parse(json_object_get(msg, "input"), &to_pty, &data, &len, &e) < 0 ||
        proc_write_input(p, to_pty, data, len, &e) < 0) {
        reply_error(req, e);
        return;
    }
    sbx_connect_unary_ok(req, json_object());
}

static void
on_send_signal(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    struct proc *p = target(req, msg, rerr, &e);
    if (p == NULL)
        return;
    int sig;
    if (sbx_agent_signal_parse(json_object_get(msg, "signal"), &sig, &e) < 0) {
        reply_error(req, e);
        return;
    }
    /* The whole process group (the command ran setsid): `bash -c 'a | b'` dies entirely. */
    if (kill(-p->pid, sig) < 0 && kill(p->pid, sig) < 0 && errno != ESRCH) {
        sbx_error_sys(&e, errno, "kill %d", (int)p->pid);
        reply_error(req, e);
        return;
    }
    sbx_connect_unary_ok(req, json_object());
}

static void
on_close_stdin(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    struct proc *p = target(req, msg, rerr, &e);
    if (p == NULL)
        return;
    if (p->pty) {
        sbx_error_set(&e, SBX_UNKNOWN, 0, "cannot close stdin of a PTY process");
        reply_error(req, e);
        return;
    }
    if (!p->in_open) {
        sbx_error_set(&e, SBX_INTERNAL, 0, "stdin not enabled or closed");
        reply_error(req, e);
        return;
    }
    /* Queued SendInput data goes out first; then the pipe closes and the command sees EOF. */
    p->in_close_pending = true;
    maybe_close_stdin(p);
    sbx_connect_unary_ok(req, json_object());
}

static void
on_update(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    struct proc *p = target(req, msg, rerr, &e);
    if (p == NULL)
        return;
    json_t *pty = json_object_get(msg, "pty");
    uint16_t cols, rows;
    if (pty == NULL || json_is_null(pty)) {
        sbx_connect_unary_ok(req, json_object());
        return;
    }
    if (sbx_agent_pty_size_parse(pty, &cols, &rows, &e) < 0) {
        reply_error(req, e);
        return;
    }
    int fd = -1;
    if (!p->pty || !p->out_open[OUT_STDOUT] ||
        uv_fileno((uv_handle_t *)&p->out[OUT_STDOUT], &fd) < 0) {
        sbx_error_set(&e, SBX_INTERNAL, 0, "tty not assigned to process");
        reply_error(req, e);
        return;
    }
    /* The kernel sends SIGWINCH to the terminal's foreground process group. */
    if (set_winsize(fd, cols, rows) < 0) {
        sbx_error_sys(&e, errno, "error resizing tty");
        reply_error(req, e);
        return;
    }
    sbx_connect_unary_ok(req, json_object());
}

/* ---- StreamInput (client streaming): {start:{process}} then {data:{input}} / {keepalive} ---- */

struct stream_in {
    struct sbx_connect_reader rd;
    struct sbx_agent_selector sel;
    bool started;
};

static void
stream_in_free(struct stream_in *si)
{
    sbx_connect_reader_fini(&si->rd);
    sbx_agent_selector_fini(&si->sel);
    free(si);
}

static void
stream_in_fail(struct sbx_http_req *req, struct sbx_error *e)
{
    struct stream_in *si = req->data;
    req->data = NULL;
    stream_in_free(si);
    sbx_connect_error(req, e);
}

static int
stream_in_message(struct stream_in *si, const char *payload, size_t len, struct sbx_error **err)
{
    json_error_t jerr;
    json_t *msg = json_loadb(payload, len, 0, &jerr);
    if (!json_is_object(msg)) {
        json_decref(msg);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid message: %s", jerr.text);
    }
    int rc = 0;
    json_t *start = json_object_get(msg, "start");
    json_t *data = json_object_get(msg, "data");
    if (start) {
        sbx_agent_selector_fini(&si->sel);
        struct proc *p;
        rc = sbx_agent_selector_parse(start, "process", &si->sel, err);
        if (rc == 0)
            rc = proc_lookup(&si->sel, false, &p, err);
        si->started = rc == 0;
    } else if (data) {
        struct proc *p;
        bool to_pty;
        unsigned char *bytes = NULL;
        size_t n;
        if (!si->started)
            rc = sbx_error_set(err, SBX_FAILED_PRECONDITION, 0, "start event expected first");
        else if ((rc = proc_lookup(&si->sel, false, &p, err)) == 0 &&
                 (rc = sbx_agent_input_parse(json_object_get(data, "input"), &to_pty, &bytes, &n,
                                             err)) == 0)
            rc = proc_write_input(p, to_pty, bytes, n, err);
        free(bytes);
    }
    json_decref(msg);
    return rc;
}

static void
on_stream_in_data(struct sbx_http_req *req, const char *data, size_t len)
{
    struct stream_in *si = req->data;
    if (si == NULL)
        return;
    _cleanup_error_ struct sbx_error *e = NULL;
    if (sbx_connect_reader_feed(&si->rd, data, len, &e) < 0) {
        stream_in_fail(req, e);
        return;
    }
    for (;;) {
        uint8_t flags;
        char *msg;
        size_t n;
        int r = sbx_connect_reader_next(&si->rd, &flags, &msg, &n, &e);
        if (r < 0) {
            stream_in_fail(req, e);
            return;
        }
        if (r == 0)
            return;
        if (flags & SBX_CONNECT_FLAG_END_STREAM) {
            free(msg);
            continue;
        }
        r = stream_in_message(si, msg, n, &e);
        free(msg);
        if (r < 0) {
            stream_in_fail(req, e);
            return;
        }
    }
}

static void
on_stream_in_end(struct sbx_http_req *req)
{
    struct stream_in *si = req->data;
    if (si == NULL)
        return;
    req->data = NULL;
    stream_in_free(si);
    sbx_connect_stream_start(req);
    sbx_connect_stream_send(req, json_object());
    sbx_connect_stream_end(req, NULL);
}

static void
on_stream_in_closed(struct sbx_http_req *req)
{
    struct stream_in *si = req->data;
    req->data = NULL;
    if (si)
        stream_in_free(si);
}

static void
stream_input(struct sbx_http_req *req)
{
    struct stream_in *si = calloc(1, sizeof(*si));
    if (si == NULL)
        abort();
    req->data = si;
    sbx_http_req_on_close(req, on_stream_in_closed);
    sbx_http_req_stream_body(req, on_stream_in_data, on_stream_in_end);
}

static const struct {
    const char *name;
    sbx_connect_msg_cb cb;
} methods[] = {
    {"Start", on_start},          {"Connect", on_connect},        {"List", on_list},
    {"SendInput", on_send_input}, {"SendSignal", on_send_signal}, {"CloseStdin", on_close_stdin},
    {"Update", on_update},
};

static void
on_unimplemented_body(struct sbx_http_req *req, struct sbx_buf *body)
{
    (void)body;
    _cleanup_error_ struct sbx_error *e = NULL;
    sbx_error_set(&e, SBX_UNIMPLEMENTED, 0, "%s is not implemented", req->path);
    sbx_connect_error(req, e);
}

void
sbx_agent_process_handle(struct sbx_http_req *req, const char *method)
{
    bool post = strcmp(req->method, "POST") == 0;
    if (post && strcmp(method, "StreamInput") == 0) {
        stream_input(req);
        return;
    }
    for (size_t i = 0; post && i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(methods[i].name, method) == 0) {
            sbx_connect_read_request(req, methods[i].cb);
            return;
        }
    }
    /* Read (and drop) the body before answering, so the client is not cut off mid-send. */
    sbx_http_req_read_body(req, SBX_CONNECT_MAX_MESSAGE + 5, on_unimplemented_body);
}

int
sbx_agent_process_init(uv_loop_t *loop, const struct sbx_agent_config *cfg, struct sbx_error **err)
{
    svc.loop = loop;
    svc.cfg = cfg;
    int r = uv_signal_init(loop, &svc.sigchld);
    if (r == 0)
        r = uv_signal_start(&svc.sigchld, on_sigchld, SIGCHLD);
    if (r < 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "SIGCHLD handler: %s", uv_strerror(r));
    /* Writing to the stdin of a command that already exited must not kill PID 1. */
    signal(SIGPIPE, SIG_IGN);
    /* Children that exited before the handler was installed. */
    on_sigchld(&svc.sigchld, SIGCHLD);
    return 0;
}
