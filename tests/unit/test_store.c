/* State store against a real SQLite file in a temporary directory. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/error.h"
#include "base/limits.h"
#include "base/util.h"
#include "harness.h"
#include "store/store.h"

static char dbpath[128];

static struct sbx_store *
open_fresh(void)
{
    snprintf(dbpath, sizeof(dbpath), "%s/state.db", sbx_test_dir);
    struct sbx_error *err = NULL;
    struct sbx_store *s = sbx_store_open(dbpath, &err);
    if (s == NULL)
        fprintf(stderr, "open: %s\n", err->msg);
    CHECK(s != NULL);
    return s;
}

static struct sbx_store *
reopen(struct sbx_store *s)
{
    sbx_store_close(s);
    struct sbx_error *err = NULL;
    s = sbx_store_open(dbpath, &err);
    CHECK(s != NULL);
    return s;
}

/* A record with fields pointing at static strings: only for insert, never freed. */
static struct sbx_sandbox_rec
mkrec(const char *id, int64_t started, int slot, const char *state, const char *meta)
{
    struct sbx_sandbox_rec r = {0};
    snprintf(r.id, sizeof(r.id), "%s", id);
    r.template_id = "base";
    r.metadata_json = (char *)meta;
    r.env_vars_json = "{\"A\":\"b\"}";
    r.started_at_ms = started;
    r.end_at_ms = started + 300000;
    r.cpu_count = 2;
    r.memory_mb = 512;
    r.disk_mb = 1024;
    r.uid_slot = slot;
    r.state = (char *)state;
    r.allow_internet = true;
    r.auto_pause_memory = true;
    r.timeout_s = 300;
    return r;
}

static void
insert(struct sbx_store *s, const char *id, int64_t started, int slot, const char *state,
       const char *meta)
{
    struct sbx_sandbox_rec r = mkrec(id, started, slot, state, meta);
    struct sbx_error *err = NULL;
    int rc = sbx_store_sandbox_insert(s, &r, &err);
    if (rc < 0)
        fprintf(stderr, "insert %s: %s\n", id, err->msg);
    CHECK(rc == 0);
}

TEST(open_creates_private_wal_database)
{
    struct sbx_store *s = open_fresh();
    struct stat st;
    CHECK(stat(dbpath, &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    struct sbx_sandbox_rec r = mkrec("a1", 1000, 0, "running", "{}");
    struct sbx_error *err = NULL;
    CHECK(sbx_store_sandbox_insert(s, &r, &err) == 0);
    char wal[160];
    snprintf(wal, sizeof(wal), "%s-wal", dbpath);
    CHECK(stat(wal, &st) == 0); /* WAL mode */
    CHECK((st.st_mode & 0777) == 0600);

    /* Every fd SQLite holds is close-on-exec (sandboxes are forked from the daemon). */
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    struct dirent *e;
    int checked = 0;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd <= 2 || fd == dirfd(d))
            continue;
        char link[256] = {0}, p[64];
        snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
        if (readlink(p, link, sizeof(link) - 1) > 0 && strstr(link, sbx_test_dir) != NULL) {
            CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
            checked++;
        }
    }
    closedir(d);
    CHECK(checked >= 2); /* the database and its WAL at least */
    sbx_store_close(s);
}

TEST(sandbox_round_trip)
{
    struct sbx_store *s = open_fresh();
    struct sbx_error *err = NULL;
    struct sbx_sandbox_rec r = mkrec("sb1", 1700000000123, 3, "running", "{\"k\":\"v\"}");
    r.alias = "my-alias";
    r.access_token = "tok";
    r.pid = 4242;
    r.pid_start_time = 0xfedcba9876543210ull; /* survives the int64 column */
    r.auto_pause = true;
    CHECK(sbx_store_sandbox_insert(s, &r, &err) == 0);

    /* Duplicate id, duplicate slot. */
    CHECK(sbx_store_sandbox_insert(s, &r, &err) < 0);
    CHECK(err->code == SBX_ALREADY_EXISTS);
    sbx_error_free(err);
    err = NULL;
    struct sbx_sandbox_rec r2 = mkrec("sb2", 1, 3, "running", "{}");
    CHECK(sbx_store_sandbox_insert(s, &r2, &err) < 0);
    CHECK(err->code == SBX_ALREADY_EXISTS);
    sbx_error_free(err);
    err = NULL;

    struct sbx_sandbox_rec *g = NULL;
    CHECK(sbx_store_sandbox_get(s, "sb1", &g, &err) == 0);
    CHECK_STR(g->id, "sb1");
    CHECK_STR(g->template_id, "base");
    CHECK_STR(g->alias, "my-alias");
    CHECK_STR(g->metadata_json, "{\"k\":\"v\"}");
    CHECK_STR(g->env_vars_json, "{\"A\":\"b\"}");
    CHECK_STR(g->access_token, "tok");
    CHECK(g->traffic_token == NULL);
    CHECK(g->started_at_ms == 1700000000123);
    CHECK(g->end_at_ms == 1700000300123);
    CHECK(g->cpu_count == 2 && g->memory_mb == 512 && g->disk_mb == 1024);
    CHECK(g->uid_slot == 3 && g->pid == 4242);
    CHECK(g->pid_start_time == 0xfedcba9876543210ull);
    CHECK_STR(g->state, "running");
    CHECK(g->allow_internet && g->auto_pause);
    sbx_sandbox_rec_free(g);

    CHECK(sbx_store_sandbox_update_end_at(s, "sb1", 42, &err) == 0);
    CHECK(sbx_store_sandbox_update_pid(s, "sb1", 77, 12345, &err) == 0);
    CHECK(sbx_store_sandbox_get(s, "sb1", &g, &err) == 0);
    CHECK(g->end_at_ms == 42 && g->pid == 77 && g->pid_start_time == 12345);
    CHECK(g->auto_pause_memory && !g->auto_resume && g->timeout_s == 300 && !g->paused_memory);
    sbx_sandbox_rec_free(g);
    CHECK(sbx_store_sandbox_set_paused(s, "sb1", true, true, 99, &err) == 0);
    CHECK(sbx_store_sandbox_get(s, "sb1", &g, &err) == 0);
    CHECK_STR(g->state, "paused");
    CHECK(g->paused_memory && g->end_at_ms == 99);
    sbx_sandbox_rec_free(g);
    CHECK(sbx_store_sandbox_set_paused(s, "sb1", false, true, 100, &err) == 0);
    CHECK(sbx_store_sandbox_get(s, "sb1", &g, &err) == 0);
    CHECK_STR(g->state, "running");
    CHECK(!g->paused_memory && g->end_at_ms == 100);
    sbx_sandbox_rec_free(g);
    CHECK(sbx_store_sandbox_set_paused(s, "nope", true, false, 1, &err) < 0);
    CHECK(err->code == SBX_NOT_FOUND);
    sbx_error_free(err);
    err = NULL;

    /* Unknown ids. */
    CHECK(sbx_store_sandbox_update_end_at(s, "nope", 1, &err) < 0);
    CHECK(err->code == SBX_NOT_FOUND);
    sbx_error_free(err);
    err = NULL;
    CHECK(sbx_store_sandbox_update_pid(s, "nope", 1, 1, &err) < 0);
    sbx_error_free(err);
    err = NULL;

    CHECK(sbx_store_sandbox_delete(s, "sb1", &err) == 0);
    CHECK(sbx_store_sandbox_get(s, "sb1", &g, &err) < 0);
    CHECK(err->code == SBX_NOT_FOUND && g == NULL);
    sbx_error_free(err);
    err = NULL;
    CHECK(sbx_store_sandbox_delete(s, "sb1", &err) < 0);
    CHECK(err->code == SBX_NOT_FOUND);
    sbx_error_free(err);
    sbx_sandbox_rec_free(NULL);
    sbx_sandbox_list_free(NULL);
    sbx_store_close(s);
}

TEST(volumes_round_trip_and_users)
{
    struct sbx_store *s = open_fresh();
    struct sbx_error *err = NULL;
    struct sbx_volume_rec v = {
        .id = "vol1", .name = "data", .token = "t0k", .size_mb = 64, .created_at_ms = 5};
    CHECK(sbx_store_volume_insert(s, &v, &err) == 0);
    struct sbx_volume_rec dup = v;
    snprintf(dup.id, sizeof(dup.id), "vol2");
    CHECK(sbx_store_volume_insert(s, &dup, &err) < 0);
    CHECK(err->code == SBX_ALREADY_EXISTS);
    CHECK_STR(err->msg, "Volume with name 'data' already exists");
    sbx_error_free(err);
    err = NULL;
    struct sbx_volume_rec *g = NULL;
    CHECK(sbx_store_volume_get(s, NULL, "data", &g, &err) == 0);
    CHECK_STR(g->id, "vol1");
    CHECK_STR(g->token, "t0k");
    CHECK(g->size_mb == 64);
    sbx_volume_rec_free(g);
    CHECK(sbx_store_volume_get(s, "nope", NULL, &g, &err) < 0 && err->code == SBX_NOT_FOUND);
    sbx_error_free(err);
    err = NULL;
    struct sbx_volume_list *l = NULL;
    CHECK(sbx_store_volume_list(s, &l, &err) == 0 && l->n == 1);
    sbx_volume_list_free(l);
    /* A sandbox that mounts it is its user. */
    char user[SBX_STORE_ID_MAX + 1];
    CHECK(sbx_store_volume_user(s, "vol1", user, &err) == 0 && user[0] == '\0');
    struct sbx_sandbox_rec r = mkrec("sb1", 1, 1, "paused", "{}");
    r.volume_mounts_json = "[{\"name\":\"data\",\"path\":\"/mnt/d\",\"volumeID\":\"vol1\"}]";
    CHECK(sbx_store_sandbox_insert(s, &r, &err) == 0);
    CHECK(sbx_store_volume_user(s, "vol1", user, &err) == 0);
    CHECK_STR(user, "sb1");
    struct sbx_sandbox_rec *got = NULL;
    CHECK(sbx_store_sandbox_get(s, "sb1", &got, &err) == 0);
    CHECK_STR(got->volume_mounts_json, r.volume_mounts_json);
    sbx_sandbox_rec_free(got);
    CHECK(sbx_store_volume_delete(s, "vol1", &err) == 0);
    CHECK(sbx_store_volume_delete(s, "vol1", &err) < 0 && err->code == SBX_NOT_FOUND);
    sbx_error_free(err);
    sbx_store_close(s);
}

TEST(persists_across_close_and_open)
{
    struct sbx_store *s = open_fresh();
    struct sbx_error *err = NULL;
    insert(s, "p1", 10, 0, "running", "{}");
    insert(s, "p2", 20, 1, "paused", "{}");
    CHECK(sbx_store_api_key_add(s, "e2b_abc", "k", true, NULL, &err) == 0);
    CHECK(sbx_store_sandbox_update_end_at(s, "p1", 999, &err) == 0);
    s = reopen(s);
    s = reopen(s); /* migrations are idempotent */

    struct sbx_sandbox_list *l = NULL;
    CHECK(sbx_store_sandbox_list_all(s, &l, &err) == 0);
    CHECK(l->n == 2);
    CHECK_STR(l->items[0]->id, "p1"); /* oldest first */
    CHECK(l->items[0]->end_at_ms == 999);
    CHECK_STR(l->items[1]->id, "p2");
    CHECK_STR(l->items[1]->state, "paused");
    CHECK(l->next_token == NULL);
    sbx_sandbox_list_free(l);
    CHECK(sbx_store_api_key_check(s, "e2b_abc", NULL));
    CHECK(sbx_store_api_key_count(s, &err) == 1);
    sbx_store_close(s);
}

/* Fetches every page with the given query and checks that the concatenation is exactly
 * want[] in order. */
static void
check_pages(struct sbx_store *s, struct sbx_store_query q, const char *const *want, size_t nwant)
{
    size_t got = 0;
    char *token = NULL;
    for (int pages = 0;; pages++) {
        CHECK(pages < 100);
        q.next_token = token;
        struct sbx_sandbox_list *l = NULL;
        struct sbx_error *err = NULL;
        int rc = sbx_store_sandbox_query(s, &q, &l, &err);
        if (rc < 0)
            fprintf(stderr, "query: %s\n", err->msg);
        CHECK(rc == 0);
        CHECK(l->n <= (size_t)(q.limit ? q.limit : SBX_STORE_LIST_MAX));
        for (size_t i = 0; i < l->n; i++) {
            CHECK(got < nwant);
            CHECK_STR(l->items[i]->id, want[got]);
            got++;
        }
        free(token);
        token = l->next_token ? strdup(l->next_token) : NULL;
        /* A token is handed out iff more items exist, and a page is then full. */
        if (token != NULL)
            CHECK(l->n == (size_t)q.limit);
        sbx_sandbox_list_free(l);
        if (token == NULL)
            break;
    }
    CHECK(got == nwant);
}

TEST(list_order_and_paging)
{
    struct sbx_store *s = open_fresh();
    /* Equal start times on purpose: ids break the tie. */
    insert(s, "a", 100, 0, "running", "{}");
    insert(s, "b", 200, 1, "running", "{}");
    insert(s, "c", 200, 2, "paused", "{}");
    insert(s, "d", 200, 3, "running", "{}");
    insert(s, "e", 300, 4, "running", "{}");
    insert(s, "f", 50, 5, "paused", "{}");
    static const char *const desc[] = {"e", "d", "c", "b", "a", "f"};
    static const char *const asc[] = {"f", "a", "b", "c", "d", "e"};
    for (int limit = 1; limit <= 7; limit++) {
        struct sbx_store_query q = {.limit = limit};
        check_pages(s, q, desc, 6);
        q.ascending = true;
        check_pages(s, q, asc, 6);
    }
    struct sbx_store_query q = {0}; /* default limit */
    check_pages(s, q, desc, 6);

    /* States. */
    static const char *const running[] = {"e", "d", "b", "a"};
    static const char *const paused[] = {"c", "f"};
    q = (struct sbx_store_query){.states = SBX_STORE_STATE_RUNNING, .limit = 3};
    check_pages(s, q, running, 4);
    q.states = SBX_STORE_STATE_PAUSED;
    check_pages(s, q, paused, 2);
    q.states = SBX_STORE_STATE_PAUSED | SBX_STORE_STATE_RUNNING;
    check_pages(s, q, desc, 6);

    /* startedAfter is inclusive. */
    static const char *const after200[] = {"e", "d", "c", "b"};
    q = (struct sbx_store_query){.has_started_after = true, .started_after_ms = 200, .limit = 2};
    check_pages(s, q, after200, 4);

    /* Bad input. */
    struct sbx_error *err = NULL;
    struct sbx_sandbox_list *l = NULL;
    q = (struct sbx_store_query){.limit = 101};
    CHECK(sbx_store_sandbox_query(s, &q, &l, &err) < 0 && err->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(err);
    err = NULL;
    q = (struct sbx_store_query){.limit = -1};
    CHECK(sbx_store_sandbox_query(s, &q, &l, &err) < 0);
    sbx_error_free(err);
    err = NULL;
    static const char *const bad_tokens[] = {"zz", "abc", "", "3a61", "31303a", "31303a2f2e2e"};
    for (size_t i = 0; i < sizeof(bad_tokens) / sizeof(bad_tokens[0]); i++) {
        q = (struct sbx_store_query){.next_token = bad_tokens[i]};
        CHECK(sbx_store_sandbox_query(s, &q, &l, &err) < 0);
        CHECK(err->code == SBX_INVALID_ARGUMENT);
        sbx_error_free(err);
        err = NULL;
    }
    /* A token whose item has been deleted meanwhile still positions the next page. */
    q = (struct sbx_store_query){.limit = 2};
    CHECK(sbx_store_sandbox_query(s, &q, &l, &err) == 0);
    CHECK(l->next_token != NULL);
    char *tok = strdup(l->next_token);
    sbx_sandbox_list_free(l);
    CHECK(sbx_store_sandbox_delete(s, "d", &err) == 0);
    q.next_token = tok;
    CHECK(sbx_store_sandbox_query(s, &q, &l, &err) == 0);
    CHECK(l->n == 2);
    CHECK_STR(l->items[0]->id, "c");
    CHECK_STR(l->items[1]->id, "b");
    sbx_sandbox_list_free(l);
    free(tok);
    sbx_store_close(s);
}

TEST(list_filters_metadata_and_template)
{
    struct sbx_store *s = open_fresh();
    insert(s, "m1", 1, 0, "running", "{\"team\":\"x\",\"k y\":\"v&w\"}");
    insert(s, "m2", 2, 1, "running", "{\"team\":\"x\"}");
    insert(s, "m3", 3, 2, "paused", "{\"team\":\"y\",\"k y\":\"v&w\"}");
    insert(s, "m4", 4, 3, "running", "{\"team\":\"x\",\"n\":1}");
    insert(s, "m5", 5, 4, "running", "{}");
    struct sbx_sandbox_rec r = mkrec("m6", 6, 5, "running", "{\"team\":\"x\"}");
    r.template_id = "code-interpreter-v1";
    r.alias = "ci";
    struct sbx_error *err = NULL;
    CHECK(sbx_store_sandbox_insert(s, &r, &err) == 0);

    const char *k1[] = {"team"}, *v1[] = {"x"};
    static const char *const team_x[] = {"m6", "m4", "m2", "m1"};
    struct sbx_store_query q = {.meta_keys = k1, .meta_values = v1, .n_meta = 1, .limit = 1};
    check_pages(s, q, team_x, 4);

    const char *k2[] = {"team", "k y"}, *v2[] = {"x", "v&w"};
    static const char *const both[] = {"m1"};
    q = (struct sbx_store_query){.meta_keys = k2, .meta_values = v2, .n_meta = 2};
    check_pages(s, q, both, 1);

    const char *k3[] = {"k y"}, *v3[] = {"v&w"};
    static const char *const kv_paused[] = {"m3"};
    q = (struct sbx_store_query){
        .meta_keys = k3, .meta_values = v3, .n_meta = 1, .states = SBX_STORE_STATE_PAUSED};
    check_pages(s, q, kv_paused, 1);

    /* Non-string JSON values never equal a string filter; unknown key matches nothing. */
    const char *k4[] = {"n"}, *v4[] = {"1"};
    q = (struct sbx_store_query){.meta_keys = k4, .meta_values = v4, .n_meta = 1};
    check_pages(s, q, NULL, 0);
    const char *k5[] = {"nope"}, *v5[] = {"x"};
    q = (struct sbx_store_query){.meta_keys = k5, .meta_values = v5, .n_meta = 1};
    check_pages(s, q, NULL, 0);
    /* SQL-looking input is just a value. */
    const char *k6[] = {"team' OR 1=1 --"}, *v6[] = {"x"};
    q = (struct sbx_store_query){.meta_keys = k6, .meta_values = v6, .n_meta = 1};
    check_pages(s, q, NULL, 0);

    /* Template by id or alias. */
    static const char *const ci[] = {"m6"};
    q = (struct sbx_store_query){.template_id = "ci"};
    check_pages(s, q, ci, 1);
    q.template_id = "code-interpreter-v1";
    check_pages(s, q, ci, 1);
    q.template_id = "unknown";
    check_pages(s, q, NULL, 0);
    sbx_store_close(s);
}

TEST(uid_slot_reuse)
{
    struct sbx_store *s = open_fresh();
    struct sbx_error *err = NULL;
    int slot = -1;
    CHECK(sbx_store_free_uid_slot(s, &slot, &err) == 0 && slot == 0);
    insert(s, "u0", 1, 0, "running", "{}");
    insert(s, "u1", 2, 1, "running", "{}");
    insert(s, "u2", 3, 2, "paused", "{}"); /* paused sandboxes keep their slot */
    insert(s, "u5", 4, 5, "running", "{}");
    CHECK(sbx_store_free_uid_slot(s, &slot, &err) == 0 && slot == 3);
    insert(s, "u3", 5, 3, "running", "{}");
    CHECK(sbx_store_free_uid_slot(s, &slot, &err) == 0 && slot == 4);
    CHECK(sbx_store_sandbox_delete(s, "u1", &err) == 0);
    CHECK(sbx_store_free_uid_slot(s, &slot, &err) == 0 && slot == 1);
    s = reopen(s);
    CHECK(sbx_store_free_uid_slot(s, &slot, &err) == 0 && slot == 1);
    sbx_store_close(s);
}

TEST(api_keys)
{
    struct sbx_store *s = open_fresh();
    struct sbx_error *err = NULL;
    const char *key = "e2b_0123456789abcdef0123456789abcdef01234567";
    CHECK(sbx_store_api_key_count(s, &err) == 0);
    CHECK(!sbx_store_api_key_check(s, key, NULL)); /* no keys: nothing passes */
    struct sbx_api_key k;
    CHECK(sbx_store_api_key_add(s, key, "first", true, &k, &err) == 0);
    CHECK_STR(k.name, "first");
    CHECK_STR(k.type, "e2b_");
    CHECK_STR(k.mask_prefix, "01");
    CHECK_STR(k.mask_suffix, "4567");
    CHECK(k.length == 40 && k.admin && strlen(k.id) == 36);
    free(k.name);
    CHECK(sbx_store_api_key_add(s, key, "again", true, NULL, &err) < 0 &&
          err->code == SBX_ALREADY_EXISTS);
    sbx_error_free(err);
    err = NULL;
    struct sbx_api_key second;
    CHECK(sbx_store_api_key_add(s, "e2b_second", "second", false, &second, &err) == 0);
    CHECK(sbx_store_api_key_count(s, &err) == 2);
    struct sbx_api_key_auth who;
    CHECK(sbx_store_api_key_check(s, key, &who) && who.admin && strcmp(who.id, k.id) == 0);
    CHECK(sbx_store_api_key_check(s, "e2b_second", &who) && !who.admin);
    CHECK(!sbx_store_api_key_check(s, "e2b_0123456789abcdef0123456789abcdef01234568", NULL));
    CHECK(!sbx_store_api_key_check(s, "e2b_0123456789abcdef", NULL)); /* prefix: wrong length */
    CHECK(!sbx_store_api_key_check(s, "e2b_0123456789abcdef0123456789abcdef01234567x", NULL));
    CHECK(!sbx_store_api_key_check(s, "", NULL));
    CHECK(sbx_store_api_key_add(s, "", "x", false, NULL, &err) < 0 &&
          err->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(err);
    err = NULL;

    /* The last admin key cannot go; a normal one can, at once and for good. */
    CHECK(sbx_store_api_key_revoke(s, k.id, &err) < 0 && err->code == SBX_FAILED_PRECONDITION);
    sbx_error_free(err);
    err = NULL;
    CHECK(sbx_store_api_key_revoke(s, second.id, &err) == 0);
    free(second.name);
    CHECK(!sbx_store_api_key_check(s, "e2b_second", NULL));
    CHECK(sbx_store_api_key_revoke(s, second.id, &err) < 0 && err->code == SBX_NOT_FOUND);
    sbx_error_free(err);
    err = NULL;
    CHECK(sbx_store_api_key_add(s, "e2b_second", "back", true, NULL, &err) < 0 &&
          err->code == SBX_ALREADY_EXISTS);
    sbx_error_free(err);
    err = NULL;
    struct sbx_api_key found;
    CHECK(sbx_store_api_key_find(s, "e2b_second", &found, &err) == 0 && found.revoked_at_ms > 0);
    free(found.name);
    struct sbx_api_key_list *l = NULL;
    CHECK(sbx_store_api_key_list(s, &l, &err) == 0 && l->n == 1);
    CHECK_STR(l->items[0].name, "first");
    sbx_api_key_list_free(l);
    CHECK(sbx_store_api_key_touch(s, k.id, 12345, &err) == 0);
    CHECK(sbx_store_api_key_list(s, &l, &err) == 0 && l->items[0].last_used_at_ms == 12345);
    sbx_api_key_list_free(l);

    /* Stored as hashes: the clear key appears nowhere in the files. */
    s = reopen(s);
    sbx_store_close(s);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "grep -rqa e2b_second %s", sbx_test_dir);
    CHECK(system(cmd) != 0);
}

/* A database of before named keys: its keys stay valid, as admin keys with a name. */
TEST(api_keys_of_before_names_are_kept)
{
    struct sbx_store *s = open_fresh();
    sbx_store_close(s);
    char cmd[2048];
    snprintf(
        cmd, sizeof(cmd),
        "python3 -c \"import sqlite3, hashlib; c=sqlite3.connect('%s'); "
        "c.executescript('DROP TABLE api_keys; DROP TABLE sandbox_log_lines; "
        "DROP TABLE sandbox_logs; DROP TABLE volumes; DROP TABLE templates; "
        "DROP TABLE template_builds; DROP TABLE template_tags; DROP TABLE build_logs; "
        "DROP TABLE layers; DROP TABLE uploads; ALTER TABLE sandboxes DROP COLUMN "
        "paused_memory; ALTER TABLE sandboxes DROP COLUMN auto_pause_memory; ALTER TABLE "
        "sandboxes DROP COLUMN auto_resume; ALTER TABLE sandboxes DROP COLUMN timeout_s; "
        "ALTER TABLE sandboxes DROP COLUMN volume_mounts_json; ALTER TABLE sandboxes DROP COLUMN "
        "network_json; DELETE FROM schema_version; "
        "INSERT INTO schema_version VALUES (3); CREATE TABLE api_keys (key_sha256 BLOB "
        "PRIMARY KEY, created_at_ms INTEGER NOT NULL)'); "
        "c.execute('INSERT INTO api_keys VALUES (?, 5)', "
        "(hashlib.sha256(b'e2b_old').digest(),)); c.commit()\"",
        dbpath);
    CHECK(system(cmd) == 0);
    struct sbx_error *err = NULL;
    s = sbx_store_open(dbpath, &err);
    CHECK(s != NULL);
    struct sbx_api_key_auth who;
    CHECK(sbx_store_api_key_check(s, "e2b_old", &who) && who.admin);
    struct sbx_api_key_list *l = NULL;
    CHECK(sbx_store_api_key_list(s, &l, &err) == 0 && l->n == 1);
    CHECK(strncmp(l->items[0].name, "key-", 4) == 0 && l->items[0].created_at_ms == 5);
    sbx_api_key_list_free(l);
    sbx_store_close(s);
}

TEST(sandbox_logs_are_bounded_and_pruned)
{
    struct sbx_store *s = open_fresh();
    struct sbx_error *err = NULL;
    struct sbx_log_line line = {.ts_ms = 1, .line = "ts=x level=info event=a"};
    CHECK(sbx_store_log_append(s, "none", "agent", &line, 1, &err) < 0 &&
          err->code == SBX_NOT_FOUND);
    sbx_error_free(err);
    err = NULL;
    /* Three logs of ~100 KiB each, ended at 10, 20 and 30; one still running. */
    static char big[1001];
    memset(big, 'x', 1000);
    struct sbx_log_line many[100];
    for (int i = 0; i < 100; i++)
        many[i] = (struct sbx_log_line){.ts_ms = i, .line = big};
    const char *ids[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        CHECK(sbx_store_log_open(s, ids[i], "base", 0, &err) == 0);
        CHECK(sbx_store_log_append(s, ids[i], "agent", many, 100, &err) == 0);
        if (i < 3)
            CHECK(sbx_store_log_close(s, ids[i], 10 * (i + 1), &err) == 0);
    }
    /* A log never grows past its cap. */
    for (int i = 0; i < 10; i++)
        CHECK(sbx_store_log_append(s, "d", "agent", many, 100, &err) == 0);
    struct sbx_log_lines *l = NULL;
    CHECK(sbx_store_log_get(s, "d", &l, &err) == 0);
    CHECK(l->n == SBX_STORE_SANDBOX_LOG_MAX / 1000 && l->ended_at_ms == 0);
    CHECK_STR(l->items[0].source, "agent");
    sbx_log_lines_free(l);
    int pruned = 0;
    /* Retention: what ended before 15 goes. */
    CHECK(sbx_store_log_prune(s, 15, 1 << 30, &pruned, &err) == 0 && pruned == 1);
    CHECK(sbx_store_log_get(s, "a", &l, &err) < 0 && err->code == SBX_NOT_FOUND);
    sbx_error_free(err);
    err = NULL;
    /* The total: the oldest ended logs go until the rest fits; a running one never goes. */
    CHECK(sbx_store_log_prune(s, 0, 150000, &pruned, &err) == 0 && pruned == 1);
    CHECK(sbx_store_log_get(s, "b", &l, &err) < 0);
    sbx_error_free(err);
    err = NULL;
    CHECK(sbx_store_log_get(s, "c", &l, &err) == 0 && l->n == 100 && l->ended_at_ms == 30);
    sbx_log_lines_free(l);
    CHECK(sbx_store_log_prune(s, 0, 0, &pruned, &err) == 0 && pruned == 1);
    CHECK(sbx_store_log_get(s, "d", &l, &err) == 0);
    sbx_log_lines_free(l);
    sbx_store_close(s);
}

TEST(uploads_unused_for_long_expire_and_a_probe_is_a_use)
{
    struct sbx_store *s = open_fresh();
    struct sbx_error *err = NULL;
    char old[65], used[65];
    memset(old, 'a', 64);
    memset(used, 'b', 64);
    old[64] = used[64] = '\0';
    CHECK(!sbx_store_upload_has(s, old, true)); /* a miss is no use of anything */
    CHECK(sbx_store_upload_add(s, old, 10, &err) == 0);
    CHECK(sbx_store_upload_add(s, used, 20, &err) == 0);
    struct sbx_buf expired = {0};
    /* Nothing is older than a time before both uploads. */
    CHECK(sbx_store_uploads_expire(s, 0, &expired, &err) == 0 && expired.len == 0);
    usleep(5000);
    int64_t cut = sbx_wall_ms();
    usleep(5000);
    CHECK(sbx_store_upload_has(s, used, true)); /* probed after the cut: used since */
    CHECK(sbx_store_uploads_expire(s, cut, &expired, &err) == 0);
    CHECK(expired.len == 64 && memcmp(expired.data, old, 64) == 0);
    CHECK(!sbx_store_upload_has(s, old, false) && sbx_store_upload_has(s, used, false));
    sbx_buf_fini(&expired);
    sbx_store_close(s);
}

TEST(refuses_newer_schema)
{
    struct sbx_store *s = open_fresh();
    sbx_store_close(s);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "python3 -c \"import sqlite3; c=sqlite3.connect('%s'); "
             "c.execute('UPDATE schema_version SET version=999'); c.commit()\"",
             dbpath);
    if (system(cmd) != 0) {
        fprintf(stderr, "SKIP: no python3 sqlite3\n");
        _exit(SBX_TEST_SKIP_CODE);
    }
    struct sbx_error *err = NULL;
    CHECK(sbx_store_open(dbpath, &err) == NULL);
    CHECK(err->code == SBX_FAILED_PRECONDITION);
    sbx_error_free(err);
}

TEST_MAIN(60)
