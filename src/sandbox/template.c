/* The default template: the read-only lower layers shared by every sandbox, derived from the
 * host (design.md §2.3). Layout below <state_dir>/template:
 *
 *   VERSION    SBX_TEMPLATE_VERSION; anything else means "rebuild"
 *   rootfs/    lower layer of "/": generated /etc, /bin /sbin /lib /lib64 symlinks into usr/,
 *              empty mount points (usr proc sys dev tmp run), root (0700), home/user (uid 1000)
 *   usrmask/   upper-most lower layer of "/usr": an opaque, empty local/ that hides the
 *              host's /usr/local
 *
 * Files are owned by host root on disk; the idmapped mounts (rootfs.c) make them appear owned
 * by sandbox root. home/user is owned by 1000 on disk so that it appears as the sandbox's
 * uid 1000. Nothing from the host's /etc is copied unless it is world-readable and on the
 * list below: no shadow, no keys, no /etc/ssl/private.
 *
 * The template is built in a temporary directory and renamed into place, so a crash never
 * leaves a half-built template that looks finished. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "sandbox/internal.h"

#define SBX_TEMPLATE_VERSION "sbx-template-4\n"
#define TEMPLATE_DIR         "template"
#define COPY_MAX_DEPTH       8
#define COPY_MAX_FILE        (16 * 1024 * 1024)

/* World-readable host /etc entries the sandbox's programs need. */
static const char *const host_etc_copies[] = {
    "alternatives",    /* awk, which, pager, editor ... are alternatives symlinks */
    "ssl/certs",       /* CA certificates (never ssl/private) */
    "ssl/openssl.cnf", /* without it OpenSSL-based Python loads no CAs */
    "ca-certificates.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "pam.d",
    "security", /* su, runuser; pam.d/sudo is replaced below */
    "login.defs",
    "os-release",
    "debian_version",
    "lsb-release",
    "services",
    "protocols",
    "gai.conf",
    "inputrc",
    "mime.types",
    "magic",
    "magic.mime",
    "localtime",
    "timezone",
    "python3",
    "python3.11",
    "matplotlibrc",
    "jupyter",
    "fonts",
    "R",
    "java-17-openjdk", /* the JDK's lib/jvm.cfg and conf/ are symlinks into it */
    "bash_completion",
    "bash_completion.d",
    "resolv.conf",
};

struct gen_file {
    const char *path;
    mode_t mode;
    gid_t gid;
    const char *data;
};

static const struct gen_file generated[] = {
    {"passwd", 0644, 0,
     "root:x:0:0:root:/root:/bin/bash\n"
     "user:x:1000:1000:user:/home/user:/bin/bash\n"
     "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"},
    {"group", 0644, 0,
     "root:x:0:\ntty:x:5:\nsudo:x:27:user\nshadow:x:42:\nusers:x:100:user\n"
     "user:x:1000:\nnogroup:x:65534:\n"},
    /* Locked passwords ("*"): nobody logs in with a password; sudo uses pam_permit. */
    {"shadow", 0640, 42,
     "root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"},
    {"gshadow", 0640, 42,
     "root:*::\ntty:*::\nsudo:*::user\nshadow:*::\nusers:*::user\nuser:!::\nnogroup:*::\n"},
    {"sudoers", 0440, 0,
     "Defaults\tenv_reset\n"
     "Defaults\tsecure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n"
     "root\tALL=(ALL:ALL) ALL\n"
     "user\tALL=(ALL:ALL) NOPASSWD: ALL\n"
     "@includedir /etc/sudoers.d\n"},
    /* The sandbox user is root-equivalent by design (passwordless sudo); PAM has nothing to
     * check, and pam_permit avoids needing shadow and limits.conf to be just right. */
    {"pam.d/sudo", 0644, 0,
     "auth\trequired\tpam_permit.so\naccount\trequired\tpam_permit.so\n"
     "session\trequired\tpam_permit.so\n"},
    {"pam.d/sudo-i", 0644, 0,
     "auth\trequired\tpam_permit.so\naccount\trequired\tpam_permit.so\n"
     "session\trequired\tpam_permit.so\n"},
    {"hostname", 0644, 0, "sandbox\n"},
    {"hosts", 0644, 0,
     "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
    {"nsswitch.conf", 0644, 0,
     "passwd:\tfiles\ngroup:\tfiles\nshadow:\tfiles\ngshadow:\tfiles\nhosts:\tfiles dns\n"
     "networks:\tfiles\nprotocols:\tfiles\nservices:\tfiles\nethers:\tfiles\nrpc:\tfiles\n"},
    {"shells", 0644, 0, "/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n"},
    {"profile", 0644, 0,
     "PATH=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n"
     /* $EUID (bash) spares every login shell a fork of id(1); sh falls back to it. */
     "if [ \"${EUID:-$(id -u)}\" -ne 0 ]; then PATH=\"$HOME/.local/bin:$PATH\"; fi\n"
     "export PATH\n"
     "if [ -n \"$BASH_VERSION\" ] && [ -n \"$PS1\" ] && [ -f /etc/bash.bashrc ]; then\n"
     "  . /etc/bash.bashrc\nfi\n"},
    {"bash.bashrc", 0644, 0,
     "[ -z \"$PS1\" ] && return\n"
     "PS1='\\u@\\h:\\w\\$ '\n"
     "shopt -s checkwinsize\n"},
    {"environment", 0644, 0, ""},
};

static int
mkdir_mode(int dfd, const char *name, mode_t mode, uid_t uid, gid_t gid)
{
    if (mkdirat(dfd, name, mode) < 0 && errno != EEXIST)
        return -1;
    if (fchownat(dfd, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
        return -1;
    return fchmodat(dfd, name, mode, 0);
}

/* Copies one host entry (file, symlink or directory tree) from src_dfd/name to
 * dst_dfd/name. Files that are not world-readable are skipped. */
static int
copy_entry(int src_dfd, int dst_dfd, const char *name, int depth, struct sbx_error **err)
{
    struct stat st;
    if (fstatat(src_dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return 0;
        return sbx_error_sys(err, errno, "stat /etc/.../%s", name);
    }
    if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t n = readlinkat(src_dfd, name, target, sizeof(target) - 1);
        if (n < 0)
            return sbx_error_sys(err, errno, "readlink %s", name);
        target[n] = '\0';
        unlinkat(dst_dfd, name, 0);
        if (symlinkat(target, dst_dfd, name) < 0)
            return sbx_error_sys(err, errno, "symlink %s", name);
        return 0;
    }
    if (!(st.st_mode & S_IROTH))
        return 0; /* private to host root: a secret, or at least not ours to share */
    if (S_ISREG(st.st_mode)) {
        if (st.st_size > COPY_MAX_FILE)
            return 0;
        _cleanup_close_ int in = openat(src_dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (in < 0)
            return sbx_error_sys(err, errno, "open %s", name);
        char *buf = malloc((size_t)st.st_size + 1);
        if (buf == NULL)
            abort();
        ssize_t n = pread(in, buf, (size_t)st.st_size, 0);
        int rc = 0;
        if (n < 0)
            rc = sbx_error_sys(err, errno, "read %s", name);
        /* setuid/setgid bits never make sense in /etc; keep only the permission bits. */
        else if (sbx_fs_write_file_at(dst_dfd, name, buf, (size_t)n, st.st_mode & 0755) < 0)
            rc = sbx_error_sys(err, errno, "write %s", name);
        free(buf);
        return rc;
    }
    if (!S_ISDIR(st.st_mode) || depth >= COPY_MAX_DEPTH)
        return 0;
    if (mkdir_mode(dst_dfd, name, st.st_mode & 0755, 0, 0) < 0)
        return sbx_error_sys(err, errno, "mkdir %s", name);
    _cleanup_close_ int sfd =
        openat(src_dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    _cleanup_close_ int dfd =
        openat(dst_dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sfd < 0 || dfd < 0)
        return sbx_error_sys(err, errno, "open dir %s", name);
    int dup_fd = fcntl(sfd, F_DUPFD_CLOEXEC, 3);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (d == NULL) {
        if (dup_fd >= 0)
            close(dup_fd);
        return sbx_error_sys(err, errno, "opendir %s", name);
    }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        rc = copy_entry(sfd, dfd, e->d_name, depth + 1, err);
    }
    closedir(d);
    return rc;
}

/* Copies host /etc/<rel> (rel may have a directory part, e.g. ssl/certs). */
static int
copy_host_etc(int etc_dfd, const char *rel, struct sbx_error **err)
{
    char parent[256];
    const char *slash = strrchr(rel, '/');
    _cleanup_close_ int src = -1, dst = -1;
    if (slash) {
        snprintf(parent, sizeof(parent), "%.*s", (int)(slash - rel), rel);
        src = open("/etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (src < 0)
            return sbx_error_sys(err, errno, "open /etc");
        int s2 = openat(src, parent, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (s2 < 0)
            return errno == ENOENT ? 0 : sbx_error_sys(err, errno, "open /etc/%s", parent);
        close(src);
        src = s2;
        if (mkdir_mode(etc_dfd, parent, 0755, 0, 0) < 0)
            return sbx_error_sys(err, errno, "mkdir etc/%s", parent);
        dst = openat(etc_dfd, parent, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dst < 0)
            return sbx_error_sys(err, errno, "open etc/%s", parent);
        return copy_entry(src, dst, slash + 1, 0, err);
    }
    src = open("/etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (src < 0)
        return sbx_error_sys(err, errno, "open /etc");
    return copy_entry(src, etc_dfd, rel, 0, err);
}

static int
build_etc(int root_dfd, struct sbx_error **err)
{
    if (mkdir_mode(root_dfd, "etc", 0755, 0, 0) < 0)
        return sbx_error_sys(err, errno, "mkdir etc");
    _cleanup_close_ int etc = openat(root_dfd, "etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (etc < 0)
        return sbx_error_sys(err, errno, "open etc");
    for (size_t i = 0; i < sizeof(host_etc_copies) / sizeof(host_etc_copies[0]); i++)
        if (copy_host_etc(etc, host_etc_copies[i], err) < 0)
            return sbx_error_prefix(err, "copy /etc/%s", host_etc_copies[i]);
    if (mkdir_mode(etc, "pam.d", 0755, 0, 0) < 0 || mkdir_mode(etc, "sudoers.d", 0755, 0, 0) < 0 ||
        mkdir_mode(etc, "security", 0755, 0, 0) < 0)
        return sbx_error_sys(err, errno, "mkdir etc subdirs");
    for (size_t i = 0; i < sizeof(generated) / sizeof(generated[0]); i++) {
        const struct gen_file *g = &generated[i];
        unlinkat(etc, g->path, 0); /* a copied symlink must not redirect our write */
        if (sbx_fs_write_file_at(etc, g->path, g->data, strlen(g->data), g->mode) < 0 ||
            fchownat(etc, g->path, 0, g->gid, AT_SYMLINK_NOFOLLOW) < 0)
            return sbx_error_sys(err, errno, "write etc/%s", g->path);
    }
    /* pam_limits (session of su/runuser) fails without it. */
    if (faccessat(etc, "security/limits.conf", F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
        sbx_fs_write_file_at(etc, "security/limits.conf", "", 0, 0644) < 0)
        return sbx_error_sys(err, errno, "write etc/security/limits.conf");
    unlinkat(etc, "mtab", 0);
    if (symlinkat("../proc/self/mounts", etc, "mtab") < 0)
        return sbx_error_sys(err, errno, "symlink etc/mtab");
    return 0;
}

static int
build_rootfs(int dfd, struct sbx_error **err)
{
    static const struct {
        const char *name;
        mode_t mode;
        uid_t owner;
    } dirs[] = {
        {"usr", 0755, 0},
        {"proc", 0555, 0},
        {"dev", 0755, 0},
        {"sys", 0555, 0},
        {"tmp", 01777, 0},
        {"run", 0755, 0},
        {"root", 0700, 0},
        {"home", 0755, 0},
        {"mnt", 0755, 0},
        {"opt", 0755, 0},
        {"srv", 0755, 0},
        {"media", 0755, 0},
        {"var", 0755, 0},
        {"var/tmp", 01777, 0},
        {"var/log", 0755, 0},
        {"var/cache", 0755, 0},
        {"var/lib", 0755, 0},
        {"var/spool", 0755, 0},
        {"home/user", 0755, SBX_SANDBOX_USER_UID},
    };
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
        if (mkdir_mode(dfd, dirs[i].name, dirs[i].mode, dirs[i].owner, dirs[i].owner) < 0)
            return sbx_error_sys(err, errno, "mkdir %s", dirs[i].name);
    /* Merged-/usr layout, as on the host (Debian 12). */
    static const char *const links[] = {"bin", "sbin", "lib", "lib64", "lib32", "libx32"};
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        char host[64], target[64];
        snprintf(host, sizeof(host), "/usr/%s", links[i]);
        if (access(host, F_OK) < 0)
            continue;
        snprintf(target, sizeof(target), "usr/%s", links[i]);
        if (symlinkat(target, dfd, links[i]) < 0)
            return sbx_error_sys(err, errno, "symlink %s", links[i]);
    }
    return build_etc(dfd, err);
}

static int
build_usrmask(int dfd, struct sbx_error **err)
{
    if (mkdir_mode(dfd, "local", 0755, 0, 0) < 0)
        return sbx_error_sys(err, errno, "mkdir usrmask/local");
    /* An opaque directory hides everything below the same path in lower layers: the host's
     * /usr/local contents never show (overlayfs.rst, "whiteouts and opaque directories").
     * trusted.* xattrs can only be written by host root, so the sandbox cannot forge one. */
    _cleanup_close_ int local = openat(dfd, "local", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (local < 0)
        return sbx_error_sys(err, errno, "open usrmask/local");
    if (fsetxattr(local, "trusted.overlay.opaque", "y", 1, 0) < 0)
        return sbx_error_sys(err, errno, "set opaque xattr on usrmask/local");
    static const char *const subdirs[] = {"bin", "etc",  "games", "include",
                                          "lib", "sbin", "share", "src"};
    for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++)
        if (mkdir_mode(local, subdirs[i], 0755, 0, 0) < 0)
            return sbx_error_sys(err, errno, "mkdir usrmask/local/%s", subdirs[i]);
    if (symlinkat("share/man", local, "man") < 0)
        return sbx_error_sys(err, errno, "symlink usrmask/local/man");
    return 0;
}

static int
remove_tree(const char *path, struct sbx_error **err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : sbx_error_sys(err, errno, "open %s", path);
    if (sbx_fs_clear_dir(fd, err) < 0)
        return -1;
    if (rmdir(path) < 0)
        return sbx_error_sys(err, errno, "rmdir %s", path);
    return 0;
}

static bool
is_current(const char *dir)
{
    char path[4096], buf[64];
    if (sbx_pathf(path, sizeof(path), "%s/VERSION", dir) < 0)
        return false;
    return sbx_fs_read_small(path, buf, sizeof(buf)) >= 0 && strcmp(buf, SBX_TEMPLATE_VERSION) == 0;
}

static int
build(const char *tmp, struct sbx_error **err)
{
    if (mkdir(tmp, 0755) < 0)
        return sbx_error_sys(err, errno, "mkdir %s", tmp);
    if (chmod(tmp, 0755) < 0)
        return sbx_error_sys(err, errno, "chmod %s", tmp);
    _cleanup_close_ int dfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return sbx_error_sys(err, errno, "open %s", tmp);
    if (mkdir_mode(dfd, SBX_TEMPLATE_ROOTFS, 0755, 0, 0) < 0 ||
        mkdir_mode(dfd, SBX_TEMPLATE_USRMASK, 0755, 0, 0) < 0)
        return sbx_error_sys(err, errno, "mkdir template layers");
    const int dflags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    _cleanup_close_ int root = openat(dfd, SBX_TEMPLATE_ROOTFS, dflags);
    _cleanup_close_ int mask = openat(dfd, SBX_TEMPLATE_USRMASK, dflags);
    if (root < 0 || mask < 0)
        return sbx_error_sys(err, errno, "open template layers");
    if (build_rootfs(root, err) < 0 || build_usrmask(mask, err) < 0)
        return -1;
    /* VERSION last: its presence marks a complete build. */
    if (sbx_fs_write_file_at(dfd, "VERSION", SBX_TEMPLATE_VERSION, strlen(SBX_TEMPLATE_VERSION),
                             0644) < 0)
        return sbx_error_sys(err, errno, "write VERSION");
    if (fsync(dfd) < 0)
        return sbx_error_sys(err, errno, "fsync %s", tmp);
    return 0;
}

int
sbx_template_prepare(const char *state_dir, char **out, struct sbx_error **err)
{
    char final[4096], tmp[4096];
    if (state_dir == NULL || state_dir[0] != '/' || strlen(state_dir) > 3000)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "state dir must be an absolute path");
    snprintf(final, sizeof(final), "%s/" TEMPLATE_DIR, state_dir);
    if (!is_current(final)) {
        snprintf(tmp, sizeof(tmp), "%s/.template-new-%d", state_dir, (int)getpid());
        if (remove_tree(tmp, err) < 0)
            return sbx_error_prefix(err, "template");
        if (build(tmp, err) < 0) {
            struct sbx_error *ignored = NULL;
            remove_tree(tmp, &ignored);
            sbx_error_free(ignored);
            return sbx_error_prefix(err, "build template");
        }
        /* Swap atomically with an older version, if any; then drop the old one. Running
         * sandboxes keep their idmapped mounts of the old layers until they exit. */
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0) {
            if (remove_tree(tmp, err) < 0)
                return sbx_error_prefix(err, "remove old template");
        } else if (errno == ENOENT) {
            if (rename(tmp, final) < 0)
                return sbx_error_sys(err, errno, "rename %s", tmp);
        } else {
            return sbx_error_sys(err, errno, "install template %s", final);
        }
    }
    *out = strdup(final);
    if (*out == NULL)
        abort();
    return 0;
}
