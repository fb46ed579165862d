/* Jupyter kernels: launch, ZeroMQ channels on libuv, handshake, execute state machine. */
#include "jupyter/kernel.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/util.h"
#include "jupyter/msg.h"
#include "sandbox/sandbox.h" /* SBX_AGENT_RUNTIME_PATH */

/* ---- kernelspecs ---- */

#define CF        "{connection_file}"
#define PY_PATH   SBX_KERNEL_PREFIX "/python"
#define JS_KERNEL SBX_KERNEL_PREFIX "/javascript/kernel.js" /* src/jupyter/javascript */
#define JAVA_DIR  SBX_KERNEL_PREFIX "/java"                 /* scripts/setup.sh builds it */

struct spec {
    const char *lang;
    const char *const argv[10];
    const char *const env[6][2];
};

static const struct spec specs[] = {
    /* The sbx_e2b extension (installed next to e2b-charts) adds the e2b/chart and e2b/data
     * formatters the E2B SDKs read; run as a module it is ipykernel_launcher without the
     * debugger's imports. */
    {"python",
     {"/usr/bin/python3", "-m", "sbx_e2b", "-f", CF, "--IPKernelApp.extra_extensions=sbx_e2b",
      NULL},
     {{"PYTHONPATH", PY_PATH}, {"PYDEVD_DISABLE_FILE_VALIDATION", "1"}, {NULL, NULL}}},
    {"bash",
     {"/usr/bin/python3", "-m", "bash_kernel", "-f", CF, NULL},
     {{"PYTHONPATH", PY_PATH}, {"PYDEVD_DISABLE_FILE_VALIDATION", "1"}, {NULL, NULL}}},
    /* One kernel for both, as E2B has: TypeScript's types are stripped, never checked. */
    {"javascript", {"/usr/bin/node", JS_KERNEL, CF, NULL}, {{NULL, NULL}}},
    {"typescript", {"/usr/bin/node", JS_KERNEL, CF, NULL}, {{NULL, NULL}}},
    {"r", {"/usr/bin/R", "--slave", "-e", "IRkernel::main()", "--args", CF, NULL}, {{NULL, NULL}}},
    /* JShell in one small JVM: serial GC and C1 only (start-up, footprint), classes mapped
     * from the archive setup recorded. The JVM cannot see the sandbox's memory limit (no
     * /sys/fs/cgroup inside) and would size its heap from the host's memory: cap it at half
     * the default limit, so that a big allocation is an OutOfMemoryError, not a dead kernel. */
    {"java",
     {"/usr/bin/java", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
      "-XX:SharedArchiveFile=" JAVA_DIR "/kernel.jsa", "-Xmx256m", "-jar",
      JAVA_DIR "/sbx-java-kernel.jar", CF, NULL},
     {{NULL, NULL}}},
};

static const struct spec *
find_spec(const char *lang)
{
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++)
        if (strcmp(specs[i].lang, lang) == 0)
            return &specs[i];
    return NULL;
}

bool
sbx_kernel_is_known(const char *language)
{
    return find_spec(language) != NULL;
}

bool
sbx_kernel_is_available(const char *language)
{
    const struct spec *s = find_spec(language);
    if (s == NULL || access(s->argv[0], X_OK) != 0)
        return false;
    /* The interpreter alone is not enough: the script or module must be there too. */
    if (strcmp(language, "javascript") == 0 || strcmp(language, "typescript") == 0)
        return access(JS_KERNEL, R_OK) == 0;
    if (strcmp(language, "python") == 0)
        return access(PY_PATH "/sbx_e2b.py", R_OK) == 0; /* its launcher */
    if (strcmp(language, "bash") == 0)
        return access(PY_PATH "/bash_kernel", R_OK) == 0;
    if (strcmp(language, "java") == 0)
        return access(JAVA_DIR "/sbx-java-kernel.jar", R_OK) == 0;
    if (strcmp(language, "r") == 0)
        return access("/usr/lib/R/site-library/IRkernel", R_OK) == 0;
    return true;
}

/* ---- objects ---- */

enum { CH_SHELL, CH_IOPUB, CH_CONTROL, N_CH };
enum { P_SHELL, P_IOPUB, P_STDIN, P_CONTROL, P_HB, N_PORTS };

struct sbx_kernel_exec {
    struct sbx_kernel *k;
    char msg_id[33];
    json_t *code;
    bool silent;
    bool sent;
    bool got_reply;
    bool got_idle;
    bool errored;
    bool counted;
    json_t *reply_error; /* an error execute_reply, used only if iopub sent no error */
    const struct sbx_kernel_exec_ops *ops;
    void *ud;
    struct sbx_kernel_exec *next;
};

struct chan {
    struct sbx_kernel *k;
    void *sock;
    uv_poll_t poll;
    bool poll_open;
};

struct sbx_kernel {
    int refs;
    uv_loop_t *loop;
    char lang[16];
    char key[2 * SBX_JUPYTER_KEY_BYTES + 1];
    char session[33];
    char dir[128];
    char conn_path[160];
    int ports[N_PORTS];
    struct chan ch[N_CH];
    uv_timer_t timer; /* handshake retries and the start deadline */
    uv_timer_t kick;  /* re-drains sockets after sends and resumes (ZMQ_FD is edge-like) */
    uv_pipe_t out;    /* the kernel's stdout+stderr */
    bool timers_open, out_open;
    pid_t pid;
    uint64_t started_ms;
    int info_soon_left; /* early kernel_info resends left (see on_shell_msg) */
    bool ready, dead, stopped, exited, paused, got_iopub;
    struct sbx_buf tail; /* last bytes of the kernel's stderr */
    struct sbx_kernel_exec *execs, **execs_tail;
    const struct sbx_kernel_events *events;
    void *events_ud;
};

/* libzmq's functions, from the agent's first kernel on (SBX_ZMQ_SONAME in kernel.h): linked in,
 * it and its C++, Kerberos and transport libraries cost every sandbox's agent ~2.5 ms of
 * loading and relocation at start, and most sandboxes never start a kernel. The agent's
 * loader finds it in the agent runtime (its --library-path), never in the template's root. */
#define ZMQ_FUNCS(X)                                                                               \
    X(void *, zmq_ctx_new, (void))                                                                 \
    X(int, zmq_ctx_set, (void *, int, int))                                                        \
    X(void *, zmq_socket, (void *, int))                                                           \
    X(int, zmq_close, (void *))                                                                    \
    X(int, zmq_setsockopt, (void *, int, const void *, size_t))                                    \
    X(int, zmq_getsockopt, (void *, int, void *, size_t *))                                        \
    X(int, zmq_connect, (void *, const char *))                                                    \
    X(int, zmq_send, (void *, const void *, size_t, int))                                          \
    X(int, zmq_msg_init, (zmq_msg_t *))                                                            \
    X(int, zmq_msg_recv, (zmq_msg_t *, void *, int))                                               \
    X(int, zmq_msg_close, (zmq_msg_t *))                                                           \
    X(int, zmq_msg_more, (const zmq_msg_t *))                                                      \
    X(void *, zmq_msg_data, (zmq_msg_t *))                                                         \
    X(size_t, zmq_msg_size, (const zmq_msg_t *))

#define ZMQ_FIELD(ret, name, args) ret(*name) args;
static struct {
    ZMQ_FUNCS(ZMQ_FIELD)
} zmq;
#undef ZMQ_FIELD

static void *zctx;

/* Loads libzmq and makes the agent's one ZeroMQ context, once. */
static int
zmq_load(struct sbx_error **err)
{
    if (zctx != NULL)
        return 0;
    /* From the agent runtime in a sandbox (absent if the host has no libzmq); its libraries
     * come from there too (the loader's --library-path, searched first). */
    void *lib = sbx_dlopen_in(SBX_AGENT_RUNTIME_PATH, SBX_ZMQ_SONAME);
    if (lib == NULL)
        return sbx_error_set(err, SBX_UNAVAILABLE, 0, "load %s: %s", SBX_ZMQ_SONAME, dlerror());
#define ZMQ_SYM(ret, name, args)                                                                   \
    if ((*(void **)&zmq.name = dlsym(lib, #name)) == NULL)                                         \
        return sbx_error_set(err, SBX_UNAVAILABLE, 0, "%s has no %s", SBX_ZMQ_SONAME, #name);
    ZMQ_FUNCS(ZMQ_SYM)
#undef ZMQ_SYM
    zctx = zmq.zmq_ctx_new();
    if (zctx == NULL)
        abort();
    /* The agent is PID 1 and forks user processes; libzmq's threads must not see those
     * children's fds: every socket it opens is close-on-exec anyway (ZMQ_BLOCKY off so
     * that closing a socket never blocks the event loop on unsent messages). */
    zmq.zmq_ctx_set(zctx, ZMQ_BLOCKY, 0);
    return 0;
}

static void
kernel_unref(struct sbx_kernel *k)
{
    if (--k->refs > 0)
        return;
    sbx_buf_fini(&k->tail);
    free(k);
}

bool
sbx_kernel_is_ready(const struct sbx_kernel *k)
{
    return k->ready && !k->dead;
}

pid_t
sbx_kernel_pid(const struct sbx_kernel *k)
{
    return k->pid;
}

/* ---- run directory and connection file ---- */

static int
pick_ports(int ports[N_PORTS], struct sbx_error **err)
{
    /* Bind all five at once so they differ; the kernel binds them right after we close. The
     * race with other processes exists only inside the sandbox's own network namespace. */
    int fds[N_PORTS];
    int n = 0, rc = 0;
    for (; n < N_PORTS; n++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof(a);
        fds[n] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[n] < 0 || bind(fds[n], (struct sockaddr *)&a, sizeof(a)) < 0 ||
            getsockname(fds[n], (struct sockaddr *)&a, &al) < 0) {
            rc = sbx_error_sys(err, errno, "pick a loopback port");
            if (fds[n] >= 0)
                close(fds[n]);
            break;
        }
        ports[n] = ntohs(a.sin_port);
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    return rc;
}

static int
make_run_dir(struct sbx_kernel *k, uid_t uid, gid_t gid, struct sbx_error **err)
{
    if (mkdir(SBX_KERNEL_RUN_DIR, 0755) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", SBX_KERNEL_RUN_DIR);
    struct stat st;
    /* The base must be a real root-owned directory, never a planted symlink. */
    if (lstat(SBX_KERNEL_RUN_DIR, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
        return sbx_error_set(err, SBX_INTERNAL, 0, "%s is not a directory owned by us",
                             SBX_KERNEL_RUN_DIR);
    char id[17];
    if (sbx_random_hex(id, 8) < 0)
        return sbx_error_sys(err, errno, "getrandom");
    snprintf(k->dir, sizeof(k->dir), "%s/%s", SBX_KERNEL_RUN_DIR, id);
    if (mkdir(k->dir, 0700) < 0)
        return sbx_error_sys(err, errno, "mkdir %s", k->dir);
    snprintf(k->conn_path, sizeof(k->conn_path), "%s/connection.json", k->dir);
    json_t *c =
        json_pack("{s:i,s:i,s:i,s:i,s:i,s:s,s:s,s:s,s:s,s:s}", "shell_port", k->ports[P_SHELL],
                  "iopub_port", k->ports[P_IOPUB], "stdin_port", k->ports[P_STDIN], "control_port",
                  k->ports[P_CONTROL], "hb_port", k->ports[P_HB], "ip", "127.0.0.1", "key", k->key,
                  "transport", "tcp", "signature_scheme", "hmac-sha256", "kernel_name", k->lang);
    _cleanup_free_ char *text = json_dumps(c, JSON_INDENT(1));
    json_decref(c);
    /* The file holds the HMAC key: created exclusively, readable by the kernel's user only.
     * The directory is handed to the user only after the file is complete. */
    _cleanup_close_ int fd =
        open(k->conn_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return sbx_error_sys(err, errno, "create %s", k->conn_path);
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len)
        return sbx_error_sys(err, errno, "write %s", k->conn_path);
    if (fchown(fd, uid, gid) < 0 || chown(k->dir, uid, gid) < 0)
        return sbx_error_sys(err, errno, "chown %s", k->dir);
    return 0;
}

static void
remove_run_dir(struct sbx_kernel *k)
{
    if (k->dir[0] == '\0')
        return;
    /* unlink never follows a symlink the kernel's user may have put there. */
    unlink(k->conn_path);
    rmdir(k->dir);
    k->dir[0] = '\0';
}

/* ---- sending ---- */

static void kick(struct sbx_kernel *k);

static int
send_msg(struct sbx_kernel *k, int ch, const char *type, json_t *content, char id_out[33])
{
    struct sbx_jupyter_wire w;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_jupyter_msg_encode(k->key, strlen(k->key), k->session, type, content, &w, id_out,
                               &err) < 0)
        return -1;
    int rc = 0;
    for (int i = 0; i < SBX_JUPYTER_WIRE_FRAMES && rc == 0; i++) {
        int more = i + 1 < SBX_JUPYTER_WIRE_FRAMES ? ZMQ_SNDMORE : 0;
        /* DEALER queues while the kernel is not connected yet; never blocks the loop. */
        if (zmq.zmq_send(k->ch[ch].sock, w.frames[i], w.lens[i], more | ZMQ_DONTWAIT) < 0)
            rc = -1;
    }
    sbx_jupyter_wire_fini(&w);
    kick(k);
    return rc;
}

static void
send_exec(struct sbx_kernel_exec *e)
{
    /* stop_on_error is off: we never queue several requests, and ipykernel would otherwise
     * abort a request that arrives just after a failed one (its abort window is cleared by
     * a later loop callback). */
    json_t *content = json_pack("{s:O,s:b,s:b,s:{},s:b,s:b}", "code", e->code, "silent", e->silent,
                                "store_history", !e->silent, "user_expressions", "allow_stdin", 0,
                                "stop_on_error", 0);
    e->sent = true;
    if (send_msg(e->k, CH_SHELL, "execute_request", content, e->msg_id) < 0)
        e->msg_id[0] = '\0'; /* never matches: the kernel's death will end it */
    json_decref(content);
}

/* Sends the executions not sent yet, in order. */
static void
flush_execs(struct sbx_kernel *k)
{
    if (!k->ready || k->dead)
        return;
    for (struct sbx_kernel_exec *e = k->execs; e; e = e->next)
        if (!e->sent)
            send_exec(e);
}

static void
send_kernel_info(struct sbx_kernel *k)
{
    json_t *content = json_object();
    char id[33];
    send_msg(k, CH_SHELL, "kernel_info_request", content, id);
    json_decref(content);
}

/* ---- executions ---- */

static void
exec_unlink(struct sbx_kernel *k, struct sbx_kernel_exec *e)
{
    for (struct sbx_kernel_exec **p = &k->execs; *p; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    k->execs_tail = &k->execs;
    while (*k->execs_tail)
        k->execs_tail = &(*k->execs_tail)->next;
}

static void
exec_end(struct sbx_kernel_exec *e, enum sbx_kernel_exec_end end, const char *why)
{
    struct sbx_kernel *k = e->k;
    exec_unlink(k, e);
    if (e->ops && e->ops->on_done)
        e->ops->on_done(e->ud, end, why);
    json_decref(e->code);
    json_decref(e->reply_error);
    free(e);
    kernel_unref(k);
}

static struct sbx_kernel_exec *
find_exec(struct sbx_kernel *k, const char *msg_id)
{
    if (msg_id == NULL)
        return NULL;
    for (struct sbx_kernel_exec *e = k->execs; e; e = e->next)
        if (e->sent && strcmp(e->msg_id, msg_id) == 0)
            return e;
    return NULL;
}

static void emit_error(struct sbx_kernel_exec *e, json_t *content);

static void
maybe_finish(struct sbx_kernel_exec *e)
{
    if (!(e->got_reply && e->got_idle))
        return;
    /* The iopub error (the one the kernel formatted for users) precedes idle, so by now it
     * has arrived if there is one; the reply's error only stands in when it did not. */
    if (e->reply_error)
        emit_error(e, e->reply_error);
    exec_end(e, SBX_KERNEL_EXEC_OK, NULL);
}

static void
emit_count(struct sbx_kernel_exec *e, json_t *count)
{
    if (e->counted || e->silent || !json_is_integer(count))
        return;
    e->counted = true;
    if (e->ops && e->ops->on_count)
        e->ops->on_count(e->ud, json_integer_value(count));
}

static char *
join_traceback(json_t *tb)
{
    struct sbx_buf b = {0};
    size_t i;
    json_t *line;
    json_array_foreach (json_is_array(tb) ? tb : NULL, i, line) {
        if (!json_is_string(line))
            continue;
        if (b.len > 0)
            sbx_buf_append(&b, "\n", 1, SIZE_MAX);
        sbx_buf_append(&b, json_string_value(line), json_string_length(line), SIZE_MAX);
    }
    sbx_buf_append(&b, "", 1, SIZE_MAX);
    return b.data;
}

static const char *
str_or(json_t *obj, const char *key, const char *dflt)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : dflt;
}

static void
emit_error(struct sbx_kernel_exec *e, json_t *content)
{
    if (e->errored)
        return;
    e->errored = true;
    if (e->silent || e->ops == NULL || e->ops->on_error == NULL)
        return;
    _cleanup_free_ char *tb = join_traceback(json_object_get(content, "traceback"));
    e->ops->on_error(e->ud, str_or(content, "ename", ""), str_or(content, "evalue", ""), tb);
}

static void on_timer(uv_timer_t *t);

static void
on_shell_msg(struct sbx_kernel *k, struct sbx_jupyter_msg *m)
{
    if (strcmp(m->msg_type, "kernel_info_reply") == 0 && !k->ready && k->timers_open &&
        k->info_soon_left > 0) {
        /* The kernel is up, but its status messages for the requests queued while it was
         * starting may have gone out before our iopub subscription reached it. Ask again
         * soon rather than at the next retry period (replies to queued requests arrive
         * together; they all restart the same timer). Bounded, for a kernel that answers
         * on shell but never publishes. */
        k->info_soon_left--;
        uv_timer_start(&k->timer, on_timer, SBX_KERNEL_INFO_SOON_MS, SBX_KERNEL_INFO_RETRY_MS);
        return;
    }
    if (strcmp(m->msg_type, "execute_reply") != 0)
        return; /* readiness is decided by iopub */
    struct sbx_kernel_exec *e = find_exec(k, m->parent_id);
    if (e == NULL)
        return;
    const char *status = str_or(m->content, "status", "ok");
    emit_count(e, json_object_get(m->content, "execution_count"));
    if (strcmp(status, "error") == 0) {
        json_decref(e->reply_error);
        e->reply_error = json_incref(m->content);
    } else if (strcmp(status, "aborted") == 0 || strcmp(status, "abort") == 0) {
        json_t *c = json_pack("{s:s,s:s,s:[]}", "ename", "ExecutionAborted", "evalue",
                              "Execution was aborted", "traceback");
        emit_error(e, c);
        json_decref(c);
    }
    e->got_reply = true;
    maybe_finish(e);
}

static void become_ready(struct sbx_kernel *k);

static void
on_iopub_msg(struct sbx_kernel *k, struct sbx_jupyter_msg *m)
{
    if (!k->got_iopub) {
        k->got_iopub = true;
        become_ready(k);
    }
    struct sbx_kernel_exec *e = find_exec(k, m->parent_id);
    if (e == NULL)
        return;
    const char *t = m->msg_type;
    const struct sbx_kernel_exec_ops *ops = e->silent ? NULL : e->ops;
    if (strcmp(t, "status") == 0) {
        if (strcmp(str_or(m->content, "execution_state", ""), "idle") == 0) {
            e->got_idle = true;
            maybe_finish(e);
        }
    } else if (strcmp(t, "execute_input") == 0) {
        emit_count(e, json_object_get(m->content, "execution_count"));
    } else if (strcmp(t, "stream") == 0) {
        json_t *text = json_object_get(m->content, "text");
        if (ops && ops->on_stream && json_is_string(text) && json_string_length(text) > 0)
            ops->on_stream(e->ud, strcmp(str_or(m->content, "name", ""), "stderr") == 0, text,
                           m->date);
    } else if (strcmp(t, "display_data") == 0 || strcmp(t, "execute_result") == 0) {
        json_t *data = json_object_get(m->content, "data");
        if (ops && ops->on_result && json_is_object(data))
            ops->on_result(e->ud, t[1] == 'x', data);
        if (t[1] == 'x')
            emit_count(e, json_object_get(m->content, "execution_count"));
    } else if (strcmp(t, "error") == 0) {
        emit_error(e, m->content);
    }
}

/* ---- receiving ---- */

#define MAX_MSG_FRAMES SBX_JUPYTER_MAX_FRAMES

/* Reads one multipart message; returns 1 if one was read, 0 if none is pending, -1 on error. */
static int
recv_one(struct sbx_kernel *k, int ch)
{
    zmq_msg_t parts[MAX_MSG_FRAMES];
    size_t n = 0;
    int more = 1;
    int rc = 1;
    while (more) {
        zmq_msg_t part;
        zmq.zmq_msg_init(&part);
        if (zmq.zmq_msg_recv(&part, k->ch[ch].sock, ZMQ_DONTWAIT) < 0) {
            zmq.zmq_msg_close(&part);
            rc = errno == EAGAIN && n == 0 ? 0 : -1;
            break;
        }
        more = zmq.zmq_msg_more(&part);
        if (n < MAX_MSG_FRAMES)
            parts[n++] = part;
        else
            zmq.zmq_msg_close(&part); /* an oversized message fails to decode below */
    }
    if (rc == 1) {
        struct sbx_jupyter_frame frames[MAX_MSG_FRAMES];
        for (size_t i = 0; i < n; i++)
            frames[i] = (struct sbx_jupyter_frame){zmq.zmq_msg_data(&parts[i]),
                                                   zmq.zmq_msg_size(&parts[i])};
        struct sbx_jupyter_msg m;
        _cleanup_error_ struct sbx_error *err = NULL;
        /* Messages that fail the signature check are dropped silently: only the holder of
         * the key (the kernel) may speak on these sockets. */
        if (sbx_jupyter_msg_decode(k->key, strlen(k->key), frames, n, &m, &err) == 0) {
            k->refs++;
            if (ch == CH_IOPUB)
                on_iopub_msg(k, &m);
            else if (ch == CH_SHELL)
                on_shell_msg(k, &m);
            sbx_jupyter_msg_fini(&m);
            kernel_unref(k);
        }
    }
    for (size_t i = 0; i < n; i++)
        zmq.zmq_msg_close(&parts[i]);
    return rc;
}

static void
drain(struct sbx_kernel *k, int ch)
{
    while (!k->dead && k->ch[ch].sock != NULL) {
        if (ch == CH_IOPUB && k->paused)
            return;
        int events = 0;
        size_t sz = sizeof(events);
        if (zmq.zmq_getsockopt(k->ch[ch].sock, ZMQ_EVENTS, &events, &sz) < 0 ||
            !(events & ZMQ_POLLIN))
            return;
        if (recv_one(k, ch) <= 0)
            return;
    }
}

static void
drain_all(struct sbx_kernel *k)
{
    k->refs++;
    drain(k, CH_SHELL);
    drain(k, CH_IOPUB);
    drain(k, CH_CONTROL);
    kernel_unref(k);
}

static void
on_poll(uv_poll_t *h, int status, int events)
{
    struct chan *c = h->data;
    drain_all(c->k);
}

static void
on_kick(uv_timer_t *t)
{
    drain_all(t->data);
}

static void
kick(struct sbx_kernel *k)
{
    if (k->timers_open && !k->dead)
        uv_timer_start(&k->kick, on_kick, 0, 0);
}

/* ---- lifecycle ---- */

static void
on_handle_closed(uv_handle_t *h)
{
    kernel_unref(h->data);
}

static void
on_chan_closed(uv_handle_t *h)
{
    struct chan *c = h->data;
    /* The poll no longer watches ZMQ's fd: now the socket may go. */
    zmq.zmq_close(c->sock);
    c->sock = NULL;
    kernel_unref(c->k);
}

static void
close_io(struct sbx_kernel *k)
{
    for (int i = 0; i < N_CH; i++) {
        struct chan *c = &k->ch[i];
        if (c->poll_open) {
            c->poll_open = false;
            uv_poll_stop(&c->poll);
            uv_close((uv_handle_t *)&c->poll, on_chan_closed);
        } else if (c->sock) {
            zmq.zmq_close(c->sock);
            c->sock = NULL;
        }
    }
    if (k->timers_open) {
        k->timers_open = false;
        uv_close((uv_handle_t *)&k->timer, on_handle_closed);
        uv_close((uv_handle_t *)&k->kick, on_handle_closed);
    }
    if (k->out_open) {
        k->out_open = false;
        uv_close((uv_handle_t *)&k->out, on_handle_closed);
    }
}

static void
fail(struct sbx_kernel *k, const char *why)
{
    if (k->dead)
        return;
    k->dead = true;
    k->refs++;
    close_io(k);
    remove_run_dir(k);
    while (k->execs)
        exec_end(k->execs, SBX_KERNEL_EXEC_DIED, why);
    if (!k->stopped && k->events && k->events->on_dead)
        k->events->on_dead(k, why, k->events_ud);
    kernel_unref(k);
}

static void
kill_group(struct sbx_kernel *k, int sig)
{
    if (k->pid <= 0 || k->exited)
        return;
    /* The kernel leads its own session and process group (the spawn callback's setsid), so
     * this also reaches what it started in its group, as Jupyter's own signal_kernel does. */
    if (kill(-k->pid, sig) < 0)
        kill(k->pid, sig);
}

static void
become_ready(struct sbx_kernel *k)
{
    if (k->ready || k->dead)
        return;
    k->ready = true;
    uv_timer_stop(&k->timer);
    flush_execs(k);
    if (k->events && k->events->on_ready)
        k->events->on_ready(k, k->events_ud);
}

static void
on_timer(uv_timer_t *t)
{
    struct sbx_kernel *k = t->data;
    if (k->dead || k->ready)
        return;
    if (sbx_now_ms() - k->started_ms > SBX_KERNEL_START_TIMEOUT_MS) {
        char why[SBX_KERNEL_STDERR_TAIL + 128];
        snprintf(why, sizeof(why), "the %s kernel did not start within %d s%s%.*s", k->lang,
                 SBX_KERNEL_START_TIMEOUT_MS / 1000, k->tail.len ? ": " : "", (int)k->tail.len,
                 k->tail.data ? k->tail.data : "");
        kill_group(k, SIGKILL);
        fail(k, why);
        return;
    }
    /* Until an iopub message arrives our subscription may not be in place yet; each
     * kernel_info_request makes the kernel publish a status message. */
    send_kernel_info(k);
}

static void
on_out_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    static char b[4096];
    *buf = uv_buf_init(b, sizeof(b));
}

static void
on_out_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct sbx_kernel *k = s->data;
    if (n <= 0) {
        if (n < 0 && k->out_open) {
            k->out_open = false;
            uv_close((uv_handle_t *)&k->out, on_handle_closed);
        }
        return;
    }
    /* Keep only the tail: enough to explain a failed start. */
    if ((size_t)n >= SBX_KERNEL_STDERR_TAIL) {
        k->tail.len = 0;
        sbx_buf_append(&k->tail, buf->base + n - SBX_KERNEL_STDERR_TAIL, SBX_KERNEL_STDERR_TAIL,
                       SBX_KERNEL_STDERR_TAIL);
        return;
    }
    if (k->tail.len + (size_t)n > SBX_KERNEL_STDERR_TAIL)
        sbx_buf_consume(&k->tail, k->tail.len + (size_t)n - SBX_KERNEL_STDERR_TAIL);
    sbx_buf_append(&k->tail, buf->base, (size_t)n, SBX_KERNEL_STDERR_TAIL);
}

static int
open_channel(struct sbx_kernel *k, int ch, int type, int port, struct sbx_error **err)
{
    struct chan *c = &k->ch[ch];
    c->k = k;
    c->sock = zmq.zmq_socket(zctx, type);
    if (c->sock == NULL)
        return sbx_error_sys(err, errno, "zmq_socket");
    int zero = 0, hwm = SBX_KERNEL_IOPUB_HWM, ivl = SBX_KERNEL_RECONNECT_MS;
    int64_t maxsz = SBX_KERNEL_MAX_FRAME;
    zmq.zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq.zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxsz, sizeof(maxsz));
    /* We connect before the kernel listens: retry every few ms instead of ZeroMQ's 100 ms,
     * which would otherwise be added to the start of every kernel. */
    zmq.zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof(ivl));
    if (type == ZMQ_SUB) {
        zmq.zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
        zmq.zmq_setsockopt(c->sock, ZMQ_SUBSCRIBE, "", 0);
    } else {
        /* The identity routes replies back to us on the kernel's ROUTER. */
        char ident[40];
        snprintf(ident, sizeof(ident), "%s-%d", k->session, ch);
        zmq.zmq_setsockopt(c->sock, ZMQ_ROUTING_ID, ident, strlen(ident));
    }
    char ep[64];
    snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", port);
    if (zmq.zmq_connect(c->sock, ep) < 0)
        return sbx_error_sys(err, errno, "zmq_connect %s", ep);
    int fd;
    size_t fdlen = sizeof(fd);
    if (zmq.zmq_getsockopt(c->sock, ZMQ_FD, &fd, &fdlen) < 0)
        return sbx_error_sys(err, errno, "ZMQ_FD");
    if (uv_poll_init(k->loop, &c->poll, fd) < 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "uv_poll_init failed");
    c->poll.data = c;
    c->poll_open = true;
    k->refs++;
    uv_poll_start(&c->poll, UV_READABLE, on_poll);
    return 0;
}

struct sbx_kernel *
sbx_kernel_start(uv_loop_t *loop, const struct sbx_kernel_launch *l, struct sbx_error **err)
{
    const struct spec *s = find_spec(l->language);
    if (s == NULL) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "no kernel for language '%s'", l->language);
        return NULL;
    }
    if (!sbx_kernel_is_available(l->language)) {
        sbx_error_set(err, SBX_UNAVAILABLE, 0, "the %s kernel is not installed", l->language);
        return NULL;
    }
    if (zmq_load(err) < 0)
        return NULL;
    struct sbx_kernel *k = calloc(1, sizeof(*k));
    if (k == NULL)
        abort();
    k->refs = 1;
    k->loop = loop;
    k->execs_tail = &k->execs;
    k->events = l->events;
    k->events_ud = l->events_ud;
    k->started_ms = sbx_now_ms();
    snprintf(k->lang, sizeof(k->lang), "%s", l->language);
    k->info_soon_left = SBX_KERNEL_INFO_SOON_MAX;
    if (sbx_random_hex(k->key, SBX_JUPYTER_KEY_BYTES) < 0 || sbx_random_hex(k->session, 16) < 0) {
        sbx_error_sys(err, errno, "getrandom");
        free(k);
        return NULL;
    }
    int pipefd[2] = {-1, -1};
    if (pick_ports(k->ports, err) < 0 || make_run_dir(k, l->uid, l->gid, err) < 0)
        goto fail;
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        sbx_error_sys(err, errno, "pipe2");
        goto fail;
    }

    char *argv[sizeof(s->argv) / sizeof(s->argv[0])] = {NULL};
    for (size_t i = 0; s->argv[i]; i++)
        argv[i] = (char *)(strcmp(s->argv[i], CF) == 0 ? k->conn_path : s->argv[i]);
    json_t *env = json_object();
    for (size_t i = 0; s->env[i][0]; i++)
        json_object_set_new(env, s->env[i][0], json_string(s->env[i][1]));
    struct sbx_kernel_spawn_req req = {k, argv, l->cwd, env, pipefd[1]};
    k->pid = l->spawn(l->spawn_ud, &req, err);
    json_decref(env);
    close(pipefd[1]);
    pipefd[1] = -1;
    if (k->pid <= 0) {
        k->pid = 0;
        goto fail;
    }
    k->refs++; /* held until sbx_kernel_exited */

    uv_timer_init(loop, &k->timer);
    uv_timer_init(loop, &k->kick);
    k->timer.data = k->kick.data = k;
    k->timers_open = true;
    k->refs += 2;
    uv_pipe_init(loop, &k->out, 0);
    k->out.data = k;
    if (uv_pipe_open(&k->out, pipefd[0]) == 0) {
        pipefd[0] = -1;
        k->out_open = true;
        k->refs++;
        uv_read_start((uv_stream_t *)&k->out, on_out_alloc, on_out_read);
    } else {
        k->refs++;
        uv_close((uv_handle_t *)&k->out, on_handle_closed);
    }
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (open_channel(k, CH_SHELL, ZMQ_DEALER, k->ports[P_SHELL], err) < 0 ||
        open_channel(k, CH_IOPUB, ZMQ_SUB, k->ports[P_IOPUB], err) < 0 ||
        open_channel(k, CH_CONTROL, ZMQ_DEALER, k->ports[P_CONTROL], err) < 0) {
        k->stopped = true;
        kill_group(k, SIGKILL);
        fail(k, "channel setup failed");
        kernel_unref(k);
        return NULL;
    }
    send_kernel_info(k);
    uv_timer_start(&k->timer, on_timer, SBX_KERNEL_INFO_RETRY_MS, SBX_KERNEL_INFO_RETRY_MS);
    return k;

fail:
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    remove_run_dir(k);
    sbx_buf_fini(&k->tail);
    free(k);
    return NULL;
}

void
sbx_kernel_exited(struct sbx_kernel *k, int wstatus, const char *killed_by)
{
    k->exited = true;
    char why[SBX_KERNEL_STDERR_TAIL + 160];
    int off;
    if (killed_by)
        off = snprintf(why, sizeof(why), "the %s kernel was killed: %s", k->lang, killed_by);
    else if (WIFSIGNALED(wstatus))
        off = snprintf(why, sizeof(why), "the %s kernel was killed by signal %d", k->lang,
                       WTERMSIG(wstatus));
    else
        off = snprintf(why, sizeof(why), "the %s kernel exited with status %d", k->lang,
                       WEXITSTATUS(wstatus));
    if (!k->ready && k->tail.len > 0 && off > 0 && (size_t)off < sizeof(why))
        snprintf(why + off, sizeof(why) - (size_t)off, ": %.*s", (int)k->tail.len, k->tail.data);
    fail(k, why);
    kernel_unref(k);
}

void
sbx_kernel_stop(struct sbx_kernel *k)
{
    k->stopped = true;
    kill_group(k, SIGKILL);
    fail(k, "the context was restarted or removed");
    kernel_unref(k);
}

void
sbx_kernel_interrupt(struct sbx_kernel *k)
{
    if (!k->dead)
        kill_group(k, SIGINT);
}

void
sbx_kernel_pause_output(struct sbx_kernel *k, bool paused)
{
    if (k->paused == paused)
        return;
    k->paused = paused;
    if (!paused)
        kick(k); /* messages already queued raise no new edge on ZMQ_FD */
}

struct sbx_kernel_exec *
sbx_kernel_execute(struct sbx_kernel *k, json_t *code, bool silent,
                   const struct sbx_kernel_exec_ops *ops, void *ud)
{
    if (k->dead)
        return NULL;
    struct sbx_kernel_exec *e = calloc(1, sizeof(*e));
    if (e == NULL)
        abort();
    e->k = k;
    e->code = json_incref(code);
    e->silent = silent;
    e->ops = ops;
    e->ud = ud;
    k->refs++;
    *k->execs_tail = e;
    k->execs_tail = &e->next;
    flush_execs(k);
    return e;
}

void
sbx_kernel_exec_detach(struct sbx_kernel_exec *e)
{
    if (e != NULL)
        e->ops = NULL;
}
