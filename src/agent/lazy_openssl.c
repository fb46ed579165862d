/* OpenSSL for the agent, loaded on its first use.
 *
 * The agent needs OpenSSL only to sign kernel messages (HMAC), to check signed file URLs and
 * to speak TLS to a sandbox's HTTPS ports, which most sandboxes never do. Linked as usual,
 * libssl and libcrypto cost every agent about 1.4 ms of CPU at its start (libcrypto is linked
 * BIND_NOW: thousands of symbol relocations and every page of its relocated data copied) and
 * about 470 KiB of private memory. This file defines each OpenSSL function the agent calls as
 * a forwarder to the real one, which it loads from the agent runtime on the first call.
 *
 * Only sbx-agent links it, without libssl and libcrypto (meson.build): an OpenSSL function
 * the agent starts to call and this list lacks fails the agent's link rather than bringing
 * the libraries back at every start. The daemon and the tests link OpenSSL itself. */
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/util.h"
#include "sandbox/sandbox.h" /* SBX_AGENT_RUNTIME_PATH, SBX_OPENSSL_SONAME */

/* F(return type, name, parameters, arguments) for functions that return a value, V(name,
 * parameters, arguments) for the others. The compiler checks each against OpenSSL's header. */
#define OPENSSL_FUNCS(F, V)                                                                        \
    F(int, BIO_free, (BIO * a), (a))                                                               \
    F(BIO *, BIO_new, (const BIO_METHOD *type), (type))                                            \
    F(BIO *, BIO_new_mem_buf, (const void *buf, int len), (buf, len))                              \
    F(int, BIO_read, (BIO * b, void *data, int dlen), (b, data, dlen))                             \
    F(const BIO_METHOD *, BIO_s_mem, (void), ())                                                   \
    F(int, BIO_write, (BIO * b, const void *data, int dlen), (b, data, dlen))                      \
    V(ERR_clear_error, (void), ())                                                                 \
    V(ERR_error_string_n, (unsigned long e, char *buf, size_t len), (e, buf, len))                 \
    F(unsigned long, ERR_get_error, (void), ())                                                    \
    F(int, EVP_DigestFinal_ex, (EVP_MD_CTX * ctx, unsigned char *md, unsigned int *s),             \
      (ctx, md, s))                                                                                \
    F(int, EVP_DigestInit_ex, (EVP_MD_CTX * ctx, const EVP_MD *type, ENGINE *impl),                \
      (ctx, type, impl))                                                                           \
    F(int, EVP_DigestUpdate, (EVP_MD_CTX * ctx, const void *d, size_t cnt), (ctx, d, cnt))         \
    F(int, EVP_EncodeBlock, (unsigned char *t, const unsigned char *f, int n), (t, f, n))          \
    V(EVP_MAC_CTX_free, (EVP_MAC_CTX * ctx), (ctx))                                                \
    F(EVP_MAC_CTX *, EVP_MAC_CTX_new, (EVP_MAC * mac), (mac))                                      \
    F(EVP_MAC *, EVP_MAC_fetch, (OSSL_LIB_CTX * libctx, const char *alg, const char *props),       \
      (libctx, alg, props))                                                                        \
    F(int, EVP_MAC_final, (EVP_MAC_CTX * ctx, unsigned char *out, size_t *outl, size_t outsize),   \
      (ctx, out, outl, outsize))                                                                   \
    F(int, EVP_MAC_init,                                                                           \
      (EVP_MAC_CTX * ctx, const unsigned char *key, size_t keylen, const OSSL_PARAM params[]),     \
      (ctx, key, keylen, params))                                                                  \
    F(int, EVP_MAC_update, (EVP_MAC_CTX * ctx, const unsigned char *data, size_t datalen),         \
      (ctx, data, datalen))                                                                        \
    V(EVP_MD_CTX_free, (EVP_MD_CTX * ctx), (ctx))                                                  \
    F(EVP_MD_CTX *, EVP_MD_CTX_new, (void), ())                                                    \
    V(EVP_PKEY_free, (EVP_PKEY * pkey), (pkey))                                                    \
    F(const EVP_MD *, EVP_sha256, (void), ())                                                      \
    F(OSSL_PARAM, OSSL_PARAM_construct_end, (void), ())                                            \
    F(OSSL_PARAM, OSSL_PARAM_construct_utf8_string, (const char *key, char *buf, size_t bsize),    \
      (key, buf, bsize))                                                                           \
    F(EVP_PKEY *, PEM_read_bio_PrivateKey,                                                         \
      (BIO * bp, EVP_PKEY * *x, pem_password_cb * cb, void *u), (bp, x, cb, u))                    \
    F(X509 *, PEM_read_bio_X509, (BIO * bp, X509 * *x, pem_password_cb * cb, void *u),             \
      (bp, x, cb, u))                                                                              \
    F(int, SSL_CTX_check_private_key, (const SSL_CTX *ctx), (ctx))                                 \
    F(long, SSL_CTX_ctrl, (SSL_CTX * ctx, int cmd, long larg, void *parg), (ctx, cmd, larg, parg)) \
    V(SSL_CTX_free, (SSL_CTX * ctx), (ctx))                                                        \
    F(SSL_CTX *, SSL_CTX_new, (const SSL_METHOD *meth), (meth))                                    \
    F(int, SSL_CTX_set_alpn_protos,                                                                \
      (SSL_CTX * ctx, const unsigned char *protos, unsigned int protos_len),                       \
      (ctx, protos, protos_len))                                                                   \
    V(SSL_CTX_set_alpn_select_cb, (SSL_CTX * ctx, SSL_CTX_alpn_select_cb_func cb, void *arg),      \
      (ctx, cb, arg))                                                                              \
    V(SSL_CTX_set_verify, (SSL_CTX * ctx, int mode, SSL_verify_cb cb), (ctx, mode, cb))            \
    F(int, SSL_CTX_use_PrivateKey, (SSL_CTX * ctx, EVP_PKEY * pkey), (ctx, pkey))                  \
    F(int, SSL_CTX_use_certificate, (SSL_CTX * ctx, X509 * x), (ctx, x))                           \
    V(SSL_free, (SSL * ssl), (ssl))                                                                \
    F(int, SSL_get_error, (const SSL *s, int ret_code), (s, ret_code))                             \
    F(int, SSL_is_init_finished, (const SSL *s), (s))                                              \
    F(SSL *, SSL_new, (SSL_CTX * ctx), (ctx))                                                      \
    F(int, SSL_read, (SSL * ssl, void *buf, int num), (ssl, buf, num))                             \
    V(SSL_set_accept_state, (SSL * s), (s))                                                        \
    V(SSL_set_bio, (SSL * s, BIO * rbio, BIO * wbio), (s, rbio, wbio))                             \
    V(SSL_set_connect_state, (SSL * s), (s))                                                       \
    F(int, SSL_shutdown, (SSL * s), (s))                                                           \
    F(int, SSL_write, (SSL * ssl, const void *buf, int num), (ssl, buf, num))                      \
    F(const SSL_METHOD *, TLS_client_method, (void), ())                                           \
    F(const SSL_METHOD *, TLS_server_method, (void), ())                                           \
    V(X509_free, (X509 * a), (a))

#define FIELD(ret, name, params, args) ret(*name) params;
#define VOID_FIELD(name, params, args) void(*name) params;
static struct {
    OPENSSL_FUNCS(FIELD, VOID_FIELD)
} real;

static void
load(void)
{
    /* libssl's own dependency, libcrypto, comes from the runtime too (the loader's
     * --library-path, searched first), and dlsym on libssl's handle finds its functions. */
    void *lib = sbx_dlopen_in(SBX_AGENT_RUNTIME_PATH, SBX_OPENSSL_SONAME);
    if (lib == NULL) {
        /* The runtime bundles it (src/sandbox/runtime.c): this is a broken install, and no
         * caller could go on without the function it called. */
        fprintf(stderr, "sbx agent: load %s: %s\n", SBX_OPENSSL_SONAME, dlerror());
        abort();
    }
#define LOOKUP(ret, name, params, args) VOID_LOOKUP(name, params, args)
#define VOID_LOOKUP(name, params, args)                                                            \
    if ((*(void **)&real.name = dlsym(lib, #name)) == NULL) {                                      \
        fprintf(stderr, "sbx agent: %s has no %s\n", SBX_OPENSSL_SONAME, #name);                   \
        abort();                                                                                   \
    }
    OPENSSL_FUNCS(LOOKUP, VOID_LOOKUP)
}

static pthread_once_t loaded = PTHREAD_ONCE_INIT;

#define FORWARD(ret, name, params, args)                                                           \
    ret name params                                                                                \
    {                                                                                              \
        pthread_once(&loaded, load);                                                               \
        return real.name args;                                                                     \
    }
#define VOID_FORWARD(name, params, args)                                                           \
    void name params                                                                               \
    {                                                                                              \
        pthread_once(&loaded, load);                                                               \
        real.name args;                                                                            \
    }
OPENSSL_FUNCS(FORWARD, VOID_FORWARD)
