/* Bidirectional tunnel: see tunnel.h. */
#include "http/tunnel.h"

#include <stdbool.h>
#include <stdlib.h>

#include "base/limits.h"
#include "base/util.h"
#include "http/stream.h"

struct tunnel;

struct side {
    struct tunnel *t;
    uv_stream_t *s;
    void *saved_data; /* the owner's, given back at the end */
    void (*close)(void *ud);
    void *ud;
    size_t queued; /* written to this side, not yet taken by the kernel */
    bool eof;      /* this side has ended its stream */
    bool reading;
    uv_shutdown_t shutdown;
};

struct tunnel {
    struct side end[2];
    int pending; /* writes and shutdowns in flight: the tunnel lives until they complete */
    bool done;
    uint64_t last_ms; /* of the last byte either way */
    uv_timer_t idle;
};

static void finish(struct tunnel *t);

static struct side *
peer(struct side *s)
{
    return s == &s->t->end[0] ? &s->t->end[1] : &s->t->end[0];
}

static void
on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void
release(struct tunnel *t)
{
    if (t->done && t->pending == 0 && !uv_is_closing((uv_handle_t *)&t->idle))
        uv_close((uv_handle_t *)&t->idle, on_timer_closed);
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[SBX_RELAY_READ_SLAB];
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void
set_reading(struct side *s, bool on)
{
    if (s->t->done || s->eof || s->reading == on)
        return;
    s->reading = on;
    if (on)
        uv_read_start(s->s, on_alloc, on_read);
    else
        uv_read_stop(s->s);
}

static void
on_shutdown(uv_shutdown_t *req, int status)
{
    struct side *s = req->data;
    struct tunnel *t = s->t;
    t->pending--;
    /* Both directions ended: nothing more can pass. */
    if (!t->done && t->end[0].eof && t->end[1].eof)
        finish(t);
    release(t);
}

static void
on_write(uv_write_t *w, int status)
{
    struct sbx_http_wcopy *wc = (struct sbx_http_wcopy *)w;
    struct side *s = wc->owner;
    struct tunnel *t = s->t;
    s->queued -= wc->len;
    free(wc);
    t->pending--;
    if (status < 0 && !t->done)
        finish(t);
    else if (!t->done && s->queued < SBX_HTTP_WRITE_HIGH_WATER)
        set_reading(peer(s), true); /* its data has drained */
    release(t);
}

/* Writes data to side s, pausing its peer (the source) when s falls behind. */
static int
write_to(struct side *s, const char *data, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    size_t before = s->queued;
    if (sbx_http_stream_writev(s->s, &b, 1, true, &s->queued, s, on_write) < 0)
        return -1;
    if (s->queued > before)
        s->t->pending++;
    if (s->queued >= SBX_HTTP_WRITE_HIGH_WATER)
        set_reading(peer(s), false);
    return 0;
}

static void
on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
    struct tunnel *t = stream->data;
    struct side *s = stream == t->end[0].s ? &t->end[0] : &t->end[1];
    if (t->done || n == 0)
        return;
    t->last_ms = sbx_now_ms();
    if (n == UV_EOF) {
        /* Passed on as the end of the other direction, once its queued bytes are out. */
        s->eof = true;
        s->reading = false;
        uv_read_stop(stream);
        struct side *p = peer(s);
        p->shutdown.data = p;
        if (uv_shutdown(&p->shutdown, p->s, on_shutdown) < 0)
            finish(t);
        else
            t->pending++;
        return;
    }
    if (n < 0 || write_to(peer(s), buf->base, (size_t)n) < 0)
        finish(t);
}

static void
on_idle_check(uv_timer_t *timer)
{
    struct tunnel *t = timer->data;
    if (!t->done && sbx_now_ms() - t->last_ms >= SBX_TUNNEL_IDLE_MS)
        finish(t);
}

/* The end: both streams go back to their owners, who close them. */
static void
finish(struct tunnel *t)
{
    t->done = true;
    uv_timer_stop(&t->idle);
    for (int i = 0; i < 2; i++) {
        struct side *s = &t->end[i];
        if (s->reading)
            uv_read_stop(s->s);
        s->reading = false;
        s->s->data = s->saved_data;
    }
    for (int i = 0; i < 2; i++)
        t->end[i].close(t->end[i].ud);
    release(t);
}

void
sbx_tunnel_start(uv_loop_t *loop, const struct sbx_tunnel_end *a, const struct sbx_tunnel_end *b)
{
    struct tunnel *t = calloc(1, sizeof(*t));
    if (t == NULL)
        abort();
    const struct sbx_tunnel_end *ends[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        struct side *s = &t->end[i];
        s->t = t;
        s->s = ends[i]->stream;
        /* Bulk transfers (a download through a sandbox's port) make fewer trips through the
         * loop with deeper socket buffers; the kernel caps them at net.core.wmem_max. */
        int sndbuf = SBX_PROXY_SNDBUF;
        uv_send_buffer_size((uv_handle_t *)s->s, &sndbuf);
        s->saved_data = s->s->data;
        s->s->data = t;
        s->close = ends[i]->close;
        s->ud = ends[i]->ud;
    }
    t->last_ms = sbx_now_ms();
    uv_timer_init(loop, &t->idle);
    t->idle.data = t;
    uv_timer_start(&t->idle, on_idle_check, SBX_TUNNEL_IDLE_MS / 4, SBX_TUNNEL_IDLE_MS / 4);
    for (int i = 0; i < 2 && !t->done; i++)
        if (ends[i]->n_pending > 0 &&
            write_to(&t->end[i], ends[i]->pending, ends[i]->n_pending) < 0)
            finish(t);
    for (int i = 0; i < 2 && !t->done; i++)
        set_reading(&t->end[i], t->end[1 - i].queued < SBX_HTTP_WRITE_HIGH_WATER);
}
