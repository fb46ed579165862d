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
    int build_disk_mb;        /* --build-disk-mb */
    char *metrics_host;       /* --metrics-listen: /metrics without a key there; NULL: none */
    int log_retention_h;      /* sandbox logs are kept this long after their sandbox ends */
    int log_store_mb;         /* ... and within this many MiB in all */
    int metrics_port;
    int64_t paused_retention_s; /* --paused-retention: paused sandboxes are deleted after */
    int volume_mb;              /* --volume-mb: the size of a new volume */
    char *domain; /* --domain: sandbox URLs are <port>-<id>.<domain>; NULL: localhost:<port> */
    char *tls_cert, *tls_key;         /* --tls-cert, --tls-key: the files */
    char *tls_cert_pem, *tls_key_pem; /* their contents, read by the supervisor (root) */
    /* The sandbox network: --network-cidr (NULL: derived from the uid block; "off": none),
     * --allow-private; net is filled at start, once the uid block is known. */
    char *network_cidr;
    struct sbx_ip4_range opened[SBX_NET_MAX_OPENED];
    size_t n_opened;
    bool net_on;
    struct sbx_net_config net;
};

/* config.c: fills c from defaults, SBX_* variables and flags (in that order, later wins).
 * Returns -1 to go on, else the exit status (after --help, or a usage error it printed). */
int sbx_daemon_config_parse(int argc, char **argv, struct sbx_daemon_config *c);

/* A running sandbox. rec is the stored record, kept in sync with the store. */
struct sbx_live {
    struct sbx_sandbox_rec *rec;
    char *dir;                /* state_dir/sandboxes/<id> */
    char *sock_path;          /* dir/agent.sock: listening fd held by the agent */
    int pidfd;                /* of the agent, while it runs (-1 when paused to its disk) */
    uv_poll_t *poll;          /* on pidfd: the agent died */
    bool dying;               /* a destroy was asked for: no longer found, never asked twice */
    struct sbx_pause_op *ops; /* pause.c: the pause, resume or kill under way, then queued */
    bool agent_gone;          /* its agent exited while one was under way */
    uint64_t last_cpu_ns;     /* for cpuUsedPct between two metric reads */
    int64_t last_cpu_wall_ms;
    struct sbx_live *next;    /* the daemon's list of every running sandbox */
    struct sbx_live *id_next; /* in its bucket of the id index */
    /* In the order of last use, newest first; secure sandboxes only (see live.c). */
    struct sbx_live *recent_prev, *recent_next;
    struct sbx_pool *pool;              /* pool.c: the pool it waits in (not in the table then) */
    struct sbx_live *pool_next;         /* in its pool's list of warm sandboxes */
    struct sbx_pool_member *warming;    /* pool.c: while it warms up */
    struct sbx_volume_service *service; /* volumes.c: it serves this volume's content API */
    struct sbx_netset *net;             /* egress.c: its network settings, from rec->network_json */
};

struct sbx_daemon {
    struct sbx_daemon_config cfg;
    uv_loop_t *loop;
    struct sbx_store *store;
    char *uploads_dir;   /* db/uploads: COPY archives, <files hash>.tar */
    char upload_key[65]; /* HMAC key of upload URLs (hex), new at every start */
    struct sbx_http_server *http;
    struct sbx_http_server *metrics_http; /* --metrics-listen, NULL without */
    struct sbx_live *live;                /* every running sandbox (live.c owns the three views) */
    struct sbx_live *by_id[SBX_DAEMON_ID_BUCKETS];
    struct sbx_live *recent; /* the secure sandbox used last */
    /* Every sandbox of ours by uid slot, pooled ones too: the slot is its network address
     * (DNS queries and proxied connections name it by that). */
    struct sbx_live *by_slot[SBX_MAX_SANDBOXES];
    uv_timer_t expiry;    /* fires at the soonest end_at */
    uv_timer_t log_prune; /* sandbox logs past their retention */
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
    bool auto_pause;        /* at the timeout: pause, not kill (lifecycle.onTimeout) */
    bool auto_pause_memory; /* ... keeping memory */
    bool auto_resume;       /* a request for it while paused resumes it */
    json_t *metadata;       /* borrowed objects of strings */
    json_t *env_vars;
    json_t *volume_mounts;          /* borrowed [{name, path}], checked but not resolved */
    const char *volume_mounts_json; /* resolved: [{name, path, volumeID}] (sbx_volumes_resolve) */
    json_t *network; /* the network settings as stored (egress.c); owned, see _fini */
};
/* l is the new sandbox (NULL with err on failure); spawn_us the time the spawn took. */
typedef void (*sbx_lifecycle_create_cb)(struct sbx_live *l, struct sbx_error *err,
                                        uint64_t spawn_us, void *ud);
typedef void (*sbx_lifecycle_done_cb)(struct sbx_error *err, void *ud);
typedef void (*sbx_lifecycle_spawned_cb)(struct sbx_live *l, struct sbx_error *err, void *ud);
int sbx_lifecycle_recover(struct sbx_error **err);
void sbx_lifecycle_create(const struct sbx_create_opts *o, sbx_lifecycle_create_cb cb, void *ud);
/* Destroys l; cb (may be NULL) once nothing of it is left. l is no longer found from now; a
 * pause or resume under way finishes first. */
void sbx_lifecycle_kill(struct sbx_live *l, sbx_lifecycle_done_cb cb, void *ud);
/* The same with the reason logged (a pool's sandbox nobody has, a timeout, ...). */
void sbx_lifecycle_destroy(struct sbx_live *l, const char *why, sbx_lifecycle_done_cb cb, void *ud);
/* For pool.c: a new sandbox with no client's identity (a pooled row), and its spawn; cb gets
 * l watched and running, or NULL and the error (all of it cleaned up then). */
struct sbx_live *sbx_lifecycle_new(const char *template_id, struct sbx_error **err);
void sbx_lifecycle_spawn(struct sbx_live *l, sbx_lifecycle_spawned_cb cb, void *ud);
int sbx_lifecycle_set_end(struct sbx_live *l, int64_t end_at_ms, struct sbx_error **err);
/* Watching the agent of l: its pidfd, and a poll that destroys l when it exits (or, for a
 * paused l, keeps its disk). unwatch closes both; it may be called when nothing is watched. */
int sbx_lifecycle_watch(struct sbx_live *l, struct sbx_error **err);
void sbx_lifecycle_unwatch(struct sbx_live *l);
/* l's agent exited: a running l is destroyed, a paused one keeps its disk; decided once what
 * is under way (pause.c) has ended. */
void sbx_lifecycle_agent_gone(struct sbx_live *l);
/* The template a sandbox is of: the name the client gave (with its tag), else the template's
 * id or a pool's name. */
int sbx_lifecycle_template_of(const struct sbx_sandbox_rec *rec, struct sbx_template_ref *ref,
                              struct sbx_error **err);
/* The agent's config (tokens, env vars) for a spawn of l, as an fd for the spawner. */
int sbx_lifecycle_config_fd(const struct sbx_live *l, struct sbx_error **err);
/* The spawn request for l (its limits, uid slot and volumes); reboot: on the disk it kept. */
int sbx_lifecycle_spawn_req(const struct sbx_live *l, bool reboot, struct sbx_spawner_msg *req,
                            struct sbx_error **err);
/* When the soonest deadline (a timeout, the end of a paused sandbox's retention) is due. */
void sbx_lifecycle_arm_expiry(void);
/* The live sandbox with this id, NULL if none (or it is being destroyed). */
struct sbx_live *sbx_lifecycle_find(const char *id);
void sbx_lifecycle_shutdown(void);

/* Group commit (durable.c): sbx_durable_mark, taken right after a store write that starts or
 * ends a sandbox's life, names it; sbx_durable calls cb once it is on disk: at once if it is,
 * else after an fsync run off the event loop. */
uint64_t sbx_durable_mark(void);
void sbx_durable(uint64_t mark, void (*cb)(void *ud), void *ud);

/* pause.c: pause and resume of a client's sandbox, memory kept (frozen in place) or to its
 * disk only (its processes stopped; it boots again on resume, same id, tokens and env vars).
 * One at a time per sandbox: what is asked during one runs after it, in order. cb gets l, or
 * NULL with err if it failed or l was killed meanwhile, and the time it took (queued too). */
typedef void (*sbx_pause_cb)(struct sbx_live *l, struct sbx_error *err, uint64_t took_us, void *ud);
/* A client's pause: 409 (SBX_FAILED_PRECONDITION) if paused already or under way. */
void sbx_pause(struct sbx_live *l, bool memory, sbx_pause_cb cb, void *ud);
/* At the timeout, or to give up memory its agent no longer has: no client waits. */
void sbx_pause_quietly(struct sbx_live *l, bool memory, const char *why);
/* Resumes l once what is under way is done: memory false boots it again on its disk even if
 * its memory was kept. The new end is now + timeout_s; a running l's end only grows. */
void sbx_resume(struct sbx_live *l, bool memory, int timeout_s, sbx_pause_cb cb, void *ud);
/* At start, for a sandbox found in the store: makes what a restart cut short agree with the
 * record (frozen if paused with its memory and agent, stopped if paused to its disk, thawed if
 * running). agent: its agent is alive (and watched). */
void sbx_pause_settle(struct sbx_live *l, bool agent);
/* A snapshot of l (snapshots.c): once what is under way is done, its writable layer is copied
 * as layer key, l frozen meanwhile and running again after. layers (the caller's, room for
 * SBX_LAYERS_MAX keys) gets the stack l runs on; cb gets l, or NULL and err: SBX_NOT_FOUND if
 * l is paused or was killed. */
void sbx_pause_snapshot(struct sbx_live *l, const char *key, char *layers, sbx_pause_cb cb,
                        void *ud);
/* cb (with l, never an error) once everything asked of l before is done. */
void sbx_pause_wait(struct sbx_live *l, sbx_pause_cb cb, void *ud);
/* A kill asked while a pause or resume is under way waits for it: true if it was queued. */
bool sbx_pause_queue_kill(struct sbx_live *l, const char *why, sbx_lifecycle_done_cb cb, void *ud);
/* Running, with nothing under way (traffic may go to its agent). */
bool sbx_live_is_running(const struct sbx_live *l);
bool sbx_live_is_paused(const struct sbx_live *l);
/* "pausing" or "resuming" while one is under way (first in the queue), else NULL. */
const char *sbx_pause_transition(const struct sbx_live *l);

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
/* For a clean stop: destroys every pooled sandbox and volume service (nobody's, and they would
 * otherwise run until the next start), then calls done, at the latest after SBX_POOL_DRAIN_MS. */
void sbx_pool_drain(void (*done)(void));
/* GET /pools: each pool's template, target, warm and starting counts, memory estimate. */
json_t *sbx_pool_status(void);

/* volumes.c: volumes (POST/GET/DELETE /volumes), their content API (/volumecontent/..., with
 * the volume's token), served by a sandbox of the volume's own (its "service", started on
 * demand, stopped when idle), and the volumes a create mounts. */
struct sbx_volume_service;
/* /volumes[/{id}] of an authorized client (parts: the path's segments). */
void sbx_volumes_api(struct sbx_http_req *req, json_t *body, char **parts, size_t n);
/* /volumecontent/...: false if req is not for it. */
bool sbx_volumes_content(struct sbx_http_req *req);
/* Pure: whether create's volumeMounts is [{name, path}] with at most SBX_SANDBOX_MAX_VOLUMES
 * entries, valid names and paths a sandbox may have (none twice or inside another). */
int sbx_volumes_check_mounts(json_t *mounts, struct sbx_error **err);
/* Create's volumeMounts (checked by sbx_api_create_opts_parse) with each name resolved to its
 * volume: a malloc'd [{name, path, volumeID}], or NULL and the API's 400. */
char *sbx_volumes_resolve(json_t *mounts, struct sbx_error **err);
/* The "<volumeID>:<path>" lines of a spawn request (spawner/msg.h). */
int sbx_volumes_spawn_lines(const char *mounts_json, char *out, size_t cap, struct sbx_error **err);
/* l, the service of a volume, is gone. */
void sbx_volumes_forget(struct sbx_live *l);
/* For a clean stop: destroys every running service (cb for each); returns how many. */
int sbx_volumes_drain(sbx_lifecycle_done_cb cb);

/* live.c: the table of running sandboxes. Insert and remove keep its list, id index and
 * order of use together; remove accepts a sandbox never inserted. find also returns a
 * sandbox being destroyed (sbx_lifecycle_find does not). */
void sbx_live_insert(struct sbx_daemon *d, struct sbx_live *l);
void sbx_live_remove(struct sbx_daemon *d, struct sbx_live *l);
struct sbx_live *sbx_live_find(struct sbx_daemon *d, const char *id);
/* The sandbox was just used by someone who proved to own it (API key, its access token, a
 * valid signature): it becomes the first candidate of presigned URLs without an id. */
void sbx_live_touch(struct sbx_daemon *d, struct sbx_live *l);
/* The sandbox whose network address a is (pooled ones too), or NULL. */
struct sbx_live *sbx_live_by_addr(struct sbx_daemon *d, uint32_t a);

/* frontend.c: the front end's life, as a worker of the supervisor (daemon.c): it serves the
 * listening socket, gets the channel to a spawner (and later ones through control), and
 * prints the export lines with shown_key (not when NULL: a restart). Returns its exit
 * status. */
int sbx_frontend_main(const struct sbx_daemon_config *cfg, int listen_fd, int metrics_fd,
                      int control, int channel, const char *shown_key);

/* metrics.c: counters, bumped where things happen; GET /metrics renders them with per-sandbox
 * gauges from the spawner. request_done is the HTTP servers' observer. */
void sbx_metrics_init(void);
void sbx_metrics_request_done(const struct sbx_http_req *req, int status, void *ud);
void sbx_metrics_created(uint64_t spawn_us);
/* A template build ended (ready, or failed) after ms milliseconds. */
void sbx_metrics_build_done(bool ready, uint64_t ms);
void sbx_metrics_create_failed(enum sbx_code code);
/* reason: as destroy names it (killed, timeout, agent_exited, create_failed, ...). */
void sbx_metrics_ended(const char *reason);
void sbx_metrics_auth_failure(void);
/* A create found a warm sandbox in its template's pool (hit), or had to start one. */
void sbx_metrics_pool_take(bool hit);
void sbx_metrics_spawner_restart(void);
void sbx_metrics_handle(struct sbx_http_req *req);
/* The request handler of --metrics-listen: /metrics and /health, no key, nothing else. */
void sbx_metrics_on_request(struct sbx_http_req *req, void *ud);

/* logs.c: sandbox logs. event appends one of the daemon's events (a logfmt tail) to the log
 * of sandbox id; capture stores l's agent log (when the agent still runs) and then calls done;
 * prune drops logs past their retention; handle answers GET [/v2]/sandboxes/{id}/logs. */
void sbx_logs_event(const char *id, const char *level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void sbx_logs_capture(struct sbx_live *l, bool agent_alive, void (*done)(void *ud), void *ud);
void sbx_logs_prune(void);
void sbx_logs_handle(struct sbx_http_req *req, const char *id, bool v2);

/* api.c: control plane (X-API-KEY). */
#define SBX_API_N_TEMPLATES 5
extern const char *const sbx_api_templates[SBX_API_N_TEMPLATES]; /* the template names served */
void sbx_api_handle(struct sbx_http_req *req);
/* The Sandbox object create answers with (what fork answers per sandbox too). */
json_t *sbx_api_sandbox_json(const struct sbx_sandbox_rec *r);
/* Answers body (stolen) as JSON; an error as {"code","message"} with its status. */
void sbx_api_respond_json(struct sbx_http_req *req, int status, json_t *body);
void sbx_api_respond_err(struct sbx_http_req *req, const struct sbx_error *e);
/* unsupported.c: answers 501 naming the feature when the path (split into n parts) is an E2B
 * endpoint this server does not implement; false (nothing answered) otherwise. */
bool sbx_api_unsupported(struct sbx_http_req *req, char **parts, size_t n);

/* auth.c: API keys. check answers the request itself (401, or 429 for an address that failed
 * too often) and returns false when it carries no valid key; *who says which key it is.
 * keys_handle serves /api-keys[/{id}] (parts: the path's segments) for an admin key. */
bool sbx_auth_check(struct sbx_http_req *req, struct sbx_api_key_auth *who);
void sbx_auth_keys_handle(struct sbx_http_req *req, char **parts, size_t n, json_t *body);
json_t *sbx_api_time_json(int64_t wall_ms); /* RFC 3339 */

/* api_templates.c: the Template SDK's endpoints (templates.md §2). parts are the path's
 * segments after the version prefix (percent-decoded there). */
void sbx_api_templates_dispatch(struct sbx_http_req *req, json_t *body, char **parts, size_t n);
/* PUT of a COPY archive to a presigned upload URL: no API key, the URL's token. */
bool sbx_api_templates_is_upload(const struct sbx_http_req *req);
void sbx_api_templates_upload(struct sbx_http_req *req);
void sbx_api_templates_collect_uploads(void);
/* A new build id: a random version 4 UUID. */
void sbx_api_new_uuid(char out[SBX_STORE_BUILD_ID_LEN + 1]);

/* snapshots.c: snapshots of running sandboxes (POST /sandboxes/{id}/snapshots, GET /snapshots;
 * they are templates, deleted as templates) and forks (POST /sandboxes/{id}/fork): copies of a
 * sandbox's files, never of its processes or memory. */
void sbx_snapshots_create(struct sbx_http_req *req, const char *id, json_t *body);
void sbx_snapshots_list(struct sbx_http_req *req);
void sbx_snapshots_fork(struct sbx_http_req *req, const char *id, json_t *body);
/* Pure decoding of the create body (POST /sandboxes) and of the timeout/refreshes bodies;
 * exposed for fuzz/fuzz_json_requests.c. The borrowed pointers in *out point into body. */
int sbx_api_create_opts_parse(json_t *body, bool v2, struct sbx_create_opts *out,
                              struct sbx_error **err);
int sbx_api_timeout_parse(json_t *body, bool extend_only, int64_t *secs, struct sbx_error **err);

void sbx_api_create_opts_fini(struct sbx_create_opts *o);

/* egress.c: a sandbox's network settings (spec network.md §1, §4). */
struct sbx_netset {
    struct sbx_ip4_range *allow, *deny; /* normalised */
    size_t n_allow, n_deny;
    bool deny_all;       /* denyOut covers every address: only allowed names resolve */
    bool public_traffic; /* allowPublicTraffic: false means user ports need the traffic token */
    char *mask_host;     /* maskRequestHost, NULL if none */
    int *https_ports;    /* httpsPorts: ports whose service serves HTTPS itself */
    size_t n_https_ports;
    char **domains; /* allowOut's host name patterns, lowercase */
    size_t n_domains;
    char *proxy_host; /* egressProxy (SOCKS5), NULL if none */
    int proxy_port;
    char *proxy_user, *proxy_pass;
};
/* Decodes a create's "network" (NULL if absent) and allow_internet_access (-1 absent, 0, 1)
 * into the stored form (*stored, a new object); errors are the spec's 400s, or 501 for what
 * this server does not do. */
int sbx_netset_decode(json_t *network, int allow_internet, json_t **stored, struct sbx_error **err);
/* The body of PUT /sandboxes/{id}/network: replaces the egress part of old (stored, NULL:
 * none), keeps its ingress options. */
int sbx_netset_decode_update(json_t *body, const char *old, json_t **stored,
                             struct sbx_error **err);
/* An egress proxy at an IP address must not be one sandboxes may not reach themselves (a
 * name is checked when it is resolved, at each connection). */
int sbx_netset_check_proxy(json_t *stored, const struct sbx_ip4_range *blocked, size_t n,
                           struct sbx_error **err);
/* From the stored form (NULL: the defaults); never NULL. */
struct sbx_netset *sbx_netset_load(const char *stored);
void sbx_netset_free(struct sbx_netset *n);
/* Whether it has no egress rule (nothing for the spawner to apply). */
bool sbx_netset_is_default(const struct sbx_netset *n);
void sbx_netset_to_msg(const struct sbx_netset *n, struct sbx_spawner_msg *m);
/* Whether name matches an allowOut host name pattern ("a.com", "*.a.com", "*"). */
bool sbx_netset_name_allowed(const struct sbx_netset *n, const char *name);

/* dns.c: the sandboxes' DNS forwarder, on the gateway, to the host's resolvers. */
/* A socket of type bound to the gateway's address (port 0: any), or -errno. */
int sbx_gateway_socket(const struct sbx_daemon *d, int type);
int sbx_dns_start(struct sbx_daemon *d, struct sbx_error **err);
/* Its port, for the spawner's redirection (0 when the network is off). */
uint16_t sbx_dns_port(void);

/* outbound.c: the sandboxes' egress proxy (host name rules, SOCKS5), on the gateway. */
int sbx_outbound_start(struct sbx_daemon *d, struct sbx_error **err);
uint16_t sbx_outbound_port(void);

/* router.c: entry point of every request. */
void sbx_router_on_request(struct sbx_http_req *req, void *ud);

#endif
