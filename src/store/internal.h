/* What the files of the state store share; nothing outside src/store/ includes this. */
#ifndef SBX_STORE_INTERNAL_H
#define SBX_STORE_INTERNAL_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "store/store.h"

struct sbx_store {
    sqlite3 *db;
    char *path;
    int wal_fd;        /* with deferred syncing: the WAL, for sbx_store_sync; else -1 */
    uint64_t deferred; /* commits made so far without their fsync */
};

void sbx_store_finalizep(sqlite3_stmt **st);
#define _cleanup_stmt_ __attribute__((cleanup(sbx_store_finalizep)))

/* An error from SQLite's code rc, mapped to ours (constraint: ALREADY_EXISTS, full:
 * RESOURCE_EXHAUSTED, busy: UNAVAILABLE); returns -1. */
int sbx_store_db_error(struct sbx_store *s, int rc, struct sbx_error **err, const char *what);
int sbx_store_prepare(struct sbx_store *s, const char *sql, sqlite3_stmt **st,
                      struct sbx_error **err);
/* Runs a statement that returns no rows; SBX_NOT_FOUND if it changed nothing and must_change
 * is set (id names what was looked for). */
int sbx_store_step_done(struct sbx_store *s, sqlite3_stmt *st, bool must_change, const char *id,
                        struct sbx_error **err);
/* A malloc'd copy of a text column; NULL for SQL NULL, or with *oom set. */
char *sbx_store_column_strdup(sqlite3_stmt *st, int col, bool *oom);

#endif
