/* sbx: one binary, several modes. `sbx serve` is the daemon, every other verb is a client of
 * the daemon's HTTP API. The agent that runs as PID 1 in every sandbox is a program of its
 * own (src/agent/main.c) whose image this binary carries (agent_image.S, see meson.build). */
#include <stdio.h>
#include <string.h>

#include "base/version.h"
#include "cli/cli.h"
#include "daemon/daemon.h"

extern const unsigned char sbx_agent_image[], sbx_agent_image_end[];

static void
usage(FILE *f)
{
    fputs("usage: sbx <command> [options]   (sbx <command> --help for its options)\n"
          "\n"
          "  serve                    run the daemon (see sbx serve --help)\n"
          "  ls                       list sandboxes\n"
          "  create                   create a sandbox and print its id\n"
          "  run [--rm] TEMPLATE -- CMD   create a sandbox and run CMD in it\n"
          "  exec [-i] ID -- CMD...   run a command in a sandbox, streaming its output\n"
          "  shell ID                 an interactive shell in a sandbox (a script if piped)\n"
          "  cp SRC DST               copy a file to or from a sandbox (ID:PATH)\n"
          "  logs [-f] ID             a sandbox's log, also after it ended\n"
          "  stats [ID...]            live CPU, memory and disk of sandboxes\n"
          "  inspect ID...            everything the daemon knows of sandboxes\n"
          "  pause ID                 pause a sandbox (--filesystem: keep only its disk)\n"
          "  resume ID                resume a paused sandbox\n"
          "  snapshot ID [NAME]       copy a sandbox's files into a snapshot, print its id\n"
          "  volume ls|create|rm      list, create or remove volumes\n"
          "  template ls|rm|build|import  list, delete, build and import templates\n"
          "  kill ID... | --all       kill sandboxes\n"
          "  keys create|ls|revoke    manage API keys (with an admin key)\n"
          "  --version                print the version\n"
          "\n"
          "IDs may be shortened to a unique beginning. Clients read E2B_API_URL (default\n"
          "http://127.0.0.1:3000) and E2B_API_KEY.\n",
          f);
}

int
main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("sbx %s\n", sbx_version());
        return 0;
    }
    if (strcmp(argv[1], "serve") == 0)
        return sbx_daemon_main(argc - 1, argv + 1, sbx_agent_image,
                               (size_t)(sbx_agent_image_end - sbx_agent_image));
    return sbx_cli_main(argc - 1, argv + 1);
}
