/* The daemon's durable state: API keys, sandboxes and volumes, in one embedded SQLite database
 * (WAL mode). Everything the daemon must remember across a restart lives here; nothing
 * lives only in memory.
 *
 * The interface is deliberately narrow (records in, records out, no SQL, no SQLite types)
 * so that a multi-node deployment can swap in a shared database behind the same calls.
 * This module never logs, never speaks HTTP or JSON to clients, and never touches a
 * sandbox: it only remembers. Not thread-safe: the daemon uses it from its single loop
 * thread. */
#ifndef SBX_STORE_H
#define SBX_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define SBX_STORE_ID_MAX           64           /* sandbox ids are short lowercase alphanumerics */
#define SBX_STORE_LIST_MAX         100          /* limit of one list page (GET /v2/sandboxes) */
#define SBX_STORE_API_KEY_MAX      512          /* longest API key accepted by add/check */
#define SBX_STORE_API_KEY_NAME_MAX 64           /* longest name of a key */
#define SBX_STORE_MAX_META_FILTERS 256          /* metadata pairs in one list query */
#define SBX_STORE_SANDBOX_LOG_MAX  (512 * 1024) /* bytes of log lines kept per sandbox */

struct sbx_store;
struct sbx_buf;

/* One sandbox as remembered. Strings are malloc'd and owned by the record. */
struct sbx_sandbox_rec {
    char id[SBX_STORE_ID_MAX + 1];
    char *template_id;     /* resolved template id */
    char *alias;           /* template alias as requested, NULL if none */
    char *metadata_json;   /* JSON object of string -> string, "{}" if none */
    char *env_vars_json;   /* JSON object of string -> string, "{}" if none */
    char *access_token;    /* envdAccessToken, NULL for a non-secure sandbox (a secret) */
    char *traffic_token;   /* trafficAccessToken, NULL if none (a secret) */
    int64_t started_at_ms; /* wall clock, ms since the epoch */
    int64_t end_at_ms;     /* wall clock; the daemon kills (or pauses) the sandbox then */
    int cpu_count;
    int memory_mb;
    int disk_mb;
    int uid_slot;            /* index of the host uid range (see sbx_store_free_uid_slot) */
    int pid;                 /* host pid of the sandbox's agent, 0 if none */
    uint64_t pid_start_time; /* starttime of that pid (/proc/PID/stat field 22): with pid,
                              * tells a live agent from a recycled pid after a restart */
    char *state;             /* "running" or "paused" */
    bool allow_internet;
    bool auto_pause;          /* at end_at: pause instead of kill */
    bool pooled;              /* in a warm pool: no client's yet, never listed (see query); with
                               * a volume mounted, that volume's content service (volumes.c) */
    bool paused_memory;       /* paused in place, memory kept (else to its disk only) */
    bool auto_pause_memory;   /* an automatic pause keeps memory (else to its disk only) */
    bool auto_resume;         /* a request for it while paused resumes it */
    int timeout_s;            /* asked at create: the timeout of an automatic resume */
    char *volume_mounts_json; /* [{"name","path","volumeID"}], "[]" if none */
    char *network_json;       /* network settings as the front end stores them; NULL: defaults */
};

/* A volume: storage that sandboxes mount (its data is the spawner's, in the state dir). */
struct sbx_volume_rec {
    char id[SBX_STORE_ID_MAX + 1];
    char *name;  /* unique, [a-zA-Z0-9_-]+ */
    char *token; /* the bearer token of its content API (a secret) */
    int size_mb;
    int64_t created_at_ms;
};

struct sbx_volume_list {
    struct sbx_volume_rec **items;
    size_t n;
};

struct sbx_sandbox_list {
    struct sbx_sandbox_rec **items;
    size_t n;
    /* Set only by sbx_store_sandbox_query, and only when more items match after this page:
     * the opaque cursor for the next page (the X-Next-Token header). NULL otherwise. */
    char *next_token;
};

/* Opens (creating if needed) the database at path, in WAL mode, and brings its schema to
 * the current version. A database written by a newer sbx is refused. The file is created
 * 0600: it holds access tokens. */
struct sbx_store *sbx_store_open(const char *path, struct sbx_error **err);
void sbx_store_close(struct sbx_store *s);

/* API keys: named, admin or not, revocable. Stored as SHA-256 hashes, never in clear; what
 * the store keeps of the key itself is its mask (type prefix, 2 and 4 characters). */
struct sbx_api_key {
    char id[37];         /* a random UUID */
    char *name;          /* malloc'd */
    char type[8];        /* "e2b_": the key up to its first '_', "" if none */
    char mask_prefix[4]; /* the 2 characters after the type, "" for a key of before names */
    char mask_suffix[8]; /* the last 4 characters */
    int length;          /* characters after the type */
    bool admin;          /* may manage keys and read /metrics */
    int64_t created_at_ms;
    int64_t last_used_at_ms; /* 0: never (updated at most once a minute) */
    int64_t revoked_at_ms;   /* 0: valid */
};
struct sbx_api_key_list {
    struct sbx_api_key *items;
    size_t n;
};
/* Who a valid key is. */
struct sbx_api_key_auth {
    char id[37];
    bool admin;
};

/* Adds key under name; *out (may be NULL) gets its record. A key already known, valid or
 * revoked: SBX_ALREADY_EXISTS (a revoked key is never valid again). */
int sbx_store_api_key_add(struct sbx_store *s, const char *key, const char *name, bool admin,
                          struct sbx_api_key *out, struct sbx_error **err);
/* True iff key is a valid (stored, unrevoked) key; *who (may be NULL) says which. Every
 * stored hash is compared in constant time, with no early exit. A database error answers
 * false (deny). */
bool sbx_store_api_key_check(struct sbx_store *s, const char *key, struct sbx_api_key_auth *who);
/* The record of key, valid or revoked; SBX_NOT_FOUND if it was never added. */
int sbx_store_api_key_find(struct sbx_store *s, const char *key, struct sbx_api_key *out,
                           struct sbx_error **err);
int sbx_store_api_key_touch(struct sbx_store *s, const char *id, int64_t now_ms,
                            struct sbx_error **err);
/* The valid keys, oldest first. */
int sbx_store_api_key_list(struct sbx_store *s, struct sbx_api_key_list **out,
                           struct sbx_error **err);
/* Revokes the valid key id at once: SBX_NOT_FOUND if there is none, SBX_FAILED_PRECONDITION
 * if it is the last valid admin key (nobody could manage keys any more). Atomic against
 * concurrent revocations. */
int sbx_store_api_key_revoke(struct sbx_store *s, const char *id, struct sbx_error **err);
/* Number of keys ever added (revoked ones included), or -1 with *err. */
int64_t sbx_store_api_key_count(struct sbx_store *s, struct sbx_error **err);
void sbx_api_key_list_free(struct sbx_api_key_list *l);

/* Daemon settings, string to string. get sets *value to a malloc'd string, or NULL when the
 * key was never set. */
int sbx_store_setting_get(struct sbx_store *s, const char *key, char **value,
                          struct sbx_error **err);
int sbx_store_setting_set(struct sbx_store *s, const char *key, const char *value,
                          struct sbx_error **err);

/* Group commit, for a process that must not wait for the disk on its one thread: after
 * this, the writes that start or end a sandbox's life (insert, adopt, delete) and those of
 * its network rules (update_network, made as often as a client likes) return before
 * they are fsynced, each adding one to sbx_store_deferred. sbx_store_sync makes every commit
 * made before it started durable; it touches nothing but a file descriptor, so another thread
 * may run it while this one goes on with the store. It returns 0 or -errno. */
int sbx_store_defer_sync(struct sbx_store *s, struct sbx_error **err);
uint64_t sbx_store_deferred(const struct sbx_store *s);
int sbx_store_sync(const struct sbx_store *s);

/* Inserts a new sandbox. An existing id or an already used uid_slot: SBX_ALREADY_EXISTS. */
int sbx_store_sandbox_insert(struct sbx_store *s, const struct sbx_sandbox_rec *rec,
                             struct sbx_error **err);
/* *out is a new record, or SBX_NOT_FOUND. */
int sbx_store_sandbox_get(struct sbx_store *s, const char *id, struct sbx_sandbox_rec **out,
                          struct sbx_error **err);
/* The updates and delete fail with SBX_NOT_FOUND for an unknown id. */
int sbx_store_sandbox_update_end_at(struct sbx_store *s, const char *id, int64_t end_at_ms,
                                    struct sbx_error **err);
int sbx_store_sandbox_update_pid(struct sbx_store *s, const char *id, int pid,
                                 uint64_t pid_start_time, struct sbx_error **err);
/* Hands a pooled sandbox to a client: its row takes r's template, alias, metadata, env vars,
 * tokens, times and options (the timeout policy too) and is listed from now on. SBX_NOT_FOUND
 * unless r->id is a pooled row. */
int sbx_store_sandbox_adopt(struct sbx_store *s, const struct sbx_sandbox_rec *r,
                            struct sbx_error **err);
/* Paused (memory: in place, else to its disk) or running again, with its new end_at (while
 * paused, the time it was paused). */
int sbx_store_sandbox_set_paused(struct sbx_store *s, const char *id, bool paused, bool memory,
                                 int64_t end_at_ms, struct sbx_error **err);
/* Pause (true) or kill at end_at, as the deprecated resume's autoPause asks. */
int sbx_store_sandbox_set_auto_pause(struct sbx_store *s, const char *id, bool auto_pause,
                                     struct sbx_error **err);
/* The sandbox's network settings (PUT /sandboxes/{id}/network). */
int sbx_store_sandbox_update_network(struct sbx_store *s, const char *id, bool allow_internet,
                                     const char *network_json, struct sbx_error **err);
int sbx_store_sandbox_delete(struct sbx_store *s, const char *id, struct sbx_error **err);
/* Every sandbox, oldest first (the daemon's startup recovery walks it). */
int sbx_store_sandbox_list_all(struct sbx_store *s, struct sbx_sandbox_list **out,
                               struct sbx_error **err);

enum sbx_store_state_mask {
    SBX_STORE_STATE_RUNNING = 1 << 0,
    SBX_STORE_STATE_PAUSED = 1 << 1,
};

/* One page of GET /v2/sandboxes (pooled sandboxes never appear). Zero-initialised means: both
 * states, no filter, newest first, SBX_STORE_LIST_MAX items, first page. */
struct sbx_store_query {
    unsigned states;                /* enum sbx_store_state_mask bits; 0 = both */
    const char *const *meta_keys;   /* n_meta pairs; a sandbox matches iff every */
    const char *const *meta_values; /* key is present in its metadata with that value */
    size_t n_meta;
    const char *template_id; /* matches template_id or alias exactly; NULL = any */
    bool has_started_after;
    int64_t started_after_ms; /* inclusive */
    bool ascending;           /* default: newest first */
    int limit;                /* 1..SBX_STORE_LIST_MAX; 0 = SBX_STORE_LIST_MAX */
    const char *next_token;   /* from a previous page; NULL = first page */
};

/* Orders by (started_at_ms, id), both descending (or both ascending), so the order is
 * total and a page starts strictly after the previous page's last item: equal start
 * times neither repeat nor skip across pages. A malformed next_token or a limit outside
 * 1..100: SBX_INVALID_ARGUMENT. */
int sbx_store_sandbox_query(struct sbx_store *s, const struct sbx_store_query *q,
                            struct sbx_sandbox_list **out, struct sbx_error **err);

/* Lowest uid slot in 0..SBX_MAX_SANDBOXES-SBX_MAX_BUILDS-1 that no sandbox row uses (a killed
 * sandbox's slot is reused once its row is deleted). All used: SBX_RESOURCE_EXHAUSTED. */
int sbx_store_free_uid_slot(struct sbx_store *s, int *slot, struct sbx_error **err);

/* Sandbox logs: a log is opened when its sandbox is created, gets lines (logfmt text, each
 * with its time and its source: "agent" or "daemon") while it runs and when it ends, is
 * closed at the end and pruned later. At most SBX_STORE_SANDBOX_LOG_MAX bytes of lines per
 * sandbox; lines beyond are dropped. */
struct sbx_log_line {
    int64_t ts_ms;
    char *source;
    char *line;
};
struct sbx_log_lines {
    struct sbx_log_line *items; /* oldest first */
    size_t n;
    int64_t ended_at_ms; /* 0: the sandbox still runs */
};
int sbx_store_log_open(struct sbx_store *s, const char *id, const char *template_id,
                       int64_t started_at_ms, struct sbx_error **err);
/* lines[i].source is ignored: source applies to all. SBX_NOT_FOUND for a log never opened. */
int sbx_store_log_append(struct sbx_store *s, const char *id, const char *source,
                         const struct sbx_log_line *lines, size_t n, struct sbx_error **err);
int sbx_store_log_close(struct sbx_store *s, const char *id, int64_t ended_at_ms,
                        struct sbx_error **err);
/* The whole log of id; SBX_NOT_FOUND if there is none (never created, or pruned). */
int sbx_store_log_get(struct sbx_store *s, const char *id, struct sbx_log_lines **out,
                      struct sbx_error **err);
/* Deletes the logs of sandboxes that ended before ended_before_ms, then, oldest end first,
 * those beyond max_total_bytes in all; *pruned: how many logs went. */
int sbx_store_log_prune(struct sbx_store *s, int64_t ended_before_ms, int64_t max_total_bytes,
                        int *pruned, struct sbx_error **err);
void sbx_log_lines_free(struct sbx_log_lines *l);
/* Volumes. insert: a taken name is SBX_ALREADY_EXISTS ("Volume with name '<n>' already
 * exists"). get: by id, or by name when id is NULL; SBX_NOT_FOUND. list: oldest first. */
int sbx_store_volume_insert(struct sbx_store *s, const struct sbx_volume_rec *v,
                            struct sbx_error **err);
int sbx_store_volume_get(struct sbx_store *s, const char *id, const char *name,
                         struct sbx_volume_rec **out, struct sbx_error **err);
int sbx_store_volume_list(struct sbx_store *s, struct sbx_volume_list **out,
                          struct sbx_error **err);
int sbx_store_volume_delete(struct sbx_store *s, const char *id, struct sbx_error **err);
/* The id of a client's sandbox (running or paused) that mounts the volume into sandbox_id, ""
 * if none does. */
int sbx_store_volume_user(struct sbx_store *s, const char *volume_id,
                          char sandbox_id[SBX_STORE_ID_MAX + 1], struct sbx_error **err);
void sbx_volume_rec_free(struct sbx_volume_rec *v);
void sbx_volume_list_free(struct sbx_volume_list *l);

void sbx_sandbox_rec_free(struct sbx_sandbox_rec *rec);
void sbx_sandbox_list_free(struct sbx_sandbox_list *list);

static inline void
sbx_sandbox_rec_freep(struct sbx_sandbox_rec **rec)
{
    sbx_sandbox_rec_free(*rec);
}
static inline void
sbx_sandbox_list_freep(struct sbx_sandbox_list **list)
{
    sbx_sandbox_list_free(*list);
}
static inline void
sbx_volume_rec_freep(struct sbx_volume_rec **v)
{
    sbx_volume_rec_free(*v);
}
static inline void
sbx_volume_list_freep(struct sbx_volume_list **l)
{
    sbx_volume_list_free(*l);
}
#define _cleanup_volume_rec_   __attribute__((cleanup(sbx_volume_rec_freep)))
#define _cleanup_volume_list_  __attribute__((cleanup(sbx_volume_list_freep)))
#define _cleanup_sandbox_rec_  __attribute__((cleanup(sbx_sandbox_rec_freep)))
#define _cleanup_sandbox_list_ __attribute__((cleanup(sbx_sandbox_list_freep)))

/* ---- Templates built with the Template SDK (templates.c) ---------------------------------- */
#define SBX_STORE_TEMPLATE_ID_LEN 20 /* [a-z0-9] */
#define SBX_STORE_BUILD_ID_LEN    36 /* a UUID */
#define SBX_STORE_TAG_MAX         128

struct sbx_template_rec {
    char id[SBX_STORE_TEMPLATE_ID_LEN + 1];
    char *alias; /* lower case, unique; a snapshot without a name: its id */
    int64_t created_at_ms;
    bool snapshot;                         /* made from a sandbox's files, not built */
    char sandbox_id[SBX_STORE_ID_MAX + 1]; /* a snapshot's sandbox */
};

/* One tag of a snapshot (GET /snapshots). */
struct sbx_snapshot_rec {
    char template_id[SBX_STORE_TEMPLATE_ID_LEN + 1];
    char alias[SBX_STORE_TAG_MAX + 1];
    char tag[SBX_STORE_TAG_MAX + 1];
    int64_t created_at_ms; /* of the tag: when the snapshot it names was taken */
};
/* The tags of snapshots, newest first, from offset on (at most limit): of sandbox_id's
 * snapshots (NULL: any), of the snapshot alias (NULL: any), of tag (NULL: any). *more: there
 * are others after them. */
int sbx_store_snapshot_list(struct sbx_store *s, const char *sandbox_id, const char *alias,
                            const char *tag, int64_t offset, int limit,
                            struct sbx_snapshot_rec **out, size_t *n, bool *more,
                            struct sbx_error **err);

struct sbx_build_rec {
    char id[SBX_STORE_BUILD_ID_LEN + 1];
    char template_id[SBX_STORE_TEMPLATE_ID_LEN + 1];
    char *status; /* waiting, building, ready, error */
    int cpu_count;
    int memory_mb;
    char *tags_json;    /* the tags it gets once ready: a JSON array of strings */
    char *layers;       /* its layers' keys, top first (once ready) */
    char *context_json; /* what sandboxes of it inherit: user, workdir, start/ready commands */
    char *reason_json;  /* NULL, or why it failed: {message, step} */
    int64_t created_at_ms;
    int64_t finished_at_ms; /* 0 until ready or error */
};

struct sbx_build_log_rec {
    int64_t at_ms;
    char level[8]; /* debug, info, warn, error */
    char *step;    /* NULL, or base, 1..N, finalize */
    char *message;
};

struct sbx_tag_rec {
    char tag[SBX_STORE_TAG_MAX + 1];
    char build_id[SBX_STORE_BUILD_ID_LEN + 1];
    int64_t created_at_ms;
};

/* By id or alias; SBX_NOT_FOUND if neither. */
int sbx_store_template_get(struct sbx_store *s, const char *id_or_alias,
                           struct sbx_template_rec *out, struct sbx_error **err);
int sbx_store_template_insert(struct sbx_store *s, const struct sbx_template_rec *t,
                              struct sbx_error **err);
/* Deletes the template with its builds, tags and logs, and forgets the layers no other
 * template's build has in its stack. */
int sbx_store_template_delete(struct sbx_store *s, const char *id, struct sbx_error **err);
/* Forgets the builds that no tag names and that finished before before_ms (with their logs),
 * then the layers that no remaining build stacks and no build used since before_ms (the next
 * layer GC removes their files); *builds and *layers: how many went. */
int sbx_store_builds_expire(struct sbx_store *s, int64_t before_ms, int *builds, int *layers,
                            struct sbx_error **err);
/* Every template, oldest first (*out: malloc'd array of n). */
int sbx_store_template_list(struct sbx_store *s, struct sbx_template_rec **out, size_t *n,
                            struct sbx_error **err);
/* Whether a build of the template is waiting or building. */
int sbx_store_template_busy(struct sbx_store *s, const char *id, bool *busy,
                            struct sbx_error **err);
void sbx_template_rec_fini(struct sbx_template_rec *t);

int sbx_store_build_insert(struct sbx_store *s, const struct sbx_build_rec *b,
                           struct sbx_error **err);
/* Writes status, layers, context, reason and finish time. */
int sbx_store_build_update(struct sbx_store *s, const struct sbx_build_rec *b,
                           struct sbx_error **err);
int sbx_store_build_get(struct sbx_store *s, const char *id, struct sbx_build_rec *out,
                        struct sbx_error **err);
/* Builds left waiting or building by a daemon that stopped: error, with reason_json. */
int sbx_store_builds_fail_unfinished(struct sbx_store *s, const char *reason_json,
                                     struct sbx_error **err);
void sbx_build_rec_fini(struct sbx_build_rec *b);

/* Appends a log entry (its index is the count before it). */
int sbx_store_build_log_add(struct sbx_store *s, const char *build_id,
                            const struct sbx_build_log_rec *l, struct sbx_error **err);
/* Entries offset.. (at most limit), in order. */
int sbx_store_build_logs(struct sbx_store *s, const char *build_id, int64_t offset, int limit,
                         struct sbx_build_log_rec **out, size_t *n, struct sbx_error **err);
void sbx_build_logs_free(struct sbx_build_log_rec *l, size_t n);

/* Points tag of the template at build_id (replacing what it pointed at). */
int sbx_store_tag_set(struct sbx_store *s, const char *template_id, const char *tag,
                      const char *build_id, struct sbx_error **err);
/* The build tag points at; SBX_NOT_FOUND if none. */
int sbx_store_tag_get(struct sbx_store *s, const char *template_id, const char *tag,
                      char build_id[SBX_STORE_BUILD_ID_LEN + 1], struct sbx_error **err);
int sbx_store_tag_delete(struct sbx_store *s, const char *template_id, const char *tag,
                         struct sbx_error **err);
int sbx_store_tags_list(struct sbx_store *s, const char *template_id, struct sbx_tag_rec **out,
                        size_t *n, struct sbx_error **err);

/* Layers made by builds: key, and whether it changed nothing (then no sandbox needs it). */
int sbx_store_layer_add(struct sbx_store *s, const char *key, bool empty, struct sbx_error **err);
/* SBX_NOT_FOUND if no build made it; a lookup counts as a use (see sbx_store_builds_expire). */
int sbx_store_layer_get(struct sbx_store *s, const char *key, bool *empty, struct sbx_error **err);
/* Every layer key the store knows, one after the other (malloc'd string). */
int sbx_store_layer_keys(struct sbx_store *s, char **keys, struct sbx_error **err);

/* COPY archives uploaded, by files hash. */
int sbx_store_upload_add(struct sbx_store *s, const char *hash, int64_t size,
                         struct sbx_error **err);
/* Whether the archive of hash was uploaded; with touch, a hit counts as a use (its time is
 * now), so that an archive a client just probed is not collected before its build. */
bool sbx_store_upload_has(struct sbx_store *s, const char *hash, bool touch);
/* Forgets the uploads unused since before_ms; their hashes (64 hex digits each, one after the
 * other) are appended to hashes, for the caller to delete their files. */
int sbx_store_uploads_expire(struct sbx_store *s, int64_t before_ms, struct sbx_buf *hashes,
                             struct sbx_error **err);

#endif
