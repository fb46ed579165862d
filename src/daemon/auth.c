/* API keys in the front end: who a control-plane request is (its X-API-Key, checked against
 * the store on every request, so a revoked key fails from its very next request, on any
 * connection), what it may do (admin routes), how often an address may fail to authenticate,
 * and the /api-keys routes that manage keys. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "http/ratelimit.h"
#include "json/json.h"

/* Failed authentications of one client address within the current window. */
struct failures {
    char remote[SBX_HTTP_SOURCE_MAX];
    uint64_t window_start_ms;
    int count;
};

/* A key's last use as last written to the store (written at most once a minute). */
struct touched {
    char id[37];
    int64_t at_ms;
};

static struct {
    struct failures failures[SBX_AUTH_SOURCES_MAX + 1]; /* the last one: "others" */
    size_t n_failures;
    struct touched touched[SBX_MAX_API_KEYS];
    size_t n_touched;
} auth;

/* The entry of remote: its own, a reused expired one, or when the table is full of live ones
 * the shared "others" (an attacker with many addresses then locks out only new addresses that
 * fail too, never a request with a valid key from an address of its own). */
static struct failures *
failures_of(const char *remote, uint64_t now)
{
    struct failures *expired = NULL;
    for (size_t i = 0; i < auth.n_failures; i++) {
        struct failures *f = &auth.failures[i];
        if (strcmp(f->remote, remote) == 0)
            return f;
        if (expired == NULL && now - f->window_start_ms >= SBX_AUTH_FAIL_WINDOW_MS)
            expired = f;
    }
    struct failures *f = expired;
    if (f == NULL && auth.n_failures < SBX_AUTH_SOURCES_MAX)
        f = &auth.failures[auth.n_failures++];
    if (f == NULL) {
        f = &auth.failures[SBX_AUTH_SOURCES_MAX];
        if (f->remote[0] == '\0')
            snprintf(f->remote, sizeof(f->remote), "others");
        return f;
    }
    *f = (struct failures){.window_start_ms = now};
    snprintf(f->remote, sizeof(f->remote), "%s", remote);
    return f;
}

static struct failures *
find_failures(const char *remote, uint64_t now)
{
    for (size_t i = 0; i < auth.n_failures; i++)
        if (strcmp(auth.failures[i].remote, remote) == 0 &&
            now - auth.failures[i].window_start_ms < SBX_AUTH_FAIL_WINDOW_MS)
            return &auth.failures[i];
    struct failures *others = &auth.failures[SBX_AUTH_SOURCES_MAX];
    if (auth.n_failures == SBX_AUTH_SOURCES_MAX && others->remote[0] &&
        now - others->window_start_ms < SBX_AUTH_FAIL_WINDOW_MS)
        return others;
    return NULL;
}

static void
count_failure(const char *remote, uint64_t now)
{
    struct failures *f = failures_of(remote, now);
    if (now - f->window_start_ms >= SBX_AUTH_FAIL_WINDOW_MS)
        *f = (struct failures){.window_start_ms = now, .count = 0};
    if (f->remote[0] == '\0')
        snprintf(f->remote, sizeof(f->remote), "%s", remote);
    if (++f->count == SBX_AUTH_FAIL_MAX)
        sbx_log_warn("auth_blocked", "remote=%s failures=%d window_s=%d", f->remote, f->count,
                     SBX_AUTH_FAIL_WINDOW_MS / 1000);
    sbx_metrics_auth_failure();
}

/* Records the key's use, at most once a minute: a write per request would fsync per request. */
static void
touch(const char *id)
{
    int64_t now = sbx_wall_ms();
    struct touched *t = NULL;
    for (size_t i = 0; i < auth.n_touched && t == NULL; i++)
        if (strcmp(auth.touched[i].id, id) == 0)
            t = &auth.touched[i];
    if (t == NULL && auth.n_touched < SBX_MAX_API_KEYS) {
        t = &auth.touched[auth.n_touched++];
        snprintf(t->id, sizeof(t->id), "%s", id);
    }
    if (t && now - t->at_ms < SBX_AUTH_TOUCH_INTERVAL_MS)
        return;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_store_api_key_touch(sbx_daemon->store, id, now, &err) < 0)
        sbx_log_warn("api_key", "key=%s error=\"%s\"", id, err->msg);
    else if (t)
        t->at_ms = now;
}

bool
sbx_auth_check(struct sbx_http_req *req, struct sbx_api_key_auth *who)
{
    const char *remote = sbx_http_req_remote(req);
    uint64_t now = sbx_now_ms();
    /* While an address is blocked its keys are not even checked: answering 401 or 200 would
     * keep telling a guesser which keys are wrong. */
    struct failures *f = find_failures(remote, now);
    if (f && f->count >= SBX_AUTH_FAIL_MAX) {
        uint64_t left_s = (SBX_AUTH_FAIL_WINDOW_MS - (now - f->window_start_ms) + 999) / 1000;
        char retry[24];
        snprintf(retry, sizeof(retry), "%llu", (unsigned long long)left_s);
        sbx_http_add_header(req, "Retry-After", retry);
        sbx_http_respond_error(req, 429, "too many failed authentications from %s: retry in %llu s",
                               remote, (unsigned long long)left_s);
        return false;
    }
    const char *key = sbx_http_req_header(req, "x-api-key");
    if (key == NULL) {
        /* Not a guess, so not counted: a health checker or a client without its key would
         * otherwise lock out everyone behind its address. */
        sbx_http_respond_error(req, 401, "Missing X-API-KEY header");
        return false;
    }
    if (!sbx_store_api_key_check(sbx_daemon->store, key, who)) {
        count_failure(remote, now);
        sbx_http_respond_error(req, 401, "Invalid API key, please provide a valid X-API-KEY");
        return false;
    }
    touch(who->id);
    return true;
}

/* ---- /api-keys ---- */

static json_t *
time_or_null(int64_t ms)
{
    char buf[40];
    if (ms == 0)
        return json_null();
    sbx_format_rfc3339(ms, buf, sizeof(buf));
    return json_string(buf);
}

/* TeamAPIKey of the E2B API, with sbx's "admin". */
static json_t *
key_json(const struct sbx_api_key *k)
{
    return json_pack("{s:s,s:s,s:{s:s,s:i,s:s,s:s},s:o,s:n,s:o,s:b}", "id", k->id, "name", k->name,
                     "mask", "prefix", k->type, "valueLength", k->length, "maskedValuePrefix",
                     k->mask_prefix, "maskedValueSuffix", k->mask_suffix, "createdAt",
                     time_or_null(k->created_at_ms), "createdBy", "lastUsed",
                     time_or_null(k->last_used_at_ms), "admin", k->admin);
}

static void
list_keys(struct sbx_http_req *req)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_api_key_list *l = NULL;
    if (sbx_store_api_key_list(sbx_daemon->store, &l, &err) < 0) {
        sbx_api_respond_err(req, err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < l->n; i++)
        json_array_append_new(arr, key_json(&l->items[i]));
    sbx_api_key_list_free(l);
    sbx_api_respond_json(req, 200, arr);
}

static int
check_name(const char *name, struct sbx_error **err)
{
    size_t n = strlen(name);
    if (n == 0 || n > SBX_STORE_API_KEY_NAME_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "'name' must have 1 to %d characters",
                             SBX_STORE_API_KEY_NAME_MAX);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "'name' must not hold control characters");
    return 0;
}

static void
create_key(struct sbx_http_req *req, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    const char *name = NULL;
    bool admin = false;
    if (!json_is_object(body) || sbx_json_opt_string(body, "name", &name, &err) < 0 ||
        sbx_json_opt_bool(body, "admin", &admin, &err) < 0) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "the body must be {\"name\": \"...\"}");
        sbx_api_respond_err(req, err);
        return;
    }
    if (name == NULL)
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "'name' is required");
    else
        check_name(name, &err);
    struct sbx_api_key_list *l = NULL;
    if (err == NULL && sbx_store_api_key_list(sbx_daemon->store, &l, &err) == 0 &&
        l->n >= SBX_MAX_API_KEYS)
        sbx_error_set(&err, SBX_RESOURCE_EXHAUSTED, 0,
                      "there are already %d keys: revoke some first", SBX_MAX_API_KEYS);
    sbx_api_key_list_free(l);
    if (err) {
        sbx_api_respond_err(req, err);
        return;
    }
    char hex[41], key[48];
    sbx_random_hex(hex, 20);
    snprintf(key, sizeof(key), "e2b_%s", hex);
    struct sbx_api_key k;
    if (sbx_store_api_key_add(sbx_daemon->store, key, name, admin, &k, &err) < 0) {
        explicit_bzero(key, sizeof(key));
        sbx_api_respond_err(req, err);
        return;
    }
    _cleanup_free_ char *quoted = malloc(4 * strlen(name) + 4);
    sbx_log_quote(quoted, 4 * strlen(name) + 4, name);
    sbx_log_info("api_key_created", "key=%s name=\"%s\" admin=%d", k.id, quoted, admin);
    json_t *o = key_json(&k);
    json_object_set_new(o, "key", json_string(key)); /* shown once, never again */
    explicit_bzero(key, sizeof(key));
    free(k.name);
    sbx_api_respond_json(req, 201, o);
}

static void
revoke_key(struct sbx_http_req *req, const char *id)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_store_api_key_revoke(sbx_daemon->store, id, &err) < 0) {
        sbx_api_respond_err(req, err);
        return;
    }
    sbx_log_info("api_key_revoked", "key=%s", id);
    sbx_http_respond(req, 204, NULL, NULL, 0);
}

void
sbx_auth_keys_handle(struct sbx_http_req *req, char **parts, size_t n, json_t *body)
{
    const char *m = req->method;
    if (n == 1 && strcmp(m, "GET") == 0)
        return list_keys(req);
    if (n == 1 && strcmp(m, "POST") == 0)
        return create_key(req, body);
    if (n == 2 && strcmp(m, "DELETE") == 0)
        return revoke_key(req, parts[1]);
    if (n == 2 && strcmp(m, "PATCH") == 0) {
        sbx_http_respond_error(req, 501,
                               "renaming API keys is not supported: create a key with the new "
                               "name and revoke this one");
        return;
    }
    sbx_http_respond_error(req, 404, "no route for %s %s", m, req->path);
}
