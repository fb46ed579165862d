/* The volume content API (spec lifecycle.md §6.3, openapi-volumecontent.yml), served by the
 * agent of a volume's service sandbox: a sandbox like any other, started by the daemon with
 * "volumeService" in its config and the volume mounted at /volume. The daemon checks the
 * volume's token and proxies /volumecontent/<id>/<op>?path=... to this agent's own socket;
 * nothing else reaches it. So the daemon never opens a file of a volume either: what one
 * sandbox wrote there is handled here, inside the namespaces, as the sandbox root that
 * owns every uid of the volume.
 *
 * Every path is resolved inside the volume (openat2 RESOLVE_IN_ROOT): a symlink a sandbox
 * left there, absolute or full of "..", never leads out of it. Operations on an entry itself
 * (stat, chown, remove) act on the link, never on what it points to.
 *
 * GET /sbx/active tells the daemon how many transfers are under way: it stops an idle service
 * only when none is. Errors are {"code": "<status>", "message"}, the code a string, as the
 * API's. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#include "agent/filesystem.h"
#include "agent/fsutil.h"
#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "json/json.h"

#define VOLUME_ROOT      SBX_VOLUME_SERVICE_PATH
#define VOLUME_MAX_DEPTH 64

static struct {
    int root;   /* O_PATH fd of VOLUME_ROOT */
    int active; /* transfers under way */
} vs = {.root = -1};

/* ---- answers ---- */

/* The status of a failed system call on a volume path. */
static int
status_of_errno(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return 404;
    case EEXIST:
    case EISDIR:
    case ENOTEMPTY:
        return 409;
    case ENOSPC:
    case EDQUOT:
        return 507;
    case EINVAL:
    case ENAMETOOLONG:
    case ELOOP:
        return 400;
    default:
        return 500;
    }
}

static void
respond_errno(struct sbx_http_req *req, int e, const char *what, const char *path)
{
    sbx_http_respond_error_strcode(req, status_of_errno(e), "%s %s: %s", what, path, strerror(e));
}

/* ---- paths ---- */

/* A request's path, absolute and lexically clean ("/a/b"), or NULL (answered 400). */
static char *
req_path(struct sbx_http_req *req)
{
    size_t len = 0;
    _cleanup_free_ char *raw = sbx_http_req_query(req, "path");
    if (raw)
        len = strlen(raw);
    if (raw == NULL || raw[0] != '/' || len >= SBX_AGENT_PATH_MAX ||
        !sbx_agent_utf8_is_valid(raw, len)) {
        sbx_http_respond_error_strcode(req, 400,
                                       "the query parameter path must be an absolute path");
        return NULL;
    }
    sbx_agent_path_clean(raw);
    return steal_pointer(&raw);
}

/* Opens path (absolute, clean) inside the volume, following symlinks within it. */
static int
open_in_volume(const char *path, int flags)
{
    struct open_how how = {.flags = (uint64_t)flags | O_CLOEXEC,
                           .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV};
    return (int)syscall(SYS_openat2, vs.root, path[1] ? path + 1 : ".", &how, sizeof(how));
}

/* The dir holding the entry path names, and the entry's name in it ("." for the root). */
static int
open_parent(const char *path, const char **base)
{
    if (strcmp(path, "/") == 0) {
        *base = ".";
        return open_in_volume("/", O_PATH | O_DIRECTORY);
    }
    *base = sbx_agent_path_base(path);
    _cleanup_free_ char *dir = sbx_agent_path_dir(path);
    return open_in_volume(dir, O_PATH | O_DIRECTORY);
}

/* ---- VolumeEntryStat ---- */

static json_t *
entry_json(int dir, const char *name, const char *path, const struct stat *st)
{
    const char *type = S_ISREG(st->st_mode)   ? "file"
                       : S_ISDIR(st->st_mode) ? "directory"
                       : S_ISLNK(st->st_mode) ? "symlink"
                                              : "unknown";
    char at[64], mt[64], ct[64];
    sbx_agent_timestamp_format(&st->st_atim, at, sizeof(at));
    sbx_agent_timestamp_format(&st->st_mtim, mt, sizeof(mt));
    sbx_agent_timestamp_format(&st->st_ctim, ct, sizeof(ct));
    json_t *o = json_pack("{s:s,s:s,s:s,s:I,s:i,s:I,s:I,s:s,s:s,s:s}", "name",
                          strcmp(path, "/") == 0 ? "" : sbx_agent_path_base(path), "type", type,
                          "path", path, "size", (json_int_t)st->st_size, "mode",
                          (int)(st->st_mode & 07777), "uid", (json_int_t)st->st_uid, "gid",
                          (json_int_t)st->st_gid, "atime", at, "mtime", mt, "ctime", ct);
    char target[SBX_AGENT_PATH_MAX];
    ssize_t n;
    if (S_ISLNK(st->st_mode) && (n = readlinkat(dir, name, target, sizeof(target) - 1)) >= 0) {
        target[n] = '\0';
        json_object_set_new(o, "target", json_string(target));
    }
    return o;
}

/* The stat of the entry path (not followed), or NULL with errno. */
static json_t *
stat_entry(const char *path)
{
    const char *base;
    _cleanup_close_ int dir = open_parent(path, &base);
    struct stat st;
    if (dir < 0 || fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return NULL;
    return entry_json(dir, base, path, &st);
}

static void
respond_entry(struct sbx_http_req *req, int status, const char *path)
{
    json_t *o = stat_entry(path);
    if (o == NULL) {
        respond_errno(req, errno, "stat", path);
        return;
    }
    _cleanup_free_ char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    sbx_http_respond(req, status, "application/json", s, strlen(s));
}

/* ---- owner and mode ---- */

struct attrs {
    int64_t uid, gid, mode; /* -1: not given */
    bool force;
};

/* uid, gid, mode (decimal) and force from the query. -1 with a 400 answered if malformed. */
static int
query_attrs(struct sbx_http_req *req, struct attrs *a)
{
    static const char *const keys[] = {"uid", "gid", "mode"};
    int64_t *vals[] = {&a->uid, &a->gid, &a->mode};
    *a = (struct attrs){-1, -1, -1, false};
    for (size_t i = 0; i < 3; i++) {
        _cleanup_free_ char *v = sbx_http_req_query(req, keys[i]);
        char *end = NULL;
        long long x = v ? strtoll(v, &end, 10) : -1;
        if (v && (*v == '\0' || *end != '\0' || x < 0 || x > (i == 2 ? 07777 : 65535))) {
            sbx_http_respond_error_strcode(req, 400, "%s must be a number from 0 to %d", keys[i],
                                           i == 2 ? 07777 : 65535);
            return -1;
        }
        *vals[i] = x;
    }
    _cleanup_free_ char *force = sbx_http_req_query(req, "force");
    a->force = force && strcmp(force, "true") == 0;
    return 0;
}

/* Owner (default root, as the API's) and mode (default dflt) of a new entry: set exactly,
 * whatever the umask. fd is the entry, opened. */
static int
apply_new(int fd, const struct attrs *a, mode_t dflt)
{
    uid_t uid = a->uid >= 0 ? (uid_t)a->uid : 0;
    gid_t gid = a->gid >= 0 ? (gid_t)a->gid : 0;
    if (fchown(fd, uid, gid) < 0)
        return -1;
    return fchmod(fd, a->mode >= 0 ? (mode_t)a->mode : dflt);
}

/* ---- handlers ---- */

static void
get_path(struct sbx_http_req *req, const char *path)
{
    respond_entry(req, 200, path);
}

static void
on_patch_body(struct sbx_http_req *req, struct sbx_buf *body)
{
    _cleanup_free_ char *path = req_path(req);
    if (path == NULL)
        return;
    json_error_t jerr;
    json_t *j = body->len ? json_loadb(body->data, body->len, 0, &jerr) : json_object();
    struct attrs a = {-1, -1, -1, false};
    _cleanup_error_ struct sbx_error *err = NULL;
    if (!json_is_object(j) || sbx_json_opt_int(j, "uid", &a.uid, &err) < 0 ||
        sbx_json_opt_int(j, "gid", &a.gid, &err) < 0 ||
        sbx_json_opt_int(j, "mode", &a.mode, &err) < 0 || a.uid > 65535 || a.gid > 65535 ||
        a.mode > 07777) {
        json_decref(j);
        sbx_http_respond_error_strcode(
            req, 400, "the body must be {\"uid\"?: int, \"gid\"?: int, \"mode\"?: int}%s%s",
            err ? ": " : "", err ? err->msg : "");
        return;
    }
    json_decref(j);
    const char *base;
    _cleanup_close_ int dir = open_parent(path, &base);
    /* The entry itself, never what it points to; a symlink has no mode of its own. */
    int fd =
        dir < 0 ? -1 : openat(dir, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    int rc = 0;
    if (dir < 0)
        rc = -1;
    else if (fd < 0 && errno == ELOOP)
        rc = fchownat(dir, base, a.uid >= 0 ? (uid_t)a.uid : (uid_t)-1,
                      a.gid >= 0 ? (gid_t)a.gid : (gid_t)-1, AT_SYMLINK_NOFOLLOW);
    else if (fd < 0)
        rc = -1;
    else if (fchown(fd, a.uid >= 0 ? (uid_t)a.uid : (uid_t)-1,
                    a.gid >= 0 ? (gid_t)a.gid : (gid_t)-1) < 0 ||
             (a.mode >= 0 && fchmod(fd, (mode_t)a.mode) < 0))
        rc = -1;
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        respond_errno(req, e, "update", path);
    else
        respond_entry(req, 200, path);
}

static void
delete_path(struct sbx_http_req *req, const char *path)
{
    if (strcmp(path, "/") == 0) {
        sbx_http_respond_error_strcode(req, 400, "the volume's root cannot be removed");
        return;
    }
    const char *base;
    _cleanup_close_ int dir = open_parent(path, &base);
    struct stat st;
    if (dir < 0 || fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        respond_errno(req, errno, "remove", path);
        return;
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_agent_remove_at(dir, base, path, &err) < 0)
        sbx_http_respond_error_strcode(req, err->sys_errno ? status_of_errno(err->sys_errno) : 500,
                                       "%s", err->msg);
    else
        sbx_http_respond(req, 204, NULL, NULL, 0);
}

/* Appends the entries below dir (path) to out, descending depth - 1 more levels. */
static int
list_into(int dir, const char *path, int depth, json_t *out)
{
    int fd = dup(dir);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (json_array_size(out) >= SBX_AGENT_LIST_MAX_ENTRIES) {
            errno = E2BIG;
            rc = -1;
            break;
        }
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* removed while we listed */
        _cleanup_free_ char *child = sbx_agent_path_join(path, de->d_name);
        json_array_append_new(out, entry_json(dirfd(d), de->d_name, child, &st));
        if (depth > 1 && S_ISDIR(st.st_mode)) {
            /* Never through a symlink: no loops, no leaving the tree. */
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0) {
                rc = list_into(sub, child, depth - 1, out);
                close(sub);
            }
        }
    }
    closedir(d);
    return rc;
}

static void
get_dir(struct sbx_http_req *req, const char *path)
{
    _cleanup_free_ char *ds = sbx_http_req_query(req, "depth");
    long depth = ds ? strtol(ds, NULL, 10) : 1;
    depth = depth < 1 ? 1 : depth > VOLUME_MAX_DEPTH ? VOLUME_MAX_DEPTH : depth;
    _cleanup_close_ int dir = open_in_volume(path, O_RDONLY | O_DIRECTORY);
    if (dir < 0) {
        respond_errno(req, errno, "list", path);
        return;
    }
    json_t *out = json_array();
    if (list_into(dir, path, (int)depth, out) < 0) {
        int e = errno;
        json_decref(out);
        if (e == E2BIG)
            sbx_http_respond_error_strcode(req, 400,
                                           "more than %d entries: list with a smaller depth",
                                           SBX_AGENT_LIST_MAX_ENTRIES);
        else
            respond_errno(req, e, "list", path);
        return;
    }
    _cleanup_free_ char *s = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    sbx_http_respond(req, 200, "application/json", s, strlen(s));
}

/* mkdir of path; with force, its missing parents too, and an existing dir is fine. */
static int
make_dir(const char *path, const struct attrs *a, bool *existed)
{
    const char *base;
    _cleanup_close_ int dir = open_parent(path, &base);
    if (dir < 0 && errno == ENOENT && a->force) {
        _cleanup_free_ char *parent = sbx_agent_path_dir(path);
        bool ignored;
        if (make_dir(parent, a, &ignored) < 0)
            return -1;
        dir = open_parent(path, &base);
    }
    if (dir < 0)
        return -1;
    struct stat st;
    *existed = fstatat(dir, base, &st, 0) == 0;
    if (*existed) {
        if (a->force && S_ISDIR(st.st_mode))
            return 0;
        errno = EEXIST;
        return -1;
    }
    if (mkdirat(dir, base, 0700) < 0)
        return -1;
    _cleanup_close_ int fd = openat(dir, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return fd < 0 ? -1 : apply_new(fd, a, 0755);
}

static void
post_dir(struct sbx_http_req *req, const char *path)
{
    struct attrs a;
    if (query_attrs(req, &a) < 0)
        return;
    bool existed = false;
    if (make_dir(path, &a, &existed) < 0)
        respond_errno(req, errno, "make directory", path);
    else
        respond_entry(req, 201, path);
}

static void
on_send_done(void)
{
    vs.active--;
}

static void
get_file(struct sbx_http_req *req, const char *path)
{
    int fd = open_in_volume(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
        close(fd);
        fd = -1;
        errno = S_ISDIR(st.st_mode) ? ENOENT : EINVAL; /* the API's 404 for a directory */
    }
    if (fd < 0) {
        respond_errno(req, errno, "read", path);
        return;
    }
    vs.active++;
    sbx_agent_file_send(req, fd, st.st_size, false, on_send_done);
}

/* A PUT's body, written as it arrives (the HTTP layer reads no faster than the disk). */
struct upload {
    char *path;
    int fd;
    int error; /* errno of the first failed write; the rest of the body is drained */
};

static void
upload_free(struct upload *u)
{
    if (u->fd >= 0)
        close(u->fd);
    free(u->path);
    free(u);
    vs.active--;
}

static void
on_upload_closed(struct sbx_http_req *req)
{
    upload_free(req->data);
}

static void
on_upload_data(struct sbx_http_req *req, const char *data, size_t len)
{
    struct upload *u = req->data;
    while (len > 0 && u->error == 0) {
        ssize_t n = write(u->fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            u->error = errno;
            break;
        }
        data += n;
        len -= (size_t)n;
    }
}

static void
on_upload_end(struct sbx_http_req *req)
{
    struct upload *u = req->data;
    sbx_http_req_on_close(req, NULL);
    req->data = NULL;
    if (u->error)
        respond_errno(req, u->error, "write", u->path);
    else
        respond_entry(req, 201, u->path);
    upload_free(u);
}

static void
put_file(struct sbx_http_req *req, const char *path)
{
    struct attrs a;
    if (query_attrs(req, &a) < 0)
        return;
    const char *base;
    _cleanup_close_ int dir = strcmp(path, "/") == 0 ? -1 : open_parent(path, &base);
    if (dir < 0) {
        respond_errno(req, strcmp(path, "/") == 0 ? EISDIR : errno, "write", path);
        return;
    }
    struct stat st;
    if (fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISDIR(st.st_mode) || !a.force) {
            sbx_http_respond_error_strcode(req, 409, "path %s %s", path,
                                           S_ISDIR(st.st_mode) ? "is a directory"
                                                               : "already exists");
            return;
        }
        /* Overwriting replaces a symlink rather than writing where it points. */
        if (S_ISLNK(st.st_mode) && unlinkat(dir, base, 0) < 0) {
            respond_errno(req, errno, "write", path);
            return;
        }
    }
    int fd =
        openat(dir, base,
               O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (a.force ? O_TRUNC : O_EXCL), 0600);
    if (fd < 0 || apply_new(fd, &a, 0644) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        respond_errno(req, e, "write", path);
        return;
    }
    struct upload *u = calloc(1, sizeof(*u));
    if (u == NULL || (u->path = strdup(path)) == NULL)
        abort();
    u->fd = fd;
    vs.active++;
    req->data = u;
    sbx_http_req_on_close(req, on_upload_closed);
    sbx_http_req_stream_body(req, on_upload_data, on_upload_end);
}

/* ---- dispatch ---- */

void
sbx_agent_volume_init(void)
{
    vs.root = open(VOLUME_ROOT, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (vs.root < 0)
        sbx_log_error("volume_service", "error=\"open " VOLUME_ROOT ": %s\"", strerror(errno));
}

void
sbx_agent_volume_handle(struct sbx_http_req *req)
{
    if (strcmp(req->path, "/sbx/active") == 0 && strcmp(req->method, "GET") == 0) {
        char body[32];
        int n = snprintf(body, sizeof(body), "{\"active\":%d}", vs.active);
        sbx_http_respond(req, 200, "application/json", body, (size_t)n);
        return;
    }
    /* /volumecontent/<volume id>/<op>: the daemon already matched the id to this volume. */
    const char *op = NULL;
    if (strncmp(req->path, "/volumecontent/", 15) == 0)
        op = strchr(req->path + 15, '/');
    const char *m = req->method;
    if (op == NULL || vs.root < 0) {
        sbx_http_respond_error_strcode(req, 404, "no route for %s %s", m, req->path);
        return;
    }
    if (strcmp(op, "/path") == 0 && strcmp(m, "PATCH") == 0) {
        sbx_http_req_read_body(req, 64 * 1024, on_patch_body);
        return;
    }
    _cleanup_free_ char *path = req_path(req);
    if (path == NULL)
        return;
    if (strcmp(op, "/path") == 0 && strcmp(m, "GET") == 0)
        get_path(req, path);
    else if (strcmp(op, "/path") == 0 && strcmp(m, "DELETE") == 0)
        delete_path(req, path);
    else if (strcmp(op, "/dir") == 0 && strcmp(m, "GET") == 0)
        get_dir(req, path);
    else if (strcmp(op, "/dir") == 0 && strcmp(m, "POST") == 0)
        post_dir(req, path);
    else if (strcmp(op, "/file") == 0 && strcmp(m, "GET") == 0)
        get_file(req, path);
    else if (strcmp(op, "/file") == 0 && strcmp(m, "PUT") == 0)
        put_file(req, path);
    else
        sbx_http_respond_error_strcode(req, 404, "no route for %s %s", m, req->path);
}
