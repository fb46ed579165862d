/* The reverse proxy's parser of what an upstream (a sandbox's agent) answers: one HTTP/1.1
 * response, fed in pieces as it arrives, turned into the calls that relay it.
 *
 * Owns: framing (http_parser), skipping 1xx interim responses, dropping hop-by-hop headers,
 * and the bounds of the head. The upstream is untrusted (the code in a sandbox controls its
 * agent), so what it sends is checked like a client's request. Never: I/O, libuv, logging;
 * it is a pure function of its input, driven by fuzz/fuzz_upstream_response.c. */
#ifndef SBX_HTTP_UPSTREAM_H
#define SBX_HTTP_UPSTREAM_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"

/* Called in this order: on_header for each end-to-end header of the final response, on_head
 * once, on_body any number of times (never for a HEAD request), on_end at most once. name
 * (lowercased) and value are NUL-terminated and valid during the call.
 *
 * The answer to an upgrade request (upgrade set) may be 101 Switching Protocols, with
 * Connection: upgrade and an Upgrade header: then on_header gets Upgrade too, and on_switch
 * replaces on_body and on_end; rest is what followed the head in the same piece (the other
 * protocol's first bytes). */
struct sbx_http_upstream_cbs {
    void (*on_header)(void *ud, const char *name, const char *value);
    void (*on_head)(void *ud, int status);
    void (*on_body)(void *ud, const char *data, size_t len);
    void (*on_end)(void *ud);
    void (*on_switch)(void *ud, const char *rest, size_t len);
};

struct sbx_http_upstream {
    http_parser parser;
    const struct sbx_http_upstream_cbs *cbs;
    void *ud;
    bool head_request; /* the response has no body, whatever its head says */
    bool upgrade;      /* the request asked to switch protocols: 101 may answer it */
    bool switched;     /* it did */
    struct sbx_buf field, value;
    bool in_value;
    size_t head_bytes, n_headers;
    bool head_done; /* on_head was called */
    bool ended;
};

/* Connection, Transfer-Encoding and the other headers of one hop (RFC 9110 §7.6.1), which a
 * proxy never passes on, in either direction. */
bool sbx_http_is_hop_by_hop(const char *name);

void sbx_http_upstream_init(struct sbx_http_upstream *u, bool head_request,
                            const struct sbx_http_upstream_cbs *cbs, void *ud);
void sbx_http_upstream_fini(struct sbx_http_upstream *u);
/* Parses len bytes; len 0 means the upstream closed. Returns 1 once the response has ended
 * (bytes after it are ignored) or switched protocols, 0 while more is expected, -1 if the
 * upstream broke the protocol or a limit (the response cannot be relayed; after a head, the
 * client must be cut). */
int sbx_http_upstream_feed(struct sbx_http_upstream *u, const char *data, size_t len);

#endif
