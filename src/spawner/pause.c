/* Pausing and resuming in the spawner: FREEZE stops every process of a sandbox in place
 * (memory kept) and answers once all have stopped, THAW lets them go on, STOP kills them all
 * but keeps the sandbox's dir and disk for a later SPAWN with reboot (a filesystem-only
 * pause). Each acts only on a sandbox of ours in a phase that allows it: one request at a
 * time per sandbox, whatever a hostile front end sends. */
#include <stdio.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "spawner/internal.h"

#define FREEZE_POLL_MS 1 /* freezing is asynchronous; its state is polled this often */

static void
freeze_done(struct sb *s, const struct sbx_error *err)
{
    uv_timer_stop(&s->timer);
    s->phase = err ? SB_RUNNING : SB_FROZEN;
    if (err) {
        /* Whatever froze goes on: a sandbox is either paused or running, never half. */
        (void)sbx_sandbox_thaw(s->id, NULL);
        sbx_log_warn("freeze", "sandbox=%s error=\"%s\"", s->id, err->msg);
    }
    void (*then)(struct sb *, const struct sbx_error *) = s->on_frozen;
    s->on_frozen = NULL;
    if (then)
        then(s, err);
    else
        sbx_spawner_reply(s->seq, err);
}

static void
on_freeze_poll(uv_timer_t *t)
{
    struct sb *s = t->data;
    int frozen = sbx_sandbox_frozen(s->id);
    if (frozen == 1) {
        freeze_done(s, NULL);
        return;
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    if (frozen < 0)
        sbx_error_set(&err, SBX_NOT_FOUND, 0, "sandbox %s lost its cgroup while freezing", s->id);
    else if (sbx_now_ms() - s->since_ms > SBX_FREEZE_TIMEOUT_MS)
        /* A task in uninterruptible sleep (e.g. on a hung NFS server) delays the freeze. */
        sbx_error_set(&err, SBX_DEADLINE_EXCEEDED, 0,
                      "sandbox %s: its processes did not all stop within %d ms", s->id,
                      SBX_FREEZE_TIMEOUT_MS);
    else
        return;
    freeze_done(s, err);
}

void
sbx_spawner_freeze_then(struct sb *s, void (*on_frozen)(struct sb *s, const struct sbx_error *err))
{
    _cleanup_error_ struct sbx_error *err = NULL;
    s->on_frozen = on_frozen;
    if (sbx_sandbox_freeze(s->id, &err) < 0) {
        freeze_done(s, err);
        return;
    }
    s->phase = SB_FREEZING;
    s->since_ms = sbx_now_ms();
    if (sbx_sandbox_frozen(s->id) == 1) {
        freeze_done(s, NULL); /* sleeping tasks freeze at once */
        return;
    }
    uv_timer_start(&s->timer, on_freeze_poll, FREEZE_POLL_MS, FREEZE_POLL_MS);
}

void
sbx_spawner_freeze(const struct sbx_spawner_msg *m)
{
    /* FROZEN too: a front end that lost our answer asks again (freezing twice is harmless). */
    struct sb *s = sbx_spawner_find_in(m, PHASE(SB_RUNNING) | PHASE(SB_FROZEN), "is not running");
    if (s == NULL)
        return;
    s->seq = m->seq;
    sbx_spawner_freeze_then(s, NULL);
}

void
sbx_spawner_thaw(const struct sbx_spawner_msg *m)
{
    struct sb *s =
        sbx_spawner_find_in(m, PHASE(SB_FROZEN) | PHASE(SB_RUNNING), "is not paused in place");
    if (s == NULL)
        return;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_sandbox_thaw(s->id, &err) < 0) {
        sbx_spawner_reply(m->seq, err);
        return;
    }
    s->phase = SB_RUNNING;
    sbx_spawner_reply(m->seq, NULL);
}

void
sbx_spawner_stop(const struct sbx_spawner_msg *m)
{
    /* STOPPED too: stopping again drains what a stop cut short (a restart of ours). */
    struct sb *s =
        sbx_spawner_find_in(m, PHASE(SB_RUNNING) | PHASE(SB_FROZEN) | PHASE(SB_STOPPED), "is busy");
    if (s)
        sbx_spawner_kill(s, m->seq, true);
}
