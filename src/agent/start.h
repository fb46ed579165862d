/* A template's start and ready commands in each of its sandboxes (start.c). */
#ifndef SBX_AGENT_START_H
#define SBX_AGENT_START_H

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "agent/process.h"

/* spec: the config's "start" {cmd, ready, user, cwd, env}, or NULL (nothing to start: ready
 * at once). Starts the command and the ready checks. */
void sbx_agent_start_init(uv_loop_t *loop, const struct sbx_agent_config *cfg, json_t *spec);
/* cb once the sandbox is ready (ok) or never will be (why says why); at once if known. */
void sbx_agent_start_when_ready(void (*cb)(void *ud, bool ok, const char *why), void *ud);

#endif
