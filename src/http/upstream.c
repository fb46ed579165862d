/* Parser of an upstream's response for the reverse proxy: see upstream.h. */
#include "http/upstream.h"

#include <string.h>
#include <strings.h>

#include "base/limits.h"

bool
sbx_http_is_hop_by_hop(const char *name)
{
    static const char *const hop[] = {
        "connection", "keep-alive", "proxy-connection",   "transfer-encoding",  "te",
        "trailer",    "upgrade",    "proxy-authenticate", "proxy-authorization"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (strcasecmp(name, hop[i]) == 0)
            return true;
    return false;
}

static bool
is_switch(const struct sbx_http_upstream *u)
{
    return u->upgrade && u->parser.status_code == 101;
}

static bool
is_interim(const struct sbx_http_upstream *u)
{
    return u->parser.status_code / 100 == 1 && !is_switch(u);
}

/* The head's bytes are bounded as a client's are: an upstream must not make the daemon
 * buffer without limit either. */
static int
head_account(struct sbx_http_upstream *u, size_t n)
{
    u->head_bytes += n;
    return u->head_bytes > SBX_HTTP_MAX_HEADER_BYTES ? -1 : 0;
}

static int
flush_header(struct sbx_http_upstream *u)
{
    u->in_value = false;
    if (++u->n_headers > SBX_HTTP_MAX_HEADERS)
        return -1;
    /* An interim response's headers describe it alone (RFC 9110 §15.2); trailers, after a
     * chunked body, come when the head has gone out, and are dropped. */
    bool relayed = !sbx_http_is_hop_by_hop(u->field.data) ||
                   (is_switch(u) && strcasecmp(u->field.data, "upgrade") == 0);
    if (!is_interim(u) && !u->head_done && relayed)
        u->cbs->on_header(u->ud, u->field.data, u->value.len ? u->value.data : "");
    u->field.len = u->value.len = 0;
    return 0;
}

static int
on_message_begin(http_parser *hp)
{
    struct sbx_http_upstream *u = hp->data;
    u->head_bytes = u->n_headers = 0;
    u->field.len = u->value.len = 0;
    u->in_value = false;
    return 0;
}

static int
on_field(http_parser *hp, const char *at, size_t len)
{
    struct sbx_http_upstream *u = hp->data;
    if (head_account(u, len) < 0)
        return -1;
    /* As for requests (server.c): http_parser frames "Transfer-Encoding : chunked" as chunked
     * while the name no longer matches, and the client would get it besides our framing. */
    if (memchr(at, ' ', len))
        return -1;
    if (u->in_value && flush_header(u) < 0)
        return -1;
    return sbx_buf_append(&u->field, at, len, SBX_HTTP_MAX_HEADER_BYTES);
}

static int
on_value(http_parser *hp, const char *at, size_t len)
{
    struct sbx_http_upstream *u = hp->data;
    if (head_account(u, len) < 0)
        return -1;
    u->in_value = true;
    return sbx_buf_append(&u->value, at, len, SBX_HTTP_MAX_HEADER_BYTES);
}

static int
on_headers_complete(http_parser *hp)
{
    struct sbx_http_upstream *u = hp->data;
    if (u->in_value && flush_header(u) < 0)
        return -1;
    int status = (int)hp->status_code;
    /* 101 switches protocols: only if asked for, and saying to what (http_parser then stops
     * at the end of the head). A status outside 1xx-5xx has no meaning to relay. */
    if (status < 100 || status > 599 || (status == 101 && (!is_switch(u) || !hp->upgrade)))
        return -1;
    if (is_interim(u))
        return 1; /* bodiless whatever its head says (RFC 9112 §6.3); the final one follows */
    u->head_done = true;
    u->cbs->on_head(u->ud, status);
    /* 1 tells http_parser to expect no body (RFC 9112 §6.3): a HEAD answer's Content-Length
     * describes the GET body, and waiting for it would stall, then cut, the client
     * connection; 101, 204 and 304 have none either. A 101 with a Content-Length or chunked
     * coding would otherwise have its first bytes of the new protocol parsed as a body. */
    return u->head_request || status == 101 || status == 204 || status == 304 ? 1 : 0;
}

static int
on_body(http_parser *hp, const char *at, size_t len)
{
    struct sbx_http_upstream *u = hp->data;
    u->cbs->on_body(u->ud, at, len);
    return 0;
}

static int
on_message_complete(http_parser *hp)
{
    struct sbx_http_upstream *u = hp->data;
    if (is_interim(u))
        return 0;
    u->ended = true;
    http_parser_pause(hp, 1); /* one response per upstream connection: ignore what follows */
    if (is_switch(u))
        u->switched = true; /* on_switch, once the feed knows where the head ended */
    else
        u->cbs->on_end(u->ud);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void
sbx_http_upstream_init(struct sbx_http_upstream *u, bool head_request,
                       const struct sbx_http_upstream_cbs *cbs, void *ud)
{
    memset(u, 0, sizeof(*u));
    http_parser_init(&u->parser, HTTP_RESPONSE);
    u->parser.data = u;
    u->head_request = head_request;
    u->cbs = cbs;
    u->ud = ud;
}

void
sbx_http_upstream_fini(struct sbx_http_upstream *u)
{
    sbx_buf_fini(&u->field);
    sbx_buf_fini(&u->value);
}

int
sbx_http_upstream_feed(struct sbx_http_upstream *u, const char *data, size_t len)
{
    size_t n = u->ended ? 0 : http_parser_execute(&u->parser, &settings, data, len);
    if (u->switched) {
        u->switched = false; /* once */
        u->cbs->on_switch(u->ud, data + n, len - n);
    }
    if (u->ended)
        return 1;
    /* An error, or the upstream closed before the response ended. */
    return HTTP_PARSER_ERRNO(&u->parser) != HPE_OK || len == 0 ? -1 : 0;
}
