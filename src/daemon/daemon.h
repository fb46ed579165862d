/* `sbx serve`: the host daemon (control plane, router and proxy, sandbox lifecycle). */
#ifndef SBX_DAEMON_H
#define SBX_DAEMON_H

int sbx_daemon_main(int argc, char **argv);

#endif
