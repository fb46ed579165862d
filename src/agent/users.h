/* Sandbox users: who an operation runs as. Resolves the `Authorization: Basic base64(user:)`
 * header the SDKs send on envd RPCs, and looks the name up in the sandbox's own /etc/passwd
 * and /etc/group (this runs inside the sandbox's mount namespace, so those are the template's
 * files, never the host's). Knows nothing about processes or HTTP responses. */
#ifndef SBX_AGENT_USERS_H
#define SBX_AGENT_USERS_H

#include <stddef.h>
#include <sys/types.h>

#include "base/error.h"
#include "http/http.h"

#define SBX_AGENT_DEFAULT_USER "user"
#define SBX_AGENT_MAX_GROUPS   64

struct sbx_agent_user {
    char *name;
    uid_t uid;
    gid_t gid;
    gid_t groups[SBX_AGENT_MAX_GROUPS]; /* supplementary groups, primary gid included */
    size_t n_groups;
    char *home;
    char *shell;
};

/* Looks name up in passwd/group files under etc_dir ("/etc" in a sandbox). Falls back to
 * the built-in `root` and `user` entries when the files lack them. Unknown name ->
 * SBX_UNAUTHENTICATED "invalid username: '<name>'". */
int sbx_agent_user_lookup(const char *etc_dir, const char *name, struct sbx_agent_user *out,
                          struct sbx_error **err);
/* The operation user of an RPC: the Authorization header's user name, else the default. */
int sbx_agent_user_from_request(const struct sbx_http_req *req, struct sbx_agent_user *out,
                                struct sbx_error **err);
/* Extracts the user name from "Basic base64(user:password)"; malloc'd, NULL if malformed. */
char *sbx_agent_basic_auth_user(const char *header);
void sbx_agent_user_fini(struct sbx_agent_user *u);
/* The user of operations that name none: the template's (its last USER step), else "user". */
void sbx_agent_set_default_user(const char *name);
const char *sbx_agent_default_user(void);

#endif
