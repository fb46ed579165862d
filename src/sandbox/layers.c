/* The layer store, <state_dir>/layers (see sandbox.h). A layer arrives in the store whole or
 * not at all: it is made under a temporary name (.new-<key>) and renamed into place, and
 * whatever an interrupted import left is removed at the next start. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "sandbox/internal.h"

#define NEW_PREFIX SBX_LAYER_NEW_PREFIX
/* Left free on the store's disk after a snapshot's copy, for the store and the daemon. */
#define SNAPSHOT_RESERVE_BYTES (64ull << 20)

bool
sbx_layer_key_is_valid(const char *key)
{
    size_t n = 0;
    for (; key[n]; n++)
        if (!((key[n] >= '0' && key[n] <= '9') || (key[n] >= 'a' && key[n] <= 'f')))
            return false;
    return n == SBX_LAYER_KEY_LEN;
}

char *
sbx_layer_path(const char *state_dir, const char *key)
{
    char *p;
    if (asprintf(&p, "%s/" SBX_LAYERS_DIR "/%s", state_dir, key) < 0)
        abort();
    return p;
}

bool
sbx_layer_exists(const char *state_dir, const char *key)
{
    if (!sbx_layer_key_is_valid(key))
        return false;
    _cleanup_free_ char *p = sbx_layer_path(state_dir, key);
    struct stat st;
    return lstat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Calls fn for every entry of the store but . and ..; stops at the first failure. */
static int
each_entry(const char *state_dir,
           int (*fn)(int dir, const char *name, void *ud, struct sbx_error **), void *ud,
           struct sbx_error **err)
{
    char p[4096];
    if (sbx_pathf(p, sizeof(p), "%s/" SBX_LAYERS_DIR, state_dir) < 0)
        return sbx_error_sys(err, errno, "layer store path");
    DIR *d = opendir(p);
    if (d == NULL)
        return sbx_error_sys(err, errno, "open %s", p);
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            rc = fn(dirfd(d), e->d_name, ud, err);
    closedir(d);
    return rc;
}

static int
drop_unfinished(int dir, const char *name, void *ud, struct sbx_error **err)
{
    (void)ud;
    return strncmp(name, NEW_PREFIX, strlen(NEW_PREFIX)) == 0 ? sbx_fs_remove_at(dir, name, err)
                                                              : 0;
}

int
sbx_layers_prepare(const char *state_dir, struct sbx_error **err)
{
    char p[4096];
    if (sbx_pathf(p, sizeof(p), "%s/" SBX_LAYERS_DIR, state_dir) < 0)
        return sbx_error_sys(err, errno, "layer store path");
    if (mkdir(p, 0700) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", p);
    /* Root-only: a host user who could reach a layer could change what every sandbox of
     * its templates runs, and layer files carry sandbox uids that may be host users' too. */
    if (chown(p, 0, 0) < 0 || chmod(p, 0700) < 0)
        return sbx_error_sys(err, errno, "secure %s", p);
    return each_entry(state_dir, drop_unfinished, NULL, err);
}

/* Runs cp with argv and waits for it; cp keeps owners, modes, times and extended attributes
 * (overlayfs' opaque-dir marks are trusted.* xattrs, which only root can copy). */
static int
run_cp(char *const argv[], struct sbx_error **err)
{
    pid_t pid = fork();
    if (pid < 0)
        return sbx_error_sys(err, errno, "fork");
    if (pid == 0) {
        char *const envp[] = {"PATH=/usr/bin:/bin", "LC_ALL=C", NULL};
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0)
            dup2(null, STDIN_FILENO);
        execve("/usr/bin/cp", argv, envp);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return sbx_error_sys(err, errno, "wait for cp");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "cp exited with status %d",
                             WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    return 0;
}

int
sbx_layer_drop_unfinished(const char *state_dir, const char *key, struct sbx_error **err)
{
    char p[4096];
    if (!sbx_layer_key_is_valid(key) ||
        sbx_pathf(p, sizeof(p), "%s/" SBX_LAYERS_DIR "/" NEW_PREFIX "%s", state_dir, key) < 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad layer key");
    return sbx_fs_remove_at(AT_FDCWD, p, err);
}

int
sbx_layer_import(const char *state_dir, const char *cache_dir, const char *key,
                 struct sbx_error **err)
{
    if (!sbx_layer_key_is_valid(key))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad layer key");
    if (sbx_layer_exists(state_dir, key))
        return 0;
    char src[4096], info[4096], tmp[4096];
    _cleanup_free_ char *dst = sbx_layer_path(state_dir, key);
    if (sbx_pathf(src, sizeof(src), "%s/%s/tree", cache_dir, key) < 0 ||
        sbx_pathf(info, sizeof(info), "%s/%s/info", cache_dir, key) < 0 ||
        sbx_pathf(tmp, sizeof(tmp), "%s/" SBX_LAYERS_DIR "/" NEW_PREFIX "%s", state_dir, key) < 0)
        return sbx_error_sys(err, errno, "layer path");
    /* info is written last by scripts/templates.sh: without it the layer is not finished. */
    struct stat st_src, st_store;
    if (access(info, F_OK) < 0 || lstat(src, &st_src) < 0 || !S_ISDIR(st_src.st_mode))
        return sbx_error_set(err, SBX_NOT_FOUND, 0,
                             "layer %s is not in the layer cache %s: build the built-in "
                             "templates with scripts/templates.sh build (make serve does; the "
                             "package's sbx-templates service runs it)",
                             key, cache_dir);
    char store[4096];
    snprintf(store, sizeof(store), "%s/" SBX_LAYERS_DIR, state_dir);
    if (stat(store, &st_store) < 0)
        return sbx_error_sys(err, errno, "stat %s", store);
    /* Hard links share the cache's inodes (and their page cache); a layer never changes, so
     * sharing them is safe. Another filesystem gets a copy. */
    bool same_fs = st_src.st_dev == st_store.st_dev;
    char *const argv[] = {"cp", "-a", same_fs ? "-l" : "--reflink=auto", "-T", "--", src,
                          tmp,  NULL};
    struct sbx_error *ignored = NULL;
    if (sbx_fs_remove_at(AT_FDCWD, tmp, &ignored) < 0)
        sbx_error_free(ignored);
    if (run_cp(argv, err) < 0)
        return sbx_error_prefix(err, "import layer %s from %s", key, cache_dir);
    if (rename(tmp, dst) < 0)
        return sbx_error_sys(err, errno, "rename %s", tmp);
    return 0;
}

struct gc {
    const char *const *keep;
    size_t n;
    size_t removed;
    struct timespec start;
};

static int
drop_unkept(int dir, const char *name, void *ud, struct sbx_error **err)
{
    struct gc *g = ud;
    /* A layer in the making (a commit, a Debian root, an image) is no one's yet: it stays,
     * and what a crash left of one goes at the next start (sbx_layers_prepare). */
    if (strncmp(name, NEW_PREFIX, strlen(NEW_PREFIX)) == 0)
        return 0;
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->keep[i], name) == 0)
            return 0;
    /* A layer made (or renamed into place) since the walk began was not in the list it was
     * given: a snapshot's, say. Never ours to judge. */
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        (st.st_ctim.tv_sec > g->start.tv_sec ||
         (st.st_ctim.tv_sec == g->start.tv_sec && st.st_ctim.tv_nsec >= g->start.tv_nsec)))
        return 0;
    g->removed++;
    return sbx_fs_remove_at(dir, name, err);
}

int
sbx_layers_gc(const char *state_dir, const char *const *keep, size_t n, struct sbx_error **err)
{
    struct gc g = {keep, n, 0, {0, 0}};
    clock_gettime(CLOCK_REALTIME, &g.start);
    return each_entry(state_dir, drop_unkept, &g, err) < 0 ? -1 : (int)g.removed;
}

/* ---- commit ---- */

/* Overlayfs marks a layer keeps; everything else trusted.overlay.* (origin, impure, ...)
 * describes the upper dir of one mount, not a layer. */
static bool
keep_xattr(const char *name)
{
    if (strncmp(name, "trusted.overlay.", 16) == 0)
        return strcmp(name + 16, "opaque") == 0 || strcmp(name + 16, "whiteout") == 0 ||
               strcmp(name + 16, "whiteouts") == 0;
    /* File capabilities written in a sandbox name its host root uid (v3, "rootid"): they
     * would mean nothing, or something else, in another sandbox. */
    return strncmp(name, "security.", 9) != 0;
}

static int
clean_xattrs(const char *path, struct sbx_error **err)
{
    char names[8192];
    ssize_t n = llistxattr(path, names, sizeof(names));
    if (n < 0)
        return errno == ENOTSUP ? 0 : sbx_error_sys(err, errno, "list xattrs of %s", path);
    for (char *p = names; p < names + n; p += strlen(p) + 1)
        if (!keep_xattr(p) && lremovexattr(path, p) < 0 && errno != ENODATA)
            return sbx_error_sys(err, errno, "remove xattr %s of %s", p, path);
    return 0;
}

/* Host uid of a sandbox file -> the uid the layer stores (sandbox-relative). */
static uid_t
shift_id(uid_t id, uid_t base)
{
    if (id >= base && id - base < SBX_SANDBOX_UID_COUNT)
        return id - base;
    return 65534; /* not the sandbox's: nobody (cannot happen for what its kernel wrote) */
}

/* Makes every entry below upper sandbox-relative: owner shifted, setuid/setgid bits put back
 * (chown clears them), mount-specific xattrs dropped. Never follows a symlink: fts walks
 * physically and every call acts on the entry itself. *entries: how many there were. */
static int
shift_tree(const char *upper, uid_t base, size_t *entries, struct sbx_error **err)
{
    char *const roots[] = {(char *)upper, NULL};
    FTS *fts = fts_open(roots, FTS_PHYSICAL | FTS_XDEV | FTS_NOCHDIR, NULL);
    if (fts == NULL)
        return sbx_error_sys(err, errno, "walk %s", upper);
    int rc = 0;
    *entries = 0;
    while (rc == 0) {
        errno = 0;
        FTSENT *e = fts_read(fts);
        if (e == NULL) {
            if (errno != 0)
                rc = sbx_error_sys(err, errno, "walk %s", upper);
            break;
        }
        if (e->fts_info == FTS_DP)
            continue;
        if (e->fts_info == FTS_ERR || e->fts_info == FTS_DNR || e->fts_info == FTS_NS) {
            rc = sbx_error_sys(err, e->fts_errno, "walk %s", e->fts_path);
            break;
        }
        const struct stat *st = e->fts_statp;
        if (e->fts_level > 0)
            (*entries)++;
        /* Devices other than whiteouts (0/0) cannot be made in a sandbox: drop any. */
        if ((S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) && st->st_rdev != 0) {
            if (unlink(e->fts_accpath) < 0)
                rc = sbx_error_sys(err, errno, "remove device %s", e->fts_path);
            continue;
        }
        uid_t uid = e->fts_level == 0 ? 0 : shift_id(st->st_uid, base);
        gid_t gid = e->fts_level == 0 ? 0 : shift_id(st->st_gid, base);
        if (lchown(e->fts_accpath, uid, gid) < 0)
            rc = sbx_error_sys(err, errno, "chown %s", e->fts_path);
        else if (!S_ISLNK(st->st_mode) && chmod(e->fts_accpath, st->st_mode & 07777) < 0)
            rc = sbx_error_sys(err, errno, "chmod %s", e->fts_path);
        else
            rc = clean_xattrs(e->fts_accpath, err);
    }
    fts_close(fts);
    return rc;
}

/* Makes dir (a copy or a step's own upper dir, in the state dir) layer key: sandbox-relative
 * ownership, then renamed into the store (same filesystem: nothing is copied). */
static int
install_layer(const char *dir, const char *state_dir, const char *key, uid_t uid_base,
              size_t *entries, struct sbx_error **err)
{
    char tmp[4096];
    _cleanup_free_ char *dst = sbx_layer_path(state_dir, key);
    if (sbx_pathf(tmp, sizeof(tmp), "%s/" SBX_LAYERS_DIR "/" NEW_PREFIX "%s", state_dir, key) < 0)
        return sbx_error_sys(err, errno, "layer path");
    if (shift_tree(dir, uid_base, entries, err) < 0)
        return sbx_error_prefix(err, "layer %s", key);
    if (chmod(dir, 0755) < 0)
        return sbx_error_sys(err, errno, "chmod %s", dir);
    if ((strcmp(dir, tmp) != 0 && rename(dir, tmp) < 0) || rename(tmp, dst) < 0)
        return sbx_error_sys(err, errno, "move %s into the layer store", dir);
    return 0;
}

/* ---- snapshot ---- */

/* A read-only mount (detached) of the sandbox's ext4. While the sandbox runs, the kernel finds
 * the superblock its overlay uses by the device and hands out another view of it: the image is
 * not parsed again, and both views share one page cache, so what the sandbox wrote before it
 * froze is all there. Once the sandbox is gone (a finished build step), its device may be
 * detaching: then the image is attached again. Autoclear detaches a device only after the
 * last mount of it is gone and ext4 has written everything back, so the two mounts never
 * overlap; and as for a reboot (disk.c), only the kernel's ext4 driver ever wrote the image. */
static int
mount_disk(const char *sandbox_dir, struct sbx_error **err)
{
    char img[4096], dev[64];
    struct stat st;
    if (sbx_pathf(img, sizeof(img), "%s/" SBX_DISK_IMAGE, sandbox_dir) < 0)
        return sbx_error_sys(err, errno, "disk image path");
    _cleanup_close_ int fd = open(img, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return sbx_error_sys(err, errno ? errno : EINVAL, "open %s", img);
    _cleanup_close_ int loop = sbx_loop_of_image(fd, &st, dev, sizeof(dev), err);
    if (loop < 0)
        return -1;
    return sbx_ext4_mount(
        dev, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, err);
}

/* Whether the store's filesystem has room for bytes more (the copy's upper bound). */
static int
check_room(const char *state_dir, uint64_t bytes, struct sbx_error **err)
{
    char p[4096];
    struct statvfs vfs;
    if (sbx_pathf(p, sizeof(p), "%s/" SBX_LAYERS_DIR, state_dir) < 0 || statvfs(p, &vfs) < 0)
        return sbx_error_sys(err, errno, "statvfs of the layer store");
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (avail < bytes + SNAPSHOT_RESERVE_BYTES)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOSPC,
                             "not enough free disk space for the snapshot: it needs up to %llu "
                             "MiB, the state dir's disk has %llu MiB free",
                             (unsigned long long)(bytes >> 20), (unsigned long long)(avail >> 20));
    return 0;
}

/* Copies the sandbox's writable layer (upper/root of its disk, or of its dir with no disk) into
 * layer key of the store; *entries: how many entries it has. */
static int
copy_upper(const struct sbx_sandbox_ref *ref, const char *state_dir, const char *key,
           uid_t uid_base, size_t *entries, struct sbx_error **err)
{
    char src[4096], tmp[4096];
    uint64_t used = 0, size;
    _cleanup_close_ int disk = -1;
    if (sbx_disk_usage(ref->sandbox_dir, &used, &size) == 0) {
        if ((disk = mount_disk(ref->sandbox_dir, err)) < 0)
            return -1;
        /* cp reaches the mount through this fd, which it inherits. */
        if (fcntl(disk, F_SETFD, 0) < 0 ||
            sbx_pathf(src, sizeof(src), "/proc/self/fd/%d/upper/root", disk) < 0)
            return sbx_error_sys(err, errno, "upper dir");
    } else {
        /* No disk of its own (--disk-mb 0): the upper dir is in the sandbox dir. */
        if (sbx_pathf(src, sizeof(src), "%s/upper/root", ref->sandbox_dir) < 0)
            return sbx_error_sys(err, errno, "upper dir");
        _cleanup_close_ int fd = open(src, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || sbx_fs_disk_usage(fd, &used, err) < 0)
            return fd < 0 ? sbx_error_sys(err, errno, "open %s", src) : -1;
    }
    /* What the sandbox stores is at most its disk limit: the copy cannot take more of the
     * host's disk than the sandbox itself could, and is refused before it starts if the
     * host's disk does not have that much free. */
    if (check_room(state_dir, used, err) < 0)
        return -1;
    if (sbx_pathf(tmp, sizeof(tmp), "%s/" SBX_LAYERS_DIR "/" NEW_PREFIX "%s", state_dir, key) < 0)
        return sbx_error_sys(err, errno, "layer path");
    /* cp -a never follows the sandbox's symlinks and, as root, keeps owners, whiteouts and
     * overlayfs' trusted.* marks; install_layer then makes it a layer. */
    char *const argv[] = {"cp", "-a", "--reflink=auto", "-T", "--", src, tmp, NULL};
    int rc = run_cp(argv, err);
    if (rc == 0)
        rc = install_layer(tmp, state_dir, key, uid_base, entries, err);
    if (rc < 0) {
        struct sbx_error *ignored = NULL;
        if (sbx_fs_remove_at(AT_FDCWD, tmp, &ignored) < 0)
            sbx_error_free(ignored);
        struct statvfs vfs;
        if (statvfs(state_dir, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < used)
            return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOSPC,
                                 "the state dir's disk filled up while copying the sandbox's "
                                 "files");
        return -1;
    }
    return 0;
}

int
sbx_sandbox_snapshot(const struct sbx_sandbox_ref *ref, const char *state_dir, const char *key,
                     uid_t uid_base, struct sbx_error **err)
{
    if (!sbx_layer_key_is_valid(key))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad layer key");
    if (sbx_layer_exists(state_dir, key))
        return sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "layer %s exists", key);
    size_t entries;
    return copy_upper(ref, state_dir, key, uid_base, &entries, err) < 0
               ? sbx_error_prefix(err, "snapshot")
               : 0;
}

int
sbx_sandbox_commit(const struct sbx_sandbox_ref *ref, const char *state_dir, const char *key,
                   uid_t uid_base, bool *empty, struct sbx_error **err)
{
    if (!sbx_layer_key_is_valid(key))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad layer key");
    /* Nothing of the sandbox may still run and write to the upper dir we take. */
    if (sbx_cgroup_drain(ref->id, 0, SBX_DESTROY_TIMEOUT_MS, err) < 0)
        return sbx_error_prefix(err, "commit %s", key);
    size_t entries = 0;
    uint64_t used, size;
    if (sbx_disk_usage(ref->sandbox_dir, &used, &size) == 0) {
        /* A step with a disk of its own (--build-disk-mb): its files are copied out of it. */
        if (copy_upper(ref, state_dir, key, uid_base, &entries, err) < 0)
            return sbx_error_prefix(err, "commit");
    } else {
        /* Same filesystem (both in the state dir): the files move, nothing is copied. */
        char upper[4096];
        if (sbx_pathf(upper, sizeof(upper), "%s/upper/root", ref->sandbox_dir) < 0)
            return sbx_error_sys(err, errno, "layer path");
        if (install_layer(upper, state_dir, key, uid_base, &entries, err) < 0)
            return sbx_error_prefix(err, "commit");
    }
    *empty = entries == 0;
    return 0;
}
