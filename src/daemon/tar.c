/* The COPY archive checker (see tar.h): gzip inflation (zlib) feeding a tar state machine. */
#include "daemon/tar.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "base/cleanup.h"
#include "base/util.h"

#define BLOCK 512

enum { SNIFF, PLAIN, GZIP };

/* A set of paths (symlinks, regular files), open addressing over FNV-1a. */
struct pathset {
    char **slots;
    size_t cap, n;
};

struct sbx_tar_check {
    uint64_t max_bytes, total;
    uint32_t max_entries, entries;
    int mode; /* SNIFF until the first two bytes tell gzip from plain */
    unsigned char sniff[2];
    size_t nsniff;
    z_stream z;
    bool z_live;
    bool failed, ended, saw_header;
    /* The tar stream. */
    unsigned char hdr[BLOCK];
    size_t nhdr;
    uint64_t skip; /* bytes of data (and padding) still to pass */
    char *meta;    /* data of a pax/GNU header being collected */
    size_t nmeta, want_meta;
    char meta_type;  /* its type: 'x', 'g', 'L' or 'K' */
    char *long_name; /* overrides for the next entry (GNU L/K, pax path/linkpath) */
    char *long_link;
    bool pax_size_set;
    uint64_t pax_size;
    struct pathset links, files;
};

static int __attribute__((format(printf, 3, 4)))
fail(struct sbx_tar_check *c, struct sbx_error **err, const char *fmt, ...)
{
    c->failed = true;
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *msg = sbx_vformat(fmt, ap);
    va_end(ap);
    return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s", msg);
}

/* ---- path sets ---- */

static uint64_t
hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static bool
set_has(const struct pathset *s, const char *p, size_t len)
{
    if (s->cap == 0)
        return false;
    char buf[SBX_TAR_NAME_MAX + 1];
    memcpy(buf, p, len);
    buf[len] = '\0';
    for (size_t i = hash(buf) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->slots[i] == NULL)
            return false;
        if (strcmp(s->slots[i], buf) == 0)
            return true;
    }
}

static void
set_add(struct pathset *s, const char *p)
{
    if (set_has(s, p, strlen(p)))
        return;
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        char **slots = calloc(cap, sizeof(*slots));
        if (slots == NULL)
            abort();
        for (size_t i = 0; i < s->cap; i++)
            if (s->slots[i]) {
                size_t j = hash(s->slots[i]) & (cap - 1);
                while (slots[j])
                    j = (j + 1) & (cap - 1);
                slots[j] = s->slots[i];
            }
        free(s->slots);
        s->slots = slots;
        s->cap = cap;
    }
    size_t i = hash(p) & (s->cap - 1);
    while (s->slots[i])
        i = (i + 1) & (s->cap - 1);
    if ((s->slots[i] = strdup(p)) == NULL)
        abort();
    s->n++;
}

static void
set_free(struct pathset *s)
{
    for (size_t i = 0; i < s->cap; i++)
        free(s->slots[i]);
    free(s->slots);
}

/* ---- names ---- */

/* Normalises a member name into out: "./" and empty components dropped, no trailing "/".
 * False if it is absolute, has a ".." component, or is too long. "" is the archive's root. */
static bool
normalize(const char *in, char *out)
{
    if (in[0] == '/')
        return false;
    size_t n = 0;
    for (const char *p = in; *p;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return false;
        if (len > 0 && !(len == 1 && p[0] == '.')) {
            if (n + len + 2 > SBX_TAR_NAME_MAX)
                return false;
            if (n)
                out[n++] = '/';
            memcpy(out + n, p, len);
            n += len;
        }
        p += len + (e != NULL);
    }
    out[n] = '\0';
    return true;
}

/* True if a proper prefix of path (at a '/') is a symlink of the archive. */
static bool
below_symlink(const struct sbx_tar_check *c, const char *path)
{
    for (const char *p = strchr(path, '/'); p; p = strchr(p + 1, '/'))
        if (set_has(&c->links, path, (size_t)(p - path)))
            return true;
    return false;
}

/* ---- header fields ---- */

static bool
parse_number(const unsigned char *f, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (f[0] & 0x80) { /* base-256 (GNU), positive only */
        if (f[0] != 0x80)
            return false;
        for (size_t i = 1; i < len; i++) {
            if (v >> 56)
                return false;
            v = v << 8 | f[i];
        }
        *out = v;
        return true;
    }
    size_t i = 0;
    while (i < len && f[i] == ' ')
        i++;
    size_t digits = 0;
    for (; i < len && f[i] >= '0' && f[i] <= '7'; i++, digits++) {
        if (v >> 60)
            return false;
        v = v << 3 | (uint64_t)(f[i] - '0');
    }
    for (; i < len; i++)
        if (f[i] != ' ' && f[i] != '\0')
            return false;
    *out = v;
    return digits > 0 || len == 0;
}

static bool
checksum_ok(const unsigned char *h)
{
    uint64_t want;
    if (!parse_number(h + 148, 8, &want))
        return false;
    uint64_t sum = 0;
    for (size_t i = 0; i < BLOCK; i++)
        sum += (i >= 148 && i < 156) ? ' ' : h[i];
    return sum == want;
}

static void
field_str(const unsigned char *f, size_t len, char *out)
{
    size_t n = strnlen((const char *)f, len);
    memcpy(out, f, n);
    out[n] = '\0';
}

/* ---- pax records: "<len> <key>=<value>\n" ---- */

static int
parse_pax(struct sbx_tar_check *c, struct sbx_error **err)
{
    size_t pos = 0;
    while (pos < c->nmeta) {
        size_t len = 0, i = pos;
        while (i < c->nmeta && c->meta[i] >= '0' && c->meta[i] <= '9' && len < SBX_TAR_PAX_MAX)
            len = len * 10 + (size_t)(c->meta[i++] - '0');
        if (i >= c->nmeta || c->meta[i] != ' ' || len <= i - pos || len > c->nmeta - pos ||
            c->meta[pos + len - 1] != '\n')
            return fail(c, err, "malformed pax header");
        const char *kv = c->meta + i + 1, *end = c->meta + pos + len - 1;
        const char *eq = memchr(kv, '=', (size_t)(end - kv));
        if (eq == NULL)
            return fail(c, err, "malformed pax record");
        size_t klen = (size_t)(eq - kv), vlen = (size_t)(end - eq - 1);
        if (c->meta_type == 'x') {
            bool path = klen == 4 && memcmp(kv, "path", 4) == 0;
            bool link = klen == 8 && memcmp(kv, "linkpath", 8) == 0;
            if (path || link) {
                if (vlen > SBX_TAR_NAME_MAX || memchr(eq + 1, '\0', vlen) != NULL)
                    return fail(c, err, "bad pax %s", path ? "path" : "linkpath");
                char **dst = path ? &c->long_name : &c->long_link;
                free(*dst);
                *dst = sbx_memdup_str(eq + 1, vlen); /* the record has no NUL (above) */
            } else if (klen == 4 && memcmp(kv, "size", 4) == 0) {
                uint64_t v = 0;
                for (size_t k = 1; k <= vlen; k++) {
                    char d = eq[k];
                    if (d < '0' || d > '9' || v > UINT64_MAX / 10 - 9)
                        return fail(c, err, "bad pax size");
                    v = v * 10 + (uint64_t)(d - '0');
                }
                c->pax_size = v;
                c->pax_size_set = vlen > 0;
            }
        }
        pos += len;
    }
    return 0;
}

static int
meta_done(struct sbx_tar_check *c, struct sbx_error **err)
{
    int rc = 0;
    if (c->meta_type == 'x' || c->meta_type == 'g') {
        rc = parse_pax(c, err);
    } else {
        /* GNU long name or link: NUL-terminated within the data. */
        size_t n = strnlen(c->meta, c->nmeta);
        if (n > SBX_TAR_NAME_MAX)
            return fail(c, err, "name longer than 4096 bytes");
        char **dst = c->meta_type == 'L' ? &c->long_name : &c->long_link;
        free(*dst);
        *dst = sbx_memdup_str(c->meta, n);
    }
    free(c->meta);
    c->meta = NULL;
    c->nmeta = c->want_meta = 0;
    return rc;
}

/* ---- entries ---- */

static int
entry(struct sbx_tar_check *c, struct sbx_error **err)
{
    const unsigned char *h = c->hdr;
    char type = (char)h[156];
    uint64_t size;
    if (!checksum_ok(h) || !parse_number(h + 124, 12, &size))
        return fail(c, err, "malformed tar header (checksum or size)");
    if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
        if (size > SBX_TAR_PAX_MAX)
            return fail(c, err, "tar metadata header larger than 1 MiB");
        c->meta_type = type;
        c->want_meta = (size_t)size;
        c->nmeta = 0;
        if ((c->meta = malloc(size + 1)) == NULL)
            abort();
        c->skip = (size + BLOCK - 1) / BLOCK * BLOCK;
        if (size == 0)
            return meta_done(c, err);
        return 0;
    }
    if (++c->entries > c->max_entries)
        return fail(c, err, "more entries than the limit");
    if (c->pax_size_set)
        size = c->pax_size;
    char raw[SBX_TAR_NAME_MAX + 260], name[SBX_TAR_NAME_MAX + 1], link[SBX_TAR_NAME_MAX + 1];
    if (c->long_name) {
        snprintf(raw, sizeof(raw), "%s", c->long_name);
    } else {
        char n[101], prefix[156];
        field_str(h, 100, n);
        field_str(h + 345, 155, prefix);
        bool ustar = memcmp(h + 257, "ustar\0", 6) == 0;
        snprintf(raw, sizeof(raw), "%s%s%s", ustar ? prefix : "", ustar && *prefix ? "/" : "", n);
    }
    if (!normalize(raw, name))
        return fail(c, err, "path '%s' escapes the archive (absolute, '..', or too long)", raw);
    if (below_symlink(c, name))
        return fail(c, err, "path '%s' goes through a symlink of the archive", name);
    switch (type) {
    case '0':
    case '\0':
    case '7':
        if (size > c->max_bytes - c->total)
            return fail(c, err, "archive content larger than the limit (at '%s')", name);
        c->total += size;
        c->skip = (size + BLOCK - 1) / BLOCK * BLOCK;
        set_add(&c->files, name);
        break;
    case '5':
        c->skip = (size + BLOCK - 1) / BLOCK * BLOCK; /* no data, in theory */
        break;
    case '2':
    case '1': {
        if (size != 0)
            return fail(c, err, "link with data at '%s'", name);
        if (c->long_link)
            snprintf(raw, sizeof(raw), "%s", c->long_link);
        else
            field_str(h + 157, 100, raw);
        if (type == '1' && (!normalize(raw, link) || !set_has(&c->files, link, strlen(link))))
            return fail(c, err, "hard link '%s' does not name an earlier file of the archive",
                        name);
        if (type == '2') {
            if (strlen(raw) > SBX_TAR_NAME_MAX || raw[0] == '\0')
                return fail(c, err, "bad symlink target at '%s'", name);
            set_add(&c->links, name);
        }
        break;
    }
    default:
        return fail(c, err, "unsupported entry type (devices, FIFOs) at '%s'", name);
    }
    free(c->long_name);
    free(c->long_link);
    c->long_name = c->long_link = NULL;
    c->pax_size_set = false;
    return 0;
}

static bool
all_zero(const unsigned char *b)
{
    for (size_t i = 0; i < BLOCK; i++)
        if (b[i])
            return false;
    return true;
}

/* Feeds tar bytes (decompressed). */
static int
tar_feed(struct sbx_tar_check *c, const unsigned char *p, size_t len, struct sbx_error **err)
{
    while (len > 0) {
        if (c->skip > 0) {
            size_t n = c->skip < len ? (size_t)c->skip : len;
            if (c->meta && c->nmeta < c->want_meta) {
                size_t k = c->want_meta - c->nmeta < n ? c->want_meta - c->nmeta : n;
                memcpy(c->meta + c->nmeta, p, k);
                c->nmeta += k;
            }
            c->skip -= n;
            p += n;
            len -= n;
            if (c->skip == 0 && c->meta && meta_done(c, err) < 0)
                return -1;
            continue;
        }
        size_t n = BLOCK - c->nhdr < len ? BLOCK - c->nhdr : len;
        memcpy(c->hdr + c->nhdr, p, n);
        c->nhdr += n;
        p += n;
        len -= n;
        if (c->nhdr < BLOCK)
            continue;
        c->nhdr = 0;
        if (all_zero(c->hdr)) {
            c->ended = true;
            continue;
        }
        if (c->ended)
            return fail(c, err, "data after the end of the archive");
        c->saw_header = true;
        if (entry(c, err) < 0)
            return -1;
    }
    return 0;
}

static int
inflate_feed(struct sbx_tar_check *c, const unsigned char *p, size_t len, struct sbx_error **err)
{
    unsigned char out[16384];
    c->z.next_in = (unsigned char *)p;
    c->z.avail_in = (uInt)len;
    /* Until the input is used up and inflate had room to spare: after a full output buffer,
     * zlib may still hold output, which must not wait for a next feed that may never come
     * (the verdict would then depend on how the upload was split). */
    do {
        c->z.next_out = out;
        c->z.avail_out = sizeof(out);
        int rc = inflate(&c->z, Z_NO_FLUSH);
        size_t got = sizeof(out) - c->z.avail_out;
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
            return fail(c, err, "the gzip data does not decompress");
        if (tar_feed(c, out, got, err) < 0)
            return -1;
        if (rc == Z_STREAM_END) {
            if (c->z.avail_in == 0)
                break;
            if (inflateReset(&c->z) != Z_OK) /* another gzip member follows */
                return fail(c, err, "the gzip data does not decompress");
        } else if (rc == Z_BUF_ERROR && got == 0) {
            if (c->z.avail_in > 0) /* no progress with input left: cannot happen */
                return fail(c, err, "the gzip data does not decompress");
            break; /* everything out: it needs more input */
        }
    } while (c->z.avail_in > 0 || c->z.avail_out == 0);
    return 0;
}

struct sbx_tar_check *
sbx_tar_check_new(uint64_t max_bytes, uint32_t max_entries)
{
    struct sbx_tar_check *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->max_bytes = max_bytes;
    c->max_entries = max_entries;
    c->mode = SNIFF;
    return c;
}

static int
start(struct sbx_tar_check *c, struct sbx_error **err)
{
    c->mode = c->nsniff == 2 && c->sniff[0] == 0x1f && c->sniff[1] == 0x8b ? GZIP : PLAIN;
    if (c->mode == GZIP) {
        if (inflateInit2(&c->z, 16 + MAX_WBITS) != Z_OK)
            return fail(c, err, "cannot start gzip");
        c->z_live = true;
        return inflate_feed(c, c->sniff, c->nsniff, err);
    }
    return tar_feed(c, c->sniff, c->nsniff, err);
}

int
sbx_tar_check_feed(struct sbx_tar_check *c, const void *data, size_t len, struct sbx_error **err)
{
    const unsigned char *p = data;
    if (c->failed)
        return fail(c, err, "archive already refused");
    while (c->mode == SNIFF && len > 0) {
        c->sniff[c->nsniff++] = *p++;
        len--;
        if (c->nsniff == 2 && start(c, err) < 0)
            return -1;
    }
    if (len == 0)
        return 0;
    return c->mode == GZIP ? inflate_feed(c, p, len, err) : tar_feed(c, p, len, err);
}

int
sbx_tar_check_finish(struct sbx_tar_check *c, struct sbx_error **err)
{
    if (c->failed)
        return fail(c, err, "archive already refused");
    if (c->mode == SNIFF && start(c, err) < 0)
        return -1;
    if (!c->saw_header)
        return fail(c, err, "not a tar archive (no entry)");
    if (c->nhdr != 0 || c->skip != 0 || c->meta != NULL)
        return fail(c, err, "the archive is truncated");
    return 0;
}

void
sbx_tar_check_free(struct sbx_tar_check *c)
{
    if (c == NULL)
        return;
    if (c->z_live)
        inflateEnd(&c->z);
    free(c->meta);
    free(c->long_name);
    free(c->long_link);
    set_free(&c->links);
    set_free(&c->files);
    free(c);
}
