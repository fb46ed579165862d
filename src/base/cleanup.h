/* Scope-bound cleanup: build with guarded locals, commit by stealing (bubblewrap's
 * steal_pointer idiom). */
#ifndef SBX_BASE_CLEANUP_H
#define SBX_BASE_CLEANUP_H

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static inline void
sbx_freep(void *p)
{
    free(*(void **)p);
}

static inline void
sbx_closep(int *fd)
{
    if (*fd >= 0) {
        int saved = errno;
        close(*fd);
        errno = saved;
    }
}

static inline void *
sbx_steal_pointer(void *pp)
{
    void **p = pp;
    void *v = *p;
    *p = NULL;
    return v;
}

static inline int
sbx_steal_fd(int *fd)
{
    int v = *fd;
    *fd = -1;
    return v;
}

#define _cleanup_free_    __attribute__((cleanup(sbx_freep)))
#define _cleanup_close_   __attribute__((cleanup(sbx_closep)))
#define steal_pointer(pp) sbx_steal_pointer(pp)
#define steal_fd(fd)      sbx_steal_fd(fd)

#endif
