/* Growable byte buffer with a hard cap; sizes are checked before allocating. */
#ifndef SBX_BASE_BUF_H
#define SBX_BASE_BUF_H

#include <stddef.h>

struct sbx_buf {
    char *data;
    size_t len;
    size_t cap;
};

/* Appends n bytes; returns -1 (buffer unchanged) if the result would exceed max. */
int sbx_buf_append(struct sbx_buf *b, const void *p, size_t n, size_t max);
int sbx_buf_printf(struct sbx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void sbx_buf_consume(struct sbx_buf *b, size_t n);
void sbx_buf_fini(struct sbx_buf *b);

#endif
