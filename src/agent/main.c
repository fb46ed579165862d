/* sbx-agent: PID 1 of every sandbox, never run by hand. It is linked on its own, against
 * only the libraries the agent uses, so that a sandbox maps no SQLite, nftables or HTTP client
 * code, and OpenSSL only once it needs it (src/agent/lazy_openssl.c): each agent starts
 * faster, holds fewer private pages and carries less that an attacker inside could use. sbx
 * carries its image (meson.build) and the spawner runs it from the agent runtime
 * (src/sandbox/runtime.c) through the runtime's own loader. Its argv is {"sbx", "agent"}; its
 * name, which the loader's file gave it, is "sbx" again. */
#include <sys/prctl.h>

#include "agent/agent.h"

int
main(int argc, char **argv)
{
    prctl(PR_SET_NAME, "sbx"); /* what `ps -o comm` and `pgrep` see, not "ld.so" */
    return sbx_agent_main(argc - 1, argv + 1);
}
