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
 * wake-ups and kept mounts (below), each named by a plain name of ours in disks/kept/. What it has
 * not removed when it or we die stays in trash, and the next sweeper removes it.
 *
 * A sandbox dir in trash that holds only what every sandbox dir does goes, while there is
 * room, to the stock of ready sandbox dirs that creates take, its disk image reset to the
 * blank's bytes (sbx_sandbox_trash_empty, sbx_disk_stock_recycle in disk.c): creating and deleting
 * those inodes cost more than the copy. At each wake-up the sweeper also refills that stock with
 * new dirs (sbx_disk_stock_refill) if it runs low.
 *
 * A sandbox's disk stays mounted after it (disk.c, "a mounted disk, kept for the next
 * sandbox"): we hold the detached mount of each running sandbox's disk (struct sb's disk_fd).
 * At its destroy its dir goes to <disks>/kept/ and the mount to the sweeper (SWEEP_RESET); the
 * sweeper empties it (sbx_sandbox_kept_reset) and hands it back (SWEEP_READY), or moves the dir
 * to trash and says so (SWEEP_GONE). A create of the same disk size takes a kept dir with its
 * mount first (sbx_spawner_kept_take). Dirs in kept/ we hold no mount of (an earlier spawner's or
 * sweeper's) go to trash whenever a sweeper starts. The fds are passed over a socketpair
 * instead of the pipe a wake-up alone needed. */
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
#include "base/fdpass.h"
#include "base/log.h"
#include "spawner/internal.h"

#define TRASH_DIR "trash"
#define KEPT_DIR  "kept" /* in the disks dir */
#define KEPT_MAX  32     /* kept mounts, held here or with the sweeper */

/* What a sandbox dir holds besides its rootfs and disk: the spawner's files, emptied for its
 * next sandbox. */
static const char *const sb_files[] = {SB_SLOT, SB_LAYERS, SB_AGENT_SOCK, NULL};

/* A datagram between us and the sweeper; RESET, DROP and READY carry the mount's fd. */
enum { SWEEP_WAKE, SWEEP_RESET, SWEEP_DROP, SWEEP_READY, SWEEP_GONE };
struct sweep_msg {
    uint32_t kind;
    char name[32];  /* of the dir in kept/ */
    uint64_t bytes; /* READY: its disk's size */
};

struct kept {
    char name[32];
    int fd;
    uint64_t bytes;
};

static struct {
    char *dir;       /* <state>/trash */
    char *disks;     /* <state>/disks */
    int sock;        /* our end of the sweeper's socketpair; -1: no sweeper */
    uv_poll_t *poll; /* on sock: READY and GONE */
    pid_t pid;       /* the sweeper */
    uint64_t n;      /* names made unique within this spawner */
    struct kept ready[KEPT_MAX];
    size_t n_ready, n_out; /* kept mounts held here, and with the sweeper */
} sw = {.sock = -1};

/* The spawner has sent something, or closed its end of the socket. */
static bool
spawner_calls(int sock)
{
    struct pollfd p = {.fd = sock, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

/* Moves name from the dir kept to trash, under a name of its own there. */
static void
kept_to_trash(int kept, int trash, const char *name)
{
    char to[320];
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    snprintf(to, sizeof(to), "kept-%s.%lld.%09ld", name, (long long)t.tv_sec, t.tv_nsec);
    (void)renameat(kept, name, trash, to); /* failing, it waits for the next sweeper */
}

/* A RESET or DROP: the mount goes back emptied (READY), or its dir to trash (GONE). */
static void
sweeper_kept(int sock, int trash, int disks, const struct sweep_msg *m, int fd)
{
    _cleanup_close_ int kept =
        openat(disks, KEPT_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct sweep_msg r = {.kind = SWEEP_GONE};
    memcpy(r.name, m->name, sizeof(r.name));
    r.name[sizeof(r.name) - 1] = '\0';
    bool ok = false;
    if (r.name[0] == '\0' || r.name[0] == '.' || strchr(r.name, '/') != NULL) {
        if (fd >= 0)
            close(fd);
        return; /* not a name of ours */
    }
    if (kept >= 0 && m->kind == SWEEP_RESET && fd >= 0) {
        _cleanup_error_ struct sbx_error *err = NULL;
        int rc = sbx_sandbox_kept_reset(kept, r.name, disks, fd, sb_files, &r.bytes, &err);
        if (rc < 0)
            sbx_log_warn("disk_kept", "name=%s error=\"%s\"", r.name, err->msg);
        r.kind = SWEEP_READY;
        ok = rc == 1 && sbx_send_fds(sock, &r, sizeof(r), &fd, 1) == 0;
    }
    /* Our copy goes either way: with READY the spawner holds the mount now. Otherwise this is
     * the last fd of it and closing it unmounts the disk (here, off the spawner's thread). */
    if (fd >= 0)
        close(fd);
    if (ok)
        return;
    if (kept >= 0)
        kept_to_trash(kept, trash, r.name);
    if (m->kind == SWEEP_RESET) {
        r.kind = SWEEP_GONE;
        (void)sbx_send_fds(sock, &r, sizeof(r), NULL, 0);
    }
}

/* Every datagram queued, the first waited for: false once the spawner is gone. */
static bool
sweeper_read(int sock, int trash, int disks)
{
    for (bool first = true;; first = false) {
        if (!first && !spawner_calls(sock))
            return true;
        struct sweep_msg m;
        int fd;
        ssize_t n = sbx_recv_fds_upto(sock, &m, sizeof(m), &fd, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        if (n == (ssize_t)sizeof(m) && (m.kind == SWEEP_RESET || m.kind == SWEEP_DROP))
            sweeper_kept(sock, trash, disks, &m, fd);
        else if (fd >= 0)
            close(fd);
    }
}

__attribute__((noreturn)) static void
sweeper_main(int sock, int trash, int disks)
{
    prctl(PR_SET_NAME, "sbx-sweeper");
    /* It dies with the spawner's end of the socket (EOF below), not with the signals the
     * supervisor sends the spawner's process group. */
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGIO, SIG_IGN); /* a lease broken (sbx_disk_stock_recycle holds one a moment) */
    /* Background work: creates and commands come first. */
    (void)setpriority(PRIO_PROCESS, 0, 10);
    for (;;) {
        bool alive = sweeper_read(sock, trash, disks);
        sbx_sandbox_trash_empty(trash, disks, sb_files);
        if (!alive)
            _exit(0); /* the spawner is gone; what is left waits for the next sweeper */
        /* A copy at a time, until none is missing or the spawner calls: a kept disk to
         * empty comes first, and at its exit it waits for us. A failure leaves creates to copy
         * the blank themselves. */
        int rc = 0;
        _cleanup_error_ struct sbx_error *err = NULL;
        while (!spawner_calls(sock) && (rc = sbx_disk_stock_refill(disks, &err)) > 0)
            ;
        if (rc < 0)
            sbx_log_warn("disk_stock", "error=\"%s\"", err->msg);
    }
}

/* ---- our side ---- */

static void
on_poll_closed(uv_handle_t *h)
{
    free(h);
}

static void sweeper_lost(void);
static bool sweeper_send(const struct sweep_msg *m, int fd);

/* READY and GONE from the sweeper. */
static void
on_sweeper(uv_poll_t *h, int status, int events)
{
    for (;;) {
        struct sweep_msg m;
        int fd;
        ssize_t n = sbx_recv_fds_upto(sw.sock, &m, sizeof(m), &fd, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0 || status < 0) {
            sweeper_lost(); /* it died: the next poke starts another */
            return;
        }
        bool ready = n == (ssize_t)sizeof(m) && m.kind == SWEEP_READY && fd >= 0;
        if (n == (ssize_t)sizeof(m) && (m.kind == SWEEP_READY || m.kind == SWEEP_GONE) &&
            sw.n_out > 0)
            sw.n_out--;
        if (ready && sw.n_ready < KEPT_MAX) {
            struct kept *k = &sw.ready[sw.n_ready++];
            memcpy(k->name, m.name, sizeof(k->name));
            k->name[sizeof(k->name) - 1] = '\0';
            k->fd = fd;
            k->bytes = m.bytes;
        } else if (fd >= 0) {
            close(fd); /* cannot happen: we count what we give out */
        }
    }
}

/* Kept dirs we hold no mount of go to trash: an earlier spawner's, or those the sweeper that
 * died had. */
static void
kept_orphans_to_trash(int disks, int trash)
{
    if (mkdirat(disks, KEPT_DIR, 0700) < 0 && errno != EEXIST)
        return;
    _cleanup_close_ int kept =
        openat(disks, KEPT_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int fd = kept < 0 ? -1 : dup(kept);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        return;
    }
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        bool held = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
        for (size_t i = 0; !held && i < sw.n_ready; i++)
            held = strcmp(e->d_name, sw.ready[i].name) == 0;
        if (!held)
            kept_to_trash(kept, trash, e->d_name);
    }
    closedir(d);
    sw.n_out = 0;
}

/* Forks a sweeper, woken once at once for what an earlier one left. */
static int
sweeper_start(struct sbx_error **err)
{
    _cleanup_close_ int trash = sbx_fs_open_private_dir(sw.dir, err);
    _cleanup_close_ int disks = trash < 0 ? -1 : sbx_fs_open_private_dir(sw.disks, err);
    if (disks < 0)
        return -1;
    kept_orphans_to_trash(disks, trash);
    int p[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, p) < 0)
        return sbx_error_sys(err, errno, "socketpair");
    pid_t pid = fork();
    if (pid == 0) {
        /* Nothing of ours but its socket, trash and disks: the channel, pidfds, sockets and
         * the disks we keep mounted go.
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
    sw.sock = p[1];
    sw.pid = pid;
    sw.poll = calloc(1, sizeof(*sw.poll));
    if (sw.poll == NULL || uv_poll_init(sbx_spawner_loop(), sw.poll, sw.sock) < 0)
        abort(); /* a fresh fd of ours: cannot be watched already */
    uv_poll_start(sw.poll, UV_READABLE, on_sweeper);
    (void)sweeper_send(&(struct sweep_msg){.kind = SWEEP_WAKE}, -1); /* an empty socket */
    return 0;
}

/* Sends m (and fd) to the sweeper: false if it cannot take it now. */
static bool
sweeper_send(const struct sweep_msg *m, int fd)
{
    if (sw.sock < 0) {
        errno = EPIPE;
        return false;
    }
    return sbx_send_fds(sw.sock, m, sizeof(*m), &fd, fd >= 0) == 0;
}

static void
sweeper_lost(void)
{
    if (sw.poll) {
        uv_poll_stop(sw.poll);
        uv_close((uv_handle_t *)sw.poll, on_poll_closed);
        sw.poll = NULL;
    }
    if (sw.sock >= 0)
        close(sw.sock);
    sw.sock = -1;
}

void
sbx_spawner_sweep_poke(void)
{
    if (sweeper_send(&(struct sweep_msg){.kind = SWEEP_WAKE}, -1) || errno == EAGAIN)
        return; /* a full socket already holds wake-ups */
    /* EPIPE: it died (reaped by sbx_spawner_sweep_reap), or an earlier restart failed; a new
     * one takes over, and empties all of trash. */
    sweeper_lost();
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
    sweeper_lost();
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

/* <disks>/kept/name into path; false if it does not fit. */
static bool
kept_path(char (*path)[4096], const char *name)
{
    return snprintf(*path, sizeof(*path), "%s/" KEPT_DIR "/%s", sw.disks, name) <
           (int)sizeof(*path);
}

/* Gives the sweeper the mount fd of kept/name to empty (RESET) or to let go of (DROP). */
static void
kept_send(uint32_t kind, const char *name, int fd)
{
    struct sweep_msg m = {.kind = kind};
    snprintf(m.name, sizeof(m.name), "%s", name);
    if (sweeper_send(&m, fd)) {
        sw.n_out += kind == SWEEP_RESET;
        close(fd); /* the datagram holds it */
        return;
    }
    /* No sweeper to take it now: the last close unmounts the disk here, this once, and the
     * dir goes to trash. */
    close(fd);
    char from[4096];
    _cleanup_error_ struct sbx_error *err = NULL;
    if (!kept_path(&from, name) || sbx_spawner_sweep(from, name, &err) < 0)
        sbx_log_warn("disk_kept", "name=%s error=\"%s\"", name, err ? err->msg : "path");
}

int
sbx_spawner_kept_take(uint64_t bytes, const char *dir, int *fd)
{
    for (size_t i = sw.n_ready; i-- > 0;) {
        struct kept *k = &sw.ready[i];
        char from[4096];
        if (k->bytes != bytes || !kept_path(&from, k->name))
            continue;
        /* NOREPLACE: the sandbox's dir must not exist yet. */
        int rc = renameat2(AT_FDCWD, from, AT_FDCWD, dir, RENAME_NOREPLACE);
        if (rc < 0 && errno == EEXIST)
            return 0;
        struct kept taken = *k;
        memmove(k, k + 1, (--sw.n_ready - i) * sizeof(*k));
        if (rc < 0) { /* its dir is gone: of no use */
            kept_send(SWEEP_DROP, taken.name, taken.fd);
            continue;
        }
        *fd = taken.fd;
        return 1;
    }
    return 0;
}

int
sbx_spawner_sweep_kept(const char *dir, const char *id, int fd, bool reuse, struct sbx_error **err)
{
    char name[32], to[4096];
    snprintf(name, sizeof(name), "k%llu", (unsigned long long)sw.n++);
    if (!kept_path(&to, name) || rename(dir, to) < 0) {
        close(fd);
        return sbx_spawner_sweep(dir, id, err);
    }
    if (reuse && sw.n_ready + sw.n_out >= KEPT_MAX && sw.n_ready > 0) {
        struct kept old = sw.ready[0]; /* the one kept longest goes (creates take the newest) */
        memmove(&sw.ready[0], &sw.ready[1], --sw.n_ready * sizeof(sw.ready[0]));
        kept_send(SWEEP_DROP, old.name, old.fd);
    }
    kept_send(reuse && sw.n_ready + sw.n_out < KEPT_MAX ? SWEEP_RESET : SWEEP_DROP, name, fd);
    return 0;
}
