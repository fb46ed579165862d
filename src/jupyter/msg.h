/* The Jupyter wire protocol (messaging spec 5.3): signing, encoding and decoding of the
 * multipart messages that travel over the kernel's ZeroMQ sockets.
 *
 * A message on the wire is [identities...] "<IDS|MSG>" signature header parent_header
 * metadata content [buffers...], where signature is the lowercase hex HMAC-SHA256 of the
 * four JSON frames under the connection key. This layer is pure (no sockets, no I/O) so it
 * can be fuzzed; it never logs. */
#ifndef SBX_JUPYTER_MSG_H
#define SBX_JUPYTER_MSG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"

#define SBX_JUPYTER_DELIM      "<IDS|MSG>"
#define SBX_JUPYTER_SIG_HEX    64 /* hex digits of an HMAC-SHA256 */
#define SBX_JUPYTER_KEY_BYTES  32 /* random bytes of a connection key (64 hex chars) */
#define SBX_JUPYTER_MAX_FRAMES 64 /* identities + delimiter + 5 + buffers we accept */

struct sbx_jupyter_frame {
    const void *data;
    size_t len;
};

/* A decoded message. The four parts are JSON objects (owned); the strings point into them. */
struct sbx_jupyter_msg {
    json_t *header;
    json_t *parent_header;
    json_t *metadata;
    json_t *content;
    const char *msg_type;  /* header.msg_type, never NULL after a successful decode */
    const char *parent_id; /* parent_header.msg_id, NULL when absent */
    const char *date;      /* header.date, NULL when absent */
};

/* An encoded message ready to send: frames[0] is the delimiter. */
#define SBX_JUPYTER_WIRE_FRAMES 6
struct sbx_jupyter_wire {
    char *frames[SBX_JUPYTER_WIRE_FRAMES];
    size_t lens[SBX_JUPYTER_WIRE_FRAMES];
};

/* out gets SBX_JUPYTER_SIG_HEX lowercase hex digits and a NUL. An empty key gives "". */
int sbx_jupyter_sign(const char *key, size_t keylen, const struct sbx_jupyter_frame parts[4],
                     char out[SBX_JUPYTER_SIG_HEX + 1]);

/* Encodes a request from us (the client) to a kernel: a fresh msg_id (copied to msg_id_out,
 * 33 bytes), the session id, username "sbx", version 5.3, the current date, an empty parent
 * header and metadata. content is borrowed. */
int sbx_jupyter_msg_encode(const char *key, size_t keylen, const char *session,
                           const char *msg_type, json_t *content, struct sbx_jupyter_wire *out,
                           char msg_id_out[33], struct sbx_error **err);
void sbx_jupyter_wire_fini(struct sbx_jupyter_wire *w);

/* Decodes frames received from a kernel. Checks the signature in constant time before
 * parsing anything; frames with invalid UTF-8 are repaired (U+FFFD) rather than dropped,
 * because kernels relay whatever bytes user code printed. Fails with SBX_UNAUTHENTICATED on
 * a bad signature and SBX_INVALID_ARGUMENT on malformed frames. */
int sbx_jupyter_msg_decode(const char *key, size_t keylen, const struct sbx_jupyter_frame *frames,
                           size_t n, struct sbx_jupyter_msg *out, struct sbx_error **err);
void sbx_jupyter_msg_fini(struct sbx_jupyter_msg *m);

/* Copies s replacing every invalid UTF-8 sequence by U+FFFD; malloc'd, *outlen set. */
char *sbx_jupyter_utf8_repair(const char *s, size_t len, size_t *outlen);

#endif
