/* Group commit of sandbox creates, kills and network rule changes (src/daemon/durable.c), on a real
 * SQLite store and a real libuv loop. This binary is linked with --wrap=sbx_store_sync: every fsync
 * is counted, and a test may hold one back (it runs on libuv's thread pool) to see what waits for
 * it. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/internal.h"
#include "harness.h"
#include "store/store.h"

int __real_sbx_store_sync(const struct sbx_store *s);
int __wrap_sbx_store_sync(const struct sbx_store *s);

static atomic_int syncs;
static bool hold; /* each fsync waits for a byte on gate[0] */
static int gate[2];

int
__wrap_sbx_store_sync(const struct sbx_store *s)
{
    atomic_fetch_add(&syncs, 1);
    char c;
    if (hold && read(gate[0], &c, 1) != 1)
        return -EIO;
    return __real_sbx_store_sync(s);
}

static struct sbx_daemon d;

/* A daemon's store with deferred syncing, and its loop. */
static void
setup(void)
{
    char db[128];
    snprintf(db, sizeof(db), "%s/sbx.db", sbx_test_dir);
    struct sbx_error *err = NULL;
    d.store = sbx_store_open(db, &err);
    CHECK(d.store != NULL);
    CHECK(sbx_store_defer_sync(d.store, &err) == 0);
    d.loop = uv_default_loop();
    sbx_daemon = &d;
    CHECK(pipe(gate) == 0);
}

static void
teardown(void)
{
    sbx_store_close(d.store);
}

/* A sandbox's row, as the front end writes it at a create. */
static uint64_t
create(int n)
{
    struct sbx_sandbox_rec r = {0};
    snprintf(r.id, sizeof(r.id), "sb%d", n);
    r.template_id = "base";
    r.state = "running";
    r.uid_slot = n;
    struct sbx_error *err = NULL;
    CHECK(sbx_store_sandbox_insert(d.store, &r, &err) == 0);
    return sbx_durable_mark();
}

static int told[16], n_told;

static void
tell(void *ud)
{
    told[n_told++] = *(int *)ud;
}

static int ids[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

TEST(one_fsync_answers_every_create_written_before_it)
{
    setup();
    for (int i = 0; i < 8; i++)
        sbx_durable(create(i), tell, &ids[i]);
    CHECK(n_told == 0); /* nobody is told before the disk has it */
    uv_run(d.loop, UV_RUN_DEFAULT);
    CHECK(n_told == 8);
    for (int i = 0; i < 8; i++)
        CHECK(told[i] == i); /* in the order they asked */
    CHECK(atomic_load(&syncs) == 1);

    /* Durable already: told at once, no fsync. */
    sbx_durable(sbx_durable_mark(), tell, &ids[8]);
    CHECK(n_told == 9 && atomic_load(&syncs) == 1);
    teardown();
}

TEST(a_write_after_an_fsync_began_waits_for_the_next)
{
    setup();
    hold = true;
    sbx_durable(create(0), tell, &ids[0]);
    while (atomic_load(&syncs) < 1) /* the first fsync has begun, and waits at the gate */
        uv_run(d.loop, UV_RUN_NOWAIT);
    sbx_durable(create(1), tell, &ids[1]);
    CHECK(write(gate[1], "x", 1) == 1);
    while (n_told == 0)
        uv_run(d.loop, UV_RUN_ONCE);
    CHECK(n_told == 1 && told[0] == 0); /* the second create is not covered by the first */
    while (atomic_load(&syncs) < 2)     /* it has the next fsync */
        uv_run(d.loop, UV_RUN_NOWAIT);
    CHECK(n_told == 1);
    CHECK(write(gate[1], "x", 1) == 1);
    uv_run(d.loop, UV_RUN_DEFAULT);
    CHECK(n_told == 2 && told[1] == 1);

    /* A kill is the same: its answer waits for its delete to be on disk. */
    struct sbx_error *err = NULL;
    CHECK(sbx_store_sandbox_delete(d.store, "sb0", &err) == 0);
    sbx_durable(sbx_durable_mark(), tell, &ids[2]);
    CHECK(n_told == 2);
    CHECK(write(gate[1], "x", 1) == 1);
    uv_run(d.loop, UV_RUN_DEFAULT);
    CHECK(n_told == 3 && atomic_load(&syncs) == 3);

    /* So is a change of network rules: written without a wait, answered once on disk. */
    uint64_t before = sbx_durable_mark();
    CHECK(sbx_store_sandbox_update_network(d.store, "sb1", false, "{\"deny_out\":[\"0.0.0.0/0\"]}",
                                           &err) == 0);
    CHECK(sbx_durable_mark() == before + 1);
    sbx_durable(sbx_durable_mark(), tell, &ids[3]);
    CHECK(n_told == 3);
    CHECK(write(gate[1], "x", 1) == 1);
    uv_run(d.loop, UV_RUN_DEFAULT);
    CHECK(n_told == 4 && atomic_load(&syncs) == 4);
    teardown();
}

TEST_MAIN(30)
