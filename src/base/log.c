#include "base/log.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum sbx_log_level min_level = SBX_LOG_INFO;
static bool json_lines;

void
sbx_log_set_json(bool json)
{
    json_lines = json;
}

bool
sbx_logfmt_next(const char **pp, char *key, size_t kcap, char *value, size_t vcap)
{
    const char *p = *pp;
    while (*p == ' ')
        p++;
    if (*p == '\0')
        return false;
    size_t k = 0, v = 0;
    while (*p && *p != '=' && *p != ' ') {
        if (k + 1 < kcap)
            key[k++] = *p;
        p++;
    }
    key[k] = '\0';
    if (*p == '=' && *++p == '"') {
        for (p++; *p && *p != '"'; p++) {
            char c = *p;
            if (c == '\\' && p[1] == 'x' && p[2] && p[3]) {
                char hex[3] = {p[2], p[3], 0};
                c = (char)strtol(hex, NULL, 16);
                p += 3;
            } else if (c == '\\' && p[1]) {
                c = *++p;
            }
            if (v + 1 < vcap)
                value[v++] = c;
        }
        if (*p == '"')
            p++;
    } else {
        for (; *p && *p != ' '; p++)
            if (v + 1 < vcap)
                value[v++] = *p;
    }
    value[v] = '\0';
    *pp = p;
    return true;
}

static int
json_string_append(struct sbx_buf *out, const char *s)
{
    int bad = sbx_buf_append(out, "\"", 1, SIZE_MAX);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            bad |= sbx_buf_printf(out, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            bad |= sbx_buf_printf(out, "\\u%04x", *p);
        else
            bad |= sbx_buf_append(out, p, 1, SIZE_MAX);
    }
    return bad | sbx_buf_append(out, "\"", 1, SIZE_MAX);
}

static bool
is_number(const char *s)
{
    const char *p = s + (*s == '-');
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9'))
        return false;
    while (*p >= '0' && *p <= '9')
        p++;
    if (*p == '.' && p[1] >= '0' && p[1] <= '9')
        for (p++; *p >= '0' && *p <= '9'; p++)
            ;
    return *p == '\0' && p - s < 16;
}

int
sbx_logfmt_to_json(const char *line, bool numbers, struct sbx_buf *out)
{
    char key[128], value[2048];
    int bad = sbx_buf_append(out, "{", 1, SIZE_MAX);
    bool first = true;
    while (sbx_logfmt_next(&line, key, sizeof(key), value, sizeof(value))) {
        if (!first)
            bad |= sbx_buf_append(out, ",", 1, SIZE_MAX);
        first = false;
        bad |= json_string_append(out, key);
        bad |= sbx_buf_append(out, ":", 1, SIZE_MAX);
        if (numbers && is_number(value))
            bad |= sbx_buf_append(out, value, strlen(value), SIZE_MAX);
        else
            bad |= json_string_append(out, value);
    }
    return bad | sbx_buf_append(out, "}", 1, SIZE_MAX);
}
static void (*log_sink)(const char *line, size_t len);

void
sbx_log_set_sink(void (*sink)(const char *line, size_t len))
{
    log_sink = sink;
}

void
sbx_log_set_level(enum sbx_log_level level)
{
    min_level = level;
}

void
sbx_log_quote(char *dst, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char esc[5];
        int n = ch == '"' || ch == '\\'  ? snprintf(esc, sizeof(esc), "\\%c", ch)
                : ch < 0x20 || ch > 0x7e ? snprintf(esc, sizeof(esc), "\\x%02x", ch)
                                         : snprintf(esc, sizeof(esc), "%c", ch);
        if (o + (size_t)n + 4 > cap) { /* room for "..." and the NUL */
            snprintf(dst + o, cap - o, "...");
            return;
        }
        memcpy(dst + o, esc, (size_t)n);
        o += (size_t)n;
    }
    dst[o] = '\0';
}

void
sbx_log(enum sbx_log_level level, const char *event, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (level < min_level)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[2048];
    int n =
        snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000, names[level], event);
    if (n < 0 || (size_t)n >= sizeof(line))
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    if (log_sink) {
        size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
        log_sink(line, len < sizeof(line) ? len : sizeof(line) - 1);
        return;
    }
    /* One write per line so lines from different processes do not interleave. */
    struct sbx_buf json = {0};
    if (json_lines && sbx_logfmt_to_json(line, true, &json) == 0)
        fprintf(stderr, "%.*s\n", (int)json.len, json.data);
    else
        fprintf(stderr, "%s\n", line);
    sbx_buf_fini(&json);
}
