/* The spawner's network requests. The rules come from the front end, so they are checked
 * here as much as the decoder already did (normalised lists) and applied only to the slot of
 * a sandbox the spawner itself knows: never an address the message names. */
#include "spawner/net.h"

#include <time.h>

#include "base/log.h"

static int
need_network(const struct sbx_net_config *net, struct sbx_error **err)
{
    if (net == NULL)
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                             "sandbox networking is off (sbx serve --network-cidr off)");
    return 0;
}

int
sbx_spawner_net_start(const struct sbx_net_config *net, bool (*running)(int slot, void *ud),
                      void *ud, struct sbx_error **err)
{
    char changed[128], cleaned[128];
    if (sbx_net_host_init(net, changed, sizeof(changed), err) < 0 ||
        sbx_net_reconcile(net, running, ud, cleaned, sizeof(cleaned), err) < 0)
        return sbx_error_prefix(err, "sandbox network");
    char gw[SBX_IP4_STR_MAX], base[SBX_IP4_STR_MAX];
    sbx_ip4_format(sbx_netplan_gateway(&net->plan), gw);
    sbx_ip4_format(net->plan.base, base);
    sbx_log_info("network", "cidr=%s/%d gateway=%s table=inet/%s %s", base, net->plan.prefix, gw,
                 net->tag, cleaned);
    /* The one host-wide setting we change: say so. */
    if (changed[0])
        sbx_log_warn("network",
                     "host_setting=\"%s\" reason=\"sandboxes reach the internet "
                     "through this host\"",
                     changed);
    return 0;
}

int
sbx_spawner_net_policy(const struct sbx_net_config *net, int slot, const struct sbx_spawner_msg *m,
                       struct sbx_error **err)
{
    if (need_network(net, err) < 0)
        return -1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct sbx_net_policy p = {
        .allow = m->net_allow,
        .n_allow = m->n_net_allow,
        .deny = m->net_deny,
        .n_deny = m->n_net_deny,
        .flags = (unsigned)m->net_flags,
    };
    int rc = sbx_net_policy_set(net, slot, &p, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* Every change of a sandbox's reach is worth a line, with what it cost. */
    sbx_log_info("net_policy", "sandbox=%s allow=%u deny=%u flags=%llu ok=%d us=%lld",
                 m->id[0] ? m->id : "-", m->n_net_allow, m->n_net_deny,
                 (unsigned long long)m->net_flags, rc == 0,
                 (long long)((t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000));
    return rc;
}

int
sbx_spawner_net_ports(const struct sbx_net_config *net, const struct sbx_spawner_msg *m,
                      struct sbx_error **err)
{
    if (need_network(net, err) < 0)
        return -1;
    return sbx_net_set_ports(net, (uint16_t)m->dns_port, (uint16_t)m->proxy_port, err);
}
