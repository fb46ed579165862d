/* Structured one-line logs on stderr (or a sink): `ts=... level=... event=... key=value ...`.
 * Only boundaries (HTTP handlers, CLI, the daemon's lifecycle) log; lower layers return errors. */
#ifndef SBX_BASE_LOG_H
#define SBX_BASE_LOG_H

#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"

enum sbx_log_level { SBX_LOG_DEBUG, SBX_LOG_INFO, SBX_LOG_WARN, SBX_LOG_ERROR };

void sbx_log_set_level(enum sbx_log_level level);
/* Lines on stderr as logfmt (the default) or as one JSON object each (--log-format json). */
void sbx_log_set_json(bool json);
/* Sends every line (without its newline) to sink instead of stderr; NULL restores stderr. */
void sbx_log_set_sink(void (*sink)(const char *line, size_t len));
/* fmt formats the key=value tail; event is a short word such as "request". */
void sbx_log(enum sbx_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies s into dst (of cap bytes, NUL included) as the inside of a quoted value: '"' and '\\'
 * are escaped, bytes outside printable ASCII written as \xNN, and what does not fit cut off
 * with "...". For text a client chose (paths, names): a log line must stay one line, with
 * fields nobody can forge. */
void sbx_log_quote(char *dst, size_t cap, const char *s);

/* Reads the next key=value pair of a logfmt line at *p (a quoted value unescaped: \", \\,
 * \xNN); returns false at the end. key and value are cut to their capacities. */
bool sbx_logfmt_next(const char **p, char *key, size_t kcap, char *value, size_t vcap);
/* Appends line as a JSON object, its keys in order; a value that is a decimal number stays a
 * number when numbers is set, else every value is a string. -1 when out of memory. */
int sbx_logfmt_to_json(const char *line, bool numbers, struct sbx_buf *out);

#define sbx_log_info(ev, ...)  sbx_log(SBX_LOG_INFO, ev, __VA_ARGS__)
#define sbx_log_warn(ev, ...)  sbx_log(SBX_LOG_WARN, ev, __VA_ARGS__)
#define sbx_log_error(ev, ...) sbx_log(SBX_LOG_ERROR, ev, __VA_ARGS__)
#define sbx_log_debug(ev, ...) sbx_log(SBX_LOG_DEBUG, ev, __VA_ARGS__)

#endif
