/* Shared by the filesystem service, the watchers and /files: acting for a sandbox user as envd
 * does, as sandbox root (below), resolving request paths, EntryInfo, and user metadata in
 * xattrs. Never resolves a client's path through a /proc magic link, and never reads, lists,
 * watches or writes procfs for a client. */
#ifndef SBX_AGENT_FSUTIL_H
#define SBX_AGENT_FSUTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "base/error.h"

#define SBX_AGENT_PATH_MAX           4096
#define SBX_AGENT_XATTR_PREFIX       "user.e2b."
#define SBX_AGENT_METADATA_MAX_KEY   246    /* bytes of a key after the prefix */
#define SBX_AGENT_METADATA_MAX_TOTAL 4096   /* keys + values of one file */
#define SBX_AGENT_LIST_MAX_ENTRIES   200000 /* ListDir answer */

/* Request path -> clean absolute path (malloc'd). len bytes of p are examined so that an
 * embedded NUL is caught. Empty, "~" and "~/x" and relative paths resolve against home, as
 * in envd. NUL bytes, invalid UTF-8, over-long paths and "~name" (which envd does not expand)
 * are SBX_INVALID_ARGUMENT. */
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

/* ---- acting for a user ----
 *
 * envd runs as root and does every file operation as root, with no permission check of its
 * own: it resolves the request's path for the operation user ("~" and relative paths against
 * that user's home), then reads, stats, lists, watches, removes and renames whatever root can,
 * following symlinks, and creates missing parents (0755) and new files (0666 & ~022) as root,
 * chowning each to the user, as it chowns an existing file before truncating it. So on E2B a
 * user may read and write every path root can (`/root/x`, `/etc/shadow`). The agent does the
 * same with its own identity, sandbox root; E2B's contract gives the user passwordless sudo,
 * so a client gains nothing sandbox root did not have already.
 *
 * What sandbox root cannot do, and the agent could, is reach the agent itself: the kernel
 * lets a process open its own /proc entries whatever their owner and its dumpable flag
 * (/proc/1/mem, environ, oom_score_adj, fd/, reached also as /proc/self, /proc/thread-self and
 * /proc/<tid> of its threads), and the magic links /proc/<pid>/{fd,root,cwd,exe,map_files} lead
 * to objects that may have no name in the sandbox (the agent's host descriptors). A user's
 * path or symlink must not take root there:
 *   - every path is opened with openat2 and RESOLVE_NO_MAGICLINKS, so no path, and no symlink
 *     in it, resolves through a magic link (a trailing one opened with O_PATH|O_NOFOLLOW is the
 *     link itself); operations then act on the descriptor, or on single names relative to a
 *     descriptor of their directory without following symlinks, never by a path again;
 *   - nothing on procfs is read, listed, watched or written for a client: a file is opened
 *     first, checked on its descriptor (sbx_agent_fd_is_proc) and only then read, chowned,
 *     truncated or written, so no swap between a check and the act changes what is acted on;
 *     walks (ListDir's depth, recursive watches, Remove) do not enter a /proc mount, and
 *     Remove refuses a path there. Stat of a /proc entry shows its inode (mode, size, owner),
 *     as for any file; renaming there the kernel refuses;
 *   - directories are made with mkdirat relative to a descriptor of their parent and chowned
 *     through a descriptor opened without following symlinks, never by name.
 * Everything else a symlink leads to, root could be asked to act on by naming the target. */

/* openat2 of name in dirfd with O_CLOEXEC added and RESOLVE_NO_MAGICLINKS (mode only with
 * O_CREAT). -1 with errno (ELOOP at a magic link). */
int sbx_agent_open_for_user(int dirfd, const char *name, int flags, mode_t mode);
/* -1 with the error of errno e from "<what> '<path>'" (the first len bytes of path); ELOOP is
 * explained, as it is also what RESOLVE_NO_MAGICLINKS answers. */
int sbx_agent_open_error(struct sbx_error **err, int e, const char *what, const char *path,
                         int len);
/* Whether fd is on procfs (true, too, if that cannot be told). */
bool sbx_agent_fd_is_proc(int fd);
/* Opens dir (clean, absolute), first making it and any missing parent as envd's EnsureDirs
 * does: mode 0755, then owned by uid:gid. Returns an O_PATH fd of dir; *created (may be NULL)
 * says whether dir itself was made. A component that is not a directory is invalid_argument. */
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

/* EntryInfo JSON of path (not followed if it is a symlink; see filesystem.c for the fields),
 * its name the base name of path. NULL with not_found if it does not exist. Resolved as
 * sbx_agent_open_for_user resolves, never through a magic link. */
json_t *sbx_agent_entry_info(const char *path, struct sbx_agent_names *names,
                             struct sbx_error **err);
/* The same of name in directory dirfd (O_PATH will do), shown as path. */
json_t *sbx_agent_entry_info_at(int dirfd, const char *name, const char *path,
                                struct sbx_agent_names *names, struct sbx_error **err);
/* The names in directory dirfd (O_PATH will do) but "." and "..", sorted bytewise as Go's
 * filepath.WalkDir visits them; NULL with errno if it cannot be read. */
char **sbx_agent_dir_names(int dirfd, size_t *n);
void sbx_agent_dir_names_free(char **names, size_t n);
/* Go FileMode.String() of an lstat mode, e.g. "-rw-r--r--", "drwxr-xr-x", "Lrwxrwxrwx". */
void sbx_agent_mode_string(mode_t m, char out[16]);
/* proto3 JSON Timestamp of a struct timespec: RFC 3339, UTC, 0/3/6/9 fraction digits. */
void sbx_agent_timestamp_format(const struct timespec *ts, char *out, size_t outlen);

/* Replaces every user.e2b.* xattr of fd with kv (object of strings; NULL clears). */
int sbx_agent_metadata_write_fd(int fd, json_t *kv, struct sbx_error **err);
/* Checks one metadata key (already lowercased) and value; -1 with invalid_argument. */
int sbx_agent_metadata_check(const char *key, const char *value, size_t *total,
                             struct sbx_error **err);

#endif
