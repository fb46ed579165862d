/* The layer store, <state_dir>/layers (see sandbox.h). A layer arrives in the store whole or
 * not at all: it is made under a temporary name (.new-<key>) and renamed into place, and
 * whatever an interrupted import left is removed at the next start. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "sandbox/internal.h"

#define NEW_PREFIX ".new-"

bool
sbx_layer_key_is_valid(const char *key)
{
    size_t n = 0;
    for (; key[n]; n++)
        if (!((key[n] >= '0' && key[n] <= '9') || (key[n] >= 'a' && key[n] <= 'f')))
            return false;
    return n == SBX_LAYER_KEY_LEN;
}

char *
sbx_layer_path(const char *state_dir, const char *key)
{
    char *p;
    if (asprintf(&p, "%s/" SBX_LAYERS_DIR "/%s", state_dir, key) < 0)
        abort();
    return p;
}

bool
sbx_layer_exists(const char *state_dir, const char *key)
{
    if (!sbx_layer_key_is_valid(key))
        return false;
    _cleanup_free_ char *p = sbx_layer_path(state_dir, key);
    struct stat st;
    return lstat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Removes dir/name and everything below it, without following symlinks. */
static int
remove_entry(int dir, const char *name, struct sbx_error **err)
{
    _cleanup_close_ int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : sbx_error_sys(err, errno, "open layer %s", name);
    if (sbx_fs_clear_dir(fd, err) < 0)
        return sbx_error_prefix(err, "remove layer %s", name);
    if (unlinkat(dir, name, AT_REMOVEDIR) < 0)
        return sbx_error_sys(err, errno, "remove layer %s", name);
    return 0;
}

/* Calls fn for every entry of the store but . and ..; stops at the first failure. */
static int
each_entry(const char *state_dir,
           int (*fn)(int dir, const char *name, void *ud, struct sbx_error **), void *ud,
           struct sbx_error **err)
{
    char p[4096];
    if (sbx_pathf(p, sizeof(p), "%s/" SBX_LAYERS_DIR, state_dir) < 0)
        return sbx_error_sys(err, errno, "layer store path");
    DIR *d = opendir(p);
    if (d == NULL)
        return sbx_error_sys(err, errno, "open %s", p);
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            rc = fn(dirfd(d), e->d_name, ud, err);
    closedir(d);
    return rc;
}

static int
drop_unfinished(int dir, const char *name, void *ud, struct sbx_error **err)
{
    (void)ud;
    return strncmp(name, NEW_PREFIX, strlen(NEW_PREFIX)) == 0 ? remove_entry(dir, name, err) : 0;
}

int
sbx_layers_prepare(const char *state_dir, struct sbx_error **err)
{
    char p[4096];
    if (sbx_pathf(p, sizeof(p), "%s/" SBX_LAYERS_DIR, state_dir) < 0)
        return sbx_error_sys(err, errno, "layer store path");
    if (mkdir(p, 0700) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", p);
    /* Root-only: a host user who could reach a layer could change what every sandbox of
     * its templates runs, and layer files carry sandbox uids that may be host users' too. */
    if (chown(p, 0, 0) < 0 || chmod(p, 0700) < 0)
        return sbx_error_sys(err, errno, "secure %s", p);
    return each_entry(state_dir, drop_unfinished, NULL, err);
}

/* Runs cp with argv and waits for it; cp keeps owners, modes, times and extended attributes
 * (overlayfs' opaque-dir marks are trusted.* xattrs, which only root can copy). */
static int
run_cp(char *const argv[], struct sbx_error **err)
{
    pid_t pid = fork();
    if (pid < 0)
        return sbx_error_sys(err, errno, "fork");
    if (pid == 0) {
        char *const envp[] = {"PATH=/usr/bin:/bin", "LC_ALL=C", NULL};
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0)
            dup2(null, STDIN_FILENO);
        execve("/usr/bin/cp", argv, envp);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return sbx_error_sys(err, errno, "wait for cp");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "cp exited with status %d",
                             WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    return 0;
}

int
sbx_layer_import(const char *state_dir, const char *cache_dir, const char *key,
                 struct sbx_error **err)
{
    if (!sbx_layer_key_is_valid(key))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad layer key");
    if (sbx_layer_exists(state_dir, key))
        return 0;
    char src[4096], info[4096], tmp[4096];
    _cleanup_free_ char *dst = sbx_layer_path(state_dir, key);
    if (sbx_pathf(src, sizeof(src), "%s/%s/tree", cache_dir, key) < 0 ||
        sbx_pathf(info, sizeof(info), "%s/%s/info", cache_dir, key) < 0 ||
        sbx_pathf(tmp, sizeof(tmp), "%s/" SBX_LAYERS_DIR "/" NEW_PREFIX "%s", state_dir, key) < 0)
        return sbx_error_sys(err, errno, "layer path");
    /* info is written last by scripts/templates.sh: without it the layer is not finished. */
    struct stat st_src, st_store;
    if (access(info, F_OK) < 0 || lstat(src, &st_src) < 0 || !S_ISDIR(st_src.st_mode))
        return sbx_error_set(err, SBX_NOT_FOUND, 0,
                             "layer %s is not in the layer cache %s: build the built-in "
                             "templates with scripts/templates.sh build (make serve does)",
                             key, cache_dir);
    char store[4096];
    snprintf(store, sizeof(store), "%s/" SBX_LAYERS_DIR, state_dir);
    if (stat(store, &st_store) < 0)
        return sbx_error_sys(err, errno, "stat %s", store);
    /* Hard links share the cache's inodes (and their page cache); a layer never changes, so
     * sharing them is safe. Another filesystem gets a copy. */
    bool same_fs = st_src.st_dev == st_store.st_dev;
    char *const argv[] = {"cp", "-a", same_fs ? "-l" : "--reflink=auto", "-T", "--", src,
                          tmp,  NULL};
    struct sbx_error *ignored = NULL;
    if (remove_entry(AT_FDCWD, tmp, &ignored) < 0)
        sbx_error_free(ignored);
    if (run_cp(argv, err) < 0)
        return sbx_error_prefix(err, "import layer %s from %s", key, cache_dir);
    if (rename(tmp, dst) < 0)
        return sbx_error_sys(err, errno, "rename %s", tmp);
    return 0;
}

struct gc {
    const char *const *keep;
    size_t n;
    size_t removed;
};

static int
drop_unkept(int dir, const char *name, void *ud, struct sbx_error **err)
{
    struct gc *g = ud;
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->keep[i], name) == 0)
            return 0;
    g->removed++;
    return remove_entry(dir, name, err);
}

int
sbx_layers_gc(const char *state_dir, const char *const *keep, size_t n, struct sbx_error **err)
{
    struct gc g = {keep, n, 0};
    return each_entry(state_dir, drop_unkept, &g, err) < 0 ? -1 : (int)g.removed;
}
