/* Container image references (fromImage) as the spawner hands them to skopeo: which
 * references it accepts, which registry each names, and whether that registry is on this
 * machine's loopback. Pure: the front end checks a build's reference with it, and the
 * spawner's message decoder checks it again, as if the front end were hostile. skopeo does
 * the real parsing; this is the conservative gate before it. */
#ifndef SBX_SPAWNER_IMAGE_REF_H
#define SBX_SPAWNER_IMAGE_REF_H

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"

#define SBX_IMAGE_REF_MAX 255 /* the longest reference the docker CLI takes */
/* An imported archive (sbx template import) is the image "archive:sha256:<hex>": the
 * upload of that hash. No registry reference looks so ("archive:sha256" is no host:port). */
#define SBX_IMAGE_ARCHIVE_PREFIX "archive:sha256:"

struct sbx_image_ref {
    char host[SBX_IMAGE_REF_MAX + 1]; /* the registry, with its port: "docker.io" if none */
    bool loopback;                    /* host is localhost or 127.0.0.0/8 */
};

/* 0 and *out if ref is a registry reference sbx pulls: [host[:port]/]path[:tag][@digest],
 * letters, digits and ._-/:@ only, starting with a letter or digit; -1 with an
 * invalid_argument error otherwise. */
int sbx_image_ref_parse(const char *ref, struct sbx_image_ref *out, struct sbx_error **err);
/* The upload hash of an imported archive's reference, or NULL if ref is none. */
const char *sbx_image_ref_archive(const char *ref);

#endif
