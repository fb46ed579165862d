/* Fuzz target: the Jupyter message decoder (src/jupyter/msg.c), which parses the multipart
 * messages kernels send over ZeroMQ: identities, the <IDS|MSG> delimiter, the HMAC-SHA256
 * signature and four JSON frames, with invalid UTF-8 repaired.
 *
 * Input layout: byte 0 picks the mode (mod 3): 0 = empty key (no signature check), 1 = a fixed
 * key with the signature taken from the input (exercises rejection), 2 = a fixed key with the
 * signature recomputed over the input's frames (reaches the JSON parsing behind the check).
 * The rest is split into frames at every "\n--\n". Invariants: a decoded message has a string
 * msg_type and object parts; its content re-encodes and decodes to an equal object; the UTF-8
 * repair of any frame is a fixed point. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jupyter/msg.h"
#include "fuzz_common.h"

#define KEY        "fuzz-key-0123456789abcdef"
#define SEP        "\n--\n"
#define MAX_FRAMES (SBX_JUPYTER_MAX_FRAMES + 4)

static void
check_repair_fixed_point(const struct sbx_jupyter_frame *f)
{
    size_t n1, n2;
    char *a = sbx_jupyter_utf8_repair(f->data, f->len, &n1);
    char *b = sbx_jupyter_utf8_repair(a, n1, &n2);
    CHECK(n1 == n2 && memcmp(a, b, n1) == 0);
    free(a);
    free(b);
}

static void
check_round_trip(json_t *content)
{
    struct sbx_jupyter_wire w;
    char id[33];
    struct sbx_error *err = NULL;
    CHECK(sbx_jupyter_msg_encode(KEY, strlen(KEY), "s", "t", content, &w, id, &err) == 0);
    struct sbx_jupyter_frame f[SBX_JUPYTER_WIRE_FRAMES];
    for (int i = 0; i < SBX_JUPYTER_WIRE_FRAMES; i++)
        f[i] = (struct sbx_jupyter_frame){w.frames[i], w.lens[i]};
    struct sbx_jupyter_msg m;
    CHECK(sbx_jupyter_msg_decode(KEY, strlen(KEY), f, SBX_JUPYTER_WIRE_FRAMES, &m, &err) == 0);
    CHECK(json_equal(m.content, content));
    sbx_jupyter_msg_fini(&m);
    sbx_jupyter_wire_fini(&w);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int mode = data[0] % 3;
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    struct sbx_jupyter_frame frames[MAX_FRAMES];
    size_t n = 0;
    while (n < MAX_FRAMES) {
        const char *sep = memmem(p, (size_t)(end - p), SEP, strlen(SEP));
        const char *stop = sep ? sep : end;
        frames[n++] = (struct sbx_jupyter_frame){p, (size_t)(stop - p)};
        if (sep == NULL)
            break;
        p = sep + strlen(SEP);
    }
    char sig[SBX_JUPYTER_SIG_HEX + 1];
    const char *key = mode == 0 ? "" : KEY;
    if (mode == 2) {
        for (size_t d = 0; d + 5 < n; d++) {
            if (frames[d].len == strlen(SBX_JUPYTER_DELIM) &&
                memcmp(frames[d].data, SBX_JUPYTER_DELIM, frames[d].len) == 0) {
                CHECK(sbx_jupyter_sign(KEY, strlen(KEY), &frames[d + 2], sig) == 0);
                frames[d + 1] = (struct sbx_jupyter_frame){sig, strlen(sig)};
                break;
            }
        }
    }
    for (size_t i = 0; i < n; i++)
        check_repair_fixed_point(&frames[i]);
    struct sbx_jupyter_msg m;
    struct sbx_error *err = NULL;
    if (sbx_jupyter_msg_decode(key, strlen(key), frames, n, &m, &err) == 0) {
        CHECK(m.msg_type != NULL);
        CHECK(json_is_object(m.header) && json_is_object(m.parent_header));
        CHECK(json_is_object(m.metadata) && json_is_object(m.content));
        check_round_trip(m.content);
        sbx_jupyter_msg_fini(&m);
    } else {
        CHECK(err != NULL && err->msg != NULL);
        sbx_error_free(err);
    }
    return 0;
}
