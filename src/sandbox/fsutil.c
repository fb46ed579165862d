/* Walking and removing trees whose content a sandbox controls (the overlay upper layer), and
 * small file helpers. The walker never follows symlinks, never leaves the filesystem it
 * started on, holds one directory fd at a time and keeps its stack on the heap: a sandbox can
 * build a tree millions of levels deep, and the daemon must neither recurse that deep nor run
 * out of fds. */
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "sandbox/internal.h"

struct frame {
    dev_t dev; /* identity of this directory, checked when we come back up through ".." */
    ino_t ino;
    char *name;     /* name in the parent (NULL for the start dir) */
    char **pending; /* subdirectories still to visit */
    size_t n_pending;
};

struct walk {
    bool remove;
    uint64_t bytes;
    dev_t root_dev;
    struct frame *frames;
    size_t depth, cap;
};

static void
frame_fini(struct frame *f)
{
    for (size_t i = 0; i < f->n_pending; i++)
        free(f->pending[i]);
    free(f->pending);
    free(f->name);
    memset(f, 0, sizeof(*f));
}

/* Reads dirfd once: removes (or counts) everything that is not a directory and lists the
 * subdirectories in the new frame. */
static int
scan_dir(struct walk *w, int dirfd, struct frame *f, struct sbx_error **err)
{
    int dup_fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
    if (dup_fd < 0)
        return sbx_error_sys(err, errno, "dup dir fd");
    DIR *d = fdopendir(dup_fd);
    if (d == NULL) {
        close(dup_fd);
        return sbx_error_sys(err, errno, "fdopendir");
    }
    size_t cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((errno = 0, e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT)
                continue;
            rc = sbx_error_sys(err, errno, "stat %s", e->d_name);
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            /* A mount point: the sandbox's mounts live in its own namespace, so the host never
             * sees one here; refuse rather than walk into another filesystem. */
            if (st.st_dev != w->root_dev) {
                rc = sbx_error_set(err, SBX_INTERNAL, EXDEV, "%s is on another filesystem",
                                   e->d_name);
                break;
            }
            if (!w->remove)
                w->bytes += (uint64_t)st.st_blocks * 512;
            if (f->n_pending == cap) {
                cap = cap ? cap * 2 : 16;
                char **p = realloc(f->pending, cap * sizeof(*p));
                if (p == NULL)
                    abort();
                f->pending = p;
            }
            f->pending[f->n_pending] = strdup(e->d_name);
            if (f->pending[f->n_pending] == NULL)
                abort();
            f->n_pending++;
            continue;
        }
        if (w->remove) {
            if (unlinkat(dirfd, e->d_name, 0) < 0 && errno != ENOENT) {
                rc = sbx_error_sys(err, errno, "unlink %s", e->d_name);
                break;
            }
        } else {
            w->bytes += (uint64_t)st.st_blocks * 512;
        }
    }
    if (rc == 0 && errno != 0)
        rc = sbx_error_sys(err, errno, "readdir");
    closedir(d);
    return rc;
}

static struct frame *
push(struct walk *w)
{
    if (w->depth == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 32;
        struct frame *f = realloc(w->frames, w->cap * sizeof(*f));
        if (f == NULL)
            abort();
        w->frames = f;
    }
    struct frame *f = &w->frames[w->depth++];
    memset(f, 0, sizeof(*f));
    return f;
}

static int
walk_tree(int start_fd, bool remove, uint64_t *bytes, struct sbx_error **err)
{
    struct walk w = {.remove = remove};
    int cur = openat(start_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cur < 0)
        return sbx_error_sys(err, errno, "open dir");
    struct stat st;
    int rc = 0;
    if (fstat(cur, &st) < 0) {
        rc = sbx_error_sys(err, errno, "stat dir");
        goto out;
    }
    w.root_dev = st.st_dev;
    struct frame *f = push(&w);
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    if ((rc = scan_dir(&w, cur, f, err)) < 0)
        goto out;
    while (w.depth > 0) {
        f = &w.frames[w.depth - 1];
        if (f->n_pending > 0) {
            char *name = f->pending[--f->n_pending];
            /* O_NOFOLLOW: the entry was a directory when scanned; if it has become a symlink
             * since, openat fails instead of leaving the tree. */
            int next = openat(cur, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (next < 0) {
                free(name);
                if (errno == ENOENT)
                    continue;
                rc = sbx_error_sys(err, errno, "open subdir");
                goto out;
            }
            if (fstat(next, &st) < 0 || st.st_dev != w.root_dev) {
                free(name);
                close(next);
                rc = sbx_error_set(err, SBX_INTERNAL, EXDEV, "subdir left the filesystem");
                goto out;
            }
            close(cur);
            cur = next;
            struct frame *c = push(&w);
            c->dev = st.st_dev;
            c->ino = st.st_ino;
            c->name = name;
            if ((rc = scan_dir(&w, cur, c, err)) < 0)
                goto out;
            continue;
        }
        /* Done with this directory: go back up and, when removing, delete it. */
        if (w.depth == 1) {
            frame_fini(f);
            w.depth = 0;
            break;
        }
        struct frame *parent = &w.frames[w.depth - 2];
        int up = openat(cur, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (up < 0 || fstat(up, &st) < 0 || st.st_dev != parent->dev || st.st_ino != parent->ino) {
            /* Someone moved the tree under us; stop rather than delete the wrong thing. */
            if (up >= 0)
                close(up);
            rc = sbx_error_set(err, SBX_INTERNAL, 0, "tree changed during walk");
            goto out;
        }
        close(cur);
        cur = up;
        if (remove && unlinkat(cur, f->name, AT_REMOVEDIR) < 0 && errno != ENOENT) {
            rc = sbx_error_sys(err, errno, "rmdir %s", f->name);
            goto out;
        }
        frame_fini(f);
        w.depth--;
    }
out:
    for (size_t i = 0; i < w.depth; i++)
        frame_fini(&w.frames[i]);
    free(w.frames);
    close(cur);
    if (bytes)
        *bytes = w.bytes;
    return rc;
}

int
sbx_fs_open_private_dir(const char *dir, struct sbx_error **err)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        sbx_error_sys(err, errno, "open %s", dir);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (st.st_uid != 0 || (st.st_mode & 0077)) {
        close(fd);
        return sbx_error_set(err, SBX_INTERNAL, 0, "%s must be a root-owned 0700 directory", dir);
    }
    return fd;
}

int
sbx_fs_clear_dir(int dirfd, struct sbx_error **err)
{
    return walk_tree(dirfd, true, NULL, err);
}

int
sbx_fs_remove_at(int dir, const char *name, struct sbx_error **err)
{
    _cleanup_close_ int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && (errno == ENOTDIR || errno == ELOOP)) /* not a dir: a file or a link */
        return unlinkat(dir, name, 0) < 0 && errno != ENOENT
                   ? sbx_error_sys(err, errno, "remove %s", name)
                   : 0;
    if (fd < 0)
        return errno == ENOENT ? 0 : sbx_error_sys(err, errno, "open %s", name);
    if (sbx_fs_clear_dir(fd, err) < 0)
        return sbx_error_prefix(err, "remove %s", name);
    if (unlinkat(dir, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        return sbx_error_sys(err, errno, "remove %s", name);
    return 0;
}

int
sbx_fs_disk_usage(int dirfd, uint64_t *bytes, struct sbx_error **err)
{
    return walk_tree(dirfd, false, bytes, err);
}

int
sbx_fs_write_all(int fd, const void *data, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, (const char *)data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

int
sbx_fs_write_file_at(int dirfd, const char *name, const char *data, size_t len, mode_t mode)
{
    _cleanup_close_ int fd =
        openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0 || sbx_fs_write_all(fd, data, len) < 0)
        return -1;
    /* The umask may have cut bits (sticky, group); set the mode we mean. */
    if (fchmod(fd, mode) < 0)
        return -1;
    return close(steal_fd(&fd));
}

int
sbx_fs_read_small(const char *path, char *buf, size_t cap)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off + 1 < cap) {
        ssize_t n = read(fd, buf + off, cap - 1 - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1; /* errno survives the cleanup's close */
        }
        if (n == 0)
            break;
        off += (size_t)n;
    }
    buf[off] = '\0';
    return (int)off;
}

int
sbx_fs_write_str(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = strlen(s);
    ssize_t n = write(fd, s, len);
    int saved = errno;
    close(fd);
    if (n != (ssize_t)len) {
        errno = n < 0 ? saved : EIO;
        return -1;
    }
    return 0;
}

int
sbx_pathf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}
