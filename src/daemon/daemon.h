/* `sbx serve`: the host daemon (control plane, router and proxy, sandbox lifecycle). */
#ifndef SBX_DAEMON_H
#define SBX_DAEMON_H

#include <stddef.h>

/* agent: the ELF image that sandboxes run as PID 1 (sbx-agent, carried inside sbx). */
int sbx_daemon_main(int argc, char **argv, const void *agent, size_t agent_len);

#endif
