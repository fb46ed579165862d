/* The agent runtime: the agent's program with the host's dynamic loader and every shared
 * library the agent needs, copied into <state_dir>/runtime/<key>/ so that the agent never
 * loads a file of the template's root (an ubuntu, alpine or busybox image has neither our
 * libuv nor our glibc). The spawner makes it once at start; every sandbox gets it read-only
 * at SBX_AGENT_RUNTIME_PATH (spawn.c) and runs PID 1 as
 *
 *   ld.so --argv0 sbx --library-path SBX_AGENT_RUNTIME_PATH SBX_AGENT_RUNTIME_PATH/agent ...
 *
 * --library-path is an argument of the loader, not LD_LIBRARY_PATH: what the agent starts
 * runs on the image's own libraries. Which libraries: what the host's own loader lists for
 * the agent and for libzmq and libssl, which it loads on first use (`ld.so --list`, glibc's
 * ldd), which resolves DT_NEEDED recursively exactly as an exec would; it maps the files but
 * runs none of their code. */
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "base/cleanup.h"
#include "jupyter/kernel.h"
#include "sandbox/internal.h"

#define RUNTIME_DIR "runtime"
#define NEW_PREFIX  ".new-"
#define LIST_MAX    (64 * 1024) /* ld.so --list output; the agent needs ~30 libraries */

/* The PT_INTERP of a 64-bit ELF image (our own agent, so trusted, but bounds-checked). */
static int
elf_interp(const unsigned char *img, size_t len, char *out, size_t cap, struct sbx_error **err)
{
    const Elf64_Ehdr *eh = (const void *)img;
    if (len < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 ||
        eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_phentsize != sizeof(Elf64_Phdr) ||
        eh->e_phoff > len || (len - eh->e_phoff) / sizeof(Elf64_Phdr) < eh->e_phnum)
        return sbx_error_set(err, SBX_INTERNAL, 0, "the agent is not a 64-bit ELF program");
    const Elf64_Phdr *ph = (const void *)(img + eh->e_phoff);
    for (size_t i = 0; i < eh->e_phnum; i++) {
        if (ph[i].p_type != PT_INTERP)
            continue;
        if (ph[i].p_offset > len || ph[i].p_filesz > len - ph[i].p_offset || ph[i].p_filesz == 0 ||
            ph[i].p_filesz > cap || img[ph[i].p_offset + ph[i].p_filesz - 1] != '\0')
            break;
        memcpy(out, img + ph[i].p_offset, ph[i].p_filesz);
        return out[0] == '/' ? 0 : sbx_error_set(err, SBX_INTERNAL, 0, "bad agent interpreter");
    }
    return sbx_error_set(err, SBX_INTERNAL, 0, "the agent has no interpreter: nothing to copy");
}

/* `interp --list --preload libzmq:libssl agent` into buf (NUL-terminated). */
static int
list_libraries(const char *interp, const char *agent, char *buf, size_t cap, struct sbx_error **err)
{
    _cleanup_close_ int out = memfd_create("sbx-ldlist", MFD_CLOEXEC);
    if (out < 0)
        return sbx_error_sys(err, errno, "memfd_create");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out, 1);
    posix_spawn_file_actions_adddup2(&fa, out, 2);
    /* --preload adds the libraries the agent loads only when it needs them (dlopen), and
     * theirs, to the list, resolved as the agent's own are. */
    char *const argv[] = {(char *)interp, "--list",
                          "--preload",    SBX_ZMQ_SONAME ":" SBX_OPENSSL_SONAME,
                          (char *)agent,  NULL};
    char *const envp[] = {NULL}; /* no LD_* of ours changes what it resolves */
    pid_t pid;
    int rc = posix_spawn(&pid, interp, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return sbx_error_sys(err, rc, "run %s --list", interp);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return sbx_error_sys(err, errno, "wait for %s", interp);
    ssize_t n = pread(out, buf, cap - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || n <= 0 || (size_t)n == cap - 1)
        return sbx_error_set(err, SBX_INTERNAL, 0, "%s --list the agent failed: %.200s", interp,
                             buf);
    return 0;
}

/* Copies the file at src (following symlinks: libraries are links to versioned files) to
 * dir/name, 0644 or 0755, and feeds name and content to the digest. */
static int
copy_in(int dir, const char *name, const char *src, mode_t mode, EVP_MD_CTX *md,
        struct sbx_error **err)
{
    _cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (in < 0 || fstat(in, &st) < 0)
        return sbx_error_sys(err, errno, "open %s", src);
    if (!S_ISREG(st.st_mode))
        return sbx_error_set(err, SBX_INTERNAL, 0, "%s is not a file", src);
    void *p = st.st_size ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, in, 0) : NULL;
    if (p == MAP_FAILED)
        return sbx_error_sys(err, errno, "map %s", src);
    EVP_DigestUpdate(md, name, strlen(name) + 1);
    EVP_DigestUpdate(md, p, (size_t)st.st_size);
    int rc = sbx_fs_write_file_at(dir, name, p, (size_t)st.st_size, mode);
    if (p)
        munmap(p, (size_t)st.st_size);
    return rc < 0 ? sbx_error_sys(err, errno, "copy %s", src) : 0;
}

/* Copies every library of the loader's list: lines "\tsoname => /path (0x...)". The loader
 * itself ("\t/lib64/ld-linux-x86-64.so.2 (0x...)") and the vDSO have no "=>". */
static int
copy_libraries(int dir, char *list, EVP_MD_CTX *md, struct sbx_error **err)
{
    char *save = NULL;
    for (char *line = strtok_r(list, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *arrow = strstr(line, " => ");
        if (arrow == NULL)
            continue;
        *arrow = '\0';
        char *name = line + strspn(line, " \t"), *path = arrow + 4, *end = strstr(path, " (");
        if (end == NULL || path[0] != '/' || strchr(name, '/') || name[0] == '.' || !name[0])
            return sbx_error_set(err, SBX_INTERNAL, 0, "the agent's library %s: %s", name, path);
        *end = '\0';
        if (copy_in(dir, name, path, 0644, md, err) < 0)
            return -1;
    }
    return 0;
}

/* Removes dir/name, a flat dir of files (a runtime), or a file. */
static int
remove_runtime(int dir, const char *name, struct sbx_error **err)
{
    _cleanup_close_ int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return unlinkat(dir, name, 0) < 0 && errno != ENOENT
                   ? sbx_error_sys(err, errno, "remove runtime %s", name)
                   : 0;
    if (sbx_fs_clear_dir(fd, err) < 0 || unlinkat(dir, name, AT_REMOVEDIR) < 0)
        return sbx_error_sys(err, errno, "remove runtime %s", name);
    return 0;
}

/* Every entry of the runtime dir but keep: earlier runtimes and unfinished ones. A sandbox
 * still running on an earlier runtime keeps the files its agent has mapped. */
static int
remove_others(int dir, const char *keep, struct sbx_error **err)
{
    DIR *d = fdopendir(dup(dir));
    if (d == NULL)
        return sbx_error_sys(err, errno, "open the runtime dir");
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, keep))
            rc = remove_runtime(dirfd(d), e->d_name, err);
    closedir(d);
    return rc;
}

static int
fill(int dir, const char *tmp, const void *image, size_t len, EVP_MD_CTX *md,
     struct sbx_error **err)
{
    char interp[256], agent[4096];
    static char list[LIST_MAX];
    if (elf_interp(image, len, interp, sizeof(interp), err) < 0)
        return -1;
    if (sbx_fs_write_file_at(dir, SBX_AGENT_RUNTIME_AGENT, image, len, 0755) < 0)
        return sbx_error_sys(err, errno, "write the agent");
    EVP_DigestUpdate(md, image, len);
    if (sbx_pathf(agent, sizeof(agent), "%s/" SBX_AGENT_RUNTIME_AGENT, tmp) < 0)
        return sbx_error_sys(err, errno, "runtime path");
    if (list_libraries(interp, agent, list, sizeof(list), err) < 0 ||
        copy_in(dir, SBX_AGENT_RUNTIME_LOADER, interp, 0755, md, err) < 0)
        return -1;
    return copy_libraries(dir, list, md, err);
}

int
sbx_agent_runtime_make(const char *state_dir, const void *image, size_t len, char **out,
                       struct sbx_error **err)
{
    char top[4096], tmp[4096];
    if (sbx_pathf(top, sizeof(top), "%s/" RUNTIME_DIR, state_dir) < 0 ||
        sbx_pathf(tmp, sizeof(tmp), "%s/" NEW_PREFIX "XXXXXX", top) < 0)
        return sbx_error_sys(err, errno, "runtime path");
    /* 0711: the files are root's, 0644/0755, never writable by anyone else; sandboxes reach
     * them only through their read-only mount. */
    if (mkdir(top, 0711) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", top);
    _cleanup_close_ int topfd = open(top, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (topfd < 0 || mkdtemp(tmp) == NULL)
        return sbx_error_sys(err, errno, "make a dir in %s", top);
    _cleanup_close_ int dir = open(tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char h[EVP_MAX_MD_SIZE];
    unsigned hl = 0;
    int rc = dir < 0 ? sbx_error_sys(err, errno, "open %s", tmp) : 0;
    if (rc == 0 && (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1))
        rc = sbx_error_set(err, SBX_INTERNAL, 0, "sha256");
    if (rc == 0)
        rc = fill(dir, tmp, image, len, md, err);
    if (rc == 0 && EVP_DigestFinal_ex(md, h, &hl) != 1)
        rc = sbx_error_set(err, SBX_INTERNAL, 0, "sha256");
    EVP_MD_CTX_free(md);
    char key[2 * EVP_MAX_MD_SIZE + 1] = "";
    for (unsigned i = 0; i < hl; i++)
        snprintf(key + 2 * i, 3, "%02x", h[i]);
    const char *name = strrchr(tmp, '/') + 1;
    /* Same files, same key: an existing runtime of that key stays as sandboxes see it, and
     * ours goes with the others below. */
    if (rc == 0 && fchmod(dir, 0755) < 0)
        rc = sbx_error_sys(err, errno, "chmod %s", tmp);
    if (rc == 0 && renameat(topfd, name, topfd, key) < 0 && errno != ENOTEMPTY && errno != EEXIST)
        rc = sbx_error_sys(err, errno, "store the runtime %s", key);
    if (rc < 0) {
        struct sbx_error *ignored = NULL;
        remove_runtime(topfd, name, &ignored);
        sbx_error_free(ignored);
        return -1;
    }
    if (remove_others(topfd, key, err) < 0)
        return -1;
    if (asprintf(out, "%s/%s", top, key) < 0)
        abort();
    return 0;
}

int
sbx_agent_runtime_mount(const char *dir, struct sbx_error **err)
{
    _cleanup_close_ int fd = open_tree(AT_FDCWD, dir, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (fd < 0)
        return sbx_error_sys(err, errno, "open_tree %s", dir);
    /* Shared by every sandbox, so no sandbox may change it. Read-only, and not idmapped: its
     * files stay owned by host root, which no sandbox's user namespace maps, so even a
     * sandbox root that remounted it read-write could not write them (capabilities(7): a
     * namespace's capabilities cover only inodes whose owner it maps). nosuid, nodev: it has
     * neither, and none can appear. */
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    };
    if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
        return sbx_error_sys(err, errno, "make the agent runtime read-only");
    return steal_fd(&fd);
}
