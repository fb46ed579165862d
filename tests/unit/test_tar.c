/* The COPY archive checker (src/daemon/tar.c): the fuzz corpus's archives, made with Python's
 * tarfile (fuzz/corpus/tar: byte 0 is the fuzz target's split size), must be accepted when
 * named ok_* and refused, with the reason, when named bad_*. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/tar.h"
#include "harness.h"

#ifndef SBX_SOURCE_DIR
#error "SBX_SOURCE_DIR must be set"
#endif

static int
verdict(const char *path, uint64_t max_bytes, char *why, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size > 0);
    char *buf = malloc((size_t)st.st_size);
    CHECK(buf && read(fd, buf, (size_t)st.st_size) == st.st_size);
    close(fd);
    struct sbx_tar_check *c = sbx_tar_check_new(max_bytes, 1000);
    struct sbx_error *err = NULL;
    int rc = sbx_tar_check_feed(c, buf + 1, (size_t)st.st_size - 1, &err);
    if (rc == 0)
        rc = sbx_tar_check_finish(c, &err);
    snprintf(why, n, "%s", err ? err->msg : "");
    sbx_error_free(err);
    sbx_tar_check_free(c);
    free(buf);
    return rc;
}

TEST(corpus_verdicts)
{
    const char *dir = SBX_SOURCE_DIR "/fuzz/corpus/tar";
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024], why[512];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        int rc = verdict(path, 1 << 20, why, sizeof(why));
        fprintf(stderr, "%s: %s\n", e->d_name, rc == 0 ? "ok" : why);
        CHECK((rc == 0) == (strncmp(e->d_name, "ok_", 3) == 0));
        n++;
    }
    closedir(d);
    CHECK(n >= 8);
}

TEST(content_limit)
{
    char why[512];
    CHECK(verdict(SBX_SOURCE_DIR "/fuzz/corpus/tar/ok_gzip", 1 << 20, why, sizeof(why)) == 0);
    CHECK(verdict(SBX_SOURCE_DIR "/fuzz/corpus/tar/ok_gzip", 4, why, sizeof(why)) < 0);
    CHECK(strstr(why, "larger than the limit") != NULL);
}

TEST_MAIN(30)
