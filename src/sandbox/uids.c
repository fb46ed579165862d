/* Host uid blocks. Every sandbox maps its uids 0..65535 onto a host range of its own; the
 * ranges of one daemon come from one block of SBX_MAX_SANDBOXES ranges. Blocks are allotted
 * host-wide, so that two daemons on one host never map the same host uids: a shared uid
 * would share per-user kernel accounting (pipe buffers, inotify, process counts) and
 * signal and ptrace permissions between their sandboxes.
 *
 * A block is taken with an exclusive flock on /run/sbx/uid-block-<n>.lock, held for as long
 * as its daemon runs. Sandboxes outlive their daemon, so a free lock alone does not make a
 * block free: a new block is taken only if no process on the host runs with a uid in it. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sandbox/internal.h"

#define LOCK_DIR "/run/sbx"

uid_t
sbx_uid_block_base(int block)
{
    return SBX_UID_BLOCKS_START + (uid_t)block * SBX_UID_BLOCK_SIZE;
}

static int
try_lock(int block, struct sbx_error **err)
{
    char path[64];
    snprintf(path, sizeof(path), LOCK_DIR "/uid-block-%d.lock", block);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return sbx_error_sys(err, errno, "open %s", path);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return -2; /* held by another daemon */
        return sbx_error_sys(err, e, "lock %s", path);
    }
    return fd;
}

/* Whether a process on the host has a real, effective, saved or filesystem uid in block. */
static bool
block_in_use(int block)
{
    uid_t lo = sbx_uid_block_base(block), hi = lo + SBX_UID_BLOCK_SIZE - 1;
    DIR *d = opendir("/proc");
    if (d == NULL)
        return true; /* cannot tell: do not take it */
    bool used = false;
    struct dirent *e;
    while (!used && (e = readdir(d)) != NULL) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char path[300], buf[4096];
        snprintf(path, sizeof(path), "/proc/%s/status", e->d_name);
        if (sbx_fs_read_small(path, buf, sizeof(buf)) < 0)
            continue; /* gone */
        const char *u = strstr(buf, "\nUid:");
        unsigned long ids[4];
        if (u == NULL || sscanf(u + 5, "%lu %lu %lu %lu", &ids[0], &ids[1], &ids[2], &ids[3]) != 4)
            continue;
        for (int i = 0; i < 4; i++)
            used |= ids[i] >= lo && ids[i] <= hi;
    }
    closedir(d);
    return used;
}

int
sbx_uid_block_claim(int preferred, bool must_keep, int *block, struct sbx_error **err)
{
    /* 0711: sandboxes set up their /proc from lxcfs below it (lxcfs.c); nobody lists it. */
    if ((mkdir(LOCK_DIR, 0711) < 0 && errno != EEXIST) || chmod(LOCK_DIR, 0711) < 0)
        return sbx_error_sys(err, errno, "mkdir " LOCK_DIR);
    if (preferred >= 0 && preferred < SBX_UID_BLOCKS) {
        int fd = try_lock(preferred, err);
        if (fd == -1)
            return -1;
        if (fd >= 0) {
            *block = preferred;
            return fd;
        }
        if (must_keep)
            return sbx_error_set(
                err, SBX_FAILED_PRECONDITION, 0,
                "host uids %u-%u, which this state dir's sandboxes (running or paused) use, "
                "are taken by another sbx daemon on this host",
                (unsigned)sbx_uid_block_base(preferred),
                (unsigned)(sbx_uid_block_base(preferred) + SBX_UID_BLOCK_SIZE - 1));
    }
    for (int b = 0; b < SBX_UID_BLOCKS; b++) {
        if (b == preferred)
            continue;
        int fd = try_lock(b, err);
        if (fd == -1)
            return -1;
        if (fd < 0)
            continue;
        if (block_in_use(b)) {
            close(fd); /* the sandboxes of a stopped daemon still run there */
            continue;
        }
        *block = b;
        return fd;
    }
    return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0,
                         "every host uid block (%d) is taken by another sbx daemon or by the "
                         "sandboxes of one that stopped",
                         SBX_UID_BLOCKS);
}
