/* A small rtnetlink client for the sandbox network (net.c): the few link, address, route and
 * neighbour requests it needs, each acknowledged, and the two dumps (links, routes). One
 * request at a time on a socket of the caller's network namespace; no library (libmnl's
 * headers are not a dependency) and no state beyond the socket. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox/internal.h"

#define MSG_CAP 1024

struct msg {
    union {
        struct nlmsghdr h;
        char buf[MSG_CAP];
    };
};

int
sbx_rtnl_open(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -1;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void *
begin(struct msg *m, uint16_t type, uint16_t flags, size_t hdrlen)
{
    memset(m, 0, sizeof(*m));
    m->h.nlmsg_type = type;
    m->h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    m->h.nlmsg_len = NLMSG_LENGTH(hdrlen);
    return NLMSG_DATA(&m->h);
}

/* Every message here is a few hundred bytes at most: the attributes are fixed. */
static struct rtattr *
put(struct msg *m, uint16_t type, const void *data, size_t len)
{
    struct rtattr *a = (struct rtattr *)(m->buf + NLMSG_ALIGN(m->h.nlmsg_len));
    a->rta_type = type;
    a->rta_len = (unsigned short)RTA_LENGTH(len);
    if (len)
        memcpy(RTA_DATA(a), data, len);
    m->h.nlmsg_len = NLMSG_ALIGN(m->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
    return a;
}

static void
put_u32(struct msg *m, uint16_t type, uint32_t v)
{
    put(m, type, &v, sizeof(v));
}

static void
put_str(struct msg *m, uint16_t type, const char *s)
{
    put(m, type, s, strlen(s) + 1);
}

static struct rtattr *
nest(struct msg *m, uint16_t type)
{
    return put(m, type, NULL, 0);
}

static void
nest_end(struct msg *m, struct rtattr *a)
{
    a->rta_len = (unsigned short)(m->buf + m->h.nlmsg_len - (char *)a);
}

/* Sends m and reads what answers it: a request's acknowledgement, or a dump's messages, each
 * given to cb, up to its end. 0, or -1 with errno. */
static int
exchange(int fd, struct msg *m, int (*cb)(const struct nlmsghdr *h, void *ud), void *ud)
{
    static uint32_t seq;
    m->h.nlmsg_seq = ++seq;
    if (send(fd, m, m->h.nlmsg_len, 0) < 0)
        return -1;
    char buf[32 * 1024];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != m->h.nlmsg_seq)
                continue;
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                int e = -((const struct nlmsgerr *)NLMSG_DATA(h))->error;
                if (e == 0)
                    return 0;
                errno = e;
                return -1;
            }
            if (cb && cb(h, ud) < 0)
                return -1;
        }
    }
}

static int
talk(int fd, struct msg *m)
{
    return exchange(fd, m, NULL, NULL);
}

int
sbx_rtnl_dump(int fd, uint16_t type, int (*cb)(const struct nlmsghdr *h, void *ud), void *ud)
{
    struct msg m;
    struct rtgenmsg *g = begin(&m, type, NLM_F_DUMP, sizeof(struct rtgenmsg));
    g->rtgen_family = type == RTM_GETLINK ? AF_UNSPEC : AF_INET;
    m.h.nlmsg_flags &= (uint16_t)~NLM_F_ACK; /* a dump ends with NLMSG_DONE */
    return exchange(fd, &m, cb, ud);
}

/* One queue each way, asked for at creation. Without these attributes a veth is made with a
 * queue per CPU and then cut down to one once registered (drivers/net/veth.c,
 * veth_init_queues), and cutting the TX queues of a registered device waits for an RCU grace
 * period (netif_set_real_num_tx_queues -> synchronize_net), twice per pair: measured ~2.5 ms
 * of every spawn's setup blocked on the development VM. The result is the same device. */
static void
one_queue(struct msg *m)
{
    put_u32(m, IFLA_NUM_TX_QUEUES, 1);
    put_u32(m, IFLA_NUM_RX_QUEUES, 1);
}

int
sbx_rtnl_veth_create(int fd, const char *name, const uint8_t mac[6], const char *peer,
                     const uint8_t peer_mac[6], int peer_netns)
{
    struct msg m;
    begin(&m, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof(struct ifinfomsg));
    put_str(&m, IFLA_IFNAME, name);
    put(&m, IFLA_ADDRESS, mac, 6);
    one_queue(&m);
    struct rtattr *info = nest(&m, IFLA_LINKINFO);
    put_str(&m, IFLA_INFO_KIND, "veth");
    struct rtattr *data = nest(&m, IFLA_INFO_DATA);
    struct rtattr *p = nest(&m, VETH_INFO_PEER);
    m.h.nlmsg_len += sizeof(struct ifinfomsg); /* the peer's own (empty) ifinfomsg */
    put_str(&m, IFLA_IFNAME, peer);
    put(&m, IFLA_ADDRESS, peer_mac, 6);
    one_queue(&m);
    put_u32(&m, IFLA_NET_NS_FD, (uint32_t)peer_netns);
    nest_end(&m, p);
    nest_end(&m, data);
    nest_end(&m, info);
    return talk(fd, &m);
}

int
sbx_rtnl_link_up(int fd, int ifindex)
{
    struct msg m;
    struct ifinfomsg *ifi = begin(&m, RTM_NEWLINK, 0, sizeof(*ifi));
    ifi->ifi_index = ifindex;
    ifi->ifi_flags = IFF_UP;
    ifi->ifi_change = IFF_UP;
    return talk(fd, &m);
}

int
sbx_rtnl_link_del(int fd, const char *name)
{
    struct msg m;
    begin(&m, RTM_DELLINK, 0, sizeof(struct ifinfomsg));
    put_str(&m, IFLA_IFNAME, name);
    return talk(fd, &m);
}

int
sbx_rtnl_addr_add(int fd, int ifindex, uint32_t addr)
{
    struct msg m;
    struct ifaddrmsg *ifa = begin(&m, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, sizeof(*ifa));
    ifa->ifa_family = AF_INET;
    ifa->ifa_prefixlen = 32;
    ifa->ifa_index = (unsigned)ifindex;
    uint32_t a = htonl(addr);
    put(&m, IFA_LOCAL, &a, 4);
    put(&m, IFA_ADDRESS, &a, 4);
    return talk(fd, &m);
}

int
sbx_rtnl_route_add(int fd, uint32_t dst, int prefix, uint32_t gateway, int ifindex)
{
    struct msg m;
    struct rtmsg *r = begin(&m, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, sizeof(*r));
    r->rtm_family = AF_INET;
    r->rtm_dst_len = (unsigned char)prefix;
    r->rtm_table = RT_TABLE_MAIN;
    r->rtm_protocol = RTPROT_STATIC;
    r->rtm_type = RTN_UNICAST;
    r->rtm_scope = gateway ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK;
    if (prefix > 0) {
        uint32_t d = htonl(dst);
        put(&m, RTA_DST, &d, 4);
    }
    if (gateway) {
        uint32_t g = htonl(gateway);
        put(&m, RTA_GATEWAY, &g, 4);
    }
    put_u32(&m, RTA_OIF, (uint32_t)ifindex);
    return talk(fd, &m);
}

int
sbx_rtnl_neigh_add(int fd, int ifindex, uint32_t addr, const uint8_t mac[6])
{
    struct msg m;
    struct ndmsg *nd = begin(&m, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, sizeof(*nd));
    nd->ndm_family = AF_INET;
    nd->ndm_ifindex = ifindex;
    nd->ndm_state = NUD_PERMANENT;
    uint32_t a = htonl(addr);
    put(&m, NDA_DST, &a, 4);
    put(&m, NDA_LLADDR, mac, 6);
    return talk(fd, &m);
}

const void *
sbx_rtnl_attr(const struct nlmsghdr *h, size_t hdrlen, unsigned short type, size_t *len)
{
    int n = (int)h->nlmsg_len - (int)NLMSG_LENGTH(hdrlen);
    for (const struct rtattr *a =
             (const struct rtattr *)((const char *)NLMSG_DATA(h) + NLMSG_ALIGN(hdrlen));
         RTA_OK(a, n); a = RTA_NEXT(a, n)) {
        if (a->rta_type == type) {
            if (len)
                *len = RTA_PAYLOAD(a);
            return RTA_DATA(a);
        }
    }
    return NULL;
}
