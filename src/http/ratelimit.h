/* Rate limit of log lines by source, for what any client can cause at any rate (client errors):
 * the first line from a source is logged, later ones are only counted until the interval
 * ends, and each interval ends with one summary per source that had lines held back.
 *
 * Owns: a table of sources, bounded by max_sources; beyond it, sources share one entry,
 * SBX_HTTP_RATELIMIT_OTHERS, so that neither many requests nor many sources can flood the log
 * or exhaust memory. Never: clocks, I/O or logging; the caller ends intervals and logs. */
#ifndef SBX_HTTP_RATELIMIT_H
#define SBX_HTTP_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SBX_HTTP_RATELIMIT_OTHERS "others"
#define SBX_HTTP_SOURCE_MAX       48 /* bytes of a source, NUL included (an IPv6 address fits) */

struct sbx_http_ratelimit;

struct sbx_http_ratelimit *sbx_http_ratelimit_new(size_t max_sources);
void sbx_http_ratelimit_free(struct sbx_http_ratelimit *rl);
/* True if a line about source may be logged now; false if it is held back (and counted). */
bool sbx_http_ratelimit_admit(struct sbx_http_ratelimit *rl, const char *source);
/* Ends an interval: calls report for each source that had lines held back during it. Such a
 * source stays muted for the next interval too (a flood that goes on gets one summary per
 * interval and nothing else); one that had none is forgotten, so its next line is logged. */
void sbx_http_ratelimit_flush(struct sbx_http_ratelimit *rl,
                              void (*report)(void *ud, const char *source, uint64_t held),
                              void *ud);

#endif
