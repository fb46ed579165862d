/* sbx: one binary, several modes. `sbx serve` is the daemon, `sbx agent` runs as PID 1
 * inside a sandbox (never by hand), every other verb is a client of the daemon's HTTP API. */
#include <stdio.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "daemon/daemon.h"

static void
usage(FILE *f)
{
    fputs("usage: sbx <command> [options]\n"
          "\n"
          "  serve               run the daemon (see sbx serve --help)\n"
          "  ls                  list sandboxes\n"
          "  create              create a sandbox and print its id\n"
          "  kill ID             kill a sandbox\n"
          "  exec ID -- CMD...   run a command in a sandbox, streaming its output\n"
          "  shell ID            open an interactive shell in a sandbox\n"
          "  template ls | rm NAME... | build DOCKERFILE --name NAME\n"
          "                      list, delete and build templates\n"
          "\n"
          "Clients read E2B_API_URL (default http://127.0.0.1:3000) and E2B_API_KEY.\n",
          f);
}

int
main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "serve") == 0)
        return sbx_daemon_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "agent") == 0)
        return sbx_agent_main(argc - 1, argv + 1);
    return sbx_cli_main(argc - 1, argv + 1);
}
