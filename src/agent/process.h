/* The envd `process.Process` service: starts user commands (pipes or a PTY) as a sandbox
 * user, fans their output out to every attached stream, takes input, signals and resizes
 * them, and reaps every child of PID 1 (including orphans reparented to the agent).
 *
 * Layers: process_msg.c parses requests and formats events (pure, unit-tested);
 * process_spawn.c builds the environment and forks/execs the child; process.c owns the
 * process table, the I/O and the RPC handlers. Nothing here reads the agent config file or
 * opens listeners. */
#ifndef SBX_AGENT_PROCESS_H
#define SBX_AGENT_PROCESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "agent/users.h"
#include "base/error.h"
#include "http/http.h"

/* Agent limits (candidates for base/limits.h). */
#define SBX_AGENT_OUTPUT_CHUNK      (32 * 1024)        /* envd: <= 32 KiB per data event */
#define SBX_AGENT_STDIN_MAX_PENDING (16 * 1024 * 1024) /* queued, unwritten stdin bytes */
#define SBX_AGENT_END_RETAIN_MS     (30 * 1000)        /* late Connect still sees the end event */
#define SBX_AGENT_MAX_ARGS          4096
#define SBX_AGENT_BASE_PATH         "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* The sandbox-wide part of the agent config that the process service needs. */
struct sbx_agent_config {
    char *sandbox_id;
    char *access_token;    /* NULL when the sandbox is not secure */
    char *traffic_token;   /* trafficAccessToken: the code interpreter's /contexts take it too */
    json_t *env_vars;      /* object of strings: sandbox-wide environment */
    bool code_interpreter; /* template is a code interpreter: start its kernel at boot */
    int memory_mib;        /* the sandbox's memory limit, named when the OOM killer strikes */
    bool pooled;           /* started ahead of a client: serves nothing but POST /init until then */
    bool volume_service;   /* a volume's content API (volume.c), on the daemon's socket only */
    unsigned env_generation; /* bumped when POST /init sets env_vars */
    json_t *start;           /* the template's start and ready commands (start.c), or NULL */
};

/* A decoded StartRequest. */
struct sbx_agent_start_req {
    char *cmd;
    char **args; /* NULL-terminated */
    size_t n_args;
    json_t *envs; /* object of strings (owned reference), never NULL */
    char *cwd;    /* NULL when absent */
    bool pty;
    uint16_t cols, rows;
    char *tag;       /* NULL when absent */
    bool stdin_open; /* absent means true, as in envd */
};

struct sbx_agent_selector {
    uint32_t pid;
    char *tag; /* set instead of pid for {"tag": ...} */
};

/* --- process_msg.c: request decoding and event formatting (no I/O). --- */
int sbx_agent_start_req_parse(json_t *msg, struct sbx_agent_start_req *out, struct sbx_error **err);
void sbx_agent_start_req_fini(struct sbx_agent_start_req *r);
/* Reads msg[key] as a ProcessSelector (missing/invalid -> SBX_INVALID_ARGUMENT). */
int sbx_agent_selector_parse(json_t *msg, const char *key, struct sbx_agent_selector *out,
                             struct sbx_error **err);
void sbx_agent_selector_fini(struct sbx_agent_selector *s);
/* ProcessInput {"stdin": b64} or {"pty": b64}: *is_pty, malloc'd *data. */
int sbx_agent_input_parse(json_t *input, bool *is_pty, unsigned char **data, size_t *len,
                          struct sbx_error **err);
/* Signal enum (name or number): SIGNAL_SIGTERM / SIGNAL_SIGKILL. Unspecified/unknown ->
 * SBX_UNIMPLEMENTED. */
int sbx_agent_signal_parse(json_t *v, int *sig, struct sbx_error **err);
/* PTY {"size":{"cols","rows"}}. */
int sbx_agent_pty_size_parse(json_t *pty, uint16_t *cols, uint16_t *rows, struct sbx_error **err);
/* The EndEvent object for a waitpid() status, formatted as envd (Go's ProcessState) does:
 * {"exitCode":N?,"exited":true?,"status":"exit status N"|"signal: killed","error":...?}. */
json_t *sbx_agent_end_event_format(int wstatus, const char *killed_by);
/* {"event":{"<kind>":<inner>}}; steals inner. */
json_t *sbx_agent_event(const char *kind, json_t *inner);
/* ProcessConfig JSON as List returns it. */
json_t *sbx_agent_config_json(const struct sbx_agent_start_req *r);

/* --- process_spawn.c --- */
/* The child environment: base (PATH, HOME, USER, LOGNAME, SHELL, LANG, TERM for PTYs),
 * then sandbox-wide vars, then the request's (later wins). NULL-terminated, malloc'd. Both
 * maps were checked where they arrived (sbx_json_opt_env_map) or are the agent's own. */
char **sbx_agent_env_build(const struct sbx_agent_user *u, json_t *sandbox_env, json_t *req_env,
                           bool pty);
void sbx_agent_strv_free(char **v);
/* cwd as envd resolves it: absent/empty -> the default (sbx_agent_set_default_cwd) or home,
 * "~" -> home, "~/x" and relative -> home/x. */
char *sbx_agent_resolve_cwd(const char *cwd, const char *home);
/* What an empty cwd means from now on: the template's workdir (its last WORKDIR step), absolute;
 * NULL: the user's home. */
void sbx_agent_set_default_cwd(const char *dir);

struct sbx_agent_spawn {
    /* in */
    const char *path; /* resolved executable */
    char **argv;
    char **envp;
    const char *cwd;
    const struct sbx_agent_user *user;
    int stdin_fd, stdout_fd, stderr_fd; /* child ends */
    int ctty_fd;                        /* PTY slave to make the controlling terminal, or -1 */
};
/* Forks and execs; returns the pid once exec succeeded, or -1 with *err describing the step
 * that failed in the child (e.g. SBX_INVALID_ARGUMENT "cwd '/x' does not exist"). */
pid_t sbx_agent_spawn(const struct sbx_agent_spawn *s, struct sbx_error **err);
/* Looks cmd up in the PATH of envp as execvp would; malloc'd path or NULL with *err. */
char *sbx_agent_find_executable(const char *cmd, char **envp, struct sbx_error **err);

/* --- process.c --- */
/* Installs the SIGCHLD reaper and remembers the config (must outlive the service). */
int sbx_agent_process_init(uv_loop_t *loop, const struct sbx_agent_config *cfg,
                           struct sbx_error **err);
/* Handles POST /process.Process/<method>. */
void sbx_agent_process_handle(struct sbx_http_req *req, const char *method);
/* Exit notification for a child forked by another agent module (e.g. Jupyter kernels):
 * PID 1 reaps every child with waitpid(-1), so other modules must register here. */
/* killed_by: NULL, or why the kernel killed the child, e.g. "out of memory (limit 512 MiB)". */
typedef void (*sbx_agent_exit_cb)(pid_t pid, int wstatus, const char *killed_by, void *ud);
int sbx_agent_watch_child(pid_t pid, sbx_agent_exit_cb cb, void *ud);

#endif
