/* Routing of presigned /files URLs (spec §1.4 rule 3, §5.3). With E2B_SANDBOX_URL the SDKs'
 * URLs carry no sandbox id, only a signature made with the sandbox's access token: the
 * sandbox is the one whose token reproduces it. SHA-256 hides the token, so nothing in such
 * a URL leads to its sandbox without trying tokens; to keep that cost fixed, only the
 * SBX_SIGNED_URL_CANDIDATES secure sandboxes used last (live.c) are tried. A URL whose host
 * names the sandbox (<port>-<id>.<domain>) is routed by id by router.c and never comes here.
 * The agent checks the signature again (and its expiry) before serving the request. */
#ifndef SBX_DAEMON_SIGNED_H
#define SBX_DAEMON_SIGNED_H

#include <stdbool.h>

#include "daemon/internal.h"
#include "http/http.h"

/* For GET/HEAD/POST /files with a `signature` query parameter: true, with *out the candidate
 * whose token reproduces the signature, or NULL. False for any other request. Every
 * candidate is tried, with no early exit, so the time taken tells neither which one matched
 * nor how close a wrong signature was. */
bool sbx_signed_find(struct sbx_daemon *d, const struct sbx_http_req *req, struct sbx_live **out);

#endif
