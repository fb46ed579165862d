/* Child side of the mount setup: runs in the sandbox's fresh mount namespace as sandbox
 * root, before pivot_root. Each function is one step of the checklist in spawn.c; on
 * failure it returns -1 with errno set and names what it was doing in *step. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sandbox/internal.h"

#define PROC_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC)

static char step_buf[160]; /* the child's error context; the child is single-threaded */

static int
fail(const char **step, const char *fmt, const char *arg)
{
    int e = errno;
    sbx_pathf(step_buf, sizeof(step_buf), fmt, arg); /* a cut message is still useful */
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
        return fail(step, "%smake / private", "");
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
        return fail(step, "%spivot_root", "");
    if (umount2(".", MNT_DETACH) < 0)
        return fail(step, "%sdetach old root", "");
    if (chdir("/") < 0)
        return fail(step, "%schdir /", "");
    return 0;
}
