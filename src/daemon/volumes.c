/* Volumes in the front end (spec lifecycle.md §6): the control plane (POST/GET/DELETE
 * /volumes, with an API key), the volumes a create mounts, and the volume content API
 * (/volumecontent/<id>/..., with the volume's own token).
 *
 * A volume's data is an ext4 image the spawner keeps in the state dir; sandboxes mount it.
 * The daemon never opens a file of a volume: the content API is served by the agent of a
 * sandbox of the volume's own, its service (agent/volume.c), which mounts the volume like any
 * sandbox does. The service is a pooled row (never listed, destroyed by a restarted front end)
 * kept out of the table of sandboxes (no client can reach it), started on a volume's first
 * content request, and stopped once it has been idle for SBX_VOLUME_SERVICE_IDLE_MS with no
 * transfer under way. Requests that arrive while it starts wait for it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "http/client.h"
#include "json/json.h"

#define SERVICE_ACTIVE_PATH "/sbx/active"

/* A content request waiting for its volume's service to start. */
struct held {
    struct sbx_http_hold *hold;
    struct held *next;
};

struct sbx_volume_service {
    char volume_id[SBX_STORE_ID_MAX + 1];
    struct sbx_live *l; /* once it runs; NULL while it starts, and once it is gone */
    struct held *waiting;
    uv_timer_t idle;
    bool stopping; /* asked whether it is idle, or being destroyed: new requests start another */
    bool asking;   /* that question is in flight: its answer frees a service that went */
    struct sbx_volume_service *next;
};

static struct sbx_volume_service *services;

/* ---- the service of a volume ---- */

static void
on_idle_closed(uv_handle_t *h)
{
    free(h->data);
}

static void
service_free(struct sbx_volume_service *s)
{
    struct sbx_volume_service **pp = &services;
    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (*pp)
        *pp = s->next;
    uv_timer_stop(&s->idle);
    uv_close((uv_handle_t *)&s->idle, on_idle_closed);
}

static void
unreachable(struct sbx_http_req *req)
{
    sbx_http_respond_error_strcode(req, 502, "the volume's content service did not answer");
}

static void on_idle(uv_timer_t *t);

/* Sends the waiting requests on (or answers them err's 503). */
static void
release_waiting(struct sbx_volume_service *s, const struct sbx_error *err)
{
    while (s->waiting) {
        struct held *h = s->waiting;
        s->waiting = h->next;
        struct sbx_http_req *req = sbx_http_hold_release(h->hold);
        if (req && err)
            sbx_http_respond_error_strcode(req, 503, "the volume's content service: %s", err->msg);
        else if (req)
            sbx_http_proxy(req, &(struct sbx_http_proxy_opts){.unix_path = s->l->sock_path,
                                                              .on_unreachable = unreachable});
        free(h);
    }
}

static void
on_service_spawned(struct sbx_live *l, struct sbx_error *err, void *ud)
{
    struct sbx_volume_service *s = ud;
    if (l == NULL) {
        sbx_log_warn("volume", "volume=%s error=\"content service: %s\"", s->volume_id, err->msg);
        release_waiting(s, err);
        service_free(s);
        return;
    }
    s->l = l;
    l->service = s;
    release_waiting(s, NULL);
}

/* A new service for the volume: a pooled row with the volume mounted where the agent's
 * content API looks for it (which makes its agent a volume service, see
 * sbx_lifecycle_config_fd), spawned; requests wait meanwhile. */
static struct sbx_volume_service *
service_start(const struct sbx_volume_rec *v, struct sbx_error **err)
{
    struct sbx_live *l = sbx_lifecycle_new("base", err);
    if (l == NULL)
        return NULL;
    free(l->rec->volume_mounts_json);
    json_t *m = json_pack("[{s:s,s:s,s:s}]", "name", v->name, "path", SBX_VOLUME_SERVICE_PATH,
                          "volumeID", v->id);
    l->rec->volume_mounts_json = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    struct sbx_volume_service *s = calloc(1, sizeof(*s));
    if (s == NULL || l->rec->volume_mounts_json == NULL)
        abort();
    snprintf(s->volume_id, sizeof(s->volume_id), "%s", v->id);
    uv_timer_init(sbx_daemon->loop, &s->idle);
    s->idle.data = s;
    s->next = services;
    services = s;
    sbx_log_info("volume", "volume=%s sandbox=%s action=\"start its content service\"", v->id,
                 l->rec->id);
    sbx_lifecycle_spawn(l, on_service_spawned, s);
    return s;
}

static struct sbx_volume_service *
service_of(const char *volume_id)
{
    for (struct sbx_volume_service *s = services; s; s = s->next)
        if (!s->stopping && strcmp(s->volume_id, volume_id) == 0)
            return s;
    return NULL;
}

static void
on_active(int status, const char *body, size_t len, const char *error, void *ud)
{
    struct sbx_volume_service *s = ud;
    s->asking = false;
    json_error_t jerr;
    json_t *j = status == 200 ? json_loadb(body, len, 0, &jerr) : NULL;
    json_t *active = json_object_get(j, "active");
    bool busy = json_is_integer(active) && json_integer_value(active) > 0;
    json_decref(j);
    if (s->l == NULL) {
        service_free(s); /* it went meanwhile */
    } else if (busy) {
        s->stopping = false;
        uv_timer_start(&s->idle, on_idle, SBX_VOLUME_SERVICE_IDLE_MS, 0);
    } else {
        sbx_lifecycle_destroy(s->l, "volume_service_idle", NULL, NULL);
    }
}

/* Idle since its last request: stopped unless a transfer is under way. From the question on,
 * new requests go to a new service, so none is ever sent to one that is going away. */
static void
on_idle(uv_timer_t *t)
{
    struct sbx_volume_service *s = t->data;
    s->stopping = true;
    s->asking = true;
    sbx_http_call(sbx_daemon->loop, s->l->sock_path, "GET", SERVICE_ACTIVE_PATH, NULL, NULL, 1024,
                  SBX_POOL_INIT_MS, on_active, s);
}

void
sbx_volumes_forget(struct sbx_live *l)
{
    struct sbx_volume_service *s = l->service;
    if (s == NULL)
        return;
    l->service = NULL;
    s->l = NULL;
    s->stopping = true;
    if (!s->asking)
        service_free(s);
}

int
sbx_volumes_drain(sbx_lifecycle_done_cb cb)
{
    int n = 0;
    for (struct sbx_volume_service *s = services; s; s = s->next)
        if (s->l && !s->l->dying) {
            sbx_lifecycle_destroy(s->l, "daemon_stop", cb, NULL);
            n++;
        }
    return n;
}

/* ---- the content API ---- */

static void
hold(struct sbx_volume_service *s, struct sbx_http_req *req)
{
    struct held *h = calloc(1, sizeof(*h));
    if (h == NULL)
        abort();
    h->hold = sbx_http_req_hold(req);
    struct held **pp = &s->waiting;
    while (*pp)
        pp = &(*pp)->next;
    *pp = h;
}

bool
sbx_volumes_content(struct sbx_http_req *req)
{
    static const char prefix[] = "/volumecontent/";
    if (strncmp(req->path, prefix, sizeof(prefix) - 1) != 0)
        return false;
    req->route_class = "volumes";
    const char *id = req->path + sizeof(prefix) - 1;
    size_t idlen = strcspn(id, "/");
    char vid[SBX_STORE_ID_MAX + 1];
    if (idlen == 0 || idlen > SBX_STORE_ID_MAX || id[idlen] != '/') {
        sbx_http_respond_error_strcode(req, 404, "no route for %s %s", req->method, req->path);
        return true;
    }
    memcpy(vid, id, idlen);
    vid[idlen] = '\0';
    _cleanup_error_ struct sbx_error *err = NULL;
    _cleanup_volume_rec_ struct sbx_volume_rec *v = NULL;
    if (!sbx_is_valid_id(vid, SBX_STORE_ID_MAX) ||
        sbx_store_volume_get(sbx_daemon->store, vid, NULL, &v, &err) < 0) {
        sbx_http_respond_error_strcode(req, 404, "volume '%s' not found", vid);
        return true;
    }
    /* Its token alone opens it (Authorization: Bearer), compared in constant time. */
    const char *auth = sbx_http_req_header(req, "authorization");
    if (auth == NULL || strncasecmp(auth, "Bearer ", 7) != 0 ||
        !sbx_secret_equal(auth + 7, strlen(auth + 7), v->token, strlen(v->token))) {
        sbx_http_respond_error_strcode(req, 401, "invalid or missing volume token");
        return true;
    }
    sbx_http_req_mark_authenticated(req);
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", vid);
    struct sbx_volume_service *s = service_of(vid);
    if (s == NULL && (s = service_start(v, &err)) == NULL) {
        sbx_http_respond_error_strcode(req, 503, "cannot start the volume's content service: %s",
                                       err->msg);
        return true;
    }
    uv_timer_start(&s->idle, on_idle, SBX_VOLUME_SERVICE_IDLE_MS, 0);
    if (s->l)
        sbx_http_proxy(req, &(struct sbx_http_proxy_opts){.unix_path = s->l->sock_path,
                                                          .on_unreachable = unreachable});
    else
        hold(s, req);
    return true;
}

/* ---- the control plane ---- */

static bool
valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > SBX_VOLUME_NAME_MAX)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}

static json_t *
volume_json(const struct sbx_volume_rec *v, bool with_token)
{
    json_t *o = json_pack("{s:s,s:s}", "volumeID", v->id, "name", v->name);
    if (with_token)
        json_object_set_new(o, "token", json_string(v->token));
    return o;
}

/* A client waiting for the spawner: the new volume, or the one being deleted. */
struct volume_call {
    struct sbx_http_hold *hold; /* NULL once answered */
    struct sbx_volume_rec *v;
};

static struct volume_call *
call_new(struct sbx_http_req *req, struct sbx_volume_rec *v)
{
    struct volume_call *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->hold = sbx_http_req_hold(req);
    c->v = v;
    return c;
}

/* The request of c, NULL if its client went away or it was answered; frees c. */
static struct sbx_http_req *
call_done(struct volume_call *c)
{
    struct sbx_http_req *req = c->hold ? sbx_http_hold_release(c->hold) : NULL;
    sbx_volume_rec_free(c->v);
    free(c);
    return req;
}

static void
volume_request(uint8_t op, const struct sbx_volume_rec *v, sbx_spawner_cb cb, void *ud)
{
    struct sbx_spawner_msg m = {.op = op, .disk_bytes = (uint64_t)v->size_mb << 20};
    snprintf(m.id, sizeof(m.id), "%s", v->id);
    sbx_spawner_call(&m, -1, cb, ud);
}

static void
on_image_removed(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct volume_call *c = ud;
    if (err && err->code == SBX_UNAVAILABLE) {
        volume_request(SBX_SPAWNER_VOLUME_DELETE, c->v, on_image_removed, c);
        return;
    }
    if (err && err->code != SBX_NOT_FOUND)
        sbx_log_error("volume", "volume=%s error=\"%s\"", c->v->id, err->msg);
    else
        sbx_log_info("volume", "volume=%s action=deleted", c->v->id);
    struct sbx_http_req *req = call_done(c);
    if (req && err && err->code != SBX_NOT_FOUND)
        sbx_http_respond_error(req, 500, "%s", err->msg);
    else if (req)
        sbx_http_respond(req, 204, NULL, NULL, 0);
}

static void
on_image_created(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    struct volume_call *c = ud;
    _cleanup_error_ struct sbx_error *store_err = NULL;
    if (err == NULL && sbx_store_volume_insert(sbx_daemon->store, c->v, &store_err) < 0) {
        /* Its name was taken meanwhile: the image made for it goes again. */
        struct sbx_http_req *req = sbx_http_hold_release(c->hold);
        c->hold = NULL;
        if (req)
            sbx_http_respond_error(req, store_err->code == SBX_ALREADY_EXISTS ? 400 : 500, "%s",
                                   store_err->msg);
        volume_request(SBX_SPAWNER_VOLUME_DELETE, c->v, on_image_removed, c);
        return;
    }
    if (err == NULL)
        sbx_log_info("volume", "volume=%s name=%s size_mb=%d action=created", c->v->id, c->v->name,
                     c->v->size_mb);
    json_t *body = err ? NULL : volume_json(c->v, true);
    struct sbx_http_req *req = call_done(c);
    if (req && err)
        sbx_http_respond_error(req, err->code == SBX_UNAVAILABLE ? 503 : 500, "%s", err->msg);
    else if (req)
        sbx_api_respond_json(req, 201, body);
    else
        json_decref(body);
}

/* POST /volumes {"name"}: the image first, then the row, so that a crash in between leaves
 * no volume without its data. */
static void
create_volume(struct sbx_http_req *req, json_t *body)
{
    const char *name = NULL;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (!json_is_object(body) || sbx_json_opt_string(body, "name", &name, &err) < 0 ||
        name == NULL || !valid_name(name)) {
        sbx_http_respond_error(req, 400, "Invalid volume name");
        return;
    }
    _cleanup_volume_rec_ struct sbx_volume_rec *old = NULL;
    if (sbx_store_volume_get(sbx_daemon->store, NULL, name, &old, &err) == 0) {
        sbx_http_respond_error(req, 400, "Volume with name '%s' already exists", name);
        return;
    }
    struct sbx_volume_rec *v = calloc(1, sizeof(*v));
    char token[65];
    if (v == NULL || (v->name = strdup(name)) == NULL)
        abort();
    sbx_random_id(v->id, SBX_DAEMON_ID_LEN);
    sbx_random_hex(token, 32);
    v->token = strdup(token);
    explicit_bzero(token, sizeof(token));
    v->size_mb = sbx_daemon->cfg.volume_mb;
    v->created_at_ms = sbx_wall_ms();
    volume_request(SBX_SPAWNER_VOLUME_CREATE, v, on_image_created, call_new(req, v));
}

/* DELETE /volumes/{id}: refused while a sandbox (running or paused) mounts it; its content
 * service goes with it. The row first: from then on nothing new can mount it. */
static void
delete_volume(struct sbx_http_req *req, struct sbx_volume_rec *v)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    char user[SBX_STORE_ID_MAX + 1];
    if (sbx_store_volume_user(sbx_daemon->store, v->id, user, &err) < 0 ||
        (user[0] == '\0' && sbx_store_volume_delete(sbx_daemon->store, v->id, &err) < 0)) {
        sbx_volume_rec_free(v);
        sbx_http_respond_error(req, 500, "%s", err->msg);
        return;
    }
    if (user[0]) {
        sbx_http_respond_error(req, 409, "volume '%s' is mounted by sandbox %s; kill it first",
                               v->name, user);
        sbx_volume_rec_free(v);
        return;
    }
    for (struct sbx_volume_service *s = services; s; s = s->next)
        if (strcmp(s->volume_id, v->id) == 0 && s->l && !s->l->dying)
            sbx_lifecycle_destroy(s->l, "volume_deleted", NULL, NULL);
    volume_request(SBX_SPAWNER_VOLUME_DELETE, v, on_image_removed, call_new(req, v));
}

void
sbx_volumes_api(struct sbx_http_req *req, json_t *body, char **parts, size_t n)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    const char *m = req->method;
    if (n == 1 && strcmp(m, "POST") == 0) {
        create_volume(req, body);
        return;
    }
    if (n == 1 && strcmp(m, "GET") == 0) {
        _cleanup_volume_list_ struct sbx_volume_list *l = NULL;
        if (sbx_store_volume_list(sbx_daemon->store, &l, &err) < 0) {
            sbx_http_respond_error(req, 500, "%s", err->msg);
            return;
        }
        json_t *arr = json_array();
        for (size_t i = 0; i < l->n; i++)
            json_array_append_new(arr, volume_json(l->items[i], false));
        sbx_api_respond_json(req, 200, arr);
        return;
    }
    struct sbx_volume_rec *v = NULL;
    if (n != 2 || (strcmp(m, "GET") != 0 && strcmp(m, "DELETE") != 0)) {
        sbx_http_respond_error(req, 404, "no route for %s %s", m, req->path);
        return;
    }
    if (!sbx_is_valid_id(parts[1], SBX_STORE_ID_MAX) ||
        sbx_store_volume_get(sbx_daemon->store, parts[1], NULL, &v, &err) < 0) {
        sbx_http_respond_error(req, 404, "volume '%s' not found", parts[1]);
        return;
    }
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", v->id);
    if (strcmp(m, "DELETE") == 0) {
        delete_volume(req, v);
        return;
    }
    sbx_api_respond_json(req, 200, volume_json(v, true));
    sbx_volume_rec_free(v);
}

/* ---- volumes of a sandbox ---- */

/* The API's answer to bad volumeMounts (spec lifecycle.md §6.2). */
static int
mount_error(struct sbx_error **err, size_t i, const char *why, const char *name)
{
    if (name)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "invalid mounts:\n\t- volume mount #%zu: volume '%s' %s", i, name,
                             why);
    return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid mounts:\n\t- volume mount #%zu: %s",
                         i, why);
}

int
sbx_volumes_check_mounts(json_t *mounts, struct sbx_error **err)
{
    if (!json_is_array(mounts))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "volumeMounts must be an array");
    const char *paths[SBX_SANDBOX_MAX_VOLUMES];
    size_t n = json_array_size(mounts), bad;
    if (n > SBX_SANDBOX_MAX_VOLUMES)
        return mount_error(err, SBX_SANDBOX_MAX_VOLUMES, "more than 8 volume mounts", NULL);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(mounts, i);
        const char *name = json_string_value(json_object_get(m, "name"));
        paths[i] = json_string_value(json_object_get(m, "path"));
        if (!json_is_object(m) || name == NULL || paths[i] == NULL)
            return mount_error(err, i, "name and path must be strings", NULL);
        if (!valid_name(name))
            return mount_error(err, i, "invalid volume name", NULL);
    }
    const char *why = sbx_volume_paths_check(paths, n, &bad);
    return why ? mount_error(err, bad, why, NULL) : 0;
}

char *
sbx_volumes_resolve(json_t *mounts, struct sbx_error **err)
{
    json_t *out = json_array();
    for (size_t i = 0; i < json_array_size(mounts); i++) {
        json_t *m = json_array_get(mounts, i);
        const char *name = json_string_value(json_object_get(m, "name"));
        _cleanup_volume_rec_ struct sbx_volume_rec *v = NULL;
        _cleanup_error_ struct sbx_error *e = NULL;
        if (sbx_store_volume_get(sbx_daemon->store, NULL, name, &v, &e) < 0) {
            json_decref(out);
            if (e->code == SBX_NOT_FOUND)
                mount_error(err, i, "not found", name);
            else
                sbx_error_set(err, e->code, 0, "%s", e->msg);
            return NULL;
        }
        json_array_append_new(out, json_pack("{s:s,s:O,s:s}", "name", name, "path",
                                             json_object_get(m, "path"), "volumeID", v->id));
    }
    char *s = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    return s;
}

int
sbx_volumes_spawn_lines(const char *mounts_json, char *out, size_t cap, struct sbx_error **err)
{
    json_error_t jerr;
    json_t *mounts = json_loads(mounts_json ? mounts_json : "[]", 0, &jerr);
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < json_array_size(mounts); i++) {
        json_t *m = json_array_get(mounts, i);
        int n = snprintf(out + len, cap - len, "%s%s:%s", i ? "\n" : "",
                         json_string_value(json_object_get(m, "volumeID")),
                         json_string_value(json_object_get(m, "path")));
        if (n < 0 || (size_t)n >= cap - len) {
            json_decref(mounts);
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "volume mounts too long");
        }
        len += (size_t)n;
    }
    json_decref(mounts);
    return 0;
}
