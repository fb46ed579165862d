/* Fuzz target: the input is everything an upstream (a sandbox's agent, which the code in the
 * sandbox controls) answers the reverse proxy, fed to sbx_http_upstream_feed
 * (src/http/upstream.c) as the proxy does.
 *
 * Byte 0 sets how the rest is split (1 + its low six bits bytes per piece, so framing is
 * tested at every boundary), in its top bit whether the request was a HEAD, and in the next
 * whether it asked to upgrade. Then come the response bytes, and EOF. The callbacks check the
 * contract the proxy relies on: headers, then one head with a final status (or 101 to an
 * upgrade), then body (none after HEAD), then at most one end or switch, nothing after it or
 * an error; no hop-by-hop header (but Upgrade in a switch) and nothing that could split a
 * header line reaches the client; the head stays within the server's own limits. */
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "base/limits.h"
#include "fuzz_common.h"
#include "http/upstream.h"

struct seen {
    bool head_request, upgrade;
    bool head, ended, failed;
    size_t headers, header_bytes, body_bytes;
};

static void
on_header(void *ud, const char *name, const char *value)
{
    struct seen *s = ud;
    CHECK(!s->head && !s->ended && !s->failed);
    CHECK(name[0] != '\0');
    CHECK(strpbrk(name, "\r\n: \t") == NULL);
    CHECK(strpbrk(value, "\r\n") == NULL);
    CHECK(!sbx_http_is_hop_by_hop(name) || (s->upgrade && strcasecmp(name, "upgrade") == 0));
    s->headers++;
    s->header_bytes += strlen(name) + strlen(value);
    CHECK(s->headers <= SBX_HTTP_MAX_HEADERS);
    CHECK(s->header_bytes <= SBX_HTTP_MAX_HEADER_BYTES);
}

static void
on_head(void *ud, int status)
{
    struct seen *s = ud;
    CHECK(!s->head && !s->ended && !s->failed);
    CHECK((status >= 200 && status <= 599) || (status == 101 && s->upgrade));
    s->head = true;
}

static void
on_body(void *ud, const char *data, size_t len)
{
    struct seen *s = ud;
    CHECK(s->head && !s->ended && !s->failed && !s->head_request);
    CHECK(data != NULL || len == 0);
    s->body_bytes += len;
}

static void
on_end(void *ud)
{
    struct seen *s = ud;
    CHECK(s->head && !s->ended && !s->failed);
    s->ended = true;
}

static void
on_switch(void *ud, const char *rest, size_t len)
{
    struct seen *s = ud;
    CHECK(s->head && !s->ended && !s->failed && s->upgrade && s->body_bytes == 0);
    CHECK(rest != NULL || len == 0);
    s->ended = true;
}

static const struct sbx_http_upstream_cbs cbs = {
    .on_header = on_header,
    .on_head = on_head,
    .on_body = on_body,
    .on_end = on_end,
    .on_switch = on_switch,
};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    struct seen s = {.head_request = (data[0] & 0x80) != 0, .upgrade = (data[0] & 0x40) != 0};
    size_t piece = 1 + (data[0] & 0x3f);
    const char *p = (const char *)data + 1;
    size_t left = size - 1;
    struct sbx_http_upstream u;
    sbx_http_upstream_init(&u, s.head_request, &cbs, &s);
    u.upgrade = s.upgrade;
    int rc = 0;
    while (rc == 0) {
        size_t n = left < piece ? left : piece; /* 0 at the end: EOF */
        rc = sbx_http_upstream_feed(&u, p, n);
        p += n;
        left -= n;
        CHECK(rc == 0 ? !s.ended : rc > 0 ? s.ended : !s.ended);
        if (rc < 0)
            s.failed = true; /* the proxy stops feeding; a later callback would be a bug */
    }
    /* After the end, more bytes and EOF change nothing. */
    if (rc > 0) {
        CHECK(sbx_http_upstream_feed(&u, "HTTP/1.1 200 OK\r\n\r\n", 19) == 1);
        CHECK(sbx_http_upstream_feed(&u, NULL, 0) == 1);
    }
    sbx_http_upstream_fini(&u);
    return 0;
}
