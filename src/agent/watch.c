/* Directory watchers on inotify, driven by uv_poll on the inotify fd (libuv's uv_fs_event is
 * not recursive on Linux). As envd's, they run as sandbox root, the path resolved for the
 * operation user (fsutil.h). A recursive watcher adds a watch for every directory under the
 * root, and for directories created or moved in later, whose contents, made before their
 * watch was added, it reports as created (fsnotify's walk, watch_below); watches of a
 * directory moved within the tree follow it. Events are reported as envd's fsnotify reports
 * them: one event per op, named relative to the watched directory ("." for itself).
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
    (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB |                 \
     IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)
#define WATCH_MAX_DIRS     65536
#define WATCH_MOVE_COOKIES 8

struct wd_entry {
    int wd;
    char *rel; /* "" for the root */
};

/* A directory moved away inside a recursive tree: its subtree's watches stay, as fsnotify's,
 * until its IN_MOVED_TO says where it went (they are then renamed), or the inotify queue
 * drains without one: it left the tree, and its watches go. Its cookie is kept after that, so
 * that a late IN_MOVED_TO still tells a move within the tree from a directory new to it. */
struct move {
    uint32_t cookie; /* 0: a free slot */
    bool left;
    char *rel;
    int *wds;
    size_t n_wds;
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
    json_t *queue;                         /* polled sink */
    struct move moves[WATCH_MOVE_COOKIES]; /* the last ones, as fsnotify's cookie cache */
    unsigned moves_next;
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

static void
unwatch(struct watcher *w, int wd)
{
    struct wd_entry *e = wd_find(w, wd);
    if (e != NULL) {
        inotify_rm_watch(w->ifd, wd);
        wd_drop(w, (size_t)(e - w->wds));
    }
}

static bool
rel_is_below(const char *r, const char *rel)
{
    size_t n = strlen(rel);
    return strncmp(r, rel, n) == 0 && (r[n] == '\0' || r[n] == '/');
}

static void emit(struct watcher *w, const char *name, const char *type, bool with_entry);

/* Watches every directory below dirfd (root/rel), each entered through a descriptor without
 * following symlinks (symlinked directories are not watched, as in fsnotify); a /proc mount
 * is not entered, the agent's own entries being there (fsutil.h). Directories that cannot be
 * read or watched are skipped. With announce, each entry found is reported as created, in
 * the order of a walk, until *announce of them have been: fsnotify's walk of a directory new
 * to a recursive watch, whose contents may have been made before its watch was added. */
static void
watch_below(struct watcher *w, int dirfd, const char *rel, unsigned level, size_t *announce)
{
    size_t n = 0;
    char **names = level > 256 ? NULL : sbx_agent_dir_names(dirfd, &n);
    if (names == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        _cleanup_free_ char *sub_rel =
            rel[0] ? sbx_agent_path_join(rel, names[i]) : strdup(names[i]);
        if (announce != NULL && *announce > 0) {
            (*announce)--;
            emit(w, sub_rel, "EVENT_TYPE_CREATE", true);
        }
        if (w->n_wds >= WATCH_MAX_DIRS)
            continue;
        _cleanup_close_ int sub =
            sbx_agent_open_for_user(dirfd, names[i], O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
        if (sub >= 0 && !sbx_agent_fd_is_proc(sub) && watch_fd(w, sub, sub_rel) >= 0)
            watch_below(w, sub, sub_rel, level + 1, announce);
    }
    sbx_agent_dir_names_free(names, n);
}

/* Watches root/rel, a directory created in or moved into a recursive tree, and what is below
 * it; what is below is announced unless the directory moved within the tree (fsnotify then
 * renames its watches and reports nothing more). */
static void
watch_new_dir(struct watcher *w, const char *rel, bool announce)
{
    _cleanup_free_ char *abs = sbx_agent_path_join(w->root, rel);
    _cleanup_close_ int fd =
        sbx_agent_open_for_user(AT_FDCWD, abs, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
    size_t budget = SBX_AGENT_WATCH_MAX_ANNOUNCED;
    if (fd >= 0 && !sbx_agent_fd_is_proc(fd) && w->n_wds < WATCH_MAX_DIRS &&
        watch_fd(w, fd, rel) >= 0)
        watch_below(w, fd, rel, 1, announce ? &budget : NULL);
}

/* ---- directories moved within, out of and into a recursive tree ---- */

static void
move_forget(struct move *m)
{
    free(m->rel);
    free(m->wds);
    memset(m, 0, sizeof(*m));
}

static void
move_leave(struct watcher *w, struct move *m)
{
    for (size_t i = 0; i < m->n_wds; i++)
        unwatch(w, m->wds[i]);
    free(m->wds);
    m->wds = NULL;
    m->n_wds = 0;
    m->left = true;
}

static void
moved_from(struct watcher *w, uint32_t cookie, const char *rel)
{
    struct move *m = &w->moves[w->moves_next++ % WATCH_MOVE_COOKIES];
    if (m->cookie != 0 && !m->left)
        move_leave(w, m);
    move_forget(m);
    m->cookie = cookie;
    m->rel = strdup(rel);
    m->wds = calloc(w->n_wds + 1, sizeof(*m->wds));
    if (m->rel == NULL || m->wds == NULL)
        abort();
    for (size_t i = 0; i < w->n_wds; i++)
        if (rel_is_below(w->wds[i].rel, rel))
            m->wds[m->n_wds++] = w->wds[i].wd;
}

/* The directory rel moved in: false if it was not moved from inside the tree. Else its
 * watches now name it rel, or if they went meanwhile it is watched again (without reporting
 * its contents, as fsnotify reports nothing more of a move within the tree). */
static bool
moved_to(struct watcher *w, uint32_t cookie, const char *rel)
{
    struct move *m = NULL;
    for (unsigned i = 0; i < WATCH_MOVE_COOKIES && m == NULL; i++)
        if (cookie != 0 && w->moves[i].cookie == cookie)
            m = &w->moves[i];
    if (m == NULL)
        return false;
    if (m->left)
        watch_new_dir(w, rel, false);
    for (size_t i = 0; i < m->n_wds; i++) {
        struct wd_entry *e = wd_find(w, m->wds[i]);
        if (e == NULL || !rel_is_below(e->rel, m->rel))
            continue;
        char *renamed = NULL;
        if (asprintf(&renamed, "%s%s", rel, e->rel + strlen(m->rel)) < 0)
            abort();
        free(e->rel);
        e->rel = renamed;
    }
    move_forget(m);
    return true;
}

/* The queue drained: a directory moved away whose IN_MOVED_TO has not come left the tree. */
static void
moves_settle(struct watcher *w)
{
    for (unsigned i = 0; i < WATCH_MOVE_COOKIES; i++)
        if (w->moves[i].cookie != 0 && !w->moves[i].left)
            move_leave(w, &w->moves[i]);
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
    for (unsigned i = 0; i < WATCH_MOVE_COOKIES; i++)
        move_forget(&w->moves[i]);
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
        /* The root's own entry is the root's, as envd's of fsnotify's event.Name: named
         * after it, its path clean, not "<root>/.". */
        _cleanup_free_ char *abs =
            strcmp(name, ".") == 0 ? strdup(w->root) : sbx_agent_path_join(w->root, name);
        if (abs == NULL)
            abort();
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
    bool is_root = e->rel[0] == '\0';
    _cleanup_free_ char *name = NULL;
    if (ev->len > 0 && ev->name[0] != '\0') {
        name = is_root ? strdup(ev->name) : sbx_agent_path_join(e->rel, ev->name);
    } else {
        /* An event on a watched directory itself, which fsnotify names after it ("." for the
         * root). A subdirectory's removal or move is its parent's event, reported there; the
         * root's are reported, and a moved root is no longer watched. A change of attributes
         * is reported by the directory's own watch, and so for a subdirectory again by its
         * parent's: envd reports both. */
        if (!is_root && (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)))
            return;
        name = strdup(is_root ? "." : e->rel);
        if (ev->mask & IN_MOVE_SELF)
            while (w->n_wds > 0)
                unwatch(w, w->wds[0].wd);
    }
    bool is_dir = (ev->mask & IN_ISDIR) != 0;
    if (w->recursive && is_dir && (ev->mask & IN_MOVED_FROM))
        moved_from(w, ev->cookie, name);
    /* One event per op, in envd's order. */
    if (ev->mask & (IN_CREATE | IN_MOVED_TO))
        emit(w, name, "EVENT_TYPE_CREATE", true);
    if (ev->mask & (IN_MOVED_FROM | IN_MOVE_SELF))
        emit(w, name, "EVENT_TYPE_RENAME", false);
    if (ev->mask & IN_ATTRIB)
        emit(w, name, "EVENT_TYPE_CHMOD", true);
    if (ev->mask & IN_MODIFY)
        emit(w, name, "EVENT_TYPE_WRITE", true);
    if (ev->mask & (IN_DELETE | IN_DELETE_SELF))
        emit(w, name, "EVENT_TYPE_REMOVE", false);
    if (w->recursive && is_dir &&
        ((ev->mask & IN_CREATE) || ((ev->mask & IN_MOVED_TO) && !moved_to(w, ev->cookie, name))))
        watch_new_dir(w, name, true);
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
        if (n < 0 && errno == EAGAIN)
            moves_settle(w);
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
            watch_below(w, fd, "", 1, NULL);
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
