/* sbx shell: an interactive login shell in a sandbox over a PTY.
 *
 * Two threads, each with its own libcurl handle. The main thread holds the
 * process.Process/Start stream and copies PTY output to stdout until the end event. The
 * input thread (input.c) starts once the start event has named the pid; it forwards stdin
 * bytes with SendInput and terminal resizes (SIGWINCH) with Update. The local terminal is in
 * raw mode meanwhile, so ^C, ^D and ^Z travel to the sandbox as bytes; it is restored on
 * every way out: normal end, error, SIGTERM/SIGHUP, and exit(). When stdin is not a
 * terminal, the shell reads it as a script instead (run_piped). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#include "base/base64.h"
#include "base/cleanup.h"
#include "cli/client.h"

static const char usage[] =
    "usage: sbx shell [--user USER] [--cwd DIR] [--api-url URL] [--api-key KEY] ID\n"
    "Opens an interactive login shell in the sandbox; exits with the shell's status.\n";

/* The terminal state to restore; touched by both threads and by atexit. */
static struct termios saved_termios;
static atomic_bool raw_mode;

static void
restore_terminal(void)
{
    if (atomic_exchange(&raw_mode, false))
        tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_termios);
}

static int
enter_raw_mode(struct sbx_error **err)
{
    if (!isatty(STDIN_FILENO))
        return 0; /* piped input: forward it as is */
    if (tcgetattr(STDIN_FILENO, &saved_termios) < 0)
        return sbx_error_sys(err, errno, "tcgetattr");
    struct termios raw = saved_termios;
    cfmakeraw(&raw);
    atomic_store(&raw_mode, true);
    atexit(restore_terminal);
    if (tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) < 0) {
        atomic_store(&raw_mode, false);
        return sbx_error_sys(err, errno, "tcsetattr");
    }
    return 0;
}

static void
terminal_size(int *cols, int *rows)
{
    struct winsize ws = {0};
    if ((ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0) &&
        (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0)) {
        ws.ws_col = 80;
        ws.ws_row = 24;
    }
    *cols = ws.ws_col;
    *rows = ws.ws_row ? ws.ws_row : 24;
}

/* SIGWINCH: the terminal's new size goes to the PTY. */
static void
send_resize(struct sbx_cli_rpc *rpc, uint32_t pid)
{
    int cols, rows;
    terminal_size(&cols, &rows);
    json_t *req = json_pack("{s:{s:i}, s:{s:{s:i, s:i}}}", "process", "pid", (json_int_t)pid, "pty",
                            "size", "cols", cols, "rows", rows);
    if (req == NULL)
        return;
    struct sbx_error *err = NULL;
    sbx_cli_rpc_unary(rpc, "process.Process/Update", req, NULL, &err);
    json_decref(req);
    sbx_error_free(err);
}

static json_t *
start_request(const char *cwd)
{
    const char *term = getenv("TERM");
    int cols, rows;
    terminal_size(&cols, &rows);
    /* What the SDKs' pty.create sends. No "stdin" key: a PTY always takes input. */
    json_t *process = json_pack("{s:s, s:[s, s], s:{s:s, s:s, s:s}}", "cmd", "/bin/bash", "args",
                                "-i", "-l", "envs", "TERM", term && *term ? term : "xterm-256color",
                                "LANG", "C.UTF-8", "LC_ALL", "C.UTF-8");
    if (process == NULL)
        return NULL;
    if (cwd != NULL)
        json_object_set_new(process, "cwd", json_string(cwd));
    return json_pack("{s:o, s:{s:{s:i, s:i}}}", "process", process, "pty", "size", "cols", cols,
                     "rows", rows);
}

enum { OPT_USER = 1, OPT_CWD };

struct shell_args {
    const char *user;
    const char *cwd;
};

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct shell_args *a = ud;
    if (opt == OPT_USER) {
        if (*arg == '\0' || strchr(arg, ':') != NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid --user '%s'", arg);
        a->user = arg;
        return 0;
    }
    if (opt == OPT_CWD) {
        a->cwd = arg;
        return 0;
    }
    return -1;
}

/* The interactive shell over a PTY. The signals are blocked before the input thread exists,
 * so both threads inherit the mask and see them only through the signalfd. */
static int
run_pty(const struct sbx_cli_config *cfg, const struct sbx_cli_sandbox *sb, const char *cwd,
        struct sbx_cli_run *run, struct sbx_error **err)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGWINCH);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGQUIT);
    if ((errno = pthread_sigmask(SIG_BLOCK, &mask, NULL)) != 0)
        return sbx_error_sys(err, errno, "pthread_sigmask");
    struct sbx_cli_input in = {.cfg = cfg,
                               .sb = sb,
                               .pty = true,
                               .signal_fd = signalfd(-1, &mask, SFD_CLOEXEC),
                               .on_winch = send_resize,
                               .on_signal = restore_terminal};
    if (in.signal_fd < 0)
        return sbx_error_sys(err, errno, "signalfd");
    json_t *req = start_request(cwd);
    int rc = -1;
    if (req == NULL)
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    else if (enter_raw_mode(err) == 0)
        rc = sbx_cli_process_run(cfg, sb, req, &in, run, err);
    restore_terminal();
    json_decref(req);
    close(in.signal_fd);
    return rc;
}

/* Input that is not a terminal (`echo 'make test' | sbx shell ID`): a login shell reading it
 * as a script from its stdin, no PTY, no prompts, ended by the end of the input (as ssh does
 * without a terminal). A PTY would need ^D at the right moment, which a script cannot time. */
static int
run_piped(const struct sbx_cli_config *cfg, const struct sbx_cli_sandbox *sb, const char *cwd,
          struct sbx_cli_run *run, struct sbx_error **err)
{
    json_t *process = json_pack("{s:s, s:[s, s]}", "cmd", "/bin/bash", "args", "-l", "-s");
    if (process && cwd)
        json_object_set_new(process, "cwd", json_string(cwd));
    json_t *req = process ? json_pack("{s:o, s:b}", "process", process, "stdin", 1) : NULL;
    if (req == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    struct sbx_cli_input in = {.cfg = cfg, .sb = sb, .signal_fd = -1};
    int rc = sbx_cli_process_run(cfg, sb, req, &in, run, err);
    json_decref(req);
    return rc;
}

int
sbx_cli_shell(int argc, char **argv)
{
    static const struct option opts[] = {
        {"user", required_argument, NULL, OPT_USER},
        {"cwd", required_argument, NULL, OPT_CWD},
        {NULL, 0, NULL, 0},
    };
    static const struct sbx_cli_verb verb = {"shell", usage, "", opts, on_opt, 1, 1, "sandbox id"};
    struct shell_args a = {0};
    struct sbx_error *err = NULL;
    struct sbx_cli_config cfg;
    int first, status = sbx_cli_begin(&verb, argc, argv, &a, &first, &cfg);
    if (status >= 0)
        return status;
    struct sbx_cli_sandbox sb;
    if (sbx_cli_sandbox_open(&cfg, argv[first], &sb, &err) < 0) {
        sbx_cli_config_fini(&cfg);
        return sbx_cli_fail("shell", err);
    }
    sb.user = (char *)a.user;
    struct sbx_cli_run run = {0};
    int rc = isatty(STDIN_FILENO) ? run_pty(&cfg, &sb, a.cwd, &run, &err)
                                  : run_piped(&cfg, &sb, a.cwd, &run, &err);
    sb.user = NULL;
    sbx_cli_sandbox_fini(&sb);
    sbx_cli_config_fini(&cfg);
    return sbx_cli_run_status("shell", &run, rc, err);
}
