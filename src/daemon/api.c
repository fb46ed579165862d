/* The control-plane REST API (spec §2): /sandboxes and /v2/sandboxes. Every answer that is not
 * a success is {"code": <status>, "message": "..."} (the SDKs read the body's code). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "http/client.h"
#include "json/json.h"

#define MAX_PATH_PARTS 5

void
sbx_api_respond_json(struct sbx_http_req *req, int status, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    sbx_http_respond(req, status, "application/json", s ? s : "null", s ? strlen(s) : 4);
    free(s);
}

void
sbx_api_respond_err(struct sbx_http_req *req, const struct sbx_error *e)
{
    int status;
    switch (e->code) {
    case SBX_NOT_FOUND:
        status = 404;
        break;
    case SBX_INVALID_ARGUMENT:
        status = 400;
        break;
    case SBX_UNAUTHENTICATED:
        status = 401;
        break;
    case SBX_PERMISSION_DENIED:
        status = 403;
        break;
    case SBX_ALREADY_EXISTS:
    case SBX_FAILED_PRECONDITION:
        status = 409;
        break;
    case SBX_RESOURCE_EXHAUSTED:
    case SBX_UNAVAILABLE:
        status = 503;
        break;
    case SBX_UNIMPLEMENTED:
        status = 501;
        break;
    default:
        status = 500;
    }
    if (status >= 500)
        sbx_log_error("api", "route=%s status=%d error=\"%s\"", req->path, status, e->msg);
    sbx_http_respond_error(req, status, "%s", e->msg);
}

json_t *
sbx_api_time_json(int64_t ms)
{
    char buf[40];
    sbx_format_rfc3339(ms, buf, sizeof(buf));
    return json_string(buf);
}

static json_t *
parse_map(const char *s)
{
    json_t *v = s ? json_loads(s, 0, NULL) : NULL;
    return v ? v : json_object();
}

/* The Sandbox object of create and connect. */
json_t *
sbx_api_sandbox_json(const struct sbx_sandbox_rec *r)
{
    /* The domain makes the SDKs' getHost() name this server. */
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:s?}", "sandboxID", r->id, "templateID", r->template_id,
                  "clientID", SBX_DAEMON_CLIENT_ID, "envdVersion", SBX_ENVD_VERSION, "domain",
                  sbx_daemon->cfg.domain, "trafficAccessToken", r->traffic_token);
    if (r->alias)
        json_object_set_new(o, "alias", json_string(r->alias));
    if (r->access_token)
        json_object_set_new(o, "envdAccessToken", json_string(r->access_token));
    return o;
}

/* [{name, path}] of the volumes a sandbox mounts (the record also has their ids). */
static json_t *
volume_mounts_json(const char *stored)
{
    json_t *all = json_loads(stored ? stored : "[]", 0, NULL), *out = json_array();
    for (size_t i = 0; i < json_array_size(all); i++) {
        json_t *m = json_array_get(all, i);
        json_array_append_new(out, json_pack("{s:O,s:O}", "name", json_object_get(m, "name"),
                                             "path", json_object_get(m, "path")));
    }
    json_decref(all);
    return out;
}

/* ListedSandbox, and with detail the SandboxDetail of GET /sandboxes/{id}. */
static json_t *
listed_json(const struct sbx_sandbox_rec *r, bool detail)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:o,s:o,s:i,s:i,s:i,s:s,s:s,s:o}", "sandboxID", r->id,
                          "templateID", r->template_id, "clientID", SBX_DAEMON_CLIENT_ID,
                          "startedAt", sbx_api_time_json(r->started_at_ms), "endAt",
                          sbx_api_time_json(r->end_at_ms), "cpuCount", r->cpu_count, "memoryMB",
                          r->memory_mb, "diskSizeMB", r->disk_mb, "state", r->state, "envdVersion",
                          SBX_ENVD_VERSION, "metadata", parse_map(r->metadata_json));
    json_object_set_new(o, "volumeMounts", volume_mounts_json(r->volume_mounts_json));
    if (r->alias)
        json_object_set_new(o, "alias", json_string(r->alias));
    if (detail) {
        if (r->access_token)
            json_object_set_new(o, "envdAccessToken", json_string(r->access_token));
        /* Without the sandbox network (--network-cidr off) nothing reaches the internet,
         * whatever the create asked. */
        json_object_set_new(o, "allowInternetAccess",
                            json_boolean(r->allow_internet && sbx_daemon->cfg.net_on));
        json_object_set_new(o, "domain", json_string(sbx_daemon->cfg.domain));
        json_t *net = r->network_json ? json_loads(r->network_json, 0, NULL) : NULL;
        if (net) {
            /* getInfo never shows an egress proxy's password (spec §1.2). */
            json_object_del(json_object_get(net, "egressProxy"), "password");
            json_object_set_new(o, "network", net);
        }
        json_object_set_new(o, "lifecycle",
                            json_pack("{s:s,s:b}", "onTimeout", r->auto_pause ? "pause" : "kill",
                                      "autoResume", r->auto_resume));
        if (strcmp(r->state, "paused") == 0)
            json_object_set_new(o, "pauseMode",
                                json_string(r->paused_memory ? "full" : "filesystem"));
    }
    return o;
}

/* The built-in templates' names (spawner/templates.c), which /metrics always shows. */
const char *const sbx_api_templates[SBX_API_N_TEMPLATES] = {
    "base", "code-interpreter-v1", "code-interpreter", "code-interpreter-beta", "sbx"};

static int
parse_timeout(json_t *body, int def, int *out, struct sbx_error **err)
{
    int64_t t = def;
    if (sbx_json_opt_int(body, "timeout", &t, err) < 0)
        return -1;
    if (t <= 0 || t > SBX_MAX_TIMEOUT_S)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "timeout must be between 1 and %d seconds", SBX_MAX_TIMEOUT_S);
    *out = (int)t;
    return 0;
}

/* The timeout policy of create (spec lifecycle.md §3.3): autoPause, autoPauseMemory and
 * autoResume {enabled}, with the checks the SDKs make client-side repeated. */
static int
parse_lifecycle(json_t *body, struct sbx_create_opts *o, struct sbx_error **err)
{
    json_t *resume = json_object_get(body, "autoResume");
    int has_memory;
    if (sbx_json_opt_bool(body, "autoPause", &o->auto_pause, err) < 0 ||
        (has_memory = sbx_json_opt_bool(body, "autoPauseMemory", &o->auto_pause_memory, err)) < 0)
        return -1;
    if (resume && !json_is_null(resume) &&
        (!json_is_object(resume) || sbx_json_opt_bool(resume, "enabled", &o->auto_resume, err) < 0))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "autoResume must be an object {\"enabled\": bool}");
    if (has_memory && !o->auto_pause_memory && !o->auto_pause)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "autoPauseMemory=false only applies when autoPause is true.");
    if (o->auto_resume && !o->auto_pause)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "autoResume only applies when autoPause is true.");
    /* A sandbox paused to its disk lost its processes: traffic cannot wake it as it was. */
    if (o->auto_resume && !o->auto_pause_memory)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "autoResume cannot be enabled with autoPauseMemory=false: a "
                             "filesystem-only pause must be resumed with connect.");
    return 0;
}

/* Create fields of E2B that this server does not implement. The SDKs send them only when the
 * caller set them, so a value that asks for something is refused (501, naming the field)
 * rather than accepted and ignored; an empty value asks for nothing. Fields no SDK or spec
 * names are ignored, so newer clients keep working (docs/features.md). `mcp` is not one of
 * them: the SDKs start the gateway themselves (`mcp-gateway --config` as root, through
 * commands) once the sandbox exists, and kill it if that fails; the server has nothing to do
 * with it beyond checking its shape. */
static int
refuse_unsupported(json_t *body, struct sbx_error **err)
{
    json_t *mcp = json_object_get(body, "mcp"), *iam = json_object_get(body, "iam");
    if (mcp && !json_is_null(mcp) && !json_is_object(mcp))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "mcp must be an object");
    if (iam && !json_is_null(iam) &&
        (!json_is_object(iam) || json_object_size(json_object_get(iam, "tokens")) > 0))
        return sbx_error_set(err, SBX_UNIMPLEMENTED, 0,
                             "iam (workload identity tokens) is not supported by this server");
    return 0;
}

/* ---- handlers; each gets the parsed body (NULL for bodiless requests) ---- */

int
sbx_api_create_opts_parse(json_t *body, bool v2, struct sbx_create_opts *out,
                          struct sbx_error **err)
{
    struct sbx_create_opts o = {
        .template_id = "base", .secure = true, .allow_internet = true, .auto_pause_memory = true};
    const char *tmpl = NULL;
    int internet_set;
    if (!json_is_object(body))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "request body must be a JSON object");
    if (refuse_unsupported(body, err) < 0 ||
        sbx_json_opt_string(body, "templateID", &tmpl, err) < 0 ||
        parse_timeout(body, SBX_DEFAULT_TIMEOUT_S, &o.timeout_s, err) < 0 ||
        sbx_json_opt_bool(body, "secure", &o.secure, err) < 0 ||
        (internet_set = sbx_json_opt_bool(body, "allow_internet_access", &o.allow_internet, err)) <
            0 ||
        parse_lifecycle(body, &o, err) < 0 ||
        sbx_json_opt_string_map(body, "metadata", &o.metadata, err) < 0 ||
        sbx_json_opt_env_map(body, "envVars", &o.env_vars, err) < 0)
        return -1;
    json_t *mounts = json_object_get(body, "volumeMounts");
    if (mounts && !json_is_null(mounts) && json_array_size(mounts) > 0) {
        if (sbx_volumes_check_mounts(mounts, err) < 0)
            return -1;
        o.volume_mounts = mounts;
    } else if (mounts && !json_is_null(mounts) && !json_is_array(mounts)) {
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "volumeMounts must be an array");
    }
    if (v2)
        o.secure = true; /* v2 sandboxes are always secured */
    if (tmpl) {
        o.template_id = tmpl; /* resolved at create (a name of the store's is no pure check) */
        o.alias = tmpl;
    }
    /* json_dumpb with no buffer only measures the encoding. */
    if (o.metadata && json_dumpb(o.metadata, NULL, 0, JSON_COMPACT) > SBX_MAX_METADATA_BYTES)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "metadata larger than %d bytes",
                             SBX_MAX_METADATA_BYTES);
    if (sbx_netset_decode(json_object_get(body, "network"), internet_set ? o.allow_internet : -1,
                          &o.network, err) < 0)
        return -1;
    /* The traffic token guards user ports only where the access token guards envd. */
    if (json_is_false(json_object_get(o.network, "allowPublicTraffic")) && !o.secure) {
        json_decref(o.network);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "You cannot create a sandbox without public access unless you "
                             "enable secure envd access via 'secure' flag.");
    }
    *out = o;
    return 0;
}

void
sbx_api_create_opts_fini(struct sbx_create_opts *o)
{
    json_decref(o->network);
    o->network = NULL;
}

int
sbx_api_timeout_parse(json_t *body, bool extend_only, int64_t *out, struct sbx_error **err)
{
    int64_t secs = 0;
    const char *key = extend_only ? "duration" : "timeout";
    int rc = sbx_json_opt_int(body, key, &secs, err);
    if (rc < 0)
        return -1;
    if ((rc == 0 && !extend_only) || secs < 0 || secs > SBX_MAX_TIMEOUT_S)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "'%s' must be an integer between 0 and %d seconds", key,
                             SBX_MAX_TIMEOUT_S);
    *out = secs;
    return 0;
}

static void
on_created(struct sbx_live *l, struct sbx_error *err, uint64_t spawn_us, void *ud)
{
    struct sbx_http_req *req = sbx_http_hold_release(ud);
    if (l)
        sbx_log_info("sandbox_start", "sandbox=%s template=%s timeout_s=%lld spawn_us=%llu",
                     l->rec->id, l->rec->template_id,
                     (long long)(l->rec->end_at_ms - l->rec->started_at_ms) / 1000,
                     (unsigned long long)spawn_us);
    if (req == NULL)
        return; /* the client went away; the sandbox lives until its timeout */
    if (l == NULL) {
        sbx_api_respond_err(req, err);
        return;
    }
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", l->rec->id);
    char hdr[32];
    snprintf(hdr, sizeof(hdr), "%llu", (unsigned long long)spawn_us);
    sbx_http_add_header(req, "X-Sbx-Spawn-Us", hdr);
    sbx_api_respond_json(req, 201, sbx_api_sandbox_json(l->rec));
}

/* What the daemon's own network configuration says of a sandbox's settings; answers the
 * error itself. */
static int
check_network(struct sbx_http_req *req, json_t *stored)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    const struct sbx_daemon_config *c = &sbx_daemon->cfg;
    if (!c->net_on && (json_object_get(stored, "allowOut") || json_object_get(stored, "denyOut") ||
                       json_object_get(stored, "egressProxy"))) {
        sbx_http_respond_error(req, 400,
                               "network rules need the sandbox network, which is off on this "
                               "server (sbx serve --network-cidr off)");
        return -1;
    }
    if (sbx_netset_check_proxy(stored, c->net.blocked, c->net.n_blocked, &err) < 0) {
        sbx_api_respond_err(req, err);
        return -1;
    }
    return 0;
}

static void
create(struct sbx_http_req *req, json_t *body, bool v2)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_create_opts o;
    /* A retried create is not recognised by its key: honouring the header would be a promise
     * this server does not keep. */
    if (sbx_http_req_header(req, "idempotency-key")) {
        sbx_http_respond_error(req, 501,
                               "the Idempotency-Key header (idempotent create) is not supported "
                               "by this server");
        return;
    }
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    if (sbx_api_create_opts_parse(body, v2, &o, &err) < 0) {
        sbx_api_respond_err(req, err);
        return;
    }
    if (sbx_templates_resolve(sbx_daemon->store, o.template_id, &ref, &err) < 0) {
        /* A template this server lacks is the request's error: 400, naming it. */
        if (err->code == SBX_NOT_FOUND)
            err->code = SBX_INVALID_ARGUMENT;
        sbx_api_respond_err(req, err);
        sbx_api_create_opts_fini(&o);
        return;
    }
    /* The sandbox is of the template, in the size the template was built for. */
    o.template_id = ref.id;
    o.cpu_count = ref.cpu_count;
    o.memory_mb = ref.memory_mb;
    _cleanup_free_ char *mounts = NULL;
    if (o.volume_mounts && (mounts = sbx_volumes_resolve(o.volume_mounts, &err)) == NULL) {
        sbx_api_respond_err(req, err);
        sbx_api_create_opts_fini(&o);
        return;
    }
    o.volume_mounts_json = mounts;
    if (check_network(req, o.network) < 0) {
        sbx_api_create_opts_fini(&o);
        return;
    }
    sbx_lifecycle_create(&o, on_created, sbx_http_req_hold(req));
    sbx_api_create_opts_fini(&o);
}

static struct sbx_live *
find_or_404(struct sbx_http_req *req, const char *id)
{
    struct sbx_live *l = sbx_lifecycle_find(id);
    if (l == NULL) {
        sbx_http_respond_error(req, 404, "sandbox '%s' not found", id);
        return NULL;
    }
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", l->rec->id);
    sbx_live_touch(sbx_daemon, l); /* the API key holder uses it */
    return l;
}

static struct sbx_http_req *
op_done(void *hold, struct sbx_error *err, uint64_t took_us)
{
    struct sbx_http_req *req = sbx_http_hold_release(hold);
    if (req && err) {
        sbx_api_respond_err(req, err);
        return NULL;
    }
    if (req) {
        char hdr[32];
        snprintf(hdr, sizeof(hdr), "%llu", (unsigned long long)took_us);
        sbx_http_add_header(req, "X-Sbx-Op-Us", hdr); /* for bench/, as X-Sbx-Spawn-Us */
    }
    return req;
}

static void
on_resumed(struct sbx_live *l, struct sbx_error *err, uint64_t took_us, void *ud)
{
    struct sbx_http_req *req = op_done(ud, l ? NULL : err, took_us);
    if (req)
        sbx_api_respond_json(req, 201, sbx_api_sandbox_json(l->rec));
}

/* POST /sandboxes/{id}/connect (and /v2/...): a running sandbox's life is extended, never
 * shortened (200); a paused one is resumed (201), after a pause under way if there is one.
 * "memory": false boots it again from its disk even if its memory was kept (onResume:
 * 'reboot'). The deprecated POST /sandboxes/{id}/resume is the same for a paused sandbox
 * (its timeout defaults to 15 s) and 409 for a running one. */
static void
connect_sandbox(struct sbx_http_req *req, const char *id, json_t *body, bool resume_only)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_live *l = find_or_404(req, id);
    if (l == NULL)
        return;
    int timeout = SBX_DEFAULT_TIMEOUT_S;
    bool memory = true, auto_pause = l->rec->auto_pause;
    if (parse_timeout(body, resume_only ? SBX_RESUME_DEFAULT_TIMEOUT_S : SBX_DEFAULT_TIMEOUT_S,
                      &timeout, &err) < 0 ||
        sbx_json_opt_bool(body, "memory", &memory, &err) < 0 ||
        (resume_only && sbx_json_opt_bool(body, "autoPause", &auto_pause, &err) < 0)) {
        sbx_api_respond_err(req, err);
        return;
    }
    if (sbx_live_is_running(l)) {
        if (resume_only) {
            sbx_http_respond_error(req, 409, "Sandbox %s is already running", l->rec->id);
            return;
        }
        int64_t end = sbx_wall_ms() + (int64_t)timeout * 1000;
        if (end > l->rec->end_at_ms && sbx_lifecycle_set_end(l, end, &err) < 0) {
            sbx_api_respond_err(req, err);
            return;
        }
        sbx_api_respond_json(req, 200, sbx_api_sandbox_json(l->rec));
        return;
    }
    if (auto_pause != l->rec->auto_pause) {
        if (sbx_store_sandbox_set_auto_pause(sbx_daemon->store, l->rec->id, auto_pause, &err) < 0) {
            sbx_api_respond_err(req, err);
            return;
        }
        l->rec->auto_pause = auto_pause;
    }
    sbx_resume(l, memory, timeout, on_resumed, sbx_http_req_hold(req));
}

static void
on_paused(struct sbx_live *l, struct sbx_error *err, uint64_t took_us, void *ud)
{
    struct sbx_http_req *req = op_done(ud, l ? NULL : err, took_us);
    if (req)
        sbx_http_respond(req, 204, NULL, NULL, 0);
}

/* A strict pause (requireHealthyGuest) asks the agent first. */
struct strict_pause {
    struct sbx_http_hold *w;
    char id[SBX_STORE_ID_MAX + 1];
    bool memory;
};

static void
on_health(int status, const char *body, size_t len, const char *error, void *ud)
{
    struct strict_pause *p = ud;
    struct sbx_live *l = sbx_lifecycle_find(p->id);
    if (status == 204 && l) {
        sbx_pause(l, p->memory, on_paused, p->w);
    } else {
        struct sbx_http_req *req = sbx_http_hold_release(p->w);
        if (req && l == NULL)
            sbx_http_respond_error(req, 404, "sandbox '%s' not found", p->id);
        else if (req)
            sbx_http_respond_error(
                req, 503, "the sandbox's agent did not answer (%d); it keeps running", status);
    }
    free(p);
}

/* POST /sandboxes/{id}/pause {"memory"?: bool (default true), "requireHealthyGuest"?: bool}:
 * 204, or 409 if it is paused already or being paused or resumed. */
static void
pause_sandbox(struct sbx_http_req *req, const char *id, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_live *l = find_or_404(req, id);
    if (l == NULL)
        return;
    bool memory = true, strict = false;
    if (sbx_json_opt_bool(body, "memory", &memory, &err) < 0 ||
        sbx_json_opt_bool(body, "requireHealthyGuest", &strict, &err) < 0) {
        sbx_api_respond_err(req, err);
        return;
    }
    if (!strict || !sbx_live_is_running(l)) {
        sbx_pause(l, memory, on_paused, sbx_http_req_hold(req));
        return;
    }
    struct strict_pause *p = calloc(1, sizeof(*p));
    if (p == NULL)
        abort();
    snprintf(p->id, sizeof(p->id), "%s", l->rec->id);
    p->memory = memory;
    p->w = sbx_http_req_hold(req);
    sbx_http_call(sbx_daemon->loop, l->sock_path, "GET", "/health", NULL, NULL, 1024,
                  SBX_PAUSE_HEALTH_MS, on_health, p);
}

/* A paused sandbox's clock stands still: its timeout changes when it is resumed. */
static bool
refuse_if_paused(struct sbx_http_req *req, const struct sbx_live *l)
{
    if (sbx_live_is_running(l))
        return false;
    sbx_http_respond_error(req, 409, "sandbox '%s' is %s; connect to resume it first", l->rec->id,
                           sbx_pause_transition(l) ? sbx_pause_transition(l) : "paused");
    return true;
}

static void
set_timeout(struct sbx_http_req *req, const char *id, json_t *body, bool extend_only)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_live *l = find_or_404(req, id);
    if (l == NULL || refuse_if_paused(req, l))
        return;
    int64_t secs = 0;
    if (sbx_api_timeout_parse(body, extend_only, &secs, &err) < 0) {
        sbx_api_respond_err(req, err);
        return;
    }
    int64_t end = sbx_wall_ms() + secs * 1000;
    if (extend_only && end < l->rec->end_at_ms)
        end = l->rec->end_at_ms;
    if (sbx_lifecycle_set_end(l, end, &err) < 0) {
        sbx_api_respond_err(req, err);
        return;
    }
    sbx_http_respond(req, 204, NULL, NULL, 0);
}

static void
on_killed(struct sbx_error *err, void *ud)
{
    struct sbx_http_req *req = sbx_http_hold_release(ud);
    if (req == NULL)
        return;
    if (err)
        sbx_api_respond_err(req, err);
    else
        sbx_http_respond(req, 204, NULL, NULL, 0);
}

static void
kill_sandbox(struct sbx_http_req *req, const char *id)
{
    struct sbx_live *l = find_or_404(req, id);
    if (l)
        sbx_lifecycle_kill(l, on_killed, sbx_http_req_hold(req));
}

static void
get_info(struct sbx_http_req *req, const char *id)
{
    struct sbx_live *l = find_or_404(req, id);
    if (l)
        sbx_api_respond_json(req, 200, listed_json(l->rec, true));
}

/* PUT /sandboxes/{id}/network: the new rules are the spawner's first, then stored. */
struct network_update {
    struct sbx_http_hold *w;
    char id[SBX_STORE_ID_MAX + 1];
    bool allow_internet;
    char *stored; /* the new settings */
};

/* The new rules are on disk: the client may be told. */
static void
network_answer(void *ud)
{
    struct network_update *u = ud;
    struct sbx_http_req *req = sbx_http_hold_release(u->w);
    if (req)
        sbx_http_respond(req, 204, NULL, NULL, 0);
    free(u);
}

static void
on_network_applied(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct network_update *u = ud;
    struct sbx_live *l = sbx_lifecycle_find(u->id);
    _cleanup_error_ struct sbx_error *store_err = NULL;
    if (err == NULL && l) {
        if (sbx_store_sandbox_update_network(sbx_daemon->store, u->id, u->allow_internet, u->stored,
                                             &store_err) < 0) {
            err = store_err;
        } else {
            free(l->rec->network_json);
            l->rec->network_json = steal_pointer(&u->stored);
            l->rec->allow_internet = u->allow_internet;
            sbx_netset_free(l->net);
            l->net = sbx_netset_load(l->rec->network_json);
            sbx_durable(sbx_durable_mark(), network_answer, u);
            return;
        }
    }
    struct sbx_http_req *req = sbx_http_hold_release(u->w);
    if (req && l == NULL)
        sbx_http_respond_error(req, 404, "sandbox '%s' not found", u->id);
    else if (req)
        sbx_api_respond_err(req, err);
    free(u->stored);
    free(u);
}

static void
update_network(struct sbx_http_req *req, const char *id, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_live *l = find_or_404(req, id);
    if (l == NULL)
        return;
    json_t *stored = NULL;
    if (sbx_netset_decode_update(body, l->rec->network_json, &stored, &err) < 0) {
        sbx_api_respond_err(req, err);
        return;
    }
    if (check_network(req, stored) < 0) {
        json_decref(stored);
        return;
    }
    struct network_update *u = calloc(1, sizeof(*u));
    if (u == NULL)
        abort();
    snprintf(u->id, sizeof(u->id), "%s", l->rec->id);
    bool allow = l->rec->allow_internet;
    /* The flag is stored only when given; the rules are the body's alone (spec §4). */
    sbx_json_opt_bool(body, "allow_internet_access", &allow, NULL);
    u->allow_internet = allow;
    u->stored = json_object_size(stored) ? json_dumps(stored, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    struct sbx_netset *n = sbx_netset_load(u->stored);
    json_decref(stored);
    struct sbx_spawner_msg msg = {.op = SBX_SPAWNER_NET_POLICY};
    snprintf(msg.id, sizeof(msg.id), "%s", l->rec->id);
    sbx_netset_to_msg(n, &msg);
    sbx_netset_free(n);
    u->w = sbx_http_req_hold(req);
    sbx_spawner_call(&msg, -1, on_network_applied, u);
}

struct metrics_query {
    struct sbx_http_hold *w;
    char id[SBX_STORE_ID_MAX + 1];
    int64_t start_s, end_s;
};

static void
on_stats(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct metrics_query *q = ud;
    struct sbx_http_req *req = sbx_http_hold_release(q->w);
    struct sbx_live *l = sbx_lifecycle_find(q->id);
    int64_t now = sbx_wall_ms();
    if (req == NULL) {
        free(q);
        return;
    }
    if (l == NULL) {
        sbx_http_respond_error(req, 404, "sandbox '%s' not found", q->id);
        free(q);
        return;
    }
    if (err) {
        sbx_api_respond_err(req, err);
        free(q);
        return;
    }
    const struct sbx_sandbox_stats *st = &reply->stats;
    json_t *arr = json_array();
    /* Metrics are sampled when asked for: the one sample is "now", inside the window. */
    if (now / 1000 >= q->start_s && now / 1000 <= q->end_s + 1) {
        double elapsed_ns = (double)(now - l->last_cpu_wall_ms) * 1e6;
        double pct = elapsed_ns > 0 ? 100.0 * (double)(st->cpu_usage_ns - l->last_cpu_ns) /
                                          elapsed_ns / l->rec->cpu_count
                                    : 0.0;
        /* CFS enforces the quota per period, so short windows can read a little above it. */
        if (pct < 0)
            pct = 0;
        if (pct > 100.0 * l->rec->cpu_count)
            pct = 100.0 * l->rec->cpu_count;
        l->last_cpu_ns = st->cpu_usage_ns;
        l->last_cpu_wall_ms = now;
        json_array_append_new(arr,
                              json_pack("{s:o,s:I,s:i,s:f,s:I,s:I,s:I,s:I,s:I}", "timestamp",
                                        sbx_api_time_json(now), "timestampUnix",
                                        (json_int_t)(now / 1000), "cpuCount", l->rec->cpu_count,
                                        "cpuUsedPct", pct, "memUsed", (json_int_t)st->memory_bytes,
                                        "memTotal", (json_int_t)st->memory_limit_bytes, "memCache",
                                        (json_int_t)st->memory_cache_bytes, "diskUsed",
                                        (json_int_t)st->disk_fs_used_bytes, "diskTotal",
                                        (json_int_t)st->disk_total_bytes));
    }
    sbx_api_respond_json(req, 200, arr);
    free(q);
}

static bool
parse_unix_seconds(const char *s, int64_t *out)
{
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 0 || v > INT64_MAX / 1000)
        return false;
    *out = v;
    return true;
}

static void
metrics(struct sbx_http_req *req, const char *id)
{
    struct sbx_live *l = find_or_404(req, id);
    if (l == NULL)
        return;
    _cleanup_free_ char *start = sbx_http_req_query(req, "start");
    _cleanup_free_ char *end = sbx_http_req_query(req, "end");
    int64_t start_s = 0, end_s = INT64_MAX / 1000;
    const char *bad = start && !parse_unix_seconds(start, &start_s) ? "start"
                      : end && !parse_unix_seconds(end, &end_s)     ? "end"
                                                                    : NULL;
    if (bad) {
        sbx_http_respond_error(req, 400, "'%s' must be a time in seconds since the epoch", bad);
        return;
    }
    if (!sbx_live_is_running(l)) {
        sbx_api_respond_json(req, 200, json_array()); /* nothing runs: nothing to sample */
        return;
    }
    struct metrics_query *q = calloc(1, sizeof(*q));
    if (q == NULL)
        abort();
    snprintf(q->id, sizeof(q->id), "%s", l->rec->id);
    q->start_s = start_s;
    q->end_s = end_s;
    q->w = sbx_http_req_hold(req);
    struct sbx_spawner_msg msg = {.op = SBX_SPAWNER_STATS};
    snprintf(msg.id, sizeof(msg.id), "%s", l->rec->id);
    sbx_spawner_call(&msg, -1, on_stats, q);
}

/* metadata arrives encoded three times (spec §2.5): the query layer decoded once; here the
 * whole value is decoded again, split into pairs, and each key and value decoded. */
static int
parse_metadata_filter(const char *raw, json_t *out, struct sbx_error **err)
{
    size_t n = 0;
    _cleanup_free_ char *s = sbx_http_percent_decode(raw, strlen(raw), false, &n);
    if (s == NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid metadata filter encoding");
    char *save = NULL;
    for (char *pair = strtok_r(s, "&", &save); pair; pair = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(pair, '=');
        if (eq == NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "metadata filter must be key=value pairs");
        *eq = '\0';
        _cleanup_free_ char *k = sbx_http_percent_decode(pair, strlen(pair), false, NULL);
        _cleanup_free_ char *v = sbx_http_percent_decode(eq + 1, strlen(eq + 1), false, NULL);
        if (k == NULL || v == NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid metadata filter encoding");
        json_object_set_new(out, k, json_string(v));
    }
    return 0;
}

/* GET /v2/sandboxes, and the deprecated GET /sandboxes with the same filters and pages. */
static void
list_sandboxes(struct sbx_http_req *req)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_store_query q = {0};
    /* Declared before the first goto: jumping past it would run its cleanup on garbage. */
    _cleanup_sandbox_list_ struct sbx_sandbox_list *list = NULL;
    _cleanup_free_ char *meta = sbx_http_req_query(req, "metadata");
    _cleanup_free_ char *state = sbx_http_req_query(req, "state");
    _cleanup_free_ char *limit = sbx_http_req_query(req, "limit");
    _cleanup_free_ char *token = sbx_http_req_query(req, "nextToken");
    _cleanup_free_ char *order = sbx_http_req_query(req, "order");
    _cleanup_free_ char *after = sbx_http_req_query(req, "startedAfter");
    _cleanup_free_ char *tmpl = sbx_http_req_query(req, "template");
    json_t *filter = json_object();
    const char *keys[64], *vals[64];
    if (meta && parse_metadata_filter(meta, filter, &err) < 0)
        goto fail;
    const char *k;
    json_t *v;
    json_object_foreach (filter, k, v) {
        if (q.n_meta == 64) {
            sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "too many metadata filters");
            goto fail;
        }
        keys[q.n_meta] = k;
        vals[q.n_meta++] = json_string_value(v);
    }
    q.meta_keys = keys;
    q.meta_values = vals;
    if (state) {
        char *save = NULL;
        for (char *s = strtok_r(state, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
            if (strcmp(s, "running") == 0)
                q.states |= SBX_STORE_STATE_RUNNING;
            else if (strcmp(s, "paused") == 0)
                q.states |= SBX_STORE_STATE_PAUSED;
            else {
                sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "unknown state '%s'", s);
                goto fail;
            }
        }
    }
    if (limit) {
        char *end = NULL;
        long n = strtol(limit, &end, 10);
        if (*limit == '\0' || *end != '\0' || n < 1 || n > SBX_STORE_LIST_MAX) {
            sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "limit must be between 1 and %d",
                          SBX_STORE_LIST_MAX);
            goto fail;
        }
        q.limit = (int)n;
    }
    if (order && strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "order must be 'asc' or 'desc'");
        goto fail;
    }
    q.ascending = order && strcmp(order, "asc") == 0;
    if (after) {
        if (sbx_parse_rfc3339(after, &q.started_after_ms) < 0) {
            sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "startedAfter must be RFC 3339");
            goto fail;
        }
        q.has_started_after = true;
    }
    q.template_id = tmpl;
    q.next_token = token;
    if (sbx_store_sandbox_query(sbx_daemon->store, &q, &list, &err) < 0)
        goto fail;
    json_t *arr = json_array();
    for (size_t i = 0; i < list->n; i++) {
        /* Being destroyed (its log saved, then the spawner): already gone for clients; it
         * keeps its row until nothing of it is left (crash safety). */
        struct sbx_live *l = sbx_live_find(sbx_daemon, list->items[i]->id);
        if (l == NULL || !l->dying)
            json_array_append_new(arr, listed_json(list->items[i], false));
    }
    if (list->next_token)
        sbx_http_add_header(req, "X-Next-Token", list->next_token);
    json_decref(filter);
    sbx_api_respond_json(req, 200, arr);
    return;
fail:
    json_decref(filter);
    sbx_api_respond_err(req, err);
}

/* ---- dispatch ---- */

static size_t
split_path(char *path, char **parts)
{
    size_t n = 0;
    char *save = NULL;
    for (char *p = strtok_r(path, "/", &save); p; p = strtok_r(NULL, "/", &save)) {
        if (n == MAX_PATH_PARTS)
            return MAX_PATH_PARTS + 1;
        parts[n++] = p;
    }
    return n;
}

static void
dispatch(struct sbx_http_req *req, json_t *body, bool admin)
{
    _cleanup_free_ char *path = strdup(req->path);
    char *p[MAX_PATH_PARTS];
    size_t n = path ? split_path(path, p) : 0;
    const char *m = req->method;
    bool get = strcmp(m, "GET") == 0, post = strcmp(m, "POST") == 0, del = strcmp(m, "DELETE") == 0,
         put = strcmp(m, "PUT") == 0;
    /* /v2/sandboxes... is the same resource as /sandboxes... */
    bool v2 = n > 0 && strcmp(p[0], "v2") == 0;
    char **r = v2 ? p + 1 : p;
    size_t rn = v2 ? n - 1 : n;
    if (!v2 && n >= 1 && n <= 2 && strcmp(p[0], "volumes") == 0) {
        req->route_class = "volumes";
        sbx_volumes_api(req, body, p, n);
        return;
    }
    /* /templates..., /v2/templates... and /v3/templates: the Template SDK's. Path parameters
     * arrive as one percent-encoded segment each ("team%2Fname%3Atag"). */
    bool v3 = n > 0 && strcmp(p[0], "v3") == 0;
    char **t = v2 || v3 ? p + 1 : p;
    size_t tn = v2 || v3 ? n - 1 : n;
    if (tn >= 1 && tn <= MAX_PATH_PARTS && strcmp(t[0], "templates") == 0) {
        req->route_class = "templates";
        char *decoded[MAX_PATH_PARTS] = {0};
        bool ok = true;
        for (size_t i = 0; i < tn; i++) {
            size_t len;
            decoded[i] = sbx_http_percent_decode(t[i], strlen(t[i]), false, &len);
            ok = ok && decoded[i] && strlen(decoded[i]) == len;
        }
        if (ok)
            sbx_api_templates_dispatch(req, body, decoded, tn);
        else
            sbx_http_respond_error(req, 400, "bad percent-encoding in %s", req->path);
        for (size_t i = 0; i < tn; i++)
            free(decoded[i]);
        return;
    }
    if (!v2 && n == 1 && get && strcmp(p[0], "pools") == 0) {
        req->route_class = "pools";
        sbx_api_respond_json(req, 200, sbx_pool_status());
        return;
    }
    if (!v2 && n == 1 && strcmp(p[0], "metrics") == 0 && get) {
        req->route_class = "metrics";
        if (!admin) {
            sbx_http_respond_error(req, 403,
                                   "/metrics needs an admin API key (or serve it on its own "
                                   "address with --metrics-listen)");
            return;
        }
        return sbx_metrics_handle(req);
    }
    if (!v2 && n >= 1 && n <= 2 && strcmp(p[0], "api-keys") == 0) {
        req->route_class = "api_keys";
        if (!admin) {
            sbx_http_respond_error(req, 403, "managing API keys needs an admin API key");
            return;
        }
        return sbx_auth_keys_handle(req, p, n, body);
    }
    if (rn >= 1 && rn <= 3 && strcmp(r[0], "sandboxes") == 0) {
        req->route_class = "sandboxes";
        if (rn == 1 && post)
            return create(req, body, v2);
        if (rn == 1 && get)
            return list_sandboxes(req);
        if (rn == 2 && get && strcmp(r[1], "metrics") != 0)
            return get_info(req, r[1]);
        if (rn == 2 && del)
            return kill_sandbox(req, r[1]);
        if (rn == 3 && post && strcmp(r[2], "connect") == 0)
            return connect_sandbox(req, r[1], body, false);
        if (rn == 3 && post && strcmp(r[2], "resume") == 0)
            return connect_sandbox(req, r[1], body, true);
        if (rn == 3 && post && strcmp(r[2], "pause") == 0)
            return pause_sandbox(req, r[1], body);
        if (rn == 3 && post && strcmp(r[2], "timeout") == 0)
            return set_timeout(req, r[1], body, false);
        if (rn == 3 && post && strcmp(r[2], "refreshes") == 0)
            return set_timeout(req, r[1], body, true);
        if (rn == 3 && get && strcmp(r[2], "metrics") == 0)
            return metrics(req, r[1]);
        if (rn == 3 && get && strcmp(r[2], "logs") == 0)
            return sbx_logs_handle(req, r[1], v2);
        if (rn == 3 && put && strcmp(r[2], "network") == 0)
            return update_network(req, r[1], body);
        if (rn == 3 && post && strcmp(r[2], "snapshots") == 0)
            return sbx_snapshots_create(req, r[1], body);
        if (rn == 3 && post && strcmp(r[2], "fork") == 0)
            return sbx_snapshots_fork(req, r[1], body);
    }
    if (!v2 && n == 1 && get && strcmp(p[0], "snapshots") == 0) {
        req->route_class = "snapshots";
        return sbx_snapshots_list(req);
    }
    if (sbx_api_unsupported(req, p, n))
        return;
    sbx_http_respond_error(req, 404, "no route for %s %s", m, req->path);
}

/* Marks, in req->data until the body is read, a request made with an admin key. */
static char admin_mark;

static void
on_body(struct sbx_http_req *req, struct sbx_buf *raw)
{
    bool admin = req->data == &admin_mark;
    req->data = NULL;
    json_t *body = NULL;
    if (raw->len > 0) {
        json_error_t jerr;
        body = json_loadb(raw->data, raw->len, 0, &jerr);
        if (body == NULL) {
            sbx_http_respond_error(req, 400, "invalid JSON body: %s", jerr.text);
            return;
        }
        if (!json_is_object(body)) {
            json_decref(body);
            sbx_http_respond_error(req, 400, "request body must be a JSON object");
            return;
        }
    }
    dispatch(req, body, admin);
    json_decref(body);
}

void
sbx_api_handle(struct sbx_http_req *req)
{
    if (strcmp(req->path, "/health") == 0 && strcmp(req->method, "GET") == 0) {
        req->route_class = "health";
        sbx_http_respond(req, 200, "application/json", "{\"status\":\"ok\"}", 15);
        return;
    }
    /* The volume content API takes a volume's own token, not an API key; so does a COPY
     * archive's upload, its URL's. */
    if (sbx_volumes_content(req))
        return;
    if (sbx_api_templates_is_upload(req)) {
        sbx_api_templates_upload(req);
        return;
    }
    struct sbx_api_key_auth who;
    if (!sbx_auth_check(req, &who))
        return;
    sbx_http_req_mark_authenticated(req);
    req->data = who.admin ? &admin_mark : NULL; /* for on_body */
    sbx_http_req_read_body(req, SBX_HTTP_MAX_BUFFERED_BODY, on_body);
}
