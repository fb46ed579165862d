/* A checker of the tar archives that COPY steps upload (templates.md §2.3): plain or gzip
 * (told by the magic bytes), ustar with GNU long names and pax headers. It extracts nothing:
 * it reads the archive as it streams in and refuses what the build must never receive:
 *
 *   - a path that is absolute or has a ".." component (it would escape the COPY's context);
 *   - a path below a symlink of the same archive (extraction would write through the link);
 *   - a hard link to anything but an earlier regular file of the archive;
 *   - devices, FIFOs and unknown entry types;
 *   - more than max_entries entries or max_bytes of content, names over 4 KiB, malformed
 *     headers (bad checksum, sizes, truncation), and gzip that does not decompress.
 *
 * Symlink targets may point anywhere, dangling or absolute (the official SDK tests upload
 * such links): they are extracted inside the build sandbox, where a target names only the
 * sandbox's own files.
 *
 * Pure: no I/O, no logging; memory bounded by the limits. Fuzzed by fuzz/fuzz_tar.c. */
#ifndef SBX_DAEMON_TAR_H
#define SBX_DAEMON_TAR_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define SBX_TAR_NAME_MAX 4096
#define SBX_TAR_PAX_MAX  (1 << 20) /* one pax or GNU long-name header's data */

struct sbx_tar_check;

struct sbx_tar_check *sbx_tar_check_new(uint64_t max_bytes, uint32_t max_entries);
/* Feeds the next bytes of the archive; -1 (and *err, SBX_INVALID_ARGUMENT) at the first
 * problem, after which nothing more may be fed. */
int sbx_tar_check_feed(struct sbx_tar_check *c, const void *data, size_t len,
                       struct sbx_error **err);
/* The archive ended: -1 if it ended inside an entry or before its first header. */
int sbx_tar_check_finish(struct sbx_tar_check *c, struct sbx_error **err);
void sbx_tar_check_free(struct sbx_tar_check *c);

#endif
