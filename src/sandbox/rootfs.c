/* The sandbox's root filesystem, built by the daemon (host root) after clone, once the
 * child's user namespace has its maps:
 *
 *   /     = overlay(lower: template/rootfs idmapped,            upper: <upper>/root)
 *   /usr  = overlay(lower: template/usrmask idmapped, /usr idmapped, upper: <upper>/usr)
 *
 * <upper> is upper/ of the sandbox's own size-limited ext4 (disk.c) when the plan has a disk
 * limit, else <dir>/upper on the host's filesystem (work dirs alike).
 *
 * Idmapping the lower layers through the sandbox's user namespace makes host-root-owned files
 * appear owned by sandbox root (so setuid sudo works for uid 1000), while files the sandbox
 * writes land in its upper dir owned by its host uid range. Only host root can create
 * idmapped mounts of ext4 (environment.md, "Idmapped template root"). The overlays are
 * created detached (fsmount) and never appear in the host's mount table; the child attaches
 * them in its own mount namespace. usrmask/local is an opaque directory that hides the
 * host's /usr/local (site tools, scripts, credentials helpers). */
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
        snprintf(p, sizeof(p), "%s/rootfs", d);
        if (mkdir_owned(p, 0755, 0, 0, err) < 0)
            return -1;
        return sbx_disk_prepare(plan, err);
    }
    struct {
        const char *sub;
        mode_t mode;
        bool sandbox_owned;
    } const dirs[] = {
        {"rootfs", 0755, false},    /* mount point, in the child's mount namespace only */
        {"upper", 0700, false},     /* overlay accesses these with the mounter's (host root) */
        {"work", 0700, false},      /* credentials, so the sandbox uid needs no access here */
        {"upper/root", 0755, true}, /* the upper dirs' own owner and mode are what the */
        {"upper/usr", 0755, true},  /* sandbox sees for / and /usr */
        {"work/root", 0755, true},  {"work/usr", 0755, true},
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
        (out->work_root = open_dir_path(d, "work/root", err)) < 0 ||
        (out->upper_usr = open_dir_path(d, "upper/usr", err)) < 0 ||
        (out->work_usr = open_dir_path(d, "work/usr", err)) < 0) {
        sbx_upper_dirs_close(out);
        return -1;
    }
    return 0;
}

/* ---- Kernels before 6.15 ---------------------------------------------------------------
 * Overlayfs takes its layers as fds from Linux 6.13 and accepts detached mounts as layers from
 * 6.15; before that each layer must be a mount of the mounter's own mount namespace, named by
 * path. So a short-lived child of the daemon makes the same two overlays in a private mount
 * namespace of its own, where it attaches the detached layers under a tmpfs (nothing reaches
 * the host's mount table), and passes the detached overlays back. Works from Linux 5.19
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

/* The staging child. Layers are named relative to the staging dir (our cwd), so no path of
 * the state dir, which may hold ':' or ',', reaches the overlay's option parser. */
__attribute__((noreturn)) static void
stage_main(int sock, const char *sandbox_dir, const int lowers[3], int disk_mount)
{
    char stage[4096];
    if (sbx_pathf(stage, sizeof(stage), "%s/rootfs", sandbox_dir) < 0)
        stage_fail(sock, "staging path");
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        stage_fail(sock, "private mount namespace");
    if (mount("sbx-stage", stage, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0 ||
        chdir(stage) < 0)
        stage_fail(sock, "staging tmpfs");
    if (attach_at(lowers[0], "t") < 0 || attach_at(lowers[1], "m") < 0 ||
        attach_at(lowers[2], "u") < 0)
        stage_fail(sock, "attach lower layers");
    /* d/ holds upper/ and work/: the disk image's ext4, or the sandbox dir (same layout). */
    if (disk_mount >= 0 ? attach_at(disk_mount, "d") < 0
                        : mkdir("d", 0700) < 0 || mount(sandbox_dir, "d", NULL, MS_BIND, NULL) < 0)
        stage_fail(sock, "attach upper layer");
    int fds[2];
    char why[256];
    if ((fds[0] = overlay_by_path("t", "d/upper/root", "d/work/root", why, sizeof(why))) < 0 ||
        (fds[1] = overlay_by_path("m:u", "d/upper/usr", "d/work/usr", why, sizeof(why))) < 0)
        stage_fail(sock, why);
    struct stage_msg m = {0};
    _exit(sbx_send_fds(sock, &m, sizeof(m), fds, 2) < 0 ? 1 : 0);
}

static int
overlays_staged(const struct sbx_sandbox_plan *plan, const int lowers[3],
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
        stage_main(sv[1], plan->sandbox_dir, lowers, up->mount_fd);
    }
    close(sv[1]);
    struct stage_msg m;
    int fds[2];
    ssize_t n = sbx_recv_fds(sv[0], &m, sizeof(m), fds, 2);
    int e = errno;
    close(sv[0]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (n != (ssize_t)sizeof(m))
        return sbx_error_sys(err, n < 0 ? e : EPROTO, "overlay staging child");
    if (m.err != 0 || fds[0] < 0) {
        m.step[sizeof(m.step) - 1] = '\0';
        e = m.err != 0 ? m.err : EPROTO;
        return sbx_error_set(err, sbx_code_from_errno(e), e, "%s: %s", m.step, strerror(e));
    }
    out->root_fd = fds[0];
    out->usr_fd = fds[1];
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

int
sbx_rootfs_open(const struct sbx_sandbox_plan *plan, int userns_fd, struct sbx_rootfs *out,
                struct sbx_error **err)
{
    char p[4096];
    out->root_fd = out->usr_fd = -1;

    snprintf(p, sizeof(p), "%s/" SBX_TEMPLATE_ROOTFS, plan->template_dir);
    _cleanup_close_ int tmpl = idmapped_clone(p, userns_fd, err);
    if (tmpl < 0)
        return -1;
    snprintf(p, sizeof(p), "%s/" SBX_TEMPLATE_USRMASK, plan->template_dir);
    _cleanup_close_ int mask = idmapped_clone(p, userns_fd, err);
    if (mask < 0)
        return -1;
    _cleanup_close_ int usr = idmapped_clone("/usr", userns_fd, err);
    if (usr < 0)
        return -1;

    struct sbx_upper_dirs up = {-1, -1, -1, -1, -1};
    if ((plan->limits.disk_bytes > 0 ? sbx_disk_open_upper(plan, &up, err)
                                     : open_host_upper(plan, &up, err)) < 0)
        return sbx_error_prefix(err, "upper layer");

    if (!sbx_rootfs_layers_by_fd()) {
        int lowers[3] = {tmpl, mask, usr};
        int rc = overlays_staged(plan, lowers, &up, out, err);
        sbx_upper_dirs_close(&up);
        return rc < 0 ? sbx_error_prefix(err, "overlays (staged)") : 0;
    }
    /* nodev: the sandbox cannot mknod anyway; this keeps an upper-layer node inert. */
    int root = overlay(&tmpl, 1, up.upper_root, up.work_root, MOUNT_ATTR_NODEV, err);
    if (root < 0) {
        sbx_upper_dirs_close(&up);
        return sbx_error_prefix(err, "root overlay");
    }
    int lowers[2] = {mask, usr};
    int u = overlay(lowers, 2, up.upper_usr, up.work_usr, MOUNT_ATTR_NODEV, err);
    /* The overlays hold their own references to the upper layer from here on. */
    sbx_upper_dirs_close(&up);
    if (u < 0) {
        close(root);
        return sbx_error_prefix(err, "/usr overlay");
    }
    out->root_fd = root;
    out->usr_fd = u;
    return 0;
}

void
sbx_rootfs_close(struct sbx_rootfs *r)
{
    if (r->root_fd >= 0)
        close(r->root_fd);
    if (r->usr_fd >= 0)
        close(r->usr_fd);
    r->root_fd = r->usr_fd = -1;
}
