/* A Jupyter kernel process and our client end of it: launch (kernelspec table, connection
 * file, spawn through a caller-supplied function), ZeroMQ channels driven by libuv, the
 * readiness handshake, and the execute state machine (execute_input → stream, display_data,
 * execute_result, error → execute_reply + status idle).
 *
 * Owns: the kernel's private run directory (connection file with the HMAC key), its ZMQ
 * sockets, its process group (interrupt = SIGINT to the group, stop = SIGKILL). Never: HTTP,
 * NDJSON, users or privilege drops (the spawn callback does that), reaping (the caller's
 * reaper reports the exit through sbx_kernel_exited).
 *
 * Transport: TCP on 127.0.0.1 with ports picked by the agent. Every kernel we ship speaks it
 * (IRkernel builds "tcp://ip:port" itself and would mangle ipc paths), the sandbox's network
 * namespace keeps the ports private to the sandbox, and the HMAC key in a 0700 directory of
 * the kernel's user keeps other processes from driving the kernel. */
#ifndef SBX_JUPYTER_KERNEL_H
#define SBX_JUPYTER_KERNEL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "base/error.h"

/* libzmq, loaded by the agent on its first kernel (dlopen) rather than at every sandbox's start;
 * the agent runtime bundles it and its libraries by this name (src/sandbox/runtime.c). */
#define SBX_ZMQ_SONAME "libzmq.so.5"

/* Limits (candidates for base/limits.h). */
#define SBX_KERNEL_START_TIMEOUT_MS (60 * 1000)         /* spawn to first iopub message */
#define SBX_KERNEL_INFO_RETRY_MS    200                 /* kernel_info_request resend period */
#define SBX_KERNEL_INFO_SOON_MS     5                   /* resend after a reply while not ready */
#define SBX_KERNEL_INFO_SOON_MAX    20                  /* ... at most this many times */
#define SBX_KERNEL_RECONNECT_MS     10                  /* ZMQ reconnect interval (kernel start) */
#define SBX_KERNEL_IOPUB_HWM        16                  /* queued iopub messages while paused */
#define SBX_KERNEL_MAX_FRAME        (256 * 1024 * 1024) /* one ZMQ frame from a kernel */
#define SBX_KERNEL_STDERR_TAIL      4096                /* kernel stderr kept for diagnostics */
#define SBX_KERNEL_RUN_DIR          "/run/sbx-kernels"
/* Where setup.sh installs the registry-provided kernels (under /usr: the sandbox sees the
 * host's /usr, while /usr/local is masked). */
#define SBX_KERNEL_PREFIX "/usr/lib/sbx"

struct sbx_kernel;
struct sbx_kernel_exec;

/* What the spawn callback must start: argv with cwd, the environment the caller builds plus
 * extra_env (object of strings), stdin on /dev/null and stdout+stderr on out_fd, in a new
 * session (so the kernel's process group can be signalled), as the kernel's user. It returns
 * the pid and arranges for sbx_kernel_exited(k, status) to be called when it is reaped. */
struct sbx_kernel_spawn_req {
    struct sbx_kernel *kernel;
    char *const *argv;
    const char *cwd;
    json_t *extra_env;
    int out_fd;
};
typedef pid_t (*sbx_kernel_spawn_fn)(void *ud, const struct sbx_kernel_spawn_req *r,
                                     struct sbx_error **err);

struct sbx_kernel_events {
    /* The handshake completed: executions are being sent. */
    void (*on_ready)(struct sbx_kernel *k, void *ud);
    /* The kernel died or failed to start; it accepts nothing from now on. */
    void (*on_dead)(struct sbx_kernel *k, const char *why, void *ud);
};

struct sbx_kernel_launch {
    const char *language; /* normalised: python, javascript, typescript, r, bash, java */
    const char *cwd;
    uid_t uid; /* owner of the run directory */
    gid_t gid;
    sbx_kernel_spawn_fn spawn;
    void *spawn_ud;
    const struct sbx_kernel_events *events;
    void *events_ud;
};

/* Whether a kernel for language is installed (its executable exists). */
bool sbx_kernel_is_available(const char *language);
/* Whether language names a kernel sbx knows at all. */
bool sbx_kernel_is_known(const char *language);

/* Starts a kernel. This is the one function a pool of pre-started kernels would replace: it
 * returns at once; executions submitted before the kernel is ready are queued. The caller
 * holds one reference. */
struct sbx_kernel *sbx_kernel_start(uv_loop_t *loop, const struct sbx_kernel_launch *l,
                                    struct sbx_error **err);
/* Kills the kernel's process group, fails pending executions, drops the caller's reference.
 * No event is called after this. */
void sbx_kernel_stop(struct sbx_kernel *k);
/* Reaper notification (from the spawn callback's watcher). */
/* killed_by: NULL, or why the kernel was killed (e.g. "out of memory (limit 512 MiB)"). */
void sbx_kernel_exited(struct sbx_kernel *k, int wstatus, const char *killed_by);
bool sbx_kernel_is_ready(const struct sbx_kernel *k);
pid_t sbx_kernel_pid(const struct sbx_kernel *k);
/* SIGINT to the kernel's process group (how Jupyter interrupts signal-mode kernels). */
void sbx_kernel_interrupt(struct sbx_kernel *k);
/* Stops (true) or resumes reading output while a consumer cannot keep up; ZeroMQ then
 * queues at most SBX_KERNEL_IOPUB_HWM messages and the kernel drops the rest, as Jupyter
 * does for slow iopub subscribers. */
void sbx_kernel_pause_output(struct sbx_kernel *k, bool paused);

enum sbx_kernel_exec_end {
    SBX_KERNEL_EXEC_OK,   /* reply and idle seen (the code may still have raised) */
    SBX_KERNEL_EXEC_DIED, /* the kernel died or was stopped first */
};

/* Callbacks of one execution; all optional. Strings and JSON are borrowed for the call. */
struct sbx_kernel_exec_ops {
    void (*on_count)(void *ud, int64_t execution_count);
    void (*on_stream)(void *ud, bool is_stderr, json_t *text, const char *date);
    /* data: the MIME bundle; main: execute_result (true) or display_data (false). */
    void (*on_result)(void *ud, bool main, json_t *data);
    void (*on_error)(void *ud, const char *name, const char *value, const char *traceback);
    /* Last call; the exec handle is invalid afterwards. why is set for DIED. */
    void (*on_done)(void *ud, enum sbx_kernel_exec_end end, const char *why);
};

/* Queues code for execution; returns NULL (and calls nothing) if the kernel is dead. silent
 * executions (setup snippets) do not count and their output is not reported. */
struct sbx_kernel_exec *sbx_kernel_execute(struct sbx_kernel *k, json_t *code, bool silent,
                                           const struct sbx_kernel_exec_ops *ops, void *ud);
/* Drops the callbacks (the consumer went away); the execution still runs to its end. */
void sbx_kernel_exec_detach(struct sbx_kernel_exec *e);

#endif
