/* The spawner's part of the sandbox network (net.c): setting it up at start, and the
 * requests that change it. Internal to src/spawner/. */
#ifndef SBX_SPAWNER_NET_H
#define SBX_SPAWNER_NET_H

#include <stdbool.h>

#include "base/error.h"
#include "sandbox/sandbox.h"
#include "spawner/msg.h"

/* At start, after the scan of the state dir: the host's side of the network (idempotent) and
 * the removal of what sandboxes that no longer run left behind. */
int sbx_spawner_net_start(const struct sbx_net_config *net, bool (*running)(int slot, void *ud),
                          void *ud, struct sbx_error **err);
/* The egress rules of m (a SPAWN or NET_POLICY) become those of slot. */
int sbx_spawner_net_policy(const struct sbx_net_config *net, int slot,
                           const struct sbx_spawner_msg *m, struct sbx_error **err);
/* NET_PORTS. */
int sbx_spawner_net_ports(const struct sbx_net_config *net, const struct sbx_spawner_msg *m,
                          struct sbx_error **err);

#endif
