/* Code interpreter: contexts, the execution queue and the NDJSON stream of POST /execute
 * (spec §4). Kernels (src/jupyter/kernel.c) run as sandbox root (SBX_INTERP_KERNEL_USER);
 * this file turns their messages into the lines the E2B SDKs parse. */
#include "agent/interpreter.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/users.h"
#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "json/json.h"
#include "jupyter/kernel.h"

#define NDJSON_TYPE "application/x-ndjson"

struct run;
struct waiter;

struct ctx {
    unsigned env_generation; /* of the sandbox-wide env the kernel has (cfg->env_generation) */
    char id[37];
    char lang[16];
    char *cwd;
    bool is_default;
    bool removed;
    struct sbx_kernel *kernel; /* NULL until needed, and after it died */
    bool kernel_was_ready;
    struct run *runs; /* FIFO; the head is the one running */
    size_t n_runs;
    struct waiter *waiters; /* HTTP requests waiting for the kernel to be ready */
    int busy;               /* > 0 while a function below must not see it freed */
    struct ctx *next;
};

enum run_phase { RUN_QUEUED, RUN_MAIN, RUN_RESTORE };

struct run {
    struct ctx *ctx;
    struct sbx_http_req *req; /* NULL once the client went away or the response ended */
    json_t *code;
    json_t *env; /* per-run env_vars, NULL if none */
    enum run_phase phase;
    struct sbx_kernel_exec *exec;
    uv_timer_t timer; /* keepalive, then the interrupt grace period */
    bool interrupted;
    bool paused;
    struct run *next;
};

/* Who waits for a kernel to be ready: POST /contexts (answers the context) and restart. */
struct waiter {
    struct sbx_http_req *req;
    bool is_create;
    struct waiter *next;
};

static struct {
    bool initialized;
    uv_loop_t *loop;
    const struct sbx_agent_config *cfg;
    struct ctx *ctxs;
    size_t n_ctxs;
} svc;

/* ---- small helpers ---- */

static void
respond_text(struct sbx_http_req *req, int status, const char *msg)
{
    sbx_http_respond(req, status, "text/plain; charset=utf-8", msg, strlen(msg));
}

static void
respond_json(struct sbx_http_req *req, int status, json_t *v)
{
    _cleanup_free_ char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    sbx_http_respond(req, status, "application/json", s, strlen(s));
}

/* When a new context would pass SBX_INTERP_MAX_CONTEXTS: each holds a kernel, so without a
 * bound even a token holder could grow the agent's tables and processes without end. */
static void
respond_too_many_contexts(struct sbx_http_req *req)
{
    char msg[120];
    snprintf(msg, sizeof(msg), "too many contexts: a sandbox holds at most %d, remove one first",
             SBX_INTERP_MAX_CONTEXTS);
    respond_text(req, 429, msg);
}

static json_t *
ctx_json(const struct ctx *c)
{
    return json_pack("{s:s,s:s,s:s}", "id", c->id, "language", c->lang, "cwd", c->cwd);
}

/* Language as E2B normalises it: trimmed, lower-case, js/ts aliases, empty means python. */
static void
normalize_language(const char *in, char *out, size_t outlen)
{
    if (in == NULL)
        in = "";
    while (isspace((unsigned char)*in))
        in++;
    size_t n = strlen(in);
    while (n > 0 && isspace((unsigned char)in[n - 1]))
        n--;
    if (n >= outlen)
        n = outlen - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[n] = '\0';
    if (n == 0)
        snprintf(out, outlen, "python");
    else if (strcmp(out, "js") == 0)
        snprintf(out, outlen, "javascript");
    else if (strcmp(out, "ts") == 0)
        snprintf(out, outlen, "typescript");
}

static struct ctx *
find_ctx(const char *id)
{
    for (struct ctx *c = svc.ctxs; c; c = c->next)
        if (strcmp(c->id, id) == 0)
            return c;
    return NULL;
}

static struct ctx *
find_default(const char *lang)
{
    for (struct ctx *c = svc.ctxs; c; c = c->next)
        if (c->is_default && strcmp(c->lang, lang) == 0)
            return c;
    return NULL;
}

/* ---- kernels of contexts ---- */

static void on_kernel_ready(struct sbx_kernel *k, void *ud);
static void on_kernel_dead(struct sbx_kernel *k, const char *why, void *ud);
static void run_start_next(struct ctx *c);
static void run_fail_all(struct ctx *c, const char *name, const char *why);

static const struct sbx_kernel_events kernel_events = {on_kernel_ready, on_kernel_dead};

static void
on_kernel_process_exit(pid_t pid, int wstatus, const char *killed_by, void *ud)
{
    sbx_kernel_exited(ud, wstatus, killed_by);
}

static pid_t
spawn_kernel(void *ud, const struct sbx_kernel_spawn_req *r, struct sbx_error **err)
{
    struct sbx_agent_user u = {0};
    if (sbx_agent_user_lookup("/etc", SBX_INTERP_KERNEL_USER, &u, err) < 0)
        return -1;
    /* The kernel's own PYTHONPATH goes first; a sandbox-wide one is kept after it. */
    json_t *extra = json_deep_copy(r->extra_env);
    json_t *user_pp = json_object_get(svc.cfg->env_vars, "PYTHONPATH");
    json_t *our_pp = json_object_get(extra, "PYTHONPATH");
    if (json_is_string(user_pp) && json_is_string(our_pp)) {
        char *joined = NULL;
        if (asprintf(&joined, "%s:%s", json_string_value(our_pp), json_string_value(user_pp)) < 0)
            abort();
        json_object_set_new(extra, "PYTHONPATH", json_string(joined));
        free(joined);
    }
    /* Sandbox-wide env vars (create envVars) reach every context through the kernel's
     * environment; the kernel-specific ones are applied on top. */
    json_t *merged = json_deep_copy(svc.cfg->env_vars);
    json_object_update(merged, extra);
    json_decref(extra);
    char **envp = sbx_agent_env_build(&u, merged, NULL, false);
    json_decref(merged);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    struct sbx_agent_spawn s = {
        .path = r->argv[0],
        .argv = (char **)r->argv,
        .envp = envp,
        .cwd = r->cwd,
        .user = &u,
        .stdin_fd = devnull,
        .stdout_fd = r->out_fd,
        .stderr_fd = r->out_fd,
        .ctty_fd = -1,
    };
    pid_t pid =
        devnull < 0 ? sbx_error_sys(err, errno, "open /dev/null") : sbx_agent_spawn(&s, err);
    if (devnull >= 0)
        close(devnull);
    sbx_agent_strv_free(envp);
    sbx_agent_user_fini(&u);
    if (pid > 0)
        sbx_agent_watch_child(pid, on_kernel_process_exit, r->kernel);
    return pid;
}

static int
ctx_start_kernel(struct ctx *c, struct sbx_error **err)
{
    if (c->kernel != NULL)
        return 0;
    struct sbx_agent_user u = {0};
    if (sbx_agent_user_lookup("/etc", SBX_INTERP_KERNEL_USER, &u, err) < 0)
        return -1;
    struct sbx_kernel_launch l = {
        .language = c->lang,
        .cwd = c->cwd,
        .uid = u.uid,
        .gid = u.gid,
        .spawn = spawn_kernel,
        .events = &kernel_events,
        .events_ud = c,
    };
    c->kernel_was_ready = false;
    c->env_generation = svc.cfg->env_generation; /* spawn_kernel passes cfg->env_vars */
    c->kernel = sbx_kernel_start(svc.loop, &l, err);
    sbx_agent_user_fini(&u);
    if (c->kernel == NULL)
        return sbx_error_prefix(err, "start %s kernel", c->lang);
    sbx_log_info("kernel_start", "context=%s language=%s pid=%d", c->id, c->lang,
                 (int)sbx_kernel_pid(c->kernel));
    return 0;
}

static void
ctx_stop_kernel(struct ctx *c)
{
    struct sbx_kernel *k = c->kernel;
    if (k == NULL)
        return;
    c->kernel = NULL;
    sbx_kernel_stop(k); /* ends the executions in flight (DIED) */
}

static void
answer_waiters(struct ctx *c, const char *error)
{
    struct waiter *w = c->waiters;
    c->waiters = NULL;
    while (w) {
        struct waiter *next = w->next;
        if (w->req) {
            sbx_http_req_on_close(w->req, NULL);
            if (error) {
                respond_text(w->req, 500, error);
            } else if (w->is_create) {
                json_t *j = ctx_json(c);
                respond_json(w->req, 200, j);
                json_decref(j);
            } else {
                respond_json(w->req, 200, json_null());
            }
        }
        free(w);
        w = next;
    }
}

static json_t *env_snippet(const char *lang, json_t *set, json_t *unset);

/* Sets the sandbox-wide env vars in the kernel by code, silently and before any execution of
 * the client's: the kernel runs what it is sent in order. */
static void
ctx_send_env(struct ctx *c)
{
    c->env_generation = svc.cfg->env_generation;
    json_t *unset = json_array();
    json_t *code = env_snippet(c->lang, svc.cfg->env_vars, unset);
    json_decref(unset);
    if (code) {
        sbx_kernel_execute(c->kernel, code, true, NULL, NULL);
        json_decref(code);
    }
}

/* A kernel started before POST /init (a pooled sandbox's warm one) gets the sandbox-wide env
 * vars now. */
static void
ctx_refresh_env(struct ctx *c)
{
    if (c->kernel != NULL && c->kernel_was_ready && c->env_generation != svc.cfg->env_generation)
        ctx_send_env(c);
}

/* GET /sbx/ready waits for the default Python kernel of a pooled sandbox. */
struct warm_waiter {
    void (*cb)(void *ud, bool ok);
    void *ud;
    struct warm_waiter *next;
};
static struct warm_waiter *warm_waiters;

static struct ctx *
default_python(void)
{
    for (struct ctx *c = svc.ctxs; c; c = c->next)
        if (c->is_default && strcmp(c->lang, "python") == 0)
            return c;
    return NULL;
}

static void
answer_warm(bool ok)
{
    while (warm_waiters) {
        struct warm_waiter *w = warm_waiters;
        warm_waiters = w->next;
        w->cb(w->ud, ok);
        free(w);
    }
}

void
sbx_interp_when_warm(void (*cb)(void *ud, bool ok), void *ud)
{
    struct ctx *py = default_python();
    if (py == NULL || py->kernel == NULL || py->kernel_was_ready) {
        cb(ud, py == NULL || py->kernel_was_ready || !sbx_kernel_is_available("python"));
        return;
    }
    struct warm_waiter *w = calloc(1, sizeof(*w));
    if (w == NULL)
        abort();
    *w = (struct warm_waiter){cb, ud, warm_waiters};
    warm_waiters = w;
}

void
sbx_interp_env_changed(void)
{
    for (struct ctx *c = svc.ctxs; c; c = c->next)
        ctx_refresh_env(c);
}

static void
on_kernel_ready(struct sbx_kernel *k, void *ud)
{
    struct ctx *c = ud;
    c->kernel_was_ready = true;
    sbx_log_info("kernel_ready", "context=%s language=%s", c->id, c->lang);
    /* Every kernel has the sandbox-wide env vars in its environment. Java code reads them as
     * system properties too, as on E2B, whose only form for Java they are. */
    if (strcmp(c->lang, "java") == 0)
        ctx_send_env(c);
    else
        ctx_refresh_env(c);
    if (c == default_python())
        answer_warm(true);
    answer_waiters(c, NULL);
    run_start_next(c);
}

static void ctx_free(struct ctx *c);

static void
on_kernel_dead(struct sbx_kernel *k, const char *why, void *ud)
{
    struct ctx *c = ud;
    if (c->kernel != k)
        return;
    sbx_log_warn("kernel_dead", "context=%s language=%s reason=\"%s\"", c->id, c->lang, why);
    bool was_ready = c->kernel_was_ready;
    c->kernel = NULL;
    sbx_kernel_stop(k); /* drops our reference; the process is gone or being killed */
    if (c == default_python())
        answer_warm(false);
    answer_waiters(c, why);
    if (!was_ready) {
        /* It never came up: the queued runs would only fail the same way again. */
        run_fail_all(c, "KernelStartError", why);
        return;
    }
    /* Recover: the next queued run (if any) gets a fresh kernel. */
    run_start_next(c);
}

static struct ctx *
ctx_new(const char *lang, const char *cwd, bool is_default)
{
    if (svc.n_ctxs >= SBX_INTERP_MAX_CONTEXTS)
        return NULL;
    struct ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    char hex[33];
    sbx_random_hex(hex, 16);
    snprintf(c->id, sizeof(c->id), "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16,
             hex + 20);
    snprintf(c->lang, sizeof(c->lang), "%s", lang);
    c->cwd = strdup(cwd);
    c->is_default = is_default;
    /* Appended: the list answers in creation order (the SDK tests expect the newest last). */
    struct ctx **p = &svc.ctxs;
    while (*p)
        p = &(*p)->next;
    *p = c;
    svc.n_ctxs++;
    return c;
}

static void
ctx_free(struct ctx *c)
{
    for (struct ctx **p = &svc.ctxs; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            svc.n_ctxs--;
            break;
        }
    }
    free(c->cwd);
    free(c);
}

/* Removes a context: its kernel is killed, every run and waiter ends with an error. */
static void
ctx_remove(struct ctx *c)
{
    c->removed = true;
    c->busy++;
    answer_waiters(c, "the context was removed");
    ctx_stop_kernel(c);
    run_fail_all(c, "ContextRemoved", "the context was removed");
    c->busy--;
    if (c->runs == NULL)
        ctx_free(c);
}

/* ---- NDJSON output of a run ---- */

static void on_keepalive(uv_timer_t *t);

static void
on_drain(struct sbx_http_req *req)
{
    struct run *r = req->data;
    if (r == NULL || !r->paused)
        return;
    r->paused = false;
    if (r->ctx->kernel)
        sbx_kernel_pause_output(r->ctx->kernel, false);
}

static void
write_line(struct run *r, json_t *line)
{
    if (r->req == NULL) {
        json_decref(line);
        return;
    }
    /* JSON_ENSURE_ASCII is not needed: kernels' text was repaired to valid UTF-8. */
    char *s = json_dumps(line, JSON_COMPACT);
    json_decref(line);
    if (s == NULL)
        return;
    size_t n = strlen(s);
    s[n] = '\n';
    bool ok = sbx_http_write(r->req, s, n + 1);
    free(s);
    uv_timer_again(&r->timer);
    if (!ok && !r->paused && r->ctx->kernel) {
        /* Back-pressure: stop reading the kernel's output until the client caught up. */
        r->paused = true;
        sbx_kernel_pause_output(r->ctx->kernel, true);
        sbx_http_on_drain(r->req, on_drain);
    }
}

static void
write_type(struct run *r, const char *type)
{
    write_line(r, json_pack("{s:s}", "type", type));
}

static void
write_error(struct run *r, const char *name, const char *value, const char *tb)
{
    write_line(r, json_pack("{s:s,s:s,s:s,s:s}", "type", "error", "name", name, "value", value,
                            "traceback", tb ? tb : ""));
}

static void
on_count(void *ud, int64_t n)
{
    write_line(ud, json_pack("{s:s,s:I}", "type", "number_of_executions", "execution_count",
                             (json_int_t)n));
}

static void
on_stream(void *ud, bool is_stderr, json_t *text, const char *date)
{
    char now[40];
    if (date == NULL) {
        sbx_format_rfc3339(sbx_wall_ms(), now, sizeof(now));
        date = now;
    }
    write_line(ud, json_pack("{s:s,s:O,s:s}", "type", is_stderr ? "stderr" : "stdout", "text", text,
                             "timestamp", date));
}

/* MIME types the SDKs know as Result fields; anything else goes to `extra`. */
static const char *const mime_fields[][2] = {
    {"text/plain", "text"},        {"text/html", "html"},
    {"text/markdown", "markdown"}, {"image/svg+xml", "svg"},
    {"image/png", "png"},          {"image/jpeg", "jpeg"},
    {"application/pdf", "pdf"},    {"text/latex", "latex"},
    {"application/json", "json"},  {"application/javascript", "javascript"},
    {"e2b/data", "data"},          {"e2b/chart", "chart"},
};

static void
on_result(void *ud, bool main, json_t *data)
{
    json_t *line = json_pack("{s:s}", "type", "result");
    json_t *extra = json_object();
    const char *mime;
    json_t *v;
    json_object_foreach (data, mime, v) {
        const char *field = NULL;
        for (size_t i = 0; i < sizeof(mime_fields) / sizeof(mime_fields[0]); i++)
            if (strcmp(mime, mime_fields[i][0]) == 0)
                field = mime_fields[i][1];
        if (field == NULL) {
            json_object_set(extra, mime, v);
            continue;
        }
        /* An empty chart or data object means "none" (a figure without axes). */
        if ((strcmp(field, "chart") == 0 || strcmp(field, "data") == 0) &&
            (!json_is_object(v) || json_object_size(v) == 0))
            continue;
        if (strcmp(field, "text") == 0 && json_is_string(v)) {
            /* As E2B does: a string's repr (Python's 'abc', Node's 'abc' or "it's") loses
             * its surrounding quotes. */
            const char *t = json_string_value(v);
            size_t n = json_string_length(v);
            if (n >= 2 && (t[0] == '\'' || t[0] == '"') && t[n - 1] == t[0]) {
                json_object_set_new(line, field, json_stringn(t + 1, n - 2));
                continue;
            }
        }
        json_object_set(line, field, v);
    }
    json_object_set_new(line, "extra", extra);
    json_object_set_new(line, "is_main_result", json_boolean(main));
    write_line(ud, line);
}

static void
on_error(void *ud, const char *name, const char *value, const char *tb)
{
    /* bash_kernel reports failures without an ename. */
    write_error(ud, *name ? name : "Error", value, tb);
}

static void run_finish(struct run *r);
static void run_restore_env(struct run *r);

static void
run_end_response(struct run *r)
{
    if (r->req == NULL)
        return;
    write_type(r, "end_of_execution");
    struct sbx_http_req *req = r->req;
    r->req = NULL;
    req->data = NULL;
    sbx_http_req_on_close(req, NULL);
    sbx_http_end(req);
    if (r->paused && r->ctx->kernel)
        sbx_kernel_pause_output(r->ctx->kernel, false);
    r->paused = false;
}

static void
on_main_done(void *ud, enum sbx_kernel_exec_end end, const char *why)
{
    struct run *r = ud;
    r->exec = NULL;
    if (end == SBX_KERNEL_EXEC_DIED) {
        char msg[512];
        snprintf(msg, sizeof(msg),
                 "%s; the context's state was lost and its next execution "
                 "starts a fresh kernel",
                 why ? why : "the kernel died");
        write_error(r, r->ctx->removed ? "ContextRemoved" : "DeadKernelError", msg, "");
        run_end_response(r);
        run_finish(r);
        return;
    }
    run_end_response(r);
    run_restore_env(r);
}

static const struct sbx_kernel_exec_ops main_ops = {on_count, on_stream, on_result, on_error,
                                                    on_main_done};

static void
on_silent_done(void *ud, enum sbx_kernel_exec_end end, const char *why)
{
    struct run *r = ud;
    r->exec = NULL;
    run_finish(r);
}

static const struct sbx_kernel_exec_ops restore_ops = {NULL, NULL, NULL, NULL, on_silent_done};

/* ---- per-run environment variables (language snippets) ---- */

static bool
is_identifier(const char *k)
{
    if (!(isalpha((unsigned char)*k) || *k == '_'))
        return false;
    for (; *k; k++)
        if (!(isalnum((unsigned char)*k) || *k == '_'))
            return false;
    return true;
}

static void
bash_quote(struct sbx_buf *b, const char *s)
{
    sbx_buf_append(b, "'", 1, SIZE_MAX);
    for (; *s; s++) {
        if (*s == '\'')
            sbx_buf_append(b, "'\\''", 4, SIZE_MAX);
        else
            sbx_buf_append(b, s, 1, SIZE_MAX);
    }
    sbx_buf_append(b, "'", 1, SIZE_MAX);
}

/* A JSON string literal is also a valid string literal in Python, JavaScript, R and Java
 * (jansson escapes quotes, backslashes and control characters; never '/'). */
static char *
lit(const char *s)
{
    json_t *j = json_string(s);
    char *out = json_dumps(j, JSON_ENCODE_ANY);
    json_decref(j);
    return out ? out : strdup("\"\"");
}

/* Code that sets `set` (object) and removes `unset` (array of names), or NULL if the
 * language has no snippet. */
static json_t *
env_snippet(const char *lang, json_t *set, json_t *unset)
{
    struct sbx_buf b = {0};
    const char *k;
    json_t *v;
    size_t i;
    bool py = strcmp(lang, "python") == 0;
    bool js = strcmp(lang, "javascript") == 0 || strcmp(lang, "typescript") == 0;
    json_array_foreach (unset, i, v) {
        _cleanup_free_ char *key = lit(json_string_value(v));
        if (py)
            sbx_buf_printf(&b, "__import__('os').environ.pop(%s, None)\n", key);
        else if (js)
            sbx_buf_printf(&b, "delete process.env[%s];\n", key);
        else if (strcmp(lang, "r") == 0)
            sbx_buf_printf(&b, "Sys.unsetenv(%s)\n", key);
        else if (strcmp(lang, "java") == 0)
            sbx_buf_printf(&b, "System.clearProperty(%s);\n", key);
        else if (strcmp(lang, "bash") == 0 && is_identifier(json_string_value(v)))
            sbx_buf_printf(&b, "unset %s\n", json_string_value(v));
    }
    json_object_foreach (set, k, v) {
        _cleanup_free_ char *key = lit(k);
        _cleanup_free_ char *val = lit(json_string_value(v));
        if (py) {
            sbx_buf_printf(&b, "__import__('os').environ[%s] = %s\n", key, val);
        } else if (js) {
            sbx_buf_printf(&b, "process.env[%s] = %s;\n", key, val);
        } else if (strcmp(lang, "r") == 0) {
            sbx_buf_printf(&b, "do.call(Sys.setenv, setNames(list(%s), %s))\n", val, key);
        } else if (strcmp(lang, "java") == 0) {
            sbx_buf_printf(&b, "System.setProperty(%s, %s);\n", key, val);
        } else if (strcmp(lang, "bash") == 0 && is_identifier(k)) {
            sbx_buf_printf(&b, "export %s=", k);
            bash_quote(&b, json_string_value(v));
            sbx_buf_append(&b, "\n", 1, SIZE_MAX);
        }
    }
    if (b.len == 0) {
        sbx_buf_fini(&b);
        return NULL;
    }
    json_t *code = json_stringn(b.data, b.len);
    sbx_buf_fini(&b);
    return code;
}

/* The per-run env_vars go away after the run: back to the sandbox-wide value, or unset. */
static void
run_restore_env(struct run *r)
{
    struct ctx *c = r->ctx;
    if (r->env == NULL || c->kernel == NULL) {
        run_finish(r);
        return;
    }
    json_t *set = json_object();
    json_t *unset = json_array();
    const char *k;
    json_t *v;
    json_object_foreach (r->env, k, v) {
        json_t *global = json_object_get(svc.cfg->env_vars, k);
        if (json_is_string(global))
            json_object_set(set, k, global);
        else
            json_array_append_new(unset, json_string(k));
    }
    json_t *code = env_snippet(c->lang, set, unset);
    json_decref(set);
    json_decref(unset);
    if (code == NULL) {
        run_finish(r);
        return;
    }
    r->phase = RUN_RESTORE;
    r->exec = sbx_kernel_execute(c->kernel, code, true, &restore_ops, r);
    json_decref(code);
    if (r->exec == NULL)
        run_finish(r);
}

/* ---- the run queue ---- */

static void
run_free(struct run *r)
{
    json_decref(r->code);
    json_decref(r->env);
    free(r);
}

static void
on_run_timer_closed(uv_handle_t *h)
{
    run_free(h->data);
}

static void
run_unlink(struct run *r)
{
    struct ctx *c = r->ctx;
    for (struct run **p = &c->runs; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            c->n_runs--;
            break;
        }
    }
}

/* The run is over (response ended, env restored): next one. */
static void
run_finish(struct run *r)
{
    struct ctx *c = r->ctx;
    if (r->req) {
        /* Ended without its main execution (context removed before it ran). */
        run_end_response(r);
    }
    if (r->exec) {
        sbx_kernel_exec_detach(r->exec);
        r->exec = NULL;
    }
    bool was_head = c->runs == r;
    run_unlink(r);
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, on_run_timer_closed);
    if (c->removed) {
        if (c->runs == NULL && c->busy == 0)
            ctx_free(c);
        return;
    }
    if (was_head && c->busy == 0)
        run_start_next(c);
}

static void
run_fail_all(struct ctx *c, const char *name, const char *why)
{
    while (c->runs) {
        struct run *r = c->runs;
        if (r->exec) {
            /* Still bound to a (stopped) kernel: it has been ended already; detach. */
            sbx_kernel_exec_detach(r->exec);
            r->exec = NULL;
        }
        if (r->req)
            write_error(r, name, why, "");
        r->phase = RUN_RESTORE; /* not QUEUED: run_finish must not start it again */
        c->busy++;
        run_finish(r);
        c->busy--;
    }
}

static void
run_begin(struct run *r)
{
    struct ctx *c = r->ctx;
    r->phase = RUN_MAIN;
    if (r->env != NULL) {
        json_t *unset = json_array();
        json_t *code = env_snippet(c->lang, r->env, unset);
        json_decref(unset);
        if (code) {
            /* Silent and without stop_on_error: a failing snippet cannot abort the run. */
            sbx_kernel_execute(c->kernel, code, true, NULL, NULL);
            json_decref(code);
        }
    }
    r->exec = sbx_kernel_execute(c->kernel, r->code, false, &main_ops, r);
    if (r->exec == NULL) {
        write_error(r, "DeadKernelError", "the kernel is not running", "");
        run_finish(r);
    }
}

static void
run_start_next(struct ctx *c)
{
    struct run *r = c->runs;
    if (r == NULL || r->phase != RUN_QUEUED)
        return;
    if (c->kernel == NULL) {
        _cleanup_error_ struct sbx_error *err = NULL;
        if (ctx_start_kernel(c, &err) < 0) {
            sbx_log_error("kernel_start", "context=%s error=\"%s\"", c->id, err->msg);
            run_fail_all(c, "KernelStartError", err->msg);
        }
        return; /* on_kernel_ready starts it */
    }
    if (sbx_kernel_is_ready(c->kernel))
        run_begin(r);
}

static void
on_run_interrupt_grace(uv_timer_t *t)
{
    struct run *r = t->data;
    struct ctx *c = r->ctx;
    if (r->phase != RUN_MAIN || c->kernel == NULL)
        return;
    /* SIGINT did not stop it (a kernel that cannot interrupt this code): restart it. */
    sbx_log_warn("kernel_restart", "context=%s reason=\"not interruptible\"", c->id);
    ctx_stop_kernel(c); /* ends r (DIED) and starts the queue again on a new kernel */
}

static void
on_run_client_closed(struct sbx_http_req *req)
{
    struct run *r = req->data;
    if (r == NULL)
        return;
    r->req = NULL;
    req->data = NULL;
    struct ctx *c = r->ctx;
    if (r->phase == RUN_QUEUED) {
        run_unlink(r);
        uv_timer_stop(&r->timer);
        uv_close((uv_handle_t *)&r->timer, on_run_timer_closed);
        return;
    }
    if (r->paused && c->kernel)
        sbx_kernel_pause_output(c->kernel, false);
    r->paused = false;
    if (r->phase == RUN_MAIN && c->kernel) {
        /* The client gave up (timeout, disconnect): stop the code so the context is free
         * for the next execution, as E2B's server does. */
        r->interrupted = true;
        sbx_kernel_interrupt(c->kernel);
        uv_timer_start(&r->timer, on_run_interrupt_grace, SBX_INTERP_INTERRUPT_GRACE_MS, 0);
    }
}

static void
on_keepalive(uv_timer_t *t)
{
    struct run *r = t->data;
    if (r->req == NULL)
        return;
    /* Also how a vanished client is noticed while the code prints nothing. */
    write_type(r, "keepalive");
}

/* ---- POST /execute ---- */

static void
on_execute_body(struct sbx_http_req *req, struct sbx_buf *body)
{
    json_error_t jerr;
    json_t *j = json_loadb(body->data ? body->data : "", body->len, JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(j)) {
        json_decref(j);
        respond_text(req, 400, "request body must be a JSON object");
        return;
    }
    json_t *code = json_object_get(j, "code");
    json_t *ctx_id = json_object_get(j, "context_id");
    json_t *lang = json_object_get(j, "language");
    json_t *env = NULL;
    if (!json_is_string(code) || (ctx_id && !json_is_null(ctx_id) && !json_is_string(ctx_id)) ||
        (lang && !json_is_null(lang) && !json_is_string(lang))) {
        json_decref(j);
        respond_text(req, 400,
                     "invalid request: want {\"code\": str, \"context_id\"?: str, "
                     "\"language\"?: str, \"env_vars\"?: {str: str}}");
        return;
    }
    _cleanup_error_ struct sbx_error *env_err = NULL;
    if (sbx_json_opt_env_map(j, "env_vars", &env, &env_err) < 0) {
        json_decref(j);
        respond_text(req, 400, env_err->msg);
        return;
    }
    const char *id =
        json_is_string(ctx_id) && json_string_length(ctx_id) ? json_string_value(ctx_id) : NULL;
    const char *lg =
        json_is_string(lang) && json_string_length(lang) ? json_string_value(lang) : NULL;
    if (id && lg) {
        json_decref(j);
        respond_text(req, 400, "Only one of context_id or language can be provided");
        return;
    }
    struct ctx *c = NULL;
    if (id) {
        c = find_ctx(id);
        if (c == NULL) {
            char msg[300];
            snprintf(msg, sizeof(msg), "Context %.200s not found", id);
            json_decref(j);
            respond_text(req, 404, msg);
            return;
        }
    } else {
        char norm[16];
        normalize_language(lg, norm, sizeof(norm));
        if (!sbx_kernel_is_known(norm)) {
            char msg[300];
            snprintf(msg, sizeof(msg),
                     "Unsupported language '%.100s' (supported: python, "
                     "javascript, typescript, r, bash, java)",
                     lg);
            json_decref(j);
            respond_text(req, 400, msg);
            return;
        }
        if (!sbx_kernel_is_available(norm)) {
            char msg[200];
            snprintf(msg, sizeof(msg), "the %s kernel is not installed in this sandbox", norm);
            json_decref(j);
            respond_text(req, 500, msg);
            return;
        }
        c = find_default(norm);
        if (c == NULL)
            c = ctx_new(norm, SBX_INTERP_DEFAULT_CWD, true);
        if (c == NULL) {
            json_decref(j);
            respond_too_many_contexts(req);
            return;
        }
    }
    if (c->n_runs >= SBX_INTERP_MAX_QUEUED) {
        json_decref(j);
        respond_text(req, 503, "too many queued executions in this context");
        return;
    }
    struct run *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    r->ctx = c;
    r->req = req;
    r->code = json_incref(code);
    r->env = env != NULL && json_object_size(env) > 0 ? json_incref(env) : NULL;
    r->phase = RUN_QUEUED;
    json_decref(j);
    uv_timer_init(svc.loop, &r->timer);
    r->timer.data = r;
    req->data = r;
    sbx_http_req_on_close(req, on_run_client_closed);
    /* Headers at once, even when queued: the SDKs' request timeout covers only them. */
    sbx_http_start(req, 200, NDJSON_TYPE);
    uv_timer_start(&r->timer, on_keepalive, SBX_INTERP_KEEPALIVE_MS, SBX_INTERP_KEEPALIVE_MS);
    struct run **p = &c->runs;
    while (*p)
        p = &(*p)->next;
    *p = r;
    c->n_runs++;
    run_start_next(c);
}

/* ---- /contexts ---- */

static void
on_waiter_closed(struct sbx_http_req *req)
{
    struct waiter *w = req->data;
    if (w)
        w->req = NULL;
    req->data = NULL;
}

static void
add_waiter(struct ctx *c, struct sbx_http_req *req, bool is_create)
{
    struct waiter *w = calloc(1, sizeof(*w));
    if (w == NULL)
        abort();
    w->req = req;
    w->is_create = is_create;
    w->next = c->waiters;
    c->waiters = w;
    req->data = w;
    sbx_http_req_on_close(req, on_waiter_closed);
}

static void
on_create_body(struct sbx_http_req *req, struct sbx_buf *body)
{
    json_error_t jerr;
    json_t *j = body->len ? json_loadb(body->data, body->len, 0, &jerr) : json_object();
    json_t *lang = json_object_get(j, "language");
    json_t *cwd = json_object_get(j, "cwd");
    if (!json_is_object(j) || (lang && !json_is_null(lang) && !json_is_string(lang)) ||
        (cwd && !json_is_null(cwd) && !json_is_string(cwd))) {
        json_decref(j);
        respond_text(req, 400, "invalid request: want {\"language\"?: str, \"cwd\"?: str}");
        return;
    }
    char norm[16];
    normalize_language(json_string_value(lang), norm, sizeof(norm));
    if (!sbx_kernel_is_known(norm)) {
        json_decref(j);
        respond_text(req, 400, "Unsupported language");
        return;
    }
    const char *home = SBX_INTERP_DEFAULT_CWD;
    _cleanup_free_ char *dir = sbx_agent_resolve_cwd(json_string_value(cwd), home);
    json_decref(j);
    struct ctx *c = ctx_new(norm, dir, false);
    if (c == NULL) {
        respond_too_many_contexts(req);
        return;
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    if (ctx_start_kernel(c, &err) < 0) {
        ctx_free(c);
        respond_text(req, 500, err->msg);
        return;
    }
    add_waiter(c, req, true);
}

static void
handle_contexts(struct sbx_http_req *req)
{
    const char *rest = req->path + strlen("/contexts");
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (strcmp(req->method, "GET") == 0) {
            json_t *list = json_array();
            for (struct ctx *c = svc.ctxs; c; c = c->next)
                json_array_append_new(list, ctx_json(c));
            respond_json(req, 200, list);
            json_decref(list);
        } else if (strcmp(req->method, "POST") == 0) {
            sbx_http_req_read_body(req, SBX_HTTP_MAX_BUFFERED_BODY, on_create_body);
        } else {
            respond_text(req, 405, "method not allowed");
        }
        return;
    }
    if (*rest != '/') {
        respond_text(req, 404, "not found");
        return;
    }
    rest++;
    char id[64];
    size_t n = strcspn(rest, "/");
    if (n == 0 || n >= sizeof(id)) {
        respond_text(req, 404, "Context not found");
        return;
    }
    memcpy(id, rest, n);
    id[n] = '\0';
    const char *action = rest + n;
    struct ctx *c = find_ctx(id);
    bool is_restart = strcmp(action, "/restart") == 0 && strcmp(req->method, "POST") == 0;
    bool is_delete = *action == '\0' && strcmp(req->method, "DELETE") == 0;
    if (!is_restart && !is_delete) {
        respond_text(req, *action == '\0' || strcmp(action, "/restart") == 0 ? 405 : 404,
                     "not found");
        return;
    }
    if (c == NULL) {
        char msg[120];
        snprintf(msg, sizeof(msg), "Context %s not found", id);
        respond_text(req, 404, msg);
        return;
    }
    if (is_delete) {
        sbx_log_info("context_remove", "context=%s", c->id);
        ctx_remove(c);
        respond_json(req, 200, json_null());
        return;
    }
    /* Restart: state is lost; the running execution ends with an error; queued ones run on
     * the new kernel. */
    sbx_log_info("context_restart", "context=%s", c->id);
    ctx_stop_kernel(c);
    _cleanup_error_ struct sbx_error *err = NULL;
    if (ctx_start_kernel(c, &err) < 0) {
        run_fail_all(c, "KernelStartError", err->msg);
        respond_text(req, 500, err->msg);
        return;
    }
    add_waiter(c, req, false);
}

/* ---- entry points ---- */

int
sbx_interp_init(uv_loop_t *loop, const struct sbx_agent_config *cfg, struct sbx_error **err)
{
    if (svc.initialized)
        return 0;
    svc.initialized = true;
    svc.loop = loop;
    svc.cfg = cfg;
    /* The default contexts E2B's server creates at start; only Python's kernel starts now
     * (JavaScript's on first use: most sandboxes never run JavaScript). */
    struct ctx *py = ctx_new("python", SBX_INTERP_DEFAULT_CWD, true);
    if (sbx_kernel_is_available("javascript"))
        ctx_new("javascript", SBX_INTERP_DEFAULT_CWD, true);
    if (!sbx_kernel_is_available("python"))
        return 0;
    return ctx_start_kernel(py, err);
}

/* Secure sandboxes serve the interpreter to their owner only: with the sandbox id alone,
 * anyone could otherwise delete or restart the owner's contexts, or create contexts (each a
 * kernel) until the sandbox runs out of memory. The SDKs send X-Access-Token on /execute
 * only; on every request to this port they send the traffic access token, which the control
 * plane hands out with the access token, so /contexts takes either. */
static bool
is_authorized(const struct sbx_http_req *req, const struct sbx_agent_config *cfg, bool is_execute)
{
    if (cfg->access_token == NULL)
        return true;
    if (sbx_http_req_has_secret(req, "x-access-token", cfg->access_token))
        return true;
    return !is_execute &&
           sbx_http_req_has_secret(req, "e2b-traffic-access-token", cfg->traffic_token);
}

bool
sbx_interp_handle(struct sbx_http_req *req, const struct sbx_agent_config *cfg)
{
    const char *path = req->path;
    bool is_execute = strcmp(path, "/execute") == 0;
    bool is_contexts = strncmp(path, "/contexts", 9) == 0 && (path[9] == '\0' || path[9] == '/');
    bool is_health = strcmp(path, "/health") == 0;
    if (!is_execute && !is_contexts && !is_health)
        return false;
    if (is_health) {
        /* As E2B's server: a liveness answer that starts nothing (no kernel, no context). */
        json_t *ok = json_string("OK");
        respond_json(req, 200, ok);
        json_decref(ok);
        return true;
    }
    if (!is_authorized(req, cfg, is_execute)) {
        respond_text(req, 401, "unauthorized: missing or invalid access token");
        return true;
    }
    if (!svc.initialized) {
        _cleanup_error_ struct sbx_error *err = NULL;
        if (sbx_interp_init(uv_default_loop(), cfg, &err) < 0)
            sbx_log_error("interpreter_init", "error=\"%s\"", err->msg);
    }
    if (is_execute) {
        if (strcmp(req->method, "POST") != 0) {
            respond_text(req, 405, "method not allowed");
            return true;
        }
        sbx_http_req_read_body(req, SBX_HTTP_MAX_BUFFERED_BODY, on_execute_body);
        return true;
    }
    handle_contexts(req);
    return true;
}
