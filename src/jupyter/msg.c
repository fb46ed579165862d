/* Jupyter wire protocol: HMAC-SHA256 signing, encoding and decoding (see msg.h). */
#include "jupyter/msg.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/util.h"

int
sbx_jupyter_sign(const char *key, size_t keylen, const struct sbx_jupyter_frame parts[4],
                 char out[SBX_JUPYTER_SIG_HEX + 1])
{
    out[0] = '\0';
    if (keylen == 0)
        return 0;
    /* EVP_MAC is OpenSSL 3's interface (HMAC_CTX is deprecated there). The algorithm is
     * fetched once: a fetch walks OpenSSL's provider tables under a lock, and every message
     * to or from a kernel is signed or checked (the agent is single-threaded). */
    static EVP_MAC *mac_alg;
    if (mac_alg == NULL)
        mac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *h = mac_alg ? EVP_MAC_CTX_new(mac_alg) : NULL;
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                           OSSL_PARAM_construct_end()};
    int ok = h != NULL && EVP_MAC_init(h, (const unsigned char *)key, keylen, params);
    for (int i = 0; ok && i < 4; i++)
        ok = EVP_MAC_update(h, parts[i].data ? parts[i].data : (const void *)"", parts[i].len);
    ok = ok && EVP_MAC_final(h, mac, &maclen, sizeof(mac));
    EVP_MAC_CTX_free(h);
    if (!ok || maclen * 2 != SBX_JUPYTER_SIG_HEX)
        return -1;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < maclen; i++) {
        out[2 * i] = hex[mac[i] >> 4];
        out[2 * i + 1] = hex[mac[i] & 15];
    }
    out[SBX_JUPYTER_SIG_HEX] = '\0';
    return 0;
}

void
sbx_jupyter_wire_fini(struct sbx_jupyter_wire *w)
{
    for (int i = 0; i < SBX_JUPYTER_WIRE_FRAMES; i++) {
        free(w->frames[i]);
        w->frames[i] = NULL;
        w->lens[i] = 0;
    }
}

static char *
dump(json_t *v, size_t *len)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (s == NULL)
        abort();
    *len = strlen(s);
    return s;
}

int
sbx_jupyter_msg_encode(const char *key, size_t keylen, const char *session, const char *msg_type,
                       json_t *content, struct sbx_jupyter_wire *out, char msg_id_out[33],
                       struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    if (sbx_random_hex(msg_id_out, 16) < 0)
        return sbx_error_sys(err, errno, "getrandom");
    char date[40];
    sbx_format_rfc3339(sbx_wall_ms(), date, sizeof(date));
    json_t *header =
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "msg_id", msg_id_out, "session", session, "username",
                  "sbx", "msg_type", msg_type, "version", "5.3", "date", date);
    json_t *empty = json_object();
    if (header == NULL || empty == NULL)
        abort();
    out->frames[0] = strdup(SBX_JUPYTER_DELIM);
    out->lens[0] = strlen(SBX_JUPYTER_DELIM);
    out->frames[2] = dump(header, &out->lens[2]);
    out->frames[3] = dump(empty, &out->lens[3]);
    out->frames[4] = dump(empty, &out->lens[4]);
    out->frames[5] = dump(content, &out->lens[5]);
    json_decref(header);
    json_decref(empty);
    struct sbx_jupyter_frame parts[4];
    for (int i = 0; i < 4; i++)
        parts[i] = (struct sbx_jupyter_frame){out->frames[2 + i], out->lens[2 + i]};
    out->frames[1] = malloc(SBX_JUPYTER_SIG_HEX + 1);
    if (out->frames[0] == NULL || out->frames[1] == NULL)
        abort();
    if (sbx_jupyter_sign(key, keylen, parts, out->frames[1]) < 0) {
        sbx_jupyter_wire_fini(out);
        return sbx_error_set(err, SBX_INTERNAL, 0, "HMAC-SHA256 failed");
    }
    out->lens[1] = strlen(out->frames[1]);
    return 0;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes there are not one. */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Overlong forms, UTF-16 surrogates and code points past U+10FFFF are invalid. */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static bool
utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq(p + i, len - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

char *
sbx_jupyter_utf8_repair(const char *s, size_t len, size_t *outlen)
{
    /* Each invalid byte becomes the 3-byte U+FFFD: at most 3x the input. */
    if (len > (SIZE_MAX - 1) / 3)
        abort();
    char *out = malloc(len * 3 + 1);
    if (out == NULL)
        abort();
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq(p + i, len - i);
        if (k == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, p + i, k);
            o += k;
            i += k;
        }
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

static json_t *
parse_object(const struct sbx_jupyter_frame *f, const char *what, struct sbx_error **err)
{
    const char *data = f->data ? f->data : "";
    size_t len = f->len;
    _cleanup_free_ char *fixed = NULL;
    if (!utf8_valid(data, len)) {
        fixed = sbx_jupyter_utf8_repair(data, len, &len);
        data = fixed;
    }
    json_error_t jerr;
    /* Output of user code may contain NUL characters (\u0000); keep them. */
    json_t *v = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(v)) {
        json_decref(v);
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s: not a JSON object (%s)", what, jerr.text);
        return NULL;
    }
    return v;
}

void
sbx_jupyter_msg_fini(struct sbx_jupyter_msg *m)
{
    json_decref(m->header);
    json_decref(m->parent_header);
    json_decref(m->metadata);
    json_decref(m->content);
    memset(m, 0, sizeof(*m));
}

int
sbx_jupyter_msg_decode(const char *key, size_t keylen, const struct sbx_jupyter_frame *frames,
                       size_t n, struct sbx_jupyter_msg *out, struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    if (n > SBX_JUPYTER_MAX_FRAMES)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "too many frames (%zu)", n);
    size_t d = 0;
    const size_t dl = strlen(SBX_JUPYTER_DELIM);
    while (d < n && !(frames[d].len == dl && memcmp(frames[d].data, SBX_JUPYTER_DELIM, dl) == 0))
        d++;
    if (d == n)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "no <IDS|MSG> delimiter");
    if (n - d < 6)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "message has %zu frames after the "
                             "delimiter, want at least 6",
                             n - d);
    const struct sbx_jupyter_frame *sig = &frames[d + 1];
    const struct sbx_jupyter_frame *parts = &frames[d + 2];
    if (keylen > 0) {
        char want[SBX_JUPYTER_SIG_HEX + 1];
        if (sbx_jupyter_sign(key, keylen, parts, want) < 0)
            return sbx_error_set(err, SBX_INTERNAL, 0, "HMAC-SHA256 failed");
        /* Constant time: a forger must not learn how many leading digits were right. */
        if (!sbx_secret_equal(sig->data ? sig->data : "", sig->len, want, SBX_JUPYTER_SIG_HEX))
            return sbx_error_set(err, SBX_UNAUTHENTICATED, 0, "bad message signature");
    }
    static const char *const names[4] = {"header", "parent_header", "metadata", "content"};
    json_t *objs[4] = {NULL};
    for (int i = 0; i < 4; i++) {
        objs[i] = parse_object(&parts[i], names[i], err);
        if (objs[i] == NULL) {
            for (int j = 0; j < i; j++)
                json_decref(objs[j]);
            return -1;
        }
    }
    out->header = objs[0];
    out->parent_header = objs[1];
    out->metadata = objs[2];
    out->content = objs[3];
    json_t *t = json_object_get(out->header, "msg_type");
    if (!json_is_string(t)) {
        sbx_jupyter_msg_fini(out);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "header.msg_type missing");
    }
    out->msg_type = json_string_value(t);
    json_t *pid = json_object_get(out->parent_header, "msg_id");
    out->parent_id = json_is_string(pid) ? json_string_value(pid) : NULL;
    json_t *date = json_object_get(out->header, "date");
    out->date = json_is_string(date) ? json_string_value(date) : NULL;
    return 0;
}
