/* sbx shell: an interactive login shell in a sandbox over a PTY.
 *
 * Two threads, each with its own libcurl handle. The main thread holds the
 * process.Process/Start stream and copies PTY output to stdout until the end event. The
 * input thread starts once the start event has named the pid; it forwards stdin bytes with
 * SendInput and terminal resizes (SIGWINCH) with Update. The local terminal is in raw mode
 * meanwhile, so ^C, ^D and ^Z travel to the sandbox as bytes; it is restored on every way
 * out: normal end, error, SIGTERM/SIGHUP, and exit(). */
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

#define INPUT_CHUNK 4096

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

struct shell {
    const struct sbx_cli_config *cfg;
    const struct sbx_cli_sandbox *sb;
    struct sbx_cli_run run;
    uint32_t pid;
    pthread_t input;
    bool input_running;
    int stop_pipe[2]; /* written by the main thread to stop the input thread */
    int signal_fd;    /* SIGWINCH, SIGTERM, SIGHUP, SIGINT, SIGQUIT */
};

static int
send_input(struct sbx_cli_rpc *rpc, uint32_t pid, const char *buf, size_t len)
{
    _cleanup_free_ char *b64 = sbx_base64_encode(buf, len, NULL);
    json_t *req = b64 ? json_pack("{s:{s:i}, s:{s:s}}", "process", "pid", (json_int_t)pid, "input",
                                  "pty", b64)
                      : NULL;
    if (req == NULL)
        return -1;
    struct sbx_error *err = NULL;
    int rc = sbx_cli_rpc_unary(rpc, "process.Process/SendInput", req, NULL, &err);
    json_decref(req);
    sbx_error_free(err); /* the process is gone or going: the stream will tell */
    return rc;
}

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

static void *
input_main(void *arg)
{
    struct shell *sh = arg;
    struct sbx_error *err = NULL;
    struct sbx_cli_rpc *rpc = sbx_cli_rpc_new(sh->cfg, sh->sb, &err);
    sbx_error_free(err);
    if (rpc == NULL)
        return NULL;
    bool stdin_open = true;
    for (;;) {
        struct pollfd p[3] = {
            {.fd = sh->stop_pipe[0], .events = POLLIN},
            {.fd = sh->signal_fd, .events = POLLIN},
            {.fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN},
        };
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[0].revents)
            break;
        if (p[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sh->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                if (si.ssi_signo == SIGWINCH) {
                    send_resize(rpc, sh->pid);
                } else {
                    /* Killed from outside: give the terminal back before dying. The
                     * sandbox's shell lives on, like a shell whose ssh client died. */
                    restore_terminal();
                    _exit(128 + (int)si.ssi_signo);
                }
            }
        }
        if (p[2].revents) {
            char buf[INPUT_CHUNK];
            ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (n <= 0) {
                /* End of piped input: ^D ends the shell's input as it would on a tty. */
                stdin_open = false;
                send_input(rpc, sh->pid, "\x04", 1);
                continue;
            }
            if (send_input(rpc, sh->pid, buf, (size_t)n) < 0)
                stdin_open = false;
        }
    }
    sbx_cli_rpc_free(rpc);
    return NULL;
}

static int
on_start(struct sbx_cli_run *run, uint32_t pid, struct sbx_error **err)
{
    struct shell *sh = run->data;
    if (sh->input_running)
        return 0;
    sh->pid = pid;
    if ((errno = pthread_create(&sh->input, NULL, input_main, sh)) != 0)
        return sbx_error_sys(err, errno, "pthread_create");
    sh->input_running = true;
    return 0;
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

static int
run(struct shell *sh, const char *cwd, struct sbx_error **err)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGWINCH);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGQUIT);
    /* Blocked before the input thread exists, so both threads inherit the mask and the
     * signals are only ever seen through the signalfd. */
    if ((errno = pthread_sigmask(SIG_BLOCK, &mask, NULL)) != 0)
        return sbx_error_sys(err, errno, "pthread_sigmask");
    sh->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sh->signal_fd < 0)
        return sbx_error_sys(err, errno, "signalfd");
    if (pipe2(sh->stop_pipe, O_CLOEXEC) < 0)
        return sbx_error_sys(err, errno, "pipe2");

    struct sbx_cli_rpc *rpc = sbx_cli_rpc_new(sh->cfg, sh->sb, err);
    json_t *req = start_request(cwd);
    int rc = -1;
    if (rpc != NULL && req == NULL)
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    else if (rpc != NULL && enter_raw_mode(err) == 0)
        rc = sbx_cli_rpc_stream(rpc, "process.Process/Start", req, sbx_cli_run_on_msg, &sh->run,
                                err);
    if (sh->input_running) {
        (void)!write(sh->stop_pipe[1], "x", 1);
        pthread_join(sh->input, NULL);
    }
    restore_terminal();
    json_decref(req);
    sbx_cli_rpc_free(rpc);
    if (rc == 0 && !sh->run.ended)
        rc = sbx_error_set(err, SBX_INTERNAL, 0, "the shell ended without an end event");
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
    struct sbx_cli_common common = {0};
    struct shell_args a = {0};
    struct sbx_error *err = NULL;
    int first;
    if (sbx_cli_getopt(argc, argv, "", opts, &common, on_opt, &a, &first, &err) < 0)
        return sbx_cli_usage_error("shell", usage, err);
    if (common.help) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc - first != 1) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0,
                      first == argc ? "missing sandbox id" : "too many arguments");
        return sbx_cli_usage_error("shell", usage, err);
    }
    struct sbx_cli_config cfg;
    if (sbx_cli_config_init(&cfg, &common, &err) < 0)
        return sbx_cli_fail("shell", err);
    struct sbx_cli_sandbox sb;
    if (sbx_cli_sandbox_open(&cfg, argv[first], &sb, &err) < 0) {
        sbx_cli_config_fini(&cfg);
        return sbx_cli_fail("shell", err);
    }
    sb.user = (char *)a.user;
    struct shell sh = {.cfg = &cfg, .sb = &sb, .signal_fd = -1, .stop_pipe = {-1, -1}};
    sh.run = (struct sbx_cli_run){.on_start = on_start, .data = &sh};
    int rc = run(&sh, a.cwd, &err);
    sb.user = NULL;
    if (sh.signal_fd >= 0)
        close(sh.signal_fd);
    if (sh.stop_pipe[0] >= 0) {
        close(sh.stop_pipe[0]);
        close(sh.stop_pipe[1]);
    }
    sbx_cli_sandbox_fini(&sb);
    sbx_cli_config_fini(&cfg);
    if (rc < 0)
        return sbx_cli_fail("shell", err);
    return sh.run.exit_status;
}
