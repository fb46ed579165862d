/* The v1 signature of presigned /files URLs against the SDKs' test vector (spec §5.3). */
#include <string.h>

#include "base/signature.h"
#include "harness.h"

#define TOKEN "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0"

TEST(test_vector)
{
    char sig[SBX_SIGNATURE_MAX];
    sbx_signature_v1("hello.txt", "read", "user", TOKEN, false, 0, sig);
    CHECK_STR(sig, "v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E");
    CHECK(sbx_signature_v1_matches("v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E", "hello.txt",
                                   "read", "user", TOKEN, false, 0));
}

TEST(every_field_counts)
{
    const char *good = "v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E";
    CHECK(!sbx_signature_v1_matches(good, "hello.txt", "write", "user", TOKEN, false, 0));
    CHECK(!sbx_signature_v1_matches(good, "hello.txt", "read", "root", TOKEN, false, 0));
    CHECK(!sbx_signature_v1_matches(good, "/home/user/hello.txt", "read", "user", TOKEN, false, 0));
    CHECK(!sbx_signature_v1_matches(good, "hello.txt", "read", "user", "other", false, 0));
    CHECK(!sbx_signature_v1_matches(good, "hello.txt", "read", "user", TOKEN, true, 0));
    CHECK(!sbx_signature_v1_matches(NULL, "hello.txt", "read", "user", TOKEN, false, 0));
    CHECK(!sbx_signature_v1_matches("", "hello.txt", "read", "user", TOKEN, false, 0));
}

TEST(expiration_form)
{
    char a[SBX_SIGNATURE_MAX], b[SBX_SIGNATURE_MAX];
    sbx_signature_v1("a", "read", "", TOKEN, true, 1700000000, a);
    sbx_signature_v1("a", "read", "", TOKEN, true, 1700000001, b);
    CHECK(strncmp(a, "v1_", 3) == 0 && strlen(a) == 46 && strchr(a, '=') == NULL);
    CHECK(strcmp(a, b) != 0);
    CHECK(sbx_signature_v1_matches(a, "a", "read", "", TOKEN, true, 1700000000));
    int64_t e;
    CHECK(sbx_signature_parse_exp("-5", &e) == 0 && e == -5);
    CHECK(sbx_signature_parse_exp("12x", &e) < 0);
    CHECK(sbx_signature_parse_exp("", &e) < 0);
}

TEST_MAIN(10)
