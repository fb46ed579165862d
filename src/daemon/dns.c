/* The sandboxes' DNS forwarder. A sandbox's resolver is the gateway (its /etc/resolv.conf);
 * the spawner's nftables table sends what reaches port 53 there to this socket, which the
 * front end binds on the gateway's address. Queries go on to the host's own resolvers (from
 * the host's /etc/resolv.conf), so names resolve in sandboxes whatever the host uses, a
 * resolver on a loopback address (systemd-resolved, dnsmasq) included, which a sandbox could
 * not reach itself.
 *
 * The sender of a query is named by its address (spoofing is dropped at the host's edge), so
 * DNS follows the sandbox's rules: a sandbox whose egress is denied to everything gets
 * REFUSED for every name but those its allowOut names: DNS is a channel out too (a query for
 * <secret>.attacker.example carries data without any connection).
 * A template build's step (a sandbox of a build's slot, builder.c) has no rules: its queries
 * are forwarded as they come.
 *
 * UDP only: nftables sends TCP queries here too, and they are refused; sandboxes ask with EDNS
 * (their resolv.conf), so answers of a few KiB fit one datagram.
 *
 * Bounds: a query and an answer are at most one UDP datagram of DNS_MAX bytes; at most
 * DNS_PENDING queries wait for an answer (DNS_PER_SANDBOX per sandbox), each at most
 * DNS_TIMEOUT_MS. An answer is relayed only from the resolver the query went to, with the
 * query's random id and its question. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "daemon/builder.h"
#include "daemon/internal.h"

#define DNS_MAX           4096
#define DNS_PENDING       4096 /* a power of two */
#define DNS_PER_SANDBOX   64
#define DNS_TIMEOUT_MS    5000
#define DNS_RESOLVERS     3
#define DNS_HEADER        12
#define DNS_RCODE_REFUSED 5

struct pending {
    bool used;
    uint16_t id;      /* ours, towards the resolver */
    uint16_t orig_id; /* the sandbox's */
    int slot;
    int resolver;
    uint64_t question; /* a hash of the question section */
    uint64_t deadline_ms;
    struct sockaddr_in client;
};

static struct {
    struct sbx_daemon *d;
    uv_udp_t down; /* on the gateway */
    uv_udp_t up4, up6;
    bool has_up6;
    struct sockaddr_storage resolvers[DNS_RESOLVERS];
    int n_resolvers;
    uint16_t port;
    struct pending pending[DNS_PENDING];
    int per_slot[SBX_MAX_SANDBOXES];
    uv_timer_t sweep;
} dns;

uint16_t
sbx_dns_port(void)
{
    return dns.port;
}

/* The question section of a message: its end, or 0 if it is not exactly one question with
 * an uncompressed name. name gets the name, lowercased, dotted, without the root's dot. */
static size_t
parse_question(const uint8_t *m, size_t len, char name[256])
{
    if (len < DNS_HEADER || m[4] != 0 || m[5] != 1)
        return 0;
    size_t p = DNS_HEADER, n = 0;
    for (;;) {
        if (p >= len)
            return 0;
        uint8_t l = m[p++];
        if (l == 0)
            break;
        if (l > 63 || p + l > len || n + l + 1 > 255)
            return 0; /* a compression pointer, or too long */
        if (n)
            name[n++] = '.';
        for (uint8_t i = 0; i < l; i++) {
            char c = (char)m[p + i];
            name[n++] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
        }
        p += l;
    }
    name[n] = '\0';
    return p + 4 <= len ? p + 4 : 0; /* type and class */
}

static uint64_t
hash(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)(p[i] | (p[i] >= 'A' && p[i] <= 'Z' ? 0x20 : 0))) * 1099511628211ull;
    return h;
}

static void
send_down(const uint8_t *m, size_t len, const struct sockaddr_in *to)
{
    uv_buf_t b = uv_buf_init((char *)m, (unsigned)len);
    /* Best effort, never queued: a sandbox that floods us loses its own answers. */
    uv_udp_try_send(&dns.down, &b, 1, (const struct sockaddr *)to);
}

static void
refuse(const uint8_t *q, size_t qend, const struct sockaddr_in *to)
{
    uint8_t r[DNS_MAX];
    memcpy(r, q, qend);
    r[2] = (uint8_t)(0x80 | (q[2] & 0x79)); /* QR; the opcode and RD of the query */
    r[3] = 0x80 | DNS_RCODE_REFUSED;        /* RA */
    memset(r + 6, 0, 6);                    /* no answer, authority or additional records */
    send_down(r, qend, to);
}

static void
forget(struct pending *p)
{
    p->used = false;
    dns.per_slot[p->slot]--;
}

static struct pending *
new_pending(uint16_t *id)
{
    for (int tries = 0; tries < 16; tries++) {
        if (getrandom(id, sizeof(*id), 0) != sizeof(*id))
            return NULL;
        struct pending *p = &dns.pending[*id & (DNS_PENDING - 1)];
        if (!p->used)
            return p;
    }
    return NULL; /* full: the sandbox retries */
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[DNS_MAX];
    *buf = uv_buf_init(slab, sizeof(slab));
}

/* The uid slot whose address a query came from, or -1. A build step's sandbox has a slot's
 * address too (the top slots, builder.c), without a live sandbox: it has no egress rules. */
static int
client_slot(const struct sockaddr_in *client)
{
    const struct sbx_daemon_config *c = &dns.d->cfg;
    return c->net_on ? sbx_netplan_slot(&c->net.plan, ntohl(client->sin_addr.s_addr)) : -1;
}

static void
on_query(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from, unsigned flags)
{
    if (n <= 0 || from == NULL || from->sa_family != AF_INET || (flags & UV_UDP_PARTIAL))
        return;
    const struct sockaddr_in *client = (const struct sockaddr_in *)from;
    int slot = client_slot(client);
    struct sbx_live *l = slot >= 0 ? dns.d->by_slot[slot] : NULL;
    const uint8_t *q = (const uint8_t *)buf->base;
    char name[256];
    size_t qend = parse_question(q, (size_t)n, name);
    if (slot < 0 || (l ? l->dying : !sbx_builder_has_slot(slot)) || qend == 0 || (q[2] & 0x80))
        return; /* not a sandbox (or a build step) of ours, or not a query */
    if (l && l->net->deny_all && !sbx_netset_name_allowed(l->net, name)) {
        refuse(q, qend, client);
        return;
    }
    uint16_t id;
    struct pending *p = dns.per_slot[slot] < DNS_PER_SANDBOX ? new_pending(&id) : NULL;
    if (p == NULL || dns.n_resolvers == 0)
        return;
    *p = (struct pending){.used = true,
                          .id = id,
                          .orig_id = (uint16_t)(q[0] << 8 | q[1]),
                          .slot = slot,
                          .resolver = (int)(id % dns.n_resolvers),
                          .question = hash(q + DNS_HEADER, qend - DNS_HEADER),
                          .deadline_ms = sbx_now_ms() + DNS_TIMEOUT_MS,
                          .client = *client};
    dns.per_slot[slot]++;
    uint8_t out[DNS_MAX];
    memcpy(out, q, (size_t)n);
    out[0] = (uint8_t)(id >> 8);
    out[1] = (uint8_t)id;
    const struct sockaddr *to = (const struct sockaddr *)&dns.resolvers[p->resolver];
    uv_buf_t b = uv_buf_init((char *)out, (unsigned)n);
    if (uv_udp_try_send(to->sa_family == AF_INET6 ? &dns.up6 : &dns.up4, &b, 1, to) < 0)
        forget(p);
}

static bool
same_addr(const struct sockaddr *a, const struct sockaddr_storage *b)
{
    if (a->sa_family != b->ss_family)
        return false;
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

static void
on_answer(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from, unsigned flags)
{
    if (n < DNS_HEADER || from == NULL || (flags & UV_UDP_PARTIAL))
        return;
    uint8_t *m = (uint8_t *)buf->base;
    uint16_t id = (uint16_t)(m[0] << 8 | m[1]);
    struct pending *p = &dns.pending[id & (DNS_PENDING - 1)];
    char name[256];
    size_t qend = parse_question(m, (size_t)n, name);
    if (!p->used || p->id != id || !same_addr(from, &dns.resolvers[p->resolver]) || qend == 0 ||
        hash(m + DNS_HEADER, qend - DNS_HEADER) != p->question)
        return;
    m[0] = (uint8_t)(p->orig_id >> 8);
    m[1] = (uint8_t)p->orig_id;
    struct sockaddr_in client = p->client;
    int slot = p->slot;
    forget(p);
    /* The sandbox may have gone, and its address be another's, meanwhile. */
    struct sbx_live *l = dns.d->by_slot[slot];
    if (l ? l->rec->uid_slot == slot && !l->dying : sbx_builder_has_slot(slot))
        send_down(m, (size_t)n, &client);
}

static void
on_sweep(uv_timer_t *t)
{
    uint64_t now = sbx_now_ms();
    for (size_t i = 0; i < DNS_PENDING; i++)
        if (dns.pending[i].used && dns.pending[i].deadline_ms <= now)
            forget(&dns.pending[i]);
}

/* The host's resolvers: the nameserver lines of its /etc/resolv.conf, as its own programs
 * read them (none: 127.0.0.1, as glibc does). */
static void
read_resolvers(void)
{
    FILE *f = fopen("/etc/resolv.conf", "re");
    char line[512];
    while (f && fgets(line, sizeof(line), f) && dns.n_resolvers < DNS_RESOLVERS) {
        char addr[128];
        if (sscanf(line, " nameserver %127s", addr) != 1)
            continue;
        char *pct = strchr(addr, '%'); /* a scope id: not for us */
        if (pct)
            *pct = '\0';
        struct sockaddr_storage *s = &dns.resolvers[dns.n_resolvers];
        if (uv_ip4_addr(addr, 53, (struct sockaddr_in *)s) == 0 ||
            uv_ip6_addr(addr, 53, (struct sockaddr_in6 *)s) == 0)
            dns.n_resolvers++;
    }
    if (f)
        fclose(f);
    if (dns.n_resolvers == 0)
        uv_ip4_addr("127.0.0.1", 53, (struct sockaddr_in *)&dns.resolvers[dns.n_resolvers++]);
}

static int
bind_any(uv_udp_t *u, int family, uv_udp_recv_cb cb, struct sbx_error **err)
{
    struct sockaddr_storage any;
    if (family == AF_INET)
        uv_ip4_addr("0.0.0.0", 0, (struct sockaddr_in *)&any);
    else
        uv_ip6_addr("::", 0, (struct sockaddr_in6 *)&any);
    uv_udp_init(dns.d->loop, u);
    int rc = uv_udp_bind(u, (const struct sockaddr *)&any, 0);
    if (rc == 0)
        rc = uv_udp_recv_start(u, on_alloc, cb);
    if (rc < 0)
        return sbx_error_set(err, SBX_UNAVAILABLE, -rc, "DNS forwarder: %s", uv_strerror(rc));
    return 0;
}

int
sbx_gateway_socket(const struct sbx_daemon *d, int type)
{
    struct sockaddr_in gw = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(sbx_netplan_gateway(&d->cfg.net.plan))};
    /* The gateway's address exists only while a sandbox's link holds it: bind it anyway. */
    int fd = socket(AF_INET, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)&gw, sizeof(gw)) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return -e;
    }
    return fd;
}

int
sbx_dns_start(struct sbx_daemon *d, struct sbx_error **err)
{
    dns.d = d;
    if (!d->cfg.net_on)
        return 0;
    read_resolvers();
    int fd = sbx_gateway_socket(d, SOCK_DGRAM);
    int rc = fd < 0 ? fd : 0;
    uv_udp_init(d->loop, &dns.down);
    if (rc == 0)
        rc = uv_udp_open(&dns.down, fd);
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    if (rc == 0)
        rc = uv_udp_getsockname(&dns.down, (struct sockaddr *)&bound, &len);
    if (rc == 0)
        rc = uv_udp_recv_start(&dns.down, on_alloc, on_query);
    if (rc < 0)
        return sbx_error_set(err, SBX_UNAVAILABLE, -rc,
                             "DNS forwarder: bind the gateway's address: %s", uv_strerror(rc));
    dns.port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    if (bind_any(&dns.up4, AF_INET, on_answer, err) < 0)
        return -1;
    for (int i = 0; i < dns.n_resolvers; i++)
        dns.has_up6 |= dns.resolvers[i].ss_family == AF_INET6;
    if (dns.has_up6 && bind_any(&dns.up6, AF_INET6, on_answer, err) < 0)
        return -1;
    uv_timer_init(d->loop, &dns.sweep);
    uv_timer_start(&dns.sweep, on_sweep, 1000, 1000);
    uv_unref((uv_handle_t *)&dns.sweep);
    char first[64] = "";
    uv_ip_name((struct sockaddr *)&dns.resolvers[0], first, sizeof(first));
    sbx_log_info("dns", "port=%u resolvers=%d first=%s", dns.port, dns.n_resolvers, first);
    return 0;
}
