/* Building a user process: its environment, its working directory, and the fork/exec with
 * the privilege drop. The child side only makes async-signal-safe calls (the agent may have
 * libuv threadpool threads), and on failure reports {step, errno} over a CLOEXEC pipe and
 * _exits; it never returns into agent code. */
#include "agent/process.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

void
sbx_agent_strv_free(char **v)
{
    if (v == NULL)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

struct envb {
    char **v;
    size_t n;
};

static void
env_set(struct envb *e, const char *key, const char *value)
{
    size_t klen = strlen(key);
    char *kv = NULL;
    if (asprintf(&kv, "%s=%s", key, value) < 0)
        abort();
    for (size_t i = 0; i < e->n; i++) {
        if (strncmp(e->v[i], key, klen) == 0 && e->v[i][klen] == '=') {
            free(e->v[i]);
            e->v[i] = kv;
            return;
        }
    }
    char **nv = realloc(e->v, (e->n + 2) * sizeof(char *));
    if (nv == NULL)
        abort();
    e->v = nv;
    e->v[e->n++] = kv;
    e->v[e->n] = NULL;
}

static void
env_merge(struct envb *e, json_t *obj)
{
    const char *key;
    json_t *v;
    json_object_foreach (obj, key, v)
        env_set(e, key, json_string_value(v));
}

char **
sbx_agent_env_build(const struct sbx_agent_user *u, json_t *sandbox_env, json_t *req_env, bool pty)
{
    struct envb e = {calloc(1, sizeof(char *)), 0};
    if (e.v == NULL)
        abort();
    env_set(&e, "PATH", SBX_AGENT_BASE_PATH);
    env_set(&e, "HOME", u->home);
    env_set(&e, "USER", u->name);
    env_set(&e, "LOGNAME", u->name);
    env_set(&e, "SHELL", "/bin/bash");
    env_set(&e, "LANG", "C.UTF-8");
    if (pty)
        env_set(&e, "TERM", "xterm-256color");
    env_merge(&e, sandbox_env);
    env_merge(&e, req_env);
    return e.v;
}

static char *default_cwd;

void
sbx_agent_set_default_cwd(const char *dir)
{
    free(default_cwd);
    default_cwd = dir && dir[0] == '/' ? strdup(dir) : NULL;
}

char *
sbx_agent_resolve_cwd(const char *cwd, const char *home)
{
    char *out = NULL;
    if ((cwd == NULL || *cwd == '\0') && default_cwd)
        out = strdup(default_cwd);
    else if (cwd == NULL || *cwd == '\0' || strcmp(cwd, "~") == 0)
        out = strdup(home);
    else if (strncmp(cwd, "~/", 2) == 0)
        asprintf(&out, "%s/%s", home, cwd + 2);
    else if (cwd[0] == '/')
        out = strdup(cwd);
    else
        asprintf(&out, "%s/%s", home, cwd);
    if (out == NULL)
        abort();
    return out;
}

static bool
is_executable(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111) != 0;
}

char *
sbx_agent_find_executable(const char *cmd, char **envp, struct sbx_error **err)
{
    if (strchr(cmd, '/') != NULL)
        return strdup(cmd); /* exec reports a missing or non-executable file itself */
    const char *path = SBX_AGENT_BASE_PATH;
    for (char **p = envp; *p; p++)
        if (strncmp(*p, "PATH=", 5) == 0)
            path = *p + 5;
    const char *s = path;
    for (;;) {
        const char *colon = strchr(s, ':');
        size_t n = colon ? (size_t)(colon - s) : strlen(s);
        char *cand = NULL;
        if (asprintf(&cand, "%.*s/%s", (int)n, n ? s : ".", cmd) < 0)
            abort();
        if (is_executable(cand))
            return cand;
        free(cand);
        if (colon == NULL)
            break;
        s = colon + 1;
    }
    sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "exec: \"%s\": executable file not found in $PATH",
                  cmd);
    return NULL;
}

enum spawn_step {
    STEP_SETSID = 1,
    STEP_CTTY,
    STEP_STDIO,
    STEP_SETGROUPS,
    STEP_SETGID,
    STEP_SETUID,
    STEP_CHDIR,
    STEP_EXEC,
};

struct spawn_report {
    int step;
    int err;
};

static _Noreturn void
child_fail(int fd, int step)
{
    struct spawn_report r = {step, errno};
    ssize_t unused = write(fd, &r, sizeof(r));
    (void)unused;
    _exit(127);
}

/* Moves fd to target (clearing CLOEXEC there). A source below 3 was first moved out of the
 * way by the caller, so dup2 never clobbers a source it still needs. */
static int
install_fd(int fd, int target)
{
    if (fd == target)
        return fcntl(fd, F_SETFD, 0);
    return dup2(fd, target) < 0 ? -1 : 0;
}

static _Noreturn void
child_main(const struct sbx_agent_spawn *s, int report_fd, const sigset_t *oldmask)
{
    /* Handlers installed by the agent (libuv's signal pipe) must not run in the child, and
     * ignored signals (SIGPIPE) would stay ignored across exec: reset everything. */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa = {.sa_handler = SIG_DFL};
        sigaction(sig, &sa, NULL);
    }
    /* A new session: the command gets its own process group (so a kill reaches its whole
     * pipeline) and can acquire the PTY as controlling terminal. */
    if (setsid() < 0)
        child_fail(report_fd, STEP_SETSID);
    if (s->ctty_fd >= 0 && ioctl(s->ctty_fd, TIOCSCTTY, 0) < 0)
        child_fail(report_fd, STEP_CTTY);

    int fds[3] = {s->stdin_fd, s->stdout_fd, s->stderr_fd};
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 3) {
            fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
            if (fds[i] < 0)
                child_fail(report_fd, STEP_STDIO);
        }
    }
    for (int i = 0; i < 3; i++)
        if (install_fd(fds[i], i) < 0)
            child_fail(report_fd, STEP_STDIO);
    /* Belt and braces: whatever fd the agent may have leaked without O_CLOEXEC (the
     * listening sockets, the config fd) must not reach user code. */
    syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);

    /* The agent runs at a low oom_score_adj so that, when the sandbox's memory cgroup runs
     * out, the kernel kills user code rather than PID 1 (which would end the sandbox).
     * Raise it for user code before dropping privileges: after setuid the process is no
     * longer dumpable and /proc/self files stay owned by root. Failure is harmless. */
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        ssize_t unused = write(oom, "500", 3);
        (void)unused;
        close(oom);
    }

    /* Drop to the operation user: groups first (needs privilege), then gid, then uid, so no
     * step runs with a mix of the old and new identities (setresuid drops all three ids). */
    if (setgroups(s->user->n_groups, s->user->groups) < 0)
        child_fail(report_fd, STEP_SETGROUPS);
    if (setresgid(s->user->gid, s->user->gid, s->user->gid) < 0)
        child_fail(report_fd, STEP_SETGID);
    if (setresuid(s->user->uid, s->user->uid, s->user->uid) < 0)
        child_fail(report_fd, STEP_SETUID);
    /* chdir after the drop so that directory permissions are checked as the user. */
    if (chdir(s->cwd) < 0)
        child_fail(report_fd, STEP_CHDIR);
    umask(022);
    sigset_t none;
    sigemptyset(&none);
    (void)oldmask;
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(s->path, s->argv, s->envp);
    child_fail(report_fd, STEP_EXEC);
}

static int
report_error(const struct sbx_agent_spawn *s, const struct spawn_report *r, struct sbx_error **err)
{
    errno = r->err;
    switch (r->step) {
    case STEP_CHDIR:
        if (r->err == ENOENT || r->err == ENOTDIR)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, r->err, "cwd '%s' does not exist",
                                 s->cwd);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, r->err, "cwd '%s': %s", s->cwd,
                             strerror(r->err));
    case STEP_EXEC:
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, r->err,
                             "error starting process: fork/exec %s: %s", s->path, strerror(r->err));
    case STEP_SETGROUPS:
    case STEP_SETGID:
    case STEP_SETUID:
        return sbx_error_set(err, SBX_PERMISSION_DENIED, r->err,
                             "cannot switch to user '%s' (step %d): %s", s->user->name, r->step,
                             strerror(r->err));
    default:
        return sbx_error_set(err, SBX_INTERNAL, r->err, "process setup failed at step %d: %s",
                             r->step, strerror(r->err));
    }
}

pid_t
sbx_agent_spawn(const struct sbx_agent_spawn *s, struct sbx_error **err)
{
    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0)
        return sbx_error_sys(err, errno, "pipe2");
    /* Block every signal across fork so no handler of the agent runs in the child before it
     * has reset the dispositions. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
        close(report[0]);
        child_main(s, report[1], &old);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(report[1]);
    if (pid < 0) {
        close(report[0]);
        return sbx_error_sys(err, fork_errno, "fork");
    }
    struct spawn_report r;
    ssize_t n;
    do
        n = read(report[0], &r, sizeof(r));
    while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == 0)
        return pid; /* the pipe closed on exec: the command is running */
    /* The child is exiting with 127; reap it here, it is not in any table. */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (n != sizeof(r))
        return sbx_error_set(err, SBX_INTERNAL, 0, "process setup failed");
    return report_error(s, &r, err);
}
