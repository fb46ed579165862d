/* The v1 signature of presigned /files URLs (spec §5.3): "v1_" + standard base64, padding
 * stripped, of SHA-256("path:operation:user:token[:expiration]"). Shared by the agent, which
 * enforces it, and the daemon, which uses it to find the sandbox a URL without a sandbox id
 * belongs to. Pure computation: no I/O, no clock. */
#ifndef SBX_BASE_SIGNATURE_H
#define SBX_BASE_SIGNATURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SBX_SIGNATURE_OP_READ  "read"
#define SBX_SIGNATURE_OP_WRITE "write"
/* "v1_" + 43 base64 characters + NUL, rounded up. */
#define SBX_SIGNATURE_MAX 64

/* Writes the signature into out. has_exp selects the 5-field form. */
void sbx_signature_v1(const char *path, const char *operation, const char *user, const char *token,
                      bool has_exp, int64_t exp, char out[SBX_SIGNATURE_MAX]);
/* Whether sig is the signature of these fields; the comparison takes the same time wherever
 * the strings differ. */
bool sbx_signature_v1_matches(const char *sig, const char *path, const char *operation,
                              const char *user, const char *token, bool has_exp, int64_t exp);
/* Parses a signature_expiration query value (a decimal integer, possibly negative); -1 on
 * junk. */
int sbx_signature_parse_exp(const char *s, int64_t *out);

#endif
