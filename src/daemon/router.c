/* The entry point of every request on the daemon's port: sandbox traffic (recognised by the
 * E2b-Sandbox-Id / E2b-Sandbox-Port headers, by a Host of the form <port>-<id>.<domain>, or
 * by the signature of a presigned /files URL) is proxied to that sandbox's agent, or through
 * it to any other port of the sandbox; everything else is the control plane. */
#include <ctype.h>
#include <jansson.h>
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
    bool by_host; /* named by the Host header, not by E2b-Sandbox-Id */
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
    t->by_host = true;
    return true;
}

static bool
sandbox_target(const struct sbx_http_req *req, struct target *t)
{
    const char *id = sbx_http_req_header(req, "e2b-sandbox-id");
    if (id) {
        snprintf(t->id, sizeof(t->id), "%s", id);
        const char *port = sbx_http_req_header(req, "e2b-sandbox-port");
        char *end = NULL;
        long n = port ? strtol(port, &end, 10) : SBX_ENVD_PORT;
        /* An invalid port is 0: answered 400 (spec network.md §3.2). */
        t->port = port && (end == port || *end != '\0' || n < 1 || n > 65535) ? 0 : (int)n;
        t->by_host = false;
        return true;
    }
    return parse_host(sbx_http_req_header(req, "host"), t);
}

/* Browsers get an HTML page for the proxy's errors, everything else JSON (spec network.md
 * §3.2: as E2B's proxy decides). */
static bool
wants_html(const struct sbx_http_req *req)
{
    const char *ua = sbx_http_req_header(req, "user-agent");
    const char *accept = sbx_http_req_header(req, "accept");
    const char *mode = sbx_http_req_header(req, "sec-fetch-mode");
    static const char *const browsers[] = {"mozilla", "chrome", "safari", "firefox",
                                           "edge",    "opera",  "msie"};
    bool browser = false;
    for (size_t i = 0; ua && i < sizeof(browsers) / sizeof(browsers[0]); i++)
        browser |= strcasestr(ua, browsers[i]) != NULL;
    return browser && !(accept && strcasestr(accept, "application/json")) &&
           !(mode && (strcmp(mode, "cors") == 0 || strcmp(mode, "no-cors") == 0 ||
                      strcmp(mode, "same-origin") == 0 || strcmp(mode, "websocket") == 0)) &&
           sbx_http_req_header(req, "x-requested-with") == NULL;
}

/* The proxy's error answer: the spec's JSON body (fields in its order), or for a browser a
 * page saying the same. id is shown only when it is a sandbox id (alphanumeric). */
static void
respond_proxy_error(struct sbx_http_req *req, int status, const char *message, int port)
{
    const char *id = req->log_sandbox;
    if (wants_html(req)) {
        bool show = id[0] != '\0';
        for (const char *c = id; *c; c++)
            show &= isalnum((unsigned char)*c) != 0;
        char page[1024];
        int n = snprintf(page, sizeof(page),
                         "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>%d</title>"
                         "</head><body><h1>%d</h1><p>%s%s%s.</p></body></html>\n",
                         status, status, message, show ? ": sandbox " : "", show ? id : "");
        sbx_http_log_error(req, message);
        sbx_http_respond(req, status, "text/html; charset=utf-8", page, (size_t)n);
        return;
    }
    json_t *o = json_pack("{s:s,s:s}", "sandboxId", id, "message", message);
    if (port > 0)
        json_object_set_new(o, "port", json_integer(port));
    json_object_set_new(o, "code", json_integer(status));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    sbx_http_respond(req, status, "application/json; charset=utf-8", s, strlen(s));
    free(s);
}

static void
respond_not_found(struct sbx_http_req *req)
{
    /* The SDKs turn 502 into "sandbox not running". */
    respond_proxy_error(req, 502, "The sandbox was not found", 0);
}

static void
respond_port_closed(struct sbx_http_req *req)
{
    struct target t;
    respond_proxy_error(req, 502, "The sandbox is running but port is not open",
                        sandbox_target(req, &t) ? t.port : 0);
}

/* allowPublicTraffic false: every port but envd's needs the sandbox's traffic token. */
static bool
traffic_allowed(struct sbx_http_req *req, const struct sbx_live *l, int port)
{
    if (l->net->public_traffic || port == SBX_ENVD_PORT)
        return true;
    const char *given = sbx_http_req_header(req, "e2b-traffic-access-token");
    if (sbx_http_req_has_secret(req, "e2b-traffic-access-token", l->rec->traffic_token))
        return true;
    respond_proxy_error(req, 403,
                        given ? "Sandbox is secured with traffic access token. Provided token "
                                "in header 'e2b-traffic-access-token' is invalid"
                              : "Sandbox is secured with traffic access token. Token header "
                                "'e2b-traffic-access-token' is missing",
                        0);
    return false;
}

/* maskRequestHost, with ${PORT} the target port; NULL for none. */
static char *
masked_host(const struct sbx_live *l, int port)
{
    const char *m = l->net->mask_host;
    if (m == NULL)
        return NULL;
    struct sbx_buf b = {0};
    const char *ph;
    while ((ph = strstr(m, "${PORT}")) != NULL) {
        sbx_buf_append(&b, m, (size_t)(ph - m), SIZE_MAX);
        sbx_buf_printf(&b, "%d", port);
        m = ph + 7;
    }
    sbx_buf_printf(&b, "%s", m);
    return b.data;
}

/* To the sandbox l: its agent's own ports, or through the agent to any other port. */
static void
proxy_to_sandbox(struct sbx_http_req *req, struct sbx_live *l, const struct target *t)
{
    if (strcmp(req->method, "CONNECT") == 0) {
        sbx_http_respond_error(req, 405, "CONNECT is not proxied to sandboxes");
        return;
    }
    if (t->port == 0) {
        sbx_http_respond_error(req, 400, "Invalid sandbox port");
        return;
    }
    if (!traffic_allowed(req, l, t->port))
        return;
    if (t->port == SBX_ENVD_PORT || t->port == SBX_JUPYTER_PORT) {
        /* The agent serves both and routes on the port it is told. */
        if (t->by_host) {
            char port[8];
            snprintf(port, sizeof(port), "%d", t->port);
            sbx_http_req_set_header(req, "e2b-sandbox-port", port);
        }
        sbx_http_proxy(req, &(struct sbx_http_proxy_opts){.unix_path = l->sock_path,
                                                          .on_unreachable = respond_not_found});
        return;
    }
    char *host = masked_host(l, t->port);
    bool tls = false;
    for (size_t i = 0; i < l->net->n_https_ports; i++)
        tls |= l->net->https_ports[i] == t->port;
    sbx_http_proxy(req, &(struct sbx_http_proxy_opts){.unix_path = l->sock_path,
                                                      .tunnel_port = t->port,
                                                      .tunnel_tls = tls,
                                                      .host = host,
                                                      .on_unreachable = respond_port_closed});
    free(host);
}

static void route(struct sbx_http_req *req, struct sbx_live *l, const struct target *t);

/* A request that waits for its sandbox (being paused, resumed or settled): the client may go
 * away meanwhile; the sandbox may be killed. */
struct held {
    struct sbx_http_hold *hold;
    char id[SBX_STORE_ID_MAX + 1];
    struct target t;
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
            route(req, l, &h->t);
    }
    free(h);
}

static struct held *
hold(struct sbx_http_req *req, const struct sbx_live *l, const struct target *t)
{
    struct held *h = calloc(1, sizeof(*h));
    if (h == NULL)
        abort();
    h->hold = sbx_http_req_hold(req);
    h->t = *t;
    snprintf(h->id, sizeof(h->id), "%s", l->rec->id);
    return h;
}

/* Serves a request for l: proxied if it runs; else it waits for what is under way, is woken
 * up (autoResume: a sandbox paused with its memory, resumed for its create-time timeout), or
 * is answered as for a sandbox that is not there (502, spec lifecycle.md §1). */
static void
route(struct sbx_http_req *req, struct sbx_live *l, const struct target *t)
{
    if (sbx_live_is_running(l)) {
        proxy_to_sandbox(req, l, t);
        return;
    }
    const char *transition = sbx_pause_transition(l);
    bool wakes = l->rec->auto_resume && (transition || l->rec->paused_memory);
    if (transition && strcmp(transition, "pausing") == 0 && wakes) {
        respond_proxy_error(req, 409, "The sandbox is still transitioning. Try again in a moment.",
                            0);
        return;
    }
    if (transition || !sbx_live_is_paused(l)) {
        sbx_pause_wait(l, on_unheld, hold(req, l, t)); /* a resume or a restart's settle */
        return;
    }
    if (!wakes) {
        respond_not_found(req);
        return;
    }
    /* Waking a secure sandbox through envd takes its access token, as on E2B: a request that
     * only names it must not start what its owner paused. */
    if (t->port == SBX_ENVD_PORT && l->rec->access_token &&
        !sbx_http_req_has_secret(req, "x-access-token", l->rec->access_token)) {
        respond_proxy_error(req, 403,
                            "This sandbox can't be resumed with the credentials provided. "
                            "Check your access token and try again.",
                            0);
        return;
    }
    sbx_log_info("sandbox_resume", "sandbox=%s reason=\"a request for port %d\"", l->rec->id,
                 t->port);
    int timeout = l->rec->timeout_s > 0 ? l->rec->timeout_s : SBX_DEFAULT_TIMEOUT_S;
    sbx_resume(l, true, timeout, on_unheld, hold(req, l, t));
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
        route(req, signed_for, &(struct target){.port = SBX_ENVD_PORT});
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
    sbx_http_req_mark_authenticated(req);
    route(req, l, &t);
}
