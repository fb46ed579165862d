#include "base/util.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static int
fill_random(void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom((char *)p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

int
sbx_random_hex(char *out, size_t nbytes)
{
    unsigned char raw[256];
    if (nbytes > sizeof(raw) || fill_random(raw, nbytes) < 0)
        return -1;
    for (size_t i = 0; i < nbytes; i++)
        sprintf(out + 2 * i, "%02x", raw[i]);
    out[2 * nbytes] = '\0';
    return 0;
}

int
sbx_random_id(char *out, size_t n)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char raw[128];
    if (n > sizeof(raw) || fill_random(raw, n) < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        out[i] = alphabet[raw[i] % 36]; /* tiny bias is irrelevant for ids */
    out[n] = '\0';
    return 0;
}

uint64_t
sbx_now_ms(void)
{
    return sbx_now_us() / 1000;
}

uint64_t
sbx_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

int64_t
sbx_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
sbx_format_rfc3339(int64_t wall_ms, char *out, size_t outlen)
{
    time_t s = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(wall_ms % 1000));
}

int
sbx_parse_rfc3339(const char *s, int64_t *wall_ms)
{
    struct tm tm = {0};
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (p == NULL)
        return -1;
    int64_t ms = 0;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
            digits++;
            p++;
        }
        if (digits == 0)
            return -1;
        for (; digits < 3; digits++)
            ms *= 10;
    }
    int64_t offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        int hh, mm;
        if (sscanf(p + 1, "%2d:%2d", &hh, &mm) != 2)
            return -1;
        offset_s = sign * (hh * 3600 + mm * 60);
        p += 6;
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    time_t t = timegm(&tm);
    *wall_ms = ((int64_t)t - offset_s) * 1000 + ms;
    return 0;
}

bool
sbx_secret_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Constant-time in the content: every byte of the longer input is visited. */
    size_t n = alen > blen ? alen : blen;
    unsigned char diff = alen != blen;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < alen ? (unsigned char)a[i] : 0;
        unsigned char y = i < blen ? (unsigned char)b[i] : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}

void
sbx_secret_free(char *s)
{
    if (s == NULL)
        return;
    explicit_bzero(s, strlen(s));
    free(s);
}

void *
sbx_dlopen_in(const char *dir, const char *soname)
{
    /* In a sandbox, by its path in dir (the agent runtime): never searched for in the
     * template's root, whose files are the user's and must not run in the agent. */
    if (access(dir, F_OK) != 0)
        return dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/%s", dir, soname) >= (int)sizeof(path))
        abort(); /* both are the caller's constants */
    return dlopen(path, RTLD_NOW | RTLD_LOCAL);
}

bool
sbx_is_valid_id(const char *id, size_t max)
{
    size_t n = strlen(id);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

char *
sbx_memdup_str(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s == NULL)
        abort();
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

char *
sbx_vformat(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        return NULL;
    return s;
}
