/* TLS for the HTTP server (OpenSSL, memory BIOs): a client whose first byte is a TLS
 * handshake record gets its connection terminated here, and the plaintext goes on to the HTTP
 * server over a socketpair, as a connection of its own (server.c). So one port serves https
 * and http, and nothing of HTTP parsing knows about TLS.
 *
 * The certificate and key are given as PEM text (the supervisor reads the files as root; the
 * unprivileged front end never opens them); the key is wiped once loaded. TLS 1.2 and later,
 * HTTP/1.1 only (ALPN). */
#ifndef SBX_HTTP_TLS_H
#define SBX_HTTP_TLS_H

#include <stddef.h>
#include <uv.h>

#include "base/error.h"

struct sbx_tls;

struct sbx_tls *sbx_tls_new(const char *cert_pem, char *key_pem, struct sbx_error **err);
/* The other way round: a context to speak TLS to a server, for the services of sandboxes that
 * serve HTTPS themselves (httpsPorts). Their certificates are not verified: a sandbox's service
 * is the sandbox's own, reached through its agent, and E2B does the same. */
struct sbx_tls *sbx_tls_client_new(struct sbx_error **err);
void sbx_tls_free(struct sbx_tls *t);

/* Terminates TLS on client, whose first n bytes (first) were read already; plain_fd is this
 * side of a stream socketpair whose other side the HTTP server serves. client is borrowed as
 * in a tunnel (tunnel.h): client_close(ud) is called once the TLS connection is over. With a
 * client context (sbx_tls_client_new), client is the server's connection and this side
 * starts the handshake. */
void sbx_tls_serve(struct sbx_tls *t, uv_loop_t *loop, uv_stream_t *client,
                   void (*client_close)(void *ud), void *ud, const char *first, size_t n,
                   int plain_fd);

#endif
