/* Shared state of the daemon's modules: configuration, the live sandbox table (a cache of
 * the store, rebuilt from it at start) and the entry points between router, API and
 * lifecycle. Single-threaded: everything runs on the default libuv loop. */
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
#include "store/store.h"

/* Host uids of sandboxes start here, far above any uid a host normally hands out; slot N
 * owns [SBX_DAEMON_UID_BASE + N * 65536, +65536). */
#define SBX_DAEMON_UID_BASE  1073741824u
#define SBX_DAEMON_ID_LEN    20
#define SBX_DAEMON_CLIENT_ID "6532622b" /* legacy constant the SDKs still require */
/* Hash buckets of the id index: a power of two, twice the sandbox cap (short chains). */
#define SBX_DAEMON_ID_BUCKETS (2 * SBX_MAX_SANDBOXES)

struct sbx_daemon_config {
    char *listen_host;
    int listen_port;
    char *state_dir;
    char *api_key; /* from --api-key / SBX_API_KEY, NULL otherwise */
    int memory_mb;
    int pids_max;
    int cpu_millis;
    int disk_mb;
    int header_timeout_s; /* client deadlines of the HTTP server */
    int idle_timeout_s;
};

/* A running sandbox. rec is the stored record, kept in sync with the store. */
struct sbx_live {
    struct sbx_sandbox_rec *rec;
    char *dir;       /* state_dir/sandboxes/<id> */
    char *sock_path; /* dir/agent.sock: listening fd held by the agent */
    int pidfd;
    uv_poll_t poll; /* on pidfd: the agent died */
    bool polling;
    uint64_t last_cpu_ns; /* for cpuUsedPct between two metric reads */
    int64_t last_cpu_wall_ms;
    struct sbx_live *next;    /* the daemon's list of every running sandbox */
    struct sbx_live *id_next; /* in its bucket of the id index */
    /* In the order of last use, newest first; secure sandboxes only (see live.c). */
    struct sbx_live *recent_prev, *recent_next;
};

struct sbx_daemon {
    struct sbx_daemon_config cfg;
    uv_loop_t *loop;
    struct sbx_store *store;
    struct sbx_http_server *http;
    char *template_dir;
    int exe_fd;            /* this binary, exec'd as the agent inside sandboxes */
    struct sbx_live *live; /* every running sandbox (live.c owns the three views) */
    struct sbx_live *by_id[SBX_DAEMON_ID_BUCKETS];
    struct sbx_live *recent; /* the secure sandbox used last */
    uv_timer_t expiry;       /* fires at the soonest end_at */
    uv_signal_t sigterm, sigint;
};

extern struct sbx_daemon *sbx_daemon;

/* lifecycle.c */
struct sbx_create_opts {
    const char *template_id;
    const char *alias;
    int timeout_s;
    bool secure;
    bool allow_internet;
    bool auto_pause;
    json_t *metadata; /* borrowed objects of strings */
    json_t *env_vars;
};
int sbx_lifecycle_recover(struct sbx_error **err);
struct sbx_live *sbx_lifecycle_create(const struct sbx_create_opts *o, uint64_t *spawn_us,
                                      struct sbx_error **err);
int sbx_lifecycle_kill(struct sbx_live *l, struct sbx_error **err);
int sbx_lifecycle_set_end(struct sbx_live *l, int64_t end_at_ms, struct sbx_error **err);
void sbx_lifecycle_shutdown(void);

/* live.c: the table of running sandboxes. Insert and remove keep its list, id index and
 * order of use together; remove accepts a sandbox never inserted. */
void sbx_live_insert(struct sbx_daemon *d, struct sbx_live *l);
void sbx_live_remove(struct sbx_daemon *d, struct sbx_live *l);
struct sbx_live *sbx_live_find(struct sbx_daemon *d, const char *id);
/* The sandbox was just used by someone who proved to own it (API key, its access token, a
 * valid signature): it becomes the first candidate of presigned URLs without an id. */
void sbx_live_touch(struct sbx_daemon *d, struct sbx_live *l);

/* api.c: control plane (X-API-KEY). */
void sbx_api_handle(struct sbx_http_req *req);
/* Pure decoding of the create body (POST /sandboxes) and of the timeout/refreshes bodies;
 * exposed for fuzz/fuzz_json_requests.c. The borrowed pointers in *out point into body. */
int sbx_api_create_opts_parse(json_t *body, bool v2, struct sbx_create_opts *out,
                              struct sbx_error **err);
int sbx_api_timeout_parse(json_t *body, bool extend_only, int64_t *secs, struct sbx_error **err);

/* router.c: entry point of every request. */
void sbx_router_on_request(struct sbx_http_req *req, void *ud);

#endif
