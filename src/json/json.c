#include "json/json.h"

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
