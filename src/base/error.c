#include "base/error.h"
#include "base/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
sbx_error_set(struct sbx_error **err, enum sbx_code code, int sys_errno, const char *fmt, ...)
{
    if (err == NULL || *err != NULL)
        return -1;
    struct sbx_error *e = calloc(1, sizeof(*e));
    if (e == NULL)
        abort();
    va_list ap;
    va_start(ap, fmt);
    e->msg = sbx_vformat(fmt, ap);
    va_end(ap);
    e->code = code;
    e->sys_errno = sys_errno;
    *err = e;
    return -1;
}

int
sbx_error_sys(struct sbx_error **err, int sys_errno, const char *fmt, ...)
{
    if (err == NULL || *err != NULL)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    char *m = sbx_vformat(fmt, ap);
    va_end(ap);
    sbx_error_set(err, sbx_code_from_errno(sys_errno), sys_errno, "%s: %s", m ? m : "",
                  strerror(sys_errno));
    free(m);
    return -1;
}

int
sbx_error_prefix(struct sbx_error **err, const char *fmt, ...)
{
    if (err == NULL || *err == NULL)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    char *p = sbx_vformat(fmt, ap);
    va_end(ap);
    char *m = NULL;
    if (asprintf(&m, "%s: %s", p ? p : "", (*err)->msg ? (*err)->msg : "") >= 0) {
        free((*err)->msg);
        (*err)->msg = m;
    }
    free(p);
    return -1;
}

void
sbx_error_free(struct sbx_error *e)
{
    if (e == NULL)
        return;
    free(e->msg);
    free(e);
}

const char *
sbx_code_name(enum sbx_code code)
{
    static const char *const names[] = {
        [SBX_OK] = "ok",
        [SBX_CANCELED] = "canceled",
        [SBX_UNKNOWN] = "unknown",
        [SBX_INVALID_ARGUMENT] = "invalid_argument",
        [SBX_DEADLINE_EXCEEDED] = "deadline_exceeded",
        [SBX_NOT_FOUND] = "not_found",
        [SBX_ALREADY_EXISTS] = "already_exists",
        [SBX_PERMISSION_DENIED] = "permission_denied",
        [SBX_RESOURCE_EXHAUSTED] = "resource_exhausted",
        [SBX_FAILED_PRECONDITION] = "failed_precondition",
        [SBX_ABORTED] = "aborted",
        [SBX_OUT_OF_RANGE] = "out_of_range",
        [SBX_UNIMPLEMENTED] = "unimplemented",
        [SBX_INTERNAL] = "internal",
        [SBX_UNAVAILABLE] = "unavailable",
        [SBX_DATA_LOSS] = "data_loss",
        [SBX_UNAUTHENTICATED] = "unauthenticated",
    };
    if ((unsigned)code >= sizeof(names) / sizeof(names[0]))
        return "unknown";
    return names[code];
}

enum sbx_code
sbx_code_from_errno(int e)
{
    switch (e) {
    case ENOENT:
    case ESRCH:
        return SBX_NOT_FOUND;
    case EEXIST:
        return SBX_ALREADY_EXISTS;
    case EACCES:
    case EPERM:
    case EROFS:
        return SBX_PERMISSION_DENIED;
    case EINVAL:
    case ENAMETOOLONG:
    case ENOTDIR:
    case EISDIR:
    case ELOOP:
        return SBX_INVALID_ARGUMENT;
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EAGAIN:
        return SBX_RESOURCE_EXHAUSTED;
    case ETIMEDOUT:
        return SBX_DEADLINE_EXCEEDED;
    default:
        return SBX_INTERNAL;
    }
}
