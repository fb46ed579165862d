/* Typed access to decoded JSON request fields, with proto3-JSON leniency where the SDKs
 * need it (absent and null mean "not set"). Errors name the offending field. */
#ifndef SBX_JSON_H
#define SBX_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"

/* Each returns 0 and leaves *out untouched when the field is absent or null, 1 when it was
 * set, and -1 with an invalid_argument error when it has the wrong type. */
int sbx_json_opt_string(json_t *obj, const char *key, const char **out, struct sbx_error **err);
int sbx_json_opt_bool(json_t *obj, const char *key, bool *out, struct sbx_error **err);
/* JSON integers only: "120" and 120.5 are type errors. */
int sbx_json_opt_int(json_t *obj, const char *key, int64_t *out, struct sbx_error **err);
/* An object whose values are all strings. */
int sbx_json_opt_string_map(json_t *obj, const char *key, json_t **out, struct sbx_error **err);
/* Environment variables, wherever they arrive (create's envVars, process Start's envs,
 * /execute's env_vars, the agent's config): a string map of at most SBX_MAX_ENV_VARS
 * entries whose names are not empty and hold neither '=' nor NUL, and whose values hold no
 * NUL. Any other name is accepted, as on E2B: a POSIX shell name is not required. The error
 * names the field and the offending variable. */
int sbx_json_opt_env_map(json_t *obj, const char *key, json_t **out, struct sbx_error **err);

#endif
