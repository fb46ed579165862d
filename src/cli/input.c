/* The local stdin forwarded to a remote process, on a thread of its own with its own libcurl
 * handle: for `sbx exec -i` to the process's stdin (closed with CloseStdin at end of input),
 * for `sbx shell` to its PTY (end of input is ^D there, as on a terminal). The thread also
 * waits on a signalfd the verb owns: SIGWINCH calls on_winch, any other signal ends the
 * program after on_signal (which gives the terminal back). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "base/base64.h"
#include "base/cleanup.h"
#include "cli/client.h"

#define INPUT_CHUNK 4096

static int
send_input(struct sbx_cli_rpc *rpc, const struct sbx_cli_input *in, const char *buf, size_t len)
{
    _cleanup_free_ char *b64 = sbx_base64_encode(buf, len, NULL);
    json_t *req = b64 ? json_pack("{s:{s:i}, s:{s:s}}", "process", "pid", (json_int_t)in->pid,
                                  "input", in->pty ? "pty" : "stdin", b64)
                      : NULL;
    if (req == NULL)
        return -1;
    struct sbx_error *err = NULL;
    int rc = sbx_cli_rpc_unary(rpc, "process.Process/SendInput", req, NULL, &err);
    json_decref(req);
    sbx_error_free(err); /* the process is gone or going: the stream will tell */
    return rc;
}

/* End of the local input: the remote process sees the end of its own. */
static void
send_eof(struct sbx_cli_rpc *rpc, const struct sbx_cli_input *in)
{
    if (in->pty) {
        send_input(rpc, in, "\x04", 1);
        return;
    }
    json_t *req = json_pack("{s:{s:i}}", "process", "pid", (json_int_t)in->pid);
    struct sbx_error *err = NULL;
    if (req)
        sbx_cli_rpc_unary(rpc, "process.Process/CloseStdin", req, NULL, &err);
    json_decref(req);
    sbx_error_free(err);
}

static void *
input_main(void *arg)
{
    struct sbx_cli_input *in = arg;
    struct sbx_error *err = NULL;
    struct sbx_cli_rpc *rpc = sbx_cli_rpc_new(in->cfg, in->sb, &err);
    sbx_error_free(err);
    if (rpc == NULL)
        return NULL;
    bool stdin_open = true;
    for (;;) {
        struct pollfd p[3] = {
            {.fd = in->stop_pipe[0], .events = POLLIN},
            {.fd = in->signal_fd, .events = POLLIN},
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
            if (read(in->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                if (si.ssi_signo == SIGWINCH && in->on_winch) {
                    in->on_winch(rpc, in->pid);
                } else if (si.ssi_signo != SIGWINCH) {
                    /* Killed from outside: the remote process lives on, like a shell whose
                     * ssh client died. */
                    if (in->on_signal)
                        in->on_signal();
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
                stdin_open = false;
                send_eof(rpc, in);
                continue;
            }
            if (send_input(rpc, in, buf, (size_t)n) < 0)
                stdin_open = false;
        }
    }
    sbx_cli_rpc_free(rpc);
    return NULL;
}

int
sbx_cli_input_start(struct sbx_cli_input *in, uint32_t pid, struct sbx_error **err)
{
    if (in->running)
        return 0;
    in->pid = pid;
    if (pipe2(in->stop_pipe, O_CLOEXEC) < 0)
        return sbx_error_sys(err, errno, "pipe2");
    if ((errno = pthread_create(&in->thread, NULL, input_main, in)) != 0)
        return sbx_error_sys(err, errno, "pthread_create");
    in->running = true;
    return 0;
}

void
sbx_cli_input_stop(struct sbx_cli_input *in)
{
    if (!in->running)
        return;
    (void)!write(in->stop_pipe[1], "x", 1);
    pthread_join(in->thread, NULL);
    close(in->stop_pipe[0]);
    close(in->stop_pipe[1]);
    in->running = false;
}
