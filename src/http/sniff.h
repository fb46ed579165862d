/* What a client's first bytes say about where it is going: the server name of a TLS
 * ClientHello (SNI, RFC 6066) and the Host of an HTTP/1 request head. For the sandboxes'
 * egress proxy, which decides on that name before it connects anywhere.
 *
 * Pure functions over untrusted bytes, fuzzed by fuzz/fuzz_sniff.c. Each returns 1 with the
 * name (lowercased, NUL-terminated, without a port or trailing dot) in name, 0 if more bytes
 * are needed, -1 if there is no name to find (not that protocol, none given, malformed). */
#ifndef SBX_HTTP_SNIFF_H
#define SBX_HTTP_SNIFF_H

#include <stddef.h>
#include <stdint.h>

#define SBX_SNIFF_NAME_MAX 253
#define SBX_SNIFF_MAX      16384 /* bytes read at most before giving up on a name */

int sbx_sniff_tls_sni(const uint8_t *data, size_t len, char name[SBX_SNIFF_NAME_MAX + 1]);
int sbx_sniff_http_host(const uint8_t *data, size_t len, char name[SBX_SNIFF_NAME_MAX + 1]);

#endif
