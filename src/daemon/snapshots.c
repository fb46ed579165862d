/* Snapshots and forks (spec lifecycle.md §4, §5).
 *
 * A snapshot is a template whose last layer is a copy of a running sandbox's writable layer:
 * the spawner freezes the sandbox, copies what it changed into the layer store and thaws it
 * (sbx_pause_snapshot), and the store records a template of source "snapshot" whose one ready
 * build has that layer on top of the stack the sandbox runs on, with the context (user,
 * workdir, env, start command, code interpreter) of the template the sandbox is of. So
 * Sandbox.create(snapshotID) resolves and starts like any template, and the layer GC keeps
 * the layer until the snapshot is deleted (DELETE /templates/{snapshotID}, api_templates.c).
 * Processes and memory are not captured: sandboxes of a snapshot boot afresh on its files.
 *
 * A fork is an unnamed snapshot of the sandbox, then count sandboxes created from it at once.
 * Its snapshot is an ordinary one, listed with the sandbox's (GET /snapshots?sandboxID=):
 * whoever forked decides when it goes, and nothing is kept out of sight. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "json/json.h"
#include "spawner/templates.h"

#define SNAPSHOT_LIST_MAX 100
#define FORK_MAX          100

struct snapshot {
    char sandbox_id[SBX_STORE_ID_MAX + 1];
    struct sbx_template_name name; /* alias "" when unnamed */
    char key[SBX_LAYER_KEY_LEN + 1];
    char layers[SBX_LAYERS_MAX * SBX_LAYER_KEY_LEN + 1];
    /* The template the sandbox is of, as sandboxes of the snapshot inherit it. */
    int cpu_count, memory_mb;
    char *context_json;
    void (*done)(struct snapshot *sn, const char *template_id, struct sbx_error *err);
    void *ud;
};

static void
snapshot_free(struct snapshot *sn)
{
    free(sn->context_json);
    free(sn);
}

/* The context of ref's build (a template of ours), or of a built-in template. */
static char *
context_of(const struct sbx_template_ref *ref, struct sbx_error **err)
{
    if (ref->build_id[0] == '\0') {
        json_t *ctx = json_pack("{s:b}", "codeInterpreter", ref->code_interpreter);
        char *s = json_dumps(ctx, JSON_COMPACT);
        json_decref(ctx);
        return s;
    }
    struct sbx_build_rec b;
    if (sbx_store_build_get(sbx_daemon->store, ref->build_id, &b, err) < 0)
        return NULL;
    char *s = b.context_json;
    b.context_json = NULL;
    sbx_build_rec_fini(&b);
    return s;
}

/* The template that holds the snapshot: a new one, or for a name used before, that name's
 * (its tag moves to the new build). A name a built template has is refused. */
static int
snapshot_template(struct snapshot *sn, struct sbx_template_rec *t, struct sbx_error **err)
{
    struct sbx_store *store = sbx_daemon->store;
    if (sn->name.alias[0]) {
        struct sbx_error *e = NULL;
        if (sbx_store_template_get(store, sn->name.alias, t, &e) == 0) {
            if (t->snapshot)
                return 0;
            sbx_template_rec_fini(t);
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "Invalid name: '%s' is the name of a template", sn->name.alias);
        }
        sbx_error_free(e);
    }
    *t = (struct sbx_template_rec){.created_at_ms = sbx_wall_ms(), .snapshot = true};
    sbx_random_id(t->id, SBX_STORE_TEMPLATE_ID_LEN);
    snprintf(t->sandbox_id, sizeof(t->sandbox_id), "%s", sn->sandbox_id);
    t->alias = strdup(sn->name.alias[0] ? sn->name.alias : t->id);
    if (t->alias == NULL)
        abort();
    return sbx_store_template_insert(store, t, err);
}

/* The layer is in the store: records the snapshot as a template with one ready build. */
static int
snapshot_record(struct snapshot *sn, char template_id[SBX_STORE_TEMPLATE_ID_LEN + 1],
                struct sbx_error **err)
{
    struct sbx_store *store = sbx_daemon->store;
    struct sbx_template_rec t = {0};
    if (snapshot_template(sn, &t, err) < 0)
        return -1;
    snprintf(template_id, SBX_STORE_TEMPLATE_ID_LEN + 1, "%s", t.id);
    sbx_template_rec_fini(&t);
    _cleanup_free_ char *layers = NULL;
    if (asprintf(&layers, "%s%s", sn->key, sn->layers) < 0)
        abort();
    int64_t now = sbx_wall_ms();
    struct sbx_build_rec b = {.cpu_count = sn->cpu_count,
                              .memory_mb = sn->memory_mb,
                              .status = "ready",
                              .tags_json = "[]",
                              .layers = layers,
                              .context_json = sn->context_json,
                              .created_at_ms = now,
                              .finished_at_ms = now};
    sbx_api_new_uuid(b.id);
    snprintf(b.template_id, sizeof(b.template_id), "%s", template_id);
    if (sbx_store_layer_add(store, sn->key, false, err) < 0 ||
        sbx_store_build_insert(store, &b, err) < 0 || sbx_store_build_update(store, &b, err) < 0)
        return -1;
    return sbx_store_tag_set(store, template_id, sn->name.tag[0] ? sn->name.tag : "default", b.id,
                             err);
}

static void
on_snapshotted(struct sbx_live *l, struct sbx_error *err, uint64_t took_us, void *ud)
{
    struct snapshot *sn = ud;
    _cleanup_error_ struct sbx_error *e = NULL;
    char template_id[SBX_STORE_TEMPLATE_ID_LEN + 1] = "";
    if (l && snapshot_record(sn, template_id, &e) < 0)
        err = e; /* its layer goes with the next layer GC: nothing records it */
    if (err == NULL)
        sbx_log_info("snapshot", "sandbox=%s template=%s layer=%s took_us=%llu", sn->sandbox_id,
                     template_id, sn->key, (unsigned long long)took_us);
    sn->done(sn, err ? NULL : template_id, err);
    snapshot_free(sn);
}

/* Snapshots l; done gets the new template's id, or NULL and the error. name may be NULL. */
static void
snapshot_start(struct sbx_live *l, const struct sbx_template_name *name,
               void (*done)(struct snapshot *, const char *, struct sbx_error *), void *ud)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    struct snapshot *sn = calloc(1, sizeof(*sn));
    if (sn == NULL)
        abort();
    sn->done = done;
    sn->ud = ud;
    snprintf(sn->sandbox_id, sizeof(sn->sandbox_id), "%s", l->rec->id);
    if (name)
        sn->name = *name;
    if (sbx_lifecycle_template_of(l->rec, &ref, &err) < 0 ||
        (sn->context_json = context_of(&ref, &err)) == NULL) {
        done(sn, NULL, err);
        snapshot_free(sn);
        return;
    }
    sn->cpu_count = ref.cpu_count;
    sn->memory_mb = ref.memory_mb;
    /* A snapshot's layer is made of nothing a client can name again: a random key. */
    sbx_random_hex(sn->key, SBX_LAYER_KEY_LEN / 2);
    sbx_pause_snapshot(l, sn->key, sn->layers, on_snapshotted, sn);
}

/* ---- POST /sandboxes/{id}/snapshots ---- */

static void
on_created_snapshot(struct snapshot *sn, const char *template_id, struct sbx_error *err)
{
    struct sbx_http_req *req = sbx_http_hold_release(sn->ud);
    if (req == NULL)
        return;
    if (err) {
        sbx_api_respond_err(req, err);
        return;
    }
    const char *tag = sn->name.tag[0] ? sn->name.tag : "default";
    char id[SBX_TEMPLATE_NAME_MAX * 2 + 64];
    json_t *names = json_array();
    if (sn->name.alias[0]) {
        snprintf(id, sizeof(id), SBX_TEMPLATE_TEAM "/%s", sn->name.alias);
        json_array_append_new(names, json_string(id));
        snprintf(id, sizeof(id), SBX_TEMPLATE_TEAM "/%s:%s", sn->name.alias, tag);
    } else {
        snprintf(id, sizeof(id), "%s:%s", template_id, tag);
    }
    sbx_api_respond_json(req, 201, json_pack("{s:s,s:o}", "snapshotID", id, "names", names));
}

/* A snapshot's name: a template name of this server's team, not a built template's. */
static int
parse_name(const char *s, struct sbx_template_name *n, struct sbx_error **err)
{
    if (sbx_template_name_parse(s, n, err) < 0)
        return -1;
    if (n->ns[0] && strcmp(n->ns, SBX_TEMPLATE_TEAM) != 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "Invalid name: the namespace of '%s' is not this server's team "
                             "('" SBX_TEMPLATE_TEAM "')",
                             s);
    if (sbx_builtin_template_find(n->alias))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "Invalid name: '%s' is a built-in template of this server", n->alias);
    return 0;
}

void
sbx_snapshots_create(struct sbx_http_req *req, const char *id, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_template_name name = {0};
    json_t *jname = json_object_get(body, "name");
    if (jname && !json_is_string(jname) && !json_is_null(jname))
        return sbx_http_respond_error(req, 400, "name must be a string");
    const char *s = json_string_value(jname);
    if (s && s[0] && parse_name(s, &name, &err) < 0)
        return sbx_api_respond_err(req, err);
    /* Py 2.63's mode="full": a snapshot here holds files only, never memory. */
    if (json_is_true(json_object_get(body, "memory")))
        return sbx_http_respond_error(req, 400,
                                      "snapshots of memory are not supported by this server: a "
                                      "snapshot holds the sandbox's files (mode 'filesystem')");
    struct sbx_live *l = sbx_lifecycle_find(id);
    if (l == NULL || sbx_live_is_paused(l))
        return sbx_http_respond_error(req, 404,
                                      l ? "Sandbox '%s' is paused: only a running sandbox can be "
                                          "snapshotted"
                                        : "Sandbox '%s' not found",
                                      id);
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", l->rec->id);
    snapshot_start(l, s && s[0] ? &name : NULL, on_created_snapshot, sbx_http_req_hold(req));
}

/* ---- GET /snapshots ---- */

/* A decimal query value (limit, nextToken): digits only, at most 18 of them. */
static bool
parse_decimal(const char *s, int64_t *out)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 18 || s[n] != '\0')
        return false;
    *out = strtoll(s, NULL, 10);
    return true;
}

void
sbx_snapshots_list(struct sbx_http_req *req)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    _cleanup_free_ char *sandbox = sbx_http_req_query(req, "sandboxID");
    _cleanup_free_ char *name = sbx_http_req_query(req, "name");
    _cleanup_free_ char *limit_s = sbx_http_req_query(req, "limit");
    _cleanup_free_ char *token = sbx_http_req_query(req, "nextToken");
    int64_t limit = SNAPSHOT_LIST_MAX, offset = 0;
    if ((limit_s && (!parse_decimal(limit_s, &limit) || limit < 1 || limit > SNAPSHOT_LIST_MAX)))
        return sbx_http_respond_error(req, 400, "limit must be between 1 and %d",
                                      SNAPSHOT_LIST_MAX);
    if (token && token[0] && (!parse_decimal(token, &offset) || offset < 0))
        return sbx_http_respond_error(req, 400, "bad nextToken");
    struct sbx_template_name n = {0};
    if (name && name[0]) {
        /* A name no snapshot can have (another team's, not a name at all) has none. */
        struct sbx_error *e = NULL;
        if (parse_name(name, &n, &e) < 0) {
            sbx_error_free(e);
            return sbx_api_respond_json(req, 200, json_array());
        }
        if (strchr(name, ':') && n.tag[0] == '\0')
            snprintf(n.tag, sizeof(n.tag), "default");
    }
    struct sbx_snapshot_rec *recs;
    size_t count;
    bool more;
    if (sbx_store_snapshot_list(sbx_daemon->store, sandbox && sandbox[0] ? sandbox : NULL,
                                n.alias[0] ? n.alias : NULL, n.tag[0] ? n.tag : NULL, offset,
                                (int)limit, &recs, &count, &more, &err) < 0)
        return sbx_api_respond_err(req, err);
    json_t *arr = json_array();
    for (size_t i = 0; i < count; i++) {
        const struct sbx_snapshot_rec *r = &recs[i];
        bool named = strcmp(r->alias, r->template_id) != 0;
        char full[SBX_STORE_TAG_MAX + 64], id[sizeof(full) + SBX_STORE_TAG_MAX + 2];
        snprintf(full, sizeof(full), SBX_TEMPLATE_TEAM "/%s", r->alias);
        snprintf(id, sizeof(id), "%s:%s", named ? full : r->template_id, r->tag);
        json_t *names = named ? json_pack("[s]", full) : json_array();
        json_array_append_new(arr, json_pack("{s:s,s:o}", "snapshotID", id, "names", names));
    }
    free(recs);
    if (more) {
        char next[32];
        snprintf(next, sizeof(next), "%lld", (long long)(offset + (int64_t)count));
        sbx_http_add_header(req, "X-Next-Token", next);
    }
    sbx_api_respond_json(req, 200, arr);
}

/* ---- POST /sandboxes/{id}/fork ---- */

struct fork {
    void *hold; /* the request */
    int count, pending, timeout_s;
    json_t *results; /* one entry per fork, in order */
    struct sbx_create_opts opts;
    json_t *metadata, *env_vars, *network; /* the parent's, for every fork */
    char *volume_mounts_json;
};

struct fork_one {
    struct fork *f;
    int index;
};

static void
fork_free(struct fork *f)
{
    json_decref(f->results);
    json_decref(f->metadata);
    json_decref(f->env_vars);
    json_decref(f->network);
    free(f->volume_mounts_json);
    free(f);
}

static void
fork_done(struct fork *f)
{
    struct sbx_http_req *req = sbx_http_hold_release(f->hold);
    if (req)
        sbx_api_respond_json(req, 201, json_incref(f->results));
    fork_free(f);
}

static void
on_forked(struct sbx_live *l, struct sbx_error *err, uint64_t spawn_us, void *ud)
{
    struct fork_one *one = ud;
    struct fork *f = one->f;
    json_t *entry;
    if (l) {
        sbx_metrics_created(spawn_us);
        sbx_log_info("sandbox_start", "sandbox=%s template=%s fork=%d spawn_us=%llu", l->rec->id,
                     l->rec->template_id, one->index, (unsigned long long)spawn_us);
        entry = json_pack("{s:o}", "sandbox", sbx_api_sandbox_json(l->rec));
    } else {
        int code = err->code == SBX_NOT_FOUND             ? 404
                   : err->code == SBX_INVALID_ARGUMENT    ? 400
                   : err->code == SBX_RESOURCE_EXHAUSTED  ? 429
                   : err->code == SBX_FAILED_PRECONDITION ? 409
                                                          : 500;
        entry = json_pack("{s:{s:i,s:s}}", "error", "code", code, "message", err->msg);
    }
    json_array_set_new(f->results, (size_t)one->index, entry);
    free(one);
    if (--f->pending == 0)
        fork_done(f);
}

static void
on_fork_snapshot(struct snapshot *sn, const char *template_id, struct sbx_error *err)
{
    struct fork *f = sn->ud;
    if (err) {
        struct sbx_http_req *req = sbx_http_hold_release(f->hold);
        if (req)
            sbx_api_respond_err(req, err);
        fork_free(f);
        return;
    }
    f->opts.template_id = template_id;
    int count = f->count; /* f goes with the last fork's answer, which may come at once */
    f->pending = count;
    for (int i = 0; i < count; i++)
        json_array_append_new(f->results, json_null());
    for (int i = 0; i < count; i++) {
        struct fork_one *one = calloc(1, sizeof(*one));
        if (one == NULL)
            abort();
        *one = (struct fork_one){f, i};
        sbx_lifecycle_create(&f->opts, on_forked, one);
    }
}

/* The parent's settings every fork gets (spec §5: a copy of the sandbox), but its own id,
 * tokens and timeout. */
static void
fork_opts(struct fork *f, const struct sbx_sandbox_rec *r)
{
    f->metadata = json_loads(r->metadata_json ? r->metadata_json : "{}", 0, NULL);
    f->env_vars = json_loads(r->env_vars_json ? r->env_vars_json : "{}", 0, NULL);
    f->network = r->network_json ? json_loads(r->network_json, 0, NULL) : NULL;
    if (strcmp(r->volume_mounts_json ? r->volume_mounts_json : "[]", "[]") != 0)
        f->volume_mounts_json = strdup(r->volume_mounts_json);
    f->opts = (struct sbx_create_opts){
        .cpu_count = r->cpu_count,
        .memory_mb = r->memory_mb,
        .timeout_s = f->timeout_s,
        .secure = r->access_token != NULL,
        .allow_internet = r->allow_internet,
        .auto_pause = r->auto_pause,
        .auto_pause_memory = r->auto_pause_memory,
        .auto_resume = r->auto_resume,
        .metadata = f->metadata,
        .env_vars = f->env_vars,
        .volume_mounts_json = f->volume_mounts_json,
        .network = f->network,
    };
}

static size_t
live_count(void)
{
    size_t n = 0;
    for (struct sbx_live *l = sbx_daemon->live; l; l = l->next)
        n++;
    return n;
}

void
sbx_snapshots_fork(struct sbx_http_req *req, const char *id, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    int64_t count = 1, timeout = 300;
    if (sbx_json_opt_int(body, "count", &count, &err) < 0 ||
        sbx_json_opt_int(body, "timeout", &timeout, &err) < 0)
        return sbx_api_respond_err(req, err);
    if (count < 1 || count > FORK_MAX)
        return sbx_http_respond_error(req, 400, "count must be between 1 and %d", FORK_MAX);
    if (timeout < 1 || timeout > SBX_MAX_TIMEOUT_S)
        return sbx_http_respond_error(req, 400, "timeout must be between 1 and %d seconds",
                                      SBX_MAX_TIMEOUT_S);
    struct sbx_live *l = sbx_lifecycle_find(id);
    if (l == NULL)
        return sbx_http_respond_error(req, 404, "Sandbox '%s' not found", id);
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", l->rec->id);
    if (sbx_live_is_paused(l))
        return sbx_http_respond_error(
            req, 409, "Sandbox '%s' is paused and cannot be forked; resume it first", id);
    size_t running = live_count();
    if (running + (size_t)count > SBX_MAX_SANDBOXES)
        return sbx_http_respond_error(req, 400,
                                      "count %lld is more than the %zu sandboxes this server can "
                                      "still run",
                                      (long long)count, (size_t)SBX_MAX_SANDBOXES - running);
    struct fork *f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    f->count = (int)count;
    f->timeout_s = (int)timeout;
    f->results = json_array();
    f->hold = sbx_http_req_hold(req);
    fork_opts(f, l->rec);
    snapshot_start(l, NULL, on_fork_snapshot, f);
}
