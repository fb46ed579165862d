/* sbx-agent: PID 1 of every sandbox, never run by hand. It is linked on its own, against
 * only the libraries the agent uses, so that a sandbox maps no TLS, SQLite, nftables or HTTP
 * client code: each agent starts faster, holds fewer private pages and carries less that an
 * attacker inside could use. sbx carries its image (meson.build) and the spawner runs it from
 * a sealed memfd. Its argv is {"sbx", "agent"}, as `ps` shows it in a sandbox. */
#include "agent/agent.h"

int
main(int argc, char **argv)
{
    return sbx_agent_main(argc - 1, argv + 1);
}
