/* Declarations shared by the files of the sandbox runtime; nothing outside src/sandbox/
 * includes this header. Functions named child_* run in the cloned child: they never
 * allocate an sbx_error, they return -1 with errno set and a step name in *step. */
#ifndef SBX_SANDBOX_INTERNAL_H
#define SBX_SANDBOX_INTERNAL_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "base/buf.h"
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
/* Creates the sandbox's cgroup(s) and writes the limits, with the lowest CPU weight. */
int sbx_cgroup_create(const struct sbx_sandbox_plan *plan, struct sbx_error **err);
/* The default CPU weight, once the sandbox's setup is done. */
int sbx_cgroup_set_running(const char *id, struct sbx_error **err);
/* The CPUs the sandbox runs on (cpuset and affinity) when its quota is fewer CPUs than the
 * host's; false when it may use all of them. */
bool sbx_cgroup_cpus(const struct sbx_sandbox_plan *plan, cpu_set_t *set);
/* set as a kernel CPU list ("0-3,6"). */
void sbx_cpu_list(const cpu_set_t *set, char *out, size_t size);
/* What the sandbox's PID 1 needs to be in its cgroups without anyone writing cgroup.procs,
 * which takes the kernel's global threadgroup lock for writing and then often waits for an RCU
 * grace period (10-30 ms a create). On v2: one fd of the cgroup dir, for clone3's
 * CLONE_INTO_CGROUP. On v1: an fd of each controller's "tasks" file, opened here as root; the
 * child writes "0" to each (sbx_cgroup_join_self), which moves only the calling thread and so
 * skips that lock; the kernel checks the permission against the opener. Returns the count. */
#define SBX_CGROUP_JOIN_MAX 8
int sbx_cgroup_open_join(const char *id, int fds[SBX_CGROUP_JOIN_MAX], struct sbx_error **err);
/* In the child (v1): joins the cgroups of fds and closes them. */
int sbx_cgroup_join_self(const int *fds, int n);
/* A read-only fd of the file whose "oom_kill N" line counts the sandbox's OOM kills
 * (memory.events on v2, memory.oom_control on v1); -1 with errno. */
int sbx_cgroup_open_oom_events(const char *id);
/* Up to max pids of the sandbox's cgroup (the memory one on v1); -1 if it does not exist. */
int sbx_cgroup_procs(const char *id, pid_t *pids, int max);
/* The sandbox's cgroup dirs as a sandbox shows them under /sys/fs/cgroup: on v2 one, named
 * "" (the mount point itself); on v1 one per hierarchy, named after its first controller.
 * Returns how many were written. */
int sbx_cgroup_views(const char *id, char names[][32], char dirs[][256], int max);
/* SIGKILLs what is left in the sandbox's cgroups and waits (bounded) until they are empty;
 * reap(pid) is called on each poll so that our own zombie child does not hold them. */
int sbx_cgroup_drain(const char *id, pid_t reap_pid, int timeout_ms, struct sbx_error **err);
/* Removes the cgroup dirs; missing ones are fine. */
int sbx_cgroup_remove(const char *id, struct sbx_error **err);
int sbx_cgroup_stats(const char *id, struct sbx_sandbox_stats *out, struct sbx_error **err);

/* ---- rootfs.c (parent side, host root) ---- */
struct sbx_rootfs {
    int root_fd; /* detached overlay for / */
    /* The detached mounts the overlay was made from (its idmapped lower layers, then its disk's
     * ext4 if it has one), handed to the child with the overlay: the last close of a detached
     * mount unmounts it and waits for an RCU grace period (namespace_unlock), ~0.1 ms each
     * under load, which the spawner's one thread would otherwise spend per layer and create.
     * The child closes them (sbx_rootfs_close) once it has attached the overlay. */
    int held[SBX_LAYERS_MAX + 1];
    size_t n_held;
};
/* How many detached mounts the root of the plan's sandbox is made from (held above). */
size_t sbx_rootfs_held(const struct sbx_sandbox_plan *plan);
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
#define SBX_ROOTFS_DIR     "rootfs"      /* in the sandbox dir: the mount point of its root */
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
/* Creates the image at path (O_EXCL, 0600): a sparse copy of an empty ext4 of bytes whose root
 * dir belongs to root_owner, formatting that blank (once per size and owner) under
 * disks_dir if needed. */
int sbx_disk_image_create(const char *disks_dir, const char *path, uint64_t bytes, uid_t root_owner,
                          struct sbx_error **err);
/* Attaches image_fd to a free loop device (autoclear); returns an fd of it, its path in dev. */
int sbx_loop_attach(int image_fd, char *dev, size_t cap, struct sbx_error **err);
/* The loop device that already backs the image (image_fd, img: its stat), opened, or else a new
 * one attached to it; its path in dev. Held open, a device cannot detach (autoclear) while we
 * mount through it, and mounting a device in use gives another view of its live superblock,
 * never a second parse of the image. */
int sbx_loop_of_image(int image_fd, const struct stat *img, char *dev, size_t cap,
                      struct sbx_error **err);
/* Mounts the ext4 on dev detached, with mount attributes attrs (MOUNT_ATTR_*); returns the
 * mount fd. */
int sbx_ext4_mount(const char *dev, unsigned int attrs, struct sbx_error **err);
/* Creates <sandbox_dir>/disk.img: a sparse copy of an empty ext4 of limits.disk_bytes,
 * formatting that blank (once per size) in disks_dir if needed. For a reboot, checks
 * that the image of the earlier boot is there. */
int sbx_disk_prepare(const struct sbx_sandbox_plan *plan, struct sbx_error **err);
/* Attaches disk.img to an autoclear loop device and mounts it detached (or takes the kept
 * mount plan->disk_mount), and gives the upper and work dirs in it to plan->host_uid_base
 * (for a reboot: opens those it has). */
int sbx_disk_open_upper(const struct sbx_sandbox_plan *plan, struct sbx_upper_dirs *out,
                        struct sbx_error **err);
void sbx_upper_dirs_close(struct sbx_upper_dirs *d);
/* Allocated bytes and size of <sandbox_dir>/disk.img; -1 with errno (ENOENT: no image). */
int sbx_disk_usage(const char *sandbox_dir, uint64_t *bytes, uint64_t *size);

/* ---- volume.c (parent side, host root) ---- */
/* A detached mount of the volume at image, idmapped through userns_fd, nodev and nosuid; it
 * shares the volume's filesystem with every other mount of it. */
int sbx_volume_mount(const char *image, int userns_fd, struct sbx_error **err);

/* ---- runtime.c (parent side, host root) ---- */
/* A detached, read-only, nosuid, nodev clone of the agent runtime at dir, for one sandbox. */
int sbx_agent_runtime_mount(const char *dir, struct sbx_error **err);

/* ---- mounts.c (child side) ---- */
int child_mount_private(const char **step);
int child_attach_rootfs(const char *newroot, int root_fd, const char **step);
int child_mount_proc(const char *newroot, const char **step);
int child_mount_dev(const char *newroot, const char **step);
/* A random /proc/sys/kernel/random/boot_id of this boot's own (after /proc and /dev). */
int child_mount_boot_id(const char *newroot, const char **step);
int child_mount_tmpfs(const char *newroot, uint64_t memory_bytes, const char **step);
int child_pivot_root(const char *newroot, const char **step);
/* /sys as a read-only tmpfs holding only fs/cgroup: a read-only view of the sandbox's own
 * cgroup(s), so runtimes (the JVM, Node, Python) find their limits where they look. */
int child_mount_sys(const char *newroot, const char *id, const char **step);
/* lxcfs's /proc files (sbx_lxcfs_files) over the sandbox's own, from lxcfs_dir. */
int child_mount_lxcfs(const char *newroot, const char *lxcfs_dir, const char **step);

/* ---- lxcfs.c ---- */
extern const char *const sbx_lxcfs_files[]; /* NULL-terminated */
/* After pivot_root: attaches fds[i] (detached mounts) at plan->volumes[i].path, making the
 * missing directories, never following a symlink. */
int child_mount_volumes(const struct sbx_sandbox_plan *plan, const int *fds, const char **step);
/* After pivot_root and the /run tmpfs: attaches fd (sbx_agent_runtime_mount) at
 * SBX_AGENT_RUNTIME_PATH. */
int child_mount_runtime(int fd, const char **step);

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
/* Removes dir/name, whatever it is, and everything below it by the same rules; gone already
 * is not an error. */
int sbx_fs_remove_at(int dir, const char *name, struct sbx_error **err);
/* Sum of st_blocks*512 of everything below dirfd, same walking rules. */
int sbx_fs_disk_usage(int dirfd, uint64_t *bytes, struct sbx_error **err);
/* Writes a whole file (O_CREAT|O_TRUNC, mode), optional owner. */
/* Writes all len bytes to fd (retrying short writes and EINTR); -1 with errno. */
int sbx_fs_write_all(int fd, const void *data, size_t len);
int sbx_fs_write_file_at(int dirfd, const char *name, const char *data, size_t len, mode_t mode);
/* snprintf that reports truncation: -1 with ENAMETOOLONG (paths must never be cut). */
int sbx_pathf(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int sbx_fs_read_small(const char *path, char *buf, size_t cap); /* NUL-terminated; -1/errno */
int sbx_fs_write_str(const char *path, const char *s);          /* O_WRONLY, no create */

/* ---- rtnl.c: requests to the netlink route socket fd; 0, or -1 with errno ---- */
struct nlmsghdr;
int sbx_rtnl_open(void);
/* Calls cb for every message of a dump of type (RTM_GETLINK, RTM_GETROUTE for IPv4). */
int sbx_rtnl_dump(int fd, uint16_t type, int (*cb)(const struct nlmsghdr *h, void *ud), void *ud);
/* A veth pair: name here, peer in the network namespace peer_netns. */
int sbx_rtnl_veth_create(int fd, const char *name, const uint8_t mac[6], const char *peer,
                         const uint8_t peer_mac[6], int peer_netns);
int sbx_rtnl_link_up(int fd, int ifindex);
int sbx_rtnl_link_del(int fd, const char *name);
int sbx_rtnl_addr_add(int fd, int ifindex, uint32_t addr); /* addr/32 */
/* dst/prefix through gateway (0: on the link) out of ifindex, in the main table. */
int sbx_rtnl_route_add(int fd, uint32_t dst, int prefix, uint32_t gateway, int ifindex);
int sbx_rtnl_neigh_add(int fd, int ifindex, uint32_t addr, const uint8_t mac[6]); /* permanent */
/* The payload of attribute type of a message whose fixed header is hdrlen bytes, or NULL. */
const void *sbx_rtnl_attr(const struct nlmsghdr *h, size_t hdrlen, unsigned short type,
                          size_t *len);

/* ---- nfnl.c: changes of our sets' elements as one nf_tables batch (a transaction) ---- */
#define SBX_NFNL_MAX_MSGS 8 /* element messages of one batch */
struct sbx_nfnl_batch {
    struct sbx_buf buf;
    uint32_t seq0, n_msgs;            /* n_msgs: so far, the batch's beginning included */
    bool failed;                      /* too large: commit refuses it */
    char what[SBX_NFNL_MAX_MSGS][48]; /* each element message, for errors ("add to allow_5") */
};
/* The socket batches go through, in the caller's network namespace; opened once. -1/errno. */
int sbx_nfnl_open(void);
void sbx_nfnl_begin(struct sbx_nfnl_batch *b);
/* Adds (or deletes) n elements "sandbox . dest[i]" of the interval set set of table (inet);
 * dest NULL: the one element "sandbox" of a plain set. Nothing for n == 0. */
void sbx_nfnl_elems(struct sbx_nfnl_batch *b, bool add, const char *table, const char *set,
                    uint32_t sandbox, const struct sbx_ip4_range *dest, size_t n);
/* Sends the batch and reads the kernel's answers; frees the batch. All its changes are made,
 * or (an error) none. */
int sbx_nfnl_commit(struct sbx_nfnl_batch *b, struct sbx_error **err);

/* ---- net.c / nft.c ---- */
/* The sandbox's interface on the host, "<tag>-<slot>". */
void sbx_net_ifname(const struct sbx_net_config *c, int slot, char out[16]);
/* Parent side, before the child goes on: the sandbox's link, addresses and routes. */
int sbx_net_attach(const struct sbx_net_config *c, int slot, pid_t pid, struct sbx_error **err);
int sbx_nft_init(const struct sbx_net_config *c, struct sbx_error **err);
/* Deletes the rule elements of sandboxes that running() says are not running; *removed gets
 * the number of sets touched. */
int sbx_nft_reconcile(const struct sbx_net_config *c, bool (*running)(int slot, void *ud), void *ud,
                      size_t *removed, struct sbx_error **err);

/* ---- proc.c ---- */
int sbx_proc_start_time(pid_t pid, uint64_t *out);

#endif
