/* filesystem.Filesystem unary RPCs: Stat, MakeDir, Move, ListDir, Remove (the watch RPCs are
 * in watch.c). EntryInfo fields are built in fsutil.c: name, type (a symlink reports its
 * target's type, plus isSymlink and symlinkTarget), path, size (lstat), mode (permission
 * bits), permissions (Go FileMode.String), owner, group, modifiedTime, metadata. */
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
    struct sbx_agent_fsuser fsu;
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
    sbx_agent_fsuser_leave(&c->fsu);
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

/* Makes dir and its missing parents for the call's user as envd's EnsureDirs does: as the
 * agent, each new directory handed to the user (fsutil.h). The call goes on as its user. */
static int
make_dirs(struct call *c, const char *dir, bool *created, struct sbx_error **e)
{
    sbx_agent_fsuser_leave(&c->fsu);
    int fd = sbx_agent_dir_make(dir, c->user.uid, c->user.gid, created, e);
    int rc = fd < 0 ? -1 : 0;
    if (fd >= 0)
        close(fd);
    if (sbx_agent_fsuser_enter(&c->user, &c->fsu, rc < 0 ? NULL : e) < 0)
        rc = -1;
    return rc;
}

static json_t *
do_make_dir(struct call *c, json_t *msg, struct sbx_error **e)
{
    _cleanup_free_ char *path = sbx_agent_fs_req_path(msg, "path", &c->user, e);
    if (path == NULL)
        return NULL;
    bool created = false;
    if (make_dirs(c, path, &created, e) < 0)
        return NULL;
    if (!created) {
        sbx_error_set(e, SBX_ALREADY_EXISTS, EEXIST, "directory '%s' already exists", path);
        return NULL;
    }
    return entry_response(path, c, e);
}

static json_t *
do_move(struct call *c, json_t *msg, struct sbx_error **e)
{
    _cleanup_free_ char *src = sbx_agent_fs_req_path(msg, "source", &c->user, e);
    if (src == NULL)
        return NULL;
    _cleanup_free_ char *dst = sbx_agent_fs_req_path(msg, "destination", &c->user, e);
    if (dst == NULL)
        return NULL;
    struct stat st;
    if (lstat(src, &st) < 0) {
        if (errno == ENOENT)
            sbx_error_set(e, SBX_NOT_FOUND, ENOENT, "source '%s' does not exist", src);
        else
            sbx_agent_fs_error(e, errno, "stat '%s'", src);
        return NULL;
    }
    _cleanup_free_ char *dir = sbx_agent_path_dir(dst);
    if (make_dirs(c, dir, NULL, e) < 0)
        return NULL;
    if (rename(src, dst) < 0) {
        sbx_agent_fs_error(e, errno, "move '%s' to '%s'", src, dst);
        return NULL;
    }
    return entry_response(dst, c, e);
}

/* ---- ListDir ---- */

static int
cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Pre-order, lexical per directory; display paths are built from the requested path. */
static int
list_walk(struct call *c, const char *dir, unsigned level, unsigned depth, json_t *out,
          struct sbx_error **e)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (level == 1)
            return sbx_agent_fs_error(e, errno, "open directory '%s'", dir);
        return 0; /* an unreadable subdirectory is listed, not descended */
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof(*names));
            if (nn == NULL)
                abort();
            names = nn;
        }
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_names);
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
        json_t *entry = sbx_agent_entry_info(p, c->names, &ignored);
        if (entry == NULL)
            continue; /* removed while we listed */
        json_array_append_new(out, entry);
        struct stat st;
        /* Symlinked subdirectories are not descended (no loops, no escapes from the tree). */
        if (level < depth && lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rc = list_walk(c, p, level + 1, depth, out, e);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
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
    struct stat st;
    /* The requested directory itself may be a symlink to a directory: follow it. */
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            sbx_error_set(e, SBX_NOT_FOUND, ENOENT, "directory '%s' does not exist", path);
        else
            sbx_agent_fs_error(e, errno, "stat '%s'", path);
        return NULL;
    }
    if (!S_ISDIR(st.st_mode)) {
        sbx_error_set(e, SBX_INVALID_ARGUMENT, ENOTDIR, "path '%s' is not a directory", path);
        return NULL;
    }
    json_t *entries = json_array();
    if (list_walk(c, path, 1, (unsigned)depth, entries, e) < 0) {
        json_decref(entries);
        return NULL;
    }
    return json_pack("{s:o}", "entries", entries);
}

/* ---- Remove ---- */

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
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return json_object(); /* missing is not an error */
        sbx_agent_fs_error(e, errno, "open '%s'", dir);
        return NULL;
    }
    int rc = sbx_agent_remove_at(dfd, sbx_agent_path_base(path), path, e);
    close(dfd);
    return rc < 0 ? NULL : json_object();
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
    if (call_begin(req, &c, &e) == 0 && sbx_agent_fsuser_enter(&c.user, &c.fsu, &e) == 0)
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
