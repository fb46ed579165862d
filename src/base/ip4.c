#include "base/ip4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/limits.h"

#define IP(a, b, c, d)                                                                             \
    ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (uint32_t)(d))
#define NET(a, b, c, d, len)                                                                       \
    {                                                                                              \
        IP(a, b, c, d), IP(a, b, c, d) | (uint32_t)((1ull << (32 - (len))) - 1)                    \
    }

const struct sbx_ip4_range sbx_ip4_always_blocked[] = {
    NET(0, 0, 0, 0, 8),      /* "this" network */
    NET(10, 0, 0, 0, 8),     /* private (RFC 1918) */
    NET(100, 64, 0, 0, 10),  /* shared address space (carrier NAT, RFC 6598) */
    NET(127, 0, 0, 0, 8),    /* loopback */
    NET(169, 254, 0, 0, 16), /* link-local: cloud metadata (169.254.169.254) lives here */
    NET(172, 16, 0, 0, 12),  /* private */
    NET(192, 0, 0, 0, 24),   /* IETF protocol assignments */
    NET(192, 168, 0, 0, 16), /* private */
    NET(224, 0, 0, 0, 3),    /* multicast, reserved and broadcast (224/4 and 240/4) */
};
const size_t sbx_ip4_n_always_blocked =
    sizeof(sbx_ip4_always_blocked) / sizeof(sbx_ip4_always_blocked[0]);

const struct sbx_ip4_range sbx_ip4_openable[] = {
    NET(10, 0, 0, 0, 8),
    NET(100, 64, 0, 0, 10),
    NET(172, 16, 0, 0, 12),
    NET(192, 168, 0, 0, 16),
};
const size_t sbx_ip4_n_openable = sizeof(sbx_ip4_openable) / sizeof(sbx_ip4_openable[0]);

bool
sbx_ip4_parse(const char *s, uint32_t *out)
{
    uint32_t a = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0 && *s++ != '.')
            return false;
        if (*s < '0' || *s > '9')
            return false;
        unsigned v = 0;
        int digits = 0;
        /* No leading zeros: "010" reads as octal to inet_aton and as decimal to others. */
        if (s[0] == '0' && s[1] >= '0' && s[1] <= '9')
            return false;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            v = v * 10 + (unsigned)(*s++ - '0');
            digits++;
        }
        if (v > 255)
            return false;
        a = a << 8 | v;
    }
    if (*s != '\0')
        return false;
    *out = a;
    return true;
}

void
sbx_ip4_format(uint32_t a, char out[SBX_IP4_STR_MAX])
{
    snprintf(out, SBX_IP4_STR_MAX, "%u.%u.%u.%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255,
             a & 255);
}

bool
sbx_ip4_parse_cidr(const char *s, struct sbx_ip4_range *out, int *prefix)
{
    char buf[SBX_IP4_STR_MAX];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen >= sizeof(buf))
        return false;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    uint32_t a;
    if (!sbx_ip4_parse(buf, &a))
        return false;
    int len = 32;
    if (slash) {
        const char *p = slash + 1;
        if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] != '\0') || strlen(p) > 2)
            return false;
        len = atoi(p);
        if (len > 32)
            return false;
    }
    uint32_t mask = len == 0 ? 0 : ~0u << (32 - len);
    out->first = a & mask;
    out->last = out->first | ~mask;
    if (prefix)
        *prefix = len;
    return true;
}

bool
sbx_ip6_like(const char *s)
{
    return strchr(s, ':') != NULL;
}

static int
cmp_range(const void *a, const void *b)
{
    const struct sbx_ip4_range *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

size_t
sbx_ip4_ranges_normalize(struct sbx_ip4_range *r, size_t n)
{
    if (n == 0)
        return 0;
    qsort(r, n, sizeof(*r), cmp_range);
    size_t out = 0;
    for (size_t i = 1; i < n; i++) {
        /* Overlapping or adjacent (last + 1 == first, without wrapping past the top). */
        if (r[i].first <= r[out].last ||
            (r[out].last != UINT32_MAX && r[i].first == r[out].last + 1)) {
            if (r[i].last > r[out].last)
                r[out].last = r[i].last;
        } else {
            r[++out] = r[i];
        }
    }
    return out + 1;
}

bool
sbx_ip4_ranges_are_normal(const struct sbx_ip4_range *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (r[i].first > r[i].last)
            return false;
        if (i > 0 && (r[i - 1].last == UINT32_MAX || r[i].first <= r[i - 1].last + 1))
            return false;
    }
    return true;
}

int
sbx_ip4_ranges_subtract(const struct sbx_ip4_range *a, size_t na, const struct sbx_ip4_range *b,
                        size_t nb, struct sbx_ip4_range *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < na; i++) {
        uint64_t from = a[i].first; /* 64 bits: last + 1 may pass the top */
        for (size_t j = 0; j < nb && from <= a[i].last; j++) {
            if (b[j].last < from || b[j].first > a[i].last)
                continue;
            if (b[j].first > from) {
                if (n == cap)
                    return -1;
                out[n++] = (struct sbx_ip4_range){(uint32_t)from, b[j].first - 1};
            }
            from = (uint64_t)b[j].last + 1;
        }
        if (from <= a[i].last) {
            if (n == cap)
                return -1;
            out[n++] = (struct sbx_ip4_range){(uint32_t)from, a[i].last};
        }
    }
    return (int)n;
}

bool
sbx_ip4_ranges_contain(const struct sbx_ip4_range *r, size_t n, uint32_t a)
{
    return sbx_ip4_ranges_overlap(r, n, (struct sbx_ip4_range){a, a});
}

bool
sbx_ip4_ranges_overlap(const struct sbx_ip4_range *r, size_t n, struct sbx_ip4_range x)
{
    for (size_t i = 0; i < n; i++)
        if (r[i].first <= x.last && x.first <= r[i].last)
            return true;
    return false;
}

bool
sbx_netplan_parse(const char *cidr, struct sbx_netplan *out)
{
    struct sbx_ip4_range r;
    int len;
    if (!sbx_ip4_parse_cidr(cidr, &r, &len) || len < 8 || len > SBX_NETPLAN_MAX_PREFIX)
        return false;
    out->base = r.first;
    out->prefix = len;
    return true;
}

uint32_t
sbx_netplan_gateway(const struct sbx_netplan *p)
{
    return p->base + 1;
}

uint32_t
sbx_netplan_sandbox(const struct sbx_netplan *p, int slot)
{
    return p->base + 256 + (uint32_t)slot;
}

int
sbx_netplan_slot(const struct sbx_netplan *p, uint32_t a)
{
    if (a < p->base + 256 || a - p->base - 256 >= SBX_MAX_SANDBOXES)
        return -1;
    return (int)(a - p->base - 256);
}

struct sbx_ip4_range
sbx_netplan_range(const struct sbx_netplan *p)
{
    return (struct sbx_ip4_range){p->base, p->base | (uint32_t)((1ull << (32 - p->prefix)) - 1)};
}
