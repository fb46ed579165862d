/* Decoding of process.Process requests and formatting of ProcessEvents, following the proto3
 * JSON mapping: lowerCamelCase or proto field names, int64/uint32 as numbers or strings, bytes
 * as base64, enums as names or numbers. Wrong types are SBX_INVALID_ARGUMENT. */
#include "agent/process.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "base/base64.h"
#include "base/cleanup.h"
#include "json/json.h"

/* Proto3 JSON parsers accept both the lowerCamelCase and the original field name. */
static json_t *
field(json_t *obj, const char *camel, const char *proto)
{
    json_t *v = json_object_get(obj, camel);
    if (v == NULL && proto != NULL)
        v = json_object_get(obj, proto);
    if (json_is_null(v))
        return NULL; /* null means "default" in proto3 JSON */
    return v;
}

static int
get_string(json_t *obj, const char *name, const char *proto, const char **out,
           struct sbx_error **err)
{
    json_t *v = field(obj, name, proto);
    *out = NULL;
    if (v == NULL)
        return 0;
    if (!json_is_string(v))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for string field %s",
                             name);
    *out = json_string_value(v);
    return 0;
}

static int
get_u32(json_t *v, const char *name, uint32_t *out, struct sbx_error **err)
{
    long long n;
    if (json_is_integer(v)) {
        n = json_integer_value(v);
    } else if (json_is_real(v)) {
        /* proto3 JSON allows 1.0 for an integer; range-check before the cast (a huge double
         * converted to an integer is undefined behaviour). */
        double d = json_real_value(v);
        if (!(d >= 0 && d <= UINT32_MAX) || d != (double)(long long)d)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for uint32 field %s",
                                 name);
        n = (long long)d;
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        n = strtoll(s, &end, 10);
        if (*s == '\0' || *end != '\0' || errno != 0)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for uint32 field %s",
                                 name);
    } else {
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for uint32 field %s",
                             name);
    }
    if (n < 0 || n > UINT32_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "value out of range for field %s", name);
    *out = (uint32_t)n;
    return 0;
}

static int
get_object(json_t *obj, const char *name, const char *proto, json_t **out, struct sbx_error **err)
{
    json_t *v = field(obj, name, proto);
    *out = v;
    if (v != NULL && !json_is_object(v))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for message field %s",
                             name);
    return 0;
}

void
sbx_agent_start_req_fini(struct sbx_agent_start_req *r)
{
    if (r == NULL)
        return;
    free(r->cmd);
    if (r->args) {
        for (size_t i = 0; i < r->n_args; i++)
            free(r->args[i]);
        free(r->args);
    }
    json_decref(r->envs);
    free(r->cwd);
    free(r->tag);
    memset(r, 0, sizeof(*r));
}

int
sbx_agent_pty_size_parse(json_t *pty, uint16_t *cols, uint16_t *rows, struct sbx_error **err)
{
    json_t *size;
    if (!json_is_object(pty))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for message field pty");
    if (get_object(pty, "size", NULL, &size, err) < 0)
        return -1;
    uint32_t c = 0, r = 0;
    json_t *v;
    if (size != NULL && (v = field(size, "cols", NULL)) != NULL && get_u32(v, "cols", &c, err) < 0)
        return -1;
    if (size != NULL && (v = field(size, "rows", NULL)) != NULL && get_u32(v, "rows", &r, err) < 0)
        return -1;
    if (c > UINT16_MAX || r > UINT16_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "pty size out of range");
    *cols = (uint16_t)c;
    *rows = (uint16_t)r;
    return 0;
}

int
sbx_agent_start_req_parse(json_t *msg, struct sbx_agent_start_req *out, struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    out->stdin_open = true;
    if (!json_is_object(msg))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "request must be a JSON object");
    json_t *proc, *v;
    const char *s;
    if (get_object(msg, "process", NULL, &proc, err) < 0)
        goto fail;
    if (proc == NULL) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "process config is required");
        goto fail;
    }
    if (get_string(proc, "cmd", NULL, &s, err) < 0)
        goto fail;
    if (s == NULL || *s == '\0') {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "process cmd is required");
        goto fail;
    }
    out->cmd = strdup(s);

    v = field(proc, "args", NULL);
    size_t n = 0;
    if (v != NULL && !json_is_array(v)) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for repeated field args");
        goto fail;
    }
    n = v ? json_array_size(v) : 0;
    if (n > SBX_AGENT_MAX_ARGS) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "too many args");
        goto fail;
    }
    out->args = calloc(n + 1, sizeof(char *));
    if (out->args == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(v, i);
        if (!json_is_string(a)) {
            sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for repeated field args");
            goto fail;
        }
        out->args[i] = strdup(json_string_value(a));
        out->n_args = i + 1;
    }

    v = NULL;
    if (sbx_json_opt_env_map(proc, "envs", &v, err) < 0)
        goto fail;
    out->envs = v ? json_incref(v) : json_object();

    if (get_string(proc, "cwd", NULL, &s, err) < 0)
        goto fail;
    out->cwd = s ? strdup(s) : NULL;

    json_t *pty;
    if (get_object(msg, "pty", NULL, &pty, err) < 0)
        goto fail;
    if (pty != NULL) {
        out->pty = true;
        if (sbx_agent_pty_size_parse(pty, &out->cols, &out->rows, err) < 0)
            goto fail;
    }
    if (get_string(msg, "tag", NULL, &s, err) < 0)
        goto fail;
    out->tag = s ? strdup(s) : NULL;
    v = field(msg, "stdin", NULL);
    if (v != NULL) {
        if (!json_is_boolean(v)) {
            sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for bool field stdin");
            goto fail;
        }
        out->stdin_open = json_is_true(v);
    }
    return 0;
fail:
    sbx_agent_start_req_fini(out);
    return -1;
}

int
sbx_agent_selector_parse(json_t *msg, const char *key, struct sbx_agent_selector *out,
                         struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    json_t *sel;
    if (!json_is_object(msg))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "request must be a JSON object");
    if (get_object(msg, key, NULL, &sel, err) < 0)
        return -1;
    if (sel == NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "process selector is required");
    json_t *pid = field(sel, "pid", NULL);
    const char *tag;
    if (get_string(sel, "tag", NULL, &tag, err) < 0)
        return -1;
    if (pid != NULL && tag != NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "selector: pid and tag both set");
    if (tag != NULL) {
        out->tag = strdup(tag);
        return 0;
    }
    if (pid == NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "selector: pid or tag is required");
    return get_u32(pid, "pid", &out->pid, err);
}

void
sbx_agent_selector_fini(struct sbx_agent_selector *s)
{
    if (s == NULL)
        return;
    free(s->tag);
    s->tag = NULL;
}

int
sbx_agent_input_parse(json_t *input, bool *is_pty, unsigned char **data, size_t *len,
                      struct sbx_error **err)
{
    *data = NULL;
    *len = 0;
    if (input == NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "input is required");
    if (!json_is_object(input))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for message field input");
    json_t *in = field(input, "stdin", NULL);
    json_t *pty = field(input, "pty", NULL);
    if ((in == NULL) == (pty == NULL))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "input: exactly one of stdin, pty");
    json_t *v = in ? in : pty;
    if (!json_is_string(v))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for bytes field");
    *data = sbx_base64_decode(json_string_value(v), json_string_length(v), len);
    if (*data == NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid base64 in bytes field");
    *is_pty = pty != NULL;
    return 0;
}

int
sbx_agent_signal_parse(json_t *v, int *sig, struct sbx_error **err)
{
    long long n = 0;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "SIGNAL_SIGKILL") == 0)
            n = 9;
        else if (strcmp(s, "SIGNAL_SIGTERM") == 0)
            n = 15;
        else if (strcmp(s, "SIGNAL_UNSPECIFIED") == 0)
            n = 0;
        else
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "invalid value for enum field signal");
    } else if (json_is_integer(v)) {
        n = json_integer_value(v);
    } else if (v != NULL) {
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid value for enum field signal");
    }
    if (n == 9) {
        *sig = SIGKILL;
        return 0;
    }
    if (n == 15) {
        *sig = SIGTERM;
        return 0;
    }
    return sbx_error_set(err, SBX_UNIMPLEMENTED, 0, "invalid signal: %lld", n);
}

/* Go's syscall.Signal strings (what envd's status "signal: <name>" contains). */
static const char *const signal_names[] = {
    [SIGHUP] = "hangup",
    [SIGINT] = "interrupt",
    [SIGQUIT] = "quit",
    [SIGILL] = "illegal instruction",
    [SIGTRAP] = "trace/breakpoint trap",
    [SIGABRT] = "aborted",
    [SIGBUS] = "bus error",
    [SIGFPE] = "floating point exception",
    [SIGKILL] = "killed",
    [SIGUSR1] = "user defined signal 1",
    [SIGSEGV] = "segmentation fault",
    [SIGUSR2] = "user defined signal 2",
    [SIGPIPE] = "broken pipe",
    [SIGALRM] = "alarm clock",
    [SIGTERM] = "terminated",
    [SIGSTKFLT] = "stack fault",
    [SIGCHLD] = "child exited",
    [SIGCONT] = "continued",
    [SIGSTOP] = "stopped (signal)",
    [SIGTSTP] = "stopped",
    [SIGTTIN] = "stopped (tty input)",
    [SIGTTOU] = "stopped (tty output)",
    [SIGURG] = "urgent I/O condition",
    [SIGXCPU] = "CPU time limit exceeded",
    [SIGXFSZ] = "file size limit exceeded",
    [SIGVTALRM] = "virtual timer expired",
    [SIGPROF] = "profiling timer expired",
    [SIGWINCH] = "window changed",
    [SIGIO] = "I/O possible",
    [SIGPWR] = "power failure",
    [SIGSYS] = "bad system call",
};

/* The end event's error: the status, or what killed the process when that is known. */
static void
set_error(json_t *end, const char *status, const char *killed_by)
{
    if (killed_by == NULL) {
        json_object_set_new(end, "error", json_string(status));
        return;
    }
    char why[160];
    snprintf(why, sizeof(why), "killed: %s", killed_by);
    json_object_set_new(end, "error", json_string(why));
}

json_t *
sbx_agent_end_event_format(int wstatus, const char *killed_by)
{
    char status[96];
    json_t *end = json_object();
    if (WIFEXITED(wstatus)) {
        int code = WEXITSTATUS(wstatus);
        snprintf(status, sizeof(status), "exit status %d", code);
        if (code != 0)
            json_object_set_new(end, "exitCode", json_integer(code));
        json_object_set_new(end, "exited", json_true());
        json_object_set_new(end, "status", json_string(status));
        if (code != 0)
            set_error(end, status, killed_by);
        return end;
    }
    int sig = WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0;
    const char *name =
        sig > 0 && sig < (int)(sizeof(signal_names) / sizeof(signal_names[0])) && signal_names[sig]
            ? signal_names[sig]
            : NULL;
    if (name)
        snprintf(status, sizeof(status), "signal: %s%s", name,
                 WCOREDUMP(wstatus) ? " (core dumped)" : "");
    else
        snprintf(status, sizeof(status), "signal: signal %d%s", sig,
                 WCOREDUMP(wstatus) ? " (core dumped)" : "");
    /* Go reports -1 as the exit code of a signalled process, and exited=false (omitted). */
    json_object_set_new(end, "exitCode", json_integer(-1));
    json_object_set_new(end, "status", json_string(status));
    set_error(end, status, killed_by);
    return end;
}

json_t *
sbx_agent_event(const char *kind, json_t *inner)
{
    json_t *ev = json_object();
    json_object_set_new(ev, kind, inner);
    json_t *outer = json_object();
    json_object_set_new(outer, "event", ev);
    return outer;
}

json_t *
sbx_agent_config_json(const struct sbx_agent_start_req *r)
{
    json_t *c = json_object();
    json_object_set_new(c, "cmd", json_string(r->cmd));
    json_t *args = json_array();
    for (size_t i = 0; i < r->n_args; i++)
        json_array_append_new(args, json_string(r->args[i]));
    json_object_set_new(c, "args", args);
    json_object_set(c, "envs", r->envs);
    if (r->cwd)
        json_object_set_new(c, "cwd", json_string(r->cwd));
    return c;
}
