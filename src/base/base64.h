/* Base64 for proto3 JSON `bytes` fields and Basic auth. Encode: standard alphabet with
 * padding (what envd sends). Decode: standard or url-safe alphabet, padding optional (what
 * proto3 JSON parsers must accept). Never logs; pure functions. */
#ifndef SBX_BASE_BASE64_H
#define SBX_BASE_BASE64_H

#include <stddef.h>

/* Returns a malloc'd NUL-terminated string; *outlen (if not NULL) gets its length. */
char *sbx_base64_encode(const void *data, size_t len, size_t *outlen);
/* Returns a malloc'd buffer (NUL-terminated for convenience), NULL on invalid input. */
unsigned char *sbx_base64_decode(const char *s, size_t len, size_t *outlen);

#endif
