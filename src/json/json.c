#include "json/json.h"

#include <string.h>

#include "base/limits.h"

static json_t *
field(json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_null(v) ? NULL : v;
}

int
sbx_json_opt_string(json_t *obj, const char *key, const char **out, struct sbx_error **err)
{
    json_t *v = field(obj, key);
    if (v == NULL)
        return 0;
    if (!json_is_string(v))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field '%s' must be a string", key);
    *out = json_string_value(v);
    return 1;
}

int
sbx_json_opt_bool(json_t *obj, const char *key, bool *out, struct sbx_error **err)
{
    json_t *v = field(obj, key);
    if (v == NULL)
        return 0;
    if (!json_is_boolean(v))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field '%s' must be a boolean", key);
    *out = json_is_true(v);
    return 1;
}

int
sbx_json_opt_int(json_t *obj, const char *key, int64_t *out, struct sbx_error **err)
{
    json_t *v = field(obj, key);
    if (v == NULL)
        return 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 1;
    }
    return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field '%s' must be an integer", key);
}

int
sbx_json_opt_string_map(json_t *obj, const char *key, json_t **out, struct sbx_error **err)
{
    json_t *v = field(obj, key);
    if (v == NULL)
        return 0;
    if (!json_is_object(v))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field '%s' must be an object", key);
    const char *k;
    json_t *val;
    json_object_foreach (v, k, val) {
        if (!json_is_string(val))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "field '%s' must map strings to strings ('%s' is not a string)",
                                 key, k);
    }
    *out = v;
    return 1;
}

int
sbx_json_opt_env_map(json_t *obj, const char *key, json_t **out, struct sbx_error **err)
{
    json_t *map = NULL;
    int rc = sbx_json_opt_string_map(obj, key, &map, err);
    if (rc <= 0)
        return rc;
    if (json_object_size(map) > SBX_MAX_ENV_VARS)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "field '%s' has more than %d variables",
                             key, SBX_MAX_ENV_VARS);
    const char *name;
    size_t name_len;
    json_t *val;
    json_object_keylen_foreach(map, name, name_len, val)
    {
        /* execve(2) passes "NAME=value" as one C string: an '=' in the name or a NUL anywhere
         * would silently set another variable or cut this one, and an empty name is none. */
        if (name_len == 0 || memchr(name, '=', name_len) || memchr(name, '\0', name_len))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "field '%s': invalid environment variable name '%.200s' "
                                 "(names must be non-empty, without '=' or NUL)",
                                 key, name);
        if (memchr(json_string_value(val), '\0', json_string_length(val)))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "field '%s': the value of environment variable '%.200s' contains "
                                 "a NUL character",
                                 key, name);
    }
    *out = map;
    return 1;
}
