/* Shared by the filesystem service, the watchers and /files: running file operations as a
 * sandbox user, writing on a user's behalf as envd does, resolving request paths, EntryInfo,
 * and user metadata in xattrs.
 *
 * Acting as a user: the agent is one thread on its loop, so each file operation other than the
 * writes below switches the filesystem uid/gid (setfsuid/setfsgid, per thread, reverted after
 * the operation) to the operation user. The kernel then checks permissions as that user and new
 * files and directories are owned by it. For a user other than root the thread's effective
 * capabilities are emptied as well (setfsuid alone keeps e.g. CAP_SYS_PTRACE, which would
 * open /proc/1/root and /proc/<pid>/mem of root processes to that user). Supplementary groups are
 * not switched (setgroups is process-wide): the fs identity is the user's uid and primary gid.
 * Never held across an event loop turn. */
#ifndef SBX_AGENT_FSUTIL_H
#define SBX_AGENT_FSUTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "agent/users.h"
#include "base/error.h"

#define SBX_AGENT_PATH_MAX           4096
#define SBX_AGENT_XATTR_PREFIX       "user.e2b."
#define SBX_AGENT_METADATA_MAX_KEY   246    /* bytes of a key after the prefix */
#define SBX_AGENT_METADATA_MAX_TOTAL 4096   /* keys + values of one file */
#define SBX_AGENT_LIST_MAX_ENTRIES   200000 /* ListDir answer */

struct sbx_agent_fsuser {
    uid_t uid;
    gid_t gid;
    uint32_t effective[2]; /* the agent's effective capabilities, restored on leave */
    bool caps_lowered;
    bool active;
};

/* Switches the fs identity to u; *saved restores it. */
int sbx_agent_fsuser_enter(const struct sbx_agent_user *u, struct sbx_agent_fsuser *saved,
                           struct sbx_error **err);
void sbx_agent_fsuser_leave(struct sbx_agent_fsuser *saved);
static inline void
sbx_agent_fsuser_leavep(struct sbx_agent_fsuser *s)
{
    sbx_agent_fsuser_leave(s);
}
#define _cleanup_fsuser_ __attribute__((cleanup(sbx_agent_fsuser_leavep)))

/* Request path -> clean absolute path (malloc'd). len bytes of p are examined so that an
 * embedded NUL is caught. Empty, "~" and "~/x" and relative paths resolve against home, as
 * in envd. NUL bytes, invalid UTF-8 and over-long paths are SBX_INVALID_ARGUMENT. */
char *sbx_agent_path_resolve(const char *p, size_t len, const char *home, struct sbx_error **err);
/* Lexical clean of an absolute path in place: "//", "/./", "/x/.." removed; ".." at the root
 * stays at the root (Go's filepath.Clean). */
void sbx_agent_path_clean(char *p);
bool sbx_agent_utf8_is_valid(const char *s, size_t len);
/* Last path component of a clean absolute path (pointer into p; "/" for the root). */
const char *sbx_agent_path_base(const char *p);
/* Parent directory of a clean absolute path (malloc'd). */
char *sbx_agent_path_dir(const char *p);
char *sbx_agent_path_join(const char *dir, const char *name);

/* Whether path (resolved through symlinks, as the current fs user) names the agent's own
 * /proc/<pid> entries. The kernel always lets a process open its own /proc entries, so a
 * user acting through the agent would otherwise reach PID 1's environ, mem, fds and
 * oom_score_adj. Non-root operations refuse such paths. */
bool sbx_agent_path_is_agent_proc(const char *path);

/* ---- writing on a user's behalf: uploads, MakeDir, the parents of Move's destination ----
 *
 * envd runs as root and does no permission check of its own: it creates missing parents
 * (0755) and new files (0666 & ~022) as root and then chowns each to the user, and chowns an
 * existing file to the user before truncating it, following symlinks all along. So on E2B a
 * user may write every path root can (`/0/x.txt`, `/etc/x`, `/root/x`). These helpers do the
 * same with the agent's own identity, sandbox root; E2B's contract gives the user
 * passwordless sudo, so a client gains nothing sandbox root did not have already.
 *
 * What sandbox root cannot do, and the agent could, is write into the agent itself: the
 * kernel lets a process open its own /proc entries whatever their owner (/proc/1/mem,
 * oom_score_adj, attr/..., reached also as /proc/self and /proc/<tid> of its threads), and the
 * magic links /proc/<pid>/{fd,root,cwd,exe,map_files} lead to objects that may have no name in
 * the sandbox (the agent's host descriptors). A user's symlink must not make root write there:
 *   - every open here uses openat2 with RESOLVE_NO_MAGICLINKS, so no path, and no symlink in
 *     it, resolves through a magic link;
 *   - a file is opened first, then checked on its descriptor (sbx_agent_fd_is_proc) and only
 *     then chowned, truncated or written: nothing on procfs is written, whichever symlinks led
 *     there, and no swap between a check and the write can change what is written;
 *   - directories are made with mkdirat relative to a descriptor of their parent and chowned
 *     through a descriptor opened without following symlinks, never by name.
 * Everything else a symlink leads to, root could be asked to write by naming the target. */

/* openat2 of name in dirfd with O_CLOEXEC added and RESOLVE_NO_MAGICLINKS (mode only with
 * O_CREAT). Call with the agent's own fs identity. -1 with errno (ELOOP at a magic link). */
int sbx_agent_open_for_user(int dirfd, const char *name, int flags, mode_t mode);
/* -1 with the error of errno e from "<what> '<path>'" (the first len bytes of path); ELOOP is
 * explained, as it is also what RESOLVE_NO_MAGICLINKS answers. */
int sbx_agent_write_error(struct sbx_error **err, int e, const char *what, const char *path,
                          int len);
/* Whether fd is on procfs (true, too, if that cannot be told). */
bool sbx_agent_fd_is_proc(int fd);
/* Opens dir (clean, absolute), first making it and any missing parent as envd's EnsureDirs
 * does: mode 0755, then owned by uid:gid. Returns an O_PATH fd of dir; *created (may be NULL)
 * says whether dir itself was made. A component that is not a directory is invalid_argument.
 * Call with the agent's own fs identity. */
int sbx_agent_dir_make(const char *dir, uid_t uid, gid_t gid, bool *created,
                       struct sbx_error **err);

/* errno -> error with the filesystem meaning of the code (ENOENT not_found, ENAMETOOLONG
 * invalid_argument, ENOSPC/EDQUOT resource_exhausted...). Returns -1. */
int sbx_agent_fs_error(struct sbx_error **err, int e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* uid/gid -> name, from the sandbox's /etc/passwd and /etc/group, cached per request. */
struct sbx_agent_names;
struct sbx_agent_names *sbx_agent_names_new(void);
void sbx_agent_names_free(struct sbx_agent_names *n);

/* EntryInfo JSON of path (not followed if it is a symlink; see filesystem.c for the fields).
 * name is the base name of path. NULL with not_found if it does not exist. */
json_t *sbx_agent_entry_info(const char *path, struct sbx_agent_names *names,
                             struct sbx_error **err);
/* Go FileMode.String() of an lstat mode, e.g. "-rw-r--r--", "drwxr-xr-x", "Lrwxrwxrwx". */
void sbx_agent_mode_string(mode_t m, char out[16]);
/* proto3 JSON Timestamp of a struct timespec: RFC 3339, UTC, 0/3/6/9 fraction digits. */
void sbx_agent_timestamp_format(const struct timespec *ts, char *out, size_t outlen);

/* user.e2b.* xattrs of an open file as an object of strings; NULL when there are none. */
json_t *sbx_agent_metadata_read_fd(int fd);
json_t *sbx_agent_metadata_read_path(const char *path);
/* Replaces every user.e2b.* xattr of fd with kv (object of strings; NULL clears). */
int sbx_agent_metadata_write_fd(int fd, json_t *kv, struct sbx_error **err);
/* Checks one metadata key (already lowercased) and value; -1 with invalid_argument. */
int sbx_agent_metadata_check(const char *key, const char *value, size_t *total,
                             struct sbx_error **err);

#endif
