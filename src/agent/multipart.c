#include "agent/multipart.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/cleanup.h"

enum state { ST_PREAMBLE, ST_AFTER_DELIM, ST_HEAD, ST_BODY, ST_DONE, ST_FAILED };

struct sbx_multipart {
    enum state state;
    struct sbx_multipart_callbacks cb;
    void *ud;
    char *delim; /* "\r\n--" + boundary */
    size_t dlen;
    char *work; /* held bytes (< dlen) + one slice */
    size_t hold;
    int after; /* ST_AFTER_DELIM progress: 0 start, 1 saw '-', 2 padding, 3 saw CR */
    char head[SBX_MULTIPART_MAX_HEAD];
    size_t head_len;
    char *name, *filename, *content_type;
    size_t filename_len;
    char *error; /* sticky message once failed */
};

static int
fail(struct sbx_multipart *m, struct sbx_error **err, const char *msg)
{
    m->state = ST_FAILED;
    if (m->error == NULL)
        m->error = strdup(msg);
    return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s", msg);
}

/* A callback failed: remember its message for later calls and pass its error up. */
static int
fail_cb(struct sbx_multipart *m, struct sbx_error **err)
{
    m->state = ST_FAILED;
    if (m->error == NULL)
        m->error = strdup(err && *err ? (*err)->msg : "multipart callback failed");
    if (err && *err == NULL)
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s", m->error);
    return -1;
}

/* ---- header values: token / quoted-string parameters (RFC 2045, RFC 6266) ---- */

static const char *
skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* Reads one parameter value at p into a malloc'd string; *next gets the position after it. */
static char *
read_param_value(const char *p, const char **next, size_t *outlen)
{
    char *out = malloc(strlen(p) + 1);
    if (out == NULL)
        abort();
    size_t n = 0;
    if (*p == '"') {
        p++;
        while (*p && *p != '"') {
            if (*p == '\\' && p[1] != '\0')
                p++;
            out[n++] = *p++;
        }
        if (*p != '"') {
            free(out);
            return NULL;
        }
        p++;
    } else {
        while (*p && *p != ';' && *p != ' ' && *p != '\t')
            out[n++] = *p++;
    }
    out[n] = '\0';
    *next = p;
    if (outlen)
        *outlen = n;
    return out;
}

static int
hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* RFC 5987 ext-value "charset'lang'pct-encoded"; decoded in place. */
static bool
decode_ext_value(char *v, size_t *len)
{
    char *q1 = strchr(v, '\'');
    char *q2 = q1 ? strchr(q1 + 1, '\'') : NULL;
    if (q2 == NULL)
        return false;
    const char *in = q2 + 1;
    size_t n = 0;
    while (*in) {
        if (*in == '%') {
            int h = hexval((unsigned char)in[1]), l = h >= 0 ? hexval((unsigned char)in[2]) : -1;
            if (l < 0)
                return false;
            v[n++] = (char)(h * 16 + l);
            in += 3;
        } else {
            v[n++] = *in++;
        }
    }
    v[n] = '\0';
    *len = n;
    return true;
}

/* Iterates "; key=value" parameters after the media type or disposition type. Calls fn for
 * each; returns -1 on a syntax error. */
typedef void (*param_fn)(void *ctx, const char *key, size_t klen, char *value, size_t vlen);

static int
parse_params(const char *p, param_fn fn, void *ctx)
{
    for (;;) {
        p = skip_ws(p);
        if (*p == '\0')
            return 0;
        if (*p != ';')
            return -1;
        p = skip_ws(p + 1);
        if (*p == '\0')
            return 0; /* trailing ';' */
        const char *k = p;
        while (*p && *p != '=' && *p != ';' && *p != ' ' && *p != '\t')
            p++;
        size_t klen = (size_t)(p - k);
        p = skip_ws(p);
        if (*p != '=' || klen == 0)
            return -1;
        p = skip_ws(p + 1);
        size_t vlen = 0;
        char *v = read_param_value(p, &p, &vlen);
        if (v == NULL)
            return -1;
        fn(ctx, k, klen, v, vlen); /* fn owns v */
    }
}

struct boundary_ctx {
    char *boundary;
};

static void
on_ct_param(void *ctx, const char *key, size_t klen, char *value, size_t vlen)
{
    struct boundary_ctx *b = ctx;
    (void)vlen;
    if (klen == 8 && strncasecmp(key, "boundary", 8) == 0 && b->boundary == NULL)
        b->boundary = value;
    else
        free(value);
}

char *
sbx_multipart_boundary(const char *content_type, struct sbx_error **err)
{
    static const char mt[] = "multipart/form-data";
    const char *p = skip_ws(content_type ? content_type : "");
    if (strncasecmp(p, mt, sizeof(mt) - 1) != 0) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "not a multipart/form-data body");
        return NULL;
    }
    struct boundary_ctx b = {0};
    if (parse_params(p + sizeof(mt) - 1, on_ct_param, &b) < 0) {
        free(b.boundary);
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "malformed multipart Content-Type");
        return NULL;
    }
    size_t n = b.boundary ? strlen(b.boundary) : 0;
    if (n == 0 || n > SBX_MULTIPART_MAX_BOUNDARY || strpbrk(b.boundary, "\r\n")) {
        free(b.boundary);
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                      "multipart Content-Type without a valid boundary");
        return NULL;
    }
    return b.boundary;
}

/* ---- part heads ---- */

static void
on_disp_param(void *ctx, const char *key, size_t klen, char *value, size_t vlen)
{
    struct sbx_multipart *m = ctx;
    if (klen == 4 && strncasecmp(key, "name", 4) == 0 && m->name == NULL) {
        m->name = value;
    } else if (klen == 9 && strncasecmp(key, "filename*", 9) == 0) {
        /* The extended form wins over the plain one (RFC 6266 §4.3). */
        size_t n;
        if (decode_ext_value(value, &n)) {
            free(m->filename);
            m->filename = value;
            m->filename_len = n;
        } else {
            free(value);
        }
    } else if (klen == 8 && strncasecmp(key, "filename", 8) == 0 && m->filename == NULL) {
        m->filename = value;
        m->filename_len = vlen;
    } else {
        free(value);
    }
}

static void
part_reset(struct sbx_multipart *m)
{
    free(m->name);
    free(m->filename);
    free(m->content_type);
    m->name = m->filename = m->content_type = NULL;
    m->filename_len = 0;
    m->head_len = 0;
}

static int
parse_head(struct sbx_multipart *m, struct sbx_error **err)
{
    /* head holds the header lines, each ending in CRLF, the blank line excluded; NUL
     * terminated by the caller. */
    if (memchr(m->head, '\0', m->head_len) != NULL)
        return fail(m, err, "NUL byte in multipart part header");
    char *line = m->head;
    while (*line) {
        char *eol = strstr(line, "\r\n");
        if (eol == NULL)
            return fail(m, err, "malformed multipart part header");
        *eol = '\0';
        char *colon = strchr(line, ':');
        if (colon == NULL || colon == line)
            return fail(m, err, "malformed multipart part header line");
        *colon = '\0';
        const char *val = skip_ws(colon + 1);
        if (strcasecmp(line, "content-disposition") == 0) {
            const char *p = val;
            while (*p && *p != ';' && *p != ' ' && *p != '\t')
                p++;
            if (parse_params(p, on_disp_param, m) < 0)
                return fail(m, err, "malformed multipart Content-Disposition");
        } else if (strcasecmp(line, "content-type") == 0 && m->content_type == NULL) {
            m->content_type = strdup(val);
        }
        line = eol + 2;
    }
    struct sbx_multipart_part part = {
        .name = m->name ? m->name : "",
        .filename = m->filename,
        .filename_len = m->filename_len,
        .content_type = m->content_type,
    };
    if (m->cb.on_part_begin && m->cb.on_part_begin(m->ud, &part, err) < 0)
        return fail_cb(m, err);
    return 0;
}

/* ---- the state machine ---- */

struct sbx_multipart *
sbx_multipart_new(const char *boundary, const struct sbx_multipart_callbacks *cb, void *ud)
{
    struct sbx_multipart *m = calloc(1, sizeof(*m));
    if (m == NULL)
        abort();
    if (cb)
        m->cb = *cb;
    m->ud = ud;
    if (asprintf(&m->delim, "\r\n--%s", boundary) < 0)
        abort();
    m->dlen = strlen(m->delim);
    m->work = malloc(m->dlen + SBX_MULTIPART_SLICE);
    if (m->work == NULL)
        abort();
    /* The first boundary may open the body without a CRLF before it: pretend one came. */
    memcpy(m->work, "\r\n", 2);
    m->hold = 2;
    m->state = ST_PREAMBLE;
    return m;
}

void
sbx_multipart_free(struct sbx_multipart *m)
{
    if (m == NULL)
        return;
    part_reset(m);
    free(m->delim);
    free(m->work);
    free(m->error);
    free(m);
}

bool
sbx_multipart_is_done(const struct sbx_multipart *m)
{
    return m->state == ST_DONE;
}

/* Scans one slice of body or preamble for the delimiter. Returns the number of bytes of
 * data consumed. */
static long
scan_slice(struct sbx_multipart *m, const char *data, size_t len, struct sbx_error **err)
{
    size_t n = len < SBX_MULTIPART_SLICE ? len : SBX_MULTIPART_SLICE;
    memcpy(m->work + m->hold, data, n);
    size_t wl = m->hold + n;
    size_t old_hold = m->hold;
    char *p = memmem(m->work, wl, m->delim, m->dlen);
    if (p != NULL) {
        size_t before = (size_t)(p - m->work);
        if (m->state == ST_BODY) {
            if (before > 0 && m->cb.on_part_data &&
                m->cb.on_part_data(m->ud, m->work, before, err) < 0)
                return fail_cb(m, err);
            if (m->cb.on_part_end && m->cb.on_part_end(m->ud, err) < 0)
                return fail_cb(m, err);
            part_reset(m);
        }
        m->state = ST_AFTER_DELIM;
        m->after = 0;
        m->hold = 0;
        /* The delimiter ends inside the new bytes (held bytes are shorter than it). */
        size_t used = before + m->dlen - old_hold;
        return (long)used;
    }
    size_t keep = wl < m->dlen - 1 ? wl : m->dlen - 1;
    if (m->state == ST_BODY && wl - keep > 0 && m->cb.on_part_data &&
        m->cb.on_part_data(m->ud, m->work, wl - keep, err) < 0)
        return fail_cb(m, err);
    memmove(m->work, m->work + wl - keep, keep);
    m->hold = keep;
    return (long)n;
}

int
sbx_multipart_feed(struct sbx_multipart *m, const char *data, size_t len, struct sbx_error **err)
{
    size_t off = 0;
    while (off < len) {
        switch (m->state) {
        case ST_FAILED:
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s",
                                 m->error ? m->error : "malformed multipart body");
        case ST_DONE:
            return 0; /* the epilogue is ignored */
        case ST_PREAMBLE:
        case ST_BODY: {
            long used = scan_slice(m, data + off, len - off, err);
            if (used < 0)
                return -1;
            off += (size_t)used;
            break;
        }
        case ST_AFTER_DELIM: {
            char c = data[off++];
            if (m->after == 0 && c == '-') {
                m->after = 1;
            } else if (m->after == 1) {
                if (c != '-')
                    return fail(m, err, "malformed multipart boundary line");
                m->state = ST_DONE;
            } else if ((m->after == 0 || m->after == 2) && (c == ' ' || c == '\t')) {
                m->after = 2; /* transport padding (RFC 2046) */
            } else if ((m->after == 0 || m->after == 2) && c == '\r') {
                m->after = 3;
            } else if (m->after == 3 && c == '\n') {
                m->state = ST_HEAD;
                m->head_len = 0;
            } else {
                return fail(m, err, "malformed multipart boundary line");
            }
            break;
        }
        case ST_HEAD: {
            char c = data[off++];
            if (m->head_len + 1 >= sizeof(m->head))
                return fail(m, err, "multipart part headers are too large");
            m->head[m->head_len++] = c;
            size_t h = m->head_len;
            bool end = (h == 2 && memcmp(m->head, "\r\n", 2) == 0) ||
                       (h >= 4 && memcmp(m->head + h - 4, "\r\n\r\n", 4) == 0);
            if (!end)
                break;
            /* Keep one CRLF per line, drop the blank line. */
            m->head_len = h == 2 ? 0 : h - 2;
            m->head[m->head_len] = '\0';
            if (parse_head(m, err) < 0)
                return -1;
            m->state = ST_BODY;
            m->hold = 0;
            break;
        }
        }
    }
    if (m->state == ST_FAILED)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s",
                             m->error ? m->error : "malformed multipart body");
    return 0;
}

int
sbx_multipart_finish(struct sbx_multipart *m, struct sbx_error **err)
{
    if (m->state == ST_DONE)
        return 0;
    if (m->state == ST_FAILED)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s",
                             m->error ? m->error : "malformed multipart body");
    m->state = ST_FAILED;
    if (m->error == NULL)
        m->error = strdup("multipart body ended before its closing boundary");
    return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s", m->error);
}
