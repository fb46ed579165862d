/* Jobs: the spawner's slow work (a commit, a layer GC, a Debian root, an image) done in a
 * child process, so that no request waits for it, and the tools those children run. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "spawner/internal.h"

int
sbx_spawner_job_fork(sbx_spawner_job_fn work, void *ud, pid_t *pid, struct sbx_error **err)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return sbx_error_sys(err, errno, "pipe");
    *pid = fork();
    if (*pid == 0) {
        close(p[0]);
        static struct sbx_spawner_job_result r; /* too large for a stack frame of its own */
        r.code = SBX_OK;
        struct sbx_error *e = NULL;
        if (work(ud, &r, &e) < 0) {
            r.code = e->code;
            r.sys_errno = e->sys_errno;
            snprintf(r.message, sizeof(r.message), "%s", e->msg);
        }
        /* Whole or not at all: the reader takes anything shorter for a job that died. */
        size_t off = 0;
        for (ssize_t n = 0; off < sizeof(r); off += (size_t)n)
            if ((n = write(p[1], (char *)&r + off, sizeof(r) - off)) <= 0 && errno != EINTR)
                _exit(1);
            else if (n < 0)
                n = 0;
        _exit(0);
    }
    close(p[1]);
    if (*pid < 0) {
        close(p[0]);
        return sbx_error_sys(err, errno, "fork");
    }
    return p[0];
}

void
sbx_spawner_job_finish(int fd, pid_t pid, struct sbx_spawner_job_result *r)
{
    /* The result is larger than a pipe's atomic write: read until it is whole or the job
     * is gone (it writes it at once, then exits). */
    size_t got = 0;
    for (ssize_t n = 1; got < sizeof(*r) && n != 0;) {
        n = read(fd, (char *)r + got, sizeof(*r) - got);
        if (n < 0 && errno != EINTR)
            break;
        got += n > 0 ? (size_t)n : 0;
    }
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    r->message[sizeof(r->message) - 1] = '\0';
    r->text[sizeof(r->text) - 1] = '\0';
    if (got != sizeof(*r)) {
        memset(r, 0, sizeof(*r));
        r->code = SBX_INTERNAL;
        snprintf(r->message, sizeof(r->message), "the process doing the work died");
    }
}

struct job {
    sbx_spawner_job_done done;
    void *ud;
    pid_t pid;
    int fd;
    uv_poll_t poll;
};

static void
job_free(uv_handle_t *h)
{
    struct job *j = h->data;
    close(j->fd);
    free(j);
}

static void
on_job_done(uv_poll_t *h, int status, int events)
{
    struct job *j = h->data;
    uv_poll_stop(h);
    struct sbx_spawner_job_result *r = malloc(sizeof(*r));
    if (r == NULL)
        abort();
    sbx_spawner_job_finish(j->fd, j->pid, r);
    j->done(j->ud, r);
    free(r);
    uv_close((uv_handle_t *)h, job_free);
}

int
sbx_spawner_job_start(sbx_spawner_job_fn work, sbx_spawner_job_done done, void *ud,
                      struct sbx_error **err)
{
    struct job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        abort();
    j->done = done;
    j->ud = ud;
    j->fd = sbx_spawner_job_fork(work, ud, &j->pid, err);
    if (j->fd < 0) {
        free(j);
        return -1;
    }
    uv_poll_init(sbx_spawner_loop(), &j->poll, j->fd);
    j->poll.data = j;
    uv_poll_start(&j->poll, UV_READABLE, on_job_done);
    return 0;
}

int
sbx_spawner_run_tool(const char *path, char *const argv[], const struct sbx_spawner_tool_io *io,
                     uint64_t timeout_ms, struct sbx_error **err)
{
    char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", NULL};
    pid_t pid = fork();
    if (pid < 0)
        return sbx_error_sys(err, errno, "fork");
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null < 0 || dup2(null, 0) < 0 || dup2(io->out >= 0 ? io->out : io->log, 1) < 0 ||
            dup2(io->log, 2) < 0 || (io->fd3 >= 0 && dup2(io->fd3, 3) < 0))
            _exit(127);
        execve(path, argv, envp);
        _exit(127);
    }
    _cleanup_close_ int pfd = pidfd_open(pid, 0);
    if (pfd >= 0 && timeout_ms > 0) {
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        int n;
        while ((n = poll(&p, 1, timeout_ms > INT32_MAX ? INT32_MAX : (int)timeout_ms)) < 0 &&
               errno == EINTR)
            ;
        if (n == 0) {
            /* Over its time: killed, and the caller's half-made result goes with the job. */
            kill(pid, SIGKILL);
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
            return sbx_error_set(err, SBX_DEADLINE_EXCEEDED, 0, "%s took longer than %llu s",
                                 argv[0], (unsigned long long)(timeout_ms / 1000));
        }
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return sbx_error_sys(err, errno, "wait for %s", argv[0]);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void
sbx_spawner_log_tail(int log, char *buf, size_t cap)
{
    off_t end = lseek(log, 0, SEEK_END);
    size_t want = cap - 1;
    ssize_t n = pread(log, buf, want, end > (off_t)want ? end - (off_t)want : 0);
    buf[n > 0 ? n : 0] = '\0';
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
}
