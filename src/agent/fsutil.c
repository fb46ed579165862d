#include "agent/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/util.h"

/* ---- paths ---- */

bool
sbx_agent_utf8_is_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + n >= len)
            return false; /* truncated sequence */
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        /* Overlong forms, surrogates and values past U+10FFFF are not UTF-8. */
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

void
sbx_agent_path_clean(char *p)
{
    /* p is absolute. Rebuild it in place: each kept component is written as "/name", and
     * since every input component follows at least one '/', the output never overtakes
     * the input still to be read. */
    char *out = p;
    const char *in = p;
    while (*in) {
        while (*in == '/')
            in++;
        if (*in == '\0')
            break;
        const char *end = strchrnul(in, '/');
        size_t n = (size_t)(end - in);
        if (n == 1 && in[0] == '.') {
            /* skip */
        } else if (n == 2 && in[0] == '.' && in[1] == '.') {
            /* Back up one component; at the root ".." stays at the root. */
            while (out > p && *--out != '/')
                ;
        } else {
            *out++ = '/';
            memmove(out, in, n);
            out += n;
        }
        in = end;
    }
    if (out == p)
        *out++ = '/';
    *out = '\0';
}

char *
sbx_agent_path_resolve(const char *p, size_t len, const char *home, struct sbx_error **err)
{
    if (p == NULL)
        len = 0;
    /* A NUL would silently cut the path at the kernel boundary: refuse it outright. */
    if (len > 0 && memchr(p, '\0', len) != NULL) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "path contains a NUL byte");
        return NULL;
    }
    if (!sbx_agent_utf8_is_valid(p ? p : "", len)) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "path is not valid UTF-8");
        return NULL;
    }
    if (len >= SBX_AGENT_PATH_MAX) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, ENAMETOOLONG, "path is too long (%zu bytes): %s",
                      len, strerror(ENAMETOOLONG));
        return NULL;
    }
    /* envd expands "~" and "~/" (and "~\\", its Windows twin) only: another user's "~name"
     * is an error there, not a relative path. */
    if (len >= 2 && p[0] == '~' && p[1] != '/' && p[1] != '\\') {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                      "cannot expand user-specific home dir in '%.*s'", (int)len, p);
        return NULL;
    }
    char *out = NULL;
    if (len == 0 || (len == 1 && p[0] == '~')) {
        out = strdup(home);
    } else if (p[0] == '/') {
        out = strndup(p, len);
    } else {
        /* Relative paths, and "~" + "/rest" or "\\rest", are joined to home. */
        const char *rest = p[0] == '~' ? p + 1 : p;
        size_t rlen = len - (size_t)(rest - p);
        if (asprintf(&out, "%s/%.*s", home, (int)rlen, rest) < 0)
            out = NULL;
    }
    if (out == NULL)
        abort();
    sbx_agent_path_clean(out);
    if (strlen(out) >= SBX_AGENT_PATH_MAX) {
        free(out);
        sbx_error_set(err, SBX_INVALID_ARGUMENT, ENAMETOOLONG, "path is too long: %s",
                      strerror(ENAMETOOLONG));
        return NULL;
    }
    return out;
}

const char *
sbx_agent_path_base(const char *p)
{
    const char *s = strrchr(p, '/');
    if (s == NULL)
        return p;
    if (s[1] == '\0')
        return "/";
    return s + 1;
}

char *
sbx_agent_path_dir(const char *p)
{
    const char *s = strrchr(p, '/');
    char *d = (s == NULL || s == p) ? strdup("/") : strndup(p, (size_t)(s - p));
    if (d == NULL)
        abort();
    return d;
}

char *
sbx_agent_path_join(const char *dir, const char *name)
{
    char *out = NULL;
    size_t dl = strlen(dir);
    if (asprintf(&out, "%s%s%s", dir, (dl > 0 && dir[dl - 1] == '/') ? "" : "/", name) < 0)
        abort();
    return out;
}

int
sbx_agent_fs_error(struct sbx_error **err, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = sbx_vformat(fmt, ap);
    va_end(ap);
    enum sbx_code code = sbx_code_from_errno(e);
    if (e == EXDEV || e == ENOTEMPTY || e == EBUSY || e == ETXTBSY)
        code = SBX_FAILED_PRECONDITION;
    sbx_error_set(err, code, e, "%s: %s", msg ? msg : "error", strerror(e));
    free(msg);
    return -1;
}

/* ---- acting for a user ---- */

int
sbx_agent_open_for_user(int dirfd, const char *name, int flags, mode_t mode)
{
    /* RESOLVE_NO_MAGICLINKS: never through /proc/<pid>/{fd,root,cwd,exe,map_files} (fsutil.h). */
    struct open_how how = {
        .flags = (uint64_t)(flags | O_CLOEXEC),
        .mode = (flags & O_CREAT) ? mode : 0,
        .resolve = RESOLVE_NO_MAGICLINKS,
    };
    return (int)syscall(SYS_openat2, dirfd, name, &how, sizeof(how));
}

bool
sbx_agent_fd_is_proc(int fd)
{
    struct statfs s;
    /* Fails closed: a descriptor we cannot classify is treated as procfs. */
    return fstatfs(fd, &s) < 0 || s.f_type == PROC_SUPER_MAGIC;
}

int
sbx_agent_open_error(struct sbx_error **err, int e, const char *what, const char *path, int len)
{
    if (e == ELOOP)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, e,
                             "%s '%.*s': a symlink loop, or a /proc/<pid>/{fd,root,cwd,exe} link, "
                             "which the agent never follows",
                             what, len, path);
    return sbx_agent_fs_error(err, e, "%s '%.*s'", what, len, path);
}

/* The error for directory dir, whose first upto bytes were being opened or made. */
static int
dir_error(struct sbx_error **err, int e, const char *dir, size_t upto)
{
    if (e == ENOTDIR && dir[upto] == '\0')
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, e,
                             "path '%s' already exists and is not a directory", dir);
    if (e == ENOTDIR)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, e, "a component of '%s' is not a directory",
                             dir);
    return sbx_agent_open_error(err, e, "create directory", dir, (int)upto);
}

int
sbx_agent_dir_make(const char *dir, uid_t uid, gid_t gid, bool *created, struct sbx_error **err)
{
    bool made = false;
    _cleanup_close_ int fd = sbx_agent_open_for_user(AT_FDCWD, "/", O_PATH | O_DIRECTORY, 0);
    if (fd < 0)
        return sbx_agent_fs_error(err, errno, "open '/'");
    /* dir is clean: one '/' between components, none at the end. Each step opens the next
     * component relative to the directory just opened, following symlinks as envd's os.Stat
     * does; what is missing is made there, reopened without following, and handed to the
     * user through that descriptor, so a name swapped for a symlink between mkdir and chown
     * is never chowned (envd chowns by path). */
    for (const char *c = dir + 1; *c != '\0';) {
        size_t n = strcspn(c, "/");
        size_t upto = (size_t)(c - dir) + n;
        _cleanup_free_ char *name = strndup(c, n);
        if (name == NULL)
            abort();
        made = false;
        int next = sbx_agent_open_for_user(fd, name, O_PATH | O_DIRECTORY, 0);
        if (next < 0 && errno == ENOENT) {
            if (mkdirat(fd, name, 0755) == 0) {
                made = true;
                next = sbx_agent_open_for_user(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);
                if (next >= 0 && fchown(next, uid, gid) < 0) {
                    int e = errno;
                    close(next);
                    next = -1;
                    errno = e;
                }
            } else if (errno == EEXIST) {
                /* Made meanwhile by someone else; theirs, so not chowned. */
                next = sbx_agent_open_for_user(fd, name, O_PATH | O_DIRECTORY, 0);
            }
        }
        if (next < 0)
            return dir_error(err, errno, dir, upto);
        close(fd);
        fd = next;
        c += n;
        if (*c == '/')
            c++;
    }
    if (created)
        *created = made;
    return steal_fd(&fd);
}

/* ---- reading directories ---- */

static int
cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **
sbx_agent_dir_names(int dirfd, size_t *n)
{
    /* readdir on a descriptor of its own: dirfd may be O_PATH, and stays the caller's. */
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        errno = e;
        return NULL;
    }
    char **names = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof(*names));
            if (names == NULL)
                abort();
        }
        names[cnt] = strdup(de->d_name);
        if (names[cnt++] == NULL)
            abort();
    }
    closedir(d);
    if (names == NULL && (names = calloc(1, sizeof(*names))) == NULL)
        abort();
    qsort(names, cnt, sizeof(*names), cmp_names);
    *n = cnt;
    return names;
}

void
sbx_agent_dir_names_free(char **names, size_t n)
{
    for (size_t i = 0; names != NULL && i < n; i++)
        free(names[i]);
    free(names);
}

/* ---- owner names ---- */

struct name_entry {
    unsigned id;
    bool is_group;
    char *name;
    struct name_entry *next;
};

struct sbx_agent_names {
    struct name_entry *head;
};

struct sbx_agent_names *
sbx_agent_names_new(void)
{
    struct sbx_agent_names *n = calloc(1, sizeof(*n));
    if (n == NULL)
        abort();
    return n;
}

void
sbx_agent_names_free(struct sbx_agent_names *n)
{
    if (n == NULL)
        return;
    struct name_entry *e = n->head;
    while (e) {
        struct name_entry *next = e->next;
        free(e->name);
        free(e);
        e = next;
    }
    free(n);
}

static char *
scan_name(unsigned id, bool is_group)
{
    /* The sandbox's own files (this runs in its mount namespace), not NSS: no module
     * loading, no host lookups. */
    FILE *f = fopen(is_group ? "/etc/group" : "/etc/passwd", "re");
    char *found = NULL;
    if (f == NULL)
        return NULL;
    char buf[8192];
    if (is_group) {
        struct group gr, *res;
        while (found == NULL && fgetgrent_r(f, &gr, buf, sizeof(buf), &res) == 0)
            if (gr.gr_gid == id)
                found = strdup(gr.gr_name);
    } else {
        struct passwd pw, *res;
        while (found == NULL && fgetpwent_r(f, &pw, buf, sizeof(buf), &res) == 0)
            if (pw.pw_uid == id)
                found = strdup(pw.pw_name);
    }
    fclose(f);
    return found;
}

static const char *
lookup_name(struct sbx_agent_names *n, unsigned id, bool is_group)
{
    for (struct name_entry *e = n->head; e; e = e->next)
        if (e->id == id && e->is_group == is_group)
            return e->name;
    struct name_entry *e = calloc(1, sizeof(*e));
    if (e == NULL)
        abort();
    e->id = id;
    e->is_group = is_group;
    e->name = scan_name(id, is_group);
    if (e->name == NULL && asprintf(&e->name, "%u", id) < 0)
        abort();
    e->next = n->head;
    n->head = e;
    return e->name;
}

/* ---- EntryInfo ---- */

void
sbx_agent_mode_string(mode_t m, char out[16])
{
    size_t i = 0;
    /* Go's FileMode type letters in their order ("dalTLDpSugct?"), then rwx. */
    if (S_ISDIR(m))
        out[i++] = 'd';
    if (S_ISLNK(m))
        out[i++] = 'L';
    if (S_ISBLK(m) || S_ISCHR(m))
        out[i++] = 'D';
    if (S_ISFIFO(m))
        out[i++] = 'p';
    if (S_ISSOCK(m))
        out[i++] = 'S';
    if (m & S_ISUID)
        out[i++] = 'u';
    if (m & S_ISGID)
        out[i++] = 'g';
    if (S_ISCHR(m))
        out[i++] = 'c';
    if (m & S_ISVTX)
        out[i++] = 't';
    if (i == 0)
        out[i++] = '-';
    static const char rwx[] = "rwxrwxrwx";
    for (int b = 0; b < 9; b++)
        out[i++] = (m & (1u << (8 - b))) ? rwx[b] : '-';
    out[i] = '\0';
}

void
sbx_agent_timestamp_format(const struct timespec *ts, char *out, size_t outlen)
{
    struct tm tm;
    time_t s = ts->tv_sec;
    gmtime_r(&s, &tm);
    char base[40];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    long ns = ts->tv_nsec;
    if (ns == 0)
        snprintf(out, outlen, "%sZ", base);
    else if (ns % 1000000 == 0)
        snprintf(out, outlen, "%s.%03ldZ", base, ns / 1000000);
    else if (ns % 1000 == 0)
        snprintf(out, outlen, "%s.%06ldZ", base, ns / 1000);
    else
        snprintf(out, outlen, "%s.%09ldZ", base, ns);
}

/* The path the kernel gives fd (malloc'd), NULL if it has none. */
static char *
fd_path(int fd)
{
    char link[32], buf[SBX_AGENT_PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, sizeof(buf) - 1);
    if (n <= 0 || buf[0] != '/')
        return NULL;
    return strndup(buf, (size_t)n);
}

static json_t *metadata_of(int fd);

json_t *
sbx_agent_entry_info_at(int dirfd, const char *name, const char *path,
                        struct sbx_agent_names *names, struct sbx_error **err)
{
    /* The entry itself, not followed: with O_NOFOLLOW a trailing magic link is opened as the
     * link (openat2(2)), and an earlier one is refused (fsutil.h). */
    _cleanup_close_ int fd = sbx_agent_open_for_user(dirfd, name, O_PATH | O_NOFOLLOW, 0);
    struct stat lst, st;
    if (fd < 0 || fstat(fd, &lst) < 0) {
        if (errno == ENOENT)
            sbx_error_set(err, SBX_NOT_FOUND, ENOENT, "file not found: '%s' does not exist", path);
        else
            sbx_agent_open_error(err, errno, "stat", path, (int)strlen(path));
        return NULL;
    }
    const char *type = "FILE_TYPE_UNSPECIFIED";
    mode_t perm = lst.st_mode & 0777;
    _cleanup_free_ char *target = NULL;
    _cleanup_close_ int target_fd = -1;
    const struct stat *typed = &lst;
    bool is_link = S_ISLNK(lst.st_mode);
    if (is_link) {
        /* envd: a symlink reports its target's type and mode; a dangling one has no target
         * and an unspecified type, and so has one that leads through a magic link. */
        target_fd = sbx_agent_open_for_user(dirfd, name, O_PATH, 0);
        typed = target_fd >= 0 && fstat(target_fd, &st) == 0 ? &st : NULL;
        if (typed != NULL)
            target = fd_path(target_fd);
    }
    if (typed != NULL) {
        if (S_ISREG(typed->st_mode))
            type = "FILE_TYPE_FILE";
        else if (S_ISDIR(typed->st_mode))
            type = "FILE_TYPE_DIRECTORY";
        perm = typed->st_mode & 0777;
    }
    char perms[16], mtime[64];
    sbx_agent_mode_string(lst.st_mode, perms);
    sbx_agent_timestamp_format(&lst.st_mtim, mtime, sizeof(mtime));
    char size[32];
    snprintf(size, sizeof(size), "%lld", (long long)lst.st_size);
    json_t *e = json_object();
    json_object_set_new(e, "name", json_string(sbx_agent_path_base(path)));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "path", json_string(path));
    json_object_set_new(e, "size", json_string(size));
    json_object_set_new(e, "mode", json_integer(perm));
    json_object_set_new(e, "permissions", json_string(perms));
    json_object_set_new(e, "owner", json_string(lookup_name(names, lst.st_uid, false)));
    json_object_set_new(e, "group", json_string(lookup_name(names, lst.st_gid, true)));
    json_object_set_new(e, "modifiedTime", json_string(mtime));
    if (is_link) {
        /* isSymlink (field 12): the Python SDK shows such entries as SYMLINK; JS ignores it
         * and shows the target's type. */
        json_object_set_new(e, "isSymlink", json_true());
        if (target != NULL)
            json_object_set_new(e, "symlinkTarget", json_string(target));
    }
    if (typed != NULL) {
        json_t *md = metadata_of(is_link ? target_fd : fd);
        if (md)
            json_object_set_new(e, "metadata", md);
    }
    return e;
}

json_t *
sbx_agent_entry_info(const char *path, struct sbx_agent_names *names, struct sbx_error **err)
{
    _cleanup_free_ char *dir = sbx_agent_path_dir(path);
    _cleanup_close_ int dfd = sbx_agent_open_for_user(AT_FDCWD, dir, O_PATH | O_DIRECTORY, 0);
    if (dfd < 0) {
        if (errno == ENOENT)
            sbx_error_set(err, SBX_NOT_FOUND, ENOENT, "file not found: '%s' does not exist", path);
        else
            sbx_agent_open_error(err, errno, "stat", path, (int)strlen(path));
        return NULL;
    }
    return sbx_agent_entry_info_at(dfd, sbx_agent_path_base(path), path, names, err);
}

/* ---- metadata ---- */

/* user.e2b.* xattrs of fd's file as an object of strings; NULL when there are none. Read
 * through /proc/self/fd/<fd>, the agent's own link to what fd names, as O_PATH descriptors
 * have no f*xattr calls. */
static json_t *
metadata_of(int fd)
{
    char path[32], list[16384];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ssize_t n = listxattr(path, list, sizeof(list));
    if (n <= 0)
        return NULL;
    json_t *o = NULL;
    const size_t plen = strlen(SBX_AGENT_XATTR_PREFIX);
    for (char *k = list; k < list + n; k += strlen(k) + 1) {
        if (strncmp(k, SBX_AGENT_XATTR_PREFIX, plen) != 0 || k[plen] == '\0')
            continue;
        char val[SBX_AGENT_METADATA_MAX_TOTAL + 1];
        ssize_t vn = getxattr(path, k, val, sizeof(val) - 1);
        if (vn < 0)
            continue;
        val[vn] = '\0';
        if (!sbx_agent_utf8_is_valid(val, (size_t)vn) || memchr(val, '\0', (size_t)vn))
            continue; /* set out of band with bytes JSON cannot carry */
        if (o == NULL)
            o = json_object();
        json_object_set_new(o, k + plen, json_string(val));
    }
    return o;
}

int
sbx_agent_metadata_check(const char *key, const char *value, size_t *total, struct sbx_error **err)
{
    size_t kl = strlen(key), vl = strlen(value);
    if (kl == 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "metadata key is empty");
    if (kl > SBX_AGENT_METADATA_MAX_KEY)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "metadata key '%.32s...' is longer than %d bytes", key,
                             SBX_AGENT_METADATA_MAX_KEY);
    for (size_t i = 0; i < kl; i++)
        if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "metadata key must be printable ASCII");
    for (size_t i = 0; i < vl; i++)
        if ((unsigned char)value[i] < 0x20 || (unsigned char)value[i] > 0x7e)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "metadata value for key '%s' must be printable ASCII", key);
    *total += kl + vl;
    if (*total > SBX_AGENT_METADATA_MAX_TOTAL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "metadata is larger than %d bytes in total",
                             SBX_AGENT_METADATA_MAX_TOTAL);
    return 0;
}

int
sbx_agent_metadata_write_fd(int fd, json_t *kv, struct sbx_error **err)
{
    char list[16384];
    ssize_t n = flistxattr(fd, list, sizeof(list));
    const size_t plen = strlen(SBX_AGENT_XATTR_PREFIX);
    for (char *k = list; n > 0 && k < list + n; k += strlen(k) + 1)
        if (strncmp(k, SBX_AGENT_XATTR_PREFIX, plen) == 0)
            fremovexattr(fd, k);
    const char *key;
    json_t *v;
    json_object_foreach (kv, key, v) {
        _cleanup_free_ char *name = NULL;
        if (asprintf(&name, "%s%s", SBX_AGENT_XATTR_PREFIX, key) < 0)
            abort();
        const char *s = json_string_value(v);
        if (fsetxattr(fd, name, s, strlen(s), 0) < 0) {
            int e = errno;
            if (e == ENOTSUP)
                return sbx_error_set(err, SBX_FAILED_PRECONDITION, e,
                                     "this filesystem does not support file metadata");
            return sbx_agent_fs_error(err, e, "set metadata '%s'", key);
        }
    }
    return 0;
}
