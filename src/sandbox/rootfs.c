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
#include <sys/mount.h>
#include <sys/stat.h>
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
        return sbx_disk_create(plan, err);
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
