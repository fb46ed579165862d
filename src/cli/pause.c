/* sbx pause and sbx resume: POST /sandboxes/<id>/pause, and /connect, for each id given. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"

struct pause_args {
    bool filesystem; /* pause: to the disk only */
    bool reboot;     /* resume: boot again from the disk */
    long timeout_s;  /* resume: the sandbox's new timeout, 0 for the server's default */
};

enum { OPT_FILESYSTEM = 1, OPT_REBOOT, OPT_TIMEOUT };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct pause_args *a = ud;
    char *end = NULL;
    switch (opt) {
    case OPT_FILESYSTEM:
        a->filesystem = true;
        return 0;
    case OPT_REBOOT:
        a->reboot = true;
        return 0;
    case OPT_TIMEOUT:
        a->timeout_s = strtol(arg, &end, 10);
        if (*arg == '\0' || *end != '\0' || a->timeout_s <= 0)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid --timeout '%s'", arg);
        return 0;
    }
    return -1;
}

static int
pause_one(const struct sbx_cli_config *cfg, const char *id, void *ud, struct sbx_error **err)
{
    const struct pause_args *a = ud;
    json_t *body = json_pack("{s:b}", "memory", !a->filesystem);
    int rc = sbx_cli_object_call(cfg, "sandbox", id, "POST", "/pause", body, err);
    json_decref(body);
    return rc;
}

static int
resume_one(const struct sbx_cli_config *cfg, const char *id, void *ud, struct sbx_error **err)
{
    const struct pause_args *a = ud;
    json_t *body = json_object();
    if (a->timeout_s > 0)
        json_object_set_new(body, "timeout", json_integer(a->timeout_s));
    if (a->reboot)
        json_object_set_new(body, "memory", json_false());
    int rc = sbx_cli_object_call(cfg, "sandbox", id, "POST", "/connect", body, err);
    json_decref(body);
    return rc;
}

int
sbx_cli_pause(int argc, char **argv)
{
    static const struct option opts[] = {{"filesystem", no_argument, NULL, OPT_FILESYSTEM},
                                         {NULL, 0, NULL, 0}};
    static const struct sbx_cli_each e = {
        .verb = "pause",
        .usage = "usage: sbx pause [--filesystem] [--api-url URL] [--api-key KEY] ID...\n"
                 "  keeps each sandbox as it is, its processes frozen; with --filesystem only\n"
                 "  its disk is kept, and it boots again when resumed\n",
        .kind = "sandbox",
        .opts = opts,
        .on_opt = on_opt,
        .one = pause_one,
    };
    struct pause_args a = {0};
    return sbx_cli_each_id(argc, argv, &e, &a);
}

int
sbx_cli_resume(int argc, char **argv)
{
    static const struct option opts[] = {{"reboot", no_argument, NULL, OPT_REBOOT},
                                         {"timeout", required_argument, NULL, OPT_TIMEOUT},
                                         {NULL, 0, NULL, 0}};
    static const struct sbx_cli_each e = {
        .verb = "resume",
        .usage =
            "usage: sbx resume [--timeout S] [--reboot] [--api-url URL] [--api-key KEY] ID...\n"
            "  runs each paused sandbox again (a running one gets at least S more seconds);\n"
            "  --reboot boots it again from its disk, giving up what its memory held\n",
        .kind = "sandbox",
        .opts = opts,
        .on_opt = on_opt,
        .one = resume_one,
    };
    struct pause_args a = {0};
    return sbx_cli_each_id(argc, argv, &e, &a);
}
