/* Dispatch of the client verbs. Each verb lives in its own file and prints its own errors:
 * this is the boundary where errors are reported, once. */
#include "cli/cli.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/client.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
} verbs[] = {
    {"ls", sbx_cli_ls},           {"create", sbx_cli_create},
    {"kill", sbx_cli_kill},       {"exec", sbx_cli_exec},
    {"shell", sbx_cli_shell},     {"keys", sbx_cli_keys},
    {"logs", sbx_cli_logs},       {"cp", sbx_cli_cp},
    {"inspect", sbx_cli_inspect}, {"stats", sbx_cli_stats},
    {"run", sbx_cli_run},         {"pause", sbx_cli_pause},
    {"resume", sbx_cli_resume},   {"snapshot", sbx_cli_snapshot},
    {"volume", sbx_cli_volume},   {"template", sbx_cli_template},
};

int
sbx_cli_main(int argc, char **argv)
{
    if (argc < 1 || argv[0] == NULL)
        return SBX_CLI_EXIT_USAGE;
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        if (strcmp(argv[0], verbs[i].name) != 0)
            continue;
        /* A closed stdout (`sbx ls | head`) must surface as EPIPE, not kill us halfway
         * through restoring the terminal. */
        signal(SIGPIPE, SIG_IGN);
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            fprintf(stderr, "sbx: cannot initialise libcurl\n");
            return SBX_CLI_EXIT_FAILURE;
        }
        int rc = verbs[i].fn(argc, argv);
        curl_global_cleanup();
        return rc;
    }
    fprintf(stderr, "sbx: unknown command '%s' (see sbx --help)\n", argv[0]);
    return SBX_CLI_EXIT_USAGE;
}
