/* The entry point of every request on the daemon's port: sandbox traffic (recognised by the
 * E2b-Sandbox-Id / E2b-Sandbox-Port headers, by a Host of the form <port>-<id>.<domain>, or
 * by the signature of a presigned /files URL) is proxied to that sandbox's agent; everything
 * else is the control plane. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/limits.h"
#include "base/log.h"
#include "daemon/internal.h"
#include "daemon/signed.h"

struct target {
    char id[SBX_STORE_ID_MAX + 1];
    int port;
};

/* Host "<port>-<id>.<anything>": the cloud's form for sandbox URLs. */
static bool
parse_host(const char *host, struct target *t)
{
    if (host == NULL)
        return false;
    const char *p = host;
    int port = 0;
    while (isdigit((unsigned char)*p) && port < 100000)
        port = port * 10 + (*p++ - '0');
    if (p == host || *p != '-' || port <= 0 || port > 65535)
        return false;
    const char *id = ++p;
    while (isalnum((unsigned char)*p))
        p++;
    size_t len = (size_t)(p - id);
    if (len == 0 || len > SBX_STORE_ID_MAX || *p != '.')
        return false;
    memcpy(t->id, id, len);
    t->id[len] = '\0';
    t->port = port;
    return true;
}

static bool
sandbox_target(const struct sbx_http_req *req, struct target *t)
{
    const char *id = sbx_http_req_header(req, "e2b-sandbox-id");
    if (id) {
        snprintf(t->id, sizeof(t->id), "%s", id);
        const char *port = sbx_http_req_header(req, "e2b-sandbox-port");
        t->port = port ? atoi(port) : SBX_ENVD_PORT;
        return true;
    }
    return parse_host(sbx_http_req_header(req, "host"), t);
}

static void respond_sandbox_error(struct sbx_http_req *req, int status, const char *message);

static void
respond_not_found(struct sbx_http_req *req)
{
    /* The body the cloud proxy sends; the SDKs turn 502 into "sandbox not running". */
    respond_sandbox_error(req, 502, "The sandbox was not found");
}

static void route(struct sbx_http_req *req, struct sbx_live *l, int port);

/* A request that waits for its sandbox (being paused, resumed or settled): the client may go
 * away meanwhile; the sandbox may be killed. */
struct held {
    struct sbx_http_hold *hold;
    char id[SBX_STORE_ID_MAX + 1];
    int port;
};

static void
on_unheld(struct sbx_live *l, struct sbx_error *err, uint64_t took_us, void *ud)
{
    struct held *h = ud;
    struct sbx_http_req *req = sbx_http_hold_release(h->hold);
    if (req) {
        /* Killed meanwhile, or a resume that failed (it is still paused): not there. */
        l = sbx_lifecycle_find(h->id);
        if (l == NULL || err)
            respond_not_found(req);
        else
            route(req, l, h->port);
    }
    free(h);
}

static struct held *
hold(struct sbx_http_req *req, const struct sbx_live *l, int port)
{
    struct held *h = calloc(1, sizeof(*h));
    if (h == NULL)
        abort();
    h->hold = sbx_http_req_hold(req);
    h->port = port;
    snprintf(h->id, sizeof(h->id), "%s", l->rec->id);
    return h;
}

static void
respond_sandbox_error(struct sbx_http_req *req, int status, const char *message)
{
    json_t *o = json_pack("{s:s,s:s,s:i}", "sandboxId", req->log_sandbox, "message", message,
                          "code", status);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    sbx_http_respond(req, status, "application/json; charset=utf-8", s, strlen(s));
    free(s);
}

/* Serves a request for l: proxied if it runs; else it waits for what is under way, is woken
 * up (autoResume: a sandbox paused with its memory, resumed for its create-time timeout), or
 * is answered as for a sandbox that is not there (502, spec lifecycle.md §1). */
static void
route(struct sbx_http_req *req, struct sbx_live *l, int port)
{
    if (sbx_live_is_running(l)) {
        sbx_http_proxy(req, l->sock_path, respond_not_found);
        return;
    }
    const char *transition = sbx_pause_transition(l);
    bool wakes = l->rec->auto_resume && (transition || l->rec->paused_memory);
    if (transition && strcmp(transition, "pausing") == 0 && wakes) {
        respond_sandbox_error(req, 409,
                              "The sandbox is still transitioning. Try again in a moment.");
        return;
    }
    if (transition || !sbx_live_is_paused(l)) {
        sbx_pause_wait(l, on_unheld, hold(req, l, port)); /* a resume or a restart's settle */
        return;
    }
    if (!wakes) {
        respond_not_found(req);
        return;
    }
    /* Waking a secure sandbox through envd takes its access token, as on E2B: a request that
     * only names it must not start what its owner paused. */
    if (port == SBX_ENVD_PORT && l->rec->access_token &&
        !sbx_http_req_has_secret(req, "x-access-token", l->rec->access_token)) {
        respond_sandbox_error(req, 403,
                              "This sandbox can't be resumed with the credentials provided. "
                              "Check your access token and try again.");
        return;
    }
    sbx_log_info("sandbox_resume", "sandbox=%s reason=\"a request for port %d\"", l->rec->id, port);
    int timeout = l->rec->timeout_s > 0 ? l->rec->timeout_s : SBX_DEFAULT_TIMEOUT_S;
    sbx_resume(l, true, timeout, on_unheld, hold(req, l, port));
}

void
sbx_router_on_request(struct sbx_http_req *req, void *ud)
{
    struct sbx_daemon *d = ud;
    struct target t;
    if (!sandbox_target(req, &t)) {
        /* A presigned /files URL that names no sandbox: its signature does (spec §5.3). */
        struct sbx_live *signed_for = NULL;
        if (!sbx_signed_find(d, req, &signed_for)) {
            sbx_api_handle(req);
            return;
        }
        if (signed_for == NULL) {
            sbx_http_respond_error(req, 401,
                                   "invalid signature: it matches none of the %d sandboxes used "
                                   "last (a URL whose host is <port>-<sandbox id>.<domain> "
                                   "reaches any sandbox)",
                                   SBX_SIGNED_URL_CANDIDATES);
            return;
        }
        sbx_live_touch(d, signed_for);
        snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", signed_for->rec->id);
        sbx_http_req_mark_authenticated(req); /* signed with the sandbox's token */
        req->route_class = "sandbox_traffic";
        route(req, signed_for, SBX_ENVD_PORT);
        return;
    }
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", t.id);
    req->route_class = "sandbox_traffic";
    struct sbx_live *l = sbx_lifecycle_find(t.id);
    if (l == NULL) {
        respond_not_found(req);
        return;
    }
    /* A request for a live sandbox counts as authenticated for the connection limit: its id
     * is random, known to whom its creator told; the agent still checks the access token.
     * Proven use keeps the sandbox among the candidates of presigned URLs; a request that
     * only names it must not be able to push other sandboxes out of them. */
    if (sbx_http_req_has_secret(req, "x-access-token", l->rec->access_token))
        sbx_live_touch(d, l);
    /* Every port of the sandbox is served by its agent (envd, the code interpreter); the
     * agent sees E2b-Sandbox-Port and routes on it. */
    sbx_http_req_mark_authenticated(req);
    route(req, l, t.port);
}
