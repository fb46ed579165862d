/* The envd `filesystem.Filesystem` service (filesystem.c, watch.c) and the /files transfer
 * endpoint (files.c) of the agent. File operations run inside the sandbox's mount namespace,
 * as envd runs them: as sandbox root, paths resolved for the operation user, what they make
 * handed to that user, with the bounds fsutil.h describes. Nothing here opens listeners or
 * reads the agent config file.
 *
 * Symlinks: paths are resolved by the kernel following symlinks, as in envd (operations on
 * a named entry, Stat, Remove, a move's ends, act on a trailing symlink itself), but never
 * through a /proc magic link, and nothing on procfs is read, listed, watched or written
 * (fsutil.h). The agent's root is the sandbox's pivot_root'ed root. */
#ifndef SBX_AGENT_FILESYSTEM_H
#define SBX_AGENT_FILESYSTEM_H

#include <jansson.h>
#include <stdbool.h>

#include "agent/process.h"
#include "agent/users.h"
#include "base/error.h"
#include "http/http.h"

#define SBX_AGENT_WATCH_MAX        1024  /* live watchers (streams + polled) */
#define SBX_AGENT_WATCH_MAX_QUEUED 10000 /* undrained events of a polled watcher */
/* entries a recursive watcher reports as created when a directory appears with contents */
#define SBX_AGENT_WATCH_MAX_ANNOUNCED 65536
#define SBX_AGENT_UPLOAD_MAX_FILES    10000 /* parts named "file" in one upload */
#define SBX_AGENT_IO_CHUNK            (64 * 1024)

/* Handles POST /filesystem.Filesystem/<method>; false if the path is not this service's. */
bool sbx_agent_fs_handle(struct sbx_http_req *req);
/* Handles GET/POST /files, including the access-token-or-signature check (spec §5.3). */
bool sbx_agent_files_handle(struct sbx_http_req *req, const struct sbx_agent_config *cfg);
/* Answers 200 with the size bytes of the regular file fd (taken), streamed with back-pressure
 * (gzip-encoded if asked; else with a Content-Length); done, if set, once it is over. */
void sbx_agent_file_send(struct sbx_http_req *req, int fd, int64_t size, bool gzip,
                         void (*done)(void));
/* Removes name below parent_fd, recursively, never following a symlink; shown names it in
 * errors. A missing name is not an error. */
int sbx_agent_remove_at(int parent_fd, const char *name, const char *shown, struct sbx_error **e);

/* volume.c: the volume content API of a volume's service sandbox (spec lifecycle.md §6.3). */
void sbx_agent_volume_init(void);
void sbx_agent_volume_handle(struct sbx_http_req *req);

/* watch.c: the WatchDir stream and the CreateWatcher/GetWatcherEvents/RemoveWatcher trio. */
void sbx_agent_watch_dir(struct sbx_http_req *req, json_t *msg);
void sbx_agent_watcher_create(struct sbx_http_req *req, json_t *msg);
void sbx_agent_watcher_events(struct sbx_http_req *req, json_t *msg);
void sbx_agent_watcher_remove(struct sbx_http_req *req, json_t *msg);

/* Reads the "path" (or other key) string field of a request and resolves it for user u. */
char *sbx_agent_fs_req_path(json_t *msg, const char *key, const struct sbx_agent_user *u,
                            struct sbx_error **err);

#endif
