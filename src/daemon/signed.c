#include "daemon/signed.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/limits.h"
#include "base/signature.h"

bool
sbx_signed_find(struct sbx_daemon *d, const struct sbx_http_req *req, struct sbx_live **out)
{
    *out = NULL;
    const char *op;
    if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0)
        op = SBX_SIGNATURE_OP_READ;
    else if (strcmp(req->method, "POST") == 0)
        op = SBX_SIGNATURE_OP_WRITE;
    else
        return false;
    if (req->path == NULL || strcmp(req->path, "/files") != 0)
        return false;
    _cleanup_free_ char *sig = sbx_http_req_query(req, "signature");
    if (sig == NULL || *sig == '\0')
        return false;
    _cleanup_free_ char *path = sbx_http_req_query(req, "path");
    _cleanup_free_ char *user = sbx_http_req_query(req, "username");
    _cleanup_free_ char *exp_s = sbx_http_req_query(req, "signature_expiration");
    int64_t exp = 0;
    if (exp_s != NULL && sbx_signature_parse_exp(exp_s, &exp) < 0)
        return true; /* no token signs junk */
    int tried = 0;
    for (struct sbx_live *l = d->recent; l && tried < SBX_SIGNED_URL_CANDIDATES;
         l = l->recent_next, tried++) {
        /* Each candidate costs one hash and one constant-time compare, match or not. */
        bool match = sbx_signature_v1_matches(sig, path ? path : "", op, user ? user : "",
                                              l->rec->access_token, exp_s != NULL, exp);
        if (match && *out == NULL)
            *out = l;
    }
    return true;
}
