/* Try-write then queue a copy: see stream.h. */
#include <stdlib.h>
#include <string.h>

#include "http/stream.h"

int
sbx_http_stream_writev(uv_stream_t *s, const uv_buf_t *bufs, unsigned nbufs, bool try_first,
                       size_t *queued, void *owner, uv_write_cb cb)
{
    size_t len = 0;
    for (unsigned i = 0; i < nbufs; i++)
        len += bufs[i].len;
    if (len == 0)
        return 0;
    size_t done = 0;
    if (try_first && *queued == 0) {
        int n = uv_try_write(s, bufs, nbufs);
        if (n > 0)
            done = (size_t)n; /* errors: uv_write below reports them */
        if (done == len)
            return 0;
    }
    struct sbx_http_wcopy *wc = malloc(sizeof(*wc) + len - done);
    if (wc == NULL)
        return -1;
    wc->owner = owner;
    wc->len = len - done;
    size_t o = 0, skip = done;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t bl = bufs[i].len;
        if (skip >= bl) {
            skip -= bl;
            continue;
        }
        memcpy(wc->data + o, bufs[i].base + skip, bl - skip);
        o += bl - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init(wc->data, (unsigned)wc->len);
    *queued += wc->len;
    if (uv_write(&wc->w, s, &b, 1, cb) < 0) {
        *queued -= wc->len;
        free(wc);
        return -1;
    }
    return 0;
}
