/* Pause and resume in the front end (docs/architecture.md, "Pause and resume").
 *
 * A paused sandbox is either frozen in place (its memory kept: the spawner's FREEZE), or
 * stopped to its disk (STOP: every process gone, the writable layer kept), and comes back by
 * THAW, or by a SPAWN with reboot on that disk (same id, tokens, env vars, uid slot; a new
 * boot). Its row says which (state, paused_memory) and, while paused, end_at is when it was
 * paused: its timeout clock stands still.
 *
 * What a sandbox is asked to do runs one at a time, in order: each sandbox has a queue of ops
 * (pause, resume, kill, settle, snapshot) of which the first is under way. So a connect during a
 * pause resumes once the pause is done, a kill during either waits for it, and the spawner never
 * gets two requests for one sandbox at once. A client's pause during an op is refused (409),
 * as on E2B.
 *
 * Crash safety: a pause to the disk is written to the store before its STOP, a freeze and a
 * resume after the spawner's answer; at start, settle brings what a restart cut short in line
 * with the row (thaws a running one, freezes or stops a paused one), and every request the
 * spawner may have lost (it restarted: UNAVAILABLE) is asked again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"

enum op_kind {
    OP_PAUSE,
    OP_RESUME,
    OP_KILL,
    OP_SETTLE,   /* at start: make the sandbox what its record says */
    OP_WAIT,     /* nothing: its callback runs once what was queued before is done */
    OP_SNAPSHOT, /* a copy of its files as a layer (frozen meanwhile, then thawed) */
};

struct sbx_pause_op {
    enum op_kind kind;
    struct sbx_live *l;
    bool memory;                     /* pause: keep memory; resume: thaw it (else boot again) */
    int timeout_s;                   /* resume: the new end is now + this */
    char *why;                       /* logged: a kill's reason, a pause nobody asked for */
    char key[SBX_LAYER_KEY_LEN + 1]; /* snapshot: the layer it makes */
    char *layers;                    /* snapshot: the caller's, for the stack l runs on */
    struct sbx_error *err;           /* snapshot: why it failed, while the thaw is asked */
    uint8_t step;                    /* the spawner request out: FREEZE, THAW, STOP or SPAWN */
    bool started;
    uint64_t start; /* µs, monotonic: when it was asked */
    sbx_pause_cb cb;
    sbx_lifecycle_done_cb kill_cb;
    void *ud;
    struct sbx_pause_op *next;
};

static void start(struct sbx_pause_op *op);

bool
sbx_live_is_paused(const struct sbx_live *l)
{
    return strcmp(l->rec->state, "paused") == 0;
}

bool
sbx_live_is_running(const struct sbx_live *l)
{
    return l->ops == NULL && !sbx_live_is_paused(l);
}

const char *
sbx_pause_transition(const struct sbx_live *l)
{
    const struct sbx_pause_op *op = l->ops;
    if (op && (op->kind == OP_PAUSE || op->kind == OP_RESUME))
        return op->kind == OP_PAUSE ? "pausing" : "resuming";
    return NULL;
}

static struct sbx_pause_op *
op_new(struct sbx_live *l, enum op_kind kind, const char *why)
{
    struct sbx_pause_op *op = calloc(1, sizeof(*op));
    if (op == NULL || (why && (op->why = strdup(why)) == NULL))
        abort();
    op->kind = kind;
    op->l = l;
    op->start = sbx_now_us();
    return op;
}

static void
op_free(struct sbx_pause_op *op)
{
    free(op->why);
    free(op);
}

/* Starts the first op of l's queue unless it is under way. A callback of an op that ended may
 * have queued and started one already. */
static void
run_first(struct sbx_live *l)
{
    if (l->ops && !l->ops->started) {
        l->ops->started = true;
        start(l->ops);
    }
}

/* Appends op to l's queue; it starts at once if nothing was under way. */
static void
enqueue(struct sbx_pause_op *op)
{
    struct sbx_pause_op **pp = &op->l->ops;
    while (*pp)
        pp = &(*pp)->next;
    *pp = op;
    run_first(op->l);
}

/* The head op of l is done: answers it, then starts the next one. */
static void
finish(struct sbx_pause_op *op, struct sbx_error *err)
{
    struct sbx_live *l = op->l;
    l->ops = op->next;
    uint64_t took = sbx_now_us() - op->start;
    /* Pauses nobody asked for (a timeout, a lost agent) are logged, as is what a restart
     * could not settle; a client's ops are in its request's log line. */
    if (op->kind == OP_PAUSE && op->why)
        sbx_log_info("sandbox_pause", "sandbox=%s reason=\"%s\" memory=%s took_us=%llu%s%s%s",
                     l->rec->id, op->why, l->rec->paused_memory ? "true" : "false",
                     (unsigned long long)took, err ? " error=\"" : "", err ? err->msg : "",
                     err ? "\"" : "");
    else if (op->kind == OP_SETTLE && err)
        sbx_log_warn("recover", "sandbox=%s error=\"%s\"", l->rec->id, err->msg);
    /* The sandbox's own log (GET .../logs) has each pause and resume that happened. */
    if (!err && !l->rec->pooled && (op->kind == OP_PAUSE || op->kind == OP_RESUME))
        sbx_logs_event(l->rec->id, "info",
                       op->kind == OP_PAUSE ? "sandbox_pause" : "sandbox_resume", "memory=%s%s%s",
                       op->memory ? "true" : "false", op->why ? " reason=" : "",
                       op->why ? op->why : "");
    if (op->cb)
        op->cb(err ? NULL : l, err, took, op->ud);
    op_free(op);
    if (l->ops)
        run_first(l);
    else if (l->agent_gone)
        sbx_lifecycle_agent_gone(l);
    sbx_lifecycle_arm_expiry();
}

/* An op that cannot happen any more: its sandbox was killed first. */
static void
fail_killed(struct sbx_pause_op *op, const char *id)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    sbx_error_set(&err, SBX_NOT_FOUND, 0, "sandbox '%s' was killed", id);
    finish(op, err);
}

/* Records l as paused (memory: in place) or running again, with its new end. A store that
 * fails here is logged: the sandbox is what the spawner made it, and the record follows at
 * the next change (recovery settles the rest). */
static void
record(struct sbx_live *l, bool paused, bool memory, int64_t end_at_ms)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_store_sandbox_set_paused(sbx_daemon->store, l->rec->id, paused, memory, end_at_ms,
                                     &err) < 0)
        sbx_log_error("pause", "sandbox=%s error=\"%s\"", l->rec->id, err->msg);
    free(l->rec->state);
    l->rec->state = strdup(paused ? "paused" : "running");
    if (l->rec->state == NULL)
        abort();
    l->rec->paused_memory = paused && memory;
    l->rec->end_at_ms = end_at_ms;
}

static void on_reply(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud);

static void
ask(struct sbx_pause_op *op, uint8_t what)
{
    struct sbx_live *l = op->l;
    struct sbx_spawner_msg req = {.op = what};
    int fd = -1;
    op->step = what;
    if (what == SBX_SPAWNER_SPAWN) {
        _cleanup_error_ struct sbx_error *err = NULL;
        if (sbx_lifecycle_spawn_req(l, true, &req, &err) < 0 ||
            (fd = sbx_lifecycle_config_fd(l, &err)) < 0) {
            finish(op, err);
            return;
        }
    } else {
        snprintf(req.id, sizeof(req.id), "%s", l->rec->id);
        if (what == SBX_SPAWNER_SNAPSHOT)
            snprintf(req.layer_key, sizeof(req.layer_key), "%s", op->key);
    }
    sbx_spawner_call(&req, fd, on_reply, op);
}

/* To the disk: recorded first, so that a crash during the STOP leaves a sandbox that is
 * resumed from its disk, never one that is destroyed as dead. */
static void
stop_to_disk(struct sbx_pause_op *op)
{
    struct sbx_live *l = op->l;
    if (!sbx_live_is_paused(l) || l->rec->paused_memory)
        record(l, true, false, sbx_live_is_paused(l) ? l->rec->end_at_ms : sbx_wall_ms());
    sbx_lifecycle_unwatch(l); /* its agent's exit is what we ask for */
    ask(op, SBX_SPAWNER_STOP);
}

static void
start(struct sbx_pause_op *op)
{
    struct sbx_live *l = op->l;
    bool paused = sbx_live_is_paused(l);
    switch (op->kind) {
    case OP_KILL: {
        /* What was queued after a kill finds the sandbox gone. */
        for (struct sbx_pause_op *rest = op->next; rest;) {
            struct sbx_pause_op *next = rest->next;
            rest->next = NULL;
            l->ops = rest;
            fail_killed(rest, l->rec->id);
            rest = next;
        }
        l->ops = NULL;
        sbx_lifecycle_destroy(l, op->why, op->kill_cb, op->ud);
        op_free(op);
        return;
    }
    case OP_PAUSE:
        if (!paused && op->memory)
            ask(op, SBX_SPAWNER_FREEZE);
        else if (!op->memory && (!paused || l->rec->paused_memory))
            stop_to_disk(op);
        else
            finish(op, NULL); /* paused that way already */
        return;
    case OP_RESUME:
        if (!paused) {
            /* Running: a connect only ever extends its life. */
            int64_t end = sbx_wall_ms() + (int64_t)op->timeout_s * 1000;
            _cleanup_error_ struct sbx_error *err = NULL;
            if (end > l->rec->end_at_ms && sbx_lifecycle_set_end(l, end, &err) < 0)
                finish(op, err);
            else
                finish(op, NULL);
        } else if (l->rec->paused_memory && op->memory) {
            ask(op, SBX_SPAWNER_THAW);
        } else if (l->rec->paused_memory) {
            stop_to_disk(op); /* boot again on the disk: what runs of it (frozen) goes first */
        } else {
            /* Paused to its disk: stopped already (a restart settles what a crash cut
             * short, and a reboot that failed leaves it stopped). */
            ask(op, SBX_SPAWNER_SPAWN);
        }
        return;
    case OP_SETTLE:
        if (!paused)
            ask(op, SBX_SPAWNER_THAW);
        else if (l->rec->paused_memory && l->pidfd >= 0)
            ask(op, SBX_SPAWNER_FREEZE);
        else
            stop_to_disk(op);
        return;
    case OP_WAIT:
        finish(op, NULL);
        return;
    case OP_SNAPSHOT:
        if (paused) {
            _cleanup_error_ struct sbx_error *err = NULL;
            sbx_error_set(&err, SBX_NOT_FOUND, 0,
                          "Sandbox '%s' is paused: only a running sandbox can be snapshotted",
                          l->rec->id);
            finish(op, err);
        } else {
            ask(op, SBX_SPAWNER_SNAPSHOT);
        }
        return;
    }
}

static void
resumed(struct sbx_pause_op *op)
{
    record(op->l, false, false, sbx_wall_ms() + (int64_t)op->timeout_s * 1000);
    finish(op, NULL);
}

/* The rebooted agent runs: watched, and recorded with its pid. */
static void
booted(struct sbx_pause_op *op, const struct sbx_spawner_msg *reply)
{
    struct sbx_live *l = op->l;
    _cleanup_error_ struct sbx_error *err = NULL;
    l->rec->pid = (int)reply->pid;
    l->rec->pid_start_time = reply->start_time;
    if (sbx_lifecycle_watch(l, &err) < 0 ||
        sbx_store_sandbox_update_pid(sbx_daemon->store, l->rec->id, l->rec->pid,
                                     l->rec->pid_start_time, &err) < 0) {
        /* Its agent died at once: it stays paused on its disk (stopped by the next resume). */
        finish(op, err);
        return;
    }
    resumed(op);
}

static void
on_reply(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct sbx_pause_op *op = ud;
    struct sbx_live *l = op->l;
    if (err && err->code == SBX_UNAVAILABLE && op->kind == OP_SNAPSHOT) {
        /* The spawner restarted during the copy: the sandbox may be left frozen; the next
         * spawner thaws it, and the snapshot fails (its unfinished layer goes at the next
         * start of a spawner, sbx_layers_prepare). */
        if (op->step == SBX_SPAWNER_SNAPSHOT) {
            sbx_error_set(&op->err, err->code, err->sys_errno, "snapshot: %s", err->msg);
            ask(op, SBX_SPAWNER_THAW);
        } else {
            _cleanup_error_ struct sbx_error *e = op->err;
            finish(op, e);
        }
        return;
    }
    if (err && err->code == SBX_UNAVAILABLE) {
        /* The spawner restarted: ask the next one. A reboot it was doing is stopped first,
         * which is where a resume from the disk starts anyway. */
        if (op->step == SBX_SPAWNER_SPAWN)
            ask(op, SBX_SPAWNER_STOP);
        else
            ask(op, op->step);
        return;
    }
    switch (op->step) {
    case SBX_SPAWNER_FREEZE:
        if (err == NULL) {
            record(l, true, true, op->kind == OP_SETTLE ? l->rec->end_at_ms : sbx_wall_ms());
            finish(op, err);
        } else if (op->kind == OP_PAUSE && op->cb == NULL) {
            /* A pause nobody waits for (a timeout) that cannot keep memory keeps the disk:
             * the sandbox must not run on past its end, nor be lost. */
            sbx_log_warn("sandbox_pause", "sandbox=%s error=\"%s\" action=\"pause to its disk\"",
                         l->rec->id, err->msg);
            stop_to_disk(op);
        } else {
            finish(op, err);
        }
        return;
    case SBX_SPAWNER_SNAPSHOT:
        if (err == NULL)
            memcpy(op->layers, reply->layers, sizeof(reply->layers));
        finish(op, err);
        return;
    case SBX_SPAWNER_THAW:
        if (op->kind == OP_SNAPSHOT) {
            if (err)
                sbx_log_warn("snapshot", "sandbox=%s error=\"thaw: %s\"", l->rec->id, err->msg);
            _cleanup_error_ struct sbx_error *e = op->err;
            finish(op, e);
            return;
        }
        if (op->kind == OP_RESUME && err == NULL) {
            resumed(op);
        } else if (op->kind == OP_RESUME &&
                   (err->code == SBX_NOT_FOUND || err->code == SBX_FAILED_PRECONDITION ||
                    err->code == SBX_UNIMPLEMENTED)) {
            /* Its processes or its cgroup are gone (the host rebooted): from its disk then. */
            stop_to_disk(op);
        } else {
            finish(op, err);
        }
        return;
    case SBX_SPAWNER_STOP:
        if (err == NULL && op->kind == OP_RESUME)
            ask(op, SBX_SPAWNER_SPAWN);
        else
            finish(op, err);
        return;
    case SBX_SPAWNER_SPAWN:
        if (err)
            finish(op, err);
        else
            booted(op, reply);
        return;
    }
}

void
sbx_pause(struct sbx_live *l, bool memory, sbx_pause_cb cb, void *ud)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    const char *transition = sbx_pause_transition(l);
    if (transition)
        sbx_error_set(&err, SBX_FAILED_PRECONDITION, 0,
                      "Sandbox '%s' cannot be paused while in '%s' state", l->rec->id, transition);
    else if (sbx_live_is_paused(l))
        sbx_error_set(&err, SBX_FAILED_PRECONDITION, 0,
                      "Error pausing sandbox - sandbox '%s' is already paused", l->rec->id);
    if (err) {
        cb(NULL, err, 0, ud);
        return;
    }
    struct sbx_pause_op *op = op_new(l, OP_PAUSE, NULL);
    op->memory = memory;
    op->cb = cb;
    op->ud = ud;
    enqueue(op);
}

void
sbx_pause_quietly(struct sbx_live *l, bool memory, const char *why)
{
    struct sbx_pause_op *op = op_new(l, OP_PAUSE, why);
    op->memory = memory;
    enqueue(op);
}

void
sbx_resume(struct sbx_live *l, bool memory, int timeout_s, sbx_pause_cb cb, void *ud)
{
    struct sbx_pause_op *op = op_new(l, OP_RESUME, NULL);
    op->memory = memory;
    op->timeout_s = timeout_s;
    op->cb = cb;
    op->ud = ud;
    enqueue(op);
}

void
sbx_pause_wait(struct sbx_live *l, sbx_pause_cb cb, void *ud)
{
    struct sbx_pause_op *op = op_new(l, OP_WAIT, NULL);
    op->cb = cb;
    op->ud = ud;
    enqueue(op);
}

void
sbx_pause_snapshot(struct sbx_live *l, const char *key, char *layers, sbx_pause_cb cb, void *ud)
{
    struct sbx_pause_op *op = op_new(l, OP_SNAPSHOT, NULL);
    snprintf(op->key, sizeof(op->key), "%s", key);
    op->layers = layers;
    op->cb = cb;
    op->ud = ud;
    enqueue(op);
}

void
sbx_pause_settle(struct sbx_live *l, bool agent)
{
    if (sbx_live_is_paused(l) && l->rec->paused_memory && !agent)
        sbx_log_info("recover",
                     "sandbox=%s action=\"its frozen processes are gone: resumed "
                     "from its disk when asked\"",
                     l->rec->id);
    enqueue(op_new(l, OP_SETTLE, "restart"));
}

bool
sbx_pause_queue_kill(struct sbx_live *l, const char *why, sbx_lifecycle_done_cb cb, void *ud)
{
    if (l->ops == NULL)
        return false;
    struct sbx_pause_op *op = op_new(l, OP_KILL, why);
    op->kill_cb = cb;
    op->ud = ud;
    enqueue(op);
    return true;
}
