/* The code-interpreter API of the agent (E2B's Jupyter server, port 49999): POST /execute
 * streaming NDJSON, /contexts (create, list, delete, restart) and GET /health "OK".
 *
 * Owns the contexts (one Jupyter kernel each, run as SBX_INTERP_KERNEL_USER), the per-context
 * queue of executions, per-run environment variables, keepalives, and interrupting the kernel
 * when a client goes away. Kernels themselves live in src/jupyter/. Never reads the agent config
 * file or opens listeners. */
#ifndef SBX_AGENT_INTERPRETER_H
#define SBX_AGENT_INTERPRETER_H

#include <stdbool.h>
#include <uv.h>

#include "agent/process.h"
#include "base/error.h"
#include "http/http.h"

#define SBX_INTERP_KEEPALIVE_MS       5000  /* NDJSON keepalive after this much silence */
#define SBX_INTERP_INTERRUPT_GRACE_MS 10000 /* then an interrupted kernel is restarted */
#define SBX_INTERP_MAX_QUEUED         256   /* queued executions per context */
#define SBX_INTERP_DEFAULT_CWD        "/home/user"
/* Kernels run as sandbox root, as E2B's do (its Jupyter server and kernels run as root): code
 * run through the interpreter may use any directory, e.g. a context with cwd /root. Sandbox
 * root is uid 0 of the sandbox's user namespace only, with no host privilege; every user of the
 * sandbox can become it anyway (passwordless sudo, as on E2B); and it cannot reach the agent
 * (non-dumpable, no CAP_SYS_PTRACE: SECURITY.md, 10). Commands keep running as `user`. */
#define SBX_INTERP_KERNEL_USER "root"

/* Creates the default contexts and starts the default Python kernel, so that the first
 * run_code does not pay its start. Call after sbx_agent_process_init (kernels are reaped by
 * its SIGCHLD handler). cfg must outlive the service. Idempotent. */
int sbx_interp_init(uv_loop_t *loop, const struct sbx_agent_config *cfg, struct sbx_error **err);

/* For a pooled sandbox: cb(ud, ok) once the default Python kernel is ready (ok), or failed
 * to start; at once if there is none to wait for. */
void sbx_interp_when_warm(void (*cb)(void *ud, bool ok), void *ud);
/* cfg->env_vars changed (POST /init): kernels already running get them before any further
 * execution. */
void sbx_interp_env_changed(void);

/* Serves req if its path belongs to the interpreter (/execute, /contexts..., /health);
 * returns false otherwise. Does its own auth in a secure sandbox: /execute needs the access
 * token (X-Access-Token), /contexts... that or the traffic access token
 * (E2B-Traffic-Access-Token), the only credential the SDKs send there; /health needs none and
 * has no side effect. Calls sbx_interp_init on the first authorized use if nobody did. */
bool sbx_interp_handle(struct sbx_http_req *req, const struct sbx_agent_config *cfg);

#endif
