/* Fuzz target: the streaming multipart/form-data parser (src/agent/multipart.c), which takes
 * POST /files bodies byte for byte from clients.
 *
 * Input layout: byte 0 chooses how the body is split into feeds (0 = all at once, otherwise
 * pieces of 1..255 bytes); the bytes up to the first '\n' are the Content-Type header value
 * (the boundary comes from it, as in the agent); the rest is the body. Invariant: the
 * sequence of callbacks (part heads, body bytes, ends) and the verdict do not depend on how
 * the body was split, and no data slice is larger than the parser's window. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/multipart.h"
#include "fuzz_common.h"

/* A running FNV-1a digest of everything the callbacks saw. */
struct trace {
    uint64_t h;
    size_t parts, ends, bytes;
};

static void
mix(struct trace *t, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        t->h = (t->h ^ b[i]) * 1099511628211ull;
}

static int
on_begin(void *ud, const struct sbx_multipart_part *p, struct sbx_error **err)
{
    struct trace *t = ud;
    CHECK(p->name != NULL);
    t->parts++;
    mix(t, "B", 1);
    mix(t, p->name, strlen(p->name) + 1);
    if (p->filename)
        mix(t, p->filename, p->filename_len + 1);
    if (p->content_type)
        mix(t, p->content_type, strlen(p->content_type) + 1);
    return 0;
}

static int
on_data(void *ud, const char *d, size_t n, struct sbx_error **err)
{
    struct trace *t = ud;
    CHECK(n > 0 && n <= SBX_MULTIPART_SLICE + SBX_MULTIPART_MAX_BOUNDARY + 4);
    t->bytes += n;
    mix(t, d, n); /* data is hashed as a stream: slice boundaries do not matter */
    return 0;
}

static int
on_end(void *ud, struct sbx_error **err)
{
    struct trace *t = ud;
    t->ends++;
    mix(t, "E", 1);
    return 0;
}

static const struct sbx_multipart_callbacks cbs = {on_begin, on_data, on_end};

static int
run(const char *boundary, const uint8_t *body, size_t len, size_t step, struct trace *t)
{
    memset(t, 0, sizeof(*t));
    t->h = 1469598103934665603ull;
    struct sbx_multipart *m = sbx_multipart_new(boundary, &cbs, t);
    struct sbx_error *err = NULL;
    int rc = 0;
    for (size_t off = 0; off < len && rc == 0; off += step)
        rc = sbx_multipart_feed(m, (const char *)body + off, len - off < step ? len - off : step,
                                &err);
    if (rc == 0)
        rc = sbx_multipart_finish(m, &err);
    CHECK((rc < 0) == (err != NULL));
    sbx_error_free(err);
    sbx_multipart_free(m);
    return rc;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t step = data[0] ? data[0] : SIZE_MAX;
    const uint8_t *nl = memchr(data + 1, '\n', size - 1);
    if (nl == NULL)
        return 0;
    size_t ctlen = (size_t)(nl - (data + 1));
    char *ct = malloc(ctlen + 1);
    memcpy(ct, data + 1, ctlen);
    ct[ctlen] = '\0';
    struct sbx_error *err = NULL;
    char *boundary = sbx_multipart_boundary(ct, &err);
    free(ct);
    if (boundary == NULL) {
        CHECK(err != NULL);
        sbx_error_free(err);
        return 0;
    }
    const uint8_t *body = nl + 1;
    size_t blen = size - (size_t)(body - data);
    struct trace whole, split;
    int rw = run(boundary, body, blen, blen ? blen : 1, &whole);
    int rs = run(boundary, body, blen, step == SIZE_MAX ? 1 : step, &split);
    /* Errors stop the parser where they are found, so only successful runs must agree in
     * full; the verdict must always agree. */
    CHECK(rw == rs);
    if (rw == 0) {
        CHECK(whole.h == split.h && whole.parts == split.parts && whole.ends == split.ends &&
              whole.bytes == split.bytes);
        CHECK(whole.parts == whole.ends);
    }
    free(boundary);
    return 0;
}
