/* The sandbox runtime: turns a validated plan into a running agent as PID 1 inside fresh
 * user, PID, mount, network, IPC, UTS and cgroup namespaces, under cgroup limits and seccomp,
 * on an overlay root whose lower layers are a template's read-only layers (layers.c). It also
 * tears sandboxes down, reads their cgroup counters and keeps the store of layers.
 *
 * This layer never sees JSON or HTTP. It must be called from a single-threaded process
 * (the daemon never starts threads): it forks. */
#ifndef SBX_SANDBOX_H
#define SBX_SANDBOX_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/error.h"
#include "base/ip4.h"
#include "base/limits.h"

#define SBX_SANDBOX_UID_COUNT 65536 /* sandbox uids 0..65535 */
#define SBX_SPAWN_TIMEOUT_MS  10000 /* clone to exec of the agent */
#define SBX_FREEZE_TIMEOUT_MS 5000  /* for every process of a sandbox to stop (pause) */

struct sbx_sandbox_limits {
    uint64_t memory_bytes; /* memory.max / memory.limit_in_bytes */
    uint32_t pids_max;     /* pids.max */
    uint32_t cpu_millis;   /* CPU quota in thousandths of a CPU (1000 = one CPU) */
    uint64_t disk_bytes;   /* size of the sandbox's own filesystem for its writable layer
                            * (a multiple of 4096, at least 16 MiB); writes beyond it fail
                            * with ENOSPC. 0: no limit, the layer lives in sandbox_dir */
};

/* A volume (volume.c) in a sandbox. */
struct sbx_volume_mount {
    const char *image; /* host path of the volume's image, from sbx_volume_create */
    const char *path;  /* where the sandbox sees it: absolute and clean ("/mnt/data") */
};
#define SBX_SANDBOX_MAX_VOLUMES 8
#define SBX_SANDBOX_ARGV_MAX    8 /* PID 1's arguments: the agent takes one or two */
#define SBX_VOLUME_PATH_MAX     255
/* Why path cannot be where a sandbox sees a volume, or NULL if it can: it must be absolute
 * and clean (no "//", ".", ".." or trailing '/'), at most SBX_VOLUME_PATH_MAX bytes of
 * letters, digits and "._-+@/", and not "/" nor in a system directory (/proc, /sys, /dev,
 * /etc, /usr, /bin, /sbin, /lib*, /boot, /run). Pure: the API and the spawner both check. */
const char *sbx_volume_path_check(const char *path);
/* The same for all of a sandbox's volumes: at most SBX_SANDBOX_MAX_VOLUMES, none twice or
 * inside another. NULL, or why, with *bad the index of the offending path. */
const char *sbx_volume_paths_check(const char *const *paths, size_t n, size_t *bad);
/* The sandbox network of a daemon (net.c, nft.c): what the spawner needs to build it. */
#define SBX_NET_TAG_MAX     12
#define SBX_NET_MAX_BLOCKED 32
#define SBX_NET_MAX_OPENED  16
struct sbx_net_config {
    struct sbx_netplan plan;
    /* "sbx<uid block>", unique on the host: the prefix of the sandboxes' interfaces
     * ("<tag>-<slot>") and the name of the nftables table. */
    char tag[SBX_NET_TAG_MAX];
    struct sbx_ip4_range blocked[SBX_NET_MAX_BLOCKED]; /* never reached by any sandbox */
    size_t n_blocked;
};

/* One sandbox's egress rules: destinations allowed (they win over denied ones) and denied,
 * each list normalised (sbx_ip4_ranges_normalize). Anything else is allowed, the blocked
 * ranges of the config aside. */
struct sbx_net_policy {
    const struct sbx_ip4_range *allow, *deny;
    size_t n_allow, n_deny;
    unsigned flags; /* SBX_NET_PROXY_*: which TCP goes to the front end's egress proxy */
};
#define SBX_NET_PROXY_WEB 1u /* ports 80 and 443 (host name rules: SNI, Host) */
#define SBX_NET_PROXY_ALL 2u /* every TCP port (an egress proxy of the client's) */

struct sbx_sandbox_plan {
    const char *id;          /* [a-z0-9]{1,32}; names the cgroup and the host dirs */
    const char *sandbox_dir; /* host dir for this sandbox; the runtime creates it (0711) and
                              * rootfs/ and disk.img (or upper/ work/) in it. Every parent
                              * must be searchable by host_uid_base (the child looks up
                              * <dir>/rootfs). */
    /* The lower layers of "/", top first: directories of the layer store (sbx_layer_path),
     * each a whole root's worth of files owned by sandbox uids. At most SBX_LAYERS_MAX. */
    const char *const *layers;
    size_t n_layers;
    const char *disks_dir; /* blank disk images (disk.c), made on first use */
    uid_t host_uid_base;   /* sandbox uid/gid 0 maps here; SBX_SANDBOX_UID_COUNT ids */
    struct sbx_sandbox_limits limits;
    const char *hostname;
    bool relaxed;    /* keep NET_ADMIN and SYS_ADMIN, allow new non-user namespaces */
    bool disk_ready; /* sandbox_dir came from the disk stock (sbx_disk_stock_take) */
    /* NULL, or the detached mount of sandbox_dir's disk image, kept from an earlier sandbox
     * and emptied (sbx_disk_mount_reset): the root's upper layer is made on it. */
    const int *disk_mount;
    /* The caller keeps the disk mounted: it has disk_mount, or takes the mount made here
     * (sbx_sandbox_spawning_disk; from Linux 6.15, where overlayfs takes layers by fd). */
    bool keep_disk;
    bool reboot; /* boot again on the writable layer an earlier boot of this sandbox left in
                  * sandbox_dir (a filesystem-only resume): it must exist, and host_uid_base
                  * must be the one it had; a failed start leaves it as it was */
    const struct sbx_volume_mount *volumes; /* mounted read-write, owned as on the volume */
    size_t n_volumes;                       /* at most SBX_SANDBOX_MAX_VOLUMES */
    const char *lxcfs_dir; /* an lxcfs mount (sbx_sandbox_lxcfs) whose /proc files replace the
                            * sandbox's; NULL: the kernel's own */
    int agent_listen_fd;   /* listening unix socket; becomes fd 3 of the agent (-1: /dev/null) */
    int agent_stdin_fd;    /* becomes fd 0 of the agent (-1 or 0: /dev/null) */
    int agent_config_fd;   /* readable fd with the agent's JSON config; becomes fd 4 */
    /* What runs as PID 1 with argv: the agent of the runtime at host dir agent_runtime
     * (sbx_agent_runtime_make), through the runtime's loader; or, agent_runtime NULL, the
     * program exe_fd, executed with fexecve (an ELF binary: a script would need its fd across
     * exec). Exactly one of the two. */
    const char *agent_runtime;
    int exe_fd;
    char *const *argv; /* at most SBX_SANDBOX_ARGV_MAX */
    char *const *envp;
    const struct sbx_net_config *net; /* NULL: loopback only */
    int net_slot;                     /* the sandbox's address and interface (its uid slot) */
};

/* A running sandbox as the daemon remembers it (persisted, so it survives daemon restarts). */
struct sbx_sandbox_ref {
    const char *id;
    const char *sandbox_dir;
    pid_t pid;           /* host pid of the agent (PID 1 inside) */
    uint64_t start_time; /* field 22 of /proc/<pid>/stat, guards against pid reuse */
};

struct sbx_sandbox_stats {
    uint64_t cpu_usage_ns; /* cumulative CPU time of the cgroup */
    uint64_t memory_bytes; /* current usage */
    uint64_t memory_cache_bytes;
    uint64_t memory_limit_bytes;
    uint64_t oom_kills; /* processes the OOM killer has killed inside the sandbox */
    uint64_t pids_current;
    uint64_t disk_used_bytes; /* allocated size of the disk image (or of the upper layer): what
                               * the sandbox's disk costs the host */
    /* The sandbox's disk as `df /` shows it inside: its size (the image's, every block counted)
     * and the blocks in use, ext4's metadata included. 0 and the upper layer's usage when the
     * layer has no disk of its own. */
    uint64_t disk_total_bytes;
    uint64_t disk_fs_used_bytes;
};

/* ---- The layer store (layers.c) -----------------------------------------------------------
 * <state_dir>/layers/<key>/: read-only directory trees, one per layer, named by a key of 64
 * lowercase hex digits (the SHA-256 of what made the layer: its definition and its parent's
 * key). Files are owned by the uids they have inside sandboxes (host uid k is sandbox uid k
 * through the idmapped mounts of rootfs.c); overlayfs whiteouts and opaque directories mark
 * what a layer removes from the layers below it. The store is root-only (0700): no host user
 * may change a layer, since every sandbox of the template would see the change. Layers are
 * shared by every template that uses them and never change once in the store. */
#define SBX_LAYER_KEY_LEN 64
/* Per template (a Dockerfile's worth of steps, or a chain of snapshots); overlayfs takes up to
 * 500 lower layers, a SPAWN message with every layer, volume and rule stays under 16 KiB. */
#define SBX_LAYERS_MAX       100
#define SBX_LAYERS_DIR       "layers"
#define SBX_LAYER_NEW_PREFIX ".new-" /* a layer being made: <store>/.new-<key> */

bool sbx_layer_key_is_valid(const char *key);
/* Creates <state_dir>/layers (0700) if needed and removes what an interrupted import left. */
int sbx_layers_prepare(const char *state_dir, struct sbx_error **err);
/* <state_dir>/layers/<key> (malloc), whether or not it exists. */
char *sbx_layer_path(const char *state_dir, const char *key);
bool sbx_layer_exists(const char *state_dir, const char *key);
/* Brings layer key from the host-wide layer cache (<cache_dir>/<key>/tree, built by
 * scripts/templates.sh) into the store: hard links when both are on one filesystem (a few
 * seconds for a large layer, no data copied, the page cache shared), a copy otherwise. A
 * layer already in the store is left as it is. Runs `cp` in a child and waits for it. */
int sbx_layer_import(const char *state_dir, const char *cache_dir, const char *key,
                     struct sbx_error **err);
/* Turns the writable layer of a finished build step's sandbox (one spawned with disk_bytes 0,
 * whose upper dir is <sandbox_dir>/upper/root) into layer key of the store: kills what is
 * left of the sandbox, makes ownership sandbox-relative again (host uid uid_base + k -> k),
 * keeps whiteouts and opaque dirs, drops the xattrs that belong to one mount, and moves the
 * dir into the store. *empty: the step changed no file. Blocking (a walk of everything the
 * step wrote): the spawner runs it in a child. */
int sbx_sandbox_commit(const struct sbx_sandbox_ref *ref, const char *state_dir, const char *key,
                       uid_t uid_base, bool *empty, struct sbx_error **err);
/* Copies the writable layer of a running sandbox (frozen by the caller, so that nothing
 * changes under the copy) into layer key of the store, as sbx_sandbox_commit makes one: the
 * sandbox goes on with its own. Time and space in proportion to what the sandbox changed;
 * refused (RESOURCE_EXHAUSTED) if the store's disk lacks the room, and nothing of the layer
 * is left if it fails. Blocking: the spawner runs it in a child. */
int sbx_sandbox_snapshot(const struct sbx_sandbox_ref *ref, const char *state_dir, const char *key,
                         uid_t uid_base, struct sbx_error **err);
/* Removes what an unfinished making of layer key left (.new-<key>). */
int sbx_layer_drop_unfinished(const char *state_dir, const char *key, struct sbx_error **err);
/* Removes every layer of the store that is not in keep (n keys); returns how many. */
int sbx_layers_gc(const char *state_dir, const char *const *keep, size_t n, struct sbx_error **err);

/* Checks once, at daemon start, what every sandbox needs from the host: Linux 5.19 or later,
 * a cgroup hierarchy with the memory, pids and cpu controllers, loop devices. A missing
 * piece is one clear error with its remedy instead of a failure on every create. On success
 * desc gets a summary for the log, e.g. "kernel=6.1.0 cgroup=v2 overlay_layers=staged". */
int sbx_sandbox_preflight(char *desc, size_t n, struct sbx_error **err);

/* Host uid blocks (uids.c): a daemon's sandboxes take their host uid ranges from one block
 * of SBX_MAX_SANDBOXES ranges, unique on the host. */
#define SBX_UID_BLOCKS_START (1u << 30) /* far above any uid a host hands out */
#define SBX_UID_BLOCK_SIZE   ((uid_t)SBX_MAX_SANDBOXES * SBX_SANDBOX_UID_COUNT)
#define SBX_UID_BLOCKS       11 /* up to 2^30 + 11 * 2^28, below the invalid uid 2^32 - 1 */
/* First host uid of a block. */
uid_t sbx_uid_block_base(int block);
/* Claims a block for this process until it exits: preferred (the block recorded in the state
 * dir, or -1) if no other daemon holds it, else the lowest block that no daemon holds and no
 * process uses. must_keep: the state dir has sandboxes (running or paused) in preferred, so
 * taking another block is an error. Returns the fd of the held lock (keep it open), sets
 * *block. */
int sbx_uid_block_claim(int preferred, bool must_keep, int *block, struct sbx_error **err);

/* ---- The agent runtime (runtime.c) --------------------------------------------------------
 * <state_dir>/runtime/<key>/: the agent's program (sbx carries its ELF image), the host's
 * dynamic loader and every shared library the agent needs, copied from the host, so that the
 * agent runs on any template root, one without glibc or libuv included. key: the SHA-256 of
 * those files, so that an upgrade of sbx or of a host library makes a new runtime. Made by
 * host root and never changed after: all sandboxes share it, each through a read-only,
 * nosuid, nodev mount at SBX_AGENT_RUNTIME_PATH. */
#define SBX_AGENT_RUNTIME_PATH   "/run/sbx-agent" /* on the sandbox's own /run tmpfs */
#define SBX_AGENT_RUNTIME_LOADER "ld.so"
#define SBX_AGENT_RUNTIME_AGENT  "agent"
/* libssl (with libcrypto), which the agent loads on first use (src/agent/lazy_openssl.c) as it
 * does libzmq (SBX_ZMQ_SONAME): the runtime bundles both although the agent starts without. */
#define SBX_OPENSSL_SONAME "libssl.so.3"
/* Makes the runtime for the agent image (if one with the same files is not there yet) and
 * removes every other; *dir (malloc): its host path, for plan.agent_runtime. Blocking. */
int sbx_agent_runtime_make(const char *state_dir, const void *image, size_t len, char **dir,
                           struct sbx_error **err);

/* Raises host-wide kernel tables that sandboxes draw on so that none is smaller than what
 * the sandboxes' own limits allow (fs.file-max, kernel.pty.max). desc gets what changed, e.g.
 * "fs.file-max=2466116->9223372036854775807", or "" if nothing did. */
int sbx_sandbox_raise_host_limits(char *desc, size_t n, struct sbx_error **err);

/* An lxcfs mount serving /proc files per cgroup: the host's, or one started now at
 * /run/sbx/lxcfs (it keeps running after sbx stops: sandboxes outlive the daemon). Writes
 * its dir to dir; an error says why sandboxes will see the host's /proc values. */
int sbx_sandbox_lxcfs(char *dir, size_t n, struct sbx_error **err);

/* Starts a sandbox. On success fills pid and start_time; the agent is already running.
 * Its fd table: 0, 1 and 2 /dev/null (the agent keeps its log in its own memory), 3 and 4
 * from the plan, 5 a read-only fd of the sandbox's memory cgroup counters that count OOM
 * kills (memory.events on v2, memory.oom_control on v1), so it can tell an OOM kill from
 * any other SIGKILL. */
int sbx_sandbox_spawn(const struct sbx_sandbox_plan *plan, pid_t *pid, uint64_t *start_time,
                      struct sbx_error **err);

/* The same in steps, for a caller with an event loop: start clones the sandbox and does the
 * parent's part of its setup (milliseconds of the caller's time); the child then sets itself
 * up on its own while the caller watches sbx_sandbox_spawning_fd for POLLIN and calls step,
 * which answers 1 (not yet), 0 (the agent runs: pid and start_time filled) or -1. Free it in
 * every case; freeing an unfinished one kills the child and removes what was made for it.
 * The plan may go once start has returned. */
struct sbx_sandbox_spawning;
int sbx_sandbox_spawn_start(const struct sbx_sandbox_plan *plan, struct sbx_sandbox_spawning **out,
                            struct sbx_error **err);
int sbx_sandbox_spawning_fd(const struct sbx_sandbox_spawning *s);
int sbx_sandbox_spawn_step(struct sbx_sandbox_spawning *s, pid_t *pid, uint64_t *start_time,
                           struct sbx_error **err);
void sbx_sandbox_spawning_free(struct sbx_sandbox_spawning *s);
/* With plan.keep_disk, once start has returned: an fd of the detached mount of the sandbox's
 * disk (its ext4), which the caller then owns; -1 if it has none. Whoever holds it keeps the
 * disk mounted after the sandbox is gone. */
int sbx_sandbox_spawning_disk(struct sbx_sandbox_spawning *s);

/* True if ref->pid is still that sandbox's agent (pid alive and start time matches). */
bool sbx_sandbox_is_alive(const struct sbx_sandbox_ref *ref);

/* Opens a pidfd for the agent after checking it is still ours; -1 and *err otherwise. */
int sbx_sandbox_open_pidfd(const struct sbx_sandbox_ref *ref, struct sbx_error **err);

/* Finds the agent (the process that is PID 1 inside) of the sandbox whose cgroup is named id,
 * with its start time and the host uid its root maps to; -1 if none runs. */
int sbx_sandbox_find_agent(const char *id, pid_t *pid, uint64_t *start_time, uid_t *uid_base);

/* The first half of destroy, for a caller with an event loop: SIGKILLs the agent (and with
 * it the sandbox's pid namespace) through a pidfd. Returns that pidfd, readable once the
 * agent has exited, or -1 if the agent was already gone; then call sbx_sandbox_destroy,
 * which finds nothing left to wait for. */
int sbx_sandbox_kill(const struct sbx_sandbox_ref *ref);

/* Kills every process of the sandbox, waits until its cgroup is empty, removes the cgroups
 * and the sandbox dir (its contents and the dir itself, without following symlinks). Reaps
 * the agent if it is our child. Idempotent: a sandbox already gone is not an error. */
int sbx_sandbox_destroy(const struct sbx_sandbox_ref *ref, struct sbx_error **err);
/* Empties the dir trash_fd of sandbox dirs a destroy moved there whole (with sbx_sandbox_stop
 * then a rename), without following symlinks. A dir holding nothing but its rootfs, its disk
 * image and files (names of the spawner's regular files and sockets, NULL-terminated) goes to
 * the stock of ready sandbox dirs in the disks dir disks_fd while it has room, its image reset
 * to the blank's bytes; everything else is removed. */
void sbx_sandbox_trash_empty(int trash_fd, int disks_fd, const char *const *files);
/* The stock of ready sandbox dirs that creates take (disk.c), in the disks dir disks_fd: makes
 * one missing stock dir of a sandbox blank and returns 1, or, with none missing, removes those
 * no create can take any more and returns 0. */
int sbx_disk_stock_refill(int disks_fd, struct sbx_error **err);
/* Moves the sandbox dir from_dir/from, open as sub and found holding only its rootfs and disk
 * image, into the stock, its image reset to the blank's bytes: 1; 0 if it cannot be (no blank
 * of its size, the stock full, its image held open elsewhere). */
int sbx_disk_stock_recycle(int disks_fd, int sub, int from_dir, const char *from,
                           struct sbx_error **err);
/* Empties the kept mount (mount_fd, a detached mount) of the disk of a sandbox that is gone,
 * whose dir sub holds only its empty rootfs and its image, for the next sandbox (disk.c): 1 if
 * it then holds what a fresh copy of the blank in the disks dir disks_fd does (bytes: the
 * disk's size), 0 if it must not be used again, -1 on error. */
int sbx_disk_mount_reset(int disks_fd, int sub, int mount_fd, uint64_t *bytes,
                         struct sbx_error **err);
/* The same for the dir kept_fd/name, which must hold nothing else but the spawner's files
 * (as for sbx_sandbox_trash_empty; they are emptied). */
int sbx_sandbox_kept_reset(int kept_fd, const char *name, int disks_fd, int mount_fd,
                           const char *const *files, uint64_t *bytes, struct sbx_error **err);
/* Renames a ready dir of the stock, with a fresh image of a blank of bytes (formatted first if
 * there is none), to dir, which must not exist: 1; 0 if none is ready. */
int sbx_disk_stock_take(const char *disks_dir, uint64_t bytes, const char *dir,
                        struct sbx_error **err);
/* Opens dir, made if missing, as a directory for host root alone (root-owned, 0700): where
 * disk images and sandbox dirs wait (fsutil.c). */
int sbx_fs_open_private_dir(const char *dir, struct sbx_error **err);
/* The same but the sandbox dir stays, with the writable layer: what a filesystem-only pause
 * keeps for a later boot (plan.reboot). Its memory and processes are gone when it returns. */
int sbx_sandbox_stop(const struct sbx_sandbox_ref *ref, struct sbx_error **err);

/* Pausing in place (freeze.c): freeze stops every process of the sandbox where it is, its
 * memory kept, and returns at once; sbx_sandbox_frozen then answers 1 once all have stopped,
 * 0 before (or when thawed), -1 if the sandbox has no freezer cgroup. thaw lets them go on.
 * freeze_asked answers 1 if a freeze was asked and not undone (for a restarted spawner). */
int sbx_sandbox_freeze(const char *id, struct sbx_error **err);
int sbx_sandbox_thaw(const char *id, struct sbx_error **err);
int sbx_sandbox_frozen(const char *id);
int sbx_sandbox_freeze_asked(const char *id);

int sbx_sandbox_stats(const struct sbx_sandbox_ref *ref, struct sbx_sandbox_stats *out,
                      struct sbx_error **err);

/* Creates a volume's image at image (O_EXCL): an empty ext4 of bytes whose root dir belongs to
 * the sandboxes' user (uid 1000), formatted once per size in disks_dir. Deleting it is
 * unlinking it: sandboxes that have it mounted keep it until they end. */
int sbx_volume_create(const char *disks_dir, const char *image, uint64_t bytes,
                      struct sbx_error **err);
/* ---- the sandbox network (net.c, nft.c) ---- */

/* blocked = the always-blocked ranges minus opened (which must lie in sbx_ip4_openable), plus
 * the plan's own range; tag from the daemon's uid block. */
int sbx_net_config_init(struct sbx_net_config *c, const struct sbx_netplan *plan, int uid_block,
                        const struct sbx_ip4_range *opened, size_t n_opened,
                        struct sbx_error **err);
/* At daemon start, before anything is made: whether the host routes any of the plan's range
 * elsewhere (a clash is an error naming it); our own interfaces of an earlier run are fine. */
int sbx_net_check_host(const struct sbx_net_config *c, struct sbx_error **err);
/* At spawner start, idempotent: IP forwarding, the nftables table (rules of running
 * sandboxes are kept). desc gets what changed on the host, or "". */
int sbx_net_host_init(const struct sbx_net_config *c, char *desc, size_t n, struct sbx_error **err);
/* When no sandbox of the daemon runs any more: removes its nftables table. */
void sbx_net_host_fini(const struct sbx_net_config *c);
/* Removes the interfaces and rules of every slot that running() says is not running. */
int sbx_net_reconcile(const struct sbx_net_config *c, bool (*running)(int slot, void *ud), void *ud,
                      char *desc, size_t n, struct sbx_error **err);
/* Points sandboxes' DNS (port 53 of the gateway) at the front end's forwarder, and their
 * proxied TCP (SBX_NET_PROXY_*) at its egress proxy (0: none). */
int sbx_net_set_ports(const struct sbx_net_config *c, uint16_t dns_port, uint16_t proxy_port,
                      struct sbx_error **err);
/* Replaces the egress rules of a slot, atomically (NULL: none, the default). */
int sbx_net_policy_set(const struct sbx_net_config *c, int slot, const struct sbx_net_policy *p,
                       struct sbx_error **err);

#endif
