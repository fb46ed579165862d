/* Connect protocol over HTTP/1.1 with the JSON codec (the only codec the E2B SDKs use):
 * envelope framing, unary and server-streaming requests and responses, and the one table
 * that maps sbx error codes to HTTP statuses. Never compresses. */
#ifndef SBX_CONNECT_H
#define SBX_CONNECT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/error.h"
#include "http/http.h"

#define SBX_CONNECT_FLAG_COMPRESSED 0x01
#define SBX_CONNECT_FLAG_END_STREAM 0x02

/* Incremental envelope reader: feed bytes, take whole messages out. */
struct sbx_connect_reader {
    struct sbx_buf buf;
};

/* Appends bytes; -1 with *err if the buffered data cannot be a valid stream (too large). */
int sbx_connect_reader_feed(struct sbx_connect_reader *r, const char *data, size_t len,
                            struct sbx_error **err);
/* Returns 1 and the next message (flags, malloc'd payload) if one is complete, 0 if more
 * bytes are needed, -1 with *err on a malformed envelope (compressed, oversize). */
int sbx_connect_reader_next(struct sbx_connect_reader *r, uint8_t *flags, char **msg, size_t *len,
                            struct sbx_error **err);
void sbx_connect_reader_fini(struct sbx_connect_reader *r);
/* Writes the 5-byte prefix and payload into out. */
int sbx_connect_envelope_format(struct sbx_buf *out, uint8_t flags, const char *msg, size_t len);

int sbx_connect_http_status(enum sbx_code code);
/* {"code":"not_found","message":"..."} */
json_t *sbx_connect_error_json(const struct sbx_error *e);

/* Whether the request is a streaming Connect call (Content-Type application/connect+json). */
bool sbx_connect_is_stream(const struct sbx_http_req *req);
/* Keepalive-Ping-Interval (seconds, sent by the SDKs on streams) as milliseconds, clamped to
 * SBX_CONNECT_KEEPALIVE_MAX_S, SBX_CONNECT_KEEPALIVE_DEFAULT_S if absent or invalid. */
uint64_t sbx_connect_keepalive_ms(const struct sbx_http_req *req);
/* Connect-Timeout-Ms in milliseconds, or 0 if absent/invalid. */
uint64_t sbx_connect_timeout_ms(const struct sbx_http_req *req);

/* Reads the request message, unary (plain JSON body) or streaming (one enveloped message),
 * and calls done with the decoded JSON object, or with NULL and an error to report. The
 * callback owns neither: both are freed after it returns. */
typedef void (*sbx_connect_msg_cb)(struct sbx_http_req *req, json_t *msg, struct sbx_error *err);
void sbx_connect_read_request(struct sbx_http_req *req, sbx_connect_msg_cb done);

/* Unary responses. */
void sbx_connect_unary_ok(struct sbx_http_req *req, json_t *msg); /* steals msg */
void sbx_connect_unary_error(struct sbx_http_req *req, const struct sbx_error *e);

/* Server-stream responses: start, send messages, end with or without an error. */
void sbx_connect_stream_start(struct sbx_http_req *req);
bool sbx_connect_stream_send(struct sbx_http_req *req, json_t *msg); /* steals msg */
void sbx_connect_stream_end(struct sbx_http_req *req, const struct sbx_error *e);

/* Answers an error in the format of the call: an end-stream envelope for a streaming call
 * (200), a JSON error with the mapped status for a unary one. */
void sbx_connect_error(struct sbx_http_req *req, const struct sbx_error *e);

#endif
