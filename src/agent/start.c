/* A template's start and ready commands (templates.md §4.3), run by the agent of every
 * sandbox of the template: sbx has no memory snapshots, so instead of restoring a sandbox
 * whose start command already runs, each sandbox starts it, in the background, as the
 * template's user, in its workdir, with its build-time env, and then runs the ready command
 * every 2 s (each time a fresh `bash -l -c`) until it exits 0, for at most 10 minutes.
 * GET /sbx/ready (the daemon's, before it answers the create) waits for that. A start
 * command that exits non-zero before readiness fails it; one that exits 0 counts as ready. */
#include "agent/start.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/users.h"
#include "base/cleanup.h"
#include "base/log.h"

#define READY_INTERVAL_MS 2000
#define READY_LIMIT_MS    (10 * 60 * 1000)

struct waiter {
    void (*cb)(void *ud, bool ok, const char *why);
    void *ud;
    struct waiter *next;
};

static struct {
    uv_loop_t *loop;
    const struct sbx_agent_config *cfg;
    json_t *spec; /* {cmd, ready, user, cwd, env} */
    enum { NONE, STARTING, READY, FAILED } state;
    char why[512];
    uv_timer_t timer;
    uint64_t deadline;
    pid_t ready_pid;
    struct waiter *waiters;
} st;

static void
finish(bool ok, const char *why)
{
    if (st.state == READY || st.state == FAILED)
        return;
    st.state = ok ? READY : FAILED;
    snprintf(st.why, sizeof(st.why), "%s", why ? why : "");
    uv_timer_stop(&st.timer);
    if (ok)
        sbx_log_info("start_ready", "sandbox=%s", st.cfg->sandbox_id);
    else
        sbx_log_warn("start_ready", "sandbox=%s error=\"%s\"", st.cfg->sandbox_id, st.why);
    while (st.waiters) {
        struct waiter *w = st.waiters;
        st.waiters = w->next;
        w->cb(w->ud, ok, st.why);
        free(w);
    }
}

/* Starts `bash -l -c cmd` as the template's user, output to /dev/null. */
static pid_t
run(const char *cmd, struct sbx_error **err)
{
    const char *name = json_string_value(json_object_get(st.spec, "user"));
    struct sbx_agent_user user = {0};
    if (sbx_agent_user_lookup("/etc", name ? name : SBX_AGENT_DEFAULT_USER, &user, err) < 0)
        return -1;
    json_t *env = json_deep_copy(st.cfg->env_vars);
    json_t *tenv = json_object_get(st.spec, "env");
    if (json_is_object(tenv))
        json_object_update(env, tenv);
    char **envp = sbx_agent_env_build(&user, env, NULL, false);
    json_decref(env);
    _cleanup_free_ char *cwd =
        sbx_agent_resolve_cwd(json_string_value(json_object_get(st.spec, "cwd")), user.home);
    _cleanup_close_ int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    char *argv[] = {"/bin/bash", "-l", "-c", (char *)cmd, NULL};
    struct sbx_agent_spawn s = {.path = "/bin/bash",
                                .argv = argv,
                                .envp = envp,
                                .cwd = cwd,
                                .user = &user,
                                .stdin_fd = null,
                                .stdout_fd = null,
                                .stderr_fd = null,
                                .ctty_fd = -1};
    pid_t pid = null < 0 ? sbx_error_sys(err, errno, "open /dev/null") : sbx_agent_spawn(&s, err);
    sbx_agent_strv_free(envp);
    sbx_agent_user_fini(&user);
    return pid;
}

static void on_tick(uv_timer_t *t);

static void
on_ready_exit(pid_t pid, int status, const char *killed_by, void *ud)
{
    st.ready_pid = 0;
    if (st.state != STARTING)
        return;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        finish(true, NULL);
        return;
    }
    if (uv_now(st.loop) >= st.deadline) {
        finish(false, "ready command failed: ready command timed out after 10m0s");
        return;
    }
    uv_timer_start(&st.timer, on_tick, READY_INTERVAL_MS, 0);
}

static void
on_tick(uv_timer_t *t)
{
    const char *ready = json_string_value(json_object_get(st.spec, "ready"));
    _cleanup_error_ struct sbx_error *err = NULL;
    pid_t pid = run(ready, &err);
    if (pid < 0) {
        char why[400];
        snprintf(why, sizeof(why), "ready command failed: %s", err->msg);
        finish(false, why);
        return;
    }
    st.ready_pid = pid;
    sbx_agent_watch_child(pid, on_ready_exit, NULL);
}

static void
on_start_exit(pid_t pid, int status, const char *killed_by, void *ud)
{
    if (st.state != STARTING)
        return;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        finish(true, NULL);
        return;
    }
    char why[200];
    snprintf(why, sizeof(why), "start command failed: exit status %d",
             WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    finish(false, why);
}

void
sbx_agent_start_init(uv_loop_t *loop, const struct sbx_agent_config *cfg, json_t *spec)
{
    st.loop = loop;
    st.cfg = cfg;
    uv_timer_init(loop, &st.timer);
    if (!json_is_object(spec)) {
        st.state = READY;
        return;
    }
    st.spec = json_incref(spec);
    st.state = STARTING;
    st.deadline = uv_now(loop) + READY_LIMIT_MS;
    const char *cmd = json_string_value(json_object_get(spec, "cmd"));
    if (cmd && *cmd) {
        _cleanup_error_ struct sbx_error *err = NULL;
        pid_t pid = run(cmd, &err);
        if (pid < 0) {
            char why[400];
            snprintf(why, sizeof(why), "start command failed: %s", err->msg);
            finish(false, why);
            return;
        }
        sbx_agent_watch_child(pid, on_start_exit, NULL);
    }
    const char *ready = json_string_value(json_object_get(spec, "ready"));
    if (ready && *ready)
        uv_timer_start(&st.timer, on_tick, 0, 0);
    else
        finish(true, NULL); /* a start command alone is ready once it runs (E2B waits 20 s
                             * there for its snapshot; sbx has none to take) */
}

void
sbx_agent_start_when_ready(void (*cb)(void *ud, bool ok, const char *why), void *ud)
{
    if (st.state == READY || st.state == FAILED || st.state == NONE) {
        cb(ud, st.state != FAILED, st.why);
        return;
    }
    struct waiter *w = calloc(1, sizeof(*w));
    if (w == NULL)
        abort();
    w->cb = cb;
    w->ud = ud;
    w->next = st.waiters;
    st.waiters = w;
}
