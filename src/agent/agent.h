/* `sbx agent`: PID 1 of a sandbox. Serves the envd-compatible API (process, filesystem,
 * /files, /health) and the code-interpreter API on one HTTP stack: on the unix socket the
 * daemon handed over as fd 3, and on ports 49983 and 49999 inside the sandbox.
 * Reads its JSON config from fd 4: {"accessToken":?str, "trafficAccessToken":?str,
 * "envVars":{...}, "sandboxId":str, "codeInterpreter":?bool, "memoryMiB":?int, "pooled":?bool,
 * "start":?{"cmd", "ready", "user", "cwd", "env"}, "defaultUser":?str, "defaultWorkdir":?str,
 * "volumeService":?bool}. */
#ifndef SBX_AGENT_H
#define SBX_AGENT_H

#define SBX_AGENT_LISTEN_FD 3
#define SBX_AGENT_CONFIG_FD 4
#define SBX_AGENT_OOM_FD    5 /* read-only: the sandbox cgroup's OOM kill counter */

/* argv[1] "--step": run one build step instead (step.c). */
int sbx_agent_main(int argc, char **argv);
int sbx_agent_step_main(void);

struct sbx_http_req;
/* ports.c: CONNECT 127.0.0.1:<port> from the daemon: a tunnel to that port inside. */
void sbx_agent_connect_port(struct sbx_http_req *req);

#endif
