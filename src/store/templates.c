/* SQLite implementation of the template part of the state store (see store.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/util.h"
#include "store/internal.h"

static void
bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

/* Copies a text column into a fixed buffer (cut at its size). */
static void
column_copy(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

static int
not_found(struct sbx_error **err, const char *what, const char *id)
{
    return sbx_error_set(err, SBX_NOT_FOUND, 0, "%s '%s' not found", what, id);
}

/* ---- templates ---- */

#define TEMPLATE_COLUMNS "id, alias, created_at_ms, source, sandbox_id"

static void
row_to_template(sqlite3_stmt *st, struct sbx_template_rec *t)
{
    bool oom = false;
    column_copy(st, 0, t->id, sizeof(t->id));
    t->alias = sbx_store_column_strdup(st, 1, &oom);
    t->created_at_ms = sqlite3_column_int64(st, 2);
    const unsigned char *src = sqlite3_column_text(st, 3);
    t->snapshot = src && strcmp((const char *)src, "snapshot") == 0;
    column_copy(st, 4, t->sandbox_id, sizeof(t->sandbox_id));
    if (oom || t->alias == NULL)
        abort();
}

int
sbx_store_template_get(struct sbx_store *s, const char *id_or_alias, struct sbx_template_rec *out,
                       struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "SELECT " TEMPLATE_COLUMNS " FROM templates WHERE id = ?1 OR alias = ?1",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, id_or_alias);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return not_found(err, "template", id_or_alias);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "read template");
    row_to_template(st, out);
    return 0;
}

int
sbx_store_template_insert(struct sbx_store *s, const struct sbx_template_rec *t,
                          struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "INSERT INTO templates (" TEMPLATE_COLUMNS ") VALUES (?, ?, ?, ?, ?)",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, t->id);
    bind_text(st, 2, t->alias);
    sqlite3_bind_int64(st, 3, t->created_at_ms);
    bind_text(st, 4, t->snapshot ? "snapshot" : "build");
    bind_text(st, 5, t->snapshot ? t->sandbox_id : NULL);
    return sbx_store_step_done(s, st, false, t->id, err);
}

/* Appends the layer keys of the builds matching sql (one bound text parameter) to out. */
static int
collect_build_layers(struct sbx_store *s, const char *sql, const char *id, struct sbx_buf *out,
                     struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, sql, &st, err) < 0)
        return -1;
    bind_text(st, 1, id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        if (t)
            sbx_buf_append(out, t, strlen((const char *)t), SIZE_MAX);
    }
    return rc == SQLITE_DONE ? 0 : sbx_store_db_error(s, rc, err, "read build layers");
}

static bool
has_key(const struct sbx_buf *keys, const char *key)
{
    for (size_t i = 0; i + 64 <= keys->len; i += 64)
        if (memcmp(keys->data + i, key, 64) == 0)
            return true;
    return false;
}

/* Forgets the layers that only the builds of template id have in their stacks, so that the
 * next layer GC removes them. */
static int
forget_own_layers(struct sbx_store *s, const char *id, struct sbx_error **err)
{
    struct sbx_buf mine = {0}, others = {0};
    int rc = collect_build_layers(s, "SELECT layers FROM template_builds WHERE template_id = ?", id,
                                  &mine, err);
    if (rc == 0)
        rc = collect_build_layers(s, "SELECT layers FROM template_builds WHERE template_id != ?",
                                  id, &others, err);
    for (size_t i = 0; rc == 0 && i + 64 <= mine.len; i += 64) {
        char key[65];
        memcpy(key, mine.data + i, 64);
        key[64] = '\0';
        if (has_key(&others, key))
            continue;
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        rc = sbx_store_prepare(s, "DELETE FROM layers WHERE key = ?", &st, err);
        if (rc == 0) {
            bind_text(st, 1, key);
            rc = sbx_store_step_done(s, st, false, key, err);
        }
    }
    sbx_buf_fini(&mine);
    sbx_buf_fini(&others);
    return rc;
}

int
sbx_store_layer_keys(struct sbx_store *s, char **keys, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT key FROM layers ORDER BY key", &st, err) < 0)
        return -1;
    struct sbx_buf out = {0};
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        if (t && strlen((const char *)t) == 64)
            sbx_buf_append(&out, t, 64, SIZE_MAX);
    }
    sbx_buf_append(&out, "", 1, SIZE_MAX);
    if (rc != SQLITE_DONE) {
        sbx_buf_fini(&out);
        return sbx_store_db_error(s, rc, err, "read layers");
    }
    *keys = out.data;
    return 0;
}

int
sbx_store_builds_expire(struct sbx_store *s, int64_t before_ms, int *builds, int *layers,
                        struct sbx_error **err)
{
    /* Builds no tag names any more (a name's earlier builds, failures), finished before
     * before_ms; then the layers no remaining build has in its stack, unused since. A build
     * under way, and every build a name or a snapshot resolves to, keep theirs. */
#define STALE_BUILDS                                                                               \
    "SELECT id FROM template_builds b WHERE b.status IN ('ready', 'error') AND "                   \
    "b.finished_at_ms < ?1 AND NOT EXISTS (SELECT 1 FROM template_tags t WHERE t.build_id = b.id)"
    static const char *const sql[] = {
        "DELETE FROM build_logs WHERE build_id IN (" STALE_BUILDS ")",
        "DELETE FROM template_builds WHERE id IN (" STALE_BUILDS ")",
        ("DELETE FROM layers WHERE created_at_ms < ?1 AND NOT EXISTS (SELECT 1 FROM "
         "template_builds b WHERE instr(b.layers, layers.key) > 0)"),
    };
#undef STALE_BUILDS
    int changed[3] = {0};
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return sbx_store_db_error(s, sqlite3_errcode(s->db), err, "begin");
    for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        if (sbx_store_prepare(s, sql[i], &st, err) < 0) {
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
        sqlite3_bind_int64(st, 1, before_ms);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) {
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return sbx_store_db_error(s, rc, err, "expire builds");
        }
        changed[i] = sqlite3_changes(s->db);
    }
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return sbx_store_db_error(s, sqlite3_errcode(s->db), err, "commit");
    *builds = changed[1];
    *layers = changed[2];
    return 0;
}

int
sbx_store_template_delete(struct sbx_store *s, const char *id, struct sbx_error **err)
{
    static const char *const sql[] = {
        ("DELETE FROM build_logs WHERE build_id IN "
         "(SELECT id FROM template_builds WHERE template_id = ?)"), /* one statement */
        "DELETE FROM template_tags WHERE template_id = ?",
        "DELETE FROM template_builds WHERE template_id = ?",
        "DELETE FROM templates WHERE id = ?",
    };
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return sbx_store_db_error(s, sqlite3_errcode(s->db), err, "begin");
    if (forget_own_layers(s, id, err) < 0) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        if (sbx_store_prepare(s, sql[i], &st, err) < 0) {
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
        bind_text(st, 1, id);
        if (sbx_store_step_done(s, st, false, id, err) < 0) {
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
    }
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return sbx_store_db_error(s, sqlite3_errcode(s->db), err, "commit");
    return 0;
}

int
sbx_store_template_list(struct sbx_store *s, struct sbx_template_rec **out, size_t *n,
                        struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "SELECT " TEMPLATE_COLUMNS " FROM templates ORDER BY created_at_ms, id",
                          &st, err) < 0)
        return -1;
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap && (*out = reallocarray(*out, cap = cap * 2 + 8, sizeof(**out))) == NULL)
            abort();
        row_to_template(st, &(*out)[(*n)++]);
    }
    if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "list templates");
    return 0;
}

int
sbx_store_template_busy(struct sbx_store *s, const char *id, bool *busy, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "SELECT count(*) FROM template_builds WHERE template_id = ? AND "
                          "status IN ('waiting', 'building')",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "read builds");
    *busy = sqlite3_column_int(st, 0) > 0;
    return 0;
}

void
sbx_template_rec_fini(struct sbx_template_rec *t)
{
    free(t->alias);
    t->alias = NULL;
}

/* ---- builds ---- */

#define BUILD_COLUMNS                                                                              \
    "id, template_id, status, cpu_count, memory_mb, tags_json, layers, context_json, "             \
    "reason_json, created_at_ms, finished_at_ms"

int
sbx_store_build_insert(struct sbx_store *s, const struct sbx_build_rec *b, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "INSERT INTO template_builds (" BUILD_COLUMNS
                          ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, b->id);
    bind_text(st, 2, b->template_id);
    bind_text(st, 3, b->status);
    sqlite3_bind_int(st, 4, b->cpu_count);
    sqlite3_bind_int(st, 5, b->memory_mb);
    bind_text(st, 6, b->tags_json ? b->tags_json : "[]");
    bind_text(st, 7, b->layers ? b->layers : "");
    bind_text(st, 8, b->context_json ? b->context_json : "{}");
    bind_text(st, 9, b->reason_json);
    sqlite3_bind_int64(st, 10, b->created_at_ms);
    sqlite3_bind_int64(st, 11, b->finished_at_ms);
    return sbx_store_step_done(s, st, false, b->id, err);
}

int
sbx_store_build_update(struct sbx_store *s, const struct sbx_build_rec *b, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "UPDATE template_builds SET status = ?, layers = ?, context_json = ?, "
                          "reason_json = ?, finished_at_ms = ? WHERE id = ?",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, b->status);
    bind_text(st, 2, b->layers ? b->layers : "");
    bind_text(st, 3, b->context_json ? b->context_json : "{}");
    bind_text(st, 4, b->reason_json);
    sqlite3_bind_int64(st, 5, b->finished_at_ms);
    bind_text(st, 6, b->id);
    return sbx_store_step_done(s, st, false, b->id, err);
}

int
sbx_store_build_get(struct sbx_store *s, const char *id, struct sbx_build_rec *out,
                    struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT " BUILD_COLUMNS " FROM template_builds WHERE id = ?", &st,
                          err) < 0)
        return -1;
    bind_text(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return not_found(err, "build", id);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "read build");
    bool oom = false;
    memset(out, 0, sizeof(*out));
    column_copy(st, 0, out->id, sizeof(out->id));
    column_copy(st, 1, out->template_id, sizeof(out->template_id));
    out->status = sbx_store_column_strdup(st, 2, &oom);
    out->cpu_count = sqlite3_column_int(st, 3);
    out->memory_mb = sqlite3_column_int(st, 4);
    out->tags_json = sbx_store_column_strdup(st, 5, &oom);
    out->layers = sbx_store_column_strdup(st, 6, &oom);
    out->context_json = sbx_store_column_strdup(st, 7, &oom);
    out->reason_json = sbx_store_column_strdup(st, 8, &oom);
    out->created_at_ms = sqlite3_column_int64(st, 9);
    out->finished_at_ms = sqlite3_column_int64(st, 10);
    if (oom || !out->status || !out->tags_json || !out->layers || !out->context_json)
        abort();
    return 0;
}

int
sbx_store_builds_fail_unfinished(struct sbx_store *s, const char *reason_json,
                                 struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "UPDATE template_builds SET status = 'error', reason_json = ?, "
                          "finished_at_ms = ? WHERE status IN ('waiting', 'building')",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, reason_json);
    sqlite3_bind_int64(st, 2, sbx_wall_ms());
    return sbx_store_step_done(s, st, false, "", err);
}

void
sbx_build_rec_fini(struct sbx_build_rec *b)
{
    free(b->status);
    free(b->tags_json);
    free(b->layers);
    free(b->context_json);
    free(b->reason_json);
    b->status = b->tags_json = b->layers = b->context_json = b->reason_json = NULL;
}

/* ---- logs ---- */

int
sbx_store_build_log_add(struct sbx_store *s, const char *build_id,
                        const struct sbx_build_log_rec *l, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "INSERT INTO build_logs (build_id, seq, at_ms, level, step, message) "
                          "VALUES (?1, (SELECT count(*) FROM build_logs WHERE build_id = ?1), ?2, "
                          "?3, ?4, ?5)",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, build_id);
    sqlite3_bind_int64(st, 2, l->at_ms);
    bind_text(st, 3, l->level);
    bind_text(st, 4, l->step);
    bind_text(st, 5, l->message);
    return sbx_store_step_done(s, st, false, build_id, err);
}

int
sbx_store_build_logs(struct sbx_store *s, const char *build_id, int64_t offset, int limit,
                     struct sbx_build_log_rec **out, size_t *n, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "SELECT at_ms, level, step, message FROM build_logs WHERE build_id = ? "
                          "AND seq >= ? ORDER BY seq LIMIT ?",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, build_id);
    sqlite3_bind_int64(st, 2, offset);
    sqlite3_bind_int(st, 3, limit);
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap && (*out = reallocarray(*out, cap = cap * 2 + 16, sizeof(**out))) == NULL)
            abort();
        struct sbx_build_log_rec *l = &(*out)[(*n)++];
        bool oom = false;
        l->at_ms = sqlite3_column_int64(st, 0);
        column_copy(st, 1, l->level, sizeof(l->level));
        l->step = sbx_store_column_strdup(st, 2, &oom);
        l->message = sbx_store_column_strdup(st, 3, &oom);
        if (oom || l->message == NULL)
            abort();
    }
    if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "read build logs");
    return 0;
}

void
sbx_build_logs_free(struct sbx_build_log_rec *l, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(l[i].step);
        free(l[i].message);
    }
    free(l);
}

/* ---- tags ---- */

int
sbx_store_tag_set(struct sbx_store *s, const char *template_id, const char *tag,
                  const char *build_id, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "INSERT OR REPLACE INTO template_tags (template_id, tag, build_id, "
                          "created_at_ms) VALUES (?, ?, ?, ?)",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, template_id);
    bind_text(st, 2, tag);
    bind_text(st, 3, build_id);
    sqlite3_bind_int64(st, 4, sbx_wall_ms());
    return sbx_store_step_done(s, st, false, tag, err);
}

int
sbx_store_tag_get(struct sbx_store *s, const char *template_id, const char *tag,
                  char build_id[SBX_STORE_BUILD_ID_LEN + 1], struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "SELECT build_id FROM template_tags WHERE template_id = ? AND tag = ?",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, template_id);
    bind_text(st, 2, tag);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return not_found(err, "tag", tag);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "read tag");
    column_copy(st, 0, build_id, SBX_STORE_BUILD_ID_LEN + 1);
    return 0;
}

int
sbx_store_tag_delete(struct sbx_store *s, const char *template_id, const char *tag,
                     struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "DELETE FROM template_tags WHERE template_id = ? AND tag = ?", &st,
                          err) < 0)
        return -1;
    bind_text(st, 1, template_id);
    bind_text(st, 2, tag);
    if (sbx_store_step_done(s, st, false, tag, err) < 0)
        return -1;
    return sqlite3_changes(s->db) == 0 ? not_found(err, "tag", tag) : 0;
}

int
sbx_store_tags_list(struct sbx_store *s, const char *template_id, struct sbx_tag_rec **out,
                    size_t *n, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "SELECT tag, build_id, created_at_ms FROM template_tags WHERE "
                          "template_id = ? ORDER BY created_at_ms, tag",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, template_id);
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap && (*out = reallocarray(*out, cap = cap * 2 + 8, sizeof(**out))) == NULL)
            abort();
        struct sbx_tag_rec *t = &(*out)[(*n)++];
        column_copy(st, 0, t->tag, sizeof(t->tag));
        column_copy(st, 1, t->build_id, sizeof(t->build_id));
        t->created_at_ms = sqlite3_column_int64(st, 2);
    }
    if (rc != SQLITE_DONE)
        return sbx_store_db_error(s, rc, err, "list tags");
    return 0;
}

/* ---- layers and uploads ---- */

int
sbx_store_layer_add(struct sbx_store *s, const char *key, bool empty, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(
            s, "INSERT OR REPLACE INTO layers (key, empty, created_at_ms) VALUES (?, ?, ?)", &st,
            err) < 0)
        return -1;
    bind_text(st, 1, key);
    sqlite3_bind_int(st, 2, empty);
    sqlite3_bind_int64(st, 3, sbx_wall_ms());
    return sbx_store_step_done(s, st, false, key, err);
}

int
sbx_store_layer_get(struct sbx_store *s, const char *key, bool *empty, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    /* created_at_ms holds the last use: its making, or the last build that found it. */
    if (sbx_store_prepare(s, "UPDATE layers SET created_at_ms = ? WHERE key = ? RETURNING empty",
                          &st, err) < 0)
        return -1;
    sqlite3_bind_int64(st, 1, sbx_wall_ms());
    bind_text(st, 2, key);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return not_found(err, "layer", key);
    if (rc != SQLITE_ROW)
        return sbx_store_db_error(s, rc, err, "read layer");
    *empty = sqlite3_column_int(st, 0) != 0;
    return 0;
}

int
sbx_store_upload_add(struct sbx_store *s, const char *hash, int64_t size, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "INSERT OR REPLACE INTO uploads (hash, size, created_at_ms) VALUES "
                          "(?, ?, ?)",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, hash);
    sqlite3_bind_int64(st, 2, size);
    sqlite3_bind_int64(st, 3, sbx_wall_ms());
    return sbx_store_step_done(s, st, false, hash, err);
}

bool
sbx_store_upload_has(struct sbx_store *s, const char *hash, bool touch)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    struct sbx_error *err = NULL;
    /* created_at_ms holds the last use: the upload, or the last probe that found it. */
    if (sbx_store_prepare(s,
                          touch ? "UPDATE uploads SET created_at_ms = ? WHERE hash = ?"
                                : "SELECT ?, 1 FROM uploads WHERE hash = ?",
                          &st, &err) < 0) {
        sbx_error_free(err);
        return false;
    }
    sqlite3_bind_int64(st, 1, sbx_wall_ms());
    bind_text(st, 2, hash);
    int rc = sqlite3_step(st);
    return touch ? rc == SQLITE_DONE && sqlite3_changes(s->db) > 0 : rc == SQLITE_ROW;
}

int
sbx_store_uploads_expire(struct sbx_store *s, int64_t before_ms, struct sbx_buf *hashes,
                         struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s, "DELETE FROM uploads WHERE created_at_ms < ? RETURNING hash", &st,
                          err) < 0)
        return -1;
    sqlite3_bind_int64(st, 1, before_ms);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *h = (const char *)sqlite3_column_text(st, 0);
        if (h && strlen(h) == 64)
            sbx_buf_append(hashes, h, 64, SIZE_MAX);
    }
    return rc == SQLITE_DONE ? 0 : sbx_store_db_error(s, rc, err, "expire uploads");
}

/* ---- snapshots ---- */

int
sbx_store_snapshot_list(struct sbx_store *s, const char *sandbox_id, const char *alias,
                        const char *tag, int64_t offset, int limit, struct sbx_snapshot_rec **out,
                        size_t *n, bool *more, struct sbx_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    if (sbx_store_prepare(s,
                          "SELECT t.id, t.alias, g.tag, g.created_at_ms FROM templates t "
                          "JOIN template_tags g ON g.template_id = t.id "
                          "WHERE t.source = 'snapshot' AND (?1 IS NULL OR t.sandbox_id = ?1) "
                          "AND (?2 IS NULL OR t.alias = ?2) AND (?3 IS NULL OR g.tag = ?3) "
                          "ORDER BY g.created_at_ms DESC, t.id DESC, g.tag LIMIT ?4 OFFSET ?5",
                          &st, err) < 0)
        return -1;
    bind_text(st, 1, sandbox_id);
    bind_text(st, 2, alias);
    bind_text(st, 3, tag);
    sqlite3_bind_int(st, 4, limit + 1); /* one more tells whether there are more */
    sqlite3_bind_int64(st, 5, offset);
    *out = calloc((size_t)limit + 1, sizeof(**out));
    if (*out == NULL)
        abort();
    *n = 0;
    *more = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == (size_t)limit) {
            *more = true;
            continue;
        }
        struct sbx_snapshot_rec *r = &(*out)[(*n)++];
        column_copy(st, 0, r->template_id, sizeof(r->template_id));
        column_copy(st, 1, r->alias, sizeof(r->alias));
        column_copy(st, 2, r->tag, sizeof(r->tag));
        r->created_at_ms = sqlite3_column_int64(st, 3);
    }
    if (rc != SQLITE_DONE) {
        free(*out);
        *out = NULL;
        return sbx_store_db_error(s, rc, err, "list snapshots");
    }
    return 0;
}
