/* Unit tests of the Jupyter wire protocol (src/jupyter/msg.c): signing, encode/decode round
 * trip, signature rejection, malformed frames, UTF-8 repair. Kernels themselves are tested
 * end to end by tests/integration/py/test_code_interpreter.py. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "jupyter/msg.h"

#define KEY "0123456789abcdef0123456789abcdef"

static struct sbx_jupyter_frame
fr(const char *s)
{
    return (struct sbx_jupyter_frame){s, strlen(s)};
}

/* HMAC-SHA256 test vector computed independently with Python's hmac module:
 * hmac.new(b"key", b'{"a":1}{}{}{}', "sha256").hexdigest() */
TEST(sign_known_vector)
{
    struct sbx_jupyter_frame parts[4] = {fr("{\"a\":1}"), fr("{}"), fr("{}"), fr("{}")};
    char sig[SBX_JUPYTER_SIG_HEX + 1];
    CHECK(sbx_jupyter_sign("key", 3, parts, sig) == 0);
    CHECK_STR(sig, "f1128388193e4dd1aa760827bd756a1b40b627676b5efe22c0e8297919bfa218");
    CHECK(strlen(sig) == SBX_JUPYTER_SIG_HEX);
    for (int i = 0; i < SBX_JUPYTER_SIG_HEX; i++)
        CHECK((sig[i] >= '0' && sig[i] <= '9') || (sig[i] >= 'a' && sig[i] <= 'f'));
}

TEST(sign_empty_key_is_empty)
{
    struct sbx_jupyter_frame parts[4] = {fr("{}"), fr("{}"), fr("{}"), fr("{}")};
    char sig[SBX_JUPYTER_SIG_HEX + 1];
    CHECK(sbx_jupyter_sign("", 0, parts, sig) == 0);
    CHECK_STR(sig, "");
}

TEST(sign_depends_on_every_part)
{
    struct sbx_jupyter_frame parts[4] = {fr("{}"), fr("{}"), fr("{}"), fr("{}")};
    char base[SBX_JUPYTER_SIG_HEX + 1], other[SBX_JUPYTER_SIG_HEX + 1];
    CHECK(sbx_jupyter_sign(KEY, strlen(KEY), parts, base) == 0);
    for (int i = 0; i < 4; i++) {
        struct sbx_jupyter_frame p2[4] = {parts[0], parts[1], parts[2], parts[3]};
        p2[i] = fr("{\"x\":1}");
        CHECK(sbx_jupyter_sign(KEY, strlen(KEY), p2, other) == 0);
        CHECK(strcmp(base, other) != 0);
    }
    CHECK(sbx_jupyter_sign("other", 5, parts, other) == 0);
    CHECK(strcmp(base, other) != 0);
}

static void
wire_frames(struct sbx_jupyter_wire *w, struct sbx_jupyter_frame *out)
{
    for (int i = 0; i < SBX_JUPYTER_WIRE_FRAMES; i++)
        out[i] = (struct sbx_jupyter_frame){w->frames[i], w->lens[i]};
}

TEST(encode_decode_round_trip)
{
    json_t *content = json_pack("{s:s,s:b}", "code", "print('é')", "silent", 0);
    struct sbx_jupyter_wire w;
    char id[33];
    struct sbx_error *err = NULL;
    CHECK(sbx_jupyter_msg_encode(KEY, strlen(KEY), "sess", "execute_request", content, &w, id,
                                 &err) == 0);
    CHECK(strlen(id) == 32);
    CHECK(w.lens[0] == strlen(SBX_JUPYTER_DELIM));
    /* Identities before the delimiter (as a ROUTER adds them) are skipped. */
    struct sbx_jupyter_frame frames[SBX_JUPYTER_WIRE_FRAMES + 2];
    frames[0] = fr("ident-1");
    frames[1] = fr("ident-2");
    wire_frames(&w, frames + 2);
    struct sbx_jupyter_msg m;
    CHECK(sbx_jupyter_msg_decode(KEY, strlen(KEY), frames, SBX_JUPYTER_WIRE_FRAMES + 2, &m, &err) ==
          0);
    CHECK_STR(m.msg_type, "execute_request");
    CHECK(m.parent_id == NULL);
    CHECK(m.date != NULL);
    CHECK_STR(json_string_value(json_object_get(m.header, "msg_id")), id);
    CHECK_STR(json_string_value(json_object_get(m.header, "session")), "sess");
    CHECK_STR(json_string_value(json_object_get(m.header, "version")), "5.3");
    CHECK(json_equal(m.content, content));
    sbx_jupyter_msg_fini(&m);
    sbx_jupyter_wire_fini(&w);
    json_decref(content);
}

TEST(decode_rejects_bad_signature)
{
    json_t *content = json_object();
    struct sbx_jupyter_wire w;
    char id[33];
    struct sbx_error *err = NULL;
    CHECK(sbx_jupyter_msg_encode(KEY, strlen(KEY), "s", "kernel_info_request", content, &w, id,
                                 &err) == 0);
    struct sbx_jupyter_frame frames[SBX_JUPYTER_WIRE_FRAMES];
    wire_frames(&w, frames);
    struct sbx_jupyter_msg m;
    /* Wrong key. */
    CHECK(sbx_jupyter_msg_decode("wrong", 5, frames, SBX_JUPYTER_WIRE_FRAMES, &m, &err) < 0);
    CHECK(err->code == SBX_UNAUTHENTICATED);
    sbx_error_free(err);
    err = NULL;
    /* One flipped digit. */
    w.frames[1][10] = w.frames[1][10] == 'a' ? 'b' : 'a';
    CHECK(sbx_jupyter_msg_decode(KEY, strlen(KEY), frames, SBX_JUPYTER_WIRE_FRAMES, &m, &err) < 0);
    CHECK(err->code == SBX_UNAUTHENTICATED);
    sbx_error_free(err);
    err = NULL;
    /* Truncated and empty signatures. */
    frames[1].len = 10;
    CHECK(sbx_jupyter_msg_decode(KEY, strlen(KEY), frames, SBX_JUPYTER_WIRE_FRAMES, &m, &err) < 0);
    sbx_error_free(err);
    err = NULL;
    frames[1].len = 0;
    CHECK(sbx_jupyter_msg_decode(KEY, strlen(KEY), frames, SBX_JUPYTER_WIRE_FRAMES, &m, &err) < 0);
    sbx_error_free(err);
    err = NULL;
    /* A tampered content frame with the original signature. */
    wire_frames(&w, frames);
    w.frames[1][10] = w.frames[1][10] == 'a' ? 'b' : 'a'; /* restore */
    frames[5] = fr("{\"evil\":1}");
    CHECK(sbx_jupyter_msg_decode(KEY, strlen(KEY), frames, SBX_JUPYTER_WIRE_FRAMES, &m, &err) < 0);
    CHECK(err->code == SBX_UNAUTHENTICATED);
    sbx_error_free(err);
    sbx_jupyter_wire_fini(&w);
    json_decref(content);
}

TEST(decode_rejects_malformed)
{
    struct sbx_jupyter_msg m;
    struct sbx_error *err = NULL;
    struct sbx_jupyter_frame no_delim[6] = {fr("a"),  fr(""),   fr("{}"),
                                            fr("{}"), fr("{}"), fr("{}")};
    CHECK(sbx_jupyter_msg_decode("", 0, no_delim, 6, &m, &err) < 0);
    sbx_error_free(err);
    err = NULL;
    struct sbx_jupyter_frame short_msg[3] = {fr(SBX_JUPYTER_DELIM), fr(""), fr("{}")};
    CHECK(sbx_jupyter_msg_decode("", 0, short_msg, 3, &m, &err) < 0);
    sbx_error_free(err);
    err = NULL;
    /* Unsigned (empty key) but not JSON objects / no msg_type. */
    struct sbx_jupyter_frame bad_json[6] = {
        fr(SBX_JUPYTER_DELIM), fr(""), fr("[1]"), fr("{}"), fr("{}"), fr("{}")};
    CHECK(sbx_jupyter_msg_decode("", 0, bad_json, 6, &m, &err) < 0);
    sbx_error_free(err);
    err = NULL;
    struct sbx_jupyter_frame no_type[6] = {
        fr(SBX_JUPYTER_DELIM), fr(""), fr("{}"), fr("{}"), fr("{}"), fr("{}")};
    CHECK(sbx_jupyter_msg_decode("", 0, no_type, 6, &m, &err) < 0);
    sbx_error_free(err);
}

TEST(decode_repairs_invalid_utf8)
{
    /* A stream message whose text has an invalid byte (0xff) and a NUL escape. */
    const char *content = "{\"name\":\"stdout\",\"text\":\"a\xff"
                          "b\\u0000c\"}";
    struct sbx_jupyter_frame f[7] = {fr(SBX_JUPYTER_DELIM),
                                     fr(""),
                                     fr("{\"msg_type\":\"stream\",\"date\":\"d\"}"),
                                     fr("{\"msg_id\":\"p1\"}"),
                                     fr("{}"),
                                     fr(content),
                                     fr("buffer")};
    struct sbx_jupyter_frame parts[4] = {f[2], f[3], f[4], f[5]};
    char sig[SBX_JUPYTER_SIG_HEX + 1];
    CHECK(sbx_jupyter_sign(KEY, strlen(KEY), parts, sig) == 0);
    f[1] = fr(sig);
    struct sbx_jupyter_msg m;
    struct sbx_error *err = NULL;
    CHECK(sbx_jupyter_msg_decode(KEY, strlen(KEY), f, 7, &m, &err) == 0);
    CHECK_STR(m.parent_id, "p1");
    CHECK_STR(m.date, "d");
    json_t *text = json_object_get(m.content, "text");
    CHECK(json_string_length(text) == 7); /* a U+FFFD(3) b NUL c */
    CHECK(memcmp(json_string_value(text),
                 "a\xef\xbf\xbd"
                 "b\0c",
                 7) == 0);
    sbx_jupyter_msg_fini(&m);
}

TEST(utf8_repair)
{
    size_t n;
    char *s = sbx_jupyter_utf8_repair("ok", 2, &n);
    CHECK(n == 2 && strcmp(s, "ok") == 0);
    free(s);
    /* Overlong '/', a lone continuation byte, a surrogate, a truncated sequence: each byte
     * that starts no valid sequence becomes one U+FFFD. */
    static const char bad[] = "\xc0\xaf|\x80|\xed\xa0\x80|\xe2\x82";
    s = sbx_jupyter_utf8_repair(bad, sizeof(bad) - 1, &n);
#define FFFD "\xef\xbf\xbd"
    static const char want[] = FFFD FFFD "|" FFFD "|" FFFD FFFD FFFD "|" FFFD FFFD;
#undef FFFD
    CHECK(n == sizeof(want) - 1 && memcmp(s, want, n) == 0);
    free(s);
    s = sbx_jupyter_utf8_repair("\xe2\x82\xac\xf0\x9f\x98\x80", 7, &n); /* valid € and emoji */
    CHECK(n == 7 && memcmp(s, "\xe2\x82\xac\xf0\x9f\x98\x80", 7) == 0);
    free(s);
}

TEST_MAIN(30)
