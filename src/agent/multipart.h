/* Streaming multipart/form-data parser (RFC 7578 over RFC 2046) for POST /files. Bytes go in
 * as they arrive; part heads and body slices come out through callbacks. Memory is bounded by
 * the limits below whatever the input: part bodies are never buffered, only the few bytes
 * that might begin a boundary. Pure: no I/O, no allocation proportional to the input. */
#ifndef SBX_AGENT_MULTIPART_H
#define SBX_AGENT_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"

#define SBX_MULTIPART_MAX_BOUNDARY 200   /* RFC 2046 allows 70; be lenient */
#define SBX_MULTIPART_MAX_HEAD     16384 /* all header lines of one part */
#define SBX_MULTIPART_SLICE        65536 /* body bytes examined per step */

struct sbx_multipart_part {
    const char *name;         /* Content-Disposition name, "" if absent */
    const char *filename;     /* filename (or decoded filename*), NULL if absent */
    size_t filename_len;      /* may contain NUL bytes: callers must check */
    const char *content_type; /* NULL if absent */
};

struct sbx_multipart_callbacks {
    /* Each returns 0, or -1 with *err set to stop the parser. */
    int (*on_part_begin)(void *ud, const struct sbx_multipart_part *part, struct sbx_error **err);
    int (*on_part_data)(void *ud, const char *data, size_t len, struct sbx_error **err);
    int (*on_part_end)(void *ud, struct sbx_error **err);
};

struct sbx_multipart;

/* The boundary parameter of a Content-Type "multipart/form-data; boundary=..." (malloc'd),
 * or NULL with *err (not multipart, no or bad boundary). */
char *sbx_multipart_boundary(const char *content_type, struct sbx_error **err);
struct sbx_multipart *sbx_multipart_new(const char *boundary,
                                        const struct sbx_multipart_callbacks *cb, void *ud);
void sbx_multipart_free(struct sbx_multipart *m);
/* Feeds bytes; -1 with *err on malformed input or a callback error (then sticky). */
int sbx_multipart_feed(struct sbx_multipart *m, const char *data, size_t len,
                       struct sbx_error **err);
/* The body ended: -1 with *err unless the closing boundary was seen. */
int sbx_multipart_finish(struct sbx_multipart *m, struct sbx_error **err);
/* Whether the closing boundary has been parsed. */
bool sbx_multipart_is_done(const struct sbx_multipart *m);

#endif
