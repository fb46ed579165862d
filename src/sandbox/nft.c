/* The daemon's nftables table (libnftables): one table, family inet, named after the daemon's
 * network tag (e.g. "sbx0"); no other table is ever touched. Its rules are fixed; what
 * differs per sandbox lives in set elements keyed by the sandbox's address, so a packet's
 * cost does not grow with the number of sandboxes:
 *
 *   prerouting (raw)     from a sandbox: IPv6 dropped; a source address not routed back
 *                        through the interface it came in on (spoofing) dropped
 *   nat_prerouting       a sandbox's DNS to the gateway -> the front end's forwarder; the
 *                        TCP of sandboxes in proxy_web (ports 80, 443) or proxy_all (every
 *                        port) -> the front end's egress proxy
 *   input                from a sandbox to the host: only replies and the forwarders
 *   forward              to a sandbox: only replies; from a sandbox: sandbox_egress
 *   sandbox_egress       replies; always-blocked destinations refused; then the sandbox's
 *                        shard: its allow set (accept), its deny set (refuse); else accept
 *   nat_postrouting      from the sandbox network to anywhere else: masquerade
 *
 * Per-sandbox rules are elements "sandbox address . destination range" of interval sets,
 * spread over SHARDS sets by the low bits of the sandbox's address (its slot): deleting an
 * element of an interval set through libnftables fetches the whole set, and a kernel
 * transaction on such a set copies it, so each change touches one small set.
 *
 * The kernel's table is the truth, so a restarted spawner carries on with what the previous one
 * left, and cleaning up lists what is there. What this process itself put in a slot's elements
 * it remembers (see known): changing them again is one netlink batch that deletes exactly
 * those and adds the new ones (nfnl.c), with no listing and no libnftables cache: 0.4 ms with
 * a thousand sandboxes' rules, where the libnftables command took 3-5 ms (it reads the host's
 * whole ruleset first). A slot it does not know is listed and rewritten through libnftables. */
#include <errno.h>
#include <jansson.h>
#include <nftables/libnftables.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "sandbox/internal.h"

#define SHARDS 64 /* a power of two: the shard is the address's low bits */

static struct nft_ctx *ctx;

/* The elements a slot holds in our sets, when this process knows them exactly: it set them
 * itself (the table is ours alone: nothing else adds to it), or found none there at reconcile.
 * Unknown after a start until reconcile (the slots of running sandboxes until their first
 * change, which lists the sets), and after any failed change. A sandbox with the default
 * network on a slot known to be empty needs no nftables command at its spawn or its destroy. */
struct known {
    bool yes;
    unsigned flags; /* SBX_NET_PROXY_*: its element in proxy_web, proxy_all */
    size_t n_allow, n_deny;
    struct sbx_ip4_range *ranges; /* allow, then deny */
};
static struct known known[SBX_MAX_SANDBOXES];

static void
forget(int slot)
{
    free(known[slot].ranges);
    known[slot] = (struct known){0};
}

static void
remember(int slot, const struct sbx_net_policy *p)
{
    forget(slot);
    struct known k = {.yes = true};
    if (p)
        k = (struct known){true, p->flags, p->n_allow, p->n_deny, NULL};
    if (k.n_allow + k.n_deny > 0) {
        k.ranges = malloc((k.n_allow + k.n_deny) * sizeof(*k.ranges));
        if (k.ranges == NULL)
            abort();
        if (k.n_allow)
            memcpy(k.ranges, p->allow, k.n_allow * sizeof(*k.ranges));
        if (k.n_deny)
            memcpy(k.ranges + k.n_allow, p->deny, k.n_deny * sizeof(*k.ranges));
    }
    known[slot] = k;
}

static void
forget_all(void)
{
    for (int slot = 0; slot < SBX_MAX_SANDBOXES; slot++)
        forget(slot);
}

static struct nft_ctx *
nft(void)
{
    if (ctx == NULL) {
        ctx = nft_ctx_new(NFT_CTX_DEFAULT);
        if (ctx == NULL)
            abort();
        nft_ctx_buffer_output(ctx);
        nft_ctx_buffer_error(ctx);
    }
    return ctx;
}

/* nft_run_cmd_from_buffer, again while it fails with EINTR: libnftables reads the ruleset
 * first, and a dump that another program's change interrupted (NLM_F_DUMP_INTR, seen here when
 * several daemons change their tables at once) fails the whole command, which then changed
 * nothing. */
static int
run_cmd(const char *cmd)
{
    for (int attempt = 0;; attempt++) {
        if (nft_run_cmd_from_buffer(nft(), cmd) == 0)
            return 0;
        const char *msg = nft_ctx_get_error_buffer(nft());
        if (attempt == 4 || msg == NULL || strstr(msg, strerror(EINTR)) == NULL)
            return -1;
    }
}

/* Runs the commands of b as one transaction: all of them or none. */
static int
run(struct sbx_buf *b, const char *what, struct sbx_error **err)
{
    nft_ctx_output_set_flags(nft(), 0);
    sbx_buf_append(b, "", 1, SIZE_MAX); /* NUL */
    if (run_cmd(b->data) == 0)
        return 0;
    const char *msg = nft_ctx_get_error_buffer(nft());
    /* The first line is nftables' own explanation; the rest repeats the command. */
    int len = (int)strcspn(msg ? msg : "", "\n");
    return sbx_error_set(err, SBX_INTERNAL, 0, "nftables: %s: %.*s", what, len, msg ? msg : "");
}

/* Lists with JSON output; *out gets the parsed document. */
static int
list_json(const char *cmd, json_t **out, struct sbx_error **err)
{
    nft_ctx_output_set_flags(nft(), NFT_CTX_OUTPUT_JSON);
    int rc = run_cmd(cmd);
    nft_ctx_output_set_flags(nft(), 0);
    if (rc != 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "nftables: %s: %s", cmd,
                             nft_ctx_get_error_buffer(nft()));
    json_error_t jerr;
    *out = json_loads(nft_ctx_get_output_buffer(nft()), 0, &jerr);
    if (*out == NULL)
        return sbx_error_set(err, SBX_INTERNAL, 0, "nftables: %s: unreadable output: %s", cmd,
                             jerr.text);
    return 0;
}

static void
ip(uint32_t a, char out[SBX_IP4_STR_MAX])
{
    sbx_ip4_format(a, out);
}

static void
put_range(struct sbx_buf *b, struct sbx_ip4_range r)
{
    char f[SBX_IP4_STR_MAX], l[SBX_IP4_STR_MAX];
    ip(r.first, f);
    ip(r.last, l);
    if (r.first == r.last)
        sbx_buf_printf(b, "%s", f);
    else
        sbx_buf_printf(b, "%s-%s", f, l);
}

/* ---- the table ---- */

static void
put_table(struct sbx_buf *b, const struct sbx_net_config *c)
{
    const char *t = c->tag;
    char gw[SBX_IP4_STR_MAX], base[SBX_IP4_STR_MAX];
    ip(sbx_netplan_gateway(&c->plan), gw);
    ip(c->plan.base, base);
    sbx_buf_printf(b, "add table inet %s\n", t);
    sbx_buf_printf(b,
                   "add set inet %s blocked { type ipv4_addr; flags interval; }\n"
                   "add set inet %s proxy_web { type ipv4_addr; }\n"
                   "add set inet %s proxy_all { type ipv4_addr; }\n",
                   t, t, t);
    static const char *const hooks[][2] = {
        {"prerouting", "type filter hook prerouting priority raw"},
        {"nat_prerouting", "type nat hook prerouting priority dstnat"},
        {"input", "type filter hook input priority filter"},
        {"forward", "type filter hook forward priority filter"},
        {"nat_postrouting", "type nat hook postrouting priority srcnat"},
        {"sandbox_egress", NULL},
        {"refuse", NULL},
    };
    for (size_t i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++) {
        if (hooks[i][1])
            sbx_buf_printf(b, "add chain inet %s %s { %s; policy accept; }\n", t, hooks[i][0],
                           hooks[i][1]);
        else
            sbx_buf_printf(b, "add chain inet %s %s\n", t, hooks[i][0]);
        /* nat_prerouting keeps its rules: they name the front end's ports
         * (sbx_net_set_ports). */
        if (strcmp(hooks[i][0], "nat_prerouting") != 0)
            sbx_buf_printf(b, "flush chain inet %s %s\n", t, hooks[i][0]);
    }
    /* After the chain "refuse" they jump to. */
    for (int k = 0; k < SHARDS; k++) {
        sbx_buf_printf(b,
                       "add set inet %s allow_%d { type ipv4_addr . ipv4_addr; flags interval; }\n"
                       "add set inet %s deny_%d { type ipv4_addr . ipv4_addr; flags interval; }\n"
                       "add chain inet %s shard_%d\nflush chain inet %s shard_%d\n"
                       "add rule inet %s shard_%d ip saddr . ip daddr @allow_%d accept\n"
                       "add rule inet %s shard_%d ip saddr . ip daddr @deny_%d jump refuse\n",
                       t, k, t, k, t, k, t, k, t, k, k, t, k, k);
    }
    /* Sandboxes have no IPv6 (none is configured in them); nothing of it leaves them. A
     * source address that the route back does not send through the same interface is
     * forged (another sandbox's, the host's): strict reverse-path check. */
    sbx_buf_printf(
        b,
        "add rule inet %s prerouting iifname \"%s-*\" meta nfproto ipv6 drop\n"
        "add rule inet %s prerouting iifname \"%s-*\" fib saddr . iif oif missing drop\n",
        t, t, t, t);
    /* The host itself is off limits: its addresses, the daemon's port, any host service.
     * Only replies and the forwarders the dnat chain sends to come in. */
    sbx_buf_printf(b,
                   "add rule inet %s input iifname \"%s-*\" ct state established,related accept\n"
                   "add rule inet %s input iifname \"%s-*\" ip daddr %s ct status dnat accept\n"
                   "add rule inet %s input iifname \"%s-*\" jump refuse\n",
                   t, t, t, t, gw, t, t);
    /* From a sandbox: its rules (another sandbox is a blocked destination, refused). Nothing
     * else reaches a sandbox through the host but replies: the daemon's ingress goes through
     * the agent's socket, never over this network. */
    sbx_buf_printf(b,
                   "add rule inet %s forward iifname \"%s-*\" jump sandbox_egress\n"
                   "add rule inet %s forward oifname \"%s-*\" ct state established,related accept\n"
                   "add rule inet %s forward oifname \"%s-*\" drop\n",
                   t, t, t, t, t, t);
    sbx_buf_printf(b,
                   "add rule inet %s sandbox_egress ct state established,related accept\n"
                   "add rule inet %s sandbox_egress ip daddr @blocked jump refuse\n"
                   "add rule inet %s sandbox_egress ip saddr & 0.0.0.%d vmap { ",
                   t, t, t, SHARDS - 1);
    for (int k = 0; k < SHARDS; k++)
        sbx_buf_printf(b, "%s0.0.0.%d : jump shard_%d", k ? ", " : "", k, k);
    sbx_buf_printf(b, " }\n");
    /* Refused, not dropped: a client learns at once that it may not connect. */
    sbx_buf_printf(b,
                   "add rule inet %s refuse meta l4proto tcp reject with tcp reset\n"
                   "add rule inet %s refuse reject with icmpx admin-prohibited\n",
                   t, t);
    sbx_buf_printf(
        b, "add rule inet %s nat_postrouting ip saddr %s/%d oifname != \"%s-*\" masquerade\n", t,
        base, c->plan.prefix, t);
    sbx_buf_printf(b, "flush set inet %s blocked\n", t);
    if (c->n_blocked > 0) {
        sbx_buf_printf(b, "add element inet %s blocked { ", t);
        for (size_t i = 0; i < c->n_blocked; i++) {
            sbx_buf_printf(b, "%s", i ? ", " : "");
            put_range(b, c->blocked[i]);
        }
        sbx_buf_printf(b, " }\n");
    }
}

int
sbx_nft_init(const struct sbx_net_config *c, struct sbx_error **err)
{
    forget_all(); /* the table may be made afresh: reconcile learns the slots again */
    if (sbx_nfnl_open() < 0)
        return sbx_error_sys(err, errno, "nftables: netlink socket");
    struct sbx_buf b = {0};
    put_table(&b, c);
    int rc = run(&b, "create the table", err);
    if (rc < 0) {
        /* A table of another layout (an older sbx) refuses the new sets: start afresh. The
         * front end applies every running sandbox's rules again once it is connected. */
        sbx_log_warn("network", "table=%s error=\"%s\" action=\"recreate the table\"", c->tag,
                     (*err)->msg);
        sbx_error_free(*err);
        *err = NULL;
        struct sbx_buf del = {0};
        sbx_buf_printf(&del, "add table inet %s\ndelete table inet %s\n", c->tag, c->tag);
        b.len = 0;
        put_table(&b, c);
        rc = run(&del, "delete the table", err) < 0 ? -1 : run(&b, "create the table", err);
        sbx_buf_fini(&del);
    }
    sbx_buf_fini(&b);
    return rc;
}

void
sbx_net_host_fini(const struct sbx_net_config *c)
{
    struct sbx_buf b = {0};
    _cleanup_error_ struct sbx_error *err = NULL;
    forget_all();
    sbx_buf_printf(&b, "delete table inet %s\n", c->tag);
    if (run(&b, "delete the table", &err) < 0)
        sbx_log_warn("network", "table=%s error=\"%s\"", c->tag, err->msg);
    sbx_buf_fini(&b);
}

int
sbx_net_set_ports(const struct sbx_net_config *c, uint16_t dns_port, uint16_t proxy_port,
                  struct sbx_error **err)
{
    const char *t = c->tag;
    char gw[SBX_IP4_STR_MAX];
    ip(sbx_netplan_gateway(&c->plan), gw);
    struct sbx_buf b = {0};
    sbx_buf_printf(&b, "flush chain inet %s nat_prerouting\n", t);
    sbx_buf_printf(
        &b,
        "add rule inet %s nat_prerouting iifname \"%s-*\" ip daddr %s meta l4proto { udp, tcp } "
        "th dport 53 dnat ip to %s:%u\n",
        t, t, gw, gw, dns_port);
    /* Proxied TCP goes to the front end, which decides on the name the connection's first
     * bytes give (SNI, Host) and dials out itself (or through the client's proxy). */
    if (proxy_port)
        sbx_buf_printf(&b,
                       "add rule inet %s nat_prerouting iifname \"%s-*\" ip saddr @proxy_all "
                       "meta l4proto tcp dnat ip to %s:%u\n"
                       "add rule inet %s nat_prerouting iifname \"%s-*\" ip saddr @proxy_web "
                       "tcp dport { 80, 443 } dnat ip to %s:%u\n",
                       t, t, gw, proxy_port, t, t, gw, proxy_port);
    int rc = run(&b, "point DNS and proxied TCP at the front end", err);
    sbx_buf_fini(&b);
    return rc;
}

/* ---- elements ---- */

/* The element's destination part, in the syntax nftables reads. */
static bool
put_json_dest(struct sbx_buf *b, json_t *d)
{
    if (json_is_string(d)) {
        sbx_buf_printf(b, "%s", json_string_value(d));
        return true;
    }
    json_t *p = json_object_get(d, "prefix");
    if (p) {
        sbx_buf_printf(b, "%s/%d", json_string_value(json_object_get(p, "addr")),
                       (int)json_integer_value(json_object_get(p, "len")));
        return json_is_string(json_object_get(p, "addr"));
    }
    json_t *r = json_object_get(d, "range");
    if (json_array_size(r) == 2 && json_is_string(json_array_get(r, 0)) &&
        json_is_string(json_array_get(r, 1))) {
        sbx_buf_printf(b, "%s-%s", json_string_value(json_array_get(r, 0)),
                       json_string_value(json_array_get(r, 1)));
        return true;
    }
    return false;
}

/* For every element of set (a JSON set object) whose sandbox address keep() refuses, appends
 * its deletion to out. */
static void
put_deletes(struct sbx_buf *out, const struct sbx_net_config *c, json_t *set,
            bool (*keep)(const struct sbx_net_config *c, uint32_t sandbox, void *ud), void *ud)
{
    struct sbx_buf elems = {0};
    size_t i;
    json_t *e;
    json_array_foreach (json_object_get(set, "elem"), i, e) {
        /* "sandbox . destination" in the rule sets, the sandbox alone in the proxy sets. */
        json_t *cc = json_object_get(e, "concat");
        const char *sandbox = cc ? json_string_value(json_array_get(cc, 0)) : json_string_value(e);
        uint32_t a;
        if ((cc && json_array_size(cc) != 2) || sandbox == NULL || !sbx_ip4_parse(sandbox, &a) ||
            keep(c, a, ud))
            continue;
        size_t mark = elems.len;
        sbx_buf_printf(&elems, "%s%s", mark ? ", " : "", sandbox);
        if (cc && (sbx_buf_printf(&elems, " . "), !put_json_dest(&elems, json_array_get(cc, 1))))
            elems.len = mark; /* not one of ours: we add only ranges */
    }
    if (elems.len > 0) {
        sbx_buf_printf(out, "delete element inet %s %s { ", c->tag,
                       json_string_value(json_object_get(set, "name")));
        sbx_buf_append(out, elems.data, elems.len, SIZE_MAX);
        sbx_buf_printf(out, " }\n");
    }
    sbx_buf_fini(&elems);
}

static bool
keep_other(const struct sbx_net_config *c, uint32_t sandbox, void *ud)
{
    return sandbox != *(const uint32_t *)ud;
}

static void
put_adds(struct sbx_buf *b, const char *tag, const char *set, uint32_t addr,
         const struct sbx_ip4_range *r, size_t n)
{
    if (n == 0)
        return;
    char a[SBX_IP4_STR_MAX];
    ip(addr, a);
    sbx_buf_printf(b, "add element inet %s %s { ", tag, set);
    for (size_t i = 0; i < n; i++) {
        sbx_buf_printf(b, "%s%s . ", i ? ", " : "", a);
        put_range(b, r[i]);
    }
    sbx_buf_printf(b, " }\n");
}

static const struct {
    const char *set;
    unsigned flag;
} proxy_sets[] = {{"proxy_web", SBX_NET_PROXY_WEB}, {"proxy_all", SBX_NET_PROXY_ALL}};

/* The slot's sets listed, its elements found there deleted and p's added: for a slot whose
 * elements this process does not know. */
static int
replace_listed(const struct sbx_net_config *c, int k, uint32_t addr, const struct sbx_net_policy *p,
               struct sbx_error **err)
{
    struct sbx_buf b = {0};
    int rc = 0;
    for (int deny = 0; deny < 2 && rc == 0; deny++) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "list set inet %s %s_%d", c->tag, deny ? "deny" : "allow", k);
        json_t *doc = NULL;
        rc = list_json(cmd, &doc, err);
        size_t i;
        json_t *item;
        json_array_foreach (json_object_get(doc, "nftables"), i, item) {
            json_t *set = json_object_get(item, "set");
            if (set)
                put_deletes(&b, c, set, keep_other, &addr);
        }
        json_decref(doc);
    }
    if (rc == 0 && p) {
        char set[32];
        snprintf(set, sizeof(set), "allow_%d", k);
        put_adds(&b, c->tag, set, addr, p->allow, p->n_allow);
        snprintf(set, sizeof(set), "deny_%d", k);
        put_adds(&b, c->tag, set, addr, p->deny, p->n_deny);
    }
    /* The proxy sets are plain: adding then deleting removes an element whether it was there
     * or not, in the same transaction as the rest. */
    char a[SBX_IP4_STR_MAX];
    ip(addr, a);
    for (size_t i = 0; rc == 0 && i < 2; i++) {
        sbx_buf_printf(&b, "add element inet %s %s { %s }\ndelete element inet %s %s { %s }\n",
                       c->tag, proxy_sets[i].set, a, c->tag, proxy_sets[i].set, a);
        if (p && (p->flags & proxy_sets[i].flag))
            sbx_buf_printf(&b, "add element inet %s %s { %s }\n", c->tag, proxy_sets[i].set, a);
    }
    if (rc == 0)
        rc = run(&b, "set the egress rules", err);
    sbx_buf_fini(&b);
    return rc;
}

/* The elements o the slot is known to hold deleted and p's added, in one netlink batch (one
 * transaction, as above): nothing listed. */
static int
replace_known(const struct sbx_net_config *c, int k, uint32_t addr, const struct known *o,
              const struct sbx_net_policy *p, struct sbx_error **err)
{
    char allow[32], deny[32];
    snprintf(allow, sizeof(allow), "allow_%d", k);
    snprintf(deny, sizeof(deny), "deny_%d", k);
    unsigned flags = p ? p->flags : 0;
    struct sbx_nfnl_batch b;
    sbx_nfnl_begin(&b);
    /* Deletions first: an element both deleted and added comes back. */
    sbx_nfnl_elems(&b, false, c->tag, allow, addr, o->ranges, o->n_allow);
    sbx_nfnl_elems(&b, false, c->tag, deny, addr, o->ranges + o->n_allow, o->n_deny);
    for (size_t i = 0; i < 2; i++) {
        unsigned f = proxy_sets[i].flag;
        if ((o->flags & f) != (flags & f))
            sbx_nfnl_elems(&b, (flags & f) != 0, c->tag, proxy_sets[i].set, addr, NULL, 1);
    }
    if (p) {
        sbx_nfnl_elems(&b, true, c->tag, allow, addr, p->allow, p->n_allow);
        sbx_nfnl_elems(&b, true, c->tag, deny, addr, p->deny, p->n_deny);
    }
    return sbx_nfnl_commit(&b, err);
}

int
sbx_net_policy_set(const struct sbx_net_config *c, int slot, const struct sbx_net_policy *p,
                   struct sbx_error **err)
{
    if (slot < 0 || slot >= SBX_MAX_SANDBOXES) /* an index of known, and an address */
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad network slot %d", slot);
    uint32_t addr = sbx_netplan_sandbox(&c->plan, slot);
    int k = slot & (SHARDS - 1);
    int rc = known[slot].yes ? replace_known(c, k, addr, &known[slot], p, err)
                             : replace_listed(c, k, addr, p, err);
    /* One transaction: on success the slot holds exactly p's elements. On failure nothing
     * changed, but what is known may be what failed (an element gone): the next change lists. */
    if (rc == 0)
        remember(slot, p);
    else
        forget(slot);
    return rc;
}

struct keep_ctx {
    bool (*running)(int slot, void *ud);
    void *ud;
};

static bool
keep_running(const struct sbx_net_config *c, uint32_t sandbox, void *ud)
{
    struct keep_ctx *k = ud;
    int slot = sbx_netplan_slot(&c->plan, sandbox);
    return slot >= 0 && k->running(slot, k->ud);
}

int
sbx_nft_reconcile(const struct sbx_net_config *c, bool (*running)(int slot, void *ud), void *ud,
                  size_t *removed, struct sbx_error **err)
{
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "list table inet %s", c->tag);
    json_t *doc = NULL;
    if (list_json(cmd, &doc, err) < 0)
        return -1;
    struct keep_ctx k = {running, ud};
    struct sbx_buf b = {0};
    size_t i;
    json_t *item;
    json_array_foreach (json_object_get(doc, "nftables"), i, item) {
        json_t *set = json_object_get(item, "set");
        const char *name = json_string_value(json_object_get(set, "name"));
        if (name && (strncmp(name, "allow_", 6) == 0 || strncmp(name, "deny_", 5) == 0 ||
                     strncmp(name, "proxy_", 6) == 0))
            put_deletes(&b, c, set, keep_running, &k);
    }
    json_decref(doc);
    *removed = 0;
    for (size_t j = 0; j < b.len; j++)
        *removed += b.data[j] == '\n';
    int rc = b.len > 0 ? run(&b, "remove rules of sandboxes gone", err) : 0;
    for (int slot = 0; rc == 0 && slot < SBX_MAX_SANDBOXES; slot++)
        if (!running(slot, ud))
            remember(slot, NULL);
    sbx_buf_fini(&b);
    return rc;
}
