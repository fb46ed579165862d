/* sbx run: creates a sandbox from TEMPLATE, runs CMD in it as `sbx exec` does, and with --rm
 * kills it afterwards (also when CMD fails or the CLI is interrupted by an error); without
 * --rm the sandbox lives on until its timeout and its id is printed on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"

static const char usage[] =
    "usage: sbx run [--rm] [-i] [--timeout S] [--metadata K=V]... [--env K=V]... [--no-internet]\n"
    "               [--user USER] [--cwd DIR] [--api-url URL] [--api-key KEY]\n"
    "               TEMPLATE [--] CMD [ARG...]\n"
    "Creates a sandbox from TEMPLATE (e.g. base) and runs CMD in it, like sbx create and\n"
    "sbx exec; exits with CMD's status. --rm kills the sandbox when CMD ends.\n";

enum { OPT_RM = 0x200, OPT_USER, OPT_CWD, OPT_INTERACTIVE = 'i' };

struct run_args {
    struct sbx_cli_create_args create;
    struct sbx_cli_exec_args exec;
    bool rm;
};

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct run_args *a = ud;
    switch (opt) {
    case OPT_RM:
        a->rm = true;
        return 0;
    case OPT_INTERACTIVE:
        a->exec.interactive = true;
        return 0;
    case OPT_USER:
        if (*arg == '\0' || strchr(arg, ':') != NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid --user '%s'", arg);
        a->exec.user = arg;
        return 0;
    case OPT_CWD:
        a->exec.cwd = arg;
        return 0;
    }
    return sbx_cli_create_on_opt(opt, arg, &a->create, err);
}

static int
parse(int argc, char **argv, struct run_args *a, struct sbx_error **err)
{
    static const struct option own[] = {
        {"rm", no_argument, NULL, OPT_RM},
        {"interactive", no_argument, NULL, OPT_INTERACTIVE},
        {"user", required_argument, NULL, OPT_USER},
        {"cwd", required_argument, NULL, OPT_CWD},
    };
    struct option opts[16];
    size_t n = 0;
    for (const struct option *o = sbx_cli_create_options; o->name && n < 10; o++)
        if (strcmp(o->name, "template") != 0) /* TEMPLATE is the first operand */
            opts[n++] = *o;
    memcpy(opts + n, own, sizeof(own));
    n += sizeof(own) / sizeof(own[0]);
    opts[n] = (struct option){NULL, 0, NULL, 0};
    int first;
    if (sbx_cli_getopt(argc, argv, "i", opts, &a->create.common, on_opt, a, &first, err) < 0)
        return -1;
    if (a->create.common.help)
        return 0;
    if (argc - first < 2)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             first == argc ? "missing TEMPLATE" : "missing command");
    a->create.template_id = argv[first];
    a->exec.cmd = argv + first + 1;
    a->exec.ncmd = argc - first - 1;
    a->exec.env = json_object();
    return 0;
}

int
sbx_cli_run(int argc, char **argv)
{
    struct run_args a = {0};
    struct sbx_error *err = NULL;
    sbx_cli_create_args_init(&a.create);
    int rc = parse(argc, argv, &a, &err);
    if (rc < 0 || a.create.common.help) {
        sbx_cli_create_args_fini(&a.create);
        sbx_cli_exec_args_fini(&a.exec);
        if (rc == 0)
            fputs(usage, stdout);
        return rc < 0 ? sbx_cli_usage_error("run", usage, err) : 0;
    }
    struct sbx_cli_config cfg;
    if (sbx_cli_config_init(&cfg, &a.create.common, &err) < 0) {
        sbx_cli_create_args_fini(&a.create);
        sbx_cli_exec_args_fini(&a.exec);
        return sbx_cli_fail("run", err);
    }
    char id[SBX_CLI_ID_MAX + 1] = "";
    struct sbx_cli_sandbox sb = {0};
    struct sbx_cli_run run = {0};
    json_t *req = NULL;
    rc = sbx_cli_create_sandbox(&cfg, &a.create, id, sizeof(id), &err);
    if (rc == 0)
        rc = sbx_cli_sandbox_open(&cfg, id, &sb, &err);
    if (rc == 0 && (req = sbx_cli_exec_request(&a.exec)) == NULL)
        rc = sbx_error_set(&err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
    if (rc == 0) {
        sb.user = (char *)a.exec.user;
        struct sbx_cli_input in = {.cfg = &cfg, .sb = &sb, .signal_fd = -1};
        rc = sbx_cli_process_run(&cfg, &sb, req, a.exec.interactive ? &in : NULL, &run, &err);
        sb.user = NULL;
    }
    if (*id && a.rm) {
        char path[128];
        snprintf(path, sizeof(path), "/sandboxes/%s", id);
        struct sbx_error *kerr = NULL;
        if (sbx_cli_api_json(&cfg, "DELETE", path, NULL, NULL, &kerr) < 0 &&
            kerr->code != SBX_NOT_FOUND)
            fprintf(stderr, "sbx run: could not remove sandbox %s: %s\n", id, kerr->msg);
        sbx_error_free(kerr);
    } else if (*id) {
        fprintf(stderr, "sbx run: sandbox %s keeps running until its timeout (sbx kill %s)\n", id,
                id);
    }
    json_decref(req);
    sbx_cli_sandbox_fini(&sb);
    sbx_cli_config_fini(&cfg);
    sbx_cli_create_args_fini(&a.create);
    sbx_cli_exec_args_fini(&a.exec);
    return sbx_cli_run_status("run", &run, rc, err);
}
