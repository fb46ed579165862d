/* Fuzz target: the logfmt reader (src/base/log.c), which parses the lines of a sandbox's agent
 * log, text in the sandbox's hands, when the daemon serves or converts them.
 *
 * The input is one line. sbx_logfmt_next must end (each call consumes input), stay within its
 * output buffers whatever their size, and sbx_logfmt_to_json must produce a JSON object that
 * jansson parses back with one key per pair read. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "fuzz_common.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line = malloc(size + 1);
    CHECK(line != NULL);
    memcpy(line, data, size);
    line[size] = '\0';
    /* Small buffers: cutting must be safe, not only fitting. */
    char key[4], value[8];
    size_t pairs = 0;
    const char *p = line, *before;
    for (before = p; sbx_logfmt_next(&p, key, sizeof(key), value, sizeof(value)); before = p) {
        CHECK(p > before && p <= line + strlen(line));
        CHECK(strlen(key) < sizeof(key) && strlen(value) < sizeof(value));
        pairs++;
    }
    struct sbx_buf out = {0};
    CHECK(sbx_logfmt_to_json(line, pairs % 2 == 0, &out) == 0);
    json_error_t jerr;
    json_t *j = json_loadb(out.data, out.len, JSON_ALLOW_NUL, &jerr);
    /* Every byte is escaped or passed through as is: only invalid UTF-8 in the line itself
     * can make the object unparsable. */
    if (j)
        CHECK(json_is_object(j) && json_object_size(j) <= pairs);
    json_decref(j);
    sbx_buf_fini(&out);
    free(line);
    return 0;
}
