/* Child side of the mount setup: runs in the sandbox's fresh mount namespace as sandbox
 * root, before pivot_root. Each function is one step of the checklist in spawn.c; on
 * failure it returns -1 with errno set and names what it was doing in *step. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <linux/openat2.h>
#include <unistd.h>

#include "sandbox/internal.h"

#define PROC_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC)

static char step_buf[160]; /* the child's error context; the child is single-threaded */

static int fail(const char **step, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
fail(const char **step, const char *fmt, ...)
{
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(step_buf, sizeof(step_buf), fmt, ap); /* a cut message is still useful */
    va_end(ap);
    *step = step_buf;
    errno = e;
    return -1;
}

/* The paths below newroot are short and fixed; newroot itself was length-checked. */
static void
join(char *out, size_t cap, const char *root, const char *rel)
{
    if (sbx_pathf(out, cap, "%s/%s", root, rel) < 0)
        out[0] = '\0'; /* an empty path makes the following call fail with ENOENT */
}

int
child_mount_private(const char **step)
{
    /* Our copy of the host's mount table must neither receive nor send propagation events:
     * nothing we mount may appear on the host, and host mounts must not appear here. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return fail(step, "make / private");
    return 0;
}

int
child_attach_rootfs(const char *newroot, int root_fd, const char **step)
{
    if (move_mount(root_fd, "", AT_FDCWD, newroot, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        return fail(step, "attach root overlay at %s", newroot);
    return 0;
}

/* Docker's (runc's) masked and read-only /proc paths: kernel memory, host keys, timers and
 * scheduler details of other tenants, magic SysRq, and the sysctl tree (read-only, because
 * most entries are host-global even in a namespace). */
static const char *const proc_masked_files[] = {
    "kcore",    "keys",       "latency_stats", "timer_list",  "timer_stats", "sched_debug",
    "kallsyms", "kpagecount", "kpageflags",    "kpagecgroup", "config.gz",
};
static const char *const proc_masked_dirs[] = {"acpi", "asound", "scsi", "driver"};
static const char *const proc_readonly[] = {"sys", "sysrq-trigger", "irq", "bus", "fs"};

int
child_mount_proc(const char *newroot, const char **step)
{
    char proc[4096], p[4096];
    join(proc, sizeof(proc), newroot, "proc");
    /* A new proc instance shows only this pid namespace's processes. */
    if (mount("proc", proc, "proc", PROC_FLAGS, NULL) < 0)
        return fail(step, "mount proc on %s", proc);
    for (size_t i = 0; i < sizeof(proc_masked_files) / sizeof(proc_masked_files[0]); i++) {
        join(p, sizeof(p), proc, proc_masked_files[i]);
        if (access(p, F_OK) < 0)
            continue;
        if (mount("/dev/null", p, NULL, MS_BIND, NULL) < 0)
            return fail(step, "mask /proc/%s", proc_masked_files[i]);
    }
    for (size_t i = 0; i < sizeof(proc_masked_dirs) / sizeof(proc_masked_dirs[0]); i++) {
        join(p, sizeof(p), proc, proc_masked_dirs[i]);
        if (access(p, F_OK) < 0)
            continue;
        if (mount("tmpfs", p, "tmpfs", MS_RDONLY | PROC_FLAGS, "size=0,mode=0555") < 0)
            return fail(step, "mask /proc/%s", proc_masked_dirs[i]);
    }
    for (size_t i = 0; i < sizeof(proc_readonly) / sizeof(proc_readonly[0]); i++) {
        join(p, sizeof(p), proc, proc_readonly[i]);
        if (access(p, F_OK) < 0)
            continue;
        if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0)
            return fail(step, "bind /proc/%s", proc_readonly[i]);
        /* The remount must repeat the proc mount's nosuid/nodev/noexec: in a user namespace
         * those flags are locked and dropping them fails with EPERM. */
        if (mount(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | PROC_FLAGS, NULL) < 0)
            return fail(step, "make /proc/%s read-only", proc_readonly[i]);
    }
    return 0;
}

static const char *const dev_nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
static const struct {
    const char *name, *target;
} dev_links[] = {
    {"ptmx", "pts/ptmx"},          {"fd", "/proc/self/fd"},       {"stdin", "/proc/self/fd/0"},
    {"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"},
};

int
child_mount_dev(const char *newroot, const char **step)
{
    char dev[4096], p[4096], src[64];
    join(dev, sizeof(dev), newroot, "dev");
    /* A private /dev: only the harmless character devices are visible. mknod is useless in a
     * user namespace, so the nodes are bind mounts of the host's. */
    if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=256") < 0)
        return fail(step, "mount tmpfs on %s", dev);
    for (size_t i = 0; i < sizeof(dev_nodes) / sizeof(dev_nodes[0]); i++) {
        join(p, sizeof(p), dev, dev_nodes[i]);
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0)
            return fail(step, "create /dev/%s", dev_nodes[i]);
        close(fd);
        sbx_pathf(src, sizeof(src), "/dev/%s", dev_nodes[i]);
        if (mount(src, p, NULL, MS_BIND, NULL) < 0)
            return fail(step, "bind /dev/%s", dev_nodes[i]);
    }
    for (size_t i = 0; i < sizeof(dev_links) / sizeof(dev_links[0]); i++) {
        join(p, sizeof(p), dev, dev_links[i].name);
        if (symlink(dev_links[i].target, p) < 0)
            return fail(step, "symlink /dev/%s", dev_links[i].name);
    }
    join(p, sizeof(p), dev, "pts");
    if (mkdir(p, 0755) < 0)
        return fail(step, "mkdir %s", p);
    /* newinstance: the sandbox's ptys are its own, never the host's. gid 5 is "tty". max:
     * every devpts instance but the host's draws on one host-wide pool (kernel.pty.max less
     * kernel.pty.reserve); without a cap of its own one sandbox could take all of it. */
    char opts[96];
    sbx_pathf(opts, sizeof(opts), "newinstance,ptmxmode=0666,mode=0620,gid=5,max=%d",
              SBX_SANDBOX_PTY_MAX);
    if (mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, opts) < 0)
        return fail(step, "mount devpts on %s", p);
    join(p, sizeof(p), dev, "shm");
    if (mkdir(p, 01777) < 0)
        return fail(step, "mkdir %s", p);
    return 0;
}

int
child_mount_boot_id(const char *newroot, const char **step)
{
    /* The kernel's boot_id is host-wide, not per namespace: every sandbox would read the
     * host's, and a sandbox booted again on its disk after a filesystem-only pause would read
     * the same one as before, where a VM gets a new one at every boot (and programs, E2B's
     * tests among them, tell reboots apart by it). So each boot gets a random one of its own,
     * in a read-only file bound over the kernel's. The file is made on the new /dev tmpfs and
     * unlinked once bound: the mount keeps it. */
    unsigned char r[16];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
        return fail(step, "%sgetrandom for boot_id", "");
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40); /* RFC 4122 version 4, as the kernel's */
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    char uuid[40], src[4096], dst[4096];
    snprintf(uuid, sizeof(uuid),
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14],
             r[15]);
    join(src, sizeof(src), newroot, "dev/.boot_id");
    join(dst, sizeof(dst), newroot, "proc/sys/kernel/random/boot_id");
    int fd = open(src, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0)
        return fail(step, "create %s", src);
    bool written = write(fd, uuid, strlen(uuid)) == (ssize_t)strlen(uuid);
    close(fd);
    if (!written)
        return fail(step, "write %s", src);
    if (mount(src, dst, NULL, MS_BIND, NULL) < 0 ||
        mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | PROC_FLAGS, NULL) < 0)
        return fail(step, "bind a boot_id over %s", dst);
    if (unlink(src) < 0)
        return fail(step, "unlink %s", src);
    return 0;
}

int
child_mount_tmpfs(const char *newroot, uint64_t memory_bytes, const char **step)
{
    /* tmpfs pages are charged to the sandbox's memory cgroup. Each one is capped well below
     * the memory limit (together at 13/16 of it), so that filling them fails with ENOSPC, a
     * message the user can act on, instead of an OOM kill of whatever runs next. */
    static const struct {
        const char *dir, *mode;
        unsigned shift; /* size = memory limit >> shift */
    } t[] = {{"tmp", "1777", 1}, {"dev/shm", "1777", 2}, {"run", "0755", 4}};
    char p[4096], opts[96];
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        join(p, sizeof(p), newroot, t[i].dir);
        if (memory_bytes > 0)
            sbx_pathf(opts, sizeof(opts), "mode=%s,size=%" PRIu64, t[i].mode,
                      memory_bytes >> t[i].shift);
        else
            sbx_pathf(opts, sizeof(opts), "mode=%s", t[i].mode);
        if (mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
            return fail(step, "mount tmpfs on %s", p);
    }
    return 0;
}

int
child_pivot_root(const char *newroot, const char **step)
{
    if (chdir(newroot) < 0)
        return fail(step, "chdir %s", newroot);
    /* pivot_root(".", ".") stacks the old root on top of the new one; detaching it then
     * leaves no path to the host's filesystem (pivot_root(2), "NOTES"). */
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        return fail(step, "pivot_root");
    if (umount2(".", MNT_DETACH) < 0)
        return fail(step, "detach old root");
    if (chdir("/") < 0)
        return fail(step, "chdir /");
    return 0;
}

/* /sys/devices/system/cpu/online lists the CPUs the sandbox may run on (its affinity, set
 * before): glibc's get_nprocs reads it first, so os.cpu_count() and sysconf agree with nproc. */
static int
write_cpu_online(const char *sys)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) < 0)
        return -1;
    char list[512], p[4096];
    sbx_cpu_list(&set, list, sizeof(list) - 1);
    strcat(list, "\n");
    static const char *const dirs[] = {"devices", "devices/system", "devices/system/cpu"};
    for (size_t i = 0; i < 3; i++) {
        join(p, sizeof(p), sys, dirs[i]);
        if (mkdir(p, 0755) < 0)
            return -1;
    }
    join(p, sizeof(p), sys, "devices/system/cpu");
    int dfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    int rc = sbx_fs_write_file_at(dfd, "online", list, strlen(list), 0444);
    if (rc == 0)
        rc = sbx_fs_write_file_at(dfd, "possible", list, strlen(list), 0444);
    close(dfd);
    return rc;
}

int
child_mount_sys(const char *newroot, const char *id, const char **step)
{
    char sys[4096], p[4096], names[6][32], dirs[6][256];
    join(sys, sizeof(sys), newroot, "sys");
    if (mount("sysfs-view", sys, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=0555,size=16k,nr_inodes=64") < 0)
        return fail(step, "mount tmpfs on %s", sys);
    join(p, sizeof(p), sys, "fs");
    if (mkdir(p, 0755) < 0)
        return fail(step, "mkdir %s", p);
    join(p, sizeof(p), sys, "fs/cgroup");
    if (mkdir(p, 0755) < 0)
        return fail(step, "mkdir %s", p);
    int n = sbx_cgroup_views(id, names, dirs, 6);
    char at[4096];
    for (int i = 0; i < n; i++) {
        if (names[i][0]) {
            join(at, sizeof(at), p, names[i]);
            if (mkdir(at, 0555) < 0)
                return fail(step, "mkdir %s", at);
        } else {
            snprintf(at, sizeof(at), "%s", p);
        }
        /* Read-only: the limits are the host's to set. The cgroup namespace (entered
         * before this step) makes the mount show as the root of the hierarchy. */
        if (mount(dirs[i], at, NULL, MS_BIND, NULL) < 0)
            return fail(step, "bind %s", dirs[i]);
        if (mount(NULL, at, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | PROC_FLAGS, NULL) < 0)
            return fail(step, "make %s read-only", at);
    }
    if (write_cpu_online(sys) < 0)
        return fail(step, "write /sys/devices/system/cpu/online");
    if (mount(NULL, sys, NULL, MS_REMOUNT | MS_RDONLY | PROC_FLAGS, "mode=0555") < 0)
        return fail(step, "make %s read-only", sys);
    return 0;
}

int
child_mount_lxcfs(const char *newroot, const char *lxcfs_dir, const char **step)
{
    char src[4096], dst[4096];
    for (size_t i = 0; sbx_lxcfs_files[i]; i++) {
        sbx_pathf(src, sizeof(src), "%s/proc/%s", lxcfs_dir, sbx_lxcfs_files[i]);
        sbx_pathf(dst, sizeof(dst), "%s/proc/%s", newroot, sbx_lxcfs_files[i]);
        if (mount(src, dst, NULL, MS_BIND, NULL) < 0)
            return fail(step, "bind lxcfs %s", src);
    }
    return 0;
}

/* Opens name below dir as a directory, never through a symlink nor out of dir. */
static int
open_dir_beneath(int dir, const char *name)
{
    struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH};
    return (int)syscall(SYS_openat2, dir, name, &how, sizeof(how));
}

/* Attaches the detached mount fd (what: "volume", "agent runtime") at path (absolute) of the
 * sandbox's root, making the missing directories. From the sandbox's own root, one component
 * at a time: a symlink the sandbox left on its disk (a reboot) cannot lead the mount anywhere
 * else. Closes fd. */
static int
attach_beneath(int fd, const char *what, const char *path, const char **step)
{
    char copy[4096];
    if (sbx_pathf(copy, sizeof(copy), "%s", path) < 0) {
        close(fd);
        return fail(step, "%s path %s", what, path);
    }
    int dir = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char *save = NULL;
    for (char *c = strtok_r(copy, "/", &save); c && dir >= 0; c = strtok_r(NULL, "/", &save)) {
        if (mkdirat(dir, c, 0755) < 0 && errno != EEXIST) {
            int e = errno;
            close(dir);
            close(fd);
            errno = e;
            return fail(step, "make the mount point of %s %s", what, path);
        }
        int next = open_dir_beneath(dir, c);
        close(dir);
        dir = next;
    }
    if (dir < 0) {
        close(fd);
        return fail(step, "reach the mount point of %s %s", what, path);
    }
    int rc = move_mount(fd, "", dir, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
    int e = errno;
    close(dir);
    close(fd);
    errno = e;
    return rc < 0 ? fail(step, "mount %s at %s", what, path) : 0;
}

int
child_mount_volumes(const struct sbx_sandbox_plan *plan, const int *fds, const char **step)
{
    for (size_t i = 0; i < plan->n_volumes; i++)
        if (attach_beneath(fds[i], "volume", plan->volumes[i].path, step) < 0)
            return -1;
    return 0;
}

int
child_mount_runtime(int fd, const char **step)
{
    return attach_beneath(fd, "agent runtime", SBX_AGENT_RUNTIME_PATH, step);
}
