/* `sbx agent --step`: PID 1 of a build sandbox, which runs one template build step and ends.
 * It reads the step from the config fd (4): {"cmd", "user", "cwd", "env", "nonce"}, runs
 * `/bin/bash -l -c <cmd>` as that user, in that directory, with that environment, its stdin
 * the sandbox's fd 0 (a COPY's archive, or /dev/null) and its stdout and stderr the spawner's
 * pipe (fd 3), waits for it while reaping whatever else exits, and exits with its status (a
 * signal N as 128 + N). When the step cannot even start (unknown user, missing directory)
 * its last line of output is "<nonce> <reason>" and it exits with 125 (STEP_SETUP_FAILED): the
 * nonce, which only the front end and this process know, tells that line from anything the
 * command could print. Nothing here outlives the step: when PID 1 exits, the kernel kills the
 * rest of the sandbox. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/process.h"
#include "agent/users.h"
#include "base/cleanup.h"

#define STEP_OUT_FD       3
#define STEP_CONFIG_MAX   (4 * 1024 * 1024)
#define STEP_SETUP_FAILED 125

static json_t *
read_step(int fd, struct sbx_error **err)
{
    _cleanup_free_ char *buf = malloc(STEP_CONFIG_MAX + 1);
    size_t n = 0;
    if (buf == NULL)
        abort();
    for (;;) {
        ssize_t k = read(fd, buf + n, STEP_CONFIG_MAX - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return sbx_error_sys(err, errno, "read step"), NULL;
        if (k == 0)
            break;
        if ((n += (size_t)k) == STEP_CONFIG_MAX)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "step too large"), NULL;
    }
    json_error_t jerr;
    json_t *step = json_loadb(buf, n, 0, &jerr);
    if (!json_is_object(step) || !json_is_string(json_object_get(step, "cmd")) ||
        !json_is_string(json_object_get(step, "user")) ||
        !json_is_string(json_object_get(step, "nonce"))) {
        json_decref(step);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "malformed step"), NULL;
    }
    return step;
}

/* Runs the step; returns its exit status, or -1 with *err if it could not start. */
static int
run(json_t *step, struct sbx_error **err)
{
    const char *cmd = json_string_value(json_object_get(step, "cmd"));
    const char *name = json_string_value(json_object_get(step, "user"));
    json_t *env = json_object_get(step, "env");
    struct sbx_agent_user user = {0};
    if (sbx_agent_user_lookup("/etc", name, &user, err) < 0)
        return -1;
    char **envp = sbx_agent_env_build(&user, json_is_object(env) ? env : NULL, NULL, false);
    _cleanup_free_ char *cwd =
        sbx_agent_resolve_cwd(json_string_value(json_object_get(step, "cwd")), user.home);
    /* bash as on E2B; sh on an image that has none (alpine, busybox) rather than no step. */
    char *shell = access("/bin/bash", X_OK) == 0 ? "/bin/bash" : "/bin/sh";
    char *argv[] = {shell, "-l", "-c", (char *)cmd, NULL};
    struct sbx_agent_spawn s = {
        .path = shell,
        .argv = argv,
        .envp = envp,
        .cwd = cwd,
        .user = &user,
        .stdin_fd = STDIN_FILENO,
        .stdout_fd = STEP_OUT_FD,
        .stderr_fd = STEP_OUT_FD,
        .ctty_fd = -1,
    };
    pid_t pid = sbx_agent_spawn(&s, err);
    sbx_agent_strv_free(envp);
    sbx_agent_user_fini(&user);
    if (pid < 0)
        return -1;
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0 && errno == EINTR)
            continue;
        if (p < 0)
            return sbx_error_sys(err, errno, "wait for the step");
        if (p == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
}

int
sbx_agent_step_main(void)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    json_t *step = read_step(SBX_AGENT_CONFIG_FD, &err);
    close(SBX_AGENT_CONFIG_FD);
    if (step == NULL) {
        dprintf(STEP_OUT_FD, "sbx: %s\n", err->msg);
        return STEP_SETUP_FAILED;
    }
    int rc = run(step, &err);
    if (rc < 0) {
        const char *nonce = json_string_value(json_object_get(step, "nonce"));
        /* The error's own words, e.g. "unauthenticated: invalid username: 'x'" (envd's). */
        dprintf(STEP_OUT_FD, "%s %s%s\n", nonce,
                err->code == SBX_UNAUTHENTICATED ? "unauthenticated: " : "", err->msg);
        rc = STEP_SETUP_FAILED;
    }
    json_decref(step);
    return rc;
}
