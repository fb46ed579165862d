/* Client verbs (ls, create, kill, exec, shell, pause, resume, volume): plain HTTP clients of
 * the daemon's API. */
#ifndef SBX_CLI_H
#define SBX_CLI_H

int sbx_cli_main(int argc, char **argv);

#endif
