#include "spawner/msg.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "base/limits.h"

#define HEADER_LEN 8
#define FIELD_HDR  4

enum kind { STR, U64, I64, RANGES };

/* Which ops a field may appear in, and which need it. */
#define IN_SPAWN   (1ull << SBX_SPAWNER_SPAWN)
#define IN_DESTROY (1ull << SBX_SPAWNER_DESTROY)
#define IN_STATS   (1ull << SBX_SPAWNER_STATS)
#define IN_PAUSE   (1ull << SBX_SPAWNER_FREEZE | 1ull << SBX_SPAWNER_THAW | 1ull << SBX_SPAWNER_STOP)
#define IN_VOLUME  (1ull << SBX_SPAWNER_VOLUME_CREATE | 1ull << SBX_SPAWNER_VOLUME_DELETE)
#define IN_POLICY  (1ull << SBX_SPAWNER_NET_POLICY)
#define IN_PORTS   (1ull << SBX_SPAWNER_NET_PORTS)
#define IN_REPLY   (1ull << 0) /* bit 0 stands for SBX_SPAWNER_REPLY */
#define IN_STEP    (1ull << SBX_SPAWNER_BUILD_STEP)
#define IN_LOG     (1ull << SBX_SPAWNER_STEP_LOG)
#define IN_DEBIAN  (1ull << SBX_SPAWNER_DEBIAN_LAYER)
#define IN_SNAP    (1ull << SBX_SPAWNER_SNAPSHOT)
#define IN_IMAGE   (1ull << SBX_SPAWNER_IMAGE_LAYER)
#define IN_RUN     (IN_SPAWN | IN_STEP) /* what starts a sandbox */

struct field {
    uint8_t tag;
    enum kind kind;
    size_t off;
    size_t cap;   /* STR: buffer size (max length + 1); RANGES: max count */
    uint64_t min; /* U64/I64: bounds */
    uint64_t max;
    uint64_t allowed, required; /* by op_bit(op) */
    bool stat;                  /* a counter of a STATS reply: sets has_stats */
    size_t count_off;           /* RANGES: where the count goes */
};

#define OFF(f) offsetof(struct sbx_spawner_msg, f)
#define STR_F(t, f, a, r)                                                                          \
    {                                                                                              \
        t, STR, OFF(f), sizeof(((struct sbx_spawner_msg *)0)->f), 0, 0, a, r, false                \
    }
#define U64_F(t, f, lo, hi, a, r)                                                                  \
    {                                                                                              \
        t, U64, OFF(f), 8, lo, hi, a, r, false                                                     \
    }
#define RANGES_F(t, f, a)                                                                          \
    {                                                                                              \
        t, RANGES, OFF(f), SBX_NET_MAX_RULES, 0, 0, a, 0, false, OFF(n_##f)                        \
    }
#define STAT_F(t, f)                                                                               \
    {                                                                                              \
        t, U64, OFF(stats.f), 8, 0, UINT64_MAX, IN_REPLY, 0, true                                  \
    }

static const struct field fields[] = {
    STR_F(1, id, IN_RUN | IN_DESTROY | IN_STATS | IN_PAUSE | IN_VOLUME | IN_POLICY | IN_SNAP,
          IN_RUN | IN_DESTROY | IN_STATS | IN_PAUSE | IN_VOLUME | IN_POLICY | IN_SNAP),
    STR_F(2, template_name, IN_SPAWN, IN_SPAWN),
    U64_F(3, uid_slot, 0, SBX_MAX_SANDBOXES - 1, IN_RUN, IN_RUN),
    /* Limits: at least a few MiB of memory and a process or two, at most what a host has. */
    U64_F(4, memory_bytes, 16ull << 20, 1ull << 42, IN_RUN, IN_RUN),
    U64_F(5, pids_max, 8, 1 << 22, IN_RUN, IN_RUN),
    U64_F(6, cpu_millis, 10, 1024 * 1000, IN_RUN, IN_RUN),
    U64_F(7, disk_bytes, 16ull << 20, 16ull << 40,
          IN_SPAWN | IN_STEP | 1ull << SBX_SPAWNER_VOLUME_CREATE,
          IN_SPAWN | IN_STEP | 1ull << SBX_SPAWNER_VOLUME_CREATE),
    {8, I64, OFF(pid), 8, 0, 1 << 22, IN_REPLY, 0, false},
    U64_F(9, start_time, 0, UINT64_MAX, IN_REPLY, 0),
    U64_F(10, code, SBX_OK, SBX_UNAUTHENTICATED, IN_REPLY, IN_REPLY),
    U64_F(11, sys_errno, 0, 4095, IN_REPLY, 0),
    STR_F(12, message, IN_REPLY | IN_LOG, IN_LOG),
    STAT_F(13, cpu_usage_ns),
    STAT_F(14, memory_bytes),
    STAT_F(15, memory_cache_bytes),
    STAT_F(16, memory_limit_bytes),
    STAT_F(17, oom_kills),
    STAT_F(18, pids_current),
    STAT_F(19, disk_used_bytes),
    U64_F(40, reboot, 0, 1, IN_SPAWN, 0),
    STR_F(41, volumes, IN_SPAWN, 0),
    STAT_F(80, disk_total_bytes),
    STAT_F(81, disk_fs_used_bytes),
    RANGES_F(20, net_allow, IN_SPAWN | IN_POLICY),
    RANGES_F(21, net_deny, IN_SPAWN | IN_POLICY),
    U64_F(22, dns_port, 1, 65535, IN_PORTS, IN_PORTS),
    U64_F(23, net_flags, 0, SBX_NET_PROXY_WEB | SBX_NET_PROXY_ALL, IN_SPAWN | IN_POLICY, 0),
    U64_F(24, proxy_port, 0, 65535, IN_PORTS, 0),
    STR_F(60, layers, IN_RUN | IN_REPLY, IN_RUN),
    STR_F(61, layer_key, IN_STEP | IN_DEBIAN | IN_SNAP | IN_REPLY, IN_STEP | IN_DEBIAN | IN_SNAP),
    U64_F(62, timeout_ms, 1000, 24ull * 3600 * 1000, IN_STEP | IN_IMAGE, IN_STEP | IN_IMAGE),
    U64_F(63, exit_status, 0, 511, IN_REPLY, 0),
    U64_F(64, layer_empty, 0, 1, IN_REPLY, 0),
    U64_F(65, layers_removed, 0, UINT32_MAX, IN_REPLY, 0),
    STR_F(66, suite, IN_DEBIAN, IN_DEBIAN),
    STR_F(67, image, IN_IMAGE, IN_IMAGE),
    STR_F(68, registry_user, IN_IMAGE, 0),
    STR_F(69, registry_password, IN_IMAGE, 0),
    STR_F(70, image_digest, IN_REPLY, 0),
    STR_F(71, image_env, IN_REPLY, 0),
};
#define N_FIELDS (sizeof(fields) / sizeof(fields[0]))
_Static_assert(N_FIELDS <= 64, "the decoder's bit set of seen fields has 64 bits");

static uint64_t
op_bit(uint8_t op)
{
    return op == SBX_SPAWNER_REPLY ? IN_REPLY : 1ull << op; /* requests are ops 1 to 63 */
}

static bool
valid_op(uint8_t op)
{
    return op == SBX_SPAWNER_SPAWN || op == SBX_SPAWNER_DESTROY || op == SBX_SPAWNER_STATS ||
           op == SBX_SPAWNER_FREEZE || op == SBX_SPAWNER_THAW || op == SBX_SPAWNER_STOP ||
           op == SBX_SPAWNER_VOLUME_CREATE || op == SBX_SPAWNER_VOLUME_DELETE ||
           op == SBX_SPAWNER_NET_POLICY || op == SBX_SPAWNER_NET_PORTS ||
           op == SBX_SPAWNER_BUILD_STEP || op == SBX_SPAWNER_STEP_LOG ||
           op == SBX_SPAWNER_LAYERS_GC || op == SBX_SPAWNER_DEBIAN_LAYER ||
           op == SBX_SPAWNER_SNAPSHOT || op == SBX_SPAWNER_IMAGE_LAYER || op == SBX_SPAWNER_REPLY;
}

static void
put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t
get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Whether a field is worth sending: strings when not empty, numbers when required or set. */
static bool
is_set(const struct sbx_spawner_msg *m, const struct field *f)
{
    const char *base = (const char *)m + f->off;
    if (f->kind == STR)
        return base[0] != '\0';
    if (f->kind == RANGES)
        return *(const uint32_t *)((const char *)m + f->count_off) > 0;
    if (f->stat)
        return m->has_stats;
    uint64_t v;
    memcpy(&v, base, 8);
    return v != 0 || (f->required & op_bit(m->op));
}

ssize_t
sbx_spawner_msg_encode(const struct sbx_spawner_msg *m, void *buf, size_t cap)
{
    uint8_t *out = buf;
    if (cap < HEADER_LEN || !valid_op(m->op))
        return -1;
    out[0] = SBX_SPAWNER_MSG_VERSION;
    out[1] = m->op;
    out[2] = out[3] = 0;
    for (int i = 0; i < 4; i++)
        out[4 + i] = (uint8_t)(m->seq >> (8 * i));
    size_t n = HEADER_LEN;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const struct field *f = &fields[i];
        if (!(f->allowed & op_bit(m->op)) || !is_set(m, f))
            continue;
        const char *src = (const char *)m + f->off;
        uint32_t count =
            f->kind == RANGES ? *(const uint32_t *)((const char *)m + f->count_off) : 0;
        size_t len = f->kind == STR      ? strnlen(src, f->cap)
                     : f->kind == RANGES ? 8 * (size_t)count
                                         : 8;
        if ((len >= f->cap && f->kind == STR) || (f->kind == RANGES && count > f->cap))
            return -1;
        if (n + FIELD_HDR + len > cap)
            return -1;
        out[n] = f->tag;
        out[n + 1] = 0;
        out[n + 2] = (uint8_t)len;
        out[n + 3] = (uint8_t)(len >> 8);
        if (f->kind == STR) {
            memcpy(out + n + FIELD_HDR, src, len);
        } else if (f->kind == RANGES) {
            const struct sbx_ip4_range *r = (const struct sbx_ip4_range *)src;
            for (uint32_t k = 0; k < count; k++)
                put_u64(out + n + FIELD_HDR + 8 * k, (uint64_t)r[k].last << 32 | r[k].first);
        } else {
            uint64_t v;
            memcpy(&v, src, 8);
            put_u64(out + n + FIELD_HDR, v);
        }
        n += FIELD_HDR + len;
    }
    return (ssize_t)n;
}

static bool
charset_ok(const char *s, const char *extra)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || (extra && strchr(extra, *s))))
            return false;
    return true;
}

static int
decode_field(const struct field *f, const uint8_t *v, size_t len, struct sbx_spawner_msg *m,
             struct sbx_error **err)
{
    char *dst = (char *)m + f->off;
    if (f->kind == STR) {
        if (len == 0 || len >= f->cap || memchr(v, '\0', len) != NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u: bad string", f->tag);
        memcpy(dst, v, len);
        dst[len] = '\0';
        return 0;
    }
    if (f->kind == RANGES) {
        if (len == 0 || len % 8 != 0 || len / 8 > f->cap)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u: bad list of ranges",
                                 f->tag);
        struct sbx_ip4_range *r = (struct sbx_ip4_range *)dst;
        for (size_t i = 0; i < len / 8; i++) {
            uint64_t x = get_u64(v + 8 * i);
            r[i] = (struct sbx_ip4_range){(uint32_t)x, (uint32_t)(x >> 32)};
        }
        *(uint32_t *)((char *)m + f->count_off) = (uint32_t)(len / 8);
        /* Sorted, disjoint and not adjacent: what nftables' interval sets take as is. */
        if (!sbx_ip4_ranges_are_normal(r, len / 8))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u: ranges not normalised",
                                 f->tag);
        return 0;
    }
    if (len != 8)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u: not 8 bytes", f->tag);
    uint64_t x = get_u64(v);
    if (x < f->min || x > f->max)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u: %llu out of range", f->tag,
                             (unsigned long long)x);
    memcpy(dst, &x, 8);
    if (f->stat)
        m->has_stats = true;
    return 0;
}

/* What no single field can check: names, and the disk size the runtime accepts. */
static int
check_message(const struct sbx_spawner_msg *m, struct sbx_error **err)
{
    if (m->id[0] && (strlen(m->id) > SBX_SPAWNER_ID_MAX || !charset_ok(m->id, NULL)))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad sandbox id");
    if (m->template_name[0] && !charset_ok(m->template_name, "._-"))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad template name");
    /* Keys only (lowercase hex, whole keys): the spawner builds each layer's path from one. */
    size_t nl = strlen(m->layers);
    if (nl % SBX_LAYER_KEY_LEN != 0 || strspn(m->layers, "0123456789abcdef") != nl)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad layer keys");
    if (m->layer_key[0] && !sbx_layer_key_is_valid(m->layer_key))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad layer key");
    /* A suite goes on mmdebstrap's command line: a name, never an option or a path. */
    if (m->suite[0] && (!charset_ok(m->suite, ".-") || m->suite[0] == '-' || m->suite[0] == '.'))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad suite");
    /* An image goes on skopeo's command line, its registry into an auth file; a user name
     * with a colon would read as user and password there. */
    struct sbx_image_ref ref;
    if (m->image[0] && sbx_image_ref_archive(m->image) == NULL &&
        sbx_image_ref_parse(m->image, &ref, err) < 0)
        return -1;
    if ((m->registry_user[0] != 0) != (m->registry_password[0] != 0) ||
        strchr(m->registry_user, ':') != NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad registry credentials");
    if ((m->op == SBX_SPAWNER_SPAWN || m->op == SBX_SPAWNER_BUILD_STEP ||
         m->op == SBX_SPAWNER_VOLUME_CREATE) &&
        m->disk_bytes % 4096 != 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "disk size not a multiple of 4 KiB");
    struct sbx_spawner_volume v[SBX_SANDBOX_MAX_VOLUMES];
    size_t n;
    if (m->volumes[0] && sbx_spawner_volumes_parse(m->volumes, v, &n, err) < 0)
        return -1;
    if (m->op == SBX_SPAWNER_REPLY && m->code != SBX_OK && m->message[0] == '\0')
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "error reply without a message");
    return 0;
}

int
sbx_spawner_volumes_parse(const char *s, struct sbx_spawner_volume *out, size_t *n,
                          struct sbx_error **err)
{
    *n = 0;
    for (const char *line = s; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        const char *colon = memchr(line, ':', len);
        size_t idlen = colon ? (size_t)(colon - line) : 0;
        size_t plen = colon ? len - idlen - 1 : 0;
        if (*n == SBX_SANDBOX_MAX_VOLUMES)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "more than %d volumes",
                                 SBX_SANDBOX_MAX_VOLUMES);
        struct sbx_spawner_volume *v = &out[*n];
        if (idlen == 0 || idlen > SBX_SPAWNER_ID_MAX || plen == 0 || plen > SBX_VOLUME_PATH_MAX)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad volume line %zu", *n + 1);
        memcpy(v->id, line, idlen);
        v->id[idlen] = '\0';
        memcpy(v->path, colon + 1, plen);
        v->path[plen] = '\0';
        if (!charset_ok(v->id, NULL))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "volume %zu: bad id", *n + 1);
        (*n)++;
        line = end ? end + 1 : line + len;
    }
    const char *paths[SBX_SANDBOX_MAX_VOLUMES];
    size_t bad;
    for (size_t i = 0; i < *n; i++)
        paths[i] = out[i].path;
    const char *why = sbx_volume_paths_check(paths, *n, &bad);
    if (why)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "volume %zu: %s", bad + 1, why);
    return 0;
}

int
sbx_spawner_msg_decode(const void *buf, size_t len, struct sbx_spawner_msg *out,
                       struct sbx_error **err)
{
    const uint8_t *in = buf;
    memset(out, 0, sizeof(*out));
    if (len < HEADER_LEN || len > SBX_SPAWNER_MSG_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "message of %zu bytes", len);
    if (in[0] != SBX_SPAWNER_MSG_VERSION || in[2] != 0 || in[3] != 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "unknown message version %u", in[0]);
    if (!valid_op(in[1]))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "unknown op %u", in[1]);
    out->op = in[1];
    out->seq =
        (uint32_t)in[4] | (uint32_t)in[5] << 8 | (uint32_t)in[6] << 16 | (uint32_t)in[7] << 24;
    uint64_t bit = op_bit(out->op);
    uint64_t seen = 0; /* by index into fields[] */
    for (size_t n = HEADER_LEN; n < len;) {
        if (len - n < FIELD_HDR || in[n + 1] != 0)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "truncated field header");
        uint8_t tag = in[n];
        size_t flen = (size_t)in[n + 2] | (size_t)in[n + 3] << 8;
        n += FIELD_HDR;
        if (flen > len - n)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u overruns", tag);
        size_t i = 0;
        while (i < N_FIELDS && fields[i].tag != tag)
            i++;
        if (i == N_FIELDS || !(fields[i].allowed & bit))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u not allowed", tag);
        if (seen & (1ull << i))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u repeated", tag);
        seen |= 1ull << i;
        if (decode_field(&fields[i], in + n, flen, out, err) < 0)
            return -1;
        n += flen;
    }
    for (size_t i = 0; i < N_FIELDS; i++)
        if ((fields[i].required & bit) && !(seen & (1ull << i)))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field %u missing", fields[i].tag);
    return check_message(out, err);
}

void
sbx_spawner_reply_init(struct sbx_spawner_msg *reply, const struct sbx_spawner_msg *req,
                       const struct sbx_error *err)
{
    memset(reply, 0, sizeof(*reply));
    reply->op = SBX_SPAWNER_REPLY;
    reply->seq = req->seq;
    if (err == NULL)
        return;
    reply->code = err->code == SBX_OK ? SBX_INTERNAL : err->code;
    reply->sys_errno = err->sys_errno > 0 && err->sys_errno < 4096 ? (uint64_t)err->sys_errno : 0;
    snprintf(reply->message, sizeof(reply->message), "%s", err->msg ? err->msg : "error");
}
