/* The sandbox network, host side and inside each sandbox's network namespace:
 *
 *   host                                           sandbox slot s (its own netns)
 *   <tag>-<s>   veth, G/32        <──────────────>  eth0  A/32 (A = the slot's address)
 *               route A/32 dev <tag>-<s>                  route G dev eth0 scope link
 *               neighbour A -> eth0's MAC (permanent)      default via G
 *                                                          neighbour G -> <tag>-<s>'s MAC
 *
 * Every sandbox's link holds the same gateway address G (the kernel keeps a local route per
 * link, and the address stays local as long as one link has it).
 *
 * Routed point-to-point links, no bridge: sandboxes share no link, so no ARP or neighbour
 * trick can reach another one, and with permanent neighbour entries on both ends nothing a
 * sandbox sends rewrites the host's idea of who has which address. Filtering and NAT are in
 * nft.c. IPv6 is off on both ends of every link.
 *
 * Everything is configured by the spawner: inside the namespace through a netlink socket
 * opened there (setns for the time of the call), so the sandbox never needs CAP_NET_ADMIN.
 * A sandbox's interfaces go with its namespace when its last process exits; what a crash
 * leaves behind is removed by sbx_net_reconcile. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "sandbox/internal.h"

static struct {
    int rtnl;    /* in the host's network namespace */
    int host_ns; /* the spawner's own network namespace, to come back to */
} net = {-1, -1};

int
sbx_net_config_init(struct sbx_net_config *c, const struct sbx_netplan *plan, int uid_block,
                    const struct sbx_ip4_range *opened, size_t n_opened, struct sbx_error **err)
{
    memset(c, 0, sizeof(*c));
    c->plan = *plan;
    snprintf(c->tag, sizeof(c->tag), "sbx%d", uid_block);
    struct sbx_ip4_range open[SBX_NET_MAX_OPENED];
    if (n_opened > SBX_NET_MAX_OPENED)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "at most %d opened ranges",
                             SBX_NET_MAX_OPENED);
    if (n_opened > 0) /* memcpy's source must not be NULL, even for 0 bytes */
        memcpy(open, opened, n_opened * sizeof(*open));
    n_opened = sbx_ip4_ranges_normalize(open, n_opened);
    int n = sbx_ip4_ranges_subtract(sbx_ip4_always_blocked, sbx_ip4_n_always_blocked, open,
                                    n_opened, c->blocked, SBX_NET_MAX_BLOCKED - 1);
    if (n < 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "too many opened ranges");
    /* Sandboxes never reach each other, whatever range they live in. */
    c->blocked[n++] = sbx_netplan_range(plan);
    c->n_blocked = sbx_ip4_ranges_normalize(c->blocked, (size_t)n);
    return 0;
}

void
sbx_net_ifname(const struct sbx_net_config *c, int slot, char out[IF_NAMESIZE])
{
    snprintf(out, IF_NAMESIZE, "%s-%d", c->tag, slot);
}

/* The slot of one of our sandbox interfaces, or -1 for any other name. */
static int
slot_of_ifname(const struct sbx_net_config *c, const char *name)
{
    size_t t = strlen(c->tag);
    if (strncmp(name, c->tag, t) != 0 || name[t] != '-')
        return -1;
    char *end = NULL;
    long slot = strtol(name + t + 1, &end, 10);
    if (end == name + t + 1 || *end != '\0' || slot < 0 || slot >= SBX_MAX_SANDBOXES)
        return -1;
    return (int)slot;
}

/* Writes a sysctl of the calling thread's network namespace. */
static int
write_sysctl(const char *path, const char *value)
{
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    return write(fd, value, strlen(value)) == (ssize_t)strlen(value) ? 0 : -1;
}

static int
disable_ipv6(const char *ifname)
{
    char path[128];
    snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/disable_ipv6", ifname);
    /* A kernel without IPv6 has nothing to disable. */
    return write_sysctl(path, "1") < 0 && errno != ENOENT ? -1 : 0;
}

/* ---- the host's routes ---- */

struct route_check {
    const struct sbx_net_config *c;
    char clash[128];
};

static int
check_route(const struct nlmsghdr *h, void *ud)
{
    struct route_check *rc = ud;
    const struct rtmsg *r = NLMSG_DATA(h);
    if (h->nlmsg_type != RTM_NEWROUTE || r->rtm_family != AF_INET || r->rtm_dst_len == 0 ||
        rc->clash[0])
        return 0;
    const uint32_t *dst = sbx_rtnl_attr(h, sizeof(*r), RTA_DST, NULL);
    const uint32_t *oif = sbx_rtnl_attr(h, sizeof(*r), RTA_OIF, NULL);
    char dev[IF_NAMESIZE] = "";
    if (oif && if_indextoname(*oif, dev) == NULL)
        return 0; /* its interface is gone (a sandbox's veth torn down as we read): so is it */
    if (oif && slot_of_ifname(rc->c, dev) >= 0)
        return 0; /* ours, from an earlier run */
    if (dst == NULL || (r->rtm_type != RTN_UNICAST && r->rtm_type != RTN_LOCAL))
        return 0;
    uint32_t mask = r->rtm_dst_len >= 32 ? ~0u : ~(~0u >> r->rtm_dst_len);
    struct sbx_ip4_range route = {ntohl(*dst) & mask, (ntohl(*dst) & mask) | ~mask};
    struct sbx_ip4_range mine = sbx_netplan_range(&rc->c->plan);
    if (sbx_ip4_ranges_overlap(&mine, 1, route)) {
        char a[SBX_IP4_STR_MAX];
        sbx_ip4_format(route.first, a);
        snprintf(rc->clash, sizeof(rc->clash), "%s %s/%d%s%s",
                 r->rtm_type == RTN_LOCAL ? "local address" : "route to", a, r->rtm_dst_len,
                 dev[0] ? " dev " : "", dev);
    }
    return 0;
}

int
sbx_net_check_host(const struct sbx_net_config *c, struct sbx_error **err)
{
    _cleanup_close_ int fd = sbx_rtnl_open();
    struct route_check rc = {.c = c};
    if (fd < 0 || sbx_rtnl_dump(fd, RTM_GETROUTE, check_route, &rc) < 0)
        return sbx_error_sys(err, errno, "read the host's routes");
    if (rc.clash[0]) {
        char a[SBX_IP4_STR_MAX];
        sbx_ip4_format(c->plan.base, a);
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                             "the sandbox network %s/%d collides with the host's %s: choose a "
                             "free private range with --network-cidr",
                             a, c->plan.prefix, rc.clash);
    }
    return 0;
}

/* ---- the host side ---- */

int
sbx_net_host_init(const struct sbx_net_config *c, char *desc, size_t n, struct sbx_error **err)
{
    desc[0] = '\0';
    if (net.rtnl < 0 && (net.rtnl = sbx_rtnl_open()) < 0)
        return sbx_error_sys(err, errno, "netlink socket");
    if (net.host_ns < 0 && (net.host_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
        return sbx_error_sys(err, errno, "open /proc/self/ns/net");
    /* Sandboxes reach the internet through the host: it must forward. */
    char fwd[8] = "";
    if (sbx_fs_read_small("/proc/sys/net/ipv4/ip_forward", fwd, sizeof(fwd)) < 0)
        return sbx_error_sys(err, errno, "read net.ipv4.ip_forward");
    if (fwd[0] != '1') {
        if (write_sysctl("/proc/sys/net/ipv4/ip_forward", "1") < 0)
            return sbx_error_sys(err, errno, "turn on net.ipv4.ip_forward");
        snprintf(desc, n, "net.ipv4.ip_forward=0->1");
    }
    return sbx_nft_init(c, err);
}

struct reconcile {
    const struct sbx_net_config *c;
    bool (*running)(int slot, void *ud);
    void *ud;
    char stale[64][IF_NAMESIZE];
    size_t n;
};

static int
find_stale_link(const struct nlmsghdr *h, void *ud)
{
    struct reconcile *r = ud;
    const char *name = sbx_rtnl_attr(h, sizeof(struct ifinfomsg), IFLA_IFNAME, NULL);
    int slot = name && h->nlmsg_type == RTM_NEWLINK ? slot_of_ifname(r->c, name) : -1;
    if (slot >= 0 && !r->running(slot, r->ud) && r->n < sizeof(r->stale) / sizeof(r->stale[0]))
        snprintf(r->stale[r->n++], IF_NAMESIZE, "%s", name);
    return 0;
}

int
sbx_net_reconcile(const struct sbx_net_config *c, bool (*running)(int slot, void *ud), void *ud,
                  char *desc, size_t n, struct sbx_error **err)
{
    size_t links = 0, elems = 0;
    for (;;) { /* in batches of 64 (a dump must be read to its end before other requests) */
        struct reconcile r = {.c = c, .running = running, .ud = ud};
        if (sbx_rtnl_dump(net.rtnl, RTM_GETLINK, find_stale_link, &r) < 0)
            return sbx_error_sys(err, errno, "list interfaces");
        for (size_t i = 0; i < r.n; i++)
            if (sbx_rtnl_link_del(net.rtnl, r.stale[i]) == 0)
                links++;
        if (r.n < sizeof(r.stale) / sizeof(r.stale[0]))
            break;
    }
    if (sbx_nft_reconcile(c, running, ud, &elems, err) < 0)
        return -1;
    snprintf(desc, n, "stale_links=%zu stale_rule_sets=%zu", links, elems);
    return 0;
}

/* ---- one sandbox ---- */

static void
macs(int slot, uint8_t host[6], uint8_t peer[6])
{
    /* Locally administered, unicast; unique per slot (each pair is a link of its own). */
    const uint8_t h[6] = {0x02, 0x5b, 0x00, 0x01, (uint8_t)(slot >> 8), (uint8_t)slot};
    const uint8_t p[6] = {0x02, 0x5b, 0x00, 0x02, (uint8_t)(slot >> 8), (uint8_t)slot};
    memcpy(host, h, 6);
    memcpy(peer, p, 6);
}

/* Inside the sandbox's namespace (the calling thread's, for now): eth0's address, routes
 * and the gateway's neighbour entry. */
static int
configure_inside(const struct sbx_net_config *c, uint32_t addr, const uint8_t host_mac[6],
                 const char **what)
{
    uint32_t gw = sbx_netplan_gateway(&c->plan);
    *what = "netlink in the sandbox";
    _cleanup_close_ int fd = sbx_rtnl_open();
    if (fd < 0)
        return -1;
    int eth0 = (int)if_nametoindex("eth0");
    *what = "configure eth0";
    if (eth0 == 0 || disable_ipv6("eth0") < 0 || sbx_rtnl_addr_add(fd, eth0, addr) < 0 ||
        sbx_rtnl_link_up(fd, eth0) < 0)
        return -1;
    *what = "sandbox routes";
    if (sbx_rtnl_neigh_add(fd, eth0, gw, host_mac) < 0 ||
        sbx_rtnl_route_add(fd, gw, 32, 0, eth0) < 0 || sbx_rtnl_route_add(fd, 0, 0, gw, eth0) < 0)
        return -1;
    return 0;
}

int
sbx_net_attach(const struct sbx_net_config *c, int slot, pid_t pid, struct sbx_error **err)
{
    char host[IF_NAMESIZE], path[64];
    uint8_t host_mac[6], peer_mac[6];
    uint32_t addr = sbx_netplan_sandbox(&c->plan, slot);
    sbx_net_ifname(c, slot, host);
    macs(slot, host_mac, peer_mac);
    snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
    _cleanup_close_ int ns = open(path, O_RDONLY | O_CLOEXEC);
    if (ns < 0)
        return sbx_error_sys(err, errno, "open %s", path);
    int rc = sbx_rtnl_veth_create(net.rtnl, host, host_mac, "eth0", peer_mac, ns);
    if (rc < 0 && errno == EEXIST) {
        /* The last sandbox of this slot is gone but its namespace, which takes its
         * interfaces along, is still being torn down by the kernel. */
        sbx_rtnl_link_del(net.rtnl, host);
        rc = sbx_rtnl_veth_create(net.rtnl, host, host_mac, "eth0", peer_mac, ns);
    }
    if (rc < 0)
        return sbx_error_sys(err, errno, "create the interface %s", host);
    int ifindex = (int)if_nametoindex(host);
    if (ifindex == 0 || disable_ipv6(host) < 0 ||
        sbx_rtnl_addr_add(net.rtnl, ifindex, sbx_netplan_gateway(&c->plan)) < 0 ||
        sbx_rtnl_link_up(net.rtnl, ifindex) < 0 ||
        sbx_rtnl_neigh_add(net.rtnl, ifindex, addr, peer_mac) < 0 ||
        sbx_rtnl_route_add(net.rtnl, addr, 32, 0, ifindex) < 0)
        return sbx_error_sys(err, errno, "configure the interface %s", host);
    if (setns(ns, CLONE_NEWNET) < 0)
        return sbx_error_sys(err, errno, "enter the sandbox's network namespace");
    const char *what = "";
    rc = configure_inside(c, addr, host_mac, &what);
    int e = errno;
    /* Staying in the sandbox's namespace would put every later sandbox's setup there. */
    if (setns(net.host_ns, CLONE_NEWNET) < 0)
        abort();
    if (rc < 0)
        return sbx_error_sys(err, e, "%s", what);
    return 0;
}
