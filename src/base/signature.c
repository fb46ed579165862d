#include "base/signature.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

static void
digest_update(EVP_MD_CTX *ctx, const char *s, bool colon)
{
    EVP_DigestUpdate(ctx, s, strlen(s));
    if (colon)
        EVP_DigestUpdate(ctx, ":", 1);
}

void
sbx_signature_v1(const char *path, const char *operation, const char *user, const char *token,
                 bool has_exp, int64_t exp, char out[SBX_SIGNATURE_MAX])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        abort();
    /* Hashed piecewise so the token never sits in one more heap copy than it must. */
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    digest_update(ctx, path ? path : "", true);
    digest_update(ctx, operation, true);
    digest_update(ctx, user ? user : "", true);
    digest_update(ctx, token ? token : "", has_exp);
    if (has_exp) {
        char e[32];
        snprintf(e, sizeof(e), "%" PRId64, exp);
        digest_update(ctx, e, false);
    }
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    memcpy(out, "v1_", 3);
    /* 32 bytes -> 44 characters with one '=' of padding, which the format strips. */
    int n = EVP_EncodeBlock((unsigned char *)out + 3, md, (int)mdlen);
    while (n > 0 && out[3 + n - 1] == '=')
        n--;
    out[3 + n] = '\0';
}

bool
sbx_signature_v1_matches(const char *sig, const char *path, const char *operation, const char *user,
                         const char *token, bool has_exp, int64_t exp)
{
    char want[SBX_SIGNATURE_MAX];
    sbx_signature_v1(path, operation, user, token, has_exp, exp, want);
    bool ok = sbx_secret_equal(sig ? sig : "", sig ? strlen(sig) : 0, want, strlen(want));
    /* The expected value is as good as the token for this URL: do not leave it on the stack. */
    explicit_bzero(want, sizeof(want));
    return ok;
}

int
sbx_signature_parse_exp(const char *s, int64_t *out)
{
    if (s == NULL || *s == '\0')
        return -1;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = (int64_t)v;
    return 0;
}
