/* The front end's side of the spawner channel: requests go out as datagrams, replies come
 * back in any order and find their request by seq. Nothing here blocks: a request is a
 * callback later. When the spawner dies, the requests it had are answered UNAVAILABLE and
 * the rest wait for the channel to the spawner the supervisor starts next. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/fdpass.h"
#include "base/log.h"
#include "daemon/internal.h"

struct call {
    uint32_t seq;
    char buf[SBX_SPAWNER_MSG_MAX];
    size_t len;
    int fds[SBX_SPAWNER_FDS_MAX]; /* sent with the request (-1: none), closed once sent */
    bool sent;
    sbx_spawner_log_cb on_log; /* STEP_LOG messages of a BUILD_STEP */
    sbx_spawner_cb cb;
    void *ud;
    struct call *next;
};

/* One spawner's channel. Freed, and its fd closed, only once its poll handle has closed: an
 * fd closed earlier could be reused while libuv still watches its number. */
struct channel {
    uv_poll_t poll;
    int fd;
};

static struct {
    struct channel *ch; /* NULL between a spawner's death and the next one */
    uint32_t next_seq;
    struct call *calls; /* oldest first */
} cl;

static void update_poll(void);

static void
close_fds(struct call *c)
{
    for (size_t i = 0; i < SBX_SPAWNER_FDS_MAX; i++)
        if (c->fds[i] >= 0) {
            close(c->fds[i]);
            c->fds[i] = -1;
        }
}

static void
finish(struct call *c, const struct sbx_spawner_msg *reply, struct sbx_error *err)
{
    struct call **pp = &cl.calls;
    while (*pp && *pp != c)
        pp = &(*pp)->next;
    if (*pp)
        *pp = c->next;
    close_fds(c);
    sbx_spawner_cb cb = c->cb;
    void *ud = c->ud;
    free(c);
    cb(reply, err, ud);
}

static void
send_pending(void)
{
    for (struct call *c = cl.calls; c && cl.ch; c = c->next) {
        if (c->sent)
            continue;
        size_t nfds = 0;
        while (nfds < SBX_SPAWNER_FDS_MAX && c->fds[nfds] >= 0)
            nfds++;
        int n = sbx_send_fds(cl.ch->fd, c->buf, c->len, c->fds, nfds);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break; /* the rest when the socket is writable again */
        if (n < 0)
            break; /* the spawner is gone: its EOF follows */
        c->sent = true;
        close_fds(c);
    }
    update_poll();
}

static void
on_channel_closed(uv_handle_t *h)
{
    struct channel *ch = h->data;
    close(ch->fd);
    free(ch);
}

static void
close_channel(void)
{
    if (cl.ch == NULL)
        return;
    uv_poll_stop(&cl.ch->poll);
    uv_close((uv_handle_t *)&cl.ch->poll, on_channel_closed);
    cl.ch = NULL;
}

static void
lose_channel(const char *why)
{
    sbx_log_error("spawner_lost", "reason=\"%s\" action=\"the supervisor starts a new one\"", why);
    close_channel();
    /* What it was working on is lost (a spawn cleans up after itself in its child); the
     * callers decide, destroys are simply asked again. */
    struct call *c = cl.calls;
    while (c) {
        struct call *next = c->next;
        if (c->sent) {
            _cleanup_error_ struct sbx_error *err = NULL;
            sbx_error_set(&err, SBX_UNAVAILABLE, 0, "the spawner stopped during the request");
            finish(c, NULL, err);
        }
        c = next;
    }
}

static void
on_reply(const char *buf, size_t len)
{
    struct sbx_spawner_msg m;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_spawner_msg_decode(buf, len, &m, &err) < 0 ||
        (m.op != SBX_SPAWNER_REPLY && m.op != SBX_SPAWNER_STEP_LOG)) {
        sbx_log_error("spawner_reply", "error=\"%s\"", err ? err->msg : "not a reply");
        return;
    }
    for (struct call *c = cl.calls; c; c = c->next) {
        if (!c->sent || c->seq != m.seq)
            continue;
        if (m.op == SBX_SPAWNER_STEP_LOG) {
            if (c->on_log)
                c->on_log(m.message, c->ud);
            return;
        }
        if (m.code != SBX_OK) {
            _cleanup_error_ struct sbx_error *e = NULL;
            sbx_error_set(&e, (enum sbx_code)m.code, (int)m.sys_errno, "%s", m.message);
            finish(c, &m, e);
        } else {
            finish(c, &m, NULL);
        }
        return;
    }
    sbx_log_warn("spawner_reply", "seq=%u error=\"no request waits for it\"", m.seq);
}

static void
on_channel(uv_poll_t *h, int status, int events)
{
    if (events & UV_WRITABLE)
        send_pending();
    if (!(events & UV_READABLE) || cl.ch == NULL || h != &cl.ch->poll)
        return;
    for (;;) {
        char buf[SBX_SPAWNER_MSG_MAX];
        ssize_t n = recv(cl.ch->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            lose_channel(n == 0 ? "channel closed" : strerror(errno));
            return;
        }
        on_reply(buf, (size_t)n);
        if (cl.ch == NULL || h != &cl.ch->poll)
            return;
    }
}

static void
update_poll(void)
{
    if (cl.ch == NULL)
        return;
    bool want_write = false;
    for (struct call *c = cl.calls; c; c = c->next)
        want_write |= !c->sent;
    uv_poll_start(&cl.ch->poll, UV_READABLE | (want_write ? UV_WRITABLE : 0), on_channel);
}

void
sbx_spawner_client_set_channel(uv_loop_t *loop, int fd)
{
    if (cl.ch)
        lose_channel("replaced");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct channel *ch = calloc(1, sizeof(*ch));
    if (ch == NULL || uv_poll_init(loop, &ch->poll, fd) < 0)
        abort(); /* a fresh fd from the supervisor: cannot be watched already */
    ch->fd = fd;
    ch->poll.data = ch;
    cl.ch = ch;
    send_pending();
}

void
sbx_spawner_client_close(void)
{
    close_channel();
}

static void
call(struct sbx_spawner_msg *req, const int *fds, sbx_spawner_log_cb on_log, sbx_spawner_cb cb,
     void *ud)
{
    struct call *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    req->seq = c->seq = ++cl.next_seq;
    ssize_t n = sbx_spawner_msg_encode(req, c->buf, sizeof(c->buf));
    memcpy(c->fds, fds, sizeof(c->fds));
    c->on_log = on_log;
    c->cb = cb;
    c->ud = ud;
    if (n < 0) {
        _cleanup_error_ struct sbx_error *err = NULL;
        sbx_error_set(&err, SBX_INTERNAL, 0, "spawner request too large");
        c->next = cl.calls;
        cl.calls = c;
        finish(c, NULL, err);
        return;
    }
    c->len = (size_t)n;
    struct call **pp = &cl.calls;
    while (*pp)
        pp = &(*pp)->next;
    *pp = c;
    send_pending();
}

void
sbx_spawner_call(struct sbx_spawner_msg *req, int fd, sbx_spawner_cb cb, void *ud)
{
    int fds[SBX_SPAWNER_FDS_MAX] = {fd, -1};
    call(req, fds, NULL, cb, ud);
}

void
sbx_spawner_call_step(struct sbx_spawner_msg *req, int config_fd, int archive_fd,
                      sbx_spawner_log_cb on_log, sbx_spawner_cb cb, void *ud)
{
    int fds[SBX_SPAWNER_FDS_MAX] = {config_fd, config_fd >= 0 ? archive_fd : -1};
    call(req, fds, on_log, cb, ud);
}
