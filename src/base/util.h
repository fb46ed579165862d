/* Small helpers shared by every layer: randomness, clocks, time formatting, constant-time
 * comparison. */
#ifndef SBX_BASE_UTIL_H
#define SBX_BASE_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Fills out with 2*nbytes lowercase hex digits from getrandom(2) and a NUL. */
int sbx_random_hex(char *out, size_t nbytes);
/* Lowercase alphanumeric id of length n (NUL-terminated, out has n+1 bytes). */
int sbx_random_id(char *out, size_t n);
uint64_t sbx_now_ms(void); /* CLOCK_MONOTONIC */
uint64_t sbx_now_us(void);
int64_t sbx_wall_ms(void); /* CLOCK_REALTIME, ms since the epoch */
/* RFC 3339 with milliseconds in UTC, e.g. 2026-11-26T13:45:53.123Z. out >= 32 bytes. */
void sbx_format_rfc3339(int64_t wall_ms, char *out, size_t outlen);
/* Parses RFC 3339 (any offset, optional fraction); returns -1 on junk. */
int sbx_parse_rfc3339(const char *s, int64_t *wall_ms);
/* vasprintf into a malloc'd string; NULL when out of memory (vasprintf itself leaves the
 * pointer undefined then). */
char *sbx_vformat(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
/* The n bytes at p and a NUL, malloc'd (aborts when out of memory). Unlike strndup, p need not
 * be NUL-terminated: nothing past p[n - 1] is read. */
char *sbx_memdup_str(const void *p, size_t n);
/* True for 1 to max characters of [A-Za-z0-9_-]: safe in a URL path, a header value and a
 * file name. */
bool sbx_is_valid_id(const char *id, size_t max);
/* Compares in time that depends only on the lengths, never on where they differ. */
bool sbx_secret_equal(const char *a, size_t alen, const char *b, size_t blen);
/* Overwrites then frees a secret string. */
void sbx_secret_free(char *s);
/* dlopen(3), RTLD_NOW | RTLD_LOCAL, of dir/soname when dir exists; elsewhere (unit tests,
 * outside a sandbox) of soname, searched for by the loader. NULL on failure: see dlerror(). */
void *sbx_dlopen_in(const char *dir, const char *soname);

#endif
