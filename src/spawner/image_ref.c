#include "spawner/image_ref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool
is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* 127.0.0.0/8 in dotted form, or localhost; the registry's port already cut off. */
static bool
is_loopback(const char *host, size_t len)
{
    if (len == 9 && strncmp(host, "localhost", 9) == 0)
        return true;
    if (len < 9 || strncmp(host, "127.", 4) != 0)
        return false;
    int parts = 2, digits = 0; /* "127." and the part being read */
    for (size_t i = 4; i < len; i++) {
        if (host[i] == '.' && digits > 0) {
            parts++;
            digits = 0;
        } else if (host[i] >= '0' && host[i] <= '9' && digits < 3) {
            digits++;
        } else {
            return false;
        }
    }
    return parts == 4 && digits > 0;
}

int
sbx_image_ref_parse(const char *ref, struct sbx_image_ref *out, struct sbx_error **err)
{
    size_t len = strlen(ref);
    if (len == 0 || len > SBX_IMAGE_REF_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "an image reference has 1 to %d characters", SBX_IMAGE_REF_MAX);
    /* A letter or digit first: never an option of skopeo's, never a transport's path. */
    if (!is_alnum(ref[0]) ||
        strspn(ref, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789._-/:@") != len ||
        strstr(ref, "..") != NULL || strstr(ref, "//") != NULL || ref[len - 1] == '/')
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid image reference '%s'", ref);
    /* One tag at most: name:tag, before any @digest ("archive:sha256:..." is no image). */
    const char *last = strrchr(ref, '/');
    last = last ? last + 1 : ref;
    const char *at = strchr(last, '@');
    const char *tag = memchr(last, ':', at ? (size_t)(at - last) : strlen(last));
    if (tag && memchr(tag + 1, ':', at ? (size_t)(at - tag - 1) : strlen(tag + 1)))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid image reference '%s'", ref);
    /* As docker reads it: the first component is a registry if it has a dot or a port, or
     * is localhost; otherwise the image is Docker Hub's. */
    const char *slash = strchr(ref, '/');
    size_t first = slash ? (size_t)(slash - ref) : 0;
    const char *colon = slash ? memchr(ref, ':', first) : NULL;
    bool registry = slash && (memchr(ref, '.', first) || colon ||
                              (first == 9 && strncmp(ref, "localhost", 9) == 0));
    if (!registry) {
        snprintf(out->host, sizeof(out->host), "docker.io");
        out->loopback = false;
        return 0;
    }
    if (colon &&
        (colon + 1 == slash || strspn(colon + 1, "0123456789") != (size_t)(slash - colon - 1)))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid registry port in '%s'", ref);
    snprintf(out->host, sizeof(out->host), "%.*s", (int)first, ref);
    out->loopback = is_loopback(ref, colon ? (size_t)(colon - ref) : first);
    return 0;
}

const char *
sbx_image_ref_archive(const char *ref)
{
    size_t n = strlen(SBX_IMAGE_ARCHIVE_PREFIX);
    if (strncmp(ref, SBX_IMAGE_ARCHIVE_PREFIX, n) != 0 || strlen(ref + n) != 64 ||
        strspn(ref + n, "0123456789abcdef") != 64)
        return NULL;
    return ref + n;
}
