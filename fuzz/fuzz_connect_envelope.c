/* Fuzz target: the Connect envelope reader (src/connect/connect.c), which takes the bodies of
 * streaming RPCs byte for byte from clients.
 *
 * Input layout: byte 0 chooses how the rest is split into feeds (0 = all at once, otherwise
 * pieces of 1..255 bytes), the rest is the stream. Every message the reader returns is
 * checked against the bytes it came from (flags, length, payload, NUL terminator), formatted
 * again and read back, and decoded as a request message would be. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/limits.h"
#include "connect/connect.h"
#include "fuzz_common.h"

/* Formats the message again and reads it back through a fresh reader. */
static void
round_trip(uint8_t flags, const char *msg, size_t len)
{
    struct sbx_buf b = {0};
    CHECK(sbx_connect_envelope_format(&b, flags, msg, len) == 0);
    CHECK(b.len == len + 5);
    struct sbx_connect_reader r = {0};
    struct sbx_error *err = NULL;
    CHECK(sbx_connect_reader_feed(&r, b.data, b.len, &err) == 0);
    uint8_t f2 = 0;
    char *m2 = NULL;
    size_t n2 = 0;
    CHECK(sbx_connect_reader_next(&r, &f2, &m2, &n2, &err) == 1);
    CHECK(f2 == flags && n2 == len && memcmp(m2, msg, len) == 0);
    CHECK(sbx_connect_reader_next(&r, &f2, &m2, &n2, &err) == 0 || (free(m2), 0));
    free(m2);
    sbx_connect_reader_fini(&r);
    sbx_buf_fini(&b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t piece = data[0] ? data[0] : SIZE_MAX;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;

    struct sbx_connect_reader r = {0};
    struct sbx_error *err = NULL;
    size_t fed = 0, consumed = 0;
    bool failed = false;
    while (fed < n && !failed) {
        size_t k = n - fed < piece ? n - fed : piece;
        if (sbx_connect_reader_feed(&r, s + fed, k, &err) < 0) {
            CHECK(err != NULL && err->code == SBX_RESOURCE_EXHAUSTED);
            break;
        }
        fed += k;
        for (;;) {
            uint8_t flags = 0;
            char *msg = NULL;
            size_t len = 0;
            int rc = sbx_connect_reader_next(&r, &flags, &msg, &len, &err);
            if (rc < 0) {
                /* Only a bad prefix fails, and it is reported, never half-consumed. */
                CHECK(err != NULL && err->msg != NULL);
                CHECK(consumed + 5 <= fed);
                const unsigned char *p = (const unsigned char *)s + consumed;
                uint32_t want =
                    (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
                CHECK((p[0] & ~SBX_CONNECT_FLAG_END_STREAM) != 0 || want > SBX_CONNECT_MAX_MESSAGE);
                failed = true;
                break;
            }
            if (rc == 0) {
                CHECK(msg == NULL);
                break;
            }
            CHECK(rc == 1 && msg != NULL && msg[len] == '\0');
            CHECK(consumed + 5 + len <= fed);
            CHECK((uint8_t)s[consumed] == flags);
            CHECK((flags & ~SBX_CONNECT_FLAG_END_STREAM) == 0);
            CHECK(memcmp(s + consumed + 5, msg, len) == 0);
            consumed += 5 + len;
            round_trip(flags, msg, len);
            /* What the server does with a streaming request's one message. */
            json_error_t jerr;
            json_t *v = json_loadb(msg, len, JSON_REJECT_DUPLICATES, &jerr);
            json_decref(v);
            free(msg);
        }
    }
    if (!failed)
        CHECK(r.buf.len == fed - consumed); /* nothing lost, nothing invented */
    sbx_connect_reader_fini(&r);
    sbx_error_free(err);
    return 0;
}
