/* sbx exec: run one command in a sandbox with process.Process/Start, stream its output and
 * exit with its exit status.
 *
 * CMD ARGS... keep their argv meaning: each word is shell-quoted and the line runs as
 * `/bin/bash -l -c <line>`, the way the SDKs run commands (login shell: /etc/profile and
 * ~/.profile set PATH and friends). `sbx exec ID -- ls -la "a b"` lists "a b";
 * for shell syntax, say so: `sbx exec ID -- bash -c 'echo $HOME > f'`. With -i the local
 * stdin is streamed to the command, its end closing the command's stdin
 * (`tar c . | sbx exec -i ID -- tar x -C /work`); without, the command's stdin is empty. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "cli/client.h"

static const char usage[] =
    "usage: sbx exec [-i] [--user USER] [--cwd DIR] [--env K=V]... [--api-url URL]\n"
    "                [--api-key KEY] ID [--] CMD [ARG...]\n"
    "Runs CMD in the sandbox, streams its stdout and stderr, exits with its exit status\n"
    "(128+N for signal N; 124 when the sandbox timed out). -i, --interactive streams stdin\n"
    "to CMD. Put -- before CMD when CMD has options of its own.\n";

enum { OPT_USER = 1, OPT_CWD, OPT_ENV, OPT_INTERACTIVE = 'i' };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct sbx_cli_exec_args *a = ud;
    switch (opt) {
    case OPT_USER:
        if (*arg == '\0' || strchr(arg, ':') != NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid --user '%s'", arg);
        a->user = arg;
        return 0;
    case OPT_CWD:
        a->cwd = arg;
        return 0;
    case OPT_ENV:
        return sbx_cli_add_kv(a->env, arg, "--env", err);
    case OPT_INTERACTIVE:
        a->interactive = true;
        return 0;
    }
    return -1;
}

int
sbx_cli_exec_parse(int argc, char **argv, struct sbx_cli_exec_args *a, struct sbx_error **err)
{
    static const struct option opts[] = {
        {"user", required_argument, NULL, OPT_USER},
        {"cwd", required_argument, NULL, OPT_CWD},
        {"env", required_argument, NULL, OPT_ENV},
        {"interactive", no_argument, NULL, OPT_INTERACTIVE},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof(*a));
    a->env = json_object();
    if (a->env == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    int first;
    if (sbx_cli_getopt(argc, argv, "i", opts, &a->common, on_opt, a, &first, err) < 0)
        return -1;
    if (a->common.help)
        return 0;
    if (first >= argc)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "missing sandbox id");
    a->id = argv[first];
    if (!sbx_cli_is_valid_id(a->id))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid sandbox id '%s'", a->id);
    if (first + 1 >= argc)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "missing command");
    a->cmd = argv + first + 1;
    a->ncmd = argc - first - 1;
    return 0;
}

void
sbx_cli_exec_args_fini(struct sbx_cli_exec_args *a)
{
    json_decref(a->env);
    a->env = NULL;
}

json_t *
sbx_cli_exec_request(const struct sbx_cli_exec_args *a)
{
    _cleanup_free_ char *line = sbx_cli_shell_join(a->cmd, a->ncmd);
    if (line == NULL)
        return NULL;
    json_t *process = json_pack("{s:s, s:[s, s, s]}", "cmd", "/bin/bash", "args", "-l", "-c", line);
    if (process == NULL)
        return NULL;
    /* proto3 JSON omits empty maps and unset optionals, as the SDKs do. */
    if (json_object_size(a->env) > 0)
        json_object_set(process, "envs", a->env);
    if (a->cwd != NULL)
        json_object_set_new(process, "cwd", json_string(a->cwd));
    return json_pack("{s:o, s:b}", "process", process, "stdin", a->interactive);
}

/* The end of the sandbox under a cut stream, from its log: what the daemon wrote last. */
static void
explain_end(const struct sbx_cli_config *cfg, const char *id, struct sbx_cli_run *run)
{
    char path[160];
    snprintf(path, sizeof(path), "/sandboxes/%s", id);
    struct sbx_cli_response resp;
    struct sbx_error *err = NULL;
    int rc = sbx_cli_api_call(cfg, "GET", path, NULL, &resp, &err);
    bool gone = rc == 0 && resp.status == 404;
    sbx_cli_response_fini(&resp);
    sbx_error_free(err);
    err = NULL;
    if (!gone)
        return;
    snprintf(path, sizeof(path), "/v2/sandboxes/%s/logs?direction=backward&limit=5", id);
    json_t *body = NULL;
    if (sbx_cli_api_json(cfg, "GET", path, NULL, &body, &err) < 0) {
        sbx_error_free(err);
        snprintf(run->ended_why, sizeof(run->ended_why), "the sandbox ended");
        return;
    }
    static const struct {
        const char *event, *why;
    } ends[] = {{"sandbox_timeout", "sandbox timed out"},
                {"sandbox_killed", "the sandbox was killed"},
                {"agent_exited", "the sandbox ended: its agent (PID 1) exited"}};
    snprintf(run->ended_why, sizeof(run->ended_why), "the sandbox ended");
    size_t i;
    json_t *e;
    json_array_foreach (json_object_get(body, "logs"), i, e) {
        const char *ev = json_string_value(json_object_get(json_object_get(e, "fields"), "event"));
        for (size_t k = 0; ev && k < sizeof(ends) / sizeof(ends[0]); k++)
            if (strcmp(ev, ends[k].event) == 0) {
                snprintf(run->ended_why, sizeof(run->ended_why), "%s", ends[k].why);
                json_decref(body);
                return;
            }
    }
    json_decref(body);
}

static int
on_process_start(struct sbx_cli_run *run, uint32_t pid, struct sbx_error **err)
{
    return run->data ? sbx_cli_input_start(run->data, pid, err) : 0;
}

int
sbx_cli_process_run(const struct sbx_cli_config *cfg, const struct sbx_cli_sandbox *sb, json_t *req,
                    struct sbx_cli_input *in, struct sbx_cli_run *run, struct sbx_error **err)
{
    struct sbx_cli_rpc *rpc = sbx_cli_rpc_new(cfg, sb, err);
    if (rpc == NULL)
        return -1;
    run->on_start = on_process_start;
    run->data = in;
    int rc = sbx_cli_rpc_stream(rpc, "process.Process/Start", req, sbx_cli_run_on_msg, run, err);
    if (in)
        sbx_cli_input_stop(in);
    sbx_cli_rpc_free(rpc);
    if (rc == 0 && !run->ended)
        rc = sbx_error_set(err, SBX_INTERNAL, 0, "the process ended without an end event");
    if (rc < 0 && err && *err && (*err)->code == SBX_UNAVAILABLE)
        explain_end(cfg, sb->id, run);
    return rc;
}

int
sbx_cli_run_status(const char *verb, const struct sbx_cli_run *run, int rc, struct sbx_error *err)
{
    if (run->broken_pipe) { /* `sbx exec ... | head`: end quietly, as a shell pipeline would */
        sbx_error_free(err);
        return 128 + SIGPIPE;
    }
    if (run->ended_why[0]) {
        fprintf(stderr, "sbx %s: %s\n", verb, run->ended_why);
        sbx_error_free(err);
        return strcmp(run->ended_why, "sandbox timed out") == 0 ? 124 : SBX_CLI_EXIT_FAILURE;
    }
    if (rc < 0)
        return sbx_cli_fail(verb, err);
    if (run->killed[0])
        fprintf(stderr, "sbx %s: %s\n", verb, run->killed);
    return run->exit_status;
}

int
sbx_cli_exec(int argc, char **argv)
{
    struct sbx_cli_exec_args a;
    struct sbx_error *err = NULL;
    if (sbx_cli_exec_parse(argc, argv, &a, &err) < 0) {
        sbx_cli_exec_args_fini(&a);
        return sbx_cli_usage_error("exec", usage, err);
    }
    if (a.common.help) {
        sbx_cli_exec_args_fini(&a);
        fputs(usage, stdout);
        return 0;
    }
    struct sbx_cli_config cfg = {0};
    struct sbx_cli_sandbox sb = {0};
    struct sbx_cli_run run = {0};
    json_t *req = NULL;
    int rc = sbx_cli_config_init(&cfg, &a.common, &err);
    if (rc == 0)
        rc = sbx_cli_sandbox_open(&cfg, a.id, &sb, &err);
    if (rc == 0 && (req = sbx_cli_exec_request(&a)) == NULL)
        rc = sbx_error_set(&err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    if (rc == 0) {
        sb.user = (char *)a.user;
        struct sbx_cli_input in = {.cfg = &cfg, .sb = &sb, .signal_fd = -1};
        rc = sbx_cli_process_run(&cfg, &sb, req, a.interactive ? &in : NULL, &run, &err);
        sb.user = NULL;
    }
    json_decref(req);
    sbx_cli_sandbox_fini(&sb);
    sbx_cli_config_fini(&cfg);
    sbx_cli_exec_args_fini(&a);
    return sbx_cli_run_status("exec", &run, rc, err);
}
