/* Template builds (builder.c): the steps of a build run one after the other in build
 * sandboxes, each making a layer; the build's status and logs are in the store. */
#ifndef SBX_DAEMON_BUILDER_H
#define SBX_DAEMON_BUILDER_H

#include <jansson.h>
#include <stdbool.h>

#include "base/error.h"
#include "daemon/templates.h"
#include "store/store.h"

/* Starts the build rec (status waiting, in the store) of definition body: checks the
 * definition (SBX_INVALID_ARGUMENT) and the number of builds running (RESOURCE_EXHAUSTED),
 * marks it building, and runs it from the loop's next turn. Takes rec's strings. */
int sbx_builder_start(struct sbx_build_rec *rec, json_t *body, struct sbx_error **err);
/* Has the spawner remove the layers no template of the store, built-in template or running
 * sandbox uses (after a start, and after a template is deleted). */
void sbx_builder_collect_layers(void);
/* Forgets builds and layers unused for SBX_BUILD_KEEP_MS (sbx_store_builds_expire), then
 * collects the layers' files. */
void sbx_builder_expire(void);
/* Whether slot is that of a build running: its step sandboxes, on the sandbox network with no
 * egress rules, may use the DNS forwarder (dns.c). */
bool sbx_builder_has_slot(int slot);

#endif
