/* Running sandboxes: identity checks against pid reuse, pidfds, teardown and counters.
 * A sandbox is identified by its agent's pid plus the start time the kernel recorded for it
 * (field 22 of /proc/<pid>/stat), so a recycled pid is never mistaken for the agent. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "sandbox/internal.h"

/* Reads start time and state letter; -1 with errno if the pid does not exist. */
static int
read_stat(pid_t pid, uint64_t *start, char *state)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (sbx_fs_read_small(path, buf, sizeof(buf)) < 0)
        return -1;
    /* comm (field 2) may contain spaces and ')': fields resume after the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ') {
        errno = EINVAL;
        return -1;
    }
    p += 2; /* field 3, the state */
    if (state)
        *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL) {
            errno = EINVAL;
            return -1;
        }
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

int
sbx_proc_start_time(pid_t pid, uint64_t *out)
{
    return read_stat(pid, out, NULL);
}

/* The pid still names the agent we started (alive or a zombie not yet reaped). */
static bool
is_ours(const struct sbx_sandbox_ref *ref, char *state)
{
    uint64_t st;
    if (ref->pid <= 0 || read_stat(ref->pid, &st, state) < 0)
        return false;
    return st == ref->start_time;
}

bool
sbx_sandbox_is_alive(const struct sbx_sandbox_ref *ref)
{
    char state = 0;
    return is_ours(ref, &state) && state != 'Z' && state != 'X';
}

int
sbx_sandbox_open_pidfd(const struct sbx_sandbox_ref *ref, struct sbx_error **err)
{
    if (ref->pid <= 0)
        return sbx_error_set(err, SBX_NOT_FOUND, ESRCH, "sandbox %s has no process", ref->id);
    int fd = pidfd_open(ref->pid, 0);
    if (fd < 0)
        return sbx_error_sys(err, errno, "pidfd_open %d", (int)ref->pid);
    /* Checked after opening: the pidfd pins whichever process had the pid at open time, and
     * if that one has our start time it is the agent. */
    if (!sbx_sandbox_is_alive(ref)) {
        close(fd);
        return sbx_error_set(err, SBX_NOT_FOUND, ESRCH, "sandbox %s is not running", ref->id);
    }
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        int e = errno;
        close(fd);
        return sbx_error_sys(err, e, "pidfd cloexec");
    }
    return fd;
}

/* Whether the sandbox dir sub holds nothing but its rootfs, its disk image and the
 * spawner's files (regular files and sockets named in files); if so, those are emptied (a
 * socket removed) for the dir's next sandbox. */
static bool
recyclable(int sub, const char *const *files)
{
    _cleanup_close_ int fd = dup(sub);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (d == NULL)
        return false;
    fd = -1; /* the DIR owns it */
    bool ok = true;
    for (struct dirent *e; ok && (e = readdir(d)) != NULL;) {
        const char *n = e->d_name;
        ok = strcmp(n, ".") == 0 || strcmp(n, "..") == 0 || strcmp(n, SBX_ROOTFS_DIR) == 0 ||
             strcmp(n, SBX_DISK_IMAGE) == 0;
        for (size_t i = 0; !ok && files[i]; i++)
            ok = strcmp(n, files[i]) == 0;
    }
    closedir(d);
    for (size_t i = 0; ok && files[i]; i++) {
        struct stat st;
        if (fstatat(sub, files[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
            ok = errno == ENOENT;
        else if (S_ISSOCK(st.st_mode))
            ok = unlinkat(sub, files[i], 0) == 0;
        else if (S_ISREG(st.st_mode)) {
            int f = openat(sub, files[i], O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC);
            ok = f >= 0 && close(f) == 0;
        } else
            ok = false;
    }
    return ok;
}

/* Errors are left for the next round: an entry that cannot go now is retried then. */
void
sbx_sandbox_trash_empty(int trash_fd, int disks_fd, const char *const *files)
{
    _cleanup_close_ int fd = dup(trash_fd);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (d == NULL)
        return;
    fd = -1; /* the DIR owns it */
    rewinddir(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        _cleanup_close_ int sub =
            openat(trash_fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        struct sbx_error *err = NULL;
        int recycled = sub >= 0 && recyclable(sub, files)
                           ? sbx_disk_stock_recycle(disks_fd, sub, trash_fd, e->d_name, &err)
                           : 0;
        if (recycled < 0)
            sbx_log_warn("disk_stock", "error=\"recycle %s: %s\"", e->d_name, err->msg);
        if (recycled != 1)
            sbx_fs_remove_at(trash_fd, e->d_name, NULL);
        sbx_error_free(err);
    }
    closedir(d);
}

int
sbx_sandbox_kept_reset(int kept_fd, const char *name, int disks_fd, int mount_fd,
                       const char *const *files, uint64_t *bytes, struct sbx_error **err)
{
    _cleanup_close_ int sub =
        openat(kept_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0 || !recyclable(sub, files))
        return 0;
    return sbx_disk_mount_reset(disks_fd, sub, mount_fd, bytes, err);
}

/* The last number of the NSpid line of /proc/<pid>/status: its pid in its own namespace. */
static long
inner_pid(pid_t pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if (sbx_fs_read_small(path, buf, sizeof(buf)) < 0)
        return -1;
    const char *line = strstr(buf, "\nNSpid:");
    if (line == NULL)
        return -1;
    const char *end = strchr(line + 1, '\n');
    const char *last = end ? end : line + strlen(line);
    while (last > line && (last[-1] == ' ' || last[-1] == '\t'))
        last--;
    while (last > line && last[-1] >= '0' && last[-1] <= '9')
        last--;
    return strtol(last, NULL, 10);
}

int
sbx_sandbox_find_agent(const char *id, pid_t *pid, uint64_t *start_time, uid_t *uid_base)
{
    pid_t pids[64];
    int n = sbx_cgroup_procs(id, pids, 64);
    for (int i = 0; i < n; i++) {
        if (inner_pid(pids[i]) != 1)
            continue;
        char path[64], map[128];
        snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pids[i]);
        unsigned long inside, outside;
        if (sbx_proc_start_time(pids[i], start_time) < 0 ||
            sbx_fs_read_small(path, map, sizeof(map)) < 0 ||
            sscanf(map, "%lu %lu", &inside, &outside) != 2 || inside != 0)
            return -1;
        *pid = pids[i];
        *uid_base = (uid_t)outside;
        return 0;
    }
    return -1;
}

int
sbx_sandbox_kill(const struct sbx_sandbox_ref *ref)
{
    char state = 0;
    if (!is_ours(ref, &state) || state == 'Z')
        return -1;
    int pfd = pidfd_open(ref->pid, 0);
    /* Re-check with the pidfd pinned, then kill through it: no pid-reuse race. */
    if (pfd >= 0 && !is_ours(ref, &state)) {
        close(pfd);
        return -1;
    }
    if (pfd >= 0) {
        fcntl(pfd, F_SETFD, FD_CLOEXEC);
        syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0);
        /* A paused sandbox's agent dies only once thawed (freeze.c). */
        (void)sbx_sandbox_thaw(ref->id, NULL);
    }
    return pfd;
}

/* Everything of a sandbox but its dir: its processes (waited for) and its cgroups. */
static int
stop_processes(const struct sbx_sandbox_ref *ref, struct sbx_error **err)
{
    pid_t reap = 0;
    char state = 0;
    _cleanup_close_ int pfd = -1;
    if (is_ours(ref, &state)) {
        pfd = pidfd_open(ref->pid, 0);
        /* Re-check with the pidfd pinned, then kill through it: no pid-reuse race.
         * Killing PID 1 of the sandbox makes the kernel kill its whole pid namespace. */
        if (pfd >= 0 && is_ours(ref, &state)) {
            syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0);
            (void)sbx_sandbox_thaw(ref->id, NULL); /* see sbx_sandbox_kill */
        }
        reap = ref->pid; /* our child unless the daemon restarted; waitpid is harmless then */
    }
    int rc = 0;
    /* Also catches processes if the agent was already gone (the pid namespace dies with it,
     * but a wedged exit must not leave the cgroup busy). */
    if (sbx_cgroup_drain(ref->id, reap, SBX_DESTROY_TIMEOUT_MS, err) < 0)
        rc = -1;
    /* An exiting task leaves its cgroup before it is a zombie: wait (bounded) for the agent
     * itself to be gone, so that nothing of the sandbox is still running when we return. */
    if (pfd >= 0)
        poll(&(struct pollfd){.fd = pfd, .events = POLLIN}, 1, SBX_DESTROY_TIMEOUT_MS);
    if (reap > 0)
        waitpid(reap, NULL, WNOHANG);
    if (rc == 0 && sbx_cgroup_remove(ref->id, err) < 0)
        rc = -1;
    return rc;
}

int
sbx_sandbox_stop(const struct sbx_sandbox_ref *ref, struct sbx_error **err)
{
    return stop_processes(ref, err) < 0 ? sbx_error_prefix(err, "stop %s", ref->id) : 0;
}

int
sbx_sandbox_destroy(const struct sbx_sandbox_ref *ref, struct sbx_error **err)
{
    int rc = stop_processes(ref, err);
    /* This also deletes disk.img. By now the sandbox's processes are gone, and with them its
     * mount namespace, the last holder of the image's ext4 mount, so the autoclear loop device
     * has let go and the blocks are freed; if a reference lingers, the unlinked file goes
     * when it does. */
    if (ref->sandbox_dir && ref->sandbox_dir[0] == '/' &&
        sbx_fs_remove_at(AT_FDCWD, ref->sandbox_dir, err) < 0)
        rc = -1;
    return rc < 0 ? sbx_error_prefix(err, "destroy %s", ref->id) : 0;
}

/* What `df /` shows inside the sandbox: statfs of the agent's root, an overlay that answers for
 * its upper layer, the sandbox's own ext4. Only the agent's root is resolved, through its
 * /proc magic link: no name the sandbox controls, and nothing is opened in it. The identity
 * check after the open makes sure the root was the agent's and not a recycled pid's. Left as
 * the image's figures if the agent is gone. */
static void
disk_statfs(const struct sbx_sandbox_ref *ref, struct sbx_sandbox_stats *out)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/root", (int)ref->pid);
    _cleanup_close_ int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    struct statfs s;
    if (fd < 0 || !sbx_sandbox_is_alive(ref) || fstatfs(fd, &s) < 0)
        return;
    out->disk_total_bytes = (uint64_t)s.f_blocks * s.f_frsize;
    out->disk_fs_used_bytes = (uint64_t)(s.f_blocks - s.f_bfree) * s.f_frsize;
}

int
sbx_sandbox_stats(const struct sbx_sandbox_ref *ref, struct sbx_sandbox_stats *out,
                  struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    if (sbx_cgroup_stats(ref->id, out, err) < 0)
        return -1;
    if (sbx_disk_usage(ref->sandbox_dir, &out->disk_used_bytes, &out->disk_total_bytes) == 0) {
        out->disk_fs_used_bytes = out->disk_used_bytes;
        disk_statfs(ref, out);
        return 0;
    }
    /* No disk image: the sandbox's upper layer is a plain directory tree. */
    char p[4096];
    snprintf(p, sizeof(p), "%s/upper", ref->sandbox_dir);
    _cleanup_close_ int fd = open(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0 && sbx_fs_disk_usage(fd, &out->disk_used_bytes, err) < 0)
        return -1;
    return 0;
}

int
sbx_sandbox_preflight(char *desc, size_t n, struct sbx_error **err)
{
    int major = 0, minor = 0;
    if (!sbx_kernel_version(&major, &minor))
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0, "cannot read the kernel version");
    /* 5.19: overlayfs over idmapped layers, the oldest piece the runtime needs. */
    if (major < 5 || (major == 5 && minor < 19))
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                             "Linux %d.%d is too old: sandboxes need 5.19 or later", major, minor);
    const char *layout = NULL;
    if (sbx_cgroup_check(&layout, err) < 0)
        return -1;
    /* Every sandbox's writable layer is an ext4 image on a loop device (disk.c). */
    if (access("/dev/loop-control", R_OK | W_OK) < 0)
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, errno,
                             "/dev/loop-control: %s (load the loop module: modprobe loop)",
                             strerror(errno));
    snprintf(desc, n, "kernel=%d.%d cgroup=%s overlay_layers=%s", major, minor, layout,
             sbx_rootfs_layers_by_fd() ? "fd" : "staged");
    return 0;
}

/* Raises a host-wide sysctl to at least want; appends "name old->new" to desc if it did. */
static int
raise_sysctl(const char *path, const char *name, unsigned long long want, char *desc, size_t n,
             struct sbx_error **err)
{
    char buf[64];
    if (sbx_fs_read_small(path, buf, sizeof(buf)) < 0)
        return sbx_error_sys(err, errno, "read %s", path);
    unsigned long long cur = strtoull(buf, NULL, 10);
    if (cur >= want)
        return 0;
    snprintf(buf, sizeof(buf), "%llu", want);
    if (sbx_fs_write_str(path, buf) < 0)
        return sbx_error_sys(err, errno, "raise %s to %s", name, buf);
    size_t len = strlen(desc);
    snprintf(desc + len, n - len, "%s%s=%llu->%llu", len ? " " : "", name, cur, want);
    return 0;
}

int
sbx_sandbox_raise_host_limits(char *desc, size_t n, struct sbx_error **err)
{
    desc[0] = '\0';
    /* Open files are charged to each sandbox's memory cgroup (the filp cache is
     * memory-accounted), so memory bounds what a sandbox can hold open; the host-wide table
     * must not be the smaller bound, or one sandbox could fill it and every other process on
     * the host would get ENFILE. systemd raises it the same way. */
    if (raise_sysctl("/proc/sys/fs/file-max", "fs.file-max", LONG_MAX, desc, n, err) < 0)
        return -1;
    /* Every devpts instance but the host's draws on kernel.pty.max less kernel.pty.reserve;
     * each sandbox's instance is capped at SBX_SANDBOX_PTY_MAX, so make room for all. */
    unsigned long long ptys = 1024ull + (unsigned long long)SBX_SANDBOX_PTY_MAX * SBX_MAX_SANDBOXES;
    return raise_sysctl("/proc/sys/kernel/pty/max", "kernel.pty.max", ptys, desc, n, err);
}
