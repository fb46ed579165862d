/* Fuzz target: the first bytes a sandbox sends on a proxied connection, to the SNI and Host
 * sniffers (src/http/sniff.c) the egress proxy decides on. Every prefix is tried, as the
 * bytes arrive in pieces: a found name is lowercase, of host name characters, within the
 * limit; once a prefix gives an answer, longer ones give the same. */
#include <ctype.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "http/sniff.h"

static void
check(int (*sniff)(const uint8_t *, size_t, char *), const uint8_t *data, size_t size)
{
    int first = 0;
    char first_name[SBX_SNIFF_NAME_MAX + 1] = "";
    for (size_t n = 0; n <= size; n++) {
        char name[SBX_SNIFF_NAME_MAX + 1];
        int rc = sniff(data, n, name);
        CHECK(rc >= -1 && rc <= 1);
        if (rc == 1) {
            size_t len = strlen(name);
            CHECK(len > 0 && len <= SBX_SNIFF_NAME_MAX && name[len - 1] != '.');
            for (size_t i = 0; i < len; i++)
                CHECK(islower((unsigned char)name[i]) || isdigit((unsigned char)name[i]) ||
                      strchr("-._", name[i]));
        }
        if (first != 0) {
            CHECK(rc == first);
            CHECK(rc != 1 || strcmp(name, first_name) == 0);
        } else if (rc != 0) {
            first = rc;
            if (rc == 1)
                memcpy(first_name, name, sizeof(first_name));
        }
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4 * SBX_SNIFF_MAX)
        return 0;
    check(sbx_sniff_tls_sni, data, size);
    check(sbx_sniff_http_host, data, size);
    return 0;
}
