/* Per-sandbox cgroups, two backends chosen at run time with statfs(2):
 *  - v2 (unified): /sys/fs/cgroup/sbx/<id> with memory.max, memory.swap.max=0, pids.max,
 *    cpu.max and, where the host offers the controller, cpuset.cpus; the controllers are
 *    enabled in subtree_control of / and /sbx.
 *  - v1 or hybrid (this project's dev VMs): /sys/fs/cgroup/<ctrl>/sbx/<id> for memory, pids,
 *    cpu and cpuacct (which may share one hierarchy, "cpu,cpuacct"), freezer and cpuset.
 * Memory limits include swap (memsw / swap.max) so that swap cannot bypass them. A sandbox
 * is set up at the lowest CPU weight (cpu.shares / cpu.weight) and gets the default weight
 * when its agent runs (sbx_cgroup_set_running): the setup of new sandboxes, each in a group
 * of its own, would otherwise compete with every live sandbox as an equal. A sandbox
 * whose CPU quota is less than the host's CPUs also gets a cpuset of that many CPUs (see
 * sbx_cgroup_cpus). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/magic.h>

#include "base/util.h"
#include "sandbox/internal.h"

#define CG_ROOT   "/sys/fs/cgroup"
#define CG_PARENT "sbx" /* every sandbox cgroup lives below this one */

/* The layout cannot change under a running process, and every spawn and destroy asks for it
 * a dozen times: read once. */
static pthread_once_t layout_once = PTHREAD_ONCE_INIT;
static enum sbx_cgroup_layout host_layout = SBX_CGROUP_NONE;

static void
read_layout(void)
{
    struct statfs sf;
    if (statfs(CG_ROOT, &sf) == 0 && sf.f_type == CGROUP2_SUPER_MAGIC)
        host_layout = SBX_CGROUP_V2;
    else if (statfs(CG_ROOT "/memory", &sf) == 0 && sf.f_type == CGROUP_SUPER_MAGIC)
        host_layout = SBX_CGROUP_V1;
}

enum sbx_cgroup_layout
sbx_cgroup_detect(void)
{
    pthread_once(&layout_once, read_layout);
    return host_layout;
}

/* The CPUs of a sandbox whose quota is fewer CPUs than the host has: that many, starting
 * at a CPU chosen by its uid block so that sandboxes spread out. As its cpuset and its
 * affinity they make nproc, sched_getaffinity, lxcfs's /proc/cpuinfo and /proc/stat, and the
 * runtimes that size pools from them (the JVM, Go, OpenMP, make -j) see the sandbox's CPUs,
 * not the host's; the quota still limits its CPU time. False when it may use every CPU. */
bool
sbx_cgroup_cpus(const struct sbx_sandbox_plan *plan, cpu_set_t *set)
{
    cpu_set_t online;
    if (plan->limits.cpu_millis == 0 || sched_getaffinity(0, sizeof(online), &online) < 0)
        return false;
    int have = CPU_COUNT(&online);
    int want = (int)((plan->limits.cpu_millis + 999) / 1000);
    if (want >= have)
        return false;
    int cpus[CPU_SETSIZE], n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &online))
            cpus[n++] = c;
    CPU_ZERO(set);
    int first = (int)((plan->host_uid_base / SBX_SANDBOX_UID_COUNT) % (unsigned)n);
    for (int i = 0; i < want; i++)
        CPU_SET(cpus[(first + i) % n], set);
    return true;
}

void
sbx_cpu_list(const cpu_set_t *set, char *out, size_t size)
{
    size_t len = 0;
    out[0] = '\0';
    for (int c = 0; c < CPU_SETSIZE && len + 24 < size; c++) {
        if (!CPU_ISSET(c, set))
            continue;
        int e = c;
        while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, set))
            e++;
        len += (size_t)snprintf(out + len, size - len, e > c ? "%s%d-%d" : "%s%d", len ? "," : "",
                                c, e);
        c = e;
    }
}

/* The controllers every sandbox is limited by, on either layout. */
static const char *const needed[] = {"memory", "pids", "cpu"};
#define N_NEEDED (sizeof(needed) / sizeof(needed[0]))

/* Whether the space-separated list has word as a whole entry. */
static bool
has_word(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\n' || p[n] == '\0'))
            return true;
    return false;
}

int
sbx_cgroup_check(const char **layout, struct sbx_error **err)
{
    char have[512] = "";
    switch (sbx_cgroup_detect()) {
    case SBX_CGROUP_V2:
        *layout = "v2";
        if (sbx_fs_read_small(CG_ROOT "/cgroup.controllers", have, sizeof(have)) < 0)
            return sbx_error_sys(err, errno, "read " CG_ROOT "/cgroup.controllers");
        for (size_t i = 0; i < N_NEEDED; i++) {
            if (!has_word(have, needed[i]))
                return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                                     "cgroup v2: the %s controller is not available in " CG_ROOT
                                     " (controllers: %s)",
                                     needed[i], have);
        }
        return 0;
    case SBX_CGROUP_V1:
        *layout = "v1";
        for (size_t i = 0; i < N_NEEDED; i++) {
            char mnt[128];
            struct statfs sf;
            snprintf(mnt, sizeof(mnt), CG_ROOT "/%s", needed[i]);
            if (statfs(mnt, &sf) < 0 || sf.f_type != CGROUP_SUPER_MAGIC)
                return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                                     "cgroup v1: the %s controller is not mounted at %s", needed[i],
                                     mnt);
        }
        return 0;
    default:
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                             "no cgroup hierarchy at " CG_ROOT " (mount cgroup2 there, or the v1 "
                             "memory, pids and cpu controllers below it)");
    }
}

/* v1 controllers we use; "cpu" and "cpuacct" may be one mounted hierarchy. The freezer sets
 * no limit: membership is what lets freeze.c stop the sandbox's processes. The cpuset group
 * holds the sandbox's CPUs when it gets fewer than the host's; lxcfs also counts a reader's
 * CPUs from the quota of the cpu group at the path of its cpuset group, and the JVM wants a
 * cpuset group to find its limits. */
/* The lowest weights, and the kernel's defaults (for v1 also a group's default). */
#define V1_SETUP_SHARES   "2"
#define V1_RUNNING_SHARES "1024"
#define V2_SETUP_WEIGHT   "1"
#define V2_RUNNING_WEIGHT "100"

static const char *const v1_ctrls[] = {"memory", "pids", "cpu", "cpuacct", "freezer", "cpuset"};
#define N_V1 (sizeof(v1_ctrls) / sizeof(v1_ctrls[0]))
_Static_assert(N_V1 <= SBX_CGROUP_JOIN_MAX, "a join fd for each v1 controller");

/* What the host's v1 hierarchies offer, read once like the layout (each spawn would otherwise
 * stat every mount and probe every dir for its knobs). */
static struct {
    bool mounted[N_V1]; /* the first controller of a distinct mounted hierarchy */
    bool shares[N_V1];  /* its hierarchy has cpu.shares */
    bool quota[N_V1];   /* and cpu.cfs_quota_us (CONFIG_CFS_BANDWIDTH) */
    bool memsw;         /* memory.memsw.limit_in_bytes: the kernel accounts swap */
} v1;
static pthread_once_t v1_once = PTHREAD_ONCE_INIT;

static void
read_v1(void)
{
    struct stat seen[N_V1];
    int nseen = 0;
    for (size_t i = 0; i < N_V1; i++) {
        char mnt[128], knob[160];
        snprintf(mnt, sizeof(mnt), CG_ROOT "/%s", v1_ctrls[i]);
        struct stat st;
        if (stat(mnt, &st) < 0)
            continue;
        bool dup = false;
        for (int j = 0; j < nseen; j++)
            if (seen[j].st_dev == st.st_dev && seen[j].st_ino == st.st_ino)
                dup = true;
        if (dup)
            continue;
        seen[nseen++] = st;
        v1.mounted[i] = true;
        /* A hierarchy's root group has the knobs its children get. */
        snprintf(knob, sizeof(knob), "%s/cpu.shares", mnt);
        v1.shares[i] = access(knob, F_OK) == 0;
        snprintf(knob, sizeof(knob), "%s/cpu.cfs_quota_us", mnt);
        v1.quota[i] = access(knob, F_OK) == 0;
    }
    v1.memsw = access(CG_ROOT "/memory/memory.memsw.limit_in_bytes", F_OK) == 0;
}

/* Fills dirs[] with the distinct cgroup dirs of the sandbox (empty where a controller shares
 * the hierarchy of an earlier one or is not mounted). */
static void
v1_dirs(const char *id, char dirs[N_V1][256], bool parent_only)
{
    pthread_once(&v1_once, read_v1);
    for (size_t i = 0; i < N_V1; i++) {
        dirs[i][0] = '\0';
        if (!v1.mounted[i])
            continue;
        if (parent_only)
            snprintf(dirs[i], 256, CG_ROOT "/%s/" CG_PARENT, v1_ctrls[i]);
        else
            snprintf(dirs[i], 256, CG_ROOT "/%s/" CG_PARENT "/%s", v1_ctrls[i], id);
    }
}

static int
write_at(const char *dir, const char *file, const char *val, struct sbx_error **err)
{
    char path[512];
    if (sbx_pathf(path, sizeof(path), "%s/%s", dir, file) < 0)
        return sbx_error_sys(err, errno, "%s", file);
    if (sbx_fs_write_str(path, val) < 0)
        return sbx_error_sys(err, errno, "write %s=%s", path, val);
    return 0;
}

static bool
exists_at(const char *dir, const char *file)
{
    char path[512];
    if (sbx_pathf(path, sizeof(path), "%s/%s", dir, file) < 0)
        return false;
    return access(path, F_OK) == 0;
}

static int
mkdir_ok(const char *path, struct sbx_error **err)
{
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", path);
    return 0;
}

/* cpuset.cpus of the sandbox's group, when it gets fewer CPUs than the host's. */
static int
write_cpus(const char *dir, const struct sbx_sandbox_plan *plan, struct sbx_error **err)
{
    cpu_set_t set;
    if (!sbx_cgroup_cpus(plan, &set))
        return 0;
    char list[512];
    sbx_cpu_list(&set, list, sizeof(list));
    return write_at(dir, "cpuset.cpus", list, err);
}

/* A new v1 cpuset group has no CPUs or memory nodes, and no task can join it: sbx/ takes the
 * root's once, and with clone_children each sandbox's group starts with sbx/'s. */
static int
v1_cpuset_parent(const char *parent, struct sbx_error **err)
{
    static const char *const files[] = {"cpuset.cpus", "cpuset.mems"};
    char path[512], val[4096];
    for (size_t i = 0; i < 2; i++) {
        if (sbx_pathf(path, sizeof(path), "%s/%s", parent, files[i]) < 0)
            return sbx_error_sys(err, errno, "%s", files[i]);
        if (sbx_fs_read_small(path, val, sizeof(val)) > 1)
            continue;
        snprintf(path, sizeof(path), CG_ROOT "/cpuset/%s", files[i]);
        if (sbx_fs_read_small(path, val, sizeof(val)) < 0)
            return sbx_error_sys(err, errno, "read %s", path);
        if (write_at(parent, files[i], val, err) < 0)
            return -1;
    }
    return write_at(parent, "cgroup.clone_children", "1", err);
}

static int
v1_create(const struct sbx_sandbox_plan *plan, struct sbx_error **err)
{
    const char *id = plan->id;
    const struct sbx_sandbox_limits *lim = &plan->limits;
    char parents[N_V1][256], dirs[N_V1][256];
    v1_dirs(id, parents, true);
    v1_dirs(id, dirs, false);
    char val[64];
    for (size_t i = 0; i < N_V1; i++) {
        if (dirs[i][0] == '\0')
            continue;
        const char *c = v1_ctrls[i];
        /* sbx/ is made (and a cpuset sbx/ given its CPUs) when a sandbox's group finds it
         * missing: at the first spawn, or if something removed it while it was empty. */
        if (mkdir(dirs[i], 0755) < 0 && errno != EEXIST) {
            if (errno != ENOENT)
                return sbx_error_sys(err, errno, "mkdir %s", dirs[i]);
            if (mkdir_ok(parents[i], err) < 0 ||
                (strcmp(c, "cpuset") == 0 && v1_cpuset_parent(parents[i], err) < 0) ||
                mkdir_ok(dirs[i], err) < 0)
                return -1;
        }
        if (strcmp(c, "cpuset") == 0 && write_cpus(dirs[i], plan, err) < 0)
            return -1;
        if (strcmp(c, "memory") == 0 && lim->memory_bytes > 0) {
            snprintf(val, sizeof(val), "%" PRIu64, lim->memory_bytes);
            if (write_at(dirs[i], "memory.limit_in_bytes", val, err) < 0)
                return -1;
            /* memsw = memory + swap; equal to the memory limit means no swap at all.
             * Absent when the kernel runs without swap accounting. */
            if (v1.memsw && write_at(dirs[i], "memory.memsw.limit_in_bytes", val, err) < 0)
                return -1;
        }
        if (strcmp(c, "pids") == 0 && lim->pids_max > 0) {
            snprintf(val, sizeof(val), "%" PRIu32, lim->pids_max);
            if (write_at(dirs[i], "pids.max", val, err) < 0)
                return -1;
        }
        /* The cpu knobs live wherever the cpu controller is, which may be the shared dir. */
        if (v1.shares[i] && write_at(dirs[i], "cpu.shares", V1_SETUP_SHARES, err) < 0)
            return -1;
        if (lim->cpu_millis > 0 && v1.quota[i]) {
            snprintf(val, sizeof(val), "%d", SBX_CPU_PERIOD_US);
            if (write_at(dirs[i], "cpu.cfs_period_us", val, err) < 0)
                return -1;
            snprintf(val, sizeof(val), "%" PRIu64,
                     (uint64_t)lim->cpu_millis * SBX_CPU_PERIOD_US / 1000);
            if (write_at(dirs[i], "cpu.cfs_quota_us", val, err) < 0)
                return -1;
        }
    }
    return 0;
}

static int
v2_create(const struct sbx_sandbox_plan *plan, struct sbx_error **err)
{
    const struct sbx_sandbox_limits *lim = &plan->limits;
    char dir[256], have[512] = "";
    if (mkdir_ok(CG_ROOT "/" CG_PARENT, err) < 0)
        return -1;
    /* Enable controllers for our subtree: at the root (may already be on) and in sbx/.
     * sbx/ itself never holds processes, as the no-internal-process rule requires. The
     * cpuset controller is optional: without it a sandbox still has its quota and affinity. */
    sbx_fs_read_small(CG_ROOT "/cgroup.controllers", have, sizeof(have));
    bool cpuset = has_word(have, "cpuset");
    for (size_t i = 0; i < N_NEEDED + cpuset; i++) {
        char enable[32];
        snprintf(enable, sizeof(enable), "+%s", i < N_NEEDED ? needed[i] : "cpuset");
        if (sbx_fs_write_str(CG_ROOT "/cgroup.subtree_control", enable) < 0 && errno != EBUSY)
            return sbx_error_sys(err, errno, "enable %s in " CG_ROOT, enable);
        if (write_at(CG_ROOT "/" CG_PARENT, "cgroup.subtree_control", enable, err) < 0)
            return -1;
    }
    snprintf(dir, sizeof(dir), CG_ROOT "/" CG_PARENT "/%s", plan->id);
    if (mkdir_ok(dir, err) < 0 || (cpuset && write_cpus(dir, plan, err) < 0))
        return -1;
    char val[64];
    if (lim->memory_bytes > 0) {
        snprintf(val, sizeof(val), "%" PRIu64, lim->memory_bytes);
        if (write_at(dir, "memory.max", val, err) < 0)
            return -1;
        if (exists_at(dir, "memory.swap.max") && write_at(dir, "memory.swap.max", "0", err) < 0)
            return -1;
    }
    if (lim->pids_max > 0) {
        snprintf(val, sizeof(val), "%" PRIu32, lim->pids_max);
        if (write_at(dir, "pids.max", val, err) < 0)
            return -1;
    }
    if (write_at(dir, "cpu.weight", V2_SETUP_WEIGHT, err) < 0)
        return -1;
    if (lim->cpu_millis > 0) {
        snprintf(val, sizeof(val), "%" PRIu64 " %d",
                 (uint64_t)lim->cpu_millis * SBX_CPU_PERIOD_US / 1000, SBX_CPU_PERIOD_US);
        if (write_at(dir, "cpu.max", val, err) < 0)
            return -1;
    }
    return 0;
}

int
sbx_cgroup_create(const struct sbx_sandbox_plan *plan, struct sbx_error **err)
{
    switch (sbx_cgroup_detect()) {
    case SBX_CGROUP_V1:
        return v1_create(plan, err) < 0 ? sbx_error_prefix(err, "cgroup v1") : 0;
    case SBX_CGROUP_V2:
        return v2_create(plan, err) < 0 ? sbx_error_prefix(err, "cgroup v2") : 0;
    default:
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0, "no usable cgroup hierarchy");
    }
}

int
sbx_cgroup_set_running(const char *id, struct sbx_error **err)
{
    char dir[256];
    if (sbx_cgroup_detect() == SBX_CGROUP_V2) {
        snprintf(dir, sizeof(dir), CG_ROOT "/" CG_PARENT "/%s", id);
        return write_at(dir, "cpu.weight", V2_RUNNING_WEIGHT, err);
    }
    char dirs[N_V1][256];
    v1_dirs(id, dirs, false);
    for (size_t i = 0; i < N_V1; i++)
        if (dirs[i][0] && v1.shares[i])
            return write_at(dirs[i], "cpu.shares", V1_RUNNING_SHARES, err);
    return 0;
}

/* The sandbox's cgroup dirs, whatever the layout; returns how many. */
static int
all_dirs(const char *id, char dirs[N_V1][256])
{
    int n = 0;
    if (sbx_cgroup_detect() == SBX_CGROUP_V2) {
        snprintf(dirs[0], 256, CG_ROOT "/" CG_PARENT "/%s", id);
        n = 1;
    } else {
        char tmp[N_V1][256];
        v1_dirs(id, tmp, false);
        for (size_t i = 0; i < N_V1; i++)
            if (tmp[i][0])
                memcpy(dirs[n++], tmp[i], 256);
    }
    return n;
}

int
sbx_cgroup_open_join(const char *id, int fds[SBX_CGROUP_JOIN_MAX], struct sbx_error **err)
{
    char dirs[N_V1][256], path[512];
    int n = all_dirs(id, dirs);
    for (int i = 0; i < n; i++) {
        /* v1 "tasks", the child's own thread: see sbx_cgroup_join_self. v2: the dir, for
         * CLONE_INTO_CGROUP. */
        bool v2 = sbx_cgroup_detect() == SBX_CGROUP_V2;
        if (v2)
            snprintf(path, sizeof(path), "%s", dirs[i]);
        else if (sbx_pathf(path, sizeof(path), "%s/tasks", dirs[i]) < 0)
            return -1;
        fds[i] = open(path, (v2 ? O_RDONLY | O_DIRECTORY : O_WRONLY) | O_CLOEXEC);
        if (fds[i] < 0) {
            int e = errno;
            while (i-- > 0)
                close(fds[i]);
            return sbx_error_sys(err, e, "open %s", path);
        }
    }
    return n;
}

int
sbx_cgroup_join_self(const int *fds, int n)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (write(fds[i], "0", 1) != 1)
            rc = -1;
        close(fds[i]);
    }
    return rc;
}

int
sbx_cgroup_views(const char *id, char names[][32], char dirs[][256], int max)
{
    if (sbx_cgroup_detect() == SBX_CGROUP_V2) {
        if (max < 1)
            return 0;
        names[0][0] = '\0';
        snprintf(dirs[0], 256, CG_ROOT "/" CG_PARENT "/%s", id);
        return 1;
    }
    char d[N_V1][256];
    v1_dirs(id, d, false);
    int n = 0;
    for (size_t i = 0; i < N_V1 && n < max; i++) {
        if (d[i][0] == '\0')
            continue;
        snprintf(names[n], 32, "%s", v1_ctrls[i]);
        memcpy(dirs[n++], d[i], 256);
    }
    return n;
}

int
sbx_cgroup_open_oom_events(const char *id)
{
    char path[320];
    if (sbx_cgroup_detect() == SBX_CGROUP_V2)
        snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/memory.events", id);
    else
        snprintf(path, sizeof(path), CG_ROOT "/memory/" CG_PARENT "/%s/memory.oom_control", id);
    return open(path, O_RDONLY | O_CLOEXEC);
}

int
sbx_cgroup_procs(const char *id, pid_t *pids, int max)
{
    char path[320];
    if (sbx_cgroup_detect() == SBX_CGROUP_V2)
        snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/cgroup.procs", id);
    else
        snprintf(path, sizeof(path), CG_ROOT "/memory/" CG_PARENT "/%s/cgroup.procs", id);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    int n = 0, pid;
    while (n < max && fscanf(f, "%d", &pid) == 1)
        pids[n++] = pid;
    fclose(f);
    return n;
}

/* Kills what cgroup.procs lists; returns how many were listed, -1 if the dir is gone. */
static int
kill_listed(const char *dir)
{
    char path[512];
    if (sbx_pathf(path, sizeof(path), "%s/cgroup.procs", dir) < 0)
        return -1;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    int n = 0, pid;
    while (fscanf(f, "%d", &pid) == 1) {
        /* A pid read from cgroup.procs is a member right now; the window for reuse between
         * the read and the kill is tiny and bounded by the pid-ns kill that ran first. */
        kill(pid, SIGKILL);
        n++;
    }
    fclose(f);
    return n;
}

int
sbx_cgroup_drain(const char *id, pid_t reap_pid, int timeout_ms, struct sbx_error **err)
{
    char dirs[N_V1][256];
    int n = all_dirs(id, dirs);
    /* v2 (Linux 5.14+): cgroup.kill SIGKILLs every member at once, including tasks forked
     * while we would be reading cgroup.procs; the loop below then only waits. */
    char kill_path[512];
    if (sbx_cgroup_detect() == SBX_CGROUP_V2 &&
        sbx_pathf(kill_path, sizeof(kill_path), "%s/cgroup.kill", dirs[0]) == 0)
        (void)sbx_fs_write_str(kill_path, "1"); /* absent before 5.14: the loop still kills */
    uint64_t deadline = sbx_now_ms() + (uint64_t)timeout_ms;
    for (bool thawed = false;; thawed = true) {
        if (reap_pid > 0)
            waitpid(reap_pid, NULL, WNOHANG);
        int left = 0;
        for (int i = 0; i < n; i++) {
            int k = kill_listed(dirs[i]);
            if (k > 0)
                left += k;
        }
        if (left == 0)
            return 0;
        /* A paused sandbox's tasks die only once thawed (v1 freezer): after the kill, so
         * that none of them runs again. */
        if (!thawed)
            (void)sbx_sandbox_thaw(id, NULL);
        if (sbx_now_ms() > deadline)
            return sbx_error_set(err, SBX_DEADLINE_EXCEEDED, 0,
                                 "%d processes still in the cgroups of %s", left, id);
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int
sbx_cgroup_remove(const char *id, struct sbx_error **err)
{
    char dirs[N_V1][256];
    int n = all_dirs(id, dirs);
    for (int i = 0; i < n; i++) {
        /* rmdir can briefly see EBUSY while the last exiting task detaches. */
        for (int tries = 0;; tries++) {
            if (rmdir(dirs[i]) == 0 || errno == ENOENT)
                break;
            if (errno != EBUSY || tries > 500)
                return sbx_error_sys(err, errno, "rmdir %s", dirs[i]);
            struct timespec ts = {0, 2 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return 0;
}

/* Reads "key value" lines of a flat-keyed file; returns 0 and *out if key is found. */
static int
read_keyed(const char *dir, const char *file, const char *key, uint64_t *out)
{
    char path[512], line[256];
    if (sbx_pathf(path, sizeof(path), "%s/%s", dir, file) < 0)
        return -1;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t kl = strlen(key);
    int rc = -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ') {
            *out = strtoull(line + kl + 1, NULL, 10);
            rc = 0;
            break;
        }
    }
    fclose(f);
    return rc;
}

static int
read_u64(const char *dir, const char *file, uint64_t *out)
{
    char path[512], buf[64];
    if (sbx_pathf(path, sizeof(path), "%s/%s", dir, file) < 0)
        return -1;
    if (sbx_fs_read_small(path, buf, sizeof(buf)) < 0)
        return -1;
    if (strncmp(buf, "max", 3) == 0) {
        *out = UINT64_MAX;
        return 0;
    }
    *out = strtoull(buf, NULL, 10);
    return 0;
}

int
sbx_cgroup_stats(const char *id, struct sbx_sandbox_stats *out, struct sbx_error **err)
{
    char dir[256];
    if (sbx_cgroup_detect() == SBX_CGROUP_V2) {
        snprintf(dir, sizeof(dir), CG_ROOT "/" CG_PARENT "/%s", id);
        if (access(dir, F_OK) < 0)
            return sbx_error_sys(err, errno, "cgroup %s", dir);
        uint64_t usec = 0;
        read_keyed(dir, "cpu.stat", "usage_usec", &usec);
        out->cpu_usage_ns = usec * 1000;
        read_u64(dir, "memory.current", &out->memory_bytes);
        read_keyed(dir, "memory.stat", "file", &out->memory_cache_bytes);
        read_u64(dir, "memory.max", &out->memory_limit_bytes);
        read_keyed(dir, "memory.events", "oom_kill", &out->oom_kills);
        read_u64(dir, "pids.current", &out->pids_current);
        return 0;
    }
    char dirs[N_V1][256];
    v1_dirs(id, dirs, false);
    for (size_t i = 0; i < N_V1; i++) {
        const char *d = dirs[i];
        if (d[0] == '\0')
            continue;
        if (access(d, F_OK) < 0)
            return sbx_error_sys(err, errno, "cgroup %s", d);
        if (exists_at(d, "cpuacct.usage"))
            read_u64(d, "cpuacct.usage", &out->cpu_usage_ns);
        if (strcmp(v1_ctrls[i], "memory") == 0) {
            read_u64(d, "memory.usage_in_bytes", &out->memory_bytes);
            read_keyed(d, "memory.stat", "cache", &out->memory_cache_bytes);
            read_u64(d, "memory.limit_in_bytes", &out->memory_limit_bytes);
            read_keyed(d, "memory.oom_control", "oom_kill", &out->oom_kills);
        }
        if (strcmp(v1_ctrls[i], "pids") == 0)
            read_u64(d, "pids.current", &out->pids_current);
    }
    return 0;
}
