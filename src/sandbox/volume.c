/* Volumes: storage that outlives sandboxes and that several sandboxes mount at once.
 *
 * Each volume is an ext4 image of its own size (disk.c formats its blank, root dir owned by
 * uid 1000, the sandboxes' "user"), made by the spawner in a root-only dir of the state dir.
 * Every mount of a volume, in any sandbox, shares one ext4 superblock: the image is attached
 * to one loop device at a time, and a new mount of it goes through the device already there,
 * which the kernel answers with the filesystem it has (get_tree_bdev). Two superblocks of one
 * image would corrupt it. Each mount is idmapped through its sandbox's user namespace, so a
 * file's owner on disk is the uid every sandbox sees (on disk 1000 is "user" in all of them),
 * and is nosuid and nodev: what one sandbox leaves on a volume gives nothing to another.
 *
 * Security: as with the sandboxes' disks (disk.c), the host mounts only images that sbx
 * formatted and that nothing but the kernel's ext4 driver has written: sandboxes see the
 * mounted filesystem, never the image or the device. The mount point is made and reached
 * inside the sandbox's root after pivot_root, one component at a time without following
 * symlinks (child_mount_volumes), so a link a sandbox left on its disk cannot send a volume
 * anywhere else. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "sandbox/internal.h"

int
sbx_volume_create(const char *disks_dir, const char *image, uint64_t bytes, struct sbx_error **err)
{
    return sbx_disk_image_create(disks_dir, image, bytes, SBX_SANDBOX_USER_UID, err);
}

int
sbx_volume_mount(const char *image, int userns_fd, struct sbx_error **err)
{
    _cleanup_close_ int img = open(image, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (img < 0 || fstat(img, &st) < 0)
        return errno == ENOENT ? sbx_error_set(err, SBX_NOT_FOUND, ENOENT, "no volume at %s", image)
                               : sbx_error_sys(err, errno, "open %s", image);
    if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 0077))
        return sbx_error_set(err, SBX_INTERNAL, 0, "%s is not a volume image of sbx", image);
    char dev[64];
    _cleanup_close_ int loop = sbx_loop_of_image(img, &st, dev, sizeof(dev), err);
    if (loop < 0)
        return sbx_error_prefix(err, "volume %s", image);
    _cleanup_close_ int m = sbx_ext4_mount(dev, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID, err);
    if (m < 0)
        return sbx_error_prefix(err, "volume %s on %s", image, dev);
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
        .userns_fd = (uint64_t)userns_fd,
    };
    if (mount_setattr(m, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
        return sbx_error_sys(err, errno, "idmap volume %s", image);
    return steal_fd(&m);
}

/* Whether path b is a, or below a. */
static bool
is_within(const char *a, const char *b)
{
    size_t n = strlen(a);
    return strncmp(a, b, n) == 0 && (b[n] == '\0' || b[n] == '/');
}

const char *
sbx_volume_paths_check(const char *const *paths, size_t n, size_t *bad)
{
    if (n > SBX_SANDBOX_MAX_VOLUMES) {
        *bad = SBX_SANDBOX_MAX_VOLUMES;
        return "too many volume mounts";
    }
    for (*bad = 0; *bad < n; (*bad)++) {
        const char *why = sbx_volume_path_check(paths[*bad]);
        if (why)
            return why;
        for (size_t j = 0; j < *bad; j++)
            if (is_within(paths[j], paths[*bad]) || is_within(paths[*bad], paths[j]))
                return "path overlaps another volume mount";
    }
    return NULL;
}

const char *
sbx_volume_path_check(const char *path)
{
    static const char *const system[] = {"proc", "sys",   "dev",   "etc",    "usr",  "bin", "sbin",
                                         "lib",  "lib32", "lib64", "libx32", "boot", "run"};
    size_t n = strlen(path);
    if (n == 0 || path[0] != '/')
        return "path must be absolute";
    if (n > SBX_VOLUME_PATH_MAX)
        return "path is too long";
    if (n == 1)
        return "path must not be the root directory";
    for (const char *p = path; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("._-+@/", *p)))
            return "path may only hold letters, digits and ._-+@/";
    if (strstr(path, "//") || path[n - 1] == '/' || strstr(path, "/./") || strstr(path, "/../") ||
        strcmp(path + n - 2, "/.") == 0 || (n >= 3 && strcmp(path + n - 3, "/..") == 0))
        return "path must be clean (no empty, '.' or '..' components)";
    size_t first = strcspn(path + 1, "/");
    for (size_t i = 0; i < sizeof(system) / sizeof(system[0]); i++)
        if (strlen(system[i]) == first && strncmp(path + 1, system[i], first) == 0)
            return "path must not be in a system directory";
    return NULL;
}
