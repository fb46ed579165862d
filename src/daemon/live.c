/* The table of running sandboxes: the list that expiry and shutdown walk, an index by id for
 * routing, and the order in which secure sandboxes were last used, which bounds the search
 * for the sandbox of a presigned URL that names none (signed.c). A lookup by id or a use costs
 * the same whatever the number of sandboxes. Memory only: lifecycle.c rebuilds it from the
 * store at start; nothing here touches a sandbox or the store. */
#include <stdint.h>
#include <string.h>

#include "daemon/internal.h"

_Static_assert((SBX_DAEMON_ID_BUCKETS & (SBX_DAEMON_ID_BUCKETS - 1)) == 0 &&
                   SBX_DAEMON_ID_BUCKETS >= SBX_MAX_SANDBOXES,
               "id buckets: a power of two, at least one per sandbox");

static size_t
bucket_of(const char *id)
{
    /* FNV-1a. The ids are random and made here: no client can crowd a bucket. */
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h & (SBX_DAEMON_ID_BUCKETS - 1);
}

static void
recent_unlink(struct sbx_daemon *d, struct sbx_live *l)
{
    if (l->recent_prev)
        l->recent_prev->recent_next = l->recent_next;
    else if (d->recent == l)
        d->recent = l->recent_next;
    if (l->recent_next)
        l->recent_next->recent_prev = l->recent_prev;
    l->recent_prev = l->recent_next = NULL;
}

void
sbx_live_insert(struct sbx_daemon *d, struct sbx_live *l)
{
    l->next = d->live;
    d->live = l;
    struct sbx_live **b = &d->by_id[bucket_of(l->rec->id)];
    l->id_next = *b;
    *b = l;
    sbx_live_touch(d, l);
}

void
sbx_live_remove(struct sbx_daemon *d, struct sbx_live *l)
{
    struct sbx_live **pp = &d->live;
    while (*pp && *pp != l)
        pp = &(*pp)->next;
    if (*pp)
        *pp = l->next;
    pp = &d->by_id[bucket_of(l->rec->id)];
    while (*pp && *pp != l)
        pp = &(*pp)->id_next;
    if (*pp)
        *pp = l->id_next;
    recent_unlink(d, l);
}

struct sbx_live *
sbx_live_find(struct sbx_daemon *d, const char *id)
{
    for (struct sbx_live *l = d->by_id[bucket_of(id)]; l; l = l->id_next)
        if (strcmp(l->rec->id, id) == 0)
            return l;
    return NULL;
}

void
sbx_live_touch(struct sbx_daemon *d, struct sbx_live *l)
{
    /* Without a token a sandbox has no presigned URLs to be found by. */
    if (l->rec->access_token == NULL || d->recent == l)
        return;
    recent_unlink(d, l);
    l->recent_next = d->recent;
    if (d->recent)
        d->recent->recent_prev = l;
    d->recent = l;
}

struct sbx_live *
sbx_live_by_addr(struct sbx_daemon *d, uint32_t a)
{
    int slot = d->cfg.net_on ? sbx_netplan_slot(&d->cfg.net.plan, a) : -1;
    return slot >= 0 ? d->by_slot[slot] : NULL;
}
