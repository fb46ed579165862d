/* Shared state of the daemon's modules: configuration, the live sandbox table (a cache of
 * the store, rebuilt from it at start) and the entry points between router, API and
 * lifecycle.
 *
 * `sbx serve` is three processes of this binary (docs/architecture.md): the supervisor
 * (daemon.c, root: sets up, then only restarts the others), the spawner (spawner/, root: the
 * only one that acts on sandboxes) and the front end (everything else here, an unprivileged
 * user: HTTP, JSON, SQLite, routing). The front end is single-threaded on the default libuv
 * loop and never blocks on the spawner: requests to it are callbacks. */
#ifndef SBX_DAEMON_INTERNAL_H
#define SBX_DAEMON_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/error.h"
#include "base/limits.h"
#include "http/http.h"
#include "sandbox/sandbox.h"
#include "spawner/msg.h"
#include "spawner/templates.h"
#include "daemon/templates.h"
#include "store/store.h"

#define SBX_DAEMON_ID_LEN    20
#define SBX_DAEMON_CLIENT_ID "6532622b" /* legacy constant the SDKs still require */
/* Hash buckets of the id index: a power of two, twice the sandbox cap (short chains). */
#define SBX_DAEMON_ID_BUCKETS (2 * SBX_MAX_SANDBOXES)

struct sbx_daemon_config {
    char *listen_host;
    int listen_port;
    char *state_dir;
    char *layer_cache; /* --layer-cache */
    char *api_key;     /* from --api-key / SBX_API_KEY, NULL otherwise */
    int memory_mb;
    int pids_max;
    int cpu_millis;
    int disk_mb;
    int header_timeout_s; /* client deadlines of the HTTP server */
    int idle_timeout_s;
    bool relaxed;             /* --sandbox-profile relaxed */
    char *user;               /* the front end's user (created if missing) */
    char *pools;              /* --pool NAME=N[,NAME=N...] */
    int pool_memory_mb;       /* --pool-memory-mb */
    int max_conns;            /* client connections; 0 until derived from the open-file limit */
    int max_builds;           /* --max-builds: template builds running at once */
    int build_step_timeout_s; /* --build-step-timeout */
};

/* A running sandbox. rec is the stored record, kept in sync with the store. */
struct sbx_live {
    struct sbx_sandbox_rec *rec;
    char *dir;       /* state_dir/sandboxes/<id> */
    char *sock_path; /* dir/agent.sock: listening fd held by the agent */
    int pidfd;
    uv_poll_t poll; /* on pidfd: the agent died */
    bool polling;
    bool dying;              /* a destroy was asked for: no longer found, never asked twice */
    struct destroy *destroy; /* lifecycle.c: finished once the poll handle has closed */
    uint64_t last_cpu_ns;    /* for cpuUsedPct between two metric reads */
    int64_t last_cpu_wall_ms;
    struct sbx_live *next;    /* the daemon's list of every running sandbox */
    struct sbx_live *id_next; /* in its bucket of the id index */
    /* In the order of last use, newest first; secure sandboxes only (see live.c). */
    struct sbx_live *recent_prev, *recent_next;
    struct sbx_pool *pool;           /* pool.c: the pool it waits in (not in the table then) */
    struct sbx_live *pool_next;      /* in its pool's list of warm sandboxes */
    struct sbx_pool_member *warming; /* pool.c: while it warms up */
};

struct sbx_daemon {
    struct sbx_daemon_config cfg;
    uv_loop_t *loop;
    struct sbx_store *store;
    char *uploads_dir;   /* db/uploads: COPY archives, <files hash>.tar */
    char upload_key[65]; /* HMAC key of upload URLs (hex), new at every start */
    struct sbx_http_server *http;
    struct sbx_live *live; /* every running sandbox (live.c owns the three views) */
    struct sbx_live *by_id[SBX_DAEMON_ID_BUCKETS];
    struct sbx_live *recent; /* the secure sandbox used last */
    uv_timer_t expiry;       /* fires at the soonest end_at */
    uv_signal_t sigterm, sigint;
    uv_poll_t control; /* from the supervisor: channels to new spawners */
};

extern struct sbx_daemon *sbx_daemon;

/* spawner_client.c: requests to the spawner, answered later. reply is NULL when err is set
 * without one (the spawner stopped, or the request could not be sent). */
typedef void (*sbx_spawner_cb)(const struct sbx_spawner_msg *reply, struct sbx_error *err,
                               void *ud);
/* Sends req (its seq is set here) with fd (-1: none; closed once sent). */
void sbx_spawner_call(struct sbx_spawner_msg *req, int fd, sbx_spawner_cb cb, void *ud);
/* A BUILD_STEP with its config fd and a COPY's archive fd (-1: none), both closed once sent;
 * on_log gets each piece of the step's output (NUL-free text, not split at lines or
 * characters) before cb gets the reply. */
typedef void (*sbx_spawner_log_cb)(const char *text, void *ud);
void sbx_spawner_call_step(struct sbx_spawner_msg *req, int config_fd, int archive_fd,
                           sbx_spawner_log_cb on_log, sbx_spawner_cb cb, void *ud);
/* The channel to a (new) spawner; requests waiting for one go out now. */
void sbx_spawner_client_set_channel(uv_loop_t *loop, int channel);
void sbx_spawner_client_close(void);

/* lifecycle.c */
struct sbx_create_opts {
    const char *template_id;
    const char *alias;
    int cpu_count, memory_mb; /* the template's; 0: the daemon's defaults */
    int timeout_s;
    bool secure;
    bool allow_internet;
    bool auto_pause;
    json_t *metadata; /* borrowed objects of strings */
    json_t *env_vars;
};
/* l is the new sandbox (NULL with err on failure); spawn_us the time the spawn took. */
typedef void (*sbx_lifecycle_create_cb)(struct sbx_live *l, struct sbx_error *err,
                                        uint64_t spawn_us, void *ud);
typedef void (*sbx_lifecycle_done_cb)(struct sbx_error *err, void *ud);
typedef void (*sbx_lifecycle_spawned_cb)(struct sbx_live *l, struct sbx_error *err, void *ud);
int sbx_lifecycle_recover(struct sbx_error **err);
void sbx_lifecycle_create(const struct sbx_create_opts *o, sbx_lifecycle_create_cb cb, void *ud);
/* Destroys l; cb (may be NULL) once nothing of it is left. l is no longer found from now. */
void sbx_lifecycle_kill(struct sbx_live *l, sbx_lifecycle_done_cb cb, void *ud);
/* The same with the reason logged, for a sandbox no client has (a pool's). */
void sbx_lifecycle_discard(struct sbx_live *l, const char *why);
/* For pool.c: a new sandbox with no client's identity (a pooled row), and its spawn; cb gets
 * l watched and running, or NULL and the error (all of it cleaned up then). */
struct sbx_live *sbx_lifecycle_new(const char *template_id, struct sbx_error **err);
void sbx_lifecycle_spawn(struct sbx_live *l, sbx_lifecycle_spawned_cb cb, void *ud);
int sbx_lifecycle_set_end(struct sbx_live *l, int64_t end_at_ms, struct sbx_error **err);
/* The live sandbox with this id, NULL if none (or it is being destroyed). */
struct sbx_live *sbx_lifecycle_find(const char *id);
void sbx_lifecycle_shutdown(void);

/* pool.c: warm pools, per template, of sandboxes started (agent up, a code interpreter's
 * default kernel warm) before any client asked; configured with --pool NAME=N and bounded by
 * --pool-memory-mb. */
struct sbx_pool;
struct sbx_pool_member;
int sbx_pool_configure(const char *spec, struct sbx_error **err);
/* Starts what the pools lack; called at start and whenever one gives a sandbox away. */
void sbx_pool_fill(void);
/* A warm sandbox of the template, taken out of its pool, or NULL. */
struct sbx_live *sbx_pool_take(const char *template_id);
/* l leaves its pool (its agent died, or it is destroyed). */
void sbx_pool_forget(struct sbx_live *l);
/* For a clean stop: destroys every pooled sandbox (nobody's, and they would otherwise run
 * until the next start), then calls done, at the latest after SBX_POOL_DRAIN_MS. */
void sbx_pool_drain(void (*done)(void));
/* GET /pools: each pool's template, target, warm and starting counts, memory estimate. */
json_t *sbx_pool_status(void);

/* live.c: the table of running sandboxes. Insert and remove keep its list, id index and
 * order of use together; remove accepts a sandbox never inserted. find also returns a
 * sandbox being destroyed (sbx_lifecycle_find does not). */
void sbx_live_insert(struct sbx_daemon *d, struct sbx_live *l);
void sbx_live_remove(struct sbx_daemon *d, struct sbx_live *l);
struct sbx_live *sbx_live_find(struct sbx_daemon *d, const char *id);
/* The sandbox was just used by someone who proved to own it (API key, its access token, a
 * valid signature): it becomes the first candidate of presigned URLs without an id. */
void sbx_live_touch(struct sbx_daemon *d, struct sbx_live *l);

/* frontend.c: the front end's life, as a worker of the supervisor (daemon.c): it serves the
 * listening socket, gets the channel to a spawner (and later ones through control), and
 * prints the export lines with shown_key (not when NULL: a restart). Returns its exit
 * status. */
int sbx_frontend_main(const struct sbx_daemon_config *cfg, int listen_fd, int control, int channel,
                      const char *shown_key);

/* api.c: control plane (X-API-KEY). */
void sbx_api_handle(struct sbx_http_req *req);
/* One answer format for the control plane: a JSON body (taken), or an error's status (one
 * table) and {"code", "message"}. */
void sbx_api_respond_json(struct sbx_http_req *req, int status, json_t *body);
void sbx_api_respond_err(struct sbx_http_req *req, const struct sbx_error *e);
json_t *sbx_api_time_json(int64_t wall_ms); /* RFC 3339 */

/* api_templates.c: the Template SDK's endpoints (templates.md §2). parts are the path's
 * segments after the version prefix (percent-decoded there). */
void sbx_api_templates_dispatch(struct sbx_http_req *req, json_t *body, char **parts, size_t n);
/* PUT of a COPY archive to a presigned upload URL: no API key, the URL's token. */
bool sbx_api_templates_is_upload(const struct sbx_http_req *req);
void sbx_api_templates_upload(struct sbx_http_req *req);
/* Pure decoding of the create body (POST /sandboxes) and of the timeout/refreshes bodies;
 * exposed for fuzz/fuzz_json_requests.c. The borrowed pointers in *out point into body. */
int sbx_api_create_opts_parse(json_t *body, bool v2, struct sbx_create_opts *out,
                              struct sbx_error **err);
int sbx_api_timeout_parse(json_t *body, bool extend_only, int64_t *secs, struct sbx_error **err);

/* router.c: entry point of every request. */
void sbx_router_on_request(struct sbx_http_req *req, void *ud);

#endif
