/* The sandboxes' egress proxy: where the spawner's nftables table sends the TCP connections of
 * sandboxes whose rules name hosts (ports 80 and 443) or that tunnel through a SOCKS5 proxy
 * of their client's (every port). It listens on the gateway's address; a connection comes
 * with its sandbox's source address (spoofing is dropped at the host's edge) and its original
 * destination (SO_ORIGINAL_DST, from conntrack), and is decided as E2B decides (spec
 * network.md §2.1):
 *
 *   1. the server name the first bytes give (TLS SNI on 443, Host on 80) matches an allowOut
 *      host name: allowed; the name is resolved here, by the host's resolver, and an address
 *      in the always-blocked ranges is refused (so /etc/hosts inside the sandbox, or an IP
 *      literal with a borrowed SNI, cannot point an allowed name elsewhere);
 *   2. else the original destination: always-blocked ranges refused, then allowOut's ranges
 *      allow, denyOut's refuse, anything else is allowed.
 *
 * Allowed connections are dialled from the host (or through the SOCKS5 proxy: with the name
 * when allowed by name, else the address), the first bytes sent ahead, and the two become a
 * tunnel (http/tunnel.c). Refused ones are reset. Bounds: OUT_PER_SANDBOX connections per
 * sandbox, OUT_DECIDE_MS to send a name and to connect. */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "http/sniff.h"
#include "http/tunnel.h"

#define OUT_PER_SANDBOX 256
#define OUT_DECIDE_MS   10000
#define SOCKS_REPLY_MAX 262 /* 4 + 1 + 255 + 2 */

enum step { PEEK, RESOLVE, CONNECT, SOCKS_METHOD, SOCKS_AUTH, SOCKS_REPLY, TUNNEL };

struct flow {
    uv_tcp_t down; /* from the sandbox */
    uv_tcp_t up;   /* to the destination, or to the SOCKS5 proxy */
    uv_timer_t timer;
    uv_connect_t connect;
    uv_getaddrinfo_t gai;
    int refs; /* open handles and the name lookup in flight */
    bool up_init;
    enum step step;
    int slot;
    struct sockaddr_in orig; /* where the sandbox connected to */
    char name[SBX_SNIFF_NAME_MAX + 1];
    bool by_name;         /* allowed by its name: dial the name, never orig */
    struct sbx_buf first; /* the sandbox's first bytes, sent up ahead of the rest */
    struct sbx_buf reply; /* the SOCKS5 proxy's answers */
    bool failed;
};

static struct {
    struct sbx_daemon *d;
    uv_tcp_t listener;
    uint16_t port;
    int per_slot[SBX_MAX_SANDBOXES];
} out;

uint16_t
sbx_outbound_port(void)
{
    return out.port;
}

static void
unref(struct flow *f)
{
    if (--f->refs > 0)
        return;
    out.per_slot[f->slot]--;
    sbx_buf_fini(&f->first);
    sbx_buf_fini(&f->reply);
    free(f);
}

static void
on_closed(uv_handle_t *h)
{
    unref(h->data);
}

static void
close_handle(struct flow *f, uv_handle_t *h)
{
    if ((h != (uv_handle_t *)&f->up || f->up_init) && !uv_is_closing(h))
        uv_close(h, on_closed);
}

/* Refused or failed before the tunnel: the sandbox sees a reset, as from a firewall. */
static void
fail(struct flow *f)
{
    if (f->failed)
        return;
    f->failed = true;
    uv_timer_stop(&f->timer);
    if (f->step == RESOLVE)
        uv_cancel((uv_req_t *)&f->gai);
    if (!uv_is_closing((uv_handle_t *)&f->down))
        uv_tcp_close_reset(&f->down, on_closed);
    close_handle(f, (uv_handle_t *)&f->up);
    close_handle(f, (uv_handle_t *)&f->timer);
}

static const struct sbx_netset *
rules_of(struct flow *f)
{
    struct sbx_live *l = out.d->by_slot[f->slot];
    return l && !l->dying ? l->net : NULL;
}

/* Whether a is one of the host's own addresses. Connections from this proxy start on the
 * host, where nothing of the sandbox network's filtering applies: the host's addresses must
 * be refused here as nftables refuses them to sandboxes. The list is read again at most
 * once a second (addresses come and go with interfaces), and it is never cut short: a host
 * with hundreds of interfaces (one per sandbox) still has all of its addresses checked. */
static bool
host_local(uint32_t a)
{
    static struct sbx_buf addrs; /* uint32_t each */
    static uint64_t read_ms;
    static bool complete;
    uint64_t now = sbx_now_ms();
    struct ifaddrs *all;
    if (now - read_ms >= 1000 && getifaddrs(&all) == 0) {
        addrs.len = 0;
        complete = true;
        for (struct ifaddrs *i = all; i && complete; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
                continue;
            uint32_t v = ntohl(((const struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr);
            /* Out of memory: refuse everything until a whole list is read. */
            complete = sbx_buf_append(&addrs, &v, sizeof(v), SIZE_MAX / 2) == 0;
        }
        read_ms = complete ? now : 0;
        freeifaddrs(all);
    }
    for (size_t i = 0; i + sizeof(uint32_t) <= addrs.len; i += sizeof(uint32_t)) {
        uint32_t v;
        memcpy(&v, addrs.data + i, sizeof(v));
        if (v == a)
            return true;
    }
    return !complete;
}

static bool
blocked(uint32_t a)
{
    return sbx_ip4_ranges_contain(out.d->cfg.net.blocked, out.d->cfg.net.n_blocked, a) ||
           host_local(a);
}

/* Step 2 of the decision (header comment): the original destination. */
static bool
address_allowed(const struct sbx_netset *n, uint32_t a)
{
    if (blocked(a))
        return false;
    if (sbx_ip4_ranges_contain(n->allow, n->n_allow, a))
        return true;
    return !sbx_ip4_ranges_contain(n->deny, n->n_deny, a);
}

/* ---- the tunnel ---- */

static void
release_down(void *ud)
{
    struct flow *f = ud;
    close_handle(f, (uv_handle_t *)&f->down);
}

static void
release_up(void *ud)
{
    struct flow *f = ud;
    close_handle(f, (uv_handle_t *)&f->up);
}

static void
start_tunnel(struct flow *f, const char *to_down, size_t n)
{
    f->step = TUNNEL;
    uv_timer_stop(&f->timer);
    close_handle(f, (uv_handle_t *)&f->timer);
    uv_read_stop((uv_stream_t *)&f->down);
    uv_read_stop((uv_stream_t *)&f->up);
    struct sbx_tunnel_end down = {.stream = (uv_stream_t *)&f->down,
                                  .close = release_down,
                                  .ud = f,
                                  .pending = to_down,
                                  .n_pending = n};
    struct sbx_tunnel_end up = {.stream = (uv_stream_t *)&f->up,
                                .close = release_up,
                                .ud = f,
                                .pending = f->first.data,
                                .n_pending = f->first.len};
    sbx_tunnel_start(out.d->loop, &down, &up);
}

/* ---- SOCKS5 (RFC 1928, 1929) ---- */

static void
up_write(struct flow *f, const void *data, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    /* A handful of bytes on a fresh connection: the kernel takes them at once. */
    if (uv_try_write((uv_stream_t *)&f->up, &b, 1) != (int)n)
        fail(f);
}

static void
socks_request(struct flow *f)
{
    const struct sbx_netset *n = rules_of(f);
    uint8_t req[4 + 1 + SBX_SNIFF_NAME_MAX + 2] = {5, 1, 0};
    size_t len;
    if (f->by_name) { /* the proxy resolves the name (remote DNS) */
        size_t nl = strlen(f->name);
        req[3] = 3;
        req[4] = (uint8_t)nl;
        memcpy(req + 5, f->name, nl);
        len = 5 + nl;
    } else {
        req[3] = 1;
        memcpy(req + 4, &f->orig.sin_addr, 4);
        len = 8;
    }
    memcpy(req + len, &f->orig.sin_port, 2);
    f->step = SOCKS_REPLY;
    if (n == NULL)
        fail(f);
    else
        up_write(f, req, len + 2);
}

/* Consumes what the proxy said so far; returns false to wait for more. */
static bool
socks_advance(struct flow *f)
{
    const uint8_t *r = (const uint8_t *)f->reply.data;
    size_t have = f->reply.len;
    if (f->step == SOCKS_METHOD) {
        if (have < 2)
            return false;
        const struct sbx_netset *n = rules_of(f);
        if (r[0] != 5 || n == NULL || (r[1] != 0 && r[1] != 2) || (r[1] == 2 && !n->proxy_user)) {
            fail(f);
            return false;
        }
        sbx_buf_consume(&f->reply, 2);
        if (r[1] == 0) {
            socks_request(f);
            return true;
        }
        uint8_t auth[3 + 255 + 255];
        size_t ul = strlen(n->proxy_user), pl = n->proxy_pass ? strlen(n->proxy_pass) : 0;
        auth[0] = 1;
        auth[1] = (uint8_t)ul;
        memcpy(auth + 2, n->proxy_user, ul);
        auth[2 + ul] = (uint8_t)pl;
        memcpy(auth + 3 + ul, n->proxy_pass ? n->proxy_pass : "", pl);
        f->step = SOCKS_AUTH;
        up_write(f, auth, 3 + ul + pl);
        explicit_bzero(auth, sizeof(auth));
        return true;
    }
    if (f->step == SOCKS_AUTH) {
        if (have < 2)
            return false;
        if (r[1] != 0) {
            fail(f);
            return false;
        }
        sbx_buf_consume(&f->reply, 2);
        socks_request(f);
        return true;
    }
    /* SOCKS_REPLY: 5, 0 (succeeded), 0, then the bound address. */
    if (have < 5)
        return false;
    size_t need = 4 + (r[3] == 1 ? 4 : r[3] == 4 ? 16 : r[3] == 3 ? 1u + r[4] : 0) + 2;
    if (r[0] != 5 || r[1] != 0 || need == 6) {
        fail(f);
        return false;
    }
    if (have < need)
        return false;
    start_tunnel(f, f->reply.data + need, have - need);
    return false;
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[4096];
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void
on_up_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct flow *f = s->data;
    if (n == 0 || f->failed)
        return;
    if (n < 0 || sbx_buf_append(&f->reply, buf->base, (size_t)n, SOCKS_REPLY_MAX) < 0) {
        fail(f);
        return;
    }
    while (!f->failed && f->step != TUNNEL && socks_advance(f))
        ;
}

/* ---- dialling ---- */

static void
on_up_connected(uv_connect_t *c, int status)
{
    struct flow *f = c->data;
    if (f->failed)
        return;
    const struct sbx_netset *n = rules_of(f);
    if (status < 0 || n == NULL) {
        fail(f);
        return;
    }
    uv_tcp_nodelay(&f->up, 1);
    if (n->proxy_host == NULL) {
        start_tunnel(f, NULL, 0);
        return;
    }
    f->step = SOCKS_METHOD;
    uv_read_start((uv_stream_t *)&f->up, on_alloc, on_up_read);
    if (n->proxy_user)
        up_write(f, "\x05\x02\x00\x02", 4);
    else
        up_write(f, "\x05\x01\x00", 3);
}

static void
dial(struct flow *f, const struct sockaddr_in *to)
{
    f->step = CONNECT;
    uv_tcp_init(out.d->loop, &f->up);
    f->up.data = f;
    f->up_init = true;
    f->refs++;
    f->connect.data = f;
    if (uv_tcp_connect(&f->connect, &f->up, (const struct sockaddr *)to, on_up_connected) < 0)
        fail(f);
}

/* The name's (or the SOCKS proxy's) first IPv4 address outside the blocked ranges. */
static void
on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *ai)
{
    struct flow *f = g->data;
    const struct addrinfo *pick = NULL;
    for (const struct addrinfo *a = ai; status == 0 && a && !pick; a = a->ai_next)
        if (a->ai_family == AF_INET &&
            !blocked(ntohl(((const struct sockaddr_in *)a->ai_addr)->sin_addr.s_addr)))
            pick = a;
    struct sockaddr_in to =
        pick ? *(const struct sockaddr_in *)pick->ai_addr : (struct sockaddr_in){0};
    uv_freeaddrinfo(ai);
    if (!f->failed && pick == NULL)
        fail(f);
    else if (!f->failed)
        dial(f, &to);
    unref(f);
}

static void
resolve(struct flow *f, const char *host, int port)
{
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    f->step = RESOLVE;
    f->gai.data = f;
    f->refs++;
    if (uv_getaddrinfo(out.d->loop, &f->gai, on_resolved, host, service, &hints) < 0) {
        fail(f);
        unref(f);
    }
}

static void
decide(struct flow *f)
{
    const struct sbx_netset *n = rules_of(f);
    if (n == NULL) {
        fail(f);
        return;
    }
    uv_read_stop((uv_stream_t *)&f->down);
    f->by_name = f->name[0] && sbx_netset_name_allowed(n, f->name);
    if (!f->by_name && !address_allowed(n, ntohl(f->orig.sin_addr.s_addr))) {
        fail(f);
        return;
    }
    if (n->proxy_host)
        resolve(f, n->proxy_host, n->proxy_port);
    else if (f->by_name)
        resolve(f, f->name, ntohs(f->orig.sin_port));
    else
        dial(f, &f->orig);
}

/* ---- the sandbox's side ---- */

static void
on_down_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct flow *f = s->data;
    if (n == 0 || f->failed || f->step != PEEK)
        return;
    if (n < 0 || sbx_buf_append(&f->first, buf->base, (size_t)n, SBX_SNIFF_MAX) < 0) {
        fail(f);
        return;
    }
    const uint8_t *d = (const uint8_t *)f->first.data;
    int rc = ntohs(f->orig.sin_port) == 443 ? sbx_sniff_tls_sni(d, f->first.len, f->name)
                                            : sbx_sniff_http_host(d, f->first.len, f->name);
    if (rc == 0)
        return;
    if (rc < 0)
        f->name[0] = '\0'; /* no name: the address decides */
    decide(f);
}

static void
on_deadline(uv_timer_t *t)
{
    fail(t->data);
}

static void
on_accept(uv_stream_t *listener, int status)
{
    if (status < 0)
        return;
    struct flow *f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    uv_tcp_init(out.d->loop, &f->down);
    f->down.data = f;
    uv_timer_init(out.d->loop, &f->timer);
    f->timer.data = f;
    f->refs = 2;
    f->step = PEEK;
    struct sockaddr_in peer;
    int len = sizeof(peer);
    socklen_t olen = sizeof(f->orig);
    uv_os_fd_t fd = -1;
    struct sbx_live *l = NULL;
    if (uv_accept(listener, (uv_stream_t *)&f->down) == 0 &&
        uv_tcp_getpeername(&f->down, (struct sockaddr *)&peer, &len) == 0 &&
        peer.sin_family == AF_INET && uv_fileno((uv_handle_t *)&f->down, &fd) == 0)
        l = sbx_live_by_addr(out.d, ntohl(peer.sin_addr.s_addr));
    f->slot = l ? l->rec->uid_slot : 0;
    out.per_slot[f->slot]++;
    /* Only a sandbox of ours, within its share, with where it meant to go. */
    if (l == NULL || l->dying || out.per_slot[f->slot] > OUT_PER_SANDBOX ||
        getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &f->orig, &olen) < 0) {
        fail(f);
        return;
    }
    uv_tcp_nodelay(&f->down, 1);
    uv_timer_start(&f->timer, on_deadline, OUT_DECIDE_MS, 0);
    int port = ntohs(f->orig.sin_port);
    /* A name to read only where one comes first: TLS and HTTP on their ports, and only if
     * names are in the rules; other protocols may wait for the server to speak. */
    if (l->net->n_domains > 0 && (port == 80 || port == 443))
        uv_read_start((uv_stream_t *)&f->down, on_alloc, on_down_read);
    else
        decide(f);
}

int
sbx_outbound_start(struct sbx_daemon *d, struct sbx_error **err)
{
    out.d = d;
    if (!d->cfg.net_on)
        return 0;
    int fd = sbx_gateway_socket(d, SOCK_STREAM);
    int rc = fd < 0 ? fd : 0;
    uv_tcp_init(d->loop, &out.listener);
    if (rc == 0)
        rc = uv_tcp_open(&out.listener, fd);
    struct sockaddr_in bound;
    int len = sizeof(bound);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&out.listener, SBX_LISTEN_BACKLOG, on_accept);
    if (rc == 0)
        rc = uv_tcp_getsockname(&out.listener, (struct sockaddr *)&bound, &len);
    if (rc < 0)
        return sbx_error_set(err, SBX_UNAVAILABLE, -rc, "egress proxy: listen on the gateway: %s",
                             uv_strerror(rc));
    out.port = ntohs(bound.sin_port);
    sbx_log_info("egress_proxy", "port=%u", out.port);
    return 0;
}
