/* HTTP/1.1 server on libuv (parsing by http_parser), used by the daemon and by the agent.
 *
 * Owns: connections, keep-alive, client deadlines, request parsing (bounded head, chunked and
 * fixed bodies), buffered or streamed request bodies with back-pressure, full or streamed
 * (chunked) responses with back-pressure, and abrupt aborts. One request per connection is in
 * flight at a time; the next one is parsed when the response has ended.
 *
 * Lifetime: a struct sbx_http_req lives until its response has ended and its body has been
 * consumed, or until its connection closes. A handler that keeps the pointer across event
 * loop turns must register a close callback and drop the pointer there. */
#ifndef SBX_HTTP_H
#define SBX_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/error.h"
#include "http/tunnel.h"

struct sbx_http_server;
struct sbx_http_req;

struct sbx_http_header {
    char *name; /* lowercased */
    char *value;
};

struct sbx_http_req {
    const char *method; /* "GET", "POST", ... */
    char *target;       /* raw request target, e.g. "/files?path=a" */
    char *path;         /* target up to '?', not decoded */
    char *query;        /* after '?', not decoded; NULL if none */
    struct sbx_http_header *headers;
    size_t n_headers;
    bool chunked;            /* request body is chunked */
    bool upgrade;            /* Upgrade (with Connection: upgrade) or CONNECT: no other request
                              * follows on the connection; it may become a tunnel */
    int64_t content_length;  /* -1 if absent */
    uint64_t start_ms;       /* sbx_now_ms() when the head was complete */
    void *data;              /* free for the handler */
    char log_sandbox[72];    /* sandbox id for the request log line, set by handlers */
    const char *route_class; /* a static name for the server's observer, set by handlers */
    bool quiet;              /* set by a handler: the request is not logged */
};

typedef void (*sbx_http_request_cb)(struct sbx_http_req *req, void *ud);
typedef void (*sbx_http_body_done_cb)(struct sbx_http_req *req, struct sbx_buf *body);
typedef void (*sbx_http_data_cb)(struct sbx_http_req *req, const char *data, size_t len);
typedef void (*sbx_http_req_cb)(struct sbx_http_req *req);

/* on_request is called once the request head is complete. */
struct sbx_http_server *sbx_http_server_new(uv_loop_t *loop, sbx_http_request_cb on_request,
                                            void *ud);
/* "host:port"; port 0 picks a free one (see sbx_http_server_port). */
int sbx_http_server_listen_tcp(struct sbx_http_server *s, const char *host, int port,
                               struct sbx_error **err);
int sbx_http_server_port(struct sbx_http_server *s);
/* Serves an already listening socket (tcp or unix); the server takes ownership of fd. */
int sbx_http_server_listen_fd(struct sbx_http_server *s, int fd, struct sbx_error **err);
/* Stops accepting; open connections are closed; then frees the server. */
void sbx_http_server_close(struct sbx_http_server *s);
/* When set, every finished request is logged as one line (route, status, duration; for an
 * error answer, the client's address and the message too), except client errors (4xx), which
 * are rate-limited per client address (see ratelimit.h), as are the connection limit's
 * evictions: each interval ends with summary lines of what was held back. */
void sbx_http_server_set_logging(struct sbx_http_server *s, bool on);
/* Calls done(req, status, ud) for every request whose response was sent whole (for metrics). */
void sbx_http_server_set_observer(struct sbx_http_server *s,
                                  void (*done)(const struct sbx_http_req *req, int status,
                                               void *ud),
                                  void *ud);
/* Deadlines for clients, 0 for none (the default): a request head must be complete within
 * header_ms of the connection's start or of the request's first byte, else the connection is
 * closed (after a 408 if some of it arrived); a kept-alive connection without a request is
 * closed after idle_ms, or after anon_idle_ms if that is shorter and the connection has not
 * carried an authenticated request (sbx_http_req_mark_authenticated). A request being
 * handled, its body and response included, has none. Set before listening. */
void sbx_http_server_set_timeouts(struct sbx_http_server *s, uint64_t header_ms, uint64_t idle_ms,
                                  uint64_t anon_idle_ms);
/* At most max open connections (0: no limit, the default). At the limit a new connection
 * closes the one that has waited longest with no request being handled (idle, lingering, or
 * still sending a head), first among those that have not carried an authenticated request;
 * if every connection is handling a request, the new one is closed at once. */
void sbx_http_server_set_max_conns(struct sbx_http_server *s, size_t max);

/* Clients whose first byte starts a TLS handshake are served over TLS with tls (http/tls.h),
 * the others in plain HTTP. Set before listening; tls stays the caller's. */
struct sbx_tls;
void sbx_http_server_set_tls(struct sbx_http_server *s, struct sbx_tls *tls);

/* Request accessors. remote: the client's address ("unix" on a unix socket). */
const char *sbx_http_req_remote(const struct sbx_http_req *req);
const char *sbx_http_req_header(const struct sbx_http_req *req, const char *lname);
/* Sets header lname (lowercase) of the request to value, replacing it or adding it: what a
 * handler tells whoever it passes the request on to. */
void sbx_http_req_set_header(struct sbx_http_req *req, const char *lname, const char *value);
/* Whether header lname is present and equals secret (false when secret is NULL). Compared in
 * constant time: how long it takes does not tell how much of a guess was right. */
bool sbx_http_req_has_secret(const struct sbx_http_req *req, const char *lname, const char *secret);
/* Percent-decoded value of key in req->query ('+' is a space). Returns a malloc'd string, or
 * NULL if absent. */
char *sbx_http_req_query(const struct sbx_http_req *req, const char *key);
/* Percent-decodes s into a malloc'd string; plus_is_space for form encoding. NULL on bad
 * escapes. *outlen gets the length (the result may contain NUL bytes). */
char *sbx_http_percent_decode(const char *s, size_t len, bool plus_is_space, size_t *outlen);

/* Body: call exactly one of these from on_request (or respond without reading; the rest of
 * the body is then discarded or the connection closed). A client's Expect: 100-continue is
 * answered with 100 when one of them is called, and never by a response without them. */
void sbx_http_req_read_body(struct sbx_http_req *req, size_t max, sbx_http_body_done_cb done);
void sbx_http_req_stream_body(struct sbx_http_req *req, sbx_http_data_cb on_data,
                              sbx_http_req_cb on_end);
void sbx_http_req_pause_body(struct sbx_http_req *req);
void sbx_http_req_resume_body(struct sbx_http_req *req);
/* Called if the client goes away before the response ended; req is freed right after. */
void sbx_http_req_on_close(struct sbx_http_req *req, sbx_http_req_cb on_close);
/* The caller has authenticated req: its connection gets the longer idle deadline and is
 * evicted only after every connection that carried no authenticated request. */
void sbx_http_req_mark_authenticated(struct sbx_http_req *req);

/* Response. Headers added before sbx_http_respond/start. */
void sbx_http_add_header(struct sbx_http_req *req, const char *name, const char *value);
void sbx_http_respond(struct sbx_http_req *req, int status, const char *content_type,
                      const void *body, size_t len);
/* Streamed response: chunked unless a Content-Length header was added. */
void sbx_http_start(struct sbx_http_req *req, int status, const char *content_type);
/* Queues data. Returns true while the queue is below SBX_HTTP_WRITE_HIGH_WATER; when it
 * returns false the producer should wait for the drain callback. */
bool sbx_http_write(struct sbx_http_req *req, const void *data, size_t len);
void sbx_http_on_drain(struct sbx_http_req *req, sbx_http_req_cb on_drain);
void sbx_http_end(struct sbx_http_req *req);
/* Cuts the connection at once (TCP RST where possible): what streaming clients see when a
 * sandbox is killed. The request is freed; the close callback is not called. */
void sbx_http_abort(struct sbx_http_req *req);

/* Answers an upgrade or CONNECT request (req->upgrade) with status (101, or 2xx to CONNECT)
 * and the headers added, without body framing, then makes its connection a tunnel to peer
 * (http/tunnel.h): bytes the client sent after the request go to peer first, peer->pending
 * goes to the client after the head. The request is finished and freed (its close callback is
 * not called); the connection closes when the tunnel ends. On a connection already gone,
 * peer->close is called at once. */
void sbx_http_tunnel(struct sbx_http_req *req, int status, const struct sbx_tunnel_end *peer);

/* The reason of an error answer whose body is no JSON error (an HTML page), for the request's
 * log line; before sbx_http_respond. */
void sbx_http_log_error(struct sbx_http_req *req, const char *msg);
/* JSON error body {"code":status,"message":msg} with the given status. */
void sbx_http_respond_error(struct sbx_http_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same with the code a JSON string, {"code":"404",...}: the volume content API's. */
void sbx_http_respond_error_strcode(struct sbx_http_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A request kept across event loop turns until it can be answered (waiting for the spawner,
 * for a resume): the client may go away meanwhile. hold takes req->data and the close
 * callback; release gives the request back, or NULL if its client went away, and frees the
 * hold. */
struct sbx_http_hold;
struct sbx_http_hold *sbx_http_req_hold(struct sbx_http_req *req);
struct sbx_http_req *sbx_http_hold_release(struct sbx_http_hold *h);

/* Reverse proxy (proxy.c): forwards req, with its body streamed, to an HTTP server on a unix
 * socket and streams the response back. Hop-by-hop headers are dropped, and so are
 * control-plane credentials (X-API-Key; towards the agent Authorization unless Basic, towards
 * a user port the sandbox's tokens). An upgrade request that the upstream answers with 101
 * becomes a tunnel. If the upstream cannot be reached, on_unreachable is called (to answer
 * 502); if it dies mid-response the client connection is aborted. */
struct sbx_http_proxy_opts {
    const char *unix_path;
    /* > 0: a user port: the upstream (a sandbox's agent) is first asked for a tunnel to this
     * port of the sandbox's loopback ("CONNECT 127.0.0.1:<port>"), which must answer 200 */
    int tunnel_port;
    bool tunnel_tls;  /* ... where the service serves HTTPS: the agent speaks TLS to it */
    const char *host; /* not NULL: the Host sent upstream; the client's goes in
                       * X-Forwarded-Host */
    sbx_http_req_cb on_unreachable;
};
void sbx_http_proxy(struct sbx_http_req *req, const struct sbx_http_proxy_opts *o);

#endif
