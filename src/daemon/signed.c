#include "daemon/signed.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/signature.h"
#include "base/cleanup.h"

struct sbx_live *
sbx_daemon_find_by_signature(const struct sbx_http_req *req)
{
    const char *op;
    if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0)
        op = SBX_SIGNATURE_OP_READ;
    else if (strcmp(req->method, "POST") == 0)
        op = SBX_SIGNATURE_OP_WRITE;
    else
        return NULL;
    if (req->path == NULL || strcmp(req->path, "/files") != 0)
        return NULL;
    _cleanup_free_ char *sig = sbx_http_req_query(req, "signature");
    if (sig == NULL || *sig == '\0')
        return NULL;
    _cleanup_free_ char *path = sbx_http_req_query(req, "path");
    _cleanup_free_ char *user = sbx_http_req_query(req, "username");
    _cleanup_free_ char *exp_s = sbx_http_req_query(req, "signature_expiration");
    int64_t exp = 0;
    if (exp_s != NULL && sbx_signature_parse_exp(exp_s, &exp) < 0)
        return NULL;
    struct sbx_live *found = NULL;
    for (struct sbx_live *l = sbx_daemon->live; l; l = l->next) {
        const char *tok = l->rec ? l->rec->access_token : NULL;
        if (tok == NULL || *tok == '\0')
            continue; /* not secure: its URLs carry no signature */
        /* Each candidate costs one hash and one constant-time compare, match or not. */
        bool match = sbx_signature_v1_matches(sig, path ? path : "", op, user ? user : "", tok,
                                              exp_s != NULL, exp);
        if (match && found == NULL)
            found = l;
    }
    return found;
}
