/* sbx kill: DELETE /sandboxes/<id> for each id given. */
#include "cli/client.h"

static int
kill_one(const struct sbx_cli_config *cfg, const char *id, void *ud, struct sbx_error **err)
{
    return sbx_cli_object_call(cfg, "sandbox", id, "DELETE", "", NULL, err);
}

int
sbx_cli_kill(int argc, char **argv)
{
    static const struct sbx_cli_each e = {
        .verb = "kill",
        .usage = "usage: sbx kill [--api-url URL] [--api-key KEY] ID...\n",
        .kind = "sandbox",
        .one = kill_one,
    };
    return sbx_cli_each_id(argc, argv, &e, NULL);
}
