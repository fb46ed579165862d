/* TLS termination: see tls.h. One connection is a pump between the client's socket
 * (ciphertext, through the memory BIOs of an SSL object) and a socketpair to the HTTP server
 * (plaintext), with back-pressure each way: a side whose peer has SBX_HTTP_WRITE_HIGH_WATER
 * bytes queued is not read. */
#include "http/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/limits.h"
#include "base/util.h"
#include "http/stream.h"

struct sbx_tls {
    SSL_CTX *ctx;
    bool client;
};

struct conn {
    SSL *ssl;
    BIO *in, *out; /* ciphertext from the client, to the client */
    uv_stream_t *net;
    void *net_data;
    void (*net_close)(void *ud);
    void *net_ud;
    uv_pipe_t plain;
    size_t net_queued, plain_queued;
    bool net_reading, plain_reading;
    bool plain_eof; /* the HTTP server is done: close once the client has it all */
    bool net_eof;   /* the TLS peer is done: passed on as the end of the plaintext */
    bool done;
    int refs; /* writes in flight, the plain handle */
    uv_shutdown_t shutdown;
};

/* Offers HTTP/1.1 only: the server behind speaks nothing else. */
static int
select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
            unsigned inlen, void *arg)
{
    for (unsigned i = 0; i < inlen; i += 1u + in[i])
        if (in[i] == 8 && i + 9 <= inlen && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
    return SSL_TLSEXT_ERR_NOACK;
}

static int
tls_error(struct sbx_error **err, const char *what)
{
    char buf[256];
    ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
    ERR_clear_error();
    return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "TLS: %s: %s", what, buf);
}

struct sbx_tls *
sbx_tls_new(const char *cert_pem, char *key_pem, struct sbx_error **err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    BIO *cb = BIO_new_mem_buf(cert_pem, -1), *kb = BIO_new_mem_buf(key_pem, -1);
    X509 *cert = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    EVP_PKEY *key = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    explicit_bzero(key_pem, strlen(key_pem));
    int rc = 0;
    if (ctx == NULL || cert == NULL || key == NULL)
        rc = tls_error(err, cert == NULL ? "read the certificate" : "read the key");
    else if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
             SSL_CTX_check_private_key(ctx) != 1)
        rc = tls_error(err, "the key does not match the certificate");
    /* The rest of a chain follows the certificate in the same file. */
    for (X509 *ca; rc == 0 && (ca = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL;)
        if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {
            X509_free(ca);
            rc = tls_error(err, "add the chain");
        }
    ERR_clear_error(); /* the end of the chain */
    X509_free(cert);
    EVP_PKEY_free(key);
    BIO_free(cb);
    BIO_free(kb);
    if (rc < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    struct sbx_tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        abort();
    t->ctx = ctx;
    return t;
}

struct sbx_tls *
sbx_tls_client_new(struct sbx_error **err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        tls_error(err, "client context");
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    struct sbx_tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        abort();
    t->ctx = ctx;
    t->client = true;
    return t;
}

void
sbx_tls_free(struct sbx_tls *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}

static void finish(struct conn *c);
static void flush_out(struct conn *c);
static void unref(struct conn *c);
static void set_net_reading(struct conn *c, bool on);
static void set_plain_reading(struct conn *c, bool on);

static void
unref(struct conn *c)
{
    if (--c->refs > 0)
        return;
    SSL_free(c->ssl); /* frees the BIOs too */
    free(c);
}

static void
on_plain_closed(uv_handle_t *h)
{
    unref(h->data);
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[SBX_HTTP_READ_SLAB];
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void
on_write(uv_write_t *w, int status)
{
    struct sbx_http_wcopy *wc = (struct sbx_http_wcopy *)w;
    struct conn *c = wc->owner;
    bool to_net = w->handle == c->net;
    if (to_net)
        c->net_queued -= wc->len;
    else
        c->plain_queued -= wc->len;
    free(wc);
    if (!c->done) {
        if (status < 0)
            finish(c);
        else if (to_net && c->plain_eof && c->net_queued == 0)
            finish(c); /* the server's last bytes are out */
        else if (to_net && c->net_queued < SBX_HTTP_WRITE_HIGH_WATER)
            set_plain_reading(c, true);
        else if (!to_net && c->plain_queued < SBX_HTTP_WRITE_HIGH_WATER)
            set_net_reading(c, true);
    }
    unref(c);
}

static void
write_to(struct conn *c, uv_stream_t *s, size_t *queued, const char *data, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    size_t before = *queued;
    if (sbx_http_stream_writev(s, &b, 1, true, queued, c, on_write) < 0) {
        finish(c);
        return;
    }
    if (*queued > before)
        c->refs++;
}

/* Ciphertext the SSL object produced goes to the client. */
static void
flush_out(struct conn *c)
{
    char buf[16384];
    int n;
    while (!c->done && (n = BIO_read(c->out, buf, sizeof(buf))) > 0)
        write_to(c, c->net, &c->net_queued, buf, (size_t)n);
    if (!c->done && c->net_queued >= SBX_HTTP_WRITE_HIGH_WATER)
        set_plain_reading(c, false);
}

static void
on_plain_shutdown(uv_shutdown_t *req, int status)
{
    unref(req->data);
}

/* The TLS peer has ended (close_notify, or its stream's end): the plaintext side gets an end
 * of stream once what is queued for it is out, and the other direction goes on until the
 * plaintext side ends too. */
static void
net_ended(struct conn *c)
{
    if (c->net_eof || c->done)
        return;
    c->net_eof = true;
    set_net_reading(c, false);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->plain, on_plain_shutdown) < 0)
        finish(c);
    else
        c->refs++;
}

/* Plaintext the client sent goes to the server, once the handshake is done. */
static void
pump_in(struct conn *c)
{
    char buf[16384];
    for (;;) {
        int n = SSL_read(c->ssl, buf, sizeof(buf));
        if (n > 0) {
            write_to(c, (uv_stream_t *)&c->plain, &c->plain_queued, buf, (size_t)n);
            if (c->done)
                return;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        flush_out(c); /* handshake messages, alerts */
        if (c->done || e == SSL_ERROR_WANT_READ)
            break;
        ERR_clear_error();
        if (e == SSL_ERROR_ZERO_RETURN)
            net_ended(c); /* close_notify */
        else
            finish(c); /* a protocol error, a refused handshake */
        return;
    }
    if (SSL_is_init_finished(c->ssl))
        set_plain_reading(c, true);
    if (c->plain_queued >= SBX_HTTP_WRITE_HIGH_WATER)
        set_net_reading(c, false);
}

static void
on_net_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (n == 0 || c->done)
        return;
    if (n == UV_EOF) {
        net_ended(c);
        return;
    }
    if (n < 0 || BIO_write(c->in, buf->base, (int)n) != (int)n) {
        finish(c); /* the client's connection failed: so does its plaintext connection */
        return;
    }
    pump_in(c);
}

static void
on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (n == 0 || c->done)
        return;
    if (n < 0) {
        /* The server closed: say so to the client, then close once it has everything. */
        c->plain_eof = true;
        set_plain_reading(c, false);
        SSL_shutdown(c->ssl);
        flush_out(c);
        if (!c->done && c->net_queued == 0)
            finish(c);
        return;
    }
    if (SSL_write(c->ssl, buf->base, (int)n) != (int)n) {
        finish(c);
        return;
    }
    flush_out(c);
}

static void
set_net_reading(struct conn *c, bool on)
{
    if (c->done || (on && c->net_eof) || c->net_reading == on)
        return;
    c->net_reading = on;
    if (on)
        uv_read_start(c->net, on_alloc, on_net_read);
    else
        uv_read_stop(c->net);
}

static void
set_plain_reading(struct conn *c, bool on)
{
    /* Plaintext waits for the handshake: SSL_write cannot take it before. */
    if (c->done || c->plain_eof || c->plain_reading == on || (on && !SSL_is_init_finished(c->ssl)))
        return;
    c->plain_reading = on;
    if (on)
        uv_read_start((uv_stream_t *)&c->plain, on_alloc, on_plain_read);
    else
        uv_read_stop((uv_stream_t *)&c->plain);
}

static void
finish(struct conn *c)
{
    if (c->done)
        return;
    set_net_reading(c, false);
    set_plain_reading(c, false);
    c->done = true;
    c->net->data = c->net_data;
    c->net_close(c->net_ud);
    uv_close((uv_handle_t *)&c->plain, on_plain_closed);
}

void
sbx_tls_serve(struct sbx_tls *t, uv_loop_t *loop, uv_stream_t *client,
              void (*client_close)(void *ud), void *ud, const char *first, size_t n, int plain_fd)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->ssl = SSL_new(t->ctx);
    c->in = BIO_new(BIO_s_mem());
    c->out = BIO_new(BIO_s_mem());
    if (c->ssl == NULL || c->in == NULL || c->out == NULL)
        abort();
    SSL_set_bio(c->ssl, c->in, c->out);
    if (t->client)
        SSL_set_connect_state(c->ssl);
    else
        SSL_set_accept_state(c->ssl);
    c->net = client;
    c->net_data = client->data;
    client->data = c;
    c->net_close = client_close;
    c->net_ud = ud;
    c->refs = 1; /* the plain handle */
    uv_pipe_init(loop, &c->plain, 0);
    c->plain.data = c;
    if (uv_pipe_open(&c->plain, plain_fd) < 0) {
        close(plain_fd);
        finish(c);
        return;
    }
    if (n > 0 && BIO_write(c->in, first, (int)n) != (int)n) {
        finish(c);
        return;
    }
    set_net_reading(c, true);
    pump_in(c);
}
