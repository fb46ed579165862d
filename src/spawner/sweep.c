/* Removing destroyed sandboxes' dirs off the spawner's loop. Unlinking a sandbox's disk image
 * waits for the device when the host filesystem is mounted with `discard` (ext4 discards the
 * freed blocks synchronously): measured ~4.5 ms of blocked I/O per destroy on the development
 * VM, a fifth of the spawner's time under sustained create+kill. A destroy instead renames
 * the dir into <state>/trash (one metadata operation on the same filesystem: the name is
 * free at once, nothing of the sandbox is reachable under sandboxes/ any more), and the
 * sweeper, a child process forked once, empties trash whenever it is poked.
 *
 * The sweeper is host root like us and touches only what it finds in the trash and disks dirs
 * it was given as fds, never following a symlink (sbx_fs_clear_dir). It takes no request but
 * a wake-up byte: nothing it reads names a path. What it has not removed when it or we die
 * stays in trash, and the next sweeper removes it.
 *
 * A sandbox dir in trash that holds only what every sandbox dir does goes, while there is
 * room, to the stock of ready sandbox dirs that creates take, its disk image reset to the
 * blank's bytes (sbx_sandbox_trash_empty, sbx_disk_stock_recycle in disk.c): creating and deleting
 * those inodes cost more than the copy. At each wake-up the sweeper also refills that stock with
 * new dirs (sbx_disk_stock_refill) if it runs low. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "spawner/internal.h"

#define TRASH_DIR "trash"

static struct {
    char *dir;   /* <state>/trash */
    char *disks; /* <state>/disks */
    int poke;    /* write end of the sweeper's pipe; -1: no sweeper */
    pid_t pid;   /* the sweeper */
    uint64_t n;  /* names made unique within this spawner */
} sw = {.poke = -1};

/* The spawner has closed its end of the pipe (what it wrote before may still be there). */
static bool
spawner_gone(int wake)
{
    struct pollfd p = {.fd = wake, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
}

__attribute__((noreturn)) static void
sweeper_main(int wake, int trash, int disks)
{
    prctl(PR_SET_NAME, "sbx-sweeper");
    /* It dies with the spawner's end of the pipe (EOF below), not with the signals the
     * supervisor sends the spawner's process group. */
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGIO, SIG_IGN); /* a lease broken (sbx_disk_stock_recycle holds one a moment) */
    /* Background work: creates and commands come first. */
    (void)setpriority(PRIO_PROCESS, 0, 10);
    for (;;) {
        char buf[256];
        ssize_t n = read(wake, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        static const char *const files[] = {SB_SLOT, SB_LAYERS, SB_AGENT_SOCK, NULL};
        sbx_sandbox_trash_empty(trash, disks, files);
        if (n <= 0)
            _exit(0); /* the spawner is gone; what is left waits for the next sweeper */
        /* A copy at a time, until none is missing or the spawner has gone (it waits for us
         * at its exit). A failure leaves creates to copy the blank themselves. */
        int rc;
        _cleanup_error_ struct sbx_error *err = NULL;
        while ((rc = sbx_disk_stock_refill(disks, &err)) > 0 && !spawner_gone(wake))
            ;
        if (rc < 0)
            sbx_log_warn("disk_stock", "error=\"%s\"", err->msg);
    }
}

/* Forks a sweeper, woken once at once for what an earlier one left. */
static int
sweeper_start(struct sbx_error **err)
{
    _cleanup_close_ int trash = sbx_fs_open_private_dir(sw.dir, err);
    _cleanup_close_ int disks = trash < 0 ? -1 : sbx_fs_open_private_dir(sw.disks, err);
    if (disks < 0)
        return -1;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return sbx_error_sys(err, errno, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        /* Nothing of ours but its pipe, trash and disks: the channel, pidfds and sockets go.
         * All are lifted first, so that no dup2 can clobber another. */
        int w = fcntl(p[0], F_DUPFD, 100), t = fcntl(trash, F_DUPFD, 100),
            k = fcntl(disks, F_DUPFD, 100);
        if (w < 0 || t < 0 || k < 0 || dup2(w, 3) < 0 || dup2(t, 4) < 0 || dup2(k, 5) < 0)
            _exit(1);
        close_range(6, ~0U, 0);
        sweeper_main(3, 4, 5);
    }
    close(p[0]);
    if (pid < 0) {
        close(p[1]);
        return sbx_error_sys(err, errno, "fork the sweeper");
    }
    fcntl(p[1], F_SETFL, O_NONBLOCK);
    sw.poke = p[1];
    sw.pid = pid;
    (void)!write(sw.poke, "", 1); /* an empty pipe: cannot fail */
    return 0;
}

void
sbx_spawner_sweep_poke(void)
{
    if (sw.poke >= 0 && (write(sw.poke, "", 1) == 1 || errno == EAGAIN))
        return; /* a full pipe already holds wake-ups */
    /* EPIPE: it died (reaped by sbx_spawner_sweep_reap), or an earlier restart failed; a new
     * one takes over, and empties all of trash. */
    if (sw.poke >= 0)
        close(sw.poke);
    sw.poke = -1;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sweeper_start(&err) < 0)
        sbx_log_warn("sweeper", "error=\"%s\"", err->msg);
}

int
sbx_spawner_sweep_start(struct sbx_error **err)
{
    if (asprintf(&sw.dir, "%s/" TRASH_DIR, sbx_spawner_state_dir()) < 0 ||
        (sw.disks = strdup(sbx_spawner_disks_dir())) == NULL)
        abort();
    return sweeper_start(err);
}

void
sbx_spawner_sweep_stop(void)
{
    if (sw.poke >= 0)
        close(sw.poke);
    sw.poke = -1;
    if (sw.pid > 0)
        waitpid(sw.pid, NULL, 0);
    sw.pid = 0;
}

void
sbx_spawner_sweep_reap(void)
{
    if (sw.pid > 0 && waitpid(sw.pid, NULL, WNOHANG) == sw.pid)
        sw.pid = 0;
}

int
sbx_spawner_sweep(const char *dir, const char *id, struct sbx_error **err)
{
    char to[4096];
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    /* Unique across spawners too: an id may come again while its old dir waits here. */
    if (snprintf(to, sizeof(to), "%s/%s.%lld.%09ld.%llu", sw.dir, id, (long long)t.tv_sec,
                 t.tv_nsec, (unsigned long long)sw.n++) >= (int)sizeof(to))
        return sbx_error_set(err, SBX_INTERNAL, ENAMETOOLONG, "trash path");
    if (rename(dir, to) < 0)
        return errno == ENOENT ? 0 : sbx_error_sys(err, errno, "move %s to %s", dir, to);
    sbx_spawner_sweep_poke();
    return 0;
}
