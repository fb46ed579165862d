/* Declarations shared by the files of the sandbox runtime; nothing outside src/sandbox/
 * includes this header. Functions named child_* run in the cloned child: they never
 * allocate an sbx_error, they return -1 with errno set and a step name in *step. */
#ifndef SBX_SANDBOX_INTERNAL_H
#define SBX_SANDBOX_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/error.h"
#include "base/fdpass.h"
#include "sandbox/sandbox.h"

/* Host uid that owns the sandbox's "user" (uid 1000 inside). */
#define SBX_SANDBOX_USER_UID 1000
#define SBX_SANDBOX_USER_GID 1000
/* oom_score_adj of the agent: low so the OOM killer picks user code first, but not -1000
 * (OOM_SCORE_ADJ_MIN), which children would inherit and which would make them unkillable. */
#define SBX_AGENT_OOM_SCORE_ADJ -998
#define SBX_AGENT_NOFILE        65536
#define SBX_SANDBOX_PTY_MAX     128 /* ptys of one sandbox (its devpts instance's max) */
#define SBX_DESTROY_TIMEOUT_MS  5000
#define SBX_CPU_PERIOD_US       100000

/* ---- cgroup.c ---- */
enum sbx_cgroup_layout { SBX_CGROUP_NONE, SBX_CGROUP_V1, SBX_CGROUP_V2 };
enum sbx_cgroup_layout sbx_cgroup_detect(void);
/* Whether the layout has every controller sandboxes use; *layout gets "v1" or "v2". */
int sbx_cgroup_check(const char **layout, struct sbx_error **err);
/* Creates the sandbox's cgroup(s) and writes the limits. */
int sbx_cgroup_create(const char *id, const struct sbx_sandbox_limits *limits,
                      struct sbx_error **err);
/* On cgroup v2, an fd of the sandbox's cgroup dir (for clone3's CLONE_INTO_CGROUP);
 * -1 on v1, where sbx_cgroup_enter moves the child instead. */
int sbx_cgroup_open_v2(const char *id);
/* A read-only fd of the file whose "oom_kill N" line counts the sandbox's OOM kills
 * (memory.events on v2, memory.oom_control on v1); -1 with errno. */
int sbx_cgroup_open_oom_events(const char *id);
/* Up to max pids of the sandbox's cgroup (the memory one on v1); -1 if it does not exist. */
int sbx_cgroup_procs(const char *id, pid_t *pids, int max);
/* Moves pid into every cgroup of the sandbox. */
int sbx_cgroup_enter(const char *id, pid_t pid, struct sbx_error **err);
/* SIGKILLs what is left in the sandbox's cgroups and waits (bounded) until they are empty;
 * reap(pid) is called on each poll so that our own zombie child does not hold them. */
int sbx_cgroup_drain(const char *id, pid_t reap_pid, int timeout_ms, struct sbx_error **err);
/* Removes the cgroup dirs; missing ones are fine. */
int sbx_cgroup_remove(const char *id, struct sbx_error **err);
int sbx_cgroup_stats(const char *id, struct sbx_sandbox_stats *out, struct sbx_error **err);

/* ---- rootfs.c (parent side, host root) ---- */
struct sbx_rootfs {
    int root_fd; /* detached overlay for / */
};
int sbx_rootfs_prepare_dirs(const struct sbx_sandbox_plan *plan, struct sbx_error **err);
/* Builds the root overlay, its lower layers idmapped through the user namespace userns_fd. */
int sbx_rootfs_open(const struct sbx_sandbox_plan *plan, int userns_fd, struct sbx_rootfs *out,
                    struct sbx_error **err);
void sbx_rootfs_close(struct sbx_rootfs *r);
/* Error for a failed fsconfig/fsmount on fs, with the kernel's own explanation (the fs
 * context's message log) appended; returns -1. */
int sbx_fsopen_error(int fs, int e, const char *what, struct sbx_error **err);

/* Whether overlayfs takes the layers as fds of detached mounts (Linux 6.15); else they are
 * staged in a private mount namespace. */
bool sbx_rootfs_layers_by_fd(void);
/* Major and minor of the running kernel; false if uname's release does not parse. */
bool sbx_kernel_version(int *major, int *minor);

/* ---- disk.c (parent side, host root): the size-limited upper layer ---- */
#define SBX_DISK_IMAGE     "disk.img"    /* in the sandbox dir */
#define SBX_DISK_MIN_BYTES (16ULL << 20) /* ext4 metadata needs a few MiB of it */
#define SBX_DISK_MAX_BYTES (16ULL << 40)
/* O_PATH fds of the overlay's upper and work dirs (-1 when closed). */
struct sbx_upper_dirs {
    int upper_root, work_root;
    /* The detached ext4 mount they are on (-1: host dirs). Kept open until the overlays are
     * made: closing the last fd of a detached mount unmounts it, and overlayfs refuses an
     * unmounted upper ("failed to clone upperpath"). */
    int mount_fd;
};
/* Creates <sandbox_dir>/disk.img: a sparse copy of an empty ext4 of limits.disk_bytes,
 * formatting that blank (once per size) in disks_dir if needed. */
int sbx_disk_create(const struct sbx_sandbox_plan *plan, struct sbx_error **err);
/* Attaches disk.img to an autoclear loop device, mounts it detached and creates the upper
 * and work dirs in it, owned by plan->host_uid_base. */
int sbx_disk_open_upper(const struct sbx_sandbox_plan *plan, struct sbx_upper_dirs *out,
                        struct sbx_error **err);
void sbx_upper_dirs_close(struct sbx_upper_dirs *d);
/* Allocated bytes of <sandbox_dir>/disk.img; -1 with errno (ENOENT: no image). */
int sbx_disk_usage(const char *sandbox_dir, uint64_t *bytes);

/* ---- mounts.c (child side) ---- */
int child_mount_private(const char **step);
int child_attach_rootfs(const char *newroot, int root_fd, const char **step);
int child_mount_proc(const char *newroot, const char **step);
int child_mount_dev(const char *newroot, const char **step);
int child_mount_tmpfs(const char *newroot, uint64_t memory_bytes, const char **step);
int child_pivot_root(const char *newroot, const char **step);

/* ---- seccomp.c / caps.c ---- */
/* Compiles the filter of a profile once per process, before any clone. relaxed: the
 * operator's --sandbox-profile relaxed (new namespaces other than user ones allowed). */
int sbx_seccomp_prepare(bool relaxed, struct sbx_error **err);
int child_seccomp_install(bool relaxed, const char **step);
int child_caps_drop_bounding(bool relaxed, const char **step);

/* ---- fsutil.c ---- */
/* Removes everything below dirfd (not dirfd itself) without following symlinks or crossing
 * into other filesystems; iterative, so an attacker-made deep tree cannot exhaust the stack
 * or the fd table. */
int sbx_fs_clear_dir(int dirfd, struct sbx_error **err);
/* Sum of st_blocks*512 of everything below dirfd, same walking rules. */
int sbx_fs_disk_usage(int dirfd, uint64_t *bytes, struct sbx_error **err);
/* Writes a whole file (O_CREAT|O_TRUNC, mode), optional owner. */
int sbx_fs_write_file_at(int dirfd, const char *name, const char *data, size_t len, mode_t mode);
/* snprintf that reports truncation: -1 with ENAMETOOLONG (paths must never be cut). */
int sbx_pathf(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int sbx_fs_read_small(const char *path, char *buf, size_t cap); /* NUL-terminated; -1/errno */
int sbx_fs_write_str(const char *path, const char *s);          /* O_WRONLY, no create */

/* ---- proc.c ---- */
int sbx_proc_start_time(pid_t pid, uint64_t *out);

#endif
