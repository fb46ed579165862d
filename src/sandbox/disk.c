/* The sandbox's writable layer on a filesystem of its own, so that a sandbox filling its disk
 * gets ENOSPC instead of filling the host's (design.md §2.3). This kernel has no
 * CONFIG_QUOTA, so project quotas on the state dir's ext4 are not an option; instead:
 *
 *   disks/blank-<bytes>-sandbox.ext4    an ext4 of that size holding only the empty dirs
 *                                       of disk_tree, formatted once with mke2fs (sparse:
 *                                       ~150 KiB allocated for 1 GiB)
 *   disks/ready/<blank>.<inode>.d<n>/   a few sandbox dirs ready, each with a sparse copy
 *                                       of the blank made and fsynced ahead by the sweeper,
 *                                       new or recycled (the stock, below)
 *   <sandbox dir>/disk.img              per sandbox: in one of those dirs, renamed; or, when
 *                                       none is ready, a sparse copy of the blank (only its
 *                                       data extents are copied, ~0.2 ms)
 *
 * Measured on this 2-vCPU VM: the copy, loop device, mount and mkdirs add ~1.5 ms to a
 * create when the machine is quiet (~5 ms when it is busy); formatting a blank takes
 * 10-100 ms, once per size.
 *
 * At spawn the daemon attaches disk.img to a loop device (autoclear), mounts it detached
 * (fsopen/fsmount: nothing in the host's mount table), creates upper/root and
 * work/root in it owned by the sandbox's host uid base, and hands those directories to
 * overlayfs as fds. The overlay holds the ext4 mount, in the sandbox's mount namespace, and
 * the spawner keeps it too (below: "a mounted disk, kept for the next sandbox"); once neither
 * does, the ext4 is unmounted, the loop device's last reference goes and autoclear detaches it.
 * Destroy moves the sandbox dir to the sweeper, which empties its kept disk for the next sandbox,
 * or recycles the dir into the stock or deletes it. A restarted daemon needs nothing but that
 * path.
 *
 * Security: mounting a filesystem image makes the kernel parse it, and ext4's parser is not
 * hardened against crafted images. The host never mounts an image the sandbox could have
 * written to raw: the blank comes from our own mke2fs run, each copy is mounted once at spawn
 * before the sandbox runs, and afterwards only the kernel's ext4 driver writes to it. The
 * sandbox never gets the block device or the image file: both are host root's, 0600; the
 * image sits in the sandbox's host dir (0711, so that the child can reach its mount point
 * there before pivot_root, after which no path of the sandbox leads to it), the blanks in a
 * 0700 dir. A spawn mounts a fresh copy: made with O_EXCL, or recycled, which rewrites it to
 * the blank's bytes once no one else holds it open (sbx_disk_stock_recycle); or it is given a kept
 * mount, which no one mounted again (sbx_disk_mount_reset). The one exception is
 * the reboot of a sandbox after a filesystem-only pause (plan.reboot) whose kept mount a spawner
 * restart took away: its image is mounted again, once its first mount is gone with every process
 * of the sandbox; in between only the kernel's ext4 driver wrote it, so it is still an image of
 * that driver's making. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/loop.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "sandbox/internal.h"

#define DISK_BLOCK_SIZE 4096
#define LOOP_ATTEMPTS   16 /* GET_FREE races with other loop users: retry on EBUSY */

/* ---- the blank image ------------------------------------------------------------------ */

/* Runs an e2fsprogs tool (from /usr/sbin or /sbin) with argv, quietly; 0 if it exits 0. */
static int
run_e2fsprogs(const char *tool, char *const argv[], struct sbx_error **err)
{
    char exe[64] = "";
    static const char *const dirs[] = {"/usr/sbin", "/sbin"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]) && !exe[0]; i++) {
        snprintf(exe, sizeof(exe), "%s/%s", dirs[i], tool);
        if (access(exe, X_OK) < 0)
            exe[0] = '\0';
    }
    if (exe[0] == '\0')
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, ENOENT,
                             "%s not found (install e2fsprogs)", tool);
    char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawn(&pid, exe, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return sbx_error_sys(err, rc, "run %s", exe);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return sbx_error_sys(err, errno, "wait for %s", tool);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "%s failed (%s %d)", tool,
                             WIFSIGNALED(st) ? "signal" : "status",
                             WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    return 0;
}

/* The dirs a sandbox's disk holds (sbx_disk_open_upper), made in the blank by mke2fs -d
 * from a copy of this tree in tree_dir: a dir allocates a block, and allocating the first
 * blocks of a fresh ext4 reads and builds its allocator's bitmaps, ~1 ms of every spawn when
 * done at spawn. Host root's; upper/ and work/ 0700 like the sandbox dir they stand for. */
static const struct {
    const char *name;
    mode_t mode;
} disk_tree[] = {{"upper", 0700}, {"upper/root", 0755}, {"work", 0700}, {"work/root", 0755}};

static int
make_tree(const char *tree_dir, struct sbx_error **err)
{
    char p[4096];
    if (mkdir(tree_dir, 0700) < 0)
        return sbx_error_sys(err, errno, "mkdir %s", tree_dir);
    for (size_t i = 0; i < sizeof(disk_tree) / sizeof(disk_tree[0]); i++)
        if (sbx_pathf(p, sizeof(p), "%s/%s", tree_dir, disk_tree[i].name) < 0 ||
            mkdir(p, 0700) < 0 || chmod(p, disk_tree[i].mode) < 0) /* exact, whatever the umask */
            return sbx_error_sys(err, errno, "mkdir %s", p);
    return 0;
}

static void
remove_tree(const char *tree_dir)
{
    char p[4096];
    for (size_t i = sizeof(disk_tree) / sizeof(disk_tree[0]); i-- > 0;)
        if (sbx_pathf(p, sizeof(p), "%s/%s", tree_dir, disk_tree[i].name) == 0)
            rmdir(p);
    rmdir(tree_dir);
}

/* Formats path as ext4 with explicit options, so the host's /etc/mke2fs.conf cannot change
 * what we get: no journal (the filesystem dies with the sandbox, and a journal costs writes
 * and space), no reserved blocks (sandbox root has no CAP_SYS_RESOURCE over this ext4, so
 * reserved blocks would just be lost), uninitialised inode tables (lazy_itable_init; the
 * mount uses noinit_itable so they are never zeroed into the sparse image). A root dir of
 * another owner is a volume's (volume.c), whose root holds only what its users put there:
 * its lost+found goes (e2fsck would make one again if it needed it).
 * tree_dir: NULL, or the sandbox disk's tree is made there and copied into the image. */
static int
run_mke2fs(const char *path, uid_t root_owner, const char *tree_dir, struct sbx_error **err)
{
    char extended[96];
    snprintf(extended, sizeof(extended), "lazy_itable_init=1,nodiscard,root_owner=%u:%u",
             (unsigned)root_owner, (unsigned)root_owner);
    char *const argv[] = {
        "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-i", "16384", "-I", "256", "-m", "0",
        "-O",
        "none,ext_attr,dir_index,filetype,extent,64bit,flex_bg,sparse_super,large_file,"
        "huge_file,dir_nlink,extra_isize,metadata_csum",
        "-E", extended,
        /* "-d tree path", or just "path": the argv ends at the first NULL */
        tree_dir ? "-d" : (char *)path, (char *)tree_dir, (char *)path, NULL};
    if (tree_dir) {
        remove_tree(tree_dir); /* an earlier spawner's, left by a crash */
        if (make_tree(tree_dir, err) < 0) {
            remove_tree(tree_dir);
            return sbx_error_prefix(err, "format %s", path);
        }
    }
    int rc = run_e2fsprogs("mke2fs", argv, err);
    if (tree_dir)
        remove_tree(tree_dir);
    if (rc < 0)
        return sbx_error_prefix(err, "format %s", path);
    char *const rmdir_argv[] = {"debugfs", "-w", "-R", "rmdir lost+found", (char *)path, NULL};
    if (root_owner != 0 && run_e2fsprogs("debugfs", rmdir_argv, err) < 0)
        return sbx_error_prefix(err, "%s", path);
    return 0;
}

static bool
is_blank(const struct stat *st, uint64_t bytes)
{
    return S_ISREG(st->st_mode) && st->st_uid == 0 && (uint64_t)st->st_size == bytes;
}

static void
blank_name(char *out, size_t cap, uint64_t bytes, uid_t root_owner)
{
    char kind[24] = "-sandbox";
    if (root_owner != 0)
        snprintf(kind, sizeof(kind), "-u%u", (unsigned)root_owner);
    snprintf(out, cap, "blank-%" PRIu64 "%s.ext4", bytes, kind);
}

/* Opens <disks_dir>/blank-<bytes>-sandbox.ext4, a sandbox's disk with its tree (root_owner
 * 0), or blank-<bytes>-u<owner>.ext4, an empty root dir of that owner (a volume's),
 * formatting it first if it does not exist yet (once per size, owner and state dir;
 * formatted under a temporary name and renamed, so a crash never leaves a half-formatted
 * blank under the real name). */
static int
open_blank(const char *dir, uint64_t bytes, uid_t root_owner, struct sbx_error **err)
{
    char name[64], path[4096], tmp[4096], tree[4096];
    blank_name(name, sizeof(name), bytes, root_owner);
    if (sbx_pathf(path, sizeof(path), "%s/%s", dir, name) < 0 ||
        sbx_pathf(tmp, sizeof(tmp), "%s/.%s.%d", dir, name, (int)getpid()) < 0 ||
        sbx_pathf(tree, sizeof(tree), "%s/.tree-%" PRIu64 ".%d", dir, bytes, (int)getpid()) < 0)
        return sbx_error_sys(err, errno, "blank image path");
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd >= 0) {
        if (fstat(fd, &st) == 0 && is_blank(&st, bytes))
            return fd;
        close(fd);
        return sbx_error_set(err, SBX_INTERNAL, 0,
                             "%s is not a blank image of %" PRIu64 " bytes; remove it", path,
                             bytes);
    }
    if (errno != ENOENT)
        return sbx_error_sys(err, errno, "open %s", path);
    /* 0700, host root: the blanks are ours alone (see the comment at the top). */
    int d = sbx_fs_open_private_dir(dir, err);
    if (d < 0)
        return -1;
    close(d);
    unlink(tmp);
    {
        _cleanup_close_ int t =
            open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (t < 0)
            return sbx_error_sys(err, errno, "create %s", tmp);
        if (ftruncate(t, (off_t)bytes) < 0) {
            int e = errno;
            unlink(tmp);
            return sbx_error_sys(err, e, "size %s", tmp);
        }
        if (run_mke2fs(tmp, root_owner, root_owner == 0 ? tree : NULL, err) < 0) {
            unlink(tmp);
            return -1;
        }
        if (fsync(t) < 0) {
            int e = errno;
            unlink(tmp);
            return sbx_error_sys(err, e, "fsync %s", tmp);
        }
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return sbx_error_sys(err, e, "rename %s", tmp);
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return sbx_error_sys(err, errno, "open %s", path);
    return fd;
}

/* ---- the per-sandbox copy ------------------------------------------------------------- */

static int
copy_range(int in, int out, off_t from, off_t to, struct sbx_error **err)
{
    loff_t a = from, b = from;
    while (a < to) {
        ssize_t n = copy_file_range(in, &a, out, &b, (size_t)(to - a), 0);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (errno != EXDEV && errno != EOPNOTSUPP && errno != ENOSYS))
            return sbx_error_sys(err, n == 0 ? EIO : errno, "copy blank image");
        /* Template and sandbox dirs on different filesystems: copy through a buffer. */
        char buf[65536];
        while (a < to) {
            size_t want = (size_t)(to - a) < sizeof(buf) ? (size_t)(to - a) : sizeof(buf);
            ssize_t r = pread(in, buf, want, a);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return sbx_error_sys(err, r == 0 ? EIO : errno, "read blank image");
            for (ssize_t off = 0; off < r;) {
                ssize_t w = pwrite(out, buf + off, (size_t)(r - off), a + off);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0)
                    return sbx_error_sys(err, w == 0 ? EIO : errno, "write disk image");
                off += w;
            }
            a += r;
        }
    }
    return 0;
}

/* Copies only the blank's data extents: the holes stay holes, so a fresh image costs the
 * host about as much disk as the blank's metadata. */
static int
copy_sparse(int in, int out, uint64_t bytes, struct sbx_error **err)
{
    if (ftruncate(out, (off_t)bytes) < 0)
        return sbx_error_sys(err, errno, "size disk image");
    off_t pos = 0;
    for (;;) {
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            return 0; /* no data after pos */
        if (data < 0)
            return sbx_error_sys(err, errno, "seek blank image");
        off_t hole = lseek(in, data, SEEK_HOLE);
        if (hole < 0)
            return sbx_error_sys(err, errno, "seek blank image");
        if (copy_range(in, out, data, hole, err) < 0)
            return -1;
        pos = hole;
    }
}

/* ---- the stock of ready sandbox dirs ------------------------------------------------- */

/* Copying the blank in the create itself cost the spawner's one thread about 0.2 ms, and
 * attaching the fresh copy to a loop device (LOOP_CONFIGURE) fsyncs it: another 0.5 ms, most
 * of it waiting for the host's disk (an fsync of a copy already on disk takes 0.05 ms). Making
 * the sandbox dir and its entries allocated inodes on the host's filesystem, and the sweeper
 * freed as many again: on an ext4 without a journal (these VMs' root) every allocation then
 * skips, one buffer lookup each, the inodes freed in the last minutes (ext4's
 * recently_deleted), which cost a sustained create+kill load 6% of the machine's CPU on the
 * spawner's thread alone, growing with the rate.
 *
 * So the sweeper (spawner/sweep.c) keeps STOCK_COPIES sandbox dirs per sandbox blank ready in
 * disks/ready/: each holds rootfs/ and a copy of the blank on disk, and a create renames one
 * to its sandbox dir. The dirs of destroyed sandboxes are recycled into the stock rather than
 * removed, their image reset to the blank's bytes (sbx_disk_stock_recycle); the sweeper makes
 * new ones only while fewer than STOCK_FRESH are ready, so that under a steady create+kill
 * load the stock is the recycled dirs, and fresh ones only cover a run of creates. A stock dir is
 * named after its blank and the blank's inode number, so that a blank made anew never gets an older
 * blank's images: those are removed at the next refill. Each image is still mounted by one sandbox
 * at a time, and when a sandbox mounts it, it holds the blank's bytes, written by our mke2fs and
 * our copy (see the comment at the top). */
#define STOCK_DIR    "ready"
#define STOCK_COPIES 8 /* per blank, recycled dirs included */
#define STOCK_FRESH  4 /* new ones are made only while the stock has fewer */
#define STOCK_BLANKS 4 /* sandbox blanks (disk sizes) stocked at once */

static int
stock_name(char *out, size_t cap, const char *blank, ino_t ino, unsigned i)
{
    return sbx_pathf(out, cap, "%s.%llu.d%u", blank, (unsigned long long)ino, i);
}

/* The stock's dir, made if missing (0700: inside, our 0600 images in 0711 dirs). */
static int
open_stock(int disks, struct sbx_error **err)
{
    if (mkdirat(disks, STOCK_DIR, 0700) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir " STOCK_DIR);
    int ready = openat(disks, STOCK_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (ready < 0)
        return sbx_error_sys(err, errno, "open " STOCK_DIR);
    return ready;
}

/* A sandbox blank of bytes in disks, opened if it exists as ours. */
static int
open_sandbox_blank(int disks, uint64_t bytes, char *name, size_t cap, struct stat *st)
{
    blank_name(name, cap, bytes, 0);
    int fd = openat(disks, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0 && (fstat(fd, st) < 0 || !is_blank(st, bytes))) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The first of blank's stock names that is free, in copy, if fewer than most are taken; -1
 * otherwise. */
static int
free_stock_name(int ready, const char *blank, ino_t ino, unsigned most, char *copy, size_t cap)
{
    char name[128];
    unsigned n = 0;
    bool found = false;
    for (unsigned i = 0; i < STOCK_COPIES; i++) {
        if (stock_name(name, sizeof(name), blank, ino, i) < 0)
            return -1;
        if (faccessat(ready, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
            n++;
        else if (errno == ENOENT && !found)
            found = snprintf(copy, cap, "%s", name) > 0;
    }
    return found && n < most ? 0 : -1;
}

int
sbx_disk_stock_take(const char *disks_dir, uint64_t bytes, const char *dir, struct sbx_error **err)
{
    static unsigned next; /* where the last take left off: the spawner is one thread */
    _cleanup_close_ int blank = open_blank(disks_dir, bytes, 0, err);
    struct stat st;
    if (blank < 0 || fstat(blank, &st) < 0)
        return blank < 0 ? -1 : sbx_error_sys(err, errno, "stat the blank image");
    char name[64], copy[128], from[4096];
    blank_name(name, sizeof(name), bytes, 0);
    for (unsigned k = 0; k < STOCK_COPIES; k++) {
        unsigned i = (next + k) % STOCK_COPIES;
        if (stock_name(copy, sizeof(copy), name, st.st_ino, i) < 0 ||
            sbx_pathf(from, sizeof(from), "%s/" STOCK_DIR "/%s", disks_dir, copy) < 0)
            return 0;
        /* NOREPLACE: the sandbox's dir must not exist yet. */
        if (renameat2(AT_FDCWD, from, AT_FDCWD, dir, RENAME_NOREPLACE) == 0) {
            next = i + 1;
            return 1;
        }
        if (errno != ENOENT)
            return sbx_error_sys(err, errno, "move %s to %s", from, dir);
    }
    return 0;
}

/* One stock dir of blank named name in ready, its image on disk before it gets its name. */
static int
make_stock_dir(int blank, uint64_t bytes, int ready, const char *name, struct sbx_error **err)
{
    static const char tmp[] = ".new"; /* one sweeper at a time */
    sbx_fs_remove_at(ready, tmp, NULL);
    if (mkdirat(ready, tmp, 0700) < 0)
        return sbx_error_sys(err, errno, "create %s", tmp);
    int rc = 0;
    {
        _cleanup_close_ int d = openat(ready, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        _cleanup_close_ int out =
            d < 0 ? -1
                  : openat(d, SBX_DISK_IMAGE, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                           0600);
        if (out < 0 || mkdirat(d, SBX_ROOTFS_DIR, 0755) < 0 || fchmod(d, 0711) < 0)
            rc = sbx_error_sys(err, errno, "fill %s", tmp);
        if (rc == 0)
            rc = copy_sparse(blank, out, bytes, err);
        if (rc == 0 && fsync(out) < 0)
            rc = sbx_error_sys(err, errno, "fsync %s", tmp);
    }
    if (rc == 0 && renameat2(ready, tmp, ready, name, RENAME_NOREPLACE) < 0)
        rc = sbx_error_sys(err, errno, "rename %s to %s", tmp, name);
    if (rc < 0)
        sbx_fs_remove_at(ready, tmp, NULL);
    return rc;
}

/* An fd of dir's entries to read; -1 on failure. */
static DIR *
open_entries(int dir)
{
    int fd = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (d == NULL && fd >= 0)
        close(fd);
    return d;
}

/* Whether name below dir is a dir with no entries. */
static bool
empty_dir_at(int dir, const char *name)
{
    _cleanup_close_ int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : open_entries(fd);
    if (d == NULL)
        return false;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)) != NULL)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return empty;
}

/* Whether the sandbox dir sub is one of ours to use again: its rootfs/ empty, and st its
 * image's, ours (host root's, 0600) and no one else's name for the same file. */
static bool
reusable_dir(int sub, const struct stat *st)
{
    return empty_dir_at(sub, SBX_ROOTFS_DIR) && S_ISREG(st->st_mode) && st->st_uid == 0 &&
           !(st->st_mode & 0077) && st->st_nlink == 1;
}

int
sbx_disk_stock_recycle(int disks, int sub, int from_dir, const char *from, struct sbx_error **err)
{
    _cleanup_close_ int img = openat(sub, SBX_DISK_IMAGE, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    struct stat st, bst;
    if (img < 0 || fstat(img, &st) < 0 || !reusable_dir(sub, &st))
        return 0;
    char name[64], copy[128];
    _cleanup_close_ int blank =
        open_sandbox_blank(disks, (uint64_t)st.st_size, name, sizeof(name), &bst);
    _cleanup_close_ int ready = blank < 0 ? -1 : open_stock(disks, err);
    if (ready < 0)
        return blank < 0 ? 0 : -1;
    if (free_stock_name(ready, name, bst.st_ino, STOCK_COPIES, copy, sizeof(copy)) < 0)
        return 0;
    /* Security: no one but us may still have the image open, above all not the loop device of
     * its sandbox (autoclear lets go of it only once ext4 has written everything back and
     * unmounted) or of a snapshot's mount: anything it wrote after the reset below would land
     * in the next sandbox's image. A write lease is granted only to the one opener of a file
     * (and none is granted at all if leases are off: then the dir is removed instead). */
    if (fcntl(img, F_SETLEASE, F_WRLCK) < 0)
        return 0;
    (void)fcntl(img, F_SETLEASE, F_UNLCK);
    /* The blank's bytes and nothing else: what the earlier sandbox stored goes with the
     * truncation, the blank's data extents are copied in, the rest stays holes. */
    if (ftruncate(img, 0) < 0)
        return sbx_error_sys(err, errno, "truncate %s", SBX_DISK_IMAGE);
    if (copy_sparse(blank, img, (uint64_t)st.st_size, err) < 0)
        return -1;
    if (fsync(img) < 0)
        return sbx_error_sys(err, errno, "fsync %s", SBX_DISK_IMAGE);
    if (renameat2(from_dir, from, ready, copy, RENAME_NOREPLACE) < 0)
        return sbx_error_sys(err, errno, "move %s to the stock", from);
    return 1;
}

int
sbx_disk_stock_refill(int disks, struct sbx_error **err)
{
    _cleanup_close_ int ready = open_stock(disks, err);
    if (ready < 0)
        return -1;
    char keep[STOCK_BLANKS][96]; /* "<blank>.<inode>.d" of each blank stocked */
    size_t n_keep = 0;
    int rc = 0;
    DIR *d = open_entries(disks);
    if (d == NULL)
        return sbx_error_sys(err, errno, "read the disks dir");
    for (struct dirent *e; rc == 0 && n_keep < STOCK_BLANKS && (e = readdir(d)) != NULL;) {
        uint64_t bytes;
        char name[64], copy[128];
        struct stat st;
        if (sscanf(e->d_name, "blank-%" SCNu64 "-sandbox.ext4", &bytes) != 1)
            continue;
        _cleanup_close_ int blank = open_sandbox_blank(disks, bytes, name, sizeof(name), &st);
        if (blank < 0 || strcmp(name, e->d_name) != 0)
            continue;
        snprintf(keep[n_keep++], sizeof(keep[0]), "%s.%llu.d", name, (unsigned long long)st.st_ino);
        if (free_stock_name(ready, name, st.st_ino, STOCK_FRESH, copy, sizeof(copy)) == 0)
            rc = make_stock_dir(blank, bytes, ready, copy, err) < 0 ? -1 : 1;
    }
    closedir(d);
    /* Full: what no create can take any more goes (stock dirs of blanks that are gone or were
     * made anew, one cut short). */
    if (rc != 0 || (d = open_entries(ready)) == NULL)
        return rc;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        bool kept = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
        for (size_t i = 0; !kept && i < n_keep; i++)
            kept = strncmp(e->d_name, keep[i], strlen(keep[i])) == 0;
        if (!kept)
            sbx_fs_remove_at(ready, e->d_name, NULL);
    }
    closedir(d);
    return rc;
}

/* ---- a mounted disk, kept for the next sandbox -------------------------------------------
 * Attaching a loop device, mounting ext4 (which reads and writes its superblock through the
 * device and starts a kernel thread), and at the sandbox's end unmounting it and resetting its
 * image, cost up to a fifth of the create+kill rate. So the spawner keeps the detached mount of
 * a sandbox's disk open (spawner/sweep.c), and once the sandbox is gone the sweeper empties it
 * here and the mount serves the next sandbox of the same disk size (from Linux 6.15: see
 * sbx_sandbox_plan.keep_disk).
 *
 * Security: the sandbox only ever reached this filesystem through its overlay, as files below
 * upper/root (and overlayfs's own below work/root); never the device or the image. Both dirs
 * go whole and come back empty, with the blank's modes and owner; upper/ and work/ themselves
 * were never the sandbox's. The filesystem must then count exactly the free blocks and inodes
 * of the blank's superblock: a file the sandbox left held open somewhere (an fd in flight in a
 * unix socket, say), or anything the emptying missed, keeps blocks or an inode in use, and the
 * mount is not used again. An ext4 that met an error (errors=remount-ro) is not either. */

static uint32_t
le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The free blocks and inodes that the superblock of the blank of bytes counts: what mke2fs
 * left, and what a mount of a fresh copy of it reports. */
static int
blank_free_counts(int disks, uint64_t bytes, uint64_t *blocks, uint64_t *inodes)
{
    char name[64];
    struct stat st;
    _cleanup_close_ int blank = open_sandbox_blank(disks, bytes, name, sizeof(name), &st);
    uint8_t sb[1024];
    if (blank < 0 || pread(blank, sb, sizeof(sb), 1024) != (ssize_t)sizeof(sb))
        return -1;
    /* Little-endian fields of struct ext4_super_block: s_free_blocks_count_lo (0x0c),
     * s_free_inodes_count (0x10), s_magic (0x38), s_free_blocks_count_hi (0x158, 64bit). */
    if (sb[0x38] != 0x53 || sb[0x39] != 0xef)
        return -1;
    *blocks = (uint64_t)le32(sb + 0x158) << 32 | le32(sb + 0x0c);
    *inodes = le32(sb + 0x10);
    return 0;
}

int
sbx_disk_mount_reset(int disks, int sub, int mount_fd, uint64_t *bytes, struct sbx_error **err)
{
    struct stat st;
    if (fstatat(sub, SBX_DISK_IMAGE, &st, AT_SYMLINK_NOFOLLOW) < 0 || !reusable_dir(sub, &st))
        return 0;
    *bytes = (uint64_t)st.st_size;
    struct statvfs v;
    if (fstatvfs(mount_fd, &v) < 0)
        return sbx_error_sys(err, errno, "statfs the disk");
    if (v.f_flag & ST_RDONLY)
        return 0; /* ext4 met an error */
    for (size_t i = 0; i < sizeof(disk_tree) / sizeof(disk_tree[0]); i++) {
        const char *name = disk_tree[i].name;
        if (strchr(name, '/') == NULL)
            continue; /* upper/ and work/ stay; their root/ goes and comes back empty */
        if (sbx_fs_remove_at(mount_fd, name, err) < 0)
            return -1;
        if (mkdirat(mount_fd, name, 0700) < 0 ||
            fchmodat(mount_fd, name, disk_tree[i].mode, 0) < 0) /* exact, whatever the umask */
            return sbx_error_sys(err, errno, "mkdir %s", name);
    }
    uint64_t blocks, inodes;
    if (blank_free_counts(disks, *bytes, &blocks, &inodes) < 0 || fstatvfs(mount_fd, &v) < 0)
        return 0;
    return v.f_bfree == blocks && v.f_ffree == inodes;
}

/* ---- a sandbox's image ---------------------------------------------------------------- */

int
sbx_disk_image_create(const char *disks_dir, const char *path, uint64_t bytes, uid_t root_owner,
                      struct sbx_error **err)
{
    _cleanup_close_ int blank = open_blank(disks_dir, bytes, root_owner, err);
    if (blank < 0)
        return -1;
    /* 0600 host root (see the comment at the top): neither the sandbox nor other host users
     * can open it; O_EXCL: always a fresh copy, never an image that existed before. */
    _cleanup_close_ int out =
        open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0)
        return sbx_error_sys(err, errno, "create %s", path);
    if (copy_sparse(blank, out, bytes, err) < 0) {
        unlink(path);
        return sbx_error_prefix(err, "%s", path);
    }
    return 0;
}

int
sbx_disk_prepare(const struct sbx_sandbox_plan *plan, struct sbx_error **err)
{
    char path[4096];
    if (sbx_pathf(path, sizeof(path), "%s/" SBX_DISK_IMAGE, plan->sandbox_dir) < 0)
        return sbx_error_sys(err, errno, "disk image path");
    if (plan->disk_ready)
        return 0; /* the dir came from the stock (sbx_disk_stock_take) with its image */
    if (!plan->reboot)
        return sbx_disk_image_create(plan->disks_dir, path, plan->limits.disk_bytes, 0, err);
    struct stat st;
    if (lstat(path, &st) < 0)
        return sbx_error_sys(err, errno, "the disk of an earlier boot, %s", path);
    if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 0077))
        return sbx_error_set(err, SBX_INTERNAL, 0, "%s is not a disk image of sbx", path);
    return 0;
}

/* ---- attaching it --------------------------------------------------------------------- */

/* Attaches image_fd to a free loop device; returns an fd of the device and its path.
 * AUTOCLEAR: the device detaches itself when its last user (our fd, then the ext4 mount)
 * goes. Buffered, not LO_FLAGS_DIRECT_IO: direct I/O would first have to write back the
 * freshly copied blank, a synchronous disk write in every create (measured: slower, and much
 * slower when the host disk is busy), and every block a short-lived sandbox writes would hit
 * the disk even though the image is deleted soon. The price is a second cached copy of what
 * the sandbox writes, in the host's cache of the image: at most the disk limit, reclaimable
 * once written back, and charged to the sandbox's memory cgroup only on cgroup v2 (on v1
 * writeback is not attributed, so it lands in the root cgroup). */
int
sbx_loop_attach(int image_fd, char *dev, size_t cap, struct sbx_error **err)
{
    _cleanup_close_ int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0)
        return sbx_error_sys(err, errno, "open /dev/loop-control");
    for (int attempt = 0; attempt < LOOP_ATTEMPTS; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0)
            return sbx_error_sys(err, errno, "get a free loop device");
        snprintf(dev, cap, "/dev/loop%d", n);
        int fd = open(dev, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return sbx_error_sys(err, errno, "open %s", dev);
        struct loop_config c = {.fd = (uint32_t)image_fd, .block_size = DISK_BLOCK_SIZE};
        c.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if (ioctl(fd, LOOP_CONFIGURE, &c) == 0)
            return fd;
        int e = errno;
        close(fd);
        if (e == EBUSY) /* someone configured it between GET_FREE and CONFIGURE */
            continue;
        return sbx_error_sys(err, e, "configure %s", dev);
    }
    return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, EBUSY, "no free loop device");
}

int
sbx_loop_of_image(int image_fd, const struct stat *img, char *dev, size_t cap,
                  struct sbx_error **err)
{
    DIR *d = opendir("/sys/block");
    int found = -1;
    struct dirent *e;
    while (d && found < 0 && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "loop", 4) != 0 || sbx_pathf(dev, cap, "/dev/%s", e->d_name) < 0)
            continue;
        int fd = open(dev, O_RDWR | O_CLOEXEC);
        struct loop_info64 info;
        if (fd >= 0 && ioctl(fd, LOOP_GET_STATUS64, &info) == 0 && info.lo_device == img->st_dev &&
            info.lo_inode == img->st_ino)
            found = fd;
        else if (fd >= 0)
            close(fd);
    }
    if (d)
        closedir(d);
    return found >= 0 ? found : sbx_loop_attach(image_fd, dev, cap, err);
}

int
sbx_ext4_mount(const char *dev, unsigned int attrs, struct sbx_error **err)
{
    _cleanup_close_ int fs = fsopen("ext4", FSOPEN_CLOEXEC);
    if (fs < 0)
        return sbx_error_sys(err, errno, "fsopen ext4");
    if (fsconfig(fs, FSCONFIG_SET_STRING, "source", dev, 0) < 0)
        return sbx_fsopen_error(fs, errno, "ext4 source", err);
    /* noinit_itable: never zero the inode tables (that would write megabytes of zeros into
     * the sparse image). discard: blocks the sandbox frees are punched out of the image, so
     * the host gets the space back and the image's allocated size tracks real usage.
     * minixdf: statfs counts every block, ext4's own metadata too, so `df /` inside says the
     * disk is exactly --disk-mb, the size getInfo and the metrics report, with the metadata
     * shown as used (by default ext4 leaves it out of the size). */
    static const char *const flags[] = {"noinit_itable", "discard", "minixdf"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (fsconfig(fs, FSCONFIG_SET_FLAG, flags[i], NULL, 0) < 0)
            return sbx_fsopen_error(fs, errno, flags[i], err);
    if (fsconfig(fs, FSCONFIG_SET_STRING, "errors", "remount-ro", 0) < 0)
        return sbx_fsopen_error(fs, errno, "ext4 errors=", err);
    if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
        return sbx_fsopen_error(fs, errno, "mount ext4", err);
    int m = fsmount(fs, FSMOUNT_CLOEXEC, attrs);
    if (m < 0)
        return sbx_fsopen_error(fs, errno, "fsmount ext4", err);
    return m;
}

/* The dir name below dirfd, one of the blank's tree (disk_tree), as an O_PATH fd; owner
 * given to it first unless it is (uid_t)-1. The filesystem is ours alone and was only ever
 * written by our mke2fs and the kernel, but never follow a link all the same. */
static int
open_dir(int dirfd, const char *name, uid_t owner, struct sbx_error **err)
{
    if (owner != (uid_t)-1 && fchownat(dirfd, name, owner, owner, AT_SYMLINK_NOFOLLOW) < 0)
        return sbx_error_sys(err, errno, "set owner of %s", name);
    int fd = openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return sbx_error_sys(err, errno, "open %s", name);
    return fd;
}

int
sbx_disk_open_upper(const struct sbx_sandbox_plan *plan, struct sbx_upper_dirs *out,
                    struct sbx_error **err)
{
    *out = (struct sbx_upper_dirs){-1, -1, -1};
    if (plan->disk_mount != NULL) {
        /* An earlier sandbox's, emptied (sbx_disk_mount_reset) and kept mounted for us. */
        if ((out->mount_fd = fcntl(*plan->disk_mount, F_DUPFD_CLOEXEC, 0)) < 0)
            return sbx_error_sys(err, errno, "the kept disk");
    } else {
        char path[4096], dev[64];
        if (sbx_pathf(path, sizeof(path), "%s/" SBX_DISK_IMAGE, plan->sandbox_dir) < 0)
            return sbx_error_sys(err, errno, "disk image path");
        _cleanup_close_ int img = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (img < 0)
            return sbx_error_sys(err, errno, "open %s", path);
        _cleanup_close_ int loop = sbx_loop_attach(img, dev, sizeof(dev), err);
        if (loop < 0)
            return sbx_error_prefix(err, "%s", path);
        /* Only overlayfs uses this mount (what the sandbox may do is decided by the overlays'
         * own flags); nodev and nosuid in case anything else ever did. */
        out->mount_fd = sbx_ext4_mount(dev, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID, err);
        if (out->mount_fd < 0)
            return sbx_error_prefix(err, "%s on %s", path, dev);
    }
    int m = out->mount_fd;
    /* upper/ and work/ themselves: host root only, like the sandbox dir they replace.
     * Overlayfs works in them with the mounter's (host root's) credentials. The owner of
     * their root/ subdirectories is what the sandbox sees for /: given at the first boot
     * and kept by a reboot (the sandbox only ever sees what is inside upper/root). */
    uid_t u = plan->reboot ? (uid_t)-1 : plan->host_uid_base;
    _cleanup_close_ int upper = open_dir(m, "upper", (uid_t)-1, err);
    _cleanup_close_ int work = upper < 0 ? -1 : open_dir(m, "work", (uid_t)-1, err);
    if (upper < 0 || work < 0 || (out->upper_root = open_dir(upper, "root", u, err)) < 0 ||
        (out->work_root = open_dir(work, "root", u, err)) < 0) {
        sbx_upper_dirs_close(out);
        return -1;
    }
    /* Returning closes our loop device fd, if we attached one: from here on the mount holds
     * the device, and once the overlay is made and these fds closed, it holds the mount. */
    return 0;
}

void
sbx_upper_dirs_close(struct sbx_upper_dirs *d)
{
    int *fds[] = {&d->upper_root, &d->work_root, &d->mount_fd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

int
sbx_disk_usage(const char *sandbox_dir, uint64_t *bytes, uint64_t *size)
{
    char path[4096];
    if (sbx_pathf(path, sizeof(path), "%s/" SBX_DISK_IMAGE, sandbox_dir) < 0)
        return -1;
    struct stat st;
    if (lstat(path, &st) < 0)
        return -1;
    if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        return -1;
    }
    /* Allocated blocks of the sparse image: the filesystem's metadata plus what the sandbox
     * stores now (freed blocks are discarded, see sbx_ext4_mount). Statfs would need the mount,
     * which only exists in the sandbox's mount namespace. */
    *bytes = (uint64_t)st.st_blocks * 512;
    *size = (uint64_t)st.st_size;
    return 0;
}
