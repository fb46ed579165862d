/* The agent's log, kept in a fixed-size ring in its own memory (see log_ring.c). */
#ifndef SBX_AGENT_LOG_RING_H
#define SBX_AGENT_LOG_RING_H

#include <stdbool.h>

#include "http/http.h"

/* Sends every sbx_log line of this process to the ring. */
void sbx_agent_log_init(void);
/* Forgets every line so far (a pooled sandbox's start, before its client adopted it). */
void sbx_agent_log_reset(void);
/* Answers 200 text/plain with the lines the ring holds, oldest first. */
void sbx_agent_log_respond(struct sbx_http_req *req);

#endif
