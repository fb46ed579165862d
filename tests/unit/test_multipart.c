/* The streaming multipart/form-data parser: framing, part heads, bodies that contain
 * near-boundaries, any split of the input, and refusal of malformed or truncated bodies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/fsutil.h"
#include "agent/multipart.h"
#include "base/buf.h"
#include "harness.h"

struct rec {
    int parts;
    char names[8][64];
    char files[8][256];
    struct sbx_buf data[8];
    int ended;
    size_t max_slice;
};

static int
on_begin(void *ud, const struct sbx_multipart_part *p, struct sbx_error **err)
{
    struct rec *r = ud;
    CHECK(r->parts < 8);
    snprintf(r->names[r->parts], 64, "%s", p->name);
    snprintf(r->files[r->parts], 256, "%s", p->filename ? p->filename : "(none)");
    r->parts++;
    return 0;
}

static int
on_data(void *ud, const char *d, size_t n, struct sbx_error **err)
{
    struct rec *r = ud;
    if (n > r->max_slice)
        r->max_slice = n;
    /* Only the start of big bodies is kept. */
    struct sbx_buf *b = &r->data[r->parts - 1];
    size_t room = b->len < 4096 ? 4096 - b->len : 0;
    sbx_buf_append(b, d, n < room ? n : room, 1 << 20);
    return 0;
}

static int
on_end(void *ud, struct sbx_error **err)
{
    ((struct rec *)ud)->ended++;
    return 0;
}

static const struct sbx_multipart_callbacks cbs = {on_begin, on_data, on_end};

static void
rec_fini(struct rec *r)
{
    for (int i = 0; i < 8; i++)
        sbx_buf_fini(&r->data[i]);
}

/* r is zeroed or holds an earlier run's record, which is freed first. */
static int
run(const char *boundary, const char *body, size_t len, size_t step, struct rec *r)
{
    rec_fini(r);
    memset(r, 0, sizeof(*r));
    struct sbx_multipart *m = sbx_multipart_new(boundary, &cbs, r);
    struct sbx_error *e = NULL;
    int rc = 0;
    for (size_t off = 0; off < len && rc == 0; off += step)
        rc = sbx_multipart_feed(m, body + off, len - off < step ? len - off : step, &e);
    if (rc == 0)
        rc = sbx_multipart_finish(m, &e);
    sbx_error_free(e);
    sbx_multipart_free(m);
    return rc;
}

static const char two_parts[] =
    "preamble\r\n"
    "--XyZ\r\n"
    "Content-Disposition: form-data; name=\"file\"; filename=\"dir/a.txt\"\r\n"
    "Content-Type: application/octet-stream\r\n"
    "\r\n"
    "hello\r\n--XyZ is not a boundary here\r\n--XyZZ neither\r\n"
    "--XyZ\r\n"
    "content-disposition: form-data; name=other\r\n"
    "\r\n"
    "ignored\r\n"
    "--XyZ--\r\n"
    "epilogue";

TEST(two_parts_any_split)
{
    struct rec r = {0};
    for (size_t step = 1; step <= sizeof(two_parts); step++) {
        /* A "--XyZ" inside the body followed by anything else is a malformed boundary line. */
        int rc = run("XyZ", two_parts, sizeof(two_parts) - 1, step, &r);
        CHECK(rc < 0);
    }
    static const char ok[] =
        "--XyZ\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"dir/a.txt\"\r\n"
        "\r\n"
        "hel\r\nlo\r\n--Xy\r\n-"
        "\r\n--XyZ  \r\n"
        "content-disposition: form-data; name=other\r\n"
        "\r\n"
        "ignored"
        "\r\n--XyZ--";
    for (size_t step = 1; step <= sizeof(ok); step++) {
        CHECK(run("XyZ", ok, sizeof(ok) - 1, step, &r) == 0);
        CHECK(r.parts == 2 && r.ended == 2);
        CHECK_STR(r.names[0], "file");
        CHECK_STR(r.files[0], "dir/a.txt");
        CHECK(r.data[0].len == 16 && memcmp(r.data[0].data, "hel\r\nlo\r\n--Xy\r\n-", 16) == 0);
        CHECK_STR(r.names[1], "other");
        CHECK_STR(r.files[1], "(none)");
        CHECK(r.data[1].len == 7);
    }
    rec_fini(&r);
}

TEST(empty_part_and_no_headers)
{
    static const char b[] = "--b\r\nContent-Disposition: form-data; name=file; filename=e\r\n\r\n"
                            "\r\n--b\r\n\r\nx\r\n--b--";
    struct rec r = {0};
    CHECK(run("b", b, sizeof(b) - 1, 3, &r) == 0);
    CHECK(r.parts == 2 && r.data[0].len == 0 && r.data[1].len == 1);
    CHECK_STR(r.names[1], "");
    rec_fini(&r);
}

TEST(truncated_and_malformed)
{
    struct rec r = {0};
    static const char trunc[] = "--b\r\nContent-Disposition: form-data; name=file\r\n\r\nabc";
    CHECK(run("b", trunc, sizeof(trunc) - 1, 5, &r) < 0);
    static const char nohead_end[] = "--b\r\nContent-Disposition: form-data";
    CHECK(run("b", nohead_end, sizeof(nohead_end) - 1, 5, &r) < 0);
    static const char badline[] = "--b\r\nno colon here\r\n\r\nx\r\n--b--";
    CHECK(run("b", badline, sizeof(badline) - 1, 4, &r) < 0);
    static const char badq[] =
        "--b\r\nContent-Disposition: form-data; name=\"file\r\n\r\nx\r\n--b--";
    CHECK(run("b", badq, sizeof(badq) - 1, 4, &r) < 0);
    CHECK(run("b", "", 0, 1, &r) < 0);
    CHECK(run("b", "nothing at all", 14, 1, &r) < 0);
    rec_fini(&r);
}

TEST(head_limit)
{
    struct sbx_buf b = {0};
    sbx_buf_printf(&b, "--b\r\nX-Pad: ");
    for (int i = 0; i < SBX_MULTIPART_MAX_HEAD; i++)
        sbx_buf_append(&b, "a", 1, 1 << 20);
    sbx_buf_printf(&b, "\r\n\r\nx\r\n--b--");
    struct rec r = {0};
    CHECK(run("b", b.data, b.len, 1000, &r) < 0);
    rec_fini(&r);
    sbx_buf_fini(&b);
}

TEST(filename_forms)
{
    static const char b[] =
        "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\\\"q.txt\"\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"plain\"; "
        "filename*=UTF-8''%C3%A9t%C3%A9.txt\r\n\r\n\r\n--b--\r\n";
    struct rec r = {0};
    CHECK(run("b", b, sizeof(b) - 1, 7, &r) == 0);
    CHECK_STR(r.files[0], "a\"q.txt");
    CHECK_STR(r.files[1], "\xC3\xA9t\xC3\xA9.txt");
    rec_fini(&r);
}

TEST(big_body_bounded_slices)
{
    /* 8 MiB of body fed in 1 MiB writes: data comes out in slices no bigger than the parser's
     * working window, so nothing proportional to the body is ever held. */
    size_t big = 8u << 20;
    char *body = malloc(big + 200);
    size_t n = (size_t)sprintf(body, "--bnd\r\nContent-Disposition: form-data; name=file\r\n\r\n");
    memset(body + n, '-', big);
    n += big;
    n += (size_t)sprintf(body + n, "\r\n--bnd--\r\n");
    struct rec r = {0};
    CHECK(run("bnd", body, n, 1u << 20, &r) == 0);
    CHECK(r.parts == 1 && r.ended == 1);
    CHECK(r.max_slice <= SBX_MULTIPART_SLICE + 16);
    rec_fini(&r);
    free(body);
}

TEST(boundary_from_content_type)
{
    struct sbx_error *e = NULL;
    char *b = sbx_multipart_boundary("multipart/form-data; boundary=abc", &e);
    CHECK_STR(b, "abc");
    free(b);
    b = sbx_multipart_boundary("Multipart/Form-Data;boundary=\"a b:c\"; charset=utf-8", &e);
    CHECK_STR(b, "a b:c");
    free(b);
    CHECK(sbx_multipart_boundary("multipart/form-data", &e) == NULL);
    sbx_error_free(e);
    e = NULL;
    CHECK(sbx_multipart_boundary("multipart/form-data; boundary=", &e) == NULL);
    sbx_error_free(e);
    e = NULL;
    CHECK(sbx_multipart_boundary("text/plain; boundary=x", &e) == NULL);
    sbx_error_free(e);
}

/* Path and EntryInfo formatting helpers used by the same upload path. */
TEST(path_resolution)
{
    struct sbx_error *e = NULL;
    char *p;
    p = sbx_agent_path_resolve("", 0, "/home/user", &e);
    CHECK_STR(p, "/home/user");
    free(p);
    p = sbx_agent_path_resolve("~", 1, "/home/user", &e);
    CHECK_STR(p, "/home/user");
    free(p);
    p = sbx_agent_path_resolve("~/a//b/./c/..", 13, "/home/user", &e);
    CHECK_STR(p, "/home/user/a/b");
    free(p);
    p = sbx_agent_path_resolve("x/../../../../etc", 17, "/home/user", &e);
    CHECK_STR(p, "/etc");
    free(p);
    p = sbx_agent_path_resolve("/../../..", 9, "/home/user", &e);
    CHECK_STR(p, "/");
    free(p);
    p = sbx_agent_path_resolve("x/~y", 4, "/home/user", &e);
    CHECK_STR(p, "/home/user/x/~y");
    free(p);
    p = sbx_agent_path_resolve("~\\x", 3, "/home/user", &e);
    CHECK_STR(p, "/home/user/\\x");
    free(p);
    /* envd: "~name" (another user's home) is not expanded, and not taken as relative. */
    CHECK(sbx_agent_path_resolve("~x", 2, "/home/user", &e) == NULL);
    CHECK(e && e->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(e);
    e = NULL;
    CHECK(sbx_agent_path_resolve("a\0b", 3, "/home/user", &e) == NULL);
    CHECK(e && e->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(e);
    e = NULL;
    CHECK(sbx_agent_path_resolve("\xff\xfe", 2, "/home/user", &e) == NULL);
    sbx_error_free(e);
    e = NULL;
    CHECK(sbx_agent_path_resolve("\xC0\xAF", 2, "/home/user", &e) == NULL); /* overlong '/' */
    sbx_error_free(e);
    e = NULL;
    char *longp = malloc(5000);
    memset(longp, 'a', 4999);
    longp[0] = '/';
    longp[4999] = 0;
    CHECK(sbx_agent_path_resolve(longp, 4999, "/home/user", &e) == NULL);
    CHECK(e && e->code == SBX_INVALID_ARGUMENT);
    sbx_error_free(e);
    free(longp);
    /* In-place cleaning must stop at the terminator, whatever follows it in memory. */
    char buf[40];
    memcpy(buf, "/home/user/x.txt\0/1junk/more", 29);
    sbx_agent_path_clean(buf);
    CHECK_STR(buf, "/home/user/x.txt");
    memcpy(buf, "/a/b/../c/./\0/zz", 17);
    sbx_agent_path_clean(buf);
    CHECK_STR(buf, "/a/c");
    memcpy(buf, "//..//\0/zz", 11);
    sbx_agent_path_clean(buf);
    CHECK_STR(buf, "/");
    CHECK(sbx_agent_utf8_is_valid("\xE2\x82\xAC", 3));
    CHECK(!sbx_agent_utf8_is_valid("\xE2\x82", 2));
    CHECK(!sbx_agent_utf8_is_valid("\xED\xA0\x80", 3)); /* surrogate */
}

TEST(mode_and_time_strings)
{
    char m[16];
    sbx_agent_mode_string(S_IFREG | 0644, m);
    CHECK_STR(m, "-rw-r--r--");
    sbx_agent_mode_string(S_IFDIR | 0755, m);
    CHECK_STR(m, "drwxr-xr-x");
    sbx_agent_mode_string(S_IFLNK | 0777, m);
    CHECK_STR(m, "Lrwxrwxrwx");
    sbx_agent_mode_string(S_IFDIR | S_ISVTX | 0777, m);
    CHECK_STR(m, "dtrwxrwxrwx");
    sbx_agent_mode_string(S_IFCHR | 0666, m);
    CHECK_STR(m, "Dcrw-rw-rw-");
    char t[64];
    struct timespec ts = {1700000000, 0};
    sbx_agent_timestamp_format(&ts, t, sizeof(t));
    CHECK_STR(t, "2023-11-14T22:13:20Z");
    ts.tv_nsec = 123000000;
    sbx_agent_timestamp_format(&ts, t, sizeof(t));
    CHECK_STR(t, "2023-11-14T22:13:20.123Z");
    ts.tv_nsec = 123456789;
    sbx_agent_timestamp_format(&ts, t, sizeof(t));
    CHECK_STR(t, "2023-11-14T22:13:20.123456789Z");
}

TEST_MAIN(30)
