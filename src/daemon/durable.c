/* Group commit for the front end. A commit that starts or ends a sandbox's life or changes
 * its network rules is written on the event loop but fsynced on libuv's thread pool
 * (sbx_store_defer_sync): the loop keeps serving every other client while the disk works,
 * and one fsync covers every such commit made before it began. What a client is told waits
 * for the fsync, so an answered create, kill or rule change survives a power cut as before. */
#include <stdlib.h>

#include "base/log.h"
#include "daemon/internal.h"
#include "store/store.h"

struct waiter {
    uint64_t upto; /* durable once this many deferred commits are */
    void (*cb)(void *ud);
    void *ud;
    struct waiter *next;
};

static struct {
    uint64_t synced;  /* deferred commits known durable */
    uint64_t syncing; /* those the fsync in flight covers; 0: none in flight or due */
    struct waiter *head, **tail;
    uv_work_t work;
    int rc;
    uv_timer_t soon; /* starts the next fsync once this loop pass has made its commits */
    bool soon_armed;
} dur = {.tail = &dur.head};

static void sync_start(void);

static void
sync_work(uv_work_t *req)
{
    (void)req;
    dur.rc = sbx_store_sync(sbx_daemon->store);
}

static void
sync_done(uv_work_t *req, int status)
{
    (void)req;
    if (status < 0 || dur.rc < 0)
        /* Nothing better to do than say so: the write itself is in the page cache, and the
         * next fsync, or the kernel's writeback, tries again. */
        sbx_log_error("store_sync", "error=\"%s\"", uv_strerror(status < 0 ? status : dur.rc));
    dur.synced = dur.syncing;
    dur.syncing = 0;
    /* Taken off the list first: a callback may add waiters. */
    struct waiter *ready = NULL, **ready_tail = &ready, **keep = &dur.head;
    while (*keep) {
        struct waiter *w = *keep;
        if (w->upto <= dur.synced) {
            *keep = w->next;
            w->next = NULL;
            *ready_tail = w;
            ready_tail = &w->next;
        } else {
            keep = &w->next;
        }
    }
    dur.tail = keep;
    if (dur.head)
        sync_start();
    while (ready) {
        struct waiter *w = ready;
        ready = w->next;
        w->cb(w->ud);
        free(w);
    }
}

static void
sync_now(uv_timer_t *t)
{
    (void)t;
    dur.syncing = sbx_store_deferred(sbx_daemon->store);
    uv_queue_work(sbx_daemon->loop, &dur.work, sync_work, sync_done);
}

/* Not at once: a timer of 0 runs after every callback of this pass, so the creates and kills
 * that one pass of the loop writes share an fsync. */
static void
sync_start(void)
{
    if (!dur.soon_armed) {
        uv_timer_init(sbx_daemon->loop, &dur.soon);
        dur.soon_armed = true;
    }
    dur.syncing = UINT64_MAX; /* in flight, from now on */
    uv_timer_start(&dur.soon, sync_now, 0, 0);
}

uint64_t
sbx_durable_mark(void)
{
    return sbx_store_deferred(sbx_daemon->store);
}

void
sbx_durable(uint64_t upto, void (*cb)(void *ud), void *ud)
{
    if (upto <= dur.synced) {
        cb(ud);
        return;
    }
    struct waiter *w = malloc(sizeof(*w));
    if (w == NULL)
        abort();
    *w = (struct waiter){.upto = upto, .cb = cb, .ud = ud};
    *dur.tail = w;
    dur.tail = &w->next;
    /* One in flight covers this commit only if it began after it: when it ends, the commits
     * it does not cover start the next. */
    if (dur.syncing == 0)
        sync_start();
}
