/* Errors that travel up to a boundary (HTTP, Connect, CLI) and are reported once there.
 * The codes mirror the Connect protocol's codes so that the boundary maps them through one
 * table. This module never prints or logs. */
#ifndef SBX_BASE_ERROR_H
#define SBX_BASE_ERROR_H

#include <stdarg.h>

enum sbx_code {
    SBX_OK = 0,
    SBX_CANCELED,
    SBX_UNKNOWN,
    SBX_INVALID_ARGUMENT,
    SBX_DEADLINE_EXCEEDED,
    SBX_NOT_FOUND,
    SBX_ALREADY_EXISTS,
    SBX_PERMISSION_DENIED,
    SBX_RESOURCE_EXHAUSTED,
    SBX_FAILED_PRECONDITION,
    SBX_ABORTED,
    SBX_OUT_OF_RANGE,
    SBX_UNIMPLEMENTED,
    SBX_INTERNAL,
    SBX_UNAVAILABLE,
    SBX_DATA_LOSS,
    SBX_UNAUTHENTICATED,
};

struct sbx_error {
    enum sbx_code code;
    int sys_errno; /* errno of the failed system call, 0 if none */
    char *msg;
};

/* Fills *err (if err is not NULL and *err is still empty) and returns -1, so callers can
 * write `return sbx_error_set(err, ...)`. */
int sbx_error_set(struct sbx_error **err, enum sbx_code code, int sys_errno, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Same with errno appended as ": strerror(errno)" and the code derived from errno. */
int sbx_error_sys(struct sbx_error **err, int sys_errno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prepends "context: " to the message of an existing error; returns -1. */
int sbx_error_prefix(struct sbx_error **err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sbx_error_free(struct sbx_error *e);
const char *sbx_code_name(enum sbx_code code); /* Connect spelling, e.g. "not_found" */
enum sbx_code sbx_code_from_errno(int e);

static inline void
sbx_error_freep(struct sbx_error **e)
{
    sbx_error_free(*e);
}
#define _cleanup_error_ __attribute__((cleanup(sbx_error_freep)))

#endif
