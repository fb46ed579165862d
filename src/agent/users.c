#include "agent/users.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base64.h"
#include "base/cleanup.h"

/* Used when the template's /etc lacks the entry: E2B templates always have these two. */
static const struct {
    const char *name;
    uid_t uid;
    gid_t gid;
    gid_t extra_group;
    const char *home;
} builtin_users[] = {
    {"root", 0, 0, 0, "/root"},
    {"user", 1000, 1000, 27 /* sudo */, "/home/user"},
};

static void
add_group(struct sbx_agent_user *u, gid_t g)
{
    for (size_t i = 0; i < u->n_groups; i++)
        if (u->groups[i] == g)
            return;
    if (u->n_groups < SBX_AGENT_MAX_GROUPS)
        u->groups[u->n_groups++] = g;
}

static int
lookup_passwd(const char *path, const char *name, struct sbx_agent_user *out)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return 0;
    struct passwd pw, *res;
    char buf[4096];
    int found = 0;
    while (fgetpwent_r(f, &pw, buf, sizeof(buf), &res) == 0) {
        if (strcmp(pw.pw_name, name) != 0)
            continue;
        out->uid = pw.pw_uid;
        out->gid = pw.pw_gid;
        out->home = strdup(pw.pw_dir && *pw.pw_dir ? pw.pw_dir : "/");
        out->shell = strdup(pw.pw_shell && *pw.pw_shell ? pw.pw_shell : "/bin/sh");
        found = 1;
        break;
    }
    fclose(f);
    return found;
}

static void
lookup_groups(const char *path, struct sbx_agent_user *u)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return;
    struct group gr, *res;
    char buf[8192];
    while (fgetgrent_r(f, &gr, buf, sizeof(buf), &res) == 0) {
        for (char **m = gr.gr_mem; m && *m; m++)
            if (strcmp(*m, u->name) == 0)
                add_group(u, gr.gr_gid);
    }
    fclose(f);
}

int
sbx_agent_user_lookup(const char *etc_dir, const char *name, struct sbx_agent_user *out,
                      struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    if (name == NULL || *name == '\0' || strlen(name) > 256)
        return sbx_error_set(err, SBX_UNAUTHENTICATED, 0, "invalid username: '%s'",
                             name ? name : "");
    out->name = strdup(name);
    _cleanup_free_ char *passwd = NULL, *group = NULL;
    if (asprintf(&passwd, "%s/passwd", etc_dir) < 0 || asprintf(&group, "%s/group", etc_dir) < 0)
        abort();
    if (lookup_passwd(passwd, name, out)) {
        add_group(out, out->gid);
        lookup_groups(group, out);
        return 0;
    }
    for (size_t i = 0; i < sizeof(builtin_users) / sizeof(builtin_users[0]); i++) {
        if (strcmp(builtin_users[i].name, name) != 0)
            continue;
        out->uid = builtin_users[i].uid;
        out->gid = builtin_users[i].gid;
        out->home = strdup(builtin_users[i].home);
        out->shell = strdup("/bin/bash");
        add_group(out, out->gid);
        add_group(out, builtin_users[i].extra_group);
        return 0;
    }
    sbx_agent_user_fini(out);
    return sbx_error_set(err, SBX_UNAUTHENTICATED, 0, "invalid username: '%s'", name);
}

char *
sbx_agent_basic_auth_user(const char *header)
{
    if (header == NULL || strncasecmp(header, "Basic ", 6) != 0)
        return NULL;
    const char *p = header + 6;
    while (*p == ' ')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    size_t len = 0;
    char *dec = (char *)sbx_base64_decode(p, n, &len);
    if (dec == NULL)
        return NULL;
    if (memchr(dec, '\0', len) != NULL) {
        free(dec);
        return NULL;
    }
    char *colon = strchr(dec, ':');
    if (colon)
        *colon = '\0'; /* the password part is empty in E2B and ignored, as by envd */
    return dec;
}

int
sbx_agent_user_from_request(const struct sbx_http_req *req, struct sbx_agent_user *out,
                            struct sbx_error **err)
{
    const char *auth = sbx_http_req_header(req, "authorization");
    if (auth == NULL)
        return sbx_agent_user_lookup("/etc", sbx_agent_default_user(), out, err);
    _cleanup_free_ char *name = sbx_agent_basic_auth_user(auth);
    if (name == NULL) {
        memset(out, 0, sizeof(*out));
        return sbx_error_set(err, SBX_UNAUTHENTICATED, 0, "invalid authorization header");
    }
    return sbx_agent_user_lookup("/etc", name, out, err);
}

void
sbx_agent_user_fini(struct sbx_agent_user *u)
{
    if (u == NULL)
        return;
    free(u->name);
    free(u->home);
    free(u->shell);
    u->name = u->home = u->shell = NULL;
}

static char *default_user;

void
sbx_agent_set_default_user(const char *name)
{
    free(default_user);
    default_user = name ? strdup(name) : NULL;
}

const char *
sbx_agent_default_user(void)
{
    return default_user ? default_user : SBX_AGENT_DEFAULT_USER;
}
