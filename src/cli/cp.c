/* sbx cp: copies one file between the host and a sandbox, streamed both ways (envd's /files):
 * `sbx cp ID:/remote/path LOCAL` or `sbx cp LOCAL ID:/remote/path`; "-" is stdin or stdout.
 * Only regular files: a directory, a device or a FIFO is refused with the way to copy it. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "cli/client.h"

static const char usage[] =
    "usage: sbx cp [--user USER] [--api-url URL] [--api-key KEY] SRC DST\n"
    "Copies a file between the host and a sandbox; one of SRC and DST is ID:PATH (a relative\n"
    "PATH is in the user's home). Into a directory (on the sandbox's side: one that exists\n"
    "or a PATH ending in '/') the file keeps its name. '-' is stdin or stdout. For\n"
    "directories use tar:\n"
    "  tar c DIR | sbx exec -i ID -- tar x -C /home/user\n";

enum { OPT_USER = 1 };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    if (opt != OPT_USER)
        return -1;
    if (*arg == '\0' || strchr(arg, ':') != NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid --user '%s'", arg);
    *(const char **)ud = arg;
    return 0;
}

/* "ID:PATH" → id and path; false for a local path (one with a '/' before any ':'). */
static bool
split_remote(const char *arg, char *id, size_t n, const char **path)
{
    const char *colon = strchr(arg, ':');
    const char *slash = strchr(arg, '/');
    if (colon == NULL || colon == arg || (slash && slash < colon))
        return false;
    snprintf(id, n, "%.*s", (int)(colon - arg), arg);
    *path = colon + 1;
    return true;
}

/* Opens the local source: a regular file, or stdin. */
static int
open_source(const char *local, long long *size, struct sbx_error **err)
{
    *size = -1;
    if (strcmp(local, "-") == 0)
        return STDIN_FILENO;
    int fd = open(local, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return sbx_error_sys(err, e, "%s", local);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "%s is %s: sbx cp copies regular files (for a directory: tar c %s | "
                             "sbx exec -i ID -- tar x)",
                             local, S_ISDIR(st.st_mode) ? "a directory" : "not a regular file",
                             local);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    *size = st.st_size;
    return fd;
}

/* The local destination: a new or existing regular file (into a directory: its basename). It
 * is written to a temporary name and renamed when complete, so a failed copy leaves nothing. */
static int
open_dest(const char *local, const char *remote_path, char **final, char **tmp,
          struct sbx_error **err)
{
    struct stat st;
    _cleanup_free_ char *rp = strdup(remote_path);
    if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (asprintf(final, "%s/%s", local, basename(rp)) < 0)
            abort();
    } else if ((* final = strdup(local)) == NULL) {
        abort();
    }
    if (stat(*final, &st) == 0 && !S_ISREG(st.st_mode))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "%s exists and is not a regular file: not overwriting it", *final);
    if (asprintf(tmp, "%s.sbx-cp-XXXXXX", *final) < 0)
        abort();
    int fd = mkostemp(*tmp, O_CLOEXEC);
    if (fd < 0)
        return sbx_error_sys(err, errno, "create %s", *final);
    return fd;
}

/* The remote path an upload writes: into a directory (one that exists, or a PATH ending in '/')
 * the file keeps its local name, as a download into a local directory does. */
static int
remote_dest(struct sbx_cli_rpc *rpc, const char *path, const char *local, char **out,
            struct sbx_error **err)
{
    size_t n = strlen(path);
    bool dir = path[n - 1] == '/';
    if (!dir) {
        json_t *st = NULL;
        json_t *req = json_pack("{s:s}", "path", path);
        int rc = sbx_cli_rpc_unary(rpc, "filesystem.Filesystem/Stat", req, &st, err);
        json_decref(req);
        if (rc < 0 && (*err)->code != SBX_NOT_FOUND)
            return -1;
        sbx_error_free(*err);
        *err = NULL;
        const char *type = json_string_value(json_object_get(json_object_get(st, "entry"), "type"));
        dir = type && strcmp(type, "FILE_TYPE_DIRECTORY") == 0;
        json_decref(st);
    }
    if (!dir) {
        *out = strdup(path);
    } else if (strcmp(local, "-") == 0) {
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "path '%s' is a directory: name the file to write stdin to", path);
    } else {
        _cleanup_free_ char *copy = strdup(local);
        if (copy == NULL ||
            asprintf(out, "%s%s%s", path, path[n - 1] == '/' ? "" : "/", basename(copy)) < 0)
            abort();
    }
    if (*out == NULL)
        abort();
    return 0;
}

int
sbx_cli_cp(int argc, char **argv)
{
    static const struct option opts[] = {{"user", required_argument, NULL, OPT_USER},
                                         {NULL, 0, NULL, 0}};
    static const struct sbx_cli_verb verb = {"cp", usage, "", opts, on_opt, 2, 2, "SRC and DST"};
    const char *user = NULL;
    struct sbx_error *err = NULL;
    struct sbx_cli_config cfg;
    int first, status = sbx_cli_begin(&verb, argc, argv, &user, &first, &cfg);
    if (status >= 0)
        return status;
    char id_src[SBX_CLI_ID_MAX + 1], id_dst[SBX_CLI_ID_MAX + 1];
    const char *rsrc = NULL, *rdst = NULL;
    bool src_remote = split_remote(argv[first], id_src, sizeof(id_src), &rsrc);
    bool dst_remote = split_remote(argv[first + 1], id_dst, sizeof(id_dst), &rdst);
    if (src_remote == dst_remote || *(src_remote ? rsrc : rdst) == '\0') {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0,
                      src_remote == dst_remote ? "exactly one of SRC and DST must be ID:PATH"
                                               : "empty path after the sandbox id");
        sbx_cli_config_fini(&cfg);
        return sbx_cli_usage_error("cp", usage, err);
    }
    struct sbx_cli_sandbox sb = {0};
    struct sbx_cli_rpc *rpc = NULL;
    _cleanup_free_ char *final = NULL, *tmp = NULL;
    int fd = -1, rc = sbx_cli_sandbox_open(&cfg, src_remote ? id_src : id_dst, &sb, &err);
    if (rc == 0) {
        sb.user = (char *)user;
        rpc = sbx_cli_rpc_new(&cfg, &sb, &err);
        sb.user = NULL;
        rc = rpc ? 0 : -1;
    }
    if (rc == 0 && src_remote) {
        const char *local = argv[first + 1];
        fd = strcmp(local, "-") == 0 ? STDOUT_FILENO : open_dest(local, rsrc, &final, &tmp, &err);
        rc = fd < 0 ? -1 : sbx_cli_files_get(rpc, rsrc, fd, &err);
        if (rc == 0 && tmp && (fsync(fd) < 0 || rename(tmp, final) < 0))
            rc = sbx_error_sys(&err, errno, "write %s", final);
        if (rc < 0 && tmp)
            unlink(tmp); /* nothing half-copied is left behind */
    } else if (rc == 0) {
        long long size;
        fd = open_source(argv[first], &size, &err);
        rc = fd < 0 ? -1 : remote_dest(rpc, rdst, argv[first], &final, &err);
        if (rc == 0)
            rc = sbx_cli_files_put(rpc, final, fd, size, &err);
    }
    if (fd > STDERR_FILENO)
        close(fd);
    sbx_cli_rpc_free(rpc);
    sbx_cli_sandbox_fini(&sb);
    sbx_cli_config_fini(&cfg);
    return rc < 0 ? sbx_cli_fail("cp", err) : 0;
}
