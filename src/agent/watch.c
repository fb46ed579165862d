/* Directory watchers on inotify, driven by uv_poll on the inotify fd (libuv's uv_fs_event is
 * not recursive on Linux). As envd's, they run as sandbox root, the path resolved for the
 * operation user (fsutil.h). A recursive watcher adds a watch for every directory under the
 * root, and for directories created or moved in later. Events are reported as fsnotify (and
 * so envd) reports them: one event per op, named relative to the watched directory.
 *
 * Two sinks: a WatchDir server stream (start, events, keepalives, ends at the Connect
 * deadline), or a queue drained by GetWatcherEvents (the Python sync SDK). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/statfs.h>
#include <unistd.h>
#include <uv.h>

#include "agent/filesystem.h"
#include "agent/fsutil.h"
#include "base/cleanup.h"
#include "base/util.h"
#include "connect/connect.h"
#include "json/json.h"

/* No IN_DONT_FOLLOW: watches are added through the agent's own /proc/self/fd link to a
 * directory already opened, which must be followed (see watch_fd). */
#define WATCH_MASK                                                                                 \
    (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB | IN_ONLYDIR |    \
     IN_EXCL_UNLINK)
#define WATCH_MAX_DIRS 65536

struct wd_entry {
    int wd;
    char *rel; /* "" for the root */
};

struct watcher {
    char id[24];
    char *root;
    bool recursive, include_entry;
    struct sbx_agent_user user;
    int ifd;
    uv_poll_t poll;
    bool polling;
    struct wd_entry *wds;
    size_t n_wds, cap_wds;
    struct sbx_http_req *req; /* stream sink, NULL for a polled watcher */
    bool blocked;
    uv_timer_t keepalive, deadline;
    json_t *queue; /* polled sink */
    int open_handles;
    bool closing;
    struct watcher *next;
};

static struct {
    struct watcher *list;
    size_t count;
} W;

/* ---- watch table ---- */

static struct wd_entry *
wd_find(struct watcher *w, int wd)
{
    for (size_t i = 0; i < w->n_wds; i++)
        if (w->wds[i].wd == wd)
            return &w->wds[i];
    return NULL;
}

static void
wd_drop(struct watcher *w, size_t i)
{
    free(w->wds[i].rel);
    w->wds[i] = w->wds[--w->n_wds];
}

static void
wd_set(struct watcher *w, int wd, const char *rel)
{
    struct wd_entry *e = wd_find(w, wd);
    if (e) {
        free(e->rel);
        e->rel = strdup(rel);
        return;
    }
    if (w->n_wds == w->cap_wds) {
        w->cap_wds = w->cap_wds ? w->cap_wds * 2 : 16;
        struct wd_entry *n = realloc(w->wds, w->cap_wds * sizeof(*n));
        if (n == NULL)
            abort();
        w->wds = n;
    }
    w->wds[w->n_wds].wd = wd;
    w->wds[w->n_wds].rel = strdup(rel);
    w->n_wds++;
}

/* Watches the directory fd names, as root/rel. inotify takes a path: the agent's own link to
 * fd, so the directory watched is the one opened, never what a name may lead to by now. */
static int
watch_fd(struct watcher *w, int fd, const char *rel)
{
    char link[32];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    int wd = inotify_add_watch(w->ifd, link, WATCH_MASK);
    if (wd >= 0)
        wd_set(w, wd, rel);
    return wd;
}

/* Watches every directory below dirfd (root/rel), each entered through a descriptor without
 * following symlinks (symlinked directories are not watched, as in fsnotify); a /proc mount
 * is not entered, the agent's own entries being there (fsutil.h). Directories that cannot be
 * read or watched are skipped. */
static void
watch_below(struct watcher *w, int dirfd, const char *rel, unsigned level)
{
    size_t n = 0;
    char **names = level > 256 ? NULL : sbx_agent_dir_names(dirfd, &n);
    if (names == NULL)
        return;
    for (size_t i = 0; i < n && w->n_wds < WATCH_MAX_DIRS; i++) {
        _cleanup_close_ int sub =
            sbx_agent_open_for_user(dirfd, names[i], O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
        if (sub < 0 || sbx_agent_fd_is_proc(sub))
            continue;
        _cleanup_free_ char *sub_rel =
            rel[0] ? sbx_agent_path_join(rel, names[i]) : strdup(names[i]);
        if (watch_fd(w, sub, sub_rel) >= 0)
            watch_below(w, sub, sub_rel, level + 1);
    }
    sbx_agent_dir_names_free(names, n);
}

/* ---- lifetime ---- */

static void
on_handle_closed(uv_handle_t *h)
{
    struct watcher *w = h->data;
    if (--w->open_handles > 0)
        return;
    if (w->ifd >= 0)
        close(w->ifd);
    for (size_t i = 0; i < w->n_wds; i++)
        free(w->wds[i].rel);
    free(w->wds);
    free(w->root);
    sbx_agent_user_fini(&w->user);
    json_decref(w->queue);
    free(w);
}

static void
watcher_destroy(struct watcher *w)
{
    if (w->closing)
        return;
    w->closing = true;
    for (struct watcher **p = &W.list; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            W.count--;
            break;
        }
    }
    if (w->req) {
        w->req->data = NULL;
        w->req = NULL;
    }
    w->open_handles = 3;
    uv_close((uv_handle_t *)&w->poll, on_handle_closed);
    uv_close((uv_handle_t *)&w->keepalive, on_handle_closed);
    uv_close((uv_handle_t *)&w->deadline, on_handle_closed);
}

/* ---- events ---- */

static void on_inotify(uv_poll_t *h, int status, int events);

static void
set_polling(struct watcher *w, bool on)
{
    if (w->closing || w->polling == on)
        return;
    w->polling = on;
    if (on)
        uv_poll_start(&w->poll, UV_READABLE, on_inotify);
    else
        uv_poll_stop(&w->poll);
}

static void
on_stream_drain(struct sbx_http_req *req)
{
    struct watcher *w = req->data;
    if (w == NULL)
        return;
    w->blocked = false;
    set_polling(w, true);
}

static void
stream_send(struct watcher *w, json_t *msg)
{
    if (w->req == NULL) {
        json_decref(msg);
        return;
    }
    if (!sbx_connect_stream_send(w->req, msg) && !w->blocked) {
        /* Stop reading inotify until the client catches up; the kernel queues meanwhile
         * (and reports an overflow, which is dropped, if it fills). */
        w->blocked = true;
        set_polling(w, false);
        sbx_http_on_drain(w->req, on_stream_drain);
    }
    uv_timer_again(&w->keepalive);
}

static void
emit(struct watcher *w, const char *name, const char *type, bool with_entry)
{
    json_t *ev = json_pack("{s:s,s:s}", "name", name, "type", type);
    if (with_entry && w->include_entry) {
        _cleanup_free_ char *abs = sbx_agent_path_join(w->root, name);
        _cleanup_error_ struct sbx_error *e = NULL;
        struct sbx_agent_names *names = sbx_agent_names_new();
        json_t *entry = sbx_agent_entry_info(abs, names, &e);
        sbx_agent_names_free(names);
        if (entry)
            json_object_set_new(ev, "entry", entry);
    }
    if (w->req) {
        stream_send(w, json_pack("{s:o}", "filesystem", ev));
    } else if (json_array_size(w->queue) < SBX_AGENT_WATCH_MAX_QUEUED) {
        json_array_append_new(w->queue, ev);
    } else {
        json_decref(ev); /* nobody drains: drop rather than grow without bound */
    }
}

static void
handle_event(struct watcher *w, const struct inotify_event *ev)
{
    if (ev->mask & IN_Q_OVERFLOW)
        return;
    struct wd_entry *e = wd_find(w, ev->wd);
    if (e == NULL)
        return;
    if (ev->mask & IN_IGNORED) {
        wd_drop(w, (size_t)(e - w->wds));
        return;
    }
    if (ev->len == 0 || ev->name[0] == '\0')
        return; /* events on a watched directory itself repeat its parent's */
    _cleanup_free_ char *name =
        e->rel[0] ? sbx_agent_path_join(e->rel, ev->name) : strdup(ev->name);
    bool is_dir = (ev->mask & IN_ISDIR) != 0;
    if (w->recursive && is_dir && (ev->mask & IN_MOVED_FROM)) {
        /* The subtree left (or moves within) the tree: its watches are re-added under the
         * new name by IN_MOVED_TO, if it stays inside. */
        size_t nl = strlen(name);
        for (size_t i = 0; i < w->n_wds;) {
            const char *r = w->wds[i].rel;
            if (strncmp(r, name, nl) == 0 && (r[nl] == '\0' || r[nl] == '/')) {
                inotify_rm_watch(w->ifd, w->wds[i].wd);
                wd_drop(w, i);
            } else {
                i++;
            }
        }
    }
    if (w->recursive && is_dir && (ev->mask & (IN_CREATE | IN_MOVED_TO))) {
        _cleanup_free_ char *abs = sbx_agent_path_join(w->root, name);
        _cleanup_close_ int fd =
            sbx_agent_open_for_user(AT_FDCWD, abs, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
        if (fd >= 0 && !sbx_agent_fd_is_proc(fd) && w->n_wds < WATCH_MAX_DIRS &&
            watch_fd(w, fd, name) >= 0)
            watch_below(w, fd, name, 1);
    }
    if (ev->mask & (IN_CREATE | IN_MOVED_TO))
        emit(w, name, "EVENT_TYPE_CREATE", true);
    if (ev->mask & IN_MODIFY)
        emit(w, name, "EVENT_TYPE_WRITE", true);
    if (ev->mask & IN_DELETE)
        emit(w, name, "EVENT_TYPE_REMOVE", false);
    if (ev->mask & IN_MOVED_FROM)
        emit(w, name, "EVENT_TYPE_RENAME", false);
    if (ev->mask & IN_ATTRIB)
        emit(w, name, "EVENT_TYPE_CHMOD", true);
}

static void
on_inotify(uv_poll_t *h, int status, int events)
{
    struct watcher *w = h->data;
    (void)events;
    if (status < 0)
        return;
    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    /* Bounded per wake-up so that one busy tree cannot starve the loop. */
    for (int round = 0; round < 16 && !w->closing && !w->blocked; round++) {
        ssize_t n = read(w->ifd, buf, sizeof(buf));
        if (n <= 0)
            return;
        for (char *p = buf; p < buf + n && !w->closing;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle_event(w, ev);
            p += sizeof(*ev) + ev->len;
        }
    }
}

/* ---- creation ---- */

static bool
is_network_fs(int fd)
{
    struct statfs s;
    if (fstatfs(fd, &s) < 0)
        return false;
    switch ((unsigned long)s.f_type) {
    case 0x6969:     /* NFS */
    case 0xFF534D42: /* CIFS */
    case 0x517B:     /* SMB */
    case 0xFE534D42: /* SMB2 */
    case 0x65735546: /* FUSE */
        return true;
    default:
        return false;
    }
}

static void
on_keepalive(uv_timer_t *t)
{
    struct watcher *w = t->data;
    if (w->req && !w->blocked)
        stream_send(w, json_pack("{s:{}}", "keepalive"));
}

static void
on_deadline(uv_timer_t *t)
{
    struct watcher *w = t->data;
    struct sbx_http_req *req = w->req;
    watcher_destroy(w);
    if (req) {
        _cleanup_error_ struct sbx_error *e = NULL;
        sbx_error_set(&e, SBX_DEADLINE_EXCEEDED, 0, "context deadline exceeded");
        sbx_connect_stream_end(req, e);
    }
}

static void
on_stream_closed(struct sbx_http_req *req)
{
    struct watcher *w = req->data;
    req->data = NULL;
    if (w) {
        w->req = NULL;
        watcher_destroy(w);
    }
}

static struct watcher *
watcher_new(struct sbx_http_req *req, json_t *msg, struct sbx_error **err)
{
    if (W.count >= SBX_AGENT_WATCH_MAX) {
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "too many watchers (%d)",
                      SBX_AGENT_WATCH_MAX);
        return NULL;
    }
    bool recursive = false, include_entry = false, allow_net = false;
    if (sbx_json_opt_bool(msg, "recursive", &recursive, err) < 0 ||
        sbx_json_opt_bool(msg, "includeEntry", &include_entry, err) < 0 ||
        sbx_json_opt_bool(msg, "include_entry", &include_entry, err) < 0 ||
        sbx_json_opt_bool(msg, "allowNetworkMounts", &allow_net, err) < 0 ||
        sbx_json_opt_bool(msg, "allow_network_mounts", &allow_net, err) < 0)
        return NULL;
    struct watcher *w = calloc(1, sizeof(*w));
    if (w == NULL)
        abort();
    w->ifd = -1;
    w->recursive = recursive;
    w->include_entry = include_entry;
    if (sbx_agent_user_from_request(req, &w->user, err) < 0)
        goto fail;
    w->root = sbx_agent_fs_req_path(msg, "path", &w->user, err);
    if (w->root == NULL)
        goto fail;
    {
        /* As envd watches, as root: the root followed if it is a symlink (os.Stat), never
         * through a magic link (fsutil.h). */
        _cleanup_close_ int fd =
            sbx_agent_open_for_user(AT_FDCWD, w->root, O_PATH | O_DIRECTORY, 0);
        if (fd < 0) {
            if (errno == ENOENT)
                sbx_error_set(err, SBX_NOT_FOUND, ENOENT, "path '%s' does not exist", w->root);
            else if (errno == ENOTDIR)
                sbx_error_set(err, SBX_INVALID_ARGUMENT, ENOTDIR, "path '%s' is not a directory",
                              w->root);
            else
                sbx_agent_open_error(err, errno, "watch", w->root, (int)strlen(w->root));
            goto fail;
        }
        if (sbx_agent_fd_is_proc(fd)) {
            sbx_error_set(err, SBX_PERMISSION_DENIED, EACCES,
                          "path '%s' is on /proc, which the agent never watches", w->root);
            goto fail;
        }
        if (!allow_net && is_network_fs(fd)) {
            sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                          "path '%s' is on a network mount; set allowNetworkMounts to watch it",
                          w->root);
            goto fail;
        }
        w->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (w->ifd < 0) {
            sbx_agent_fs_error(err, errno, "inotify_init1");
            goto fail;
        }
        if (watch_fd(w, fd, "") < 0) {
            sbx_agent_fs_error(err, errno, "watch '%s'", w->root);
            goto fail;
        }
        if (w->recursive)
            watch_below(w, fd, "", 1);
    }
    uv_loop_t *loop = uv_default_loop();
    uv_poll_init(loop, &w->poll, w->ifd);
    uv_timer_init(loop, &w->keepalive);
    uv_timer_init(loop, &w->deadline);
    w->poll.data = w->keepalive.data = w->deadline.data = w;
    sbx_random_hex(w->id + 1, 8);
    w->id[0] = 'w';
    w->next = W.list;
    W.list = w;
    W.count++;
    set_polling(w, true);
    return w;
fail:
    if (w->ifd >= 0)
        close(w->ifd);
    for (size_t i = 0; i < w->n_wds; i++)
        free(w->wds[i].rel);
    free(w->wds);
    free(w->root);
    sbx_agent_user_fini(&w->user);
    free(w);
    return NULL;
}

static struct watcher *
watcher_by_id(json_t *msg, struct sbx_error **err)
{
    const char *id = NULL;
    if (sbx_json_opt_string(msg, "watcherId", &id, err) < 0 ||
        (id == NULL && sbx_json_opt_string(msg, "watcher_id", &id, err) < 0))
        return NULL;
    for (struct watcher *w = W.list; id && w; w = w->next)
        if (w->req == NULL && strcmp(w->id, id) == 0)
            return w;
    sbx_error_set(err, SBX_NOT_FOUND, 0, "watcher '%s' not found", id ? id : "");
    return NULL;
}

/* The watcher msg names, or NULL after answering the unary call with the error. */
static struct watcher *
unary_watcher(struct sbx_http_req *req, json_t *msg)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    struct watcher *w = watcher_by_id(msg, &e);
    if (w == NULL)
        sbx_connect_unary_error(req, e);
    return w;
}

/* ---- RPCs ---- */

void
sbx_agent_watch_dir(struct sbx_http_req *req, json_t *msg)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    struct watcher *w = watcher_new(req, msg, &e);
    if (w == NULL) {
        sbx_connect_error(req, e);
        return;
    }
    w->req = req;
    req->data = w;
    sbx_http_req_on_close(req, on_stream_closed);
    sbx_connect_stream_start(req);
    uint64_t ka = sbx_connect_keepalive_ms(req);
    uv_timer_start(&w->keepalive, on_keepalive, ka, ka);
    uint64_t deadline = sbx_connect_timeout_ms(req);
    if (deadline > 0)
        uv_timer_start(&w->deadline, on_deadline, deadline, 0);
    stream_send(w, json_pack("{s:{}}", "start"));
}

void
sbx_agent_watcher_create(struct sbx_http_req *req, json_t *msg)
{
    _cleanup_error_ struct sbx_error *e = NULL;
    struct watcher *w = watcher_new(req, msg, &e);
    if (w == NULL) {
        sbx_connect_unary_error(req, e);
        return;
    }
    w->queue = json_array();
    sbx_connect_unary_ok(req, json_pack("{s:s}", "watcherId", w->id));
}

void
sbx_agent_watcher_events(struct sbx_http_req *req, json_t *msg)
{
    struct watcher *w = unary_watcher(req, msg);
    if (w == NULL)
        return;
    /* Events already in the kernel queue belong to this poll too. */
    on_inotify(&w->poll, 0, UV_READABLE);
    json_t *events = w->queue;
    w->queue = json_array();
    sbx_connect_unary_ok(req, json_pack("{s:o}", "events", events));
}

void
sbx_agent_watcher_remove(struct sbx_http_req *req, json_t *msg)
{
    struct watcher *w = unary_watcher(req, msg);
    if (w == NULL)
        return;
    watcher_destroy(w);
    sbx_connect_unary_ok(req, json_object());
}
