/* Volumes in the spawner: each one's image lives in <state>/volumes/<id>/volume.img, a path
 * built here from a validated id; the dirs are root-only (0700), like the blanks, since an
 * image is never to be opened by anyone but the kernel's ext4 driver (sandbox/volume.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "spawner/internal.h"

#define VOLUME_IMAGE "volume.img"

static char *
volume_path(const char *id, const char *file)
{
    char *p = NULL;
    if (asprintf(&p, "%s/volumes%s%s%s%s", sbx_spawner_state_dir(), id ? "/" : "", id ? id : "",
                 file ? "/" : "", file ? file : "") < 0)
        abort();
    return p;
}

char *
sbx_spawner_volume_image(const char *id)
{
    return volume_path(id, VOLUME_IMAGE);
}

void
sbx_spawner_volume_create(const struct sbx_spawner_msg *m)
{
    _cleanup_free_ char *root = volume_path(NULL, NULL);
    _cleanup_free_ char *dir = volume_path(m->id, NULL);
    _cleanup_free_ char *image = volume_path(m->id, VOLUME_IMAGE);
    _cleanup_error_ struct sbx_error *err = NULL;
    if (mkdir(root, 0700) < 0 && errno != EEXIST) {
        sbx_error_sys(&err, errno, "mkdir %s", root);
    } else if (mkdir(dir, 0700) < 0) {
        /* Asked again (a front end that restarted): what exists stays as it is. */
        if (errno == EEXIST && access(image, F_OK) == 0) {
            sbx_spawner_reply_fail(m->seq, SBX_ALREADY_EXISTS, "volume %s exists", m->id);
            return;
        }
        if (errno != EEXIST)
            sbx_error_sys(&err, errno, "mkdir %s", dir);
    }
    if (err == NULL && sbx_volume_create(sbx_spawner_disks_dir(), image, m->disk_bytes, &err) < 0)
        rmdir(dir);
    if (err)
        sbx_log_warn("volume", "volume=%s error=\"%s\"", m->id, err->msg);
    sbx_spawner_reply(m->seq, err);
}

void
sbx_spawner_volume_delete(const struct sbx_spawner_msg *m)
{
    _cleanup_free_ char *dir = volume_path(m->id, NULL);
    _cleanup_free_ char *image = volume_path(m->id, VOLUME_IMAGE);
    _cleanup_error_ struct sbx_error *err = NULL;
    /* A sandbox that still has it mounted keeps it (its loop device holds the file) until it
     * ends; the space is freed then. */
    int rc = unlink(image);
    if (rc < 0 && errno != ENOENT)
        sbx_error_sys(&err, errno, "remove %s", image);
    else if (rmdir(dir) < 0)
        sbx_error_set(&err, errno == ENOENT ? SBX_NOT_FOUND : sbx_code_from_errno(errno), errno,
                      "remove volume %s: %s", m->id, strerror(errno));
    sbx_spawner_reply(m->seq, err);
}
