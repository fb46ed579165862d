/* The sandbox's seccomp filter and capability bounding set.
 *
 * The filter follows Docker's default profile in spirit: allow by default, deny a list of
 * system calls that code in a sandbox never needs and that widen the kernel attack surface or
 * reach state shared with the host. It is compiled once in the daemon (libseccomp) and the
 * BPF is kept in memory, so the cloned child only makes one seccomp(2) call, last, right
 * before exec.
 *
 * No no_new_privs: the child installs the filter while it still holds CAP_SYS_ADMIN in its
 * own user namespace, which seccomp(2) accepts instead of no_new_privs. Setting no_new_privs
 * on the agent would be inherited by every process of the sandbox and would break setuid
 * sudo for uid 1000, a feature users rely on. The filter is inherited across exec and fork
 * and cannot be removed, setuid or not. */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sandbox/internal.h"

struct deny {
    const char *name;
    int err; /* errno returned */
};

static const struct deny deny_list[] = {
    /* Kernel code and kernel state: loading modules, replacing the kernel, rebooting. */
    {"kexec_load", EPERM},
    {"kexec_file_load", EPERM},
    {"init_module", EPERM},
    {"finit_module", EPERM},
    {"delete_module", EPERM},
    {"create_module", EPERM},
    {"get_kernel_syms", EPERM},
    {"query_module", EPERM},
    {"reboot", EPERM},
    /* eBPF and perf: large attack surfaces with a history of privilege escalations
     * (e.g. CVE-2021-3490, CVE-2022-23222) and side channels into other tenants. */
    {"bpf", EPERM},
    {"perf_event_open", EPERM},
    {"lookup_dcookie", EPERM},
    /* The kernel keyring is not namespaced (CVE-2016-0728 and Docker's rationale). */
    {"keyctl", EPERM},
    {"add_key", EPERM},
    {"request_key", EPERM},
    /* Mounts: the sandbox's mount tree (masked /proc paths, the read-only layers) is fixed
     * at setup; root inside must not unmount a mask or mount over it. */
    {"mount", EPERM},
    {"umount2", EPERM},
    {"pivot_root", EPERM},
    {"fsopen", EPERM},
    {"fsconfig", EPERM},
    {"fsmount", EPERM},
    {"fspick", EPERM},
    {"move_mount", EPERM},
    {"open_tree", EPERM},
    {"mount_setattr", EPERM},
    /* Namespaces: joining one is never needed, and setns to an nsfs fd is a classic step of
     * container escapes. */
    {"setns", EPERM},
    /* Host-global clocks, swap, accounting, kernel log, quotas. */
    {"swapon", EPERM},
    {"swapoff", EPERM},
    {"syslog", EPERM},
    {"acct", EPERM},
    {"settimeofday", EPERM},
    {"clock_settime", EPERM},
    {"clock_adjtime", EPERM},
    {"adjtimex", EPERM},
    {"quotactl", EPERM},
    {"quotactl_fd", EPERM},
    {"nfsservctl", EPERM},
    /* File handles bypass path-based checks and let a process open files outside its
     * root (the "shocker" container escape, 2014). */
    {"open_by_handle_at", EPERM},
    {"name_to_handle_at", EPERM},
    /* userfaultfd makes kernel races easy to win (used in many exploits). */
    {"userfaultfd", EPERM},
    /* Raw I/O ports and legacy interfaces. */
    {"iopl", EPERM},
    {"ioperm", EPERM},
    {"uselib", EPERM},
    {"vm86", EPERM},
    {"vm86old", EPERM},
    {"ustat", EPERM},
    {"sysfs", EPERM},
    {"_sysctl", EPERM},
    /* io_uring has been a steady source of kernel bugs and bypasses seccomp for the
     * operations it performs; ENOSYS makes libraries fall back to plain syscalls. */
    {"io_uring_setup", ENOSYS},
    {"io_uring_enter", ENOSYS},
    {"io_uring_register", ENOSYS},
    /* clone3 passes its flags in memory where BPF cannot look; ENOSYS makes glibc fall back
     * to clone(2), whose flags the rule below can check (Docker does the same). */
    {"clone3", ENOSYS},
};

/* Namespace flags of clone(2) and unshare(2). CLONE_NEWTIME (0x80) is unshare-only: in
 * clone's flags those bits are the exit signal. */
static const unsigned long new_ns_flags[] = {
    CLONE_NEWNS,  CLONE_NEWCGROUP,          CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID,
    CLONE_NEWNET, 0x80 /* CLONE_NEWTIME */,
};

/* Compiled filters, one per profile, owned by the process that spawns sandboxes. */
static struct sock_fprog cached_prog[2];

/* One rule per flag: libseccomp ORs rules, and "any of these bits" has no single-rule form. */
static int
deny_flags(scmp_filter_ctx ctx, int nr, unsigned long flag)
{
    return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 1,
                            SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag));
}

static int
add_rules(scmp_filter_ctx ctx, bool relaxed)
{
    for (size_t i = 0; i < sizeof(deny_list) / sizeof(deny_list[0]); i++) {
        int nr = seccomp_syscall_resolve_name(deny_list[i].name);
        if (nr == __NR_SCMP_ERROR || nr < 0)
            continue; /* not a system call on this architecture */
        int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(deny_list[i].err), nr, 0);
        if (rc < 0)
            return rc;
    }
    /* New user namespaces would give processes a full capability set over fresh namespaces,
     * the entry point of most unprivileged kernel exploits; the sandbox is already one.
     * x86_64 clone(2): flags are the first argument. */
    int rc;
    if ((rc = deny_flags(ctx, SCMP_SYS(unshare), CLONE_NEWUSER)) < 0 ||
        (rc = deny_flags(ctx, SCMP_SYS(clone), CLONE_NEWUSER)) < 0)
        return rc;
    /* Any other new namespace too, unless the operator asked for relaxed sandboxes: a fresh
     * network or mount namespace hands sandbox root the code paths (nf_tables, tc, veth,
     * vxlan, mount parsing) of most user-namespace exploits of recent years (e.g.
     * CVE-2024-1086, CVE-2022-0185), which E2B-style workloads never need. */
    for (size_t i = 0; !relaxed && i < sizeof(new_ns_flags) / sizeof(new_ns_flags[0]); i++) {
        if ((rc = deny_flags(ctx, SCMP_SYS(unshare), new_ns_flags[i])) < 0)
            return rc;
        if (new_ns_flags[i] != 0x80 && (rc = deny_flags(ctx, SCMP_SYS(clone), new_ns_flags[i])) < 0)
            return rc;
    }
    /* personality(2) is left alone, unlike in Docker's allow-list profile: libseccomp
     * cannot express "none of these values" on one argument in a default-allow filter, and
     * the personas that weaken mitigations (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...) are
     * PER_CLEAR_ON_SETID: the kernel drops them on every setuid/setgid exec, so they only
     * ever affect processes the caller already controls. */
    /* vsock reaches the hypervisor host when the machine itself is a VM (these dev machines
     * are Firecracker guests); it is not network-namespaced. */
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                          SCMP_A0(SCMP_CMP_EQ, AF_VSOCK));
    return rc;
}

int
sbx_seccomp_prepare(bool relaxed, struct sbx_error **err)
{
    struct sock_fprog *prog = &cached_prog[relaxed];
    if (prog->filter != NULL)
        return 0;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == NULL)
        return sbx_error_set(err, SBX_INTERNAL, 0, "seccomp_init failed");
    int rc;
    /* Only the native ABI: 32-bit (int 0x80, i386) and x32 entry points have other syscall
     * numbers the deny list would not cover; a process using them is killed. */
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) < 0 ||
        (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)) < 0 ||
        (rc = add_rules(ctx, relaxed)) < 0) {
        seccomp_release(ctx);
        return sbx_error_sys(err, -rc, "seccomp rules");
    }
    /* libseccomp 2.5 exports BPF only to an fd; use a memfd and keep the bytes. */
    int mfd = memfd_create("sbx-seccomp", MFD_CLOEXEC);
    if (mfd < 0) {
        seccomp_release(ctx);
        return sbx_error_sys(err, errno, "memfd_create");
    }
    rc = seccomp_export_bpf(ctx, mfd);
    seccomp_release(ctx);
    if (rc < 0) {
        close(mfd);
        return sbx_error_sys(err, -rc, "seccomp_export_bpf");
    }
    off_t len = lseek(mfd, 0, SEEK_END);
    if (len <= 0 || len % sizeof(struct sock_filter) != 0 || len > 65536) {
        close(mfd);
        return sbx_error_set(err, SBX_INTERNAL, 0, "bad seccomp program size %ld", (long)len);
    }
    struct sock_filter *f = malloc((size_t)len);
    if (f == NULL)
        abort();
    if (pread(mfd, f, (size_t)len, 0) != len) {
        int e = errno;
        free(f);
        close(mfd);
        return sbx_error_sys(err, e, "read seccomp program");
    }
    close(mfd);
    prog->len = (unsigned short)(len / sizeof(struct sock_filter));
    prog->filter = f;
    return 0;
}

int
child_seccomp_install(bool relaxed, const char **step)
{
    *step = "seccomp";
    if (cached_prog[relaxed].filter == NULL) {
        errno = EINVAL;
        return -1;
    }
    /* Without SECCOMP_FILTER_FLAG_TSYNC: the child is single-threaded. */
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &cached_prog[relaxed]);
}

/* Capabilities root inside never needs, dropped from the bounding set so that no exec
 * (setuid sudo included) can regain them. Most only act against the initial user namespace,
 * which sandbox root never holds; the bounding set makes that explicit and guards against
 * kernel checks that use capable() where ns_capable() was meant. Kept: CHOWN, DAC_OVERRIDE,
 * DAC_READ_SEARCH, FOWNER, FSETID, KILL, SETUID, SETGID, SETPCAP, SETFCAP, MKNOD,
 * NET_BIND_SERVICE, NET_RAW (ping, own network namespace only), SYS_CHROOT, SYS_RESOURCE and
 * IPC_*: what package managers, compilers, servers and sudo use (Docker's default set plus
 * a few that only reach the sandbox's own objects). */
static const int drop_caps[] = {
    /* The agent (PID 1) holds the sandbox's access token and its listening socket; it is
     * non-dumpable, and without CAP_SYS_PTRACE in the sandbox's user namespace sandbox root
     * can neither trace it nor read /proc/1/mem, /proc/1/fd or pidfd_getfd its fds. */
    CAP_SYS_PTRACE,
    CAP_SYS_MODULE,
    CAP_SYS_RAWIO,
    CAP_SYS_BOOT,
    CAP_SYS_TIME,
    CAP_MAC_ADMIN,
    CAP_MAC_OVERRIDE,
    CAP_SYSLOG,
    CAP_AUDIT_CONTROL,
    CAP_AUDIT_READ,
    CAP_AUDIT_WRITE,
    CAP_SYS_PACCT,
    CAP_WAKE_ALARM,
    CAP_BLOCK_SUSPEND,
    CAP_SYS_TTY_CONFIG,
    CAP_LINUX_IMMUTABLE,
    CAP_LEASE,
    CAP_SYS_NICE,
#ifdef CAP_BPF
    CAP_BPF,
#else
    39,
#endif
#ifdef CAP_PERFMON
    CAP_PERFMON,
#else
    38,
#endif
#ifdef CAP_CHECKPOINT_RESTORE
    CAP_CHECKPOINT_RESTORE,
#else
    40,
#endif
};

/* Dropped unless the operator asked for relaxed sandboxes: NET_ADMIN reaches nf_tables, tc
 * and the virtual link types; SYS_ADMIN a long tail of namespaced administrative paths. Both
 * are Docker's defaults too; workloads that need them (nested containers, VPN clients) can
 * get them back with `sbx serve --sandbox-profile relaxed`. */
static const int drop_caps_default[] = {CAP_NET_ADMIN, CAP_SYS_ADMIN};

static int
drop_bounding(const int *caps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        /* EINVAL: the running kernel does not know this capability, nothing to drop. */
        if (prctl(PR_CAPBSET_DROP, caps[i], 0, 0, 0) < 0 && errno != EINVAL)
            return -1;
    }
    return 0;
}

int
child_caps_drop_bounding(bool relaxed, const char **step)
{
    *step = "capabilities";
    if (drop_bounding(drop_caps, sizeof(drop_caps) / sizeof(drop_caps[0])) < 0)
        return -1;
    if (!relaxed && drop_bounding(drop_caps_default,
                                  sizeof(drop_caps_default) / sizeof(drop_caps_default[0])) < 0)
        return -1;
    return 0;
}
