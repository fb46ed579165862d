/* The spawner: the only part of `sbx serve` that keeps host privileges (root). A
 * single-threaded process reachable only through the socketpair the supervisor made for it;
 * it executes the few requests of spawner/msg.h (spawn, destroy, stats, pause, volumes, the
 * network's rules, build steps) and nothing else, and keeps the layer store (built-in
 * templates' layers imported at start, unused ones removed).
 *
 * It trusts nothing it receives: every message is decoded and range-checked, every path is
 * built here from a validated id below its own state dir, a sandbox's layers are ones of its
 * own store named by key, and it acts only on sandboxes it knows (those with a dir in its state
 * dir, whose agents run in its own host uid block). What the operator chose (uid block, profile,
 * the front end's uid) comes from its own configuration, never from a message. */
#ifndef SBX_SPAWNER_H
#define SBX_SPAWNER_H

#include <stdbool.h>
#include <sys/types.h>

#include "sandbox/sandbox.h"

struct sbx_spawner_config {
    const char *state_dir;
    uid_t uid_base;     /* first host uid of this daemon's block (sbx_uid_block_claim) */
    uid_t frontend_uid; /* owner of the agents' sockets, so that the front end can connect */
    gid_t frontend_gid;
    bool relaxed;      /* --sandbox-profile relaxed */
    const void *agent; /* the ELF image sandboxes run as their agent (sbx carries it) */
    size_t agent_len;
    const char *layer_cache;          /* the host-wide cache of built layers (templates.sh) */
    const struct sbx_net_config *net; /* the sandbox network; NULL: loopback only */
    int lock_fd;  /* the supervisor's lock of the uid block: closed here, never passed on */
    int ready_fd; /* written once when the spawner is ready, then closed */
};

/* Serves requests on channel until the front end closes it; returns the exit status. */
int sbx_spawner_main(const struct sbx_spawner_config *cfg, int channel);

#endif
