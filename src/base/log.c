#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum sbx_log_level min_level = SBX_LOG_INFO;
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
    fprintf(stderr, "%s\n", line);
}
