/* Connect protocol, JSON codec: envelopes, request decoding, unary and stream responses. */
#include "connect/connect.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/limits.h"

int
sbx_connect_reader_feed(struct sbx_connect_reader *r, const char *data, size_t len,
                        struct sbx_error **err)
{
    /* One envelope plus its prefix is the most we ever need to hold. */
    if (sbx_buf_append(&r->buf, data, len, SBX_CONNECT_MAX_MESSAGE + 5) < 0)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "message larger than %d bytes",
                             SBX_CONNECT_MAX_MESSAGE);
    return 0;
}

int
sbx_connect_reader_next(struct sbx_connect_reader *r, uint8_t *flags, char **msg, size_t *len,
                        struct sbx_error **err)
{
    if (r->buf.len < 5)
        return 0;
    const unsigned char *p = (const unsigned char *)r->buf.data;
    uint32_t n = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
    if (p[0] & SBX_CONNECT_FLAG_COMPRESSED)
        return sbx_error_set(err, SBX_INTERNAL, 0, "compressed messages are not supported");
    if (p[0] & ~(SBX_CONNECT_FLAG_COMPRESSED | SBX_CONNECT_FLAG_END_STREAM))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid envelope flags 0x%02x", p[0]);
    if (n > SBX_CONNECT_MAX_MESSAGE)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "message of %u bytes is too large", n);
    if (r->buf.len < 5 + (size_t)n)
        return 0;
    char *m = malloc((size_t)n + 1);
    if (m == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    memcpy(m, r->buf.data + 5, n);
    m[n] = '\0';
    *flags = p[0];
    *msg = m;
    *len = n;
    sbx_buf_consume(&r->buf, 5 + (size_t)n);
    return 1;
}

void
sbx_connect_reader_fini(struct sbx_connect_reader *r)
{
    sbx_buf_fini(&r->buf);
}

int
sbx_connect_envelope_format(struct sbx_buf *out, uint8_t flags, const char *msg, size_t len)
{
    unsigned char pre[5] = {flags, (unsigned char)(len >> 24), (unsigned char)(len >> 16),
                            (unsigned char)(len >> 8), (unsigned char)len};
    if (sbx_buf_append(out, pre, 5, SIZE_MAX / 2) < 0 ||
        sbx_buf_append(out, msg, len, SIZE_MAX / 2) < 0)
        return -1;
    return 0;
}

int
sbx_connect_http_status(enum sbx_code code)
{
    /* The Connect protocol's code → HTTP status table. */
    switch (code) {
    case SBX_OK:
        return 200;
    case SBX_CANCELED:
        return 499;
    case SBX_INVALID_ARGUMENT:
    case SBX_FAILED_PRECONDITION:
    case SBX_OUT_OF_RANGE:
        return 400;
    case SBX_DEADLINE_EXCEEDED:
        return 504;
    case SBX_NOT_FOUND:
        return 404;
    case SBX_ALREADY_EXISTS:
    case SBX_ABORTED:
        return 409;
    case SBX_PERMISSION_DENIED:
        return 403;
    case SBX_RESOURCE_EXHAUSTED:
        return 429;
    case SBX_UNIMPLEMENTED:
        return 501;
    case SBX_UNAVAILABLE:
        return 503;
    case SBX_UNAUTHENTICATED:
        return 401;
    case SBX_UNKNOWN:
    case SBX_INTERNAL:
    case SBX_DATA_LOSS:
    default:
        return 500;
    }
}

json_t *
sbx_connect_error_json(const struct sbx_error *e)
{
    return json_pack("{s:s,s:s}", "code", sbx_code_name(e ? e->code : SBX_UNKNOWN), "message",
                     e && e->msg ? e->msg : "unknown error");
}

bool
sbx_connect_is_stream(const struct sbx_http_req *req)
{
    const char *ct = sbx_http_req_header(req, "content-type");
    return ct && strncasecmp(ct, "application/connect+json", 24) == 0;
}

uint64_t
sbx_connect_timeout_ms(const struct sbx_http_req *req)
{
    const char *v = sbx_http_req_header(req, "connect-timeout-ms");
    if (v == NULL || *v == '\0' || strlen(v) > 10)
        return 0;
    char *end = NULL;
    unsigned long long ms = strtoull(v, &end, 10);
    if (*end != '\0')
        return 0;
    return ms;
}

uint64_t
sbx_connect_keepalive_ms(const struct sbx_http_req *req)
{
    const char *h = sbx_http_req_header(req, "keepalive-ping-interval");
    long s = h ? strtol(h, NULL, 10) : 0;
    if (s <= 0)
        s = SBX_CONNECT_KEEPALIVE_DEFAULT_S;
    if (s > SBX_CONNECT_KEEPALIVE_MAX_S)
        s = SBX_CONNECT_KEEPALIVE_MAX_S;
    return (uint64_t)s * 1000;
}

/* ---- request decoding ---- */

struct read_ctx {
    sbx_connect_msg_cb done;
};

static json_t *
decode_object(const char *data, size_t len, struct sbx_error **err)
{
    json_error_t jerr;
    json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (v == NULL) {
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid JSON: %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "request message must be a JSON object");
        return NULL;
    }
    return v;
}

static void
on_request_body(struct sbx_http_req *req, struct sbx_buf *body)
{
    sbx_connect_msg_cb done = (sbx_connect_msg_cb)req->data;
    req->data = NULL;
    _cleanup_error_ struct sbx_error *err = NULL;
    json_t *msg = NULL;
    if (!sbx_connect_is_stream(req)) {
        msg = body->len ? decode_object(body->data, body->len, &err)
                        : json_object(); /* an empty unary body is the empty message */
    } else {
        struct sbx_connect_reader rd = {0};
        uint8_t flags = 0;
        char *m = NULL;
        size_t n = 0;
        int rc = sbx_connect_reader_feed(&rd, body->data, body->len, &err);
        if (rc == 0)
            rc = sbx_connect_reader_next(&rd, &flags, &m, &n, &err);
        if (rc == 0)
            sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "truncated envelope");
        else if (rc == 1 && rd.buf.len != 0)
            sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0,
                          "server-streaming request must carry exactly one message");
        else if (rc == 1)
            msg = decode_object(m, n, &err);
        free(m);
        sbx_connect_reader_fini(&rd);
    }
    done(req, msg, msg ? NULL : err);
    json_decref(msg);
}

void
sbx_connect_read_request(struct sbx_http_req *req, sbx_connect_msg_cb done)
{
    req->data = (void *)done;
    sbx_http_req_read_body(req, SBX_CONNECT_MAX_MESSAGE + 5, on_request_body);
}

/* ---- responses ---- */

static void
respond_json(struct sbx_http_req *req, int status, json_t *msg)
{
    char *body = json_dumps(msg, JSON_COMPACT);
    sbx_http_respond(req, status, "application/json", body ? body : "{}", body ? strlen(body) : 2);
    free(body);
}

void
sbx_connect_unary_ok(struct sbx_http_req *req, json_t *msg)
{
    respond_json(req, 200, msg);
    json_decref(msg);
}

void
sbx_connect_unary_error(struct sbx_http_req *req, const struct sbx_error *e)
{
    json_t *j = sbx_connect_error_json(e);
    respond_json(req, sbx_connect_http_status(e ? e->code : SBX_UNKNOWN), j);
    json_decref(j);
}

void
sbx_connect_stream_start(struct sbx_http_req *req)
{
    sbx_http_start(req, 200, "application/connect+json");
}

static bool
send_envelope(struct sbx_http_req *req, uint8_t flags, json_t *msg)
{
    char *s = json_dumps(msg, JSON_COMPACT);
    struct sbx_buf b = {0};
    sbx_connect_envelope_format(&b, flags, s ? s : "{}", s ? strlen(s) : 2);
    bool ok = sbx_http_write(req, b.data, b.len);
    sbx_buf_fini(&b);
    free(s);
    return ok;
}

bool
sbx_connect_stream_send(struct sbx_http_req *req, json_t *msg)
{
    bool ok = send_envelope(req, 0, msg);
    json_decref(msg);
    return ok;
}

void
sbx_connect_stream_end(struct sbx_http_req *req, const struct sbx_error *e)
{
    json_t *end = e ? json_pack("{s:o}", "error", sbx_connect_error_json(e)) : json_object();
    send_envelope(req, SBX_CONNECT_FLAG_END_STREAM, end);
    json_decref(end);
    sbx_http_end(req);
}

void
sbx_connect_error(struct sbx_http_req *req, const struct sbx_error *e)
{
    if (sbx_connect_is_stream(req)) {
        sbx_connect_stream_start(req);
        sbx_connect_stream_end(req, e);
    } else {
        sbx_connect_unary_error(req, e);
    }
}
