/* lxcfs: a FUSE filesystem (Debian package lxcfs, used by LXC and Incus) whose /proc files
 * answer for the cgroup of the process that reads them. Bind-mounted over a sandbox's
 * /proc/meminfo, cpuinfo, stat, uptime, loadavg, diskstats and swaps, they show the
 * sandbox's own memory limit, CPU quota, uptime and load: the JVM, Node, Python's
 * multiprocessing and `free` size themselves to the sandbox, not to the host.
 *
 * One lxcfs serves every sandbox on the host: the system's own (/var/lib/lxcfs, as Debian's
 * lxcfs.service mounts it), or one started here at /run/sbx/lxcfs, left running when sbx
 * stops, since sandboxes outlive the daemon. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/internal.h"

#define FUSE_SUPER_MAGIC 0x65735546
#define OWN_DIR          "/run/sbx/lxcfs"

const char *const sbx_lxcfs_files[] = {"cpuinfo", "diskstats", "loadavg", "meminfo",
                                       "stat",    "swaps",     "uptime",  NULL};

/* Whether dir is an lxcfs that answers. */
static bool
serving(const char *dir)
{
    char p[256];
    struct statfs sf;
    snprintf(p, sizeof(p), "%s/proc/meminfo", dir);
    if (statfs(dir, &sf) < 0 || sf.f_type != FUSE_SUPER_MAGIC)
        return false;
    char buf[64];
    return sbx_fs_read_small(p, buf, sizeof(buf)) > 0 && strncmp(buf, "MemTotal:", 9) == 0;
}

int
sbx_sandbox_lxcfs(char *dir, size_t n, struct sbx_error **err)
{
    static const char *const known[] = {"/var/lib/lxcfs", OWN_DIR};
    for (size_t i = 0; i < 2; i++) {
        if (serving(known[i])) {
            snprintf(dir, n, "%s", known[i]);
            return 0;
        }
    }
    if (access("/usr/bin/lxcfs", X_OK) < 0)
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                             "lxcfs is not installed (apt-get install lxcfs): sandboxes see the "
                             "host's memory and CPUs in /proc");
    /* Ours, but its lxcfs is gone (killed: the mount answers ENOTCONN): a new one cannot
     * mount over it. Sandboxes started on the dead one keep failing reads of those files
     * until they are restarted; new ones get the new lxcfs. */
    struct statfs sf;
    if (statfs(OWN_DIR, &sf) < 0 ? errno == ENOTCONN : sf.f_type == FUSE_SUPER_MAGIC)
        umount2(OWN_DIR, MNT_DETACH);
    if ((mkdir("/run/sbx", 0711) < 0 && errno != EEXIST) || chmod("/run/sbx", 0711) < 0 ||
        (mkdir(OWN_DIR, 0755) < 0 && errno != EEXIST))
        return sbx_error_sys(err, errno, "mkdir " OWN_DIR);
    /* Detached (a session of its own, orphaned at once) so that it outlives us; its chatter
     * goes to /dev/null. -l and --enable-cfs: load averages and CPU counts per cgroup too. */
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null < 0 || setsid() < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0)
            _exit(1);
        if (fork() != 0)
            _exit(0);
        execl("/usr/bin/lxcfs", "lxcfs", "-f", "-l", "--enable-cfs", "--enable-pidfd", "-p",
              "/run/sbx/lxcfs.pid", OWN_DIR, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0, "lxcfs did not start on " OWN_DIR);
    for (int i = 0; i < 500 && !serving(OWN_DIR); i++)
        usleep(20000);
    if (!serving(OWN_DIR))
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                             "lxcfs on " OWN_DIR " does not answer");
    snprintf(dir, n, "%s", OWN_DIR);
    return 0;
}
