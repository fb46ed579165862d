/* Freezing a sandbox's processes in place: the pause that keeps memory. Every process of the
 * sandbox stops where it is, with its memory, open files and sockets; it uses no CPU until it
 * is thawed, and then continues as if nothing had happened (timers that expired meanwhile
 * fire at once: CLOCK_MONOTONIC kept running).
 *
 *  - v2: cgroup.freeze of the sandbox's cgroup; cgroup.events says "frozen 1" once every
 *    task has stopped.
 *  - v1 or hybrid: the freezer controller, a hierarchy of its own (/sys/fs/cgroup/freezer,
 *    which cgroup.c joins every sandbox to when it is mounted); freezer.state reads FREEZING
 *    until every task has stopped, then FROZEN.
 *
 * Both are asynchronous: freezing starts with the write and the caller polls until it is
 * done. A v1 frozen task does not even die of SIGKILL until it is thawed, so whoever kills a
 * sandbox thaws it right after (lifecycle.c, cgroup.c): the kill is pending by then, and the
 * tasks die before they run a single instruction of their own. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "sandbox/internal.h"

#define CG_ROOT "/sys/fs/cgroup"

/* The file that freezes the sandbox's cgroup, and the one that tells whether it is frozen. */
static int
freeze_paths(const char *id, char *ctl, char *state, size_t n)
{
    switch (sbx_cgroup_detect()) {
    case SBX_CGROUP_V2:
        if (sbx_pathf(ctl, n, CG_ROOT "/sbx/%s/cgroup.freeze", id) < 0 ||
            sbx_pathf(state, n, CG_ROOT "/sbx/%s/cgroup.events", id) < 0)
            return -1;
        return 0;
    case SBX_CGROUP_V1:
        if (sbx_pathf(ctl, n, CG_ROOT "/freezer/sbx/%s/freezer.state", id) < 0)
            return -1;
        snprintf(state, n, "%s", ctl);
        return 0;
    default:
        errno = ENOENT;
        return -1;
    }
}

static int
write_freeze(const char *id, bool frozen, struct sbx_error **err)
{
    char ctl[320], state[320];
    if (freeze_paths(id, ctl, state, sizeof(ctl)) < 0)
        return sbx_error_sys(err, errno, "freezer of %s", id);
    const char *v = sbx_cgroup_detect() == SBX_CGROUP_V2 ? (frozen ? "1" : "0")
                                                         : (frozen ? "FROZEN" : "THAWED");
    if (sbx_fs_write_str(ctl, v) < 0) {
        if (errno == ENOENT)
            return sbx_error_set(err, SBX_UNIMPLEMENTED, ENOENT,
                                 "sandbox %s has no freezer cgroup (it is not running, or the "
                                 "host's cgroup v1 freezer is not mounted at " CG_ROOT "/freezer)",
                                 id);
        return sbx_error_sys(err, errno, "write %s=%s", ctl, v);
    }
    return 0;
}

int
sbx_sandbox_freeze(const char *id, struct sbx_error **err)
{
    return write_freeze(id, true, err);
}

int
sbx_sandbox_thaw(const char *id, struct sbx_error **err)
{
    return write_freeze(id, false, err);
}

int
sbx_sandbox_frozen(const char *id)
{
    char ctl[320], state[320], buf[512];
    if (freeze_paths(id, ctl, state, sizeof(ctl)) < 0 ||
        sbx_fs_read_small(state, buf, sizeof(buf)) < 0)
        return -1;
    if (sbx_cgroup_detect() == SBX_CGROUP_V1)
        return strncmp(buf, "FROZEN", 6) == 0;
    const char *p = strstr(buf, "frozen ");
    return p != NULL && (p == buf || p[-1] == '\n') && p[7] == '1';
}

int
sbx_sandbox_freeze_asked(const char *id)
{
    char ctl[320], state[320], buf[64];
    if (freeze_paths(id, ctl, state, sizeof(ctl)) < 0 ||
        sbx_fs_read_small(ctl, buf, sizeof(buf)) < 0)
        return -1;
    /* v2's cgroup.freeze holds what was asked; v1's freezer.state reads FREEZING or FROZEN
     * once a freeze was asked for, THAWED otherwise. */
    if (sbx_cgroup_detect() == SBX_CGROUP_V2)
        return buf[0] == '1';
    return strncmp(buf, "THAWED", 6) != 0;
}
