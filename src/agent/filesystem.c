/* filesystem.Filesystem unary RPCs: Stat, MakeDir, Move, ListDir, Remove (the watch RPCs are
 * in watch.c), done as envd does them: as sandbox root, the paths resolved for the operation
 * user (its home for "~" and relative paths) and what they make handed to it, within the
 * bounds fsutil.h describes. EntryInfo fields are built in fsutil.c: name, type (a symlink reports
 * its target's type, plus isSymlink and symlinkTarget), path, size (lstat), mode (permission bits),
 * permissions (Go FileMode.String), owner, group, modifiedTime, metadata. */
#include "agent/filesystem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/fsutil.h"
#include "base/cleanup.h"
#include "connect/connect.h"
#include "json/json.h"

char *
sbx_agent_fs_req_path(json_t *msg, const char *key, const struct sbx_agent_user *u,
                      struct sbx_error **err)
{
    json_t *v = json_object_get(msg, key);
    if (v != NULL && !json_is_null(v) && !json_is_string(v)) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field '%s' must be a string", key);
        return NULL;
    }
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    size_t len = json_is_string(v) ? json_string_length(v) : 0;
    char *p = sbx_agent_path_resolve(s, len, u->home, err);
    if (p == NULL)
        sbx_error_prefix(err, "%s", key);
    return p;
}

struct call {
    struct sbx_agent_user user;
    struct sbx_agent_names *names;
};

static int
call_begin(struct sbx_http_req *req, struct call *c, struct sbx_error **err)
{
    memset(c, 0, sizeof(*c));
    if (sbx_agent_user_from_request(req, &c->user, err) < 0)
        return -1;
    c->names = sbx_agent_names_new();
    return 0;
}

static void
call_end(struct call *c)
{
    sbx_agent_user_fini(&c->user);
    sbx_agent_names_free(c->names);
}

static void
reply(struct sbx_http_req *req, json_t *res, struct sbx_error *e)
{
    if (res)
        sbx_connect_unary_ok(req, res);
    else
        sbx_connect_unary_error(req, e);
}

/* {"entry": EntryInfo} of path, or NULL with *e. */
static json_t *
entry_response(const char *path, struct call *c, struct sbx_error **e)
{
    json_t *entry = sbx_agent_entry_info(path, c->names, e);
    return entry ? json_pack("{s:o}", "entry", entry) : NULL;
}

static json_t *
do_stat(struct call *c, json_t *msg, struct sbx_error **e)
{
    _cleanup_free_ char *path = sbx_agent_fs_req_path(msg, "path", &c->user, e);
    if (path == NULL)
        return NULL;
    return entry_response(path, c, e);
}

static json_t *
do_make_dir(struct call *c, json_t *msg, struct sbx_error **e)
{
    _cleanup_free_ char *path = sbx_agent_fs_req_path(msg, "path", &c->user, e);
    if (path == NULL)
        return NULL;
    bool created = false;
    _cleanup_close_ int fd = sbx_agent_dir_make(path, c->user.uid, c->user.gid, &created, e);
    if (fd < 0)
        return NULL;
    if (!created) {
        sbx_error_set(e, SBX_ALREADY_EXISTS, EEXIST, "directory '%s' already exists", path);
        return NULL;
    }
    return entry_response(path, c, e);
}

/* envd's Move: the destination's missing parents are made as MakeDir makes them, then the
 * source is renamed, Go's os.Rename refusing an existing directory as the destination. Unlike
 * envd, a missing source is found before anything is made. Both ends are reached through
 * descriptors of their directories. */
static json_t *
do_move(struct call *c, json_t *msg, struct sbx_error **e)
{
    _cleanup_free_ char *src = sbx_agent_fs_req_path(msg, "source", &c->user, e);
    if (src == NULL)
        return NULL;
    _cleanup_free_ char *dst = sbx_agent_fs_req_path(msg, "destination", &c->user, e);
    if (dst == NULL)
        return NULL;
    _cleanup_free_ char *src_dir = sbx_agent_path_dir(src);
    _cleanup_free_ char *dst_dir = sbx_agent_path_dir(dst);
    const char *src_name = sbx_agent_path_base(src), *dst_name = sbx_agent_path_base(dst);
    struct stat st;
    _cleanup_close_ int sfd = sbx_agent_open_for_user(AT_FDCWD, src_dir, O_PATH | O_DIRECTORY, 0);
    if (sfd < 0 || fstatat(sfd, src_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            sbx_error_set(e, SBX_NOT_FOUND, ENOENT, "source '%s' does not exist", src);
        else
            sbx_agent_open_error(e, errno, "move", src, (int)strlen(src));
        return NULL;
    }
    _cleanup_close_ int dfd = sbx_agent_dir_make(dst_dir, c->user.uid, c->user.gid, NULL, e);
    if (dfd < 0)
        return NULL;
    if (fstatat(dfd, dst_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
        sbx_error_set(e, SBX_ALREADY_EXISTS, EEXIST,
                      "move '%s' to '%s': the destination is an existing directory", src, dst);
        return NULL;
    }
    if (renameat(sfd, src_name, dfd, dst_name) < 0) {
        sbx_agent_fs_error(e, errno, "move '%s' to '%s'", src, dst);
        return NULL;
    }
    return entry_response(dst, c, e);
}

/* ---- ListDir ---- */

/* Pre-order, lexical per directory; display paths are built from the requested path (dir).
 * Each level is read through a descriptor of its directory, entered without following
 * symlinks: symlinked subdirectories are listed, not descended (no loops, no escapes). */
static int
list_walk(struct call *c, int dirfd, const char *dir, unsigned level, unsigned depth, json_t *out,
          struct sbx_error **e)
{
    size_t n;
    char **names = sbx_agent_dir_names(dirfd, &n);
    if (names == NULL) {
        if (level == 1)
            return sbx_agent_fs_error(e, errno, "open directory '%s'", dir);
        return 0; /* an unreadable subdirectory is listed, not descended */
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (json_array_size(out) >= SBX_AGENT_LIST_MAX_ENTRIES) {
            rc = sbx_error_set(e, SBX_FAILED_PRECONDITION, 0,
                               "more than %d entries: list with a smaller depth",
                               SBX_AGENT_LIST_MAX_ENTRIES);
            break;
        }
        _cleanup_free_ char *p = sbx_agent_path_join(dir, names[i]);
        _cleanup_error_ struct sbx_error *ignored = NULL;
        json_t *entry = sbx_agent_entry_info_at(dirfd, names[i], p, c->names, &ignored);
        if (entry == NULL)
            continue; /* removed while we listed */
        json_array_append_new(out, entry);
        if (level >= depth)
            continue;
        _cleanup_close_ int sub =
            sbx_agent_open_for_user(dirfd, names[i], O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
        /* A /proc mount is listed, never read: the agent's own entries are there (fsutil.h). */
        if (sub >= 0 && !sbx_agent_fd_is_proc(sub))
            rc = list_walk(c, sub, p, level + 1, depth, out, e);
    }
    sbx_agent_dir_names_free(names, n);
    return rc;
}

static json_t *
do_list_dir(struct call *c, json_t *msg, struct sbx_error **e)
{
    _cleanup_free_ char *path = sbx_agent_fs_req_path(msg, "path", &c->user, e);
    if (path == NULL)
        return NULL;
    int64_t depth = 1;
    if (sbx_json_opt_int(msg, "depth", &depth, e) < 0)
        return NULL;
    if (depth <= 0)
        depth = 1;
    if (depth > 1024)
        depth = 1024;
    /* The requested directory itself may be a symlink to a directory: followed, as envd's
     * EvalSymlinks does. */
    _cleanup_close_ int fd = sbx_agent_open_for_user(AT_FDCWD, path, O_PATH | O_DIRECTORY, 0);
    if (fd < 0) {
        if (errno == ENOENT)
            sbx_error_set(e, SBX_NOT_FOUND, ENOENT, "directory '%s' does not exist", path);
        else if (errno == ENOTDIR)
            sbx_error_set(e, SBX_INVALID_ARGUMENT, ENOTDIR, "path '%s' is not a directory", path);
        else
            sbx_agent_open_error(e, errno, "list", path, (int)strlen(path));
        return NULL;
    }
    if (sbx_agent_fd_is_proc(fd)) {
        sbx_error_set(e, SBX_PERMISSION_DENIED, EACCES,
                      "path '%s' is on /proc, which the agent never lists", path);
        return NULL;
    }
    json_t *entries = json_array();
    if (list_walk(c, fd, path, 1, (unsigned)depth, entries, e) < 0) {
        json_decref(entries);
        return NULL;
    }
    return json_pack("{s:o}", "entries", entries);
}

/* ---- Remove ---- */

static int
proc_refused(struct sbx_error **e, const char *path)
{
    return sbx_error_set(e, SBX_PERMISSION_DENIED, EACCES,
                         "path '%s' is on /proc, which the agent never removes", path);
}

static int
remove_at(int parent_fd, const char *name, const char *shown, unsigned level, struct sbx_error **e)
{
    struct stat st;
    if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : sbx_agent_fs_error(e, errno, "stat '%s'", shown);
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(parent_fd, name, 0) < 0 && errno != ENOENT)
            return sbx_agent_fs_error(e, errno, "remove '%s'", shown);
        return 0;
    }
    if (level > 4096)
        return sbx_error_set(e, SBX_FAILED_PRECONDITION, 0, "directory tree too deep");
    /* O_NOFOLLOW|O_DIRECTORY: a directory swapped for a symlink mid-walk is not entered. */
    int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : sbx_agent_fs_error(e, errno, "open '%s'", shown);
    if (sbx_agent_fd_is_proc(fd)) {
        /* A /proc mount met below: the kernel refuses removals there, but the agent's own
         * entries are not even walked for a client (fsutil.h). */
        close(fd);
        return proc_refused(e, shown);
    }
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return sbx_agent_fs_error(e, errno, "open '%s'", shown);
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        rc = remove_at(dirfd(d), de->d_name, shown, level + 1, e);
    }
    closedir(d);
    if (rc == 0 && unlinkat(parent_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        rc = sbx_agent_fs_error(e, errno, "remove '%s'", shown);
    return rc;
}

int
sbx_agent_remove_at(int parent_fd, const char *name, const char *shown, struct sbx_error **e)
{
    return remove_at(parent_fd, name, shown, 0, e);
}

static json_t *
do_remove(struct call *c, json_t *msg, struct sbx_error **e)
{
    _cleanup_free_ char *path = sbx_agent_fs_req_path(msg, "path", &c->user, e);
    if (path == NULL)
        return NULL;
    if (strcmp(path, "/") == 0) {
        sbx_error_set(e, SBX_INVALID_ARGUMENT, 0, "refusing to remove '/'");
        return NULL;
    }
    _cleanup_free_ char *dir = sbx_agent_path_dir(path);
    _cleanup_close_ int dfd = sbx_agent_open_for_user(AT_FDCWD, dir, O_PATH | O_DIRECTORY, 0);
    if (dfd < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return json_object(); /* missing is not an error */
        sbx_agent_open_error(e, errno, "remove", path, (int)strlen(path));
        return NULL;
    }
    if (sbx_agent_fd_is_proc(dfd)) {
        proc_refused(e, path);
        return NULL;
    }
    return sbx_agent_remove_at(dfd, sbx_agent_path_base(path), path, e) < 0 ? NULL : json_object();
}

/* ---- dispatch ---- */

typedef json_t *(*unary_fn)(struct call *c, json_t *msg, struct sbx_error **e);

static void
on_unary(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    unary_fn fn = (unary_fn)req->data;
    req->data = NULL;
    if (rerr) {
        sbx_connect_error(req, rerr);
        return;
    }
    _cleanup_error_ struct sbx_error *e = NULL;
    struct call c;
    json_t *res = NULL;
    if (call_begin(req, &c, &e) == 0)
        res = fn(&c, msg, &e);
    call_end(&c);
    reply(req, res, e);
}

static void
on_watch_msg(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)
{
    void (*fn)(struct sbx_http_req *, json_t *) =
        (void (*)(struct sbx_http_req *, json_t *))req->data;
    req->data = NULL;
    if (rerr) {
        sbx_connect_error(req, rerr);
        return;
    }
    fn(req, msg);
}

/* sbx_connect_read_request keeps its callback in req->data until it calls it, so each method
 * gets a callback of its own that then names its handler. */
#define DEFINE_UNARY(fnname)                                                                       \
    static void on_##fnname(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)         \
    {                                                                                              \
        req->data = (void *)fnname;                                                                \
        on_unary(req, msg, rerr);                                                                  \
    }
DEFINE_UNARY(do_stat)
DEFINE_UNARY(do_make_dir)
DEFINE_UNARY(do_move)
DEFINE_UNARY(do_list_dir)
DEFINE_UNARY(do_remove)

#define DEFINE_WATCH(fnname)                                                                       \
    static void on_##fnname(struct sbx_http_req *req, json_t *msg, struct sbx_error *rerr)         \
    {                                                                                              \
        req->data = (void *)fnname;                                                                \
        on_watch_msg(req, msg, rerr);                                                              \
    }
DEFINE_WATCH(sbx_agent_watch_dir)
DEFINE_WATCH(sbx_agent_watcher_create)
DEFINE_WATCH(sbx_agent_watcher_events)
DEFINE_WATCH(sbx_agent_watcher_remove)

static const struct {
    const char *name;
    sbx_connect_msg_cb cb;
} methods[] = {
    {"Stat", on_do_stat},
    {"MakeDir", on_do_make_dir},
    {"Move", on_do_move},
    {"ListDir", on_do_list_dir},
    {"Remove", on_do_remove},
    {"WatchDir", on_sbx_agent_watch_dir},
    {"CreateWatcher", on_sbx_agent_watcher_create},
    {"GetWatcherEvents", on_sbx_agent_watcher_events},
    {"RemoveWatcher", on_sbx_agent_watcher_remove},
};

bool
sbx_agent_fs_handle(struct sbx_http_req *req)
{
    static const char prefix[] = "/filesystem.Filesystem/";
    if (strncmp(req->path, prefix, sizeof(prefix) - 1) != 0)
        return false;
    const char *method = req->path + sizeof(prefix) - 1;
    _cleanup_error_ struct sbx_error *e = NULL;
    if (strcmp(req->method, "POST") != 0) {
        sbx_error_set(&e, SBX_UNIMPLEMENTED, 0, "method %s not allowed", req->method);
        sbx_connect_error(req, e);
        return true;
    }
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(methods[i].name, method) == 0) {
            sbx_connect_read_request(req, methods[i].cb);
            return true;
        }
    }
    sbx_error_set(&e, SBX_UNIMPLEMENTED, 0, "filesystem.Filesystem.%s is not implemented", method);
    sbx_connect_error(req, e);
    return true;
}
