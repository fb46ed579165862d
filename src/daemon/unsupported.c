/* The parts of E2B's control-plane API this server does not implement, each answered 501 with
 * a message naming the feature (the SDKs show it to the caller), so that nothing is accepted
 * and silently ignored and no known call meets a bare "no route" 404 (an SDK may read a 404 as
 * "no such thing"). docs/features.md lists every feature and its state here;
 * tests/integration/py/test_features.py checks the list against a real daemon. */
#include <string.h>

#include "daemon/internal.h"

static const struct {
    const char *first; /* the path's first segment after an optional /v2 or /v3 */
    const char *what;  /* the feature, as the message names it */
} unsupported[] = {
    {"default-templates", "listing default templates is not supported by this server: it "
                          "offers the built-in templates 'base' and 'code-interpreter-v1', and "
                          "those built with the Template SDK (GET /templates)"},
    {"secrets", "secrets are not supported by this server"},
    {"teams", "teams are not supported by this server: its API keys are managed at /api-keys "
              "with an admin key"},
    {"access-tokens", "access tokens are not supported by this server: it takes API keys "
                      "(X-API-KEY)"},
    {"nodes", "cluster nodes are not part of this server: it is one host"},
    {"admin", "E2B's cluster administration API is not part of this server"},
};

bool
sbx_api_unsupported(struct sbx_http_req *req, char **parts, size_t n)
{
    bool versioned = n > 0 && (strcmp(parts[0], "v2") == 0 || strcmp(parts[0], "v3") == 0);
    char **p = versioned ? parts + 1 : parts;
    size_t pn = versioned ? n - 1 : n;
    if (pn == 0)
        return false;
    if (pn == 2 && strcmp(p[0], "sandboxes") == 0 && strcmp(p[1], "metrics") == 0 &&
        strcmp(req->method, "GET") == 0) {
        sbx_http_respond_error(req, 501,
                               "metrics of several sandboxes at once (GET /sandboxes/metrics) "
                               "are not supported by this server: ask each sandbox's "
                               "/sandboxes/{id}/metrics");
        return true;
    }
    for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
        if (strcmp(p[0], unsupported[i].first) == 0) {
            sbx_http_respond_error(req, 501, "%s %s: %s", req->method, req->path,
                                   unsupported[i].what);
            return true;
        }
    }
    return false;
}
