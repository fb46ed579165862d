/* The agent's own log: the newest SBX_AGENT_LOG_BYTES of its log lines, kept in a ring in its
 * memory. The agent writes no host file (its stdout and stderr are /dev/null): a sandbox that
 * makes it log without end costs its own memory and CPU, never the host's disk. */
#include "agent/log_ring.h"

#include <string.h>

#include "base/limits.h"
#include "base/log.h"

static struct {
    char buf[SBX_AGENT_LOG_BYTES];
    size_t head;  /* where the next byte goes */
    bool wrapped; /* the ring has been filled at least once */
} ring;

static void
put(const char *p, size_t n)
{
    while (n > 0) {
        size_t room = sizeof(ring.buf) - ring.head;
        size_t k = n < room ? n : room;
        memcpy(ring.buf + ring.head, p, k);
        ring.head += k;
        p += k;
        n -= k;
        if (ring.head == sizeof(ring.buf)) {
            ring.head = 0;
            ring.wrapped = true;
        }
    }
}

static void
sink(const char *line, size_t len)
{
    put(line, len);
    put("\n", 1);
}

void
sbx_agent_log_init(void)
{
    sbx_log_set_sink(sink);
}

void
sbx_agent_log_reset(void)
{
    ring.head = 0;
    ring.wrapped = false;
}

void
sbx_agent_log_respond(struct sbx_http_req *req)
{
    const char *old = ring.buf + ring.head, *end = ring.buf + sizeof(ring.buf);
    size_t old_len = ring.wrapped ? (size_t)(end - old) : 0;
    /* The oldest line was partly overwritten: start at the first whole one. */
    const char *nl = old_len ? memchr(old, '\n', old_len) : NULL;
    if (nl) {
        old_len -= (size_t)(nl + 1 - old);
        old = nl + 1;
    }
    sbx_http_start(req, 200, "text/plain; charset=utf-8");
    if (old_len)
        sbx_http_write(req, old, old_len);
    if (ring.head)
        sbx_http_write(req, ring.buf, ring.head);
    sbx_http_end(req);
}
