/* sbx exec: run one command in a sandbox with process.Process/Start, stream its output and
 * exit with its exit status.
 *
 * CMD ARGS... keep their argv meaning: each word is shell-quoted and the line runs as
 * `/bin/bash -l -c <line>`, the way the SDKs run commands (login shell: /etc/profile and
 * ~/.profile set PATH and friends). `sbx exec ID -- ls -la "a b"` lists "a b";
 * for shell syntax, say so: `sbx exec ID -- bash -c 'echo $HOME > f'`. stdin is not
 * forwarded (the process gets /dev/null). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "cli/client.h"

static const char usage[] =
    "usage: sbx exec [--user USER] [--cwd DIR] [--env K=V]... [--api-url URL] [--api-key KEY]\n"
    "                ID [--] CMD [ARG...]\n"
    "Runs CMD in the sandbox, streams its stdout and stderr, exits with its exit status.\n"
    "Put -- before CMD when CMD has options of its own.\n";

enum { OPT_USER = 1, OPT_CWD, OPT_ENV };

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
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof(*a));
    a->env = json_object();
    if (a->env == NULL)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    int first;
    if (sbx_cli_getopt(argc, argv, "", opts, &a->common, on_opt, a, &first, err) < 0)
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
    return json_pack("{s:o, s:b}", "process", process, "stdin", 0);
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
    struct sbx_cli_rpc *rpc = NULL;
    json_t *req = NULL;
    struct sbx_cli_run st = {0};
    int rc = sbx_cli_config_init(&cfg, &a.common, &err);
    if (rc == 0)
        rc = sbx_cli_sandbox_open(&cfg, a.id, &sb, &err);
    if (rc == 0) {
        sb.user = (char *)a.user;
        rpc = sbx_cli_rpc_new(&cfg, &sb, &err);
        sb.user = NULL;
        req = sbx_cli_exec_request(&a);
        if (rpc == NULL)
            rc = -1;
        else if (req == NULL)
            rc = sbx_error_set(&err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    }
    if (rc == 0)
        rc = sbx_cli_rpc_stream(rpc, "process.Process/Start", req, sbx_cli_run_on_msg, &st, &err);
    if (rc == 0 && !st.ended)
        rc = sbx_error_set(&err, SBX_INTERNAL, 0, "the process ended without an end event");
    json_decref(req);
    sbx_cli_rpc_free(rpc);
    sbx_cli_sandbox_fini(&sb);
    sbx_cli_config_fini(&cfg);
    sbx_cli_exec_args_fini(&a);
    if (st.broken_pipe) { /* `sbx exec ... | head`: end quietly, as a shell pipeline would */
        sbx_error_free(err);
        return 128 + SIGPIPE;
    }
    if (rc < 0)
        return sbx_cli_fail("exec", err);
    return st.exit_status;
}
