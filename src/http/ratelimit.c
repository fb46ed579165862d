/* Rate limit of log lines by source: see ratelimit.h.
 *
 * The table is open addressing with linear probing, grown by doubling while it holds fewer
 * than max_sources, and rebuilt at each flush with only the sources still muted, so it also
 * shrinks when a flood ends. A source in the table is muted: its first line was logged when it
 * was added. */
#include "http/ratelimit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    char source[SBX_HTTP_SOURCE_MAX]; /* "" marks a free slot */
    uint64_t held;
};

struct sbx_http_ratelimit {
    size_t max_sources;
    size_t n, cap; /* cap is 0 or a power of two, at least twice n */
    struct entry *slots;
    bool others_muted;
    uint64_t others_held;
};

struct sbx_http_ratelimit *
sbx_http_ratelimit_new(size_t max_sources)
{
    struct sbx_http_ratelimit *rl = calloc(1, sizeof(*rl));
    if (rl)
        rl->max_sources = max_sources;
    return rl;
}

void
sbx_http_ratelimit_free(struct sbx_http_ratelimit *rl)
{
    if (rl == NULL)
        return;
    free(rl->slots);
    free(rl);
}

/* FNV-1a. */
static size_t
hash(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

/* The slot of source, or the free slot where it would go. */
static struct entry *
slot_of(struct entry *slots, size_t cap, const char *source)
{
    size_t i = hash(source) & (cap - 1);
    while (slots[i].source[0] != '\0' && strcmp(slots[i].source, source) != 0)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

/* Moves the entries into a table of cap slots: all of them, to grow it, or at a flush (report
 * set) only those with lines held back, after reporting them and clearing their counts. */
static int
rebuild(struct sbx_http_ratelimit *rl, size_t cap,
        void (*report)(void *ud, const char *source, uint64_t held), void *ud)
{
    struct entry *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < rl->cap; i++) {
        struct entry *e = &rl->slots[i];
        if (e->source[0] == '\0' || (report && e->held == 0))
            continue;
        if (report) {
            report(ud, e->source, e->held);
            e->held = 0;
        }
        *slot_of(slots, cap, e->source) = *e;
        n++;
    }
    free(rl->slots);
    rl->slots = slots;
    rl->cap = cap;
    rl->n = n;
    return 0;
}

/* Sources beyond the table (or beyond memory) share one entry. */
static bool
admit_others(struct sbx_http_ratelimit *rl)
{
    if (!rl->others_muted) {
        rl->others_muted = true;
        return true;
    }
    rl->others_held++;
    return false;
}

bool
sbx_http_ratelimit_admit(struct sbx_http_ratelimit *rl, const char *source)
{
    char key[SBX_HTTP_SOURCE_MAX];
    snprintf(key, sizeof(key), "%s", source);
    if (rl->cap > 0) {
        struct entry *e = slot_of(rl->slots, rl->cap, key);
        if (e->source[0] != '\0') {
            e->held++;
            return false;
        }
    }
    if (key[0] == '\0' || rl->n >= rl->max_sources)
        return admit_others(rl);
    if (2 * (rl->n + 1) > rl->cap && rebuild(rl, rl->cap ? 2 * rl->cap : 16, NULL, NULL) < 0)
        return admit_others(rl);
    memcpy(slot_of(rl->slots, rl->cap, key)->source, key, sizeof(key));
    rl->n++;
    return true;
}

void
sbx_http_ratelimit_flush(struct sbx_http_ratelimit *rl,
                         void (*report)(void *ud, const char *source, uint64_t held), void *ud)
{
    size_t kept = 0;
    for (size_t i = 0; i < rl->cap; i++)
        kept += rl->slots[i].source[0] != '\0' && rl->slots[i].held > 0;
    size_t cap = 16;
    while (cap < 2 * kept)
        cap *= 2;
    if (kept == 0 || rebuild(rl, cap, report, ud) < 0) {
        /* Nothing to keep (or no memory to keep it in): forget every source. */
        free(rl->slots);
        rl->slots = NULL;
        rl->cap = rl->n = 0;
    }
    if (rl->others_held > 0)
        report(ud, SBX_HTTP_RATELIMIT_OTHERS, rl->others_held);
    rl->others_muted = rl->others_held > 0;
    rl->others_held = 0;
}
