/* Template builds (templates.md §2.5, §4): runs a build's steps one after the other, each
 * RUN, COPY, WORKDIR and USER step in a build sandbox of the layers so far (a BUILD_STEP of
 * the spawner), whose writable layer becomes the step's layer; ENV only changes the context
 * of the steps after it. A step's layer is keyed by the key of the step before it and the
 * step itself (type, arguments, files hash): a key the store already has is reused
 * ("CACHED") unless the step, or one before it, is forced. Output goes to the build's log as
 * it comes; a failing step ends the build with its message and step number.
 *
 * Nothing here blocks: a step is a spawner request and a callback. A build that fails never
 * becomes any tag's build; only a finished one is ever resolved by a name. */
#include "daemon/builder.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "jupyter/msg.h"
#include "spawner/image_ref.h"
#include "spawner/layer_keys.h"
#include "spawner/templates.h"

#define LINE_MAX_BYTES 8192 /* a longer line of output is logged in pieces */
#define TAIL_LINES     8    /* of a failing step's output, in its error */

struct build {
    struct sbx_build_rec rec;
    json_t *body; /* the definition; def borrows from it */
    struct sbx_build_def def;
    char stack[SBX_LAYERS_MAX][SBX_LAYER_KEY_LEN + 1]; /* bottom first */
    size_t n_stack;
    char chain[SBX_LAYER_KEY_LEN + 1]; /* key of the last step */
    char *user, *workdir;
    json_t *env;
    json_t *start; /* {cmd, ready, user, cwd, env} once known (a parent's, or this build's) */
    bool finalizing;
    bool provisioning; /* the implicit base step of an image (provision()) runs */
    bool code_interpreter;
    bool forced; /* a forced step came: every later one is forced too */
    size_t step; /* the one running, 0-based */
    int slot_index;
    char step_key[SBX_LAYER_KEY_LEN + 1];
    char nonce[33];
    char *cmd; /* of the step running, for its error */
    struct sbx_buf line;
    char *tail[TAIL_LINES];
    size_t n_tail;
    uint64_t started_ms;
    struct build *next;
};

static struct build *builds;

static void next_step(struct build *b);

/* Build b's sandboxes take the top uid slots, one per build running. */
static int
slot_of(const struct build *b)
{
    return SBX_MAX_SANDBOXES - 1 - b->slot_index;
}

/* ---- logs ---- */

static void
log_entry(struct build *b, const char *level, const char *step, const char *msg)
{
    size_t n;
    _cleanup_free_ char *text = sbx_jupyter_utf8_repair(msg, strlen(msg), &n);
    struct sbx_build_log_rec l = {.at_ms = sbx_wall_ms(), .step = (char *)step, .message = text};
    snprintf(l.level, sizeof(l.level), "%s", level);
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_store_build_log_add(sbx_daemon->store, b->rec.id, &l, &err) < 0)
        sbx_log_warn("build_log", "build=%s error=\"%s\"", b->rec.id, err->msg);
}

/* What the log and errors call the step running: its number, "base" or "finalize". */
static const char *
step_name(const struct build *b, char buf[16])
{
    if (b->finalizing)
        return "finalize";
    if (b->provisioning)
        return "base";
    snprintf(buf, 16, "%zu", b->step + 1);
    return buf;
}

static void log_step(struct build *b, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void
log_step(struct build *b, const char *level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *msg = sbx_vformat(fmt, ap);
    va_end(ap);
    char step[16];
    log_entry(b, level, step_name(b, step), msg ? msg : "");
}

static void
keep_tail(struct build *b, const char *line)
{
    if (b->n_tail == TAIL_LINES) {
        free(b->tail[0]);
        memmove(b->tail, b->tail + 1, (TAIL_LINES - 1) * sizeof(b->tail[0]));
        b->n_tail--;
    }
    if ((b->tail[b->n_tail++] = strdup(line)) == NULL)
        abort();
}

static void
clear_tail(struct build *b)
{
    for (size_t i = 0; i < b->n_tail; i++)
        free(b->tail[i]);
    b->n_tail = 0;
    sbx_buf_fini(&b->line);
}

static void
flush_line(struct build *b, size_t len)
{
    char *line = sbx_memdup_str(b->line.data, len);
    log_step(b, "info", "%s", line);
    keep_tail(b, line);
    free(line);
}

static void
on_step_output(const char *text, void *ud)
{
    struct build *b = ud;
    sbx_buf_append(&b->line, text, strlen(text), SIZE_MAX);
    char *nl;
    while (b->line.len > 0 && (nl = memchr(b->line.data, '\n', b->line.len)) != NULL) {
        flush_line(b, (size_t)(nl - b->line.data));
        sbx_buf_consume(&b->line, (size_t)(nl - b->line.data) + 1);
    }
    if (b->line.len >= LINE_MAX_BYTES) {
        flush_line(b, b->line.len);
        sbx_buf_consume(&b->line, b->line.len);
    }
}

/* ---- the end ---- */

static void
build_free(struct build *b)
{
    struct build **pp = &builds;
    while (*pp && *pp != b)
        pp = &(*pp)->next;
    if (*pp)
        *pp = b->next;
    clear_tail(b);
    sbx_build_rec_fini(&b->rec);
    sbx_build_def_fini(&b->def);
    json_decref(b->body);
    json_decref(b->env);
    json_decref(b->start);
    free(b->user);
    free(b->workdir);
    free(b->cmd);
    free(b);
}

static char *
context_json(const struct build *b)
{
    json_t *ctx = json_pack("{s:s,s:O,s:b}", "user", b->user, "env", b->env, "codeInterpreter",
                            b->code_interpreter);
    if (b->workdir)
        json_object_set_new(ctx, "workdir", json_string(b->workdir));
    if (b->start)
        json_object_set(ctx, "start", b->start);
    char *s = json_dumps(ctx, JSON_COMPACT);
    json_decref(ctx);
    return s;
}

static void
build_end(struct build *b, const char *step, const char *error)
{
    struct sbx_store *store = sbx_daemon->store;
    _cleanup_error_ struct sbx_error *err = NULL;
    free(b->rec.status);
    free(b->rec.context_json);
    free(b->rec.layers);
    b->rec.context_json = context_json(b);
    b->rec.finished_at_ms = sbx_wall_ms();
    sbx_metrics_build_done(error == NULL, sbx_now_ms() - b->started_ms);
    struct sbx_buf layers = {0};
    for (size_t i = b->n_stack; i > 0; i--)
        sbx_buf_append(&layers, b->stack[i - 1], SBX_LAYER_KEY_LEN, SIZE_MAX);
    sbx_buf_append(&layers, "", 1, SIZE_MAX);
    b->rec.layers = layers.data;
    if (error) {
        b->rec.status = strdup("error");
        json_t *reason = json_pack("{s:s}", "message", error);
        if (step)
            json_object_set_new(reason, "step", json_string(step));
        free(b->rec.reason_json);
        b->rec.reason_json = json_dumps(reason, JSON_COMPACT);
        json_decref(reason);
        _cleanup_free_ char *msg = NULL;
        if (asprintf(&msg, "Build failed: %s", error) < 0)
            abort();
        log_entry(b, "error", step, msg);
        sbx_log_info("build_end", "build=%s template=%s status=error step=%s error=\"%s\"",
                     b->rec.id, b->rec.template_id, step ? step : "-", error);
    } else {
        b->rec.status = strdup("ready");
        char msg[96];
        snprintf(msg, sizeof(msg), "Build finished, took %.1fs",
                 (double)(sbx_now_ms() - b->started_ms) / 1000);
        log_entry(b, "info", NULL, msg);
        sbx_log_info("build_end", "build=%s template=%s status=ready layers=%zu ms=%llu", b->rec.id,
                     b->rec.template_id, b->n_stack,
                     (unsigned long long)(sbx_now_ms() - b->started_ms));
    }
    if (sbx_store_build_update(store, &b->rec, &err) < 0)
        sbx_log_error("build_end", "build=%s error=\"%s\"", b->rec.id, err->msg);
    if (!error) {
        /* Only now does any name reach this build. */
        json_error_t jerr;
        json_t *tags = json_loads(b->rec.tags_json, 0, &jerr);
        size_t i;
        json_t *t;
        json_array_foreach (tags, i, t) {
            struct sbx_error *e = NULL;
            if (sbx_store_tag_set(store, b->rec.template_id, json_string_value(t), b->rec.id, &e) <
                0) {
                sbx_log_error("build_end", "build=%s error=\"%s\"", b->rec.id, e->msg);
                sbx_error_free(e);
            }
        }
        json_decref(tags);
    }
    build_free(b);
}

/* ---- steps ---- */

static void
sha_hex(const struct sbx_buf *in, char out[SBX_LAYER_KEY_LEN + 1])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(in->data, in->len, md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* The step's key: the key before it, its type, its arguments and its files (and the build,
 * when forced). */
static void
step_key(const struct build *b, const struct sbx_build_step *s, char out[SBX_LAYER_KEY_LEN + 1])
{
    struct sbx_buf in = {0};
    sbx_buf_printf(&in, "sbx-step-1\n%s\n%s\n", b->chain, sbx_step_type_name(s->type));
    for (size_t i = 0; i < s->n_args; i++)
        sbx_buf_append(&in, s->args[i], strlen(s->args[i]) + 1, SIZE_MAX);
    sbx_buf_printf(&in, "\n%s", s->files_hash ? s->files_hash : "");
    /* A forced step makes a layer of its own: the cached one may be in use, and layers never
     * change once made. */
    if (b->forced)
        sbx_buf_printf(&in, "\nforced by %s", b->rec.id);
    sha_hex(&in, out);
    sbx_buf_fini(&in);
}

/* POSIX shell quoting: 'x', with ' as '\''. */
static void
quote(struct sbx_buf *out, const char *s)
{
    sbx_buf_append(out, "'", 1, SIZE_MAX);
    for (; *s; s++) {
        if (*s == '\'')
            sbx_buf_append(out, "'\\''", 4, SIZE_MAX);
        else
            sbx_buf_append(out, s, 1, SIZE_MAX);
    }
    sbx_buf_append(out, "'", 1, SIZE_MAX);
}

/* The non-glob prefix of a COPY source: folder/x* gives folder, *.txt gives "". */
static char *
glob_prefix(const char *src)
{
    struct sbx_buf out = {0};
    const char *p = src;
    while (*p == '.' && p[1] == '/')
        p += 2;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (strcspn(p, "*?[{") < len)
            break;
        if (len > 0 && !(len == 1 && *p == '.')) {
            if (out.len)
                sbx_buf_append(&out, "/", 1, SIZE_MAX);
            sbx_buf_append(&out, p, len, SIZE_MAX);
        }
        if (!e)
            break;
        p = e + 1;
    }
    sbx_buf_append(&out, "", 1, SIZE_MAX);
    return out.data;
}

/* A COPY as a root shell script reading the archive on stdin (templates.md §4.2): the
 * non-glob prefix of the source is installed at dest (relative: to the workdir, else the
 * user's home), a directory merged into it, then given its owner and mode. */
static char *
copy_script(const struct build *b, const struct sbx_build_step *s, bool gzip)
{
    const char *owner = s->n_args > 2 && s->args[2][0] ? s->args[2] : b->user;
    const char *mode = s->n_args > 3 ? s->args[3] : "";
    _cleanup_free_ char *prefix = glob_prefix(s->args[0]);
    const char *dest = s->args[1];
    struct sbx_buf sc = {0};
    sbx_buf_printf(&sc, "set -e\nd=$(mktemp -d)\ntar -x%s --no-same-owner -f - -C \"$d\"\n",
                   gzip ? "z" : "");
    sbx_buf_printf(&sc, "src=\"$d\"/");
    quote(&sc, prefix);
    sbx_buf_printf(&sc, "\ndest=");
    quote(&sc, dest);
    sbx_buf_printf(&sc, "\ncase $dest in /*) ;; *) dest=");
    if (b->workdir)
        quote(&sc, b->workdir);
    else
        sbx_buf_printf(&sc, "$(getent passwd %s | cut -d: -f6)", b->user);
    sbx_buf_printf(&sc, "/$dest ;; esac\nown=");
    quote(&sc, owner);
    sbx_buf_printf(&sc, "\ncase $own in *:*) ;; *) own=$own:$own ;; esac\nmode=");
    quote(&sc, mode);
    sbx_buf_printf(&sc,
                   "\nif [ -d \"$src\" ] && [ ! -L \"$src\" ]; then\n"
                   "  [ -e \"$dest\" ] || { mkdir -p \"$dest\" && chown \"$own\" \"$dest\"; }\n"
                   "  cp -a \"$src\"/. \"$dest\"/\n"
                   "  (cd \"$src\" && find . -mindepth 1 -maxdepth 1) | while read -r e; do\n"
                   "    chown -hR \"$own\" \"$dest/$e\"\n"
                   "    [ -z \"$mode\" ] || chmod -R \"$mode\" \"$dest/$e\"\n"
                   "  done\n"
                   "else\n"
                   "  case $dest in */) mkdir -p \"$dest\"; dest=$dest$(basename \"$src\") ;; "
                   "*) mkdir -p \"$(dirname \"$dest\")\" ;; esac\n"
                   "  rm -rf \"$dest\" && cp -a \"$src\" \"$dest\"\n"
                   "  chown -h \"$own\" \"$dest\"\n"
                   "  [ -z \"$mode\" ] || [ -L \"$dest\" ] || chmod \"$mode\" \"$dest\"\n"
                   "fi\nrm -rf \"$d\"\n");
    sbx_buf_append(&sc, "", 1, SIZE_MAX);
    return sc.data;
}

/* A sealed memfd with the step for the build sandbox's agent (agent/step.c). */
static int
step_config(const struct build *b, const char *cmd, const char *user, const char *cwd,
            struct sbx_error **err)
{
    json_t *j =
        json_pack("{s:s,s:s,s:O,s:s}", "cmd", cmd, "user", user, "env", b->env, "nonce", b->nonce);
    if (cwd)
        json_object_set_new(j, "cwd", json_string(cwd));
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (s == NULL)
        return sbx_error_set(err, SBX_INTERNAL, 0, "encode step");
    _cleanup_close_ int fd = memfd_create("sbx-step", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    size_t len = strlen(s);
    bool ok = fd >= 0 && write(fd, s, len) == (ssize_t)len && lseek(fd, 0, SEEK_SET) == 0;
    free(s);
    if (!ok)
        return sbx_error_sys(err, errno, "step config");
    return steal_fd(&fd);
}

static void
step_layer_done(struct build *b, bool empty)
{
    /* An empty layer changes nothing: no sandbox needs it below it. */
    if (!empty) {
        if (b->n_stack == SBX_LAYERS_MAX) {
            char msg[96];
            snprintf(msg, sizeof(msg),
                     "the template has more layers than the %d sbx supports: merge some steps",
                     SBX_LAYERS_MAX);
            build_end(b, NULL, msg);
            return;
        }
        snprintf(b->stack[b->n_stack++], SBX_LAYER_KEY_LEN + 1, "%s", b->step_key);
    }
    snprintf(b->chain, sizeof(b->chain), "%s", b->step_key);
    if (b->provisioning)
        b->provisioning = false; /* the user's steps come next, from the first */
    else
        b->step++;
    next_step(b);
}

static void
on_step_done(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct build *b = ud;
    if (b->line.len > 0) {
        flush_line(b, b->line.len);
        sbx_buf_consume(&b->line, b->line.len);
    }
    char buf[16];
    const char *step = step_name(b, buf);
    if (b->finalizing) {
        /* The check's layer is no template's: the next layer GC removes it. */
        if (err)
            build_end(b, "finalize", err->msg);
        else if (reply->exit_status == 2 && b->n_tail > 0)
            build_end(b, "finalize", b->tail[b->n_tail - 1]);
        else if (reply->exit_status != 0)
            build_end(b, "finalize", "ready command failed: ready command timed out after 10m0s");
        else
            build_end(b, NULL, NULL);
        return;
    }
    _cleanup_free_ char *msg = NULL;
    if (err) {
        if (err->code == SBX_DEADLINE_EXCEEDED)
            asprintf(&msg, "failed to run command '%s': the step did not end within %d s", b->cmd,
                     sbx_daemon->cfg.build_step_timeout_s);
        else
            asprintf(&msg, "failed to run command '%s': %s", b->cmd, err->msg);
    } else if (reply->exit_status != 0) {
        /* The agent's own last line, if the step could not start (a bad user). */
        const char *last = b->n_tail ? b->tail[b->n_tail - 1] : "";
        size_t nl = strlen(b->nonce);
        if (strncmp(last, b->nonce, nl) == 0 && last[nl] == ' ')
            asprintf(&msg, "failed to run command '%s': command failed: %s", b->cmd, last + nl + 1);
        else
            asprintf(&msg, "failed to run command '%s': exit status %llu", b->cmd,
                     (unsigned long long)reply->exit_status);
    }
    if (msg) {
        build_end(b, step, msg);
        return;
    }
    _cleanup_error_ struct sbx_error *e = NULL;
    bool empty = reply->layer_empty != 0;
    if (sbx_store_layer_add(sbx_daemon->store, b->step_key, empty, &e) < 0) {
        build_end(b, step, e->msg);
        return;
    }
    step_layer_done(b, empty);
}

/* Runs cmd as user in cwd (NULL: the workdir, else the user's home) in a build sandbox of
 * the layers so far; its layer becomes step_key. what names the step in errors. */
static void
run_step(struct build *b, const char *what, const char *cmd, const char *user, const char *cwd,
         int archive_fd)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    free(b->cmd);
    b->cmd = strdup(what);
    clear_tail(b);
    sbx_random_hex(b->nonce, 16);
    int cfd = step_config(b, cmd, user, cwd ? cwd : b->workdir, &err);
    if (cfd < 0) {
        if (archive_fd >= 0)
            close(archive_fd);
        char buf[16];
        build_end(b, step_name(b, buf), err->msg);
        return;
    }
    struct sbx_spawner_msg req = {
        .op = SBX_SPAWNER_BUILD_STEP,
        .uid_slot = (uint64_t)slot_of(b),
        .memory_bytes = (uint64_t)b->rec.memory_mb << 20,
        .pids_max = (uint64_t)sbx_daemon->cfg.pids_max,
        .cpu_millis = (uint64_t)b->rec.cpu_count * 1000,
        .timeout_ms = (uint64_t)sbx_daemon->cfg.build_step_timeout_s * 1000,
        .disk_bytes = (uint64_t)sbx_daemon->cfg.build_disk_mb << 20,
    };
    req.id[0] = 'b';
    sbx_random_id(req.id + 1, 19);
    snprintf(req.layer_key, sizeof(req.layer_key), "%s", b->step_key);
    for (size_t i = b->n_stack; i > 0; i--)
        strcat(req.layers, b->stack[i - 1]);
    sbx_spawner_call_step(&req, cfd, archive_fd, on_step_output, on_step_done, b);
}

static int
open_upload(const char *hash, bool *gzip, struct sbx_error **err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.tar", sbx_daemon->uploads_dir, hash);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return sbx_error_set(err, SBX_NOT_FOUND, errno,
                             "the files of this COPY (hash %s) were never uploaded", hash);
    unsigned char magic[2] = {0};
    *gzip = pread(fd, magic, 2, 0) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    return fd;
}

static char *
step_description(const struct sbx_build_step *s)
{
    struct sbx_buf d = {0};
    sbx_buf_printf(&d, "%s", sbx_step_type_name(s->type));
    for (size_t i = 0; i < s->n_args; i++)
        if (s->args[i][0])
            sbx_buf_printf(&d, " %.200s", s->args[i]);
    sbx_buf_append(&d, "", 1, SIZE_MAX);
    return d.data;
}

/* After the steps: the start and ready commands, checked once as every sandbox of the
 * template will run them (start.c): the start command in the background, the ready command
 * every 2 s until it succeeds, for 10 minutes at most. */
static void
finalize(struct build *b)
{
    if (b->def.start_cmd || b->def.ready_cmd) {
        json_decref(b->start);
        b->start = json_pack("{s:s?,s:s?,s:s,s:s?,s:O}", "cmd", b->def.start_cmd, "ready",
                             b->def.ready_cmd, "user", b->user, "cwd", b->workdir, "env", b->env);
    }
    if (b->start == NULL) {
        build_end(b, NULL, NULL);
        return;
    }
    const char *cmd = json_string_value(json_object_get(b->start, "cmd"));
    const char *ready = json_string_value(json_object_get(b->start, "ready"));
    struct sbx_buf sc = {0};
    sbx_buf_printf(&sc, "bash -l -c ");
    quote(&sc, cmd && *cmd ? cmd : "sleep infinity");
    sbx_buf_printf(&sc, " & pid=$!\nfor i in $(seq 300); do\n  if bash -l -c ");
    quote(&sc, ready && *ready ? ready : "true");
    sbx_buf_printf(&sc, "; then exit 0; fi\n"
                        "  if ! kill -0 $pid 2>/dev/null; then wait $pid; st=$?\n"
                        "    [ $st -eq 0 ] && exit 0\n"
                        "    echo \"start command failed: exit status $st\"; exit 2\n"
                        "  fi\n  sleep 2\ndone\nexit 1\n");
    sbx_buf_append(&sc, "", 1, SIZE_MAX);
    log_entry(b, "info", "finalize", "[finalize] start and ready commands");
    b->finalizing = true;
    struct sbx_buf in = {0};
    sbx_buf_printf(&in, "sbx-finalize-1\n%s\n%s", b->chain, b->rec.id);
    sha_hex(&in, b->step_key);
    sbx_buf_fini(&in);
    const char *user = json_string_value(json_object_get(b->start, "user"));
    run_step(b, "finalize", sc.data, user ? user : b->user, NULL, -1);
    sbx_buf_fini(&sc);
}

static void
next_step(struct build *b)
{
    if (b->step == b->def.n_steps) {
        finalize(b);
        return;
    }
    const struct sbx_build_step *s = &b->def.steps[b->step];
    b->forced = b->forced || s->force;
    step_key(b, s, b->step_key);
    _cleanup_error_ struct sbx_error *err = NULL;
    _cleanup_free_ char *desc = step_description(s);
    if (s->type == SBX_STEP_ENV) {
        /* Build-time only: the steps after it and the start command see it (§4.2). */
        for (size_t i = 0; i + 1 < s->n_args; i += 2) {
            char *v = sbx_template_env_expand(s->args[i + 1]);
            json_object_set_new(b->env, s->args[i], json_string(v));
            free(v);
        }
        log_step(b, "info", "[builder %zu/%zu] %s [%.8s]", b->step + 1, b->def.n_steps, desc,
                 b->step_key);
        snprintf(b->chain, sizeof(b->chain), "%s", b->step_key);
        b->step++;
        next_step(b);
        return;
    }
    if (s->type == SBX_STEP_WORKDIR) {
        _cleanup_free_ char *wd = NULL;
        if (s->args[0][0] == '/')
            wd = strdup(s->args[0]);
        else if (asprintf(&wd, "%s/%s", b->workdir ? b->workdir : "", s->args[0]) < 0)
            abort();
        free(b->workdir);
        b->workdir = steal_pointer(&wd);
    } else if (s->type == SBX_STEP_USER) {
        free(b->user);
        b->user = strdup(s->args[0]);
    }
    bool empty;
    if (!b->forced && sbx_store_layer_get(sbx_daemon->store, b->step_key, &empty, &err) == 0) {
        log_step(b, "info", "CACHED [builder %zu/%zu] %s [%.8s]", b->step + 1, b->def.n_steps, desc,
                 b->step_key);
        step_layer_done(b, empty);
        return;
    }
    log_step(b, "info", "[builder %zu/%zu] %s [%.8s]", b->step + 1, b->def.n_steps, desc,
             b->step_key);
    struct sbx_buf cmd = {0};
    const char *user = "root";
    int archive = -1;
    switch (s->type) {
    case SBX_STEP_RUN:
        sbx_buf_printf(&cmd, "%s", s->args[0]);
        user = s->n_args > 1 && s->args[1][0] ? s->args[1] : b->user;
        break;
    case SBX_STEP_WORKDIR:
        sbx_buf_printf(&cmd, "w=");
        quote(&cmd, b->workdir);
        sbx_buf_printf(&cmd, "; [ -d \"$w\" ] || { mkdir -p \"$w\" && chown %s: \"$w\"; }",
                       b->user);
        break;
    case SBX_STEP_USER:
        sbx_buf_printf(&cmd,
                       "id -u %s >/dev/null 2>&1 || useradd --create-home --shell /bin/bash %s",
                       s->args[0], s->args[0]);
        if (s->n_args > 1 && strcmp(s->args[1], "true") == 0)
            sbx_buf_printf(&cmd,
                           "; usermod -aG sudo %s && passwd -d %s && "
                           "echo '%s ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/90-%s",
                           s->args[0], s->args[0], s->args[0], s->args[0]);
        break;
    case SBX_STEP_COPY: {
        bool gzip;
        archive = open_upload(s->files_hash, &gzip, &err);
        if (archive < 0) {
            char step[16];
            snprintf(step, sizeof(step), "%zu", b->step + 1);
            build_end(b, step, err->msg);
            return;
        }
        _cleanup_free_ char *sc = copy_script(b, s, gzip);
        sbx_buf_printf(&cmd, "%s", sc);
        break;
    }
    case SBX_STEP_ENV:
        break;
    }
    sbx_buf_append(&cmd, "", 1, SIZE_MAX);
    /* A RUN is its command, in the workdir; the others are ours, run in /. */
    bool run = s->type == SBX_STEP_RUN;
    run_step(b, run ? s->args[0] : desc, cmd.data, user, run ? NULL : "/", archive);
    sbx_buf_fini(&cmd);
}

/* ---- the base ---- */

/* The stack a build starts from: layers (keys, top first), and the key of the base. */
static void
set_base(struct build *b, const char *layers)
{
    size_t n = strlen(layers) / SBX_LAYER_KEY_LEN;
    for (size_t i = n; i > 0; i--)
        snprintf(b->stack[b->n_stack++], SBX_LAYER_KEY_LEN + 1, "%.64s",
                 layers + (i - 1) * SBX_LAYER_KEY_LEN);
    struct sbx_buf in = {0};
    sbx_buf_printf(&in, "sbx-base-1\n%s", layers);
    sha_hex(&in, b->chain);
    sbx_buf_fini(&in);
    b->user = strdup("user");
    b->env = json_object();
}

/* The layers and context a build of a template starts from; -1 with the base step's error. */
static int
start_from(struct build *b, const char *name, struct sbx_error **err)
{
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    if (sbx_templates_resolve(sbx_daemon->store, name, &ref, err) < 0)
        return -1;
    set_base(b, ref.layers);
    b->code_interpreter = ref.code_interpreter;
    if (ref.build_id[0]) {
        /* A template of ours: its context goes on (user, workdir, env). */
        struct sbx_build_rec parent;
        if (sbx_store_build_get(sbx_daemon->store, ref.build_id, &parent, err) < 0)
            return -1;
        json_error_t jerr;
        json_t *ctx = json_loads(parent.context_json, 0, &jerr);
        const char *user = json_string_value(json_object_get(ctx, "user"));
        const char *wd = json_string_value(json_object_get(ctx, "workdir"));
        if (user) {
            free(b->user);
            b->user = strdup(user);
        }
        if (wd)
            b->workdir = strdup(wd);
        if (json_is_object(json_object_get(ctx, "env")))
            json_object_update(b->env, json_object_get(ctx, "env"));
        if (json_is_object(json_object_get(ctx, "start")))
            b->start = json_incref(json_object_get(ctx, "start"));
        json_decref(ctx);
        sbx_build_rec_fini(&parent);
    }
    return 0;
}

/* "debian:<suite>" (fromDebianImage) for a suite the agent runs on: Debian 12 or later. */
static const char *
debian_suite(const char *image)
{
    static const char *const suites[] = {"bookworm", "oldstable", "trixie", "stable",
                                         "forky",    "testing",   "sid",    "unstable"};
    if (strncmp(image, "debian:", 7) != 0)
        return NULL;
    for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
        if (strcmp(image + 7, suites[i]) == 0)
            return suites[i];
    return NULL;
}

/* The base step failed: "failed to pull image <ref>: <why>", as E2B words it. */
static void
pull_failed(struct build *b, const char *why)
{
    _cleanup_free_ char *msg = NULL;
    if (asprintf(&msg, "failed to pull image %s: %s", b->def.from_image, why) < 0)
        abort();
    build_end(b, "base", msg);
}

/* The base layer the spawner made (a Debian root, an image's root) becomes the build's base,
 * once the store knows it; false if the build failed at base instead. */
static bool
base_layer_made(struct build *b, const char *key, const struct sbx_error *err)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    if (err == NULL && sbx_store_layer_add(sbx_daemon->store, key, false, &e) < 0)
        err = e;
    if (err) {
        pull_failed(b, err->msg);
        return false;
    }
    set_base(b, key);
    return true;
}

static void
on_debian_layer(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct build *b = ud;
    if (!base_layer_made(b, b->step_key, err))
        return;
    log_entry(b, "info", "base", "Debian root made");
    next_step(b);
}

/* E2B's implicit `USER user` of v2 builds (templates.md §3), for an image: `user` with a home,
 * bash for a shell if the image has it, and password-less sudo if it has sudo. An image
 * without shadow's useradd (alpine's busybox, a bare image) gets the entries written here;
 * the uid is the first free one from 1000, as useradd picks it. Runs as root, in sh. */
static const char provision_script[] =
    "sh=/bin/sh; [ -x /bin/bash ] && sh=/bin/bash\n"
    "if ! id -u user >/dev/null 2>&1; then\n"
    "  if command -v useradd >/dev/null 2>&1; then\n"
    "    useradd --create-home --shell \"$sh\" user\n"
    "  else\n"
    "    uid=1000; while id -nu $uid >/dev/null 2>&1; do uid=$((uid + 1)); done\n"
    "    echo \"user:x:$uid:$uid::/home/user:$sh\" >> /etc/passwd\n"
    "    echo \"user:x:$uid:\" >> /etc/group\n"
    "    [ ! -f /etc/shadow ] || echo 'user::19000:0:99999:7:::' >> /etc/shadow\n"
    "    mkdir -p /home/user && chown $uid:$uid /home/user && chmod 0750 /home/user\n"
    "  fi\n"
    "fi\n"
    "if command -v sudo >/dev/null 2>&1; then\n"
    "  passwd -d user >/dev/null 2>&1\n"
    "  mkdir -p /etc/sudoers.d\n"
    "  echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/90-sbx-user\n"
    "  chmod 0440 /etc/sudoers.d/90-sbx-user\n"
    "fi\n";

/* The image's layer is the base: the implicit user step on it (a layer of its own, cached by
 * the image's layer), then the user's steps. */
static void
provision(struct build *b)
{
    b->provisioning = true;
    struct sbx_buf in = {0};
    sbx_buf_printf(&in, "sbx-provision-1\n%s\n%s", b->chain, provision_script);
    sha_hex(&in, b->step_key);
    sbx_buf_fini(&in);
    bool empty;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (!b->forced && sbx_store_layer_get(sbx_daemon->store, b->step_key, &empty, &err) == 0) {
        log_entry(b, "info", "base", "CACHED USER user");
        step_layer_done(b, empty);
        return;
    }
    log_entry(b, "info", "base", "USER user (implicit)");
    run_step(b, "USER user", provision_script, "root", "/", -1);
}

static void
on_image_layer(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct build *b = ud;
    if (!base_layer_made(b, reply->layer_key, err))
        return;
    /* The image's ENV goes on into the build, as on E2B; its WORKDIR and USER do not
     * (templates.md §3): steps run as user, in its home, unless they say otherwise. */
    for (const char *line = reply->image_env; *line;) {
        size_t len = strcspn(line, "\n");
        const char *eq = memchr(line, '=', len);
        if (eq && eq > line) {
            _cleanup_free_ char *key = sbx_memdup_str(line, (size_t)(eq - line));
            _cleanup_free_ char *val = sbx_memdup_str(eq + 1, len - (size_t)(eq - line) - 1);
            json_object_set_new(b->env, key, json_string(val));
        }
        line += len + (line[len] == '\n');
    }
    _cleanup_free_ char *msg = NULL;
    if (asprintf(&msg, "FROM %s (%s)", b->def.from_image, reply->image_digest) < 0)
        abort();
    log_entry(b, "info", "base", msg);
    provision(b);
}

/* A registry's credentials for the spawner: username and password only; any other kind is
 * refused by name rather than ignored. 0, or -1 with the reason. */
static int
registry_credentials(const struct build *b, struct sbx_spawner_msg *req, struct sbx_error **err)
{
    const struct sbx_build_def *d = &b->def;
    if (!d->has_registry)
        return 0;
    if (d->registry_type == NULL || strcmp(d->registry_type, "registry") != 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "registry credentials of type '%s' are not supported here (only a "
                             "username and password: fromImage(image, {username, password}))",
                             d->registry_type ? d->registry_type : "(none)");
    const char *u = d->registry_username, *p = d->registry_password;
    if (u == NULL || p == NULL || !u[0] || !p[0] || strchr(u, ':') ||
        strlen(u) > SBX_SPAWNER_CRED_MAX || strlen(p) > SBX_SPAWNER_CRED_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "the registry's username and password must be 1 to %d characters, "
                             "the username without ':'",
                             SBX_SPAWNER_CRED_MAX);
    snprintf(req->registry_user, sizeof(req->registry_user), "%s", u);
    snprintf(req->registry_password, sizeof(req->registry_password), "%s", p);
    return 0;
}

/* The base is an image: the spawner pulls it (or reads an imported archive) into a layer. */
static void
pull_image(struct build *b)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    const char *image = b->def.from_image;
    const char *hash = sbx_image_ref_archive(image);
    struct sbx_spawner_msg req = {
        .op = SBX_SPAWNER_IMAGE_LAYER,
        .timeout_ms = (uint64_t)sbx_daemon->cfg.build_step_timeout_s * 1000,
    };
    struct sbx_image_ref ref;
    int fd = -1;
    bool gzip;
    if (hash && b->def.has_registry)
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "an imported archive takes no credentials");
    else if (hash)
        fd = open_upload(hash, &gzip, &err);
    else if (sbx_image_ref_parse(image, &ref, &err) == 0)
        registry_credentials(b, &req, &err);
    if (err) {
        pull_failed(b, err->msg);
        return;
    }
    snprintf(req.image, sizeof(req.image), "%s", image);
    log_entry(b, "info", "base", hash ? "FROM the imported archive" : "FROM image: pulling");
    sbx_spawner_call(&req, fd, on_image_layer, b);
    explicit_bzero(req.registry_password, sizeof(req.registry_password));
}

static void
on_begin(uv_timer_t *t)
{
    struct build *b = t->data;
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    _cleanup_error_ struct sbx_error *err = NULL;
    const char *image = b->def.from_image;
    const char *suite = image ? debian_suite(image) : NULL;
    if (suite && !b->def.has_registry) {
        /* A Debian root by the base template's recipe, made once per suite. */
        struct sbx_buf in = {0};
        sbx_buf_printf(&in, "sbx-debian-1\n%s\n%s", suite, SBX_LAYER_KEY_BASE);
        sha_hex(&in, b->step_key);
        sbx_buf_fini(&in);
        bool empty;
        if (sbx_store_layer_get(sbx_daemon->store, b->step_key, &empty, &err) == 0) {
            set_base(b, b->step_key);
            log_entry(b, "info", "base", "CACHED FROM debian");
            next_step(b);
            return;
        }
        log_entry(b, "info", "base",
                  "FROM debian: making a Debian root with mmdebstrap (a few minutes)");
        struct sbx_spawner_msg req = {.op = SBX_SPAWNER_DEBIAN_LAYER};
        snprintf(req.layer_key, sizeof(req.layer_key), "%s", b->step_key);
        snprintf(req.suite, sizeof(req.suite), "%s", suite);
        sbx_spawner_call(&req, -1, on_debian_layer, b);
        return;
    }
    if (image && (b->def.has_registry || strcmp(image, SBX_TEMPLATE_BASE_IMAGE) != 0)) {
        pull_image(b);
        return;
    }
    if (start_from(b, image ? "base" : b->def.from_template, &err) < 0) {
        build_end(b, "base", err->msg);
        return;
    }
    log_entry(b, "info", "base", image ? "FROM " SBX_TEMPLATE_BASE_IMAGE : "FROM template");
    next_step(b);
}

bool
sbx_builder_has_slot(int slot)
{
    for (const struct build *b = builds; b; b = b->next)
        if (slot_of(b) == slot)
            return true;
    return false;
}

int
sbx_builder_start(struct sbx_build_rec *rec, json_t *body, struct sbx_error **err)
{
    int index = 0;
    for (bool taken = true; taken && index < SBX_MAX_BUILDS; index += taken) {
        taken = false;
        for (struct build *o = builds; o; o = o->next)
            taken = taken || o->slot_index == index;
    }
    if (index >= sbx_daemon->cfg.max_builds)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0,
                             "%d builds are running, the most this server runs at once",
                             sbx_daemon->cfg.max_builds);
    struct build *b = calloc(1, sizeof(*b));
    if (b == NULL)
        abort();
    b->slot_index = index;
    b->body = json_incref(body);
    if (sbx_build_def_parse(body, &b->def, err) < 0) {
        json_decref(b->body);
        free(b);
        return -1;
    }
    b->rec = *rec; /* takes its strings */
    memset(rec, 0, sizeof(*rec));
    b->started_ms = sbx_now_ms();
    b->forced = b->def.force;
    b->next = builds;
    builds = b;
    free(b->rec.status);
    b->rec.status = strdup("building");
    if (sbx_store_build_update(sbx_daemon->store, &b->rec, err) < 0) {
        build_free(b);
        return -1;
    }
    sbx_log_info("build_start", "build=%s template=%s steps=%zu", b->rec.id, b->rec.template_id,
                 b->def.n_steps);
    uv_timer_t *t = malloc(sizeof(*t));
    if (t == NULL)
        abort();
    uv_timer_init(sbx_daemon->loop, t);
    t->data = b;
    uv_timer_start(t, on_begin, 0, 0);
    return 0;
}

static void
on_gc_done(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    if (err)
        sbx_log_warn("layer_gc", "error=\"%s\"", err->msg);
    else if (reply->layers_removed > 0)
        sbx_log_info("layer_gc", "removed=%llu", (unsigned long long)reply->layers_removed);
}

void
sbx_builder_expire(void)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    int n_builds = 0, n_layers = 0;
    if (sbx_store_builds_expire(sbx_daemon->store, sbx_wall_ms() - SBX_BUILD_KEEP_MS, &n_builds,
                                &n_layers, &err) < 0) {
        sbx_log_warn("build_gc", "error=\"%s\"", err->msg);
        return;
    }
    if (n_builds > 0 || n_layers > 0)
        sbx_log_info("build_gc", "builds=%d layers=%d", n_builds, n_layers);
    if (n_layers > 0)
        sbx_builder_collect_layers();
}

void
sbx_builder_collect_layers(void)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    _cleanup_free_ char *keys = NULL;
    if (sbx_store_layer_keys(sbx_daemon->store, &keys, &err) < 0) {
        sbx_log_warn("layer_gc", "error=\"%s\"", err->msg);
        return;
    }
    _cleanup_close_ int fd = memfd_create("sbx-layers", MFD_CLOEXEC);
    size_t len = strlen(keys);
    if (fd < 0 || write(fd, keys, len) != (ssize_t)len) {
        sbx_log_warn("layer_gc", "error=\"memfd: %s\"", strerror(errno));
        return;
    }
    struct sbx_spawner_msg req = {.op = SBX_SPAWNER_LAYERS_GC};
    sbx_spawner_call(&req, steal_fd(&fd), on_gc_done, NULL);
}
