/* SQLite implementation of the state store (see store.h). */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/limits.h"
#include "base/util.h"
#include "store/internal.h"

#define SHA256_LEN      32
#define BUSY_TIMEOUT_MS 5000

/* Schema migrations, applied in order inside one transaction each; schema_version holds the
 * number of applied entries. Never edit a released entry: append a new one. */
static const char *const migrations[] = {
    /* 1: initial schema. */
    "CREATE TABLE api_keys ("
    "  key_sha256 BLOB PRIMARY KEY,"
    "  created_at_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE sandboxes ("
    "  id TEXT PRIMARY KEY,"
    "  template_id TEXT NOT NULL,"
    "  alias TEXT,"
    "  metadata_json TEXT NOT NULL DEFAULT '{}',"
    "  env_vars_json TEXT NOT NULL DEFAULT '{}',"
    "  access_token TEXT,"
    "  traffic_token TEXT,"
    "  started_at_ms INTEGER NOT NULL,"
    "  end_at_ms INTEGER NOT NULL,"
    "  cpu_count INTEGER NOT NULL,"
    "  memory_mb INTEGER NOT NULL,"
    "  disk_mb INTEGER NOT NULL,"
    "  uid_slot INTEGER NOT NULL UNIQUE,"
    "  pid INTEGER NOT NULL DEFAULT 0,"
    "  pid_start_time INTEGER NOT NULL DEFAULT 0,"
    "  state TEXT NOT NULL CHECK (state IN ('running', 'paused')),"
    "  allow_internet INTEGER NOT NULL,"
    "  auto_pause INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE INDEX sandboxes_by_start ON sandboxes (started_at_ms, id);",
    /* 2: settings the daemon keeps across restarts (e.g. its host uid block). */
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    /* 3: sandboxes of a warm pool, started before any client asked; never listed. */
    "ALTER TABLE sandboxes ADD COLUMN pooled INTEGER NOT NULL DEFAULT 0;",
    /* 4: named API keys, admin or not, revocable. A revoked key keeps its row (its hash) so
     * that it can never be added again, e.g. by a restart with the same --api-key. The keys
     * of before have no name, no mask and full power: they become admin keys "key-<hash>". */
    "CREATE TABLE api_keys_named ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  key_sha256 BLOB NOT NULL UNIQUE,"
    "  key_type TEXT NOT NULL,"
    "  mask_prefix TEXT NOT NULL,"
    "  mask_suffix TEXT NOT NULL,"
    "  key_length INTEGER NOT NULL,"
    "  admin INTEGER NOT NULL,"
    "  created_at_ms INTEGER NOT NULL,"
    "  last_used_at_ms INTEGER NOT NULL DEFAULT 0,"
    "  revoked_at_ms INTEGER NOT NULL DEFAULT 0"
    ");"
    "INSERT INTO api_keys_named (id, name, key_sha256, key_type, mask_prefix, mask_suffix,"
    "                            key_length, admin, created_at_ms)"
    "  SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-' || hex(randomblob(2))"
    "               || '-' || hex(randomblob(2)) || '-' || hex(randomblob(6))),"
    "         'key-' || lower(substr(hex(key_sha256), 1, 8)), key_sha256, '', '', '', 0, 1,"
    "         created_at_ms FROM api_keys;"
    "DROP TABLE api_keys;"
    "ALTER TABLE api_keys_named RENAME TO api_keys;",
    /* 5: each sandbox's log (its agent's lines and the daemon's events about it), kept after
     * the sandbox for a retention period. ended_at_ms is 0 while the sandbox runs. */
    "CREATE TABLE sandbox_logs ("
    "  sandbox_id TEXT PRIMARY KEY,"
    "  template_id TEXT NOT NULL,"
    "  started_at_ms INTEGER NOT NULL,"
    "  ended_at_ms INTEGER NOT NULL DEFAULT 0,"
    "  bytes INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE INDEX sandbox_logs_by_end ON sandbox_logs (ended_at_ms);"
    "CREATE TABLE sandbox_log_lines ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  sandbox_id TEXT NOT NULL REFERENCES sandbox_logs (sandbox_id) ON DELETE CASCADE,"
    "  ts_ms INTEGER NOT NULL,"
    "  source TEXT NOT NULL,"
    "  line TEXT NOT NULL"
    ");"
    "CREATE INDEX sandbox_log_lines_by_sandbox ON sandbox_log_lines (sandbox_id, ts_ms, seq);",
    /* 6: pause and resume: how a paused sandbox was paused, and its timeout policy. */
    "ALTER TABLE sandboxes ADD COLUMN paused_memory INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sandboxes ADD COLUMN auto_pause_memory INTEGER NOT NULL DEFAULT 1;"
    "ALTER TABLE sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sandboxes ADD COLUMN timeout_s INTEGER NOT NULL DEFAULT 300;",
    /* 7: volumes, and the volumes each sandbox mounts. */
    "CREATE TABLE volumes ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  token TEXT NOT NULL,"
    "  size_mb INTEGER NOT NULL,"
    "  created_at_ms INTEGER NOT NULL"
    ");"
    "ALTER TABLE sandboxes ADD COLUMN volume_mounts_json TEXT NOT NULL DEFAULT '[]';",
    /* 8: the sandbox's network settings (egress rules, ingress options), NULL: defaults. */
    "ALTER TABLE sandboxes ADD COLUMN network_json TEXT;",
    /* 9: templates built with the Template SDK (templates.c): their builds, tags and build
     * logs, the layers builds made, and the COPY archives uploaded. */
    "CREATE TABLE templates ("
    "  id TEXT PRIMARY KEY,"
    "  alias TEXT NOT NULL UNIQUE,"
    "  created_at_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE template_builds ("
    "  id TEXT PRIMARY KEY,"
    "  template_id TEXT NOT NULL,"
    "  status TEXT NOT NULL CHECK (status IN ('waiting', 'building', 'ready', 'error')),"
    "  cpu_count INTEGER NOT NULL,"
    "  memory_mb INTEGER NOT NULL,"
    "  tags_json TEXT NOT NULL DEFAULT '[]',"
    "  layers TEXT NOT NULL DEFAULT '',"
    "  context_json TEXT NOT NULL DEFAULT '{}',"
    "  reason_json TEXT,"
    "  created_at_ms INTEGER NOT NULL,"
    "  finished_at_ms INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE INDEX template_builds_by_template ON template_builds (template_id);"
    "CREATE TABLE template_tags ("
    "  template_id TEXT NOT NULL,"
    "  tag TEXT NOT NULL,"
    "  build_id TEXT NOT NULL,"
    "  created_at_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (template_id, tag)"
    ");"
    "CREATE TABLE build_logs ("
    "  build_id TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  at_ms INTEGER NOT NULL,"
    "  level TEXT NOT NULL,"
    "  step TEXT,"
    "  message TEXT NOT NULL,"
    "  PRIMARY KEY (build_id, seq)"
    ");"
    "CREATE TABLE layers ("
    "  key TEXT PRIMARY KEY,"
    "  empty INTEGER NOT NULL,"
    "  created_at_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE uploads ("
    "  hash TEXT PRIMARY KEY,"
    "  size INTEGER NOT NULL,"
    "  created_at_ms INTEGER NOT NULL"
    ");",
    /* 10: snapshots are templates too, made from a sandbox's files (source 'snapshot'). */
    ("ALTER TABLE templates ADD COLUMN source TEXT NOT NULL DEFAULT 'build';"
     "ALTER TABLE templates ADD COLUMN sandbox_id TEXT;"),
};
#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

#define SANDBOX_COLUMNS                                                                            \
    "id, template_id, alias, metadata_json, env_vars_json, access_token, traffic_token, "          \
    "started_at_ms, end_at_ms, cpu_count, memory_mb, disk_mb, uid_slot, pid, "                     \
    "pid_start_time, state, allow_internet, auto_pause, pooled, paused_memory, "                   \
    "auto_pause_memory, auto_resume, timeout_s, volume_mounts_json, network_json"

int
sbx_store_db_error(struct sbx_store *s, int rc, struct sbx_error **err, const char *what)
{
    enum sbx_code code = SBX_INTERNAL;
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
        code = SBX_ALREADY_EXISTS;
        break;
    case SQLITE_FULL:
        code = SBX_RESOURCE_EXHAUSTED;
        break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        code = SBX_UNAVAILABLE;
        break;
    }
    const char *msg = s && s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    return sbx_error_set(err, code, 0, "state store: %s: %s", what, msg);
}

void
sbx_store_finalizep(sqlite3_stmt **st)
{
    sqlite3_finalize(*st); /* accepts NULL */
}

int
sbx_store_prepare(struct sbx_store *s, const char *sql, sqlite3_stmt **st, struct sbx_error **err)
{
    int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
    if (rc != SQLITE_OK)
        return sbx_store_db_error(s, rc, err, "prepare");
    return 0;
}

static int
exec_sql(struct sbx_store *s, const char *sql, struct sbx_error **err)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sbx_store_db_error(s, rc, err, "exec");
    return 0;
}

/* Runs a statement that returns no rows; fails with SBX_NOT_FOUND if it changed nothing
 * and must_change is set. */
int
sbx_store_step_done(struct sbx_store *s, sqlite3_stmt *st, bool must_change, const char *id,
                    struct sbx_error **err)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "write");
    if (must_change && sqlite3_changes(s->db) == 0)
        return sbx_error_set(err, SBX_NOT_FOUND, 0, "sandbox %s not found", id);
    return 0;
}

static int
schema_version(struct sbx_store *s, int *version, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT version FROM schema_version", &st, err) < 0)
        return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *version = sqlite3_column_int(st, 0);
        return 0;
    }
    if (rc == SQLITE_DONE) {
        *version = 0;
        return 0;
    }
    return sbx_store_db_error(s, rc, err, "read schema version");
}

static int
migrate(struct sbx_store *s, struct sbx_error **err)
{
    if (exec_sql(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", err) <
        0)
        return -1;
    int version = 0;
    if (schema_version(s, &version, err) < 0)
        return -1;
    if (version > N_MIGRATIONS)
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                             "state store: schema version %d is newer than this sbx (%d)", version,
                             N_MIGRATIONS);
    for (int v = version; v < N_MIGRATIONS; v++) {
        /* IMMEDIATE takes the write lock up front, so two daemons started on the same
         * state directory cannot both apply a migration. */
        if (exec_sql(s, "BEGIN IMMEDIATE", err) < 0)
            return -1;
        int cur = -1;
        if (schema_version(s, &cur, err) < 0)
            goto rollback;
        if (cur != v) { /* somebody else migrated meanwhile */
            exec_sql(s, "ROLLBACK", NULL);
            return migrate(s, err);
        }
        if (exec_sql(s, migrations[v], err) < 0)
            goto rollback;
        char sql[96];
        snprintf(sql, sizeof(sql),
                 "DELETE FROM schema_version; "
                 "INSERT INTO schema_version (version) VALUES (%d)",
                 v + 1);
        if (exec_sql(s, sql, err) < 0 || exec_sql(s, "COMMIT", err) < 0)
            goto rollback;
    }
    return 0;
rollback:
    exec_sql(s, "ROLLBACK", NULL);
    return sbx_error_prefix(err, "migrating the state store");
}

static int
enable_wal(struct sbx_store *s, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "PRAGMA journal_mode=WAL", &st, err) < 0)
        return -1;
    int rc = sqlite3_step(st);
    const unsigned char *mode = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    if (mode == NULL || strcmp((const char *)mode, "wal") != 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "state store: cannot enable WAL mode");
    return 0;
}

struct sbx_store *
sbx_store_open(const char *path, struct sbx_error **err)
{
    /* Create the file ourselves, 0600: it holds access tokens. SQLite gives its -wal and
     * -shm files the mode of the main file. */
    _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        sbx_error_sys(err, errno, "state store: open %s", path);
        return NULL;
    }
    if (fchmod(fd, 0600) < 0) {
        sbx_error_sys(err, errno, "state store: chmod %s", path);
        return NULL;
    }

    struct sbx_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
        return NULL;
    }
    /* NOFOLLOW: a symlink planted at the path must not redirect our writes. SQLite opens
     * its files with O_CLOEXEC, so sandboxes forked by the daemon never inherit them. */
    int flags =
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE;
    s->wal_fd = -1;
    if ((s->path = strdup(path)) == NULL) {
        sbx_store_close(s);
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
        return NULL;
    }
    int rc = sqlite3_open_v2(path, &s->db, flags, NULL);
    if (rc != SQLITE_OK) {
        sbx_store_db_error(s, rc, err, path);
        sbx_store_close(s);
        return NULL;
    }
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);

    /* WAL: readers never block the writer. synchronous=FULL fsyncs the WAL on every
     * commit. Every write here is a lifecycle event (create, kill, pause, timeout); losing
     * one to a power cut would resurrect a killed sandbox or forget a live one whose
     * processes and uid range then leak. Writes are per lifecycle event, never per request,
     * so the fsync is affordable. The exceptions are in relaxed_durability. */
    if (enable_wal(s, err) < 0)
        goto fail;
    if (exec_sql(s, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON", err) < 0)
        goto fail;
    if (migrate(s, err) < 0)
        goto fail;
    return s;
fail:
    sbx_error_prefix(err, "%s", path);
    sbx_store_close(s);
    return NULL;
}

void
sbx_store_close(struct sbx_store *s)
{
    if (s == NULL)
        return;
    sqlite3_close_v2(s->db);
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    free(s->path);
    free(s);
}

/* ---- API keys ---- */

static int
sha256(const char *data, size_t len, unsigned char out[SHA256_LEN])
{
    unsigned int n = 0;
    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != SHA256_LEN)
        return -1;
    return 0;
}

void
sbx_api_key_list_free(struct sbx_api_key_list *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i].name);
    free(l->items);
    free(l);
}

static int
key_hash(const char *key, unsigned char h[SHA256_LEN], struct sbx_error **err)
{
    size_t len = strlen(key);
    if (len == 0 || len > SBX_STORE_API_KEY_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "API key must have 1..%d bytes",
                             SBX_STORE_API_KEY_MAX);
    if (sha256(key, len, h) < 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "SHA-256 failed");
    return 0;
}

#define KEY_COLUMNS                                                                                \
    "id, name, key_type, mask_prefix, mask_suffix, key_length, admin, created_at_ms, "             \
    "last_used_at_ms, revoked_at_ms"

static int
row_to_key(sqlite3_stmt *st, struct sbx_api_key *k)
{
    memset(k, 0, sizeof(*k));
    snprintf(k->id, sizeof(k->id), "%s", (const char *)sqlite3_column_text(st, 0));
    k->name = strdup((const char *)sqlite3_column_text(st, 1));
    snprintf(k->type, sizeof(k->type), "%s", sqlite3_column_text(st, 2));
    snprintf(k->mask_prefix, sizeof(k->mask_prefix), "%s", sqlite3_column_text(st, 3));
    snprintf(k->mask_suffix, sizeof(k->mask_suffix), "%s", sqlite3_column_text(st, 4));
    k->length = sqlite3_column_int(st, 5);
    k->admin = sqlite3_column_int(st, 6) != 0;
    k->created_at_ms = sqlite3_column_int64(st, 7);
    k->last_used_at_ms = sqlite3_column_int64(st, 8);
    k->revoked_at_ms = sqlite3_column_int64(st, 9);
    return k->name ? 0 : -1;
}

int
sbx_store_api_key_find(struct sbx_store *s, const char *key, struct sbx_api_key *out,
                       struct sbx_error **err)
{
    unsigned char h[SHA256_LEN];
    if (key_hash(key, h, err) < 0)
        return -1;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT " KEY_COLUMNS " FROM api_keys WHERE key_sha256 = ?", &st,
                          err) < 0)
        return -1;
    sqlite3_bind_blob(st, 1, h, SHA256_LEN, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return sbx_error_set(err, SBX_NOT_FOUND, 0, "no such API key");
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "find an API key");
    if (row_to_key(st, out) < 0)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    return 0;
}

int
sbx_store_api_key_add(struct sbx_store *s, const char *key, const char *name, bool admin,
                      struct sbx_api_key *out, struct sbx_error **err)
{
    unsigned char h[SHA256_LEN];
    if (key_hash(key, h, err) < 0)
        return -1;
    size_t len = strlen(key), nlen = strlen(name);
    if (nlen == 0 || nlen > SBX_STORE_API_KEY_NAME_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "a key's name must have 1..%d bytes",
                             SBX_STORE_API_KEY_NAME_MAX);
    /* The mask shows what tells keys apart and nothing that helps guess them: the type (the
     * prefix up to its '_', e2b_), then 2 and 4 of the characters that follow. */
    struct sbx_api_key k = {.admin = admin, .created_at_ms = sbx_wall_ms()};
    const char *us = strchr(key, '_');
    size_t plen = us && (size_t)(us - key) < sizeof(k.type) - 1 ? (size_t)(us - key) + 1 : 0;
    snprintf(k.type, sizeof(k.type), "%.*s", (int)plen, key);
    k.length = (int)(len - plen);
    if (k.length >= 12) {
        snprintf(k.mask_prefix, sizeof(k.mask_prefix), "%.2s", key + plen);
        snprintf(k.mask_suffix, sizeof(k.mask_suffix), "%s", key + len - 4);
    }
    char hex[33];
    sbx_random_hex(hex, 16);
    snprintf(k.id, sizeof(k.id), "%.8s-%.4s-4%.3s-a%.3s-%.12s", hex, hex + 8, hex + 12, hex + 15,
             hex + 18);
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(
            s,
            "INSERT INTO api_keys (id, name, key_sha256, key_type, mask_prefix, mask_suffix,"
            " key_length, admin, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, k.id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, h, SHA256_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, k.type, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, k.mask_prefix, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 6, k.mask_suffix, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 7, k.length);
    sqlite3_bind_int(st, 8, admin);
    sqlite3_bind_int64(st, 9, k.created_at_ms);
    explicit_bzero(h, sizeof(h));
    int rc = sqlite3_step(st);
    if ((rc & 0xff) == SQLITE_CONSTRAINT)
        return sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "this API key is already known");
    if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "add an API key");
    if (out) {
        *out = k;
        if ((out->name = strdup(name)) == NULL)
            return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    }
    return 0;
}

bool
sbx_store_api_key_check(struct sbx_store *s, const char *key, struct sbx_api_key_auth *who)
{
    /* Only hashes are stored, so a stolen database file yields no usable key. The
     * candidate's hash is compared with every stored hash by sbx_secret_equal, all rows
     * visited: timing reveals neither which key matched nor how much of a hash did.
     * Revoked keys are skipped by the query, which is a matter of rows, not of the key. */
    unsigned char h[SHA256_LEN];
    if (key_hash(key, h, NULL) < 0)
        return false;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT key_sha256, id, admin FROM api_keys WHERE revoked_at_ms = 0", -1,
                           &st, NULL) != SQLITE_OK)
        return false;
    bool found = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const void *blob = sqlite3_column_blob(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        bool match = blob != NULL && sbx_secret_equal(blob, (size_t)n, (const char *)h, SHA256_LEN);
        if (match && who) {
            snprintf(who->id, sizeof(who->id), "%s", (const char *)sqlite3_column_text(st, 1));
            who->admin = sqlite3_column_int(st, 2) != 0;
        }
        found |= match;
    }
    explicit_bzero(h, sizeof(h));
    return rc == SQLITE_DONE && found;
}

int
sbx_store_api_key_touch(struct sbx_store *s, const char *id, int64_t now_ms, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "UPDATE api_keys SET last_used_at_ms = ? WHERE id = ?", &st, err) < 0)
        return -1;
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
    return sbx_store_step_done(s, st, false, id, err);
}

int
sbx_store_api_key_list(struct sbx_store *s, struct sbx_api_key_list **out, struct sbx_error **err)
{
    *out = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "SELECT " KEY_COLUMNS " FROM api_keys WHERE revoked_at_ms = 0"
                          " ORDER BY created_at_ms, id",
                          &st, err) < 0)
        return -1;
    struct sbx_api_key_list *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    int rc;
    size_t cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (l->n == cap) {
            cap = cap ? cap * 2 : 8;
            struct sbx_api_key *items = realloc(l->items, cap * sizeof(*items));
            if (items == NULL)
                break;
            l->items = items;
        }
        if (row_to_key(st, &l->items[l->n]) < 0)
            break;
        l->n++;
    }
    if (rc != SQLITE_DONE) {
        sbx_api_key_list_free(l);
        return rc == SQLITE_ROW
                   ? sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory")
                   : sbx_store_db_error(s, rc, err, "list API keys");
    }
    *out = l;
    return 0;
}

int
sbx_store_api_key_revoke(struct sbx_store *s, const char *id, struct sbx_error **err)
{
    /* IMMEDIATE: two revocations at once must not each see the other's key as the admin
     * key that remains. */
    /* Declared before the first goto: jumping past them would run their cleanup on garbage. */
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    _cleanup_stmt_ sqlite3_stmt *up = NULL;
    if (exec_sql(s, "BEGIN IMMEDIATE", err) < 0)
        return -1;
    if (sbx_store_prepare(s,
                          "SELECT admin, (SELECT count(*) FROM api_keys WHERE admin = 1 AND"
                          " revoked_at_ms = 0) FROM api_keys WHERE id = ? AND revoked_at_ms = 0",
                          &st, err) < 0)
        goto rollback;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sbx_error_set(err, SBX_NOT_FOUND, 0, "API key %s not found", id);
        goto rollback;
    }
    if (rc != SQLITE_ROW) {
        sbx_store_db_error(s, rc, err, "revoke an API key");
        goto rollback;
    }
    if (sqlite3_column_int(st, 0) && sqlite3_column_int(st, 1) <= 1) {
        sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                      "API key %s is the last admin key: create another admin key first", id);
        goto rollback;
    }
    if (sbx_store_prepare(s, "UPDATE api_keys SET revoked_at_ms = ? WHERE id = ?", &up, err) < 0)
        goto rollback;
    sqlite3_bind_int64(up, 1, sbx_wall_ms());
    sqlite3_bind_text(up, 2, id, -1, SQLITE_TRANSIENT);
    if (sbx_store_step_done(s, up, true, id, err) < 0 || exec_sql(s, "COMMIT", err) < 0)
        goto rollback;
    return 0;
rollback:
    exec_sql(s, "ROLLBACK", NULL);
    return -1;
}

int64_t
sbx_store_api_key_count(struct sbx_store *s, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT count(*) FROM api_keys", &st, err) < 0)
        return -1;
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "count API keys");
    return sqlite3_column_int64(st, 0);
}

/* ---- settings ---- */

int
sbx_store_setting_get(struct sbx_store *s, const char *key, char **value, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT value FROM settings WHERE key = ?", &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        *value = NULL;
        return 0;
    }
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "read a setting");
    *value = strdup((const char *)sqlite3_column_text(st, 0));
    if (*value == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    return 0;
}

int
sbx_store_setting_set(struct sbx_store *s, const char *key, const char *value,
                      struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", &st,
                          err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_TRANSIENT);
    return sbx_store_step_done(s, st, false, NULL, err);
}

/* ---- sandboxes ---- */

static bool
valid_state(const char *state)
{
    return state != NULL && (strcmp(state, "running") == 0 || strcmp(state, "paused") == 0);
}

static bool
valid_id(const char *id)
{
    return sbx_is_valid_id(id, SBX_STORE_ID_MAX);
}

void
sbx_sandbox_rec_free(struct sbx_sandbox_rec *rec)
{
    if (rec == NULL)
        return;
    free(rec->template_id);
    free(rec->alias);
    free(rec->metadata_json);
    free(rec->env_vars_json);
    sbx_secret_free(rec->access_token);
    sbx_secret_free(rec->traffic_token);
    sbx_secret_free(rec->network_json); /* an egress proxy's password */
    free(rec->state);
    free(rec->volume_mounts_json);
    free(rec);
}

void
sbx_sandbox_list_free(struct sbx_sandbox_list *list)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < list->n; i++)
        sbx_sandbox_rec_free(list->items[i]);
    free(list->items);
    free(list->next_token);
    free(list);
}

char *
sbx_store_column_strdup(sqlite3_stmt *st, int col, bool *oom)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    if (t == NULL)
        return NULL;
    char *d = strdup((const char *)t);
    if (d == NULL)
        *oom = true;
    return d;
}

/* Builds a record from a row selected with SANDBOX_COLUMNS. */
static struct sbx_sandbox_rec *
row_to_rec(sqlite3_stmt *st, struct sbx_error **err)
{
    struct sbx_sandbox_rec *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
        return NULL;
    }
    bool oom = false;
    const unsigned char *id = sqlite3_column_text(st, 0);
    snprintf(r->id, sizeof(r->id), "%s", id ? (const char *)id : "");
    r->template_id = sbx_store_column_strdup(st, 1, &oom);
    r->alias = sbx_store_column_strdup(st, 2, &oom);
    r->metadata_json = sbx_store_column_strdup(st, 3, &oom);
    r->env_vars_json = sbx_store_column_strdup(st, 4, &oom);
    r->access_token = sbx_store_column_strdup(st, 5, &oom);
    r->traffic_token = sbx_store_column_strdup(st, 6, &oom);
    r->started_at_ms = sqlite3_column_int64(st, 7);
    r->end_at_ms = sqlite3_column_int64(st, 8);
    r->cpu_count = sqlite3_column_int(st, 9);
    r->memory_mb = sqlite3_column_int(st, 10);
    r->disk_mb = sqlite3_column_int(st, 11);
    r->uid_slot = sqlite3_column_int(st, 12);
    r->pid = sqlite3_column_int(st, 13);
    r->pid_start_time = (uint64_t)sqlite3_column_int64(st, 14);
    r->state = sbx_store_column_strdup(st, 15, &oom);
    r->allow_internet = sqlite3_column_int(st, 16) != 0;
    r->auto_pause = sqlite3_column_int(st, 17) != 0;
    r->pooled = sqlite3_column_int(st, 18) != 0;
    r->paused_memory = sqlite3_column_int(st, 19) != 0;
    r->auto_pause_memory = sqlite3_column_int(st, 20) != 0;
    r->auto_resume = sqlite3_column_int(st, 21) != 0;
    r->timeout_s = sqlite3_column_int(st, 22);
    r->volume_mounts_json = sbx_store_column_strdup(st, 23, &oom);
    r->network_json = sbx_store_column_strdup(st, 24, &oom);
    if (oom || r->template_id == NULL || r->state == NULL || r->volume_mounts_json == NULL) {
        sbx_sandbox_rec_free(r);
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
        return NULL;
    }
    return r;
}

static void
bind_text_or_null(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
}

/* Commits that only a power cut could lose and that nothing needs after one skip the WAL's
 * fsync (synchronous=NORMAL), which on the front end's one thread holds up every request for a
 * millisecond or more each (several when the disk is busy). The next FULL commit syncs them
 * too, the WAL being one sequential file; a crash of the daemon alone loses nothing (the WAL
 * is written, only not flushed). Sandbox logs are diagnostics; an agent's pid names a process
 * of this boot, which a power cut kills too, and recovery checks pid and start time against
 * the live process anyway: after one it finds no agent, with or without the record. */
static void
relaxed_durability(struct sbx_store *s, bool relaxed)
{
    struct sbx_error *err = NULL;
    if (exec_sql(s, relaxed ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL", &err) < 0)
        sbx_error_free(err); /* the setting stays as it was: safe either way */
}

int
sbx_store_defer_sync(struct sbx_store *s, struct sbx_error **err)
{
    /* Every connection in WAL mode keeps the WAL file while it is open, so this fd names the
     * file SQLite appends to for as long as the store lives (a checkpoint truncates or
     * rewrites it in place, never replaces it). NOFOLLOW as for the database itself. */
    _cleanup_free_ char *wal = NULL;
    if (asprintf(&wal, "%s-wal", s->path) < 0)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    s->wal_fd = open(wal, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (s->wal_fd < 0)
        return sbx_error_sys(err, errno, "open %s", wal);
    return 0;
}

uint64_t
sbx_store_deferred(const struct sbx_store *s)
{
    return s->deferred;
}

int
sbx_store_sync(const struct sbx_store *s)
{
    return fdatasync(s->wal_fd) < 0 ? -errno : 0;
}

/* Around a commit that starts or ends a sandbox's life or sets its network rules. Without
 * deferred syncing it is fsynced as every commit; with it, later by sbx_store_sync, which the
 * caller awaits before it tells anyone of the change. */
static bool
defer_begin(struct sbx_store *s)
{
    if (s->wal_fd < 0)
        return false;
    relaxed_durability(s, true);
    return true;
}

static void
defer_end(struct sbx_store *s, bool deferred)
{
    if (!deferred)
        return;
    relaxed_durability(s, false);
    s->deferred++;
}

/* sbx_store_step_done (a row that must change) around a deferred commit. */
static int
deferred_step_done(struct sbx_store *s, sqlite3_stmt *st, const char *id, struct sbx_error **err)
{
    bool deferred = defer_begin(s);
    int rc = sbx_store_step_done(s, st, true, id, err);
    defer_end(s, deferred);
    return rc;
}

int
sbx_store_sandbox_insert(struct sbx_store *s, const struct sbx_sandbox_rec *r,
                         struct sbx_error **err)
{
    if (!valid_id(r->id))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid sandbox id '%s'", r->id);
    if (r->template_id == NULL || !valid_state(r->state))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "sandbox %s: template id and state are required", r->id);
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(
            s,
            "INSERT INTO sandboxes (" SANDBOX_COLUMNS ") VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, r->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, r->template_id, -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 3, r->alias);
    sqlite3_bind_text(st, 4, r->metadata_json ? r->metadata_json : "{}", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, r->env_vars_json ? r->env_vars_json : "{}", -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 6, r->access_token);
    bind_text_or_null(st, 7, r->traffic_token);
    sqlite3_bind_int64(st, 8, r->started_at_ms);
    sqlite3_bind_int64(st, 9, r->end_at_ms);
    sqlite3_bind_int(st, 10, r->cpu_count);
    sqlite3_bind_int(st, 11, r->memory_mb);
    sqlite3_bind_int(st, 12, r->disk_mb);
    sqlite3_bind_int(st, 13, r->uid_slot);
    sqlite3_bind_int(st, 14, r->pid);
    sqlite3_bind_int64(st, 15, (int64_t)r->pid_start_time);
    sqlite3_bind_text(st, 16, r->state, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 17, r->allow_internet);
    sqlite3_bind_int(st, 18, r->auto_pause);
    sqlite3_bind_int(st, 19, r->pooled);
    sqlite3_bind_int(st, 20, r->paused_memory);
    sqlite3_bind_int(st, 21, r->auto_pause_memory);
    sqlite3_bind_int(st, 22, r->auto_resume);
    sqlite3_bind_int(st, 23, r->timeout_s);
    sqlite3_bind_text(st, 24, r->volume_mounts_json ? r->volume_mounts_json : "[]", -1,
                      SQLITE_TRANSIENT);
    bind_text_or_null(st, 25, r->network_json);
    bool deferred = defer_begin(s);
    int rc = sqlite3_step(st);
    defer_end(s, deferred);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "sandbox %s already exists", r->id);
    if (rc == SQLITE_CONSTRAINT_UNIQUE)
        return sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "uid slot %d is already in use",
                             r->uid_slot);
    if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "insert sandbox");
    return 0;
}

int
sbx_store_sandbox_get(struct sbx_store *s, const char *id, struct sbx_sandbox_rec **out,
                      struct sbx_error **err)
{
    *out = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT " SANDBOX_COLUMNS " FROM sandboxes WHERE id = ?", &st, err) <
        0)
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return sbx_error_set(err, SBX_NOT_FOUND, 0, "sandbox %s not found", id);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "get sandbox");
    *out = row_to_rec(st, err);
    return *out ? 0 : -1;
}

int
sbx_store_sandbox_update_end_at(struct sbx_store *s, const char *id, int64_t end_at_ms,
                                struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "UPDATE sandboxes SET end_at_ms = ? WHERE id = ?", &st, err) < 0)
        return -1;
    sqlite3_bind_int64(st, 1, end_at_ms);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
    return sbx_store_step_done(s, st, true, id, err);
}

int
sbx_store_sandbox_update_pid(struct sbx_store *s, const char *id, int pid, uint64_t pid_start_time,
                             struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "UPDATE sandboxes SET pid = ?, pid_start_time = ? WHERE id = ?", &st,
                          err) < 0)
        return -1;
    sqlite3_bind_int(st, 1, pid);
    sqlite3_bind_int64(st, 2, (int64_t)pid_start_time);
    sqlite3_bind_text(st, 3, id, -1, SQLITE_TRANSIENT);
    relaxed_durability(s, true);
    int rc = sbx_store_step_done(s, st, true, id, err);
    relaxed_durability(s, false);
    return rc;
}

int
sbx_store_sandbox_adopt(struct sbx_store *s, const struct sbx_sandbox_rec *r,
                        struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(
            s,
            "UPDATE sandboxes SET pooled = 0, template_id = ?, alias = ?, metadata_json = ?, "
            "env_vars_json = ?, access_token = ?, traffic_token = ?, started_at_ms = ?, "
            "end_at_ms = ?, allow_internet = ?, auto_pause = ?, auto_pause_memory = ?, "
            "auto_resume = ?, timeout_s = ?, volume_mounts_json = ?, network_json = ? "
            "WHERE id = ? AND pooled = 1",
            &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, r->template_id, -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 2, r->alias);
    sqlite3_bind_text(st, 3, r->metadata_json ? r->metadata_json : "{}", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, r->env_vars_json ? r->env_vars_json : "{}", -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 5, r->access_token);
    bind_text_or_null(st, 6, r->traffic_token);
    sqlite3_bind_int64(st, 7, r->started_at_ms);
    sqlite3_bind_int64(st, 8, r->end_at_ms);
    sqlite3_bind_int(st, 9, r->allow_internet);
    sqlite3_bind_int(st, 10, r->auto_pause);
    sqlite3_bind_int(st, 11, r->auto_pause_memory);
    sqlite3_bind_int(st, 12, r->auto_resume);
    sqlite3_bind_int(st, 13, r->timeout_s);
    sqlite3_bind_text(st, 14, r->volume_mounts_json ? r->volume_mounts_json : "[]", -1,
                      SQLITE_TRANSIENT);
    bind_text_or_null(st, 15, r->network_json);
    sqlite3_bind_text(st, 16, r->id, -1, SQLITE_TRANSIENT);
    return deferred_step_done(s, st, r->id, err);
}

int
sbx_store_sandbox_update_network(struct sbx_store *s, const char *id, bool allow_internet,
                                 const char *network_json, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "UPDATE sandboxes SET allow_internet = ?, network_json = ? WHERE id = ?",
                          &st, err) < 0)
        return -1;
    sqlite3_bind_int(st, 1, allow_internet);
    bind_text_or_null(st, 2, network_json);
    sqlite3_bind_text(st, 3, id, -1, SQLITE_TRANSIENT);
    return deferred_step_done(s, st, id, err);
}

int
sbx_store_sandbox_set_paused(struct sbx_store *s, const char *id, bool paused, bool memory,
                             int64_t end_at_ms, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(
            s, "UPDATE sandboxes SET state = ?, paused_memory = ?, end_at_ms = ? WHERE id = ?", &st,
            err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, paused ? "paused" : "running", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, paused && memory);
    sqlite3_bind_int64(st, 3, end_at_ms);
    sqlite3_bind_text(st, 4, id, -1, SQLITE_TRANSIENT);
    return sbx_store_step_done(s, st, true, id, err);
}

int
sbx_store_sandbox_set_auto_pause(struct sbx_store *s, const char *id, bool auto_pause,
                                 struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "UPDATE sandboxes SET auto_pause = ? WHERE id = ?", &st, err) < 0)
        return -1;
    sqlite3_bind_int(st, 1, auto_pause);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
    return sbx_store_step_done(s, st, true, id, err);
}

int
sbx_store_sandbox_delete(struct sbx_store *s, const char *id, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "DELETE FROM sandboxes WHERE id = ?", &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    return deferred_step_done(s, st, id, err);
}

static int
list_push(struct sbx_sandbox_list *l, struct sbx_sandbox_rec *r, size_t *cap,
          struct sbx_error **err)
{
    if (l->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct sbx_sandbox_rec **items = realloc(l->items, ncap * sizeof(*items));
        if (items == NULL) {
            sbx_sandbox_rec_free(r);
            return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
        }
        l->items = items;
        *cap = ncap;
    }
    l->items[l->n++] = r;
    return 0;
}

/* Collects up to max rows (max < 0: all) into a new list; *more tells whether a further
 * row exists. */
static int
collect(struct sbx_store *s, sqlite3_stmt *st, long max, struct sbx_sandbox_list **out, bool *more,
        struct sbx_error **err)
{
    _cleanup_sandbox_list_ struct sbx_sandbox_list *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    size_t cap = 0;
    int rc;
    *more = false;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (max >= 0 && (long)l->n == max) {
            *more = true;
            break;
        }
        struct sbx_sandbox_rec *r = row_to_rec(st, err);
        if (r == NULL || list_push(l, r, &cap, err) < 0)
            return -1;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "list sandboxes");
    *out = steal_pointer(&l);
    return 0;
}

int
sbx_store_sandbox_list_all(struct sbx_store *s, struct sbx_sandbox_list **out,
                           struct sbx_error **err)
{
    *out = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT " SANDBOX_COLUMNS " FROM sandboxes ORDER BY started_at_ms, id",
                          &st, err) < 0)
        return -1;
    bool more;
    return collect(s, st, -1, out, &more, err);
}

/* The page cursor is the hex of "<started_at_ms>:<id>" of the last item returned: opaque to
 * clients, trivially validated here. */
static char *
cursor_format(const struct sbx_sandbox_rec *r)
{
    char raw[32 + SBX_STORE_ID_MAX];
    int n = snprintf(raw, sizeof(raw), "%" PRId64 ":%s", r->started_at_ms, r->id);
    if (n < 0 || (size_t)n >= sizeof(raw))
        return NULL;
    char *hex = malloc(2 * (size_t)n + 1);
    if (hex == NULL)
        return NULL;
    for (int i = 0; i < n; i++)
        sprintf(hex + 2 * i, "%02x", (unsigned char)raw[i]);
    hex[2 * n] = '\0';
    return hex;
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int
cursor_parse(const char *tok, int64_t *started_at_ms, char id[SBX_STORE_ID_MAX + 1],
             struct sbx_error **err)
{
    char raw[32 + SBX_STORE_ID_MAX];
    size_t len = strlen(tok);
    if (len == 0 || len % 2 != 0 || len / 2 >= sizeof(raw))
        goto bad;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hexval(tok[2 * i]), lo = hexval(tok[2 * i + 1]);
        if (hi < 0 || lo < 0)
            goto bad;
        raw[i] = (char)(hi << 4 | lo);
    }
    raw[len / 2] = '\0';
    char *colon = memchr(raw, ':', len / 2);
    if (colon == NULL || colon == raw || strlen(raw) != len / 2)
        goto bad;
    *colon = '\0';
    char *end;
    errno = 0;
    long long ms = strtoll(raw, &end, 10);
    if (errno != 0 || *end != '\0' || !valid_id(colon + 1))
        goto bad;
    *started_at_ms = ms;
    snprintf(id, SBX_STORE_ID_MAX + 1, "%s", colon + 1);
    return 0;
bad:
    return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid nextToken");
}

int
sbx_store_sandbox_query(struct sbx_store *s, const struct sbx_store_query *q,
                        struct sbx_sandbox_list **out, struct sbx_error **err)
{
    *out = NULL;
    int limit = q->limit == 0 ? SBX_STORE_LIST_MAX : q->limit;
    if (limit < 1 || limit > SBX_STORE_LIST_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "limit must be between 1 and %d",
                             SBX_STORE_LIST_MAX);
    int64_t cur_ms = 0;
    char cur_id[SBX_STORE_ID_MAX + 1];
    if (q->next_token != NULL && cursor_parse(q->next_token, &cur_ms, cur_id, err) < 0)
        return -1;
    /* Two bound parameters per pair stay far below SQLite's parameter limit. */
    if (q->n_meta > SBX_STORE_MAX_META_FILTERS)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "too many metadata filters");
    unsigned states = q->states ? q->states : SBX_STORE_STATE_RUNNING | SBX_STORE_STATE_PAUSED;

    /* Only fixed SQL text is appended; every value is a bound parameter. */
    _cleanup_free_ char *sql = NULL;
    struct sbx_buf b = {0};
    int ok = sbx_buf_printf(&b, "SELECT " SANDBOX_COLUMNS " FROM sandboxes WHERE pooled = 0");
    if (!(states & SBX_STORE_STATE_RUNNING))
        ok |= sbx_buf_printf(&b, " AND state <> 'running'");
    if (!(states & SBX_STORE_STATE_PAUSED))
        ok |= sbx_buf_printf(&b, " AND state <> 'paused'");
    if (q->template_id != NULL)
        ok |= sbx_buf_printf(&b, " AND (template_id = ?1 OR alias = ?1)");
    if (q->has_started_after)
        ok |= sbx_buf_printf(&b, " AND started_at_ms >= ?2");
    if (q->next_token != NULL)
        ok |= sbx_buf_printf(&b, " AND (started_at_ms, id) %s (?3, ?4)", q->ascending ? ">" : "<");
    /* json_each yields unescaped keys and values, so any key spelling works without
     * building a JSON path. */
    for (size_t i = 0; i < q->n_meta; i++)
        ok |= sbx_buf_printf(&b,
                             " AND EXISTS (SELECT 1 FROM json_each(metadata_json) AS m"
                             " WHERE m.key = ?%zu AND m.type = 'text' AND m.value = ?%zu)",
                             10 + 2 * i, 11 + 2 * i);
    ok |= sbx_buf_printf(&b, " ORDER BY started_at_ms %s, id %s LIMIT ?5",
                         q->ascending ? "ASC" : "DESC", q->ascending ? "ASC" : "DESC");
    sql = b.data;
    if (ok != 0)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");

    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, sql, &st, err) < 0)
        return -1;
    if (q->template_id != NULL)
        sqlite3_bind_text(st, 1, q->template_id, -1, SQLITE_TRANSIENT);
    if (q->has_started_after)
        sqlite3_bind_int64(st, 2, q->started_after_ms);
    if (q->next_token != NULL) {
        sqlite3_bind_int64(st, 3, cur_ms);
        sqlite3_bind_text(st, 4, cur_id, -1, SQLITE_TRANSIENT);
    }
    sqlite3_bind_int(st, 5, limit + 1); /* one extra row tells whether a next page exists */
    for (size_t i = 0; i < q->n_meta; i++) {
        sqlite3_bind_text(st, (int)(10 + 2 * i), q->meta_keys[i], -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, (int)(11 + 2 * i), q->meta_values[i], -1, SQLITE_TRANSIENT);
    }

    _cleanup_sandbox_list_ struct sbx_sandbox_list *l = NULL;
    bool more;
    if (collect(s, st, limit, &l, &more, err) < 0)
        return -1;
    if (more && l->n > 0) {
        l->next_token = cursor_format(l->items[l->n - 1]);
        if (l->next_token == NULL)
            return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    }
    *out = steal_pointer(&l);
    return 0;
}

/* ---- sandbox logs ---- */

static int
log_open_tx(struct sbx_store *s, const char *id, const char *template_id, int64_t started_at_ms,
            struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(
            s,
            "INSERT OR IGNORE INTO sandbox_logs (sandbox_id, template_id, started_at_ms)"
            " VALUES (?, ?, ?)",
            &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, template_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, started_at_ms);
    return sbx_store_step_done(s, st, false, id, err);
}

static int
log_append_tx(struct sbx_store *s, const char *id, const char *source,
              const struct sbx_log_line *lines, size_t n, struct sbx_error **err)
{
    /* One transaction: a sandbox's thousands of lines are one commit, not one each. */
    _cleanup_stmt_ sqlite3_stmt *size = NULL;
    _cleanup_stmt_ sqlite3_stmt *ins = NULL;
    _cleanup_stmt_ sqlite3_stmt *up = NULL;
    if (exec_sql(s, "BEGIN IMMEDIATE", err) < 0)
        return -1;
    if (sbx_store_prepare(s, "SELECT bytes FROM sandbox_logs WHERE sandbox_id = ?", &size, err) <
            0 ||
        sbx_store_prepare(s,
                          "INSERT INTO sandbox_log_lines (sandbox_id, ts_ms, source, line)"
                          " VALUES (?, ?, ?, ?)",
                          &ins, err) < 0 ||
        sbx_store_prepare(s, "UPDATE sandbox_logs SET bytes = ? WHERE sandbox_id = ?", &up, err) <
            0)
        goto rollback;
    sqlite3_bind_text(size, 1, id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(size);
    if (rc != SQLITE_ROW) {
        if (rc == SQLITE_DONE)
            sbx_error_set(err, SBX_NOT_FOUND, 0, "no log for sandbox %s", id);
        else
            sbx_store_db_error(s, rc, err, "append to a log");
        goto rollback;
    }
    int64_t bytes = sqlite3_column_int64(size, 0);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(lines[i].line);
        /* Bounded per sandbox: what a sandbox makes its agent log cannot fill the host. */
        if (bytes + (int64_t)len > SBX_STORE_SANDBOX_LOG_MAX)
            break;
        bytes += (int64_t)len;
        sqlite3_reset(ins);
        sqlite3_bind_text(ins, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 2, lines[i].ts_ms);
        sqlite3_bind_text(ins, 3, source, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins, 4, lines[i].line, (int)len, SQLITE_TRANSIENT);
        if (sbx_store_step_done(s, ins, false, id, err) < 0)
            goto rollback;
    }
    sqlite3_bind_int64(up, 1, bytes);
    sqlite3_bind_text(up, 2, id, -1, SQLITE_TRANSIENT);
    if (sbx_store_step_done(s, up, false, id, err) < 0 || exec_sql(s, "COMMIT", err) < 0)
        goto rollback;
    return 0;
rollback:
    exec_sql(s, "ROLLBACK", NULL);
    return -1;
}

static int
log_close_tx(struct sbx_store *s, const char *id, int64_t ended_at_ms, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "UPDATE sandbox_logs SET ended_at_ms = ? WHERE sandbox_id = ?", &st,
                          err) < 0)
        return -1;
    sqlite3_bind_int64(st, 1, ended_at_ms);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
    return sbx_store_step_done(s, st, false, id, err);
}

int
sbx_store_log_open(struct sbx_store *s, const char *id, const char *template_id,
                   int64_t started_at_ms, struct sbx_error **err)
{
    relaxed_durability(s, true);
    int rc = log_open_tx(s, id, template_id, started_at_ms, err);
    relaxed_durability(s, false);
    return rc;
}

int
sbx_store_log_append(struct sbx_store *s, const char *id, const char *source,
                     const struct sbx_log_line *lines, size_t n, struct sbx_error **err)
{
    relaxed_durability(s, true);
    int rc = log_append_tx(s, id, source, lines, n, err);
    relaxed_durability(s, false);
    return rc;
}

int
sbx_store_log_close(struct sbx_store *s, const char *id, int64_t ended_at_ms,
                    struct sbx_error **err)
{
    relaxed_durability(s, true);
    int rc = log_close_tx(s, id, ended_at_ms, err);
    relaxed_durability(s, false);
    return rc;
}

void
sbx_log_lines_free(struct sbx_log_lines *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].line);
        free(l->items[i].source);
    }
    free(l->items);
    free(l);
}

int
sbx_store_log_get(struct sbx_store *s, const char *id, struct sbx_log_lines **out,
                  struct sbx_error **err)
{
    *out = NULL;
    _cleanup_stmt_ sqlite3_stmt *head = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT ended_at_ms FROM sandbox_logs WHERE sandbox_id = ?", &head,
                          err) < 0 ||
        sbx_store_prepare(s,
                          "SELECT ts_ms, source, line FROM sandbox_log_lines WHERE sandbox_id = ?"
                          " ORDER BY ts_ms, seq",
                          &st, err) < 0)
        return -1;
    sqlite3_bind_text(head, 1, id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(head);
    if (rc == SQLITE_DONE)
        return sbx_error_set(err, SBX_NOT_FOUND, 0, "no log for sandbox %s", id);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "read a log");
    struct sbx_log_lines *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    l->ended_at_ms = sqlite3_column_int64(head, 0);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    size_t cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (l->n == cap) {
            cap = cap ? cap * 2 : 64;
            struct sbx_log_line *items = realloc(l->items, cap * sizeof(*items));
            if (items == NULL)
                abort();
            l->items = items;
        }
        struct sbx_log_line *x = &l->items[l->n++];
        x->ts_ms = sqlite3_column_int64(st, 0);
        x->source = strdup((const char *)sqlite3_column_text(st, 1));
        x->line = strdup((const char *)sqlite3_column_text(st, 2));
        if (x->source == NULL || x->line == NULL)
            abort();
    }
    if (rc != SQLITE_DONE) {
        sbx_log_lines_free(l);
        return sbx_store_db_error(s, rc, err, "read a log");
    }
    *out = l;
    return 0;
}

int
sbx_store_log_prune(struct sbx_store *s, int64_t ended_before_ms, int64_t max_total_bytes,
                    int *pruned, struct sbx_error **err)
{
    *pruned = 0;
    _cleanup_stmt_ sqlite3_stmt *old = NULL;
    if (sbx_store_prepare(s, "DELETE FROM sandbox_logs WHERE ended_at_ms > 0 AND ended_at_ms < ?",
                          &old, err) < 0)
        return -1;
    sqlite3_bind_int64(old, 1, ended_before_ms);
    if (sbx_store_step_done(s, old, false, NULL, err) < 0)
        return -1;
    *pruned += sqlite3_changes(s->db);
    /* Over the total: the logs of the sandboxes that ended first go first. */
    _cleanup_stmt_ sqlite3_stmt *over = NULL;
    if (sbx_store_prepare(
            s,
            "DELETE FROM sandbox_logs WHERE sandbox_id IN (SELECT sandbox_id FROM"
            " (SELECT sandbox_id, sum(bytes) OVER (ORDER BY ended_at_ms DESC, sandbox_id)"
            "  AS total FROM sandbox_logs WHERE ended_at_ms > 0) WHERE total > ?)",
            &over, err) < 0)
        return -1;
    sqlite3_bind_int64(over, 1, max_total_bytes);
    if (sbx_store_step_done(s, over, false, NULL, err) < 0)
        return -1;
    *pruned += sqlite3_changes(s->db);
    return 0;
}

int
sbx_store_free_uid_slot(struct sbx_store *s, int *slot, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT uid_slot FROM sandboxes ORDER BY uid_slot", &st, err) < 0)
        return -1;
    int want = 0, rc;
    /* Slots come back sorted and unique: the first gap is the lowest free slot. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int used = sqlite3_column_int(st, 0);
        if (used > want)
            break;
        if (used == want)
            want++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "find a free uid slot");
    /* The top SBX_MAX_BUILDS slots are the build sandboxes' (builder.c). */
    if (want >= SBX_MAX_SANDBOXES - SBX_MAX_BUILDS)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "all %d sandbox uid slots are in use",
                             SBX_MAX_SANDBOXES - SBX_MAX_BUILDS);
    *slot = want;
    return 0;
}

/* ---- volumes ---- */

void
sbx_volume_rec_free(struct sbx_volume_rec *v)
{
    if (v == NULL)
        return;
    free(v->name);
    sbx_secret_free(v->token);
    free(v);
}

void
sbx_volume_list_free(struct sbx_volume_list *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        sbx_volume_rec_free(l->items[i]);
    free(l->items);
    free(l);
}

#define VOLUME_COLUMNS "id, name, token, size_mb, created_at_ms"

static struct sbx_volume_rec *
row_to_volume(sqlite3_stmt *st)
{
    struct sbx_volume_rec *v = calloc(1, sizeof(*v));
    bool oom = v == NULL;
    if (v) {
        const unsigned char *id = sqlite3_column_text(st, 0);
        snprintf(v->id, sizeof(v->id), "%s", id ? (const char *)id : "");
        v->name = sbx_store_column_strdup(st, 1, &oom);
        v->token = sbx_store_column_strdup(st, 2, &oom);
        v->size_mb = sqlite3_column_int(st, 3);
        v->created_at_ms = sqlite3_column_int64(st, 4);
    }
    if (oom || v->name == NULL || v->token == NULL) {
        sbx_volume_rec_free(v);
        return NULL;
    }
    return v;
}

int
sbx_store_volume_insert(struct sbx_store *s, const struct sbx_volume_rec *v, struct sbx_error **err)
{
    if (!valid_id(v->id) || v->name == NULL || v->token == NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid volume '%s'", v->id);
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "INSERT INTO volumes (" VOLUME_COLUMNS ") VALUES (?, ?, ?, ?, ?)", &st,
                          err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, v->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, v->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, v->token, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 4, v->size_mb);
    sqlite3_bind_int64(st, 5, v->created_at_ms);
    int rc = sqlite3_step(st);
    if ((rc & 0xff) == SQLITE_CONSTRAINT)
        return sbx_error_set(err, SBX_ALREADY_EXISTS, 0, "Volume with name '%s' already exists",
                             v->name);
    if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "insert volume");
    return 0;
}

int
sbx_store_volume_get(struct sbx_store *s, const char *id, const char *name,
                     struct sbx_volume_rec **out, struct sbx_error **err)
{
    *out = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          id ? "SELECT " VOLUME_COLUMNS " FROM volumes WHERE id = ?"
                             : "SELECT " VOLUME_COLUMNS " FROM volumes WHERE name = ?",
                          &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, id ? id : name, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return sbx_error_set(err, SBX_NOT_FOUND, 0, "volume '%s' not found", id ? id : name);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "get volume");
    *out = row_to_volume(st);
    return *out ? 0 : sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
}

int
sbx_store_volume_list(struct sbx_store *s, struct sbx_volume_list **out, struct sbx_error **err)
{
    *out = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT " VOLUME_COLUMNS " FROM volumes ORDER BY created_at_ms, id",
                          &st, err) < 0)
        return -1;
    struct sbx_volume_list *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct sbx_volume_rec *v = row_to_volume(st);
        if (l->n == cap) {
            cap = cap ? 2 * cap : 16;
            struct sbx_volume_rec **items = realloc(l->items, cap * sizeof(*items));
            if (items == NULL) {
                sbx_volume_rec_free(v);
                v = NULL;
            } else {
                l->items = items;
            }
        }
        if (v == NULL) {
            sbx_volume_list_free(l);
            return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
        }
        l->items[l->n++] = v;
    }
    if (rc != SQLITE_DONE) {
        sbx_volume_list_free(l);
        return sbx_store_db_error(s, rc, err, "list volumes");
    }
    *out = l;
    return 0;
}

int
sbx_store_volume_delete(struct sbx_store *s, const char *id, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "DELETE FROM volumes WHERE id = ?", &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "delete volume");
    if (sqlite3_changes(s->db) == 0)
        return sbx_error_set(err, SBX_NOT_FOUND, 0, "volume '%s' not found", id);
    return 0;
}

int
sbx_store_volume_user(struct sbx_store *s, const char *volume_id,
                      char sandbox_id[SBX_STORE_ID_MAX + 1], struct sbx_error **err)
{
    sandbox_id[0] = '\0';
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    /* Not pooled rows: a volume's own content service (volumes.c) is one, and goes with it. */
    if (sbx_store_prepare(
            s,
            "SELECT id FROM sandboxes WHERE pooled = 0 AND EXISTS (SELECT 1 FROM "
            "json_each(volume_mounts_json) AS m WHERE json_extract(m.value, '$.volumeID') = ?) "
            "LIMIT 1",
            &st, err) < 0)
        return -1;
    sqlite3_bind_text(st, 1, volume_id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        snprintf(sandbox_id, SBX_STORE_ID_MAX + 1, "%s", (const char *)sqlite3_column_text(st, 0));
    else if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "find the sandboxes of a volume");
    return 0;
}
