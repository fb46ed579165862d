/* Fuzz target: the COPY archive checker (src/daemon/tar.c), which reads uploads from anyone
 * holding an upload URL. Byte 0 says how the rest is fed (0: whole, N: pieces of N bytes).
 * Invariants: no crash, bounded memory, an error always has a message, and the verdict does
 * not depend on how the bytes were split. */
#include <stdint.h>
#include <string.h>

#include "daemon/tar.h"
#include "fuzz_common.h"

static int
check(const uint8_t *data, size_t size, size_t piece)
{
    struct sbx_tar_check *c = sbx_tar_check_new(1 << 20, 64);
    struct sbx_error *err = NULL;
    int rc = 0;
    for (size_t off = 0; rc == 0 && off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        rc = sbx_tar_check_feed(c, data + off, n, &err);
    }
    if (rc == 0)
        rc = sbx_tar_check_finish(c, &err);
    CHECK((rc == 0) == (err == NULL));
    CHECK(err == NULL || (err->msg != NULL && err->msg[0] != '\0'));
    sbx_error_free(err);
    sbx_tar_check_free(c);
    return rc;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = data[0] ? data[0] : size - 1;
    int whole = check(data + 1, size - 1, size > 1 ? size - 1 : 1);
    int split = check(data + 1, size - 1, piece ? piece : 1);
    CHECK(whole == split);
    return 0;
}
