/* The sandbox's root filesystem, built by the spawner (host root) after clone, once the
 * child's user namespace has its maps:
 *
 *   / = overlay(lower: the template's layers, top first, each idmapped;  upper: <upper>/root)
 *
 * <upper> is upper/ of the sandbox's own size-limited ext4 (disk.c) when the plan has a disk
 * limit, else <dir>/upper on the host's filesystem (work dir alike). Nothing of the host's own
 * filesystem is a layer: the layers come from the layer store (layers.c).
 *
 * Idmapping each lower layer through the sandbox's user namespace makes a file that the layer
 * stores as owned by uid k appear owned by sandbox uid k (so root's setuid sudo works for uid
 * 1000), while files the sandbox writes land in its upper dir owned by its host uid range.
 * Only host root can create idmapped mounts of ext4 (environment.md, "Idmapped template
 * root"). The overlay is created detached (fsmount) and never appears in the host's mount
 * table; the child attaches it in its own mount namespace. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "sandbox/internal.h"

static int
mkdir_owned(const char *path, mode_t mode, uid_t uid, gid_t gid, struct sbx_error **err)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", path);
    /* Never chown through a symlink: the path is below our own sandbox dir, but be exact. */
    struct stat st;
    if (lstat(path, &st) < 0)
        return sbx_error_sys(err, errno, "stat %s", path);
    if (!S_ISDIR(st.st_mode))
        return sbx_error_set(err, SBX_INTERNAL, ENOTDIR, "%s is not a directory", path);
    if (lchown(path, uid, gid) < 0)
        return sbx_error_sys(err, errno, "chown %s", path);
    if (chmod(path, mode) < 0)
        return sbx_error_sys(err, errno, "chmod %s", path);
    return 0;
}

int
sbx_rootfs_prepare_dirs(const struct sbx_sandbox_plan *plan, struct sbx_error **err)
{
    const char *d = plan->sandbox_dir;
    uid_t u = plan->host_uid_base;
    char p[4096];
    /* 0711: the child, already sandbox root (a host uid without privilege), must be able to
     * look up <dir>/rootfs to attach its root overlay there. */
    if (mkdir_owned(d, 0711, 0, 0, err) < 0)
        return -1;
    if (plan->limits.disk_bytes > 0) {
        /* The upper and work dirs live in the disk image (disk.c). */
        snprintf(p, sizeof(p), "%s/" SBX_ROOTFS_DIR, d);
        if (mkdir_owned(p, 0755, 0, 0, err) < 0)
            return -1;
        return sbx_disk_prepare(plan, err);
    }
    struct {
        const char *sub;
        mode_t mode;
        bool sandbox_owned;
    } const dirs[] = {
        {SBX_ROOTFS_DIR, 0755, false}, /* mount point, in the child's mount namespace only */
        {"upper", 0700, false},        /* overlay accesses these with the mounter's (host root) */
        {"work", 0700, false},         /* credentials, so the sandbox uid needs no access here */
        {"upper/root", 0755, true},    /* the upper dir's own owner and mode are what the */
        {"work/root", 0755, true},     /* sandbox sees for / */
    };
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", d, dirs[i].sub);
        uid_t o = dirs[i].sandbox_owned ? u : 0;
        if (mkdir_owned(p, dirs[i].mode, o, o, err) < 0)
            return -1;
    }
    return 0;
}

/* A detached clone of path, idmapped through userns_fd, read-only and nodev. Not nosuid:
 * sudo must stay setuid. */
static int
idmapped_clone(const char *path, int userns_fd, struct sbx_error **err)
{
    int fd = open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (fd < 0)
        return sbx_error_sys(err, errno, "open_tree %s", path);
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV,
        .userns_fd = (uint64_t)userns_fd,
    };
    if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0) {
        int e = errno;
        close(fd);
        return sbx_error_sys(err, e, "idmap %s", path);
    }
    return fd;
}

int
sbx_fsopen_error(int fs, int e, const char *what, struct sbx_error **err)
{
    char log[512];
    ssize_t n = read(fs, log, sizeof(log) - 1);
    if (n > 0) {
        log[n] = '\0';
        if (log[n - 1] == '\n')
            log[n - 1] = '\0';
        return sbx_error_set(err, sbx_code_from_errno(e), e, "%s: %s (%s)", what, strerror(e), log);
    }
    return sbx_error_sys(err, e, "%s", what);
}

static int
overlay(const int *lowers, size_t n, int upper, int work, unsigned attrs, struct sbx_error **err)
{
    _cleanup_close_ int fs = fsopen("overlay", FSOPEN_CLOEXEC);
    if (fs < 0)
        return sbx_error_sys(err, errno, "fsopen overlay");
    /* "lowerdir+" (Linux 6.8) takes the idmapped mounts as fds; the first is the top. */
    for (size_t i = 0; i < n; i++)
        if (fsconfig(fs, FSCONFIG_SET_FD, "lowerdir+", NULL, lowers[i]) < 0)
            return sbx_fsopen_error(fs, errno, "overlay lowerdir+", err);
    /* upperdir and workdir as fds too (the same kernels as lowerdir+ fds; checked on 6.18,
     * where "upperdir+" does not exist): the disk image's ext4 is a detached mount with no
     * path anywhere. Overlayfs clones it privately, so the overlay then holds it. */
    if (fsconfig(fs, FSCONFIG_SET_FD, "upperdir", NULL, upper) < 0)
        return sbx_fsopen_error(fs, errno, "overlay upperdir", err);
    if (fsconfig(fs, FSCONFIG_SET_FD, "workdir", NULL, work) < 0)
        return sbx_fsopen_error(fs, errno, "overlay workdir", err);
    if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
        return sbx_fsopen_error(fs, errno, "overlay create", err);
    int m = fsmount(fs, FSMOUNT_CLOEXEC, attrs);
    if (m < 0)
        return sbx_fsopen_error(fs, errno, "fsmount overlay", err);
    return m;
}

static int
open_dir_path(const char *dir, const char *sub, struct sbx_error **err)
{
    char p[4096];
    if (sbx_pathf(p, sizeof(p), "%s/%s", dir, sub) < 0)
        return sbx_error_sys(err, errno, "path of %s", sub);
    int fd = open(p, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return sbx_error_sys(err, errno, "open %s", p);
    return fd;
}

/* The upper and work dirs prepared by sbx_rootfs_prepare_dirs, in the host's filesystem. */
static int
open_host_upper(const struct sbx_sandbox_plan *plan, struct sbx_upper_dirs *out,
                struct sbx_error **err)
{
    const char *d = plan->sandbox_dir;
    if ((out->upper_root = open_dir_path(d, "upper/root", err)) < 0 ||
        (out->work_root = open_dir_path(d, "work/root", err)) < 0) {
        sbx_upper_dirs_close(out);
        return -1;
    }
    return 0;
}

/* ---- Kernels before 6.15 ---------------------------------------------------------------
 * Overlayfs takes its layers as fds from Linux 6.13 and accepts detached mounts as layers from
 * 6.15; before that each layer must be a mount of the mounter's own mount namespace, named by
 * path. So a short-lived child of the spawner makes the same overlay in a private mount
 * namespace of its own, where it attaches the detached layers under a tmpfs (nothing reaches
 * the host's mount table), and passes the detached overlay back. Works from Linux 5.19
 * (idmapped overlay layers). */

struct stage_msg {
    int32_t err;
    char step[256];
};

__attribute__((noreturn)) static void
stage_fail(int sock, const char *step)
{
    struct stage_msg m = {.err = errno};
    snprintf(m.step, sizeof(m.step), "%s", step);
    (void)!send(sock, &m, sizeof(m), MSG_NOSIGNAL);
    _exit(1);
}

static int
attach_at(int mount_fd, const char *at)
{
    if (mkdir(at, 0700) < 0)
        return -1;
    return move_mount(mount_fd, "", AT_FDCWD, at, MOVE_MOUNT_F_EMPTY_PATH);
}

/* An overlay of layers named by path, or -1 with errno and, in why, the step and whatever
 * overlayfs logged about it. */
static int
overlay_by_path(const char *lower, const char *upper, const char *work, char *why, size_t n)
{
    snprintf(why, n, "overlay of %s", lower);
    _cleanup_close_ int fs = fsopen("overlay", FSOPEN_CLOEXEC);
    if (fs < 0)
        return -1;
    if (fsconfig(fs, FSCONFIG_SET_STRING, "lowerdir", lower, 0) == 0 &&
        fsconfig(fs, FSCONFIG_SET_STRING, "upperdir", upper, 0) == 0 &&
        fsconfig(fs, FSCONFIG_SET_STRING, "workdir", work, 0) == 0 &&
        fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
        return fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NODEV);
    int e = errno;
    char log[160];
    ssize_t k = read(fs, log, sizeof(log) - 1);
    if (k > 0) {
        log[k - (log[k - 1] == '\n')] = '\0';
        snprintf(why, n, "overlay of %s (%s)", lower, log);
    }
    errno = e;
    return -1;
}

/* A layer's name in the staging dir: i in base 62, "0" the top one. The kernel copies the
 * "lowerdir" string with a bound of 255 bytes (fsconfig's strndup_user); in decimal, 100 layers
 * take 289 and more than 88 fail, in base 62 they take 237. */
static void
stage_name(size_t i, char name[static 3])
{
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    size_t k = 0;
    if (i >= 62)
        name[k++] = digits[i / 62];
    name[k++] = digits[i % 62];
    name[k] = '\0';
}

_Static_assert(SBX_LAYERS_MAX <= 62 * 62, "a staged layer's name has at most two digits");
_Static_assert(SBX_LAYERS_MAX * 3 - 1 - (SBX_LAYERS_MAX < 62 ? SBX_LAYERS_MAX : 62) <= 255,
               "the staged lowerdir string fits the kernel's bound");

/* The staging child. Layers are named relative to the staging dir (our cwd), so no path of
 * the state dir, which may hold ':' or ',', reaches the overlay's option parser. */
__attribute__((noreturn)) static void
stage_main(int sock, const char *sandbox_dir, const int *lowers, size_t n, int disk_mount)
{
    char stage[4096], lowerdir[SBX_LAYERS_MAX * 3], name[3];
    if (sbx_pathf(stage, sizeof(stage), "%s/rootfs", sandbox_dir) < 0)
        stage_fail(sock, "staging path");
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        stage_fail(sock, "private mount namespace");
    if (mount("sbx-stage", stage, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0 ||
        chdir(stage) < 0)
        stage_fail(sock, "staging tmpfs");
    lowerdir[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        stage_name(i, name);
        if (attach_at(lowers[i], name) < 0)
            stage_fail(sock, "attach lower layers");
        strcat(lowerdir, i ? ":" : "");
        strcat(lowerdir, name);
    }
    /* _/ holds upper/ and work/: the disk image's ext4, or the sandbox dir (same layout).
     * '_' is no base-62 digit, so no layer has its name. */
    if (disk_mount >= 0 ? attach_at(disk_mount, "_") < 0
                        : mkdir("_", 0700) < 0 || mount(sandbox_dir, "_", NULL, MS_BIND, NULL) < 0)
        stage_fail(sock, "attach upper layer");
    int fd;
    char why[256];
    if ((fd = overlay_by_path(lowerdir, "_/upper/root", "_/work/root", why, sizeof(why))) < 0)
        stage_fail(sock, why);
    struct stage_msg m = {0};
    _exit(sbx_send_fds(sock, &m, sizeof(m), &fd, 1) < 0 ? 1 : 0);
}

static int
overlay_staged(const struct sbx_sandbox_plan *plan, const int *lowers,
               const struct sbx_upper_dirs *up, struct sbx_rootfs *out, struct sbx_error **err)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return sbx_error_sys(err, errno, "socketpair");
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        return sbx_error_sys(err, e, "fork");
    }
    if (pid == 0) {
        close(sv[0]);
        stage_main(sv[1], plan->sandbox_dir, lowers, plan->n_layers, up->mount_fd);
    }
    close(sv[1]);
    struct stage_msg m;
    int fd;
    ssize_t n = sbx_recv_fds(sv[0], &m, sizeof(m), &fd, 1);
    int e = errno;
    close(sv[0]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (n != (ssize_t)sizeof(m))
        return sbx_error_sys(err, n < 0 ? e : EPROTO, "overlay staging child");
    if (m.err != 0 || fd < 0) {
        m.step[sizeof(m.step) - 1] = '\0';
        e = m.err != 0 ? m.err : EPROTO;
        return sbx_error_set(err, sbx_code_from_errno(e), e, "%s: %s", m.step, strerror(e));
    }
    out->root_fd = fd;
    return 0;
}

bool
sbx_kernel_version(int *major, int *minor)
{
    struct utsname u;
    return uname(&u) == 0 && sscanf(u.release, "%d.%d", major, minor) == 2;
}

/* Decided by version, once: a failed attempt could not be told from a real error in the
 * layers. */
bool
sbx_rootfs_layers_by_fd(void)
{
    static int known = -1;
    int major, minor;
    if (known < 0)
        known = sbx_kernel_version(&major, &minor) && (major > 6 || (major == 6 && minor >= 15));
    return known;
}

static void
close_all(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

int
sbx_rootfs_open(const struct sbx_sandbox_plan *plan, int userns_fd, struct sbx_rootfs *out,
                struct sbx_error **err)
{
    out->root_fd = -1;
    out->n_held = 0;
    if (plan->n_layers > SBX_LAYERS_MAX) /* the plan's validation refused it already */
        return sbx_error_set(err, SBX_INTERNAL, 0, "too many layers");
    int lowers[SBX_LAYERS_MAX];
    for (size_t i = 0; i < plan->n_layers; i++) {
        lowers[i] = idmapped_clone(plan->layers[i], userns_fd, err);
        if (lowers[i] < 0) {
            close_all(lowers, i);
            return -1;
        }
    }
    struct sbx_upper_dirs up = {-1, -1, -1};
    int rc = plan->limits.disk_bytes > 0 ? sbx_disk_open_upper(plan, &up, err)
                                         : open_host_upper(plan, &up, err);
    if (rc < 0) {
        sbx_error_prefix(err, "upper layer");
    } else if (!sbx_rootfs_layers_by_fd()) {
        if ((rc = overlay_staged(plan, lowers, &up, out, err)) < 0)
            sbx_error_prefix(err, "overlay (staged)");
    } else {
        /* nodev: the sandbox cannot mknod anyway; this keeps an upper-layer node inert. */
        out->root_fd =
            overlay(lowers, plan->n_layers, up.upper_root, up.work_root, MOUNT_ATTR_NODEV, err);
        if ((rc = out->root_fd) < 0)
            sbx_error_prefix(err, "root overlay");
    }
    /* The overlay holds its own references to its layers from here on; the detached mounts
     * they are go to the child (struct sbx_rootfs). */
    if (rc < 0) {
        close_all(lowers, plan->n_layers);
    } else {
        memcpy(out->held, lowers, plan->n_layers * sizeof(int));
        out->n_held = plan->n_layers;
        if (up.mount_fd >= 0)
            out->held[out->n_held++] = up.mount_fd;
        up.mount_fd = -1;
    }
    sbx_upper_dirs_close(&up);
    return rc < 0 ? -1 : 0;
}

size_t
sbx_rootfs_held(const struct sbx_sandbox_plan *plan)
{
    return plan->n_layers + (plan->limits.disk_bytes > 0);
}

void
sbx_rootfs_close(struct sbx_rootfs *r)
{
    if (r->root_fd >= 0)
        close(r->root_fd);
    r->root_fd = -1;
    close_all(r->held, r->n_held);
    r->n_held = 0;
}
