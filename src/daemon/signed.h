/* Routing of presigned /files URLs (spec §1.4 rule 3, §5.3): such a URL carries no sandbox
 * id, only a signature made with the sandbox's access token, so the sandbox is the one whose
 * token reproduces the signature. The agent checks the signature again (and its expiry)
 * before serving the request. */
#ifndef SBX_DAEMON_SIGNED_H
#define SBX_DAEMON_SIGNED_H

#include "daemon/internal.h"
#include "http/http.h"

/* For GET/POST /files with a `signature` query parameter: the live sandbox whose access
 * token reproduces the signature, or NULL. Every secure sandbox is tried, with no early
 * exit, so the time taken does not tell which one matched. */
struct sbx_live *sbx_daemon_find_by_signature(const struct sbx_http_req *req);

#endif
