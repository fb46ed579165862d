/* One HTTP/1.1 request from the daemon to an agent, over the agent's unix socket, with the
 * response read whole: how the front end talks to an agent itself (a pooled sandbox's
 * readiness and its POST /init), as opposed to relaying a client (proxy.c). The answer is
 * parsed like a proxied one (upstream.c): the agent is untrusted. */
#ifndef SBX_HTTP_CLIENT_H
#define SBX_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* error says why there was no complete answer (unreachable, broken, too large, or past the
 * deadline; status is 0 then), else it is NULL; body is valid during the call. */
typedef void (*sbx_http_call_cb)(int status, const char *body, size_t len, const char *error,
                                 void *ud);

/* method and path as on the request line; headers, when not NULL, are extra
 * "Name: value\r\n" lines; json_body, when not NULL, is sent as application/json. An answer
 * past max_body bytes, or later than timeout_ms, is an error. */
void sbx_http_call(uv_loop_t *loop, const char *unix_path, const char *method, const char *path,
                   const char *headers, const char *json_body, size_t max_body, uint64_t timeout_ms,
                   sbx_http_call_cb cb, void *ud);

#endif
