/* Spawning a sandbox: one clone(2) from the single-threaded daemon creates the agent as
 * PID 1 in new user, PID, mount, network, IPC and UTS namespaces (the cgroup namespace comes
 * later, once the parent has moved the child into its cgroups).
 *
 * Parent and child meet at numbered sync points over a SOCK_SEQPACKET socketpair:
 *
 *   SYNC_PARENT_READY  parent -> child  maps written, cgroups joined, oom_score_adj and
 *                                       rlimits set; carries the two overlay fds
 *   SYNC_CHILD_EXEC    child -> parent  setup done, seccomp installed, about to exec;
 *                                       the socket then closes on exec (CLOEXEC)
 *   SYNC_CHILD_FAILED  child -> parent  {step, errno}; the child _exits right after
 *
 * The child never returns into daemon code: child_main ends in fexecve or _exit. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <link.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/capability.h>
#include <linux/sched.h> /* struct clone_args, CLONE_INTO_CGROUP */

#include "base/cleanup.h"
#include "base/util.h"
#include "sandbox/internal.h"

enum sync_point {
    SYNC_PARENT_READY = 1,
    SYNC_CHILD_EXEC = 2,
    SYNC_CHILD_FAILED = 3,
};

struct sync_msg {
    uint32_t point;
    int32_t err;
    char step[200];
};

#define DEFAULT_HOSTNAME "sandbox" /* the name the template's /etc/hosts resolves */

/* ------------------------------------------------------------------------------------------
 * Child side. Runs between clone and exec; async-signal-safe in spirit: no sbx_error, no
 * logging, no return into the caller. */

__attribute__((noreturn)) static void
child_fail(int sock, const char *step, int e)
{
    struct sync_msg m = {.point = SYNC_CHILD_FAILED, .err = e};
    snprintf(m.step, sizeof(m.step), "%s", step ? step : "?");
    (void)!send(sock, &m, sizeof(m), MSG_NOSIGNAL);
    _exit(127);
}

static int
step_reset_signals(const char **step)
{
    *step = "reset signals";
    /* Dispositions set to SIG_IGN survive exec (the daemon ignores SIGPIPE): give the agent
     * and everything it starts the defaults, and an empty mask. */
    for (int s = 1; s < NSIG; s++)
        signal(s, SIG_DFL); /* fails harmlessly for SIGKILL, SIGSTOP and RT signals in use */
    sigset_t none;
    sigemptyset(&none);
    return sigprocmask(SIG_SETMASK, &none, NULL);
}

_Static_assert(2 + SBX_SANDBOX_MAX_VOLUMES + SBX_LAYERS_MAX + 1 <= SBX_FDPASS_MAX,
               "SYNC_PARENT_READY carries the root overlay, every volume, the agent runtime and "
               "the mounts the root is made of");

/* Blocks until the parent has written our maps and set our limits. fds: the root overlay,
 * the volumes, the agent runtime if the plan has one, then the mounts the root overlay is made
 * of (struct sbx_rootfs). */
static int
step_wait_parent(int sock, size_t n_fds, int *fds, const char **step)
{
    *step = "wait for parent";
    struct sync_msg m;
    ssize_t n = sbx_recv_fds(sock, &m, sizeof(m), fds, n_fds);
    if (n == 0)
        _exit(127); /* the parent gave up on us */
    if (n != (ssize_t)sizeof(m) || m.point != SYNC_PARENT_READY || fds[0] < 0) {
        errno = n < 0 ? errno : EPROTO;
        return -1;
    }
    return 0;
}

static int
step_become_root(const char **step)
{
    *step = "become sandbox root";
    /* Until now we ran with the daemon's host ids, which are unmapped here: files we would
     * create show up as EOVERFLOW and we would look like "nobody" (environment.md). Groups
     * first, then the supplementary list, uid last while we may still change the others. */
    if (setresgid(0, 0, 0) < 0 || setgroups(0, NULL) < 0 || setresuid(0, 0, 0) < 0)
        return -1;
    return 0;
}

static int
step_cgroup_namespace(const char **step)
{
    *step = "cgroup namespace";
    /* Now that we are in the sandbox's cgroups, they become our namespace's root:
     * /proc/self/cgroup shows "/" and no host cgroup path leaks. */
    return unshare(CLONE_NEWCGROUP);
}

static int
write_etc(const char *name, const char *data)
{
    int dfd = open("/etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    int rc = sbx_fs_write_file_at(dfd, name, data, strlen(data), 0644);
    int e = errno;
    close(dfd);
    errno = e;
    return rc;
}

static int
step_hostname(const char *hostname, const char **step)
{
    *step = "hostname";
    if (sethostname(hostname, strlen(hostname)) < 0)
        return -1;
    if (strcmp(hostname, DEFAULT_HOSTNAME) == 0)
        return 0;
    /* sudo must resolve the hostname ("unable to resolve host"); the template's files name
     * the default one, so write this sandbox's own copies (they land in its upper layer). */
    char hosts[512], name[80];
    snprintf(hosts, sizeof(hosts),
             "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n",
             hostname);
    snprintf(name, sizeof(name), "%s\n", hostname);
    *step = "write /etc/hosts";
    return write_etc("hosts", hosts) < 0 || write_etc("hostname", name) < 0 ? -1 : 0;
}

/* The sandbox's resolver is the gateway (its DNS goes to the daemon's forwarder, which can
 * reach whatever resolver the host uses, a loopback one included). Written to its upper
 * layer, like the hostname's files; no network, no file. */
static int
step_resolver(const struct sbx_sandbox_plan *plan, const char **step)
{
    *step = "write /etc/resolv.conf";
    if (plan->net == NULL)
        return 0;
    char gw[SBX_IP4_STR_MAX], conf[64];
    sbx_ip4_format(sbx_netplan_gateway(&plan->net->plan), gw);
    /* EDNS: answers of up to 1,232 bytes and more in one datagram, not TCP after 512. */
    snprintf(conf, sizeof(conf), "nameserver %s\noptions edns0\n", gw);
    return write_etc("resolv.conf", conf);
}

static int
step_loopback_up(const char **step)
{
    *step = "bring up lo";
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    int e = errno;
    close(s);
    errno = e;
    return rc;
}

/* The sandbox's CPUs as its affinity too: where the host has no cpuset controller (v2) it is
 * what nproc and sched_getaffinity see. */
static int
step_affinity(const struct sbx_sandbox_plan *plan, const char **step)
{
    *step = "cpu affinity";
    cpu_set_t mine;
    if (!sbx_cgroup_cpus(plan, &mine))
        return 0;
    return sched_setaffinity(0, sizeof(mine), &mine);
}

static int
step_rlimits(const char **step)
{
    *step = "rlimits";
    /* No core dumps: they would write sandbox memory to files and cost disk. The parent has
     * already raised the hard NOFILE limit if it could (raising needs host
     * CAP_SYS_RESOURCE); soft = hard, capped at SBX_AGENT_NOFILE. */
    struct rlimit core = {0, 0}, nofile;
    if (setrlimit(RLIMIT_CORE, &core) < 0 || getrlimit(RLIMIT_NOFILE, &nofile) < 0)
        return -1;
    if (nofile.rlim_max > SBX_AGENT_NOFILE)
        nofile.rlim_max = SBX_AGENT_NOFILE;
    nofile.rlim_cur = nofile.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &nofile) < 0)
        return -1;
    return 0;
}

/* Moves an fd out of the 0..4 range so that the dup2s below cannot clobber it. */
static int
lift_fd(int fd)
{
    if (fd < 0)
        return fd;
    return fcntl(fd, F_DUPFD_CLOEXEC, 10);
}

/* The agent's fd table: 0 = agent_stdin_fd or /dev/null, 1 and 2 = /dev/null, 3 = agent_listen_fd,
 * 4 = agent_config_fd, 5 = oom_fd; every other inherited fd (all of the daemon's) is closed at
 * exec. The agent writes no host file: its log stays in its own memory, charged to the sandbox. */
static int
step_fds(const struct sbx_sandbox_plan *plan, int oom_fd, int *sock, int *exe, const char **step)
{
    *step = "set up fds";
    int lsock = lift_fd(*sock), lexe = lift_fd(*exe);
    int llisten = lift_fd(plan->agent_listen_fd), lconf = lift_fd(plan->agent_config_fd),
        loom = lift_fd(oom_fd), lin = plan->agent_stdin_fd > 0 ? lift_fd(plan->agent_stdin_fd) : -1;
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (lsock < 0 || (*exe >= 0 && lexe < 0) || null < 0 || loom < 0 ||
        (plan->agent_listen_fd >= 0 && llisten < 0) || (plan->agent_config_fd >= 0 && lconf < 0) ||
        (plan->agent_stdin_fd > 0 && lin < 0))
        return -1;
    *sock = lsock;
    *exe = lexe;
    int want[6] = {lin >= 0 ? lin : null,     null, null, llisten >= 0 ? llisten : null,
                   lconf >= 0 ? lconf : null, loom};
    for (int i = 0; i < 6; i++)
        if (dup2(want[i], i) < 0) /* dup2 clears FD_CLOEXEC on the target */
            return -1;
    /* Everything above 5 (daemon sockets, the state store, our sync socket, exe_fd) closes
     * when we exec; nothing of the daemon leaks into the sandbox. */
    return close_range(6, ~0U, CLOSE_RANGE_CLOEXEC);
}

static int
step_signal_exec(int sock, const char **step)
{
    *step = "sync exec";
    struct sync_msg m = {.point = SYNC_CHILD_EXEC};
    return send(sock, &m, sizeof(m), MSG_NOSIGNAL) == (ssize_t)sizeof(m) ? 0 : -1;
}

#define STEP(call)                                                                                 \
    do {                                                                                           \
        if ((call) < 0)                                                                            \
            child_fail(sock, step, errno);                                                         \
    } while (0)

static int
step_join_cgroups(const int *fds, int n, const char **step)
{
    *step = "join cgroups";
    return sbx_cgroup_join_self(fds, n);
}

#define RUNTIME_FILE(name) SBX_AGENT_RUNTIME_PATH "/" name

/* Runs the runtime's agent through the runtime's loader (ld.so(8)): the loader and every
 * library come from the runtime, none from the template's root. --library-path is an
 * argument, not LD_LIBRARY_PATH, so what the agent starts uses the image's own libraries;
 * --argv0 keeps the agent's argv as the plan has it. Returns only on failure. */
static void
exec_agent(const struct sbx_sandbox_plan *plan)
{
    char *argv[8 + SBX_SANDBOX_ARGV_MAX] = {RUNTIME_FILE(SBX_AGENT_RUNTIME_LOADER),
                                            "--argv0",
                                            plan->argv[0],
                                            "--library-path",
                                            SBX_AGENT_RUNTIME_PATH,
                                            RUNTIME_FILE(SBX_AGENT_RUNTIME_AGENT)};
    for (size_t i = 1; plan->argv[i]; i++)
        argv[5 + i] = plan->argv[i];
    execve(argv[0], argv, plan->envp ? plan->envp : (char *const[]){NULL});
}

/* join_fds: on v1, the sandbox's cgroup "tasks" files (on v2 the clone put us there). */
__attribute__((noreturn)) static void
child_main(const struct sbx_sandbox_plan *plan, int oom_fd, const int *join_fds, int n_join,
           int sock)
{
    const char *step = "start";
    const char *hostname = plan->hostname && *plan->hostname ? plan->hostname : DEFAULT_HOSTNAME;
    char newroot[4096];
    snprintf(newroot, sizeof(newroot), "%s/rootfs", plan->sandbox_dir);
    int exe = plan->exe_fd;
    int fds[SBX_FDPASS_MAX]; /* see step_wait_parent */
    size_t n_fds = 1 + plan->n_volumes + (plan->agent_runtime != NULL);
    struct sbx_rootfs fs = {.root_fd = -1, .n_held = sbx_rootfs_held(plan)};

    STEP(step_reset_signals(&step));
    STEP(step_join_cgroups(join_fds, n_join, &step));
    STEP(step_wait_parent(sock, n_fds + fs.n_held, fds, &step));
    fs.root_fd = fds[0];
    memcpy(fs.held, fds + n_fds, fs.n_held * sizeof(int));
    STEP(step_become_root(&step));
    STEP(step_cgroup_namespace(&step));
    STEP(child_mount_private(&step));
    STEP(child_attach_rootfs(newroot, fs.root_fd, &step));
    sbx_rootfs_close(&fs);
    STEP(child_mount_proc(newroot, &step));
    if (plan->lxcfs_dir)
        STEP(child_mount_lxcfs(newroot, plan->lxcfs_dir, &step));
    STEP(step_affinity(plan, &step)); /* before /sys, which lists the CPUs it leaves */
    STEP(child_mount_sys(newroot, plan->id, &step));
    STEP(child_mount_dev(newroot, &step));
    STEP(child_mount_boot_id(newroot, &step));
    STEP(child_mount_tmpfs(newroot, plan->limits.memory_bytes, &step));
    STEP(child_pivot_root(newroot, &step));
    STEP(child_mount_volumes(plan, fds + 1, &step)); /* inside the new root: see volume.c */
    if (plan->agent_runtime)
        STEP(child_mount_runtime(fds[1 + plan->n_volumes], &step)); /* on the fresh /run tmpfs */
    STEP(step_hostname(hostname, &step));
    STEP(step_resolver(plan, &step));
    STEP(step_loopback_up(&step));
    STEP(step_rlimits(&step));
    umask(022);
    STEP(step_fds(plan, oom_fd, &sock, &exe, &step));
    STEP(child_caps_drop_bounding(plan->relaxed, &step));
    STEP(child_seccomp_install(plan->relaxed, &step)); /* last: the steps above need denied calls */
    STEP(step_signal_exec(sock, &step));
    if (plan->agent_runtime)
        exec_agent(plan);
    else
        fexecve(exe, plan->argv, plan->envp ? plan->envp : (char *const[]){NULL});
    child_fail(sock, "exec", errno);
}

/* ------------------------------------------------------------------------------------------
 * Parent side. */

static bool
valid_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9')))
            return false;
    return true;
}

static bool
valid_hostname(const char *h)
{
    size_t n = strlen(h);
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') ||
              (h[i] >= '0' && h[i] <= '9') || h[i] == '-' || h[i] == '.'))
            return false;
    return true;
}

static int
validate(const struct sbx_sandbox_plan *p, struct sbx_error **err)
{
    if (!valid_id(p->id))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad sandbox id");
    if (!p->sandbox_dir || p->sandbox_dir[0] != '/' || !p->disks_dir || p->disks_dir[0] != '/')
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "sandbox and disk dirs must be absolute");
    if (p->n_layers == 0 || p->n_layers > SBX_LAYERS_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "a root needs 1 to %d layers",
                             SBX_LAYERS_MAX);
    for (size_t i = 0; i < p->n_layers; i++)
        if (p->layers[i] == NULL || p->layers[i][0] != '/')
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "layer dirs must be absolute");
    if (strlen(p->sandbox_dir) > 3000)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "sandbox dir path too long");
    /* The range must not contain host root or wrap around. */
    if (p->host_uid_base == 0 || p->host_uid_base > UINT32_MAX - SBX_SANDBOX_UID_COUNT)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad host uid base");
    if (p->lxcfs_dir && p->lxcfs_dir[0] != '/')
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "lxcfs dir must be absolute");
    if (p->hostname && *p->hostname && !valid_hostname(p->hostname))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad hostname");
    uint64_t disk = p->limits.disk_bytes;
    if (disk != 0 && (disk < SBX_DISK_MIN_BYTES || disk > SBX_DISK_MAX_BYTES || disk % 4096))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "disk limit must be a multiple of 4 KiB between %llu MiB and "
                             "%llu TiB",
                             SBX_DISK_MIN_BYTES >> 20, SBX_DISK_MAX_BYTES >> 40);
    if ((p->exe_fd < 0) == (p->agent_runtime == NULL) || p->argv == NULL || p->argv[0] == NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "not one program to run");
    size_t argc = 0;
    while (p->argv[argc] && argc <= SBX_SANDBOX_ARGV_MAX)
        argc++;
    if (argc > SBX_SANDBOX_ARGV_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "more than %d arguments",
                             SBX_SANDBOX_ARGV_MAX);
    if (p->agent_runtime && p->agent_runtime[0] != '/')
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "agent runtime must be absolute");
    if (p->n_volumes > SBX_SANDBOX_MAX_VOLUMES)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "more than %d volumes",
                             SBX_SANDBOX_MAX_VOLUMES);
    for (size_t i = 0; i < p->n_volumes; i++)
        if (p->volumes[i].image[0] != '/' || p->volumes[i].path[0] != '/' ||
            strstr(p->volumes[i].path, "/..") != NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad volume mount %s",
                                 p->volumes[i].path);
    if (p->net && (p->net_slot < 0 || p->net_slot >= SBX_MAX_SANDBOXES))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad network slot");
    return 0;
}

static int
write_maps(pid_t pid, uid_t base, struct sbx_error **err)
{
    char path[64], map[64];
    snprintf(map, sizeof(map), "0 %u %u\n", (unsigned)base, (unsigned)SBX_SANDBOX_UID_COUNT);
    snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
    if (sbx_fs_write_str(path, map) < 0)
        return sbx_error_sys(err, errno, "write uid_map");
    /* setgroups stays "allow": sudo and su must set supplementary groups inside, and with a
     * full 65536-id map there is no unmapped group a process could drop to gain access. */
    snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
    if (sbx_fs_write_str(path, map) < 0)
        return sbx_error_sys(err, errno, "write gid_map");
    return 0;
}

/* Both writes need CAP_SYS_RESOURCE. Hosts (or containers running the daemon) without it
 * still get working sandboxes: the agent keeps the daemon's oom_score_adj and NOFILE hard
 * limit. */
static int
set_process_limits(pid_t pid, struct sbx_error **err)
{
    char path[64], val[16];
    snprintf(path, sizeof(path), "/proc/%d/oom_score_adj", (int)pid);
    snprintf(val, sizeof(val), "%d", SBX_AGENT_OOM_SCORE_ADJ);
    if (sbx_fs_write_str(path, val) < 0 && errno != EACCES)
        return sbx_error_sys(err, errno, "write oom_score_adj");
    struct rlimit nofile = {SBX_AGENT_NOFILE, SBX_AGENT_NOFILE};
    if (prlimit(pid, RLIMIT_NOFILE, &nofile, NULL) < 0 && errno != EPERM)
        return sbx_error_sys(err, errno, "raise RLIMIT_NOFILE");
    /* The spawner runs niced (spawner.c); the child inherited that. The agent and what it
     * starts run at the host's default priority, before the child does anything. */
    if (setpriority(PRIO_PROCESS, (id_t)pid, 0) < 0 && errno != EPERM && errno != EACCES)
        return sbx_error_sys(err, errno, "reset the agent's priority");
    return 0;
}

/* The child's root overlay, its volumes, its agent runtime and the mounts its root is made of,
 * in the order step_wait_parent expects. */
static int
send_ready(int sock, const struct sbx_rootfs *fs, const int *volumes, size_t n_volumes, int runtime,
           struct sbx_error **err)
{
    struct sync_msg m = {.point = SYNC_PARENT_READY};
    int fds[SBX_FDPASS_MAX] = {fs->root_fd};
    size_t n = 1;
    memcpy(fds + n, volumes, n_volumes * sizeof(int));
    n += n_volumes;
    if (runtime >= 0)
        fds[n++] = runtime;
    memcpy(fds + n, fs->held, fs->n_held * sizeof(int));
    n += fs->n_held;
    if (sbx_send_fds(sock, &m, sizeof(m), fds, n) < 0)
        return sbx_error_sys(err, errno, "send to sandbox child");
    return 0;
}

/* A sandbox between clone and exec: the child does its setup while the caller serves other
 * work, and reads the sync socket when it is readable (sbx_sandbox_spawn_step). */
struct sbx_sandbox_spawning {
    char id[33];
    char *sandbox_dir;
    pid_t pid;
    int sock;
    bool exec_seen;
    bool reboot; /* a failure keeps the sandbox dir: it holds the sandbox's disk */
    int disk_fd; /* plan.keep_disk: the disk's mount, until sbx_sandbox_spawning_disk */
};

/* Reads what the child sent: 1 while setup goes on, 0 once it has exec'd (SYNC_CHILD_EXEC,
 * then EOF as the exec closed the socket), -1 on failure. */
static int
read_child(struct sbx_sandbox_spawning *s, struct sbx_error **err)
{
    for (;;) {
        struct sync_msg m;
        ssize_t n = recv(s->sock, &m, sizeof(m), MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (n < 0)
            return sbx_error_sys(err, errno, "read sandbox child");
        if (n == 0) {
            if (s->exec_seen)
                return 0;
            int st = 0;
            waitpid(s->pid, &st, WNOHANG);
            return sbx_error_set(err, SBX_INTERNAL, 0, "sandbox child died during setup (%s %d)",
                                 WIFSIGNALED(st) ? "signal" : "status",
                                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        }
        if (n != (ssize_t)sizeof(m))
            return sbx_error_set(err, SBX_INTERNAL, EPROTO, "short message from sandbox child");
        m.step[sizeof(m.step) - 1] = '\0';
        if (m.point == SYNC_CHILD_FAILED)
            return sbx_error_set(err, sbx_code_from_errno(m.err), m.err, "sandbox setup: %s: %s",
                                 m.step, strerror(m.err));
        if (m.point == SYNC_CHILD_EXEC)
            s->exec_seen = true;
    }
}

static int
open_userns(pid_t pid, struct sbx_error **err)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sbx_error_sys(err, errno, "open %s", path);
    return fd;
}

/* Clones the sandbox's PID 1. With a cgroup v2 dir fd the child is born in that cgroup
 * (clone3 CLONE_INTO_CGROUP, Linux 5.7): no later cgroup.procs write, which takes the global
 * threadgroup lock for writing and often waits for an RCU grace period. */
static pid_t
clone_sandbox(unsigned long flags, int cgroup_fd)
{
    if (cgroup_fd < 0)
        return (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0);
    struct clone_args args = {
        .flags = flags | CLONE_INTO_CGROUP,
        .exit_signal = SIGCHLD,
        .cgroup = (uint64_t)cgroup_fd,
    };
    return (pid_t)syscall(SYS_clone3, &args, sizeof(args));
}

/* What the child does not inherit. Between clone and exec the child runs only our own code
 * and glibc's (the raw clone runs no atfork handler, and libuv's signal handlers stay mapped
 * until step_reset_signals), yet a plain clone copies every mapping of the spawner: the
 * dozens of libraries libcurl, libsqlite3, nftables and OpenSSL bring, about 170 mappings
 * that the kernel copies at the clone and tears down again at the exec (measured: 11% of the
 * spawner's CPU in dup_mmap, a fifth of the child's in the exec). Those libraries' segments
 * are marked MADV_DONTFORK for the clones (leave_foreign_out): a fork of the spawner (its
 * jobs, the sweeper) runs their atfork handlers and their code, and gets them back. Libraries
 * loaded at the first spawn stay loaded (the spawner never dlcloses), so the ranges, read
 * once, stay theirs. */
#define FOREIGN_MAX 256 /* ranges; ~40 libraries, up to 4 segments each */

static struct {
    bool read;
    size_t n;
    struct {
        uintptr_t start;
        size_t len;
    } range[FOREIGN_MAX];
} foreign;

static int
add_foreign(struct dl_phdr_info *info, size_t size, void *data)
{
    static const char *const kept[] = {"libc.so", "ld-linux", "libuv.so"};
    const char *base = strrchr(info->dlpi_name, '/');
    if (base == NULL) /* the program itself (""), the vDSO */
        return 0;
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
        if (strncmp(base + 1, kept[i], strlen(kept[i])) == 0)
            return 0;
    long page = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < info->dlpi_phnum && foreign.n < FOREIGN_MAX; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t a = (info->dlpi_addr + ph->p_vaddr) & ~(uintptr_t)(page - 1);
        uintptr_t b =
            (info->dlpi_addr + ph->p_vaddr + ph->p_memsz + page - 1) & ~(uintptr_t)(page - 1);
        /* Segments that follow one another (a library's, mostly): one madvise. */
        size_t last = foreign.n - 1;
        if (foreign.n > 0 && foreign.range[last].start + foreign.range[last].len == a) {
            foreign.range[last].len += b - a;
            continue;
        }
        foreign.range[foreign.n].start = a;
        foreign.range[foreign.n++].len = b - a;
    }
    return 0;
}

static void
advise_foreign(int advice)
{
    for (size_t i = 0; i < foreign.n; i++)
        if (madvise((void *)foreign.range[i].start, foreign.range[i].len, advice) < 0 &&
            advice == MADV_DOFORK)
            abort(); /* cannot happen; the fork's child would crash in that library */
}

static void
fork_prepare(void)
{
    advise_foreign(MADV_DOFORK);
}

static void
fork_parent(void)
{
    advise_foreign(MADV_DONTFORK);
}

/* Marks the libraries MADV_DONTFORK once, at the first clone, and has every fork unmark them
 * for its own copy (atfork handlers; a fork's child keeps them). Toggling them around each
 * clone instead cost two madvise calls per library per create, about 80. */
static void
leave_foreign_out(void)
{
    if (foreign.read)
        return;
    foreign.read = true;
    /* Sanitizer runtimes (the ASan and UBSan builds of the tests) intercept libc's functions
     * from libraries of their own: with one, the child keeps everything. */
    if (dlsym(RTLD_DEFAULT, "__asan_init") != NULL ||
        dlsym(RTLD_DEFAULT, "__ubsan_handle_add_overflow") != NULL)
        return;
    dl_iterate_phdr(add_foreign, NULL);
    if (pthread_atfork(fork_prepare, fork_parent, NULL) != 0) {
        foreign.n = 0; /* no fork could get them back: leave them in */
        return;
    }
    advise_foreign(MADV_DONTFORK);
}

static int
raise_effective_caps(void)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) < 0)
        return -1;
    d[0].effective = d[0].permitted;
    d[1].effective = d[1].permitted;
    return (int)syscall(SYS_capset, &h, d);
}

/* Clones with the sandbox's own host uid as effective uid. The kernel charges per-user
 * counters of everything inside a user namespace (inotify instances and watches, nested
 * namespaces; kernel/ucount.c) up the chain to the uid that created it: created as root, one
 * sandbox could use up the inotify instances of every root process on the host. Created as
 * its own uid, each sandbox has its own budget. Only the effective uid changes, so the
 * permitted capabilities stay and are raised again for clone (CLONE_INTO_CGROUP needs write
 * access to the cgroup); back to euid 0 restores the effective set (capabilities(7)). */
static pid_t
clone_as_owner(unsigned long flags, int cgroup_fd, uid_t owner)
{
    if (setresuid(-1, owner, -1) < 0)
        return -1;
    leave_foreign_out();
    pid_t pid = raise_effective_caps() < 0 ? -1 : clone_sandbox(flags, cgroup_fd);
    if (pid == 0)
        return 0; /* the child: its new user namespace gives it every capability there */
    int e = errno;
    if (setresuid(-1, 0, -1) < 0)
        abort(); /* cannot happen (the real uid is 0), and going on unprivileged would be worse */
    errno = e;
    return pid;
}

/* Everything the parent does between clone and SYNC_PARENT_READY. */
static int
parent_setup(const struct sbx_sandbox_plan *plan, struct sbx_sandbox_spawning *s,
             struct sbx_error **err)
{
    pid_t pid = s->pid;
    int sock = s->sock;
    if (write_maps(pid, plan->host_uid_base, err) < 0)
        return -1;
    if (set_process_limits(pid, err) < 0)
        return -1;
    if (plan->net && sbx_net_attach(plan->net, plan->net_slot, pid, err) < 0)
        return -1;
    _cleanup_close_ int userns = open_userns(pid, err);
    if (userns < 0)
        return -1;
    struct sbx_rootfs fs;
    if (sbx_rootfs_open(plan, userns, &fs, err) < 0)
        return -1;
    if (fs.n_held != sbx_rootfs_held(plan)) { /* the child counts on that many */
        sbx_rootfs_close(&fs);
        return sbx_error_set(err, SBX_INTERNAL, 0, "root made of %zu mounts, not %zu", fs.n_held,
                             sbx_rootfs_held(plan));
    }
    /* The disk's ext4 is the last of them. Kept by the caller, the child's close is not the
     * last and the disk stays mounted (out of fds, it is not kept: -1). Not before Linux 6.15:
     * the staged overlay attaches that very mount, which then goes with the staging child's
     * namespace (and a detached mount cannot be cloned there). */
    if (plan->keep_disk && plan->disk_mount == NULL && plan->limits.disk_bytes > 0 &&
        sbx_rootfs_layers_by_fd())
        s->disk_fd = fcntl(fs.held[fs.n_held - 1], F_DUPFD_CLOEXEC, 0);
    int volumes[SBX_SANDBOX_MAX_VOLUMES], rc = 0;
    size_t n = 0;
    for (; n < plan->n_volumes && rc == 0; n++)
        if ((volumes[n] = sbx_volume_mount(plan->volumes[n].image, userns, err)) < 0)
            rc = -1;
    _cleanup_close_ int runtime = -1;
    if (rc == 0 && plan->agent_runtime &&
        (runtime = sbx_agent_runtime_mount(plan->agent_runtime, err)) < 0)
        rc = -1;
    if (rc == 0)
        rc = send_ready(sock, &fs, volumes, n, runtime, err);
    /* The child holds its own copies now, and drops the last ones. */
    sbx_rootfs_close(&fs);
    for (size_t i = 0; i < n; i++)
        if (volumes[i] >= 0)
            close(volumes[i]);
    return rc;
}

/* Undoes a spawn that failed after its first step: the child, the cgroup, the dirs (but the
 * dir of a reboot, which holds the disk of the earlier boots). */
static void
cleanup_failed(const struct sbx_sandbox_spawning *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
    }
    struct sbx_sandbox_ref ref = {.id = s->id, .sandbox_dir = s->sandbox_dir, .pid = 0};
    struct sbx_error *ignored = NULL;
    if (s->reboot)
        sbx_sandbox_stop(&ref, &ignored);
    else
        sbx_sandbox_destroy(&ref, &ignored);
    sbx_error_free(ignored);
}

int
sbx_sandbox_spawn_start(const struct sbx_sandbox_plan *plan, struct sbx_sandbox_spawning **out,
                        struct sbx_error **err)
{
    _cleanup_close_ int oom_fd = -1;
    if (validate(plan, err) < 0 || sbx_seccomp_prepare(plan->relaxed, err) < 0)
        return -1;
    struct sbx_sandbox_spawning *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->sandbox_dir = strdup(plan->sandbox_dir)) == NULL) {
        free(s);
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    }
    snprintf(s->id, sizeof(s->id), "%s", plan->id);
    s->sock = -1;
    s->disk_fd = -1;
    s->reboot = plan->reboot;
    if (sbx_rootfs_prepare_dirs(plan, err) < 0 || sbx_cgroup_create(plan, err) < 0)
        goto fail;
    oom_fd = sbx_cgroup_open_oom_events(plan->id);
    if (oom_fd < 0) {
        sbx_error_sys(err, errno, "open the sandbox's OOM counter");
        goto fail;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        sbx_error_sys(err, errno, "socketpair");
        goto fail;
    }
    /* No CLONE_NEWCGROUP here: see step_cgroup_namespace. SIGCHLD so the parent can reap. */
    unsigned long flags =
        CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
    int join[SBX_CGROUP_JOIN_MAX];
    int n_join = sbx_cgroup_open_join(plan->id, join, err);
    if (n_join < 0) {
        close(sv[0]);
        close(sv[1]);
        goto fail;
    }
    bool v2 = sbx_cgroup_detect() == SBX_CGROUP_V2;
    pid_t pid = clone_as_owner(flags, v2 ? join[0] : -1, plan->host_uid_base);
    int clone_errno = errno;
    if (pid == 0) {
        close(sv[0]);
        if (v2) /* born in its cgroup: nothing of the host's cgroup tree stays open */
            close(join[0]);
        child_main(plan, oom_fd, join, v2 ? 0 : n_join, sv[1]);
    }
    for (int i = 0; i < n_join; i++)
        close(join[i]); /* the child closes its copies once it has joined */
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        sbx_error_sys(err, clone_errno, "clone");
        goto fail;
    }
    close(sv[1]);
    s->pid = pid;
    s->sock = sv[0];
    if (parent_setup(plan, s, err) < 0)
        goto fail;
    *out = s;
    return 0;

fail:
    sbx_error_prefix(err, "spawn %s", plan->id);
    sbx_sandbox_spawning_free(s);
    return -1;
}

int
sbx_sandbox_spawning_fd(const struct sbx_sandbox_spawning *s)
{
    return s->sock;
}

int
sbx_sandbox_spawn_step(struct sbx_sandbox_spawning *s, pid_t *pid, uint64_t *start_time,
                       struct sbx_error **err)
{
    int rc = read_child(s, err);
    if (rc > 0)
        return 1;
    uint64_t st = 0;
    if (rc == 0 && sbx_proc_start_time(s->pid, &st) < 0)
        rc = sbx_error_sys(err, errno, "read start time of %d", (int)s->pid);
    if (rc == 0)
        rc = sbx_cgroup_set_running(s->id, err);
    if (rc < 0)
        return sbx_error_prefix(err, "spawn %s", s->id);
    *pid = s->pid;
    *start_time = st;
    s->pid = 0; /* the agent runs: nothing of it is ours to undo any more */
    return 0;
}

int
sbx_sandbox_spawning_disk(struct sbx_sandbox_spawning *s)
{
    int fd = s->disk_fd;
    s->disk_fd = -1;
    return fd;
}

void
sbx_sandbox_spawning_free(struct sbx_sandbox_spawning *s)
{
    if (s == NULL)
        return;
    if (s->sock >= 0)
        close(s->sock);
    if (s->disk_fd >= 0)
        close(s->disk_fd);
    if (s->pid != 0 || !s->exec_seen)
        cleanup_failed(s);
    free(s->sandbox_dir);
    free(s);
}

int
sbx_sandbox_spawn(const struct sbx_sandbox_plan *plan, pid_t *pid, uint64_t *start_time,
                  struct sbx_error **err)
{
    struct sbx_sandbox_spawning *s = NULL;
    if (sbx_sandbox_spawn_start(plan, &s, err) < 0)
        return -1;
    uint64_t deadline = sbx_now_ms() + SBX_SPAWN_TIMEOUT_MS;
    int rc;
    while ((rc = sbx_sandbox_spawn_step(s, pid, start_time, err)) == 1) {
        uint64_t now = sbx_now_ms();
        if (now >= deadline) {
            rc = sbx_error_set(err, SBX_DEADLINE_EXCEEDED, 0, "spawn %s: setup timed out", s->id);
            break;
        }
        struct pollfd pfd = {.fd = s->sock, .events = POLLIN};
        poll(&pfd, 1, (int)(deadline - now));
    }
    sbx_sandbox_spawning_free(s);
    return rc;
}
