/* Template names, resolution and build definitions (see templates.h). */
#include "daemon/templates.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spawner/templates.h"

static bool
charset(const char *s, const char *extra)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || strchr(extra, *s)))
            return false;
    return true;
}

static bool
is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++)
        if ((i == 8 || i == 13 || i == 18 || i == 23) ? s[i] != '-'
                                                      : !isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

int
sbx_template_tag_check(const char *tag, struct sbx_error **err)
{
    if (strlen(tag) > SBX_STORE_TAG_MAX || !charset(tag, "_.-") || is_uuid(tag))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "Invalid tag '%s': use lowercase letters, digits, '_', '.' and '-'",
                             tag);
    return 0;
}

int
sbx_template_name_parse(const char *s, struct sbx_template_name *out, struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    if (n == 0 || n > SBX_TEMPLATE_NAME_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "Invalid name: '%.*s'", (int)n, s);
    char buf[SBX_TEMPLATE_NAME_MAX + 1];
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)tolower((unsigned char)s[i]);
    buf[n] = '\0';
    char *colon = strchr(buf, ':');
    if (colon) {
        *colon = '\0';
        if (sbx_template_tag_check(colon + 1, err) < 0)
            return sbx_error_prefix(err, "Invalid name: '%s'", s);
        if (strcmp(colon + 1, "default") != 0)
            snprintf(out->tag, sizeof(out->tag), "%s", colon + 1);
    }
    char *slash = strchr(buf, '/');
    const char *alias = buf;
    if (slash) {
        *slash = '\0';
        if (!charset(buf, "_-"))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "Invalid name: bad namespace in '%s'", s);
        snprintf(out->ns, sizeof(out->ns), "%s", buf);
        alias = slash + 1;
    }
    if (!charset(alias, "_-"))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "Invalid name: '%s' (the alias takes lowercase letters, digits, '_' "
                             "and '-')",
                             s);
    snprintf(out->alias, sizeof(out->alias), "%s", alias);
    return 0;
}

int
sbx_templates_resolve(struct sbx_store *store, const char *name, struct sbx_template_ref *out,
                      struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    struct sbx_template_name n;
    if (sbx_template_name_parse(name, &n, err) < 0)
        return -1;
    const struct sbx_builtin_template *b = sbx_builtin_template_find(n.alias);
    if (b && n.ns[0] == '\0' && n.tag[0] == '\0') {
        snprintf(out->id, sizeof(out->id), "%s", b->name);
        for (size_t i = 0; i < b->n_layers; i++)
            strcat(out->layers, b->layers[i]);
        out->code_interpreter = b->code_interpreter;
        return 0;
    }
    struct sbx_template_rec t = {0};
    if (sbx_store_template_get(store, n.alias, &t, err) < 0)
        return -1;
    snprintf(out->id, sizeof(out->id), "%s", t.id);
    sbx_template_rec_fini(&t);
    const char *tag = n.tag[0] ? n.tag : "default";
    if (sbx_store_tag_get(store, out->id, tag, out->build_id, err) < 0)
        return sbx_error_prefix(err, "template '%s'", name);
    struct sbx_build_rec br;
    if (sbx_store_build_get(store, out->build_id, &br, err) < 0)
        return -1;
    int rc = 0;
    if (strcmp(br.status, "ready") != 0 || strlen(br.layers) >= sizeof(out->layers))
        rc = sbx_error_set(err, SBX_NOT_FOUND, 0, "template '%s' has no finished build", name);
    snprintf(out->layers, sizeof(out->layers), "%s", br.layers);
    out->cpu_count = br.cpu_count;
    out->memory_mb = br.memory_mb;
    json_error_t jerr;
    json_t *ctx = json_loads(br.context_json, 0, &jerr);
    out->code_interpreter = json_is_true(json_object_get(ctx, "codeInterpreter"));
    const char *user = json_string_value(json_object_get(ctx, "user"));
    const char *workdir = json_string_value(json_object_get(ctx, "workdir"));
    snprintf(out->user, sizeof(out->user), "%s", user ? user : "");
    snprintf(out->workdir, sizeof(out->workdir), "%s", workdir ? workdir : "");
    json_t *start = json_object_get(ctx, "start");
    out->start = json_is_object(start) ? json_incref(start) : NULL;
    json_decref(ctx);
    sbx_build_rec_fini(&br);
    return rc;
}

void
sbx_template_ref_fini(struct sbx_template_ref *r)
{
    json_decref(r->start);
    r->start = NULL;
}

/* ---- ENV values ---- */

/* What a root login shell of the base has (its /etc/profile and /etc/default/locale). */
static const char *const env_of_root[][2] = {
    {"HOME", "/root"},
    {"PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
    {"USER", "root"},
    {"LOGNAME", "root"},
    {"SHELL", "/bin/bash"},
    {"LANG", "C.UTF-8"},
    {"PWD", "/root"},
};

static const char *
root_env(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(env_of_root) / sizeof(env_of_root[0]); i++)
        if (strlen(env_of_root[i][0]) == len && memcmp(env_of_root[i][0], name, len) == 0)
            return env_of_root[i][1];
    return "";
}

char *
sbx_template_env_expand(const char *value)
{
    size_t cap = strlen(value) * 2 + 256, n = 0;
    char *out = malloc(cap);
    if (out == NULL)
        abort();
#define PUT(p, l)                                                                                  \
    do {                                                                                           \
        size_t l_ = (l);                                                                           \
        if (n + l_ + 1 > cap && (out = realloc(out, cap = (n + l_ + 1) * 2)) == NULL)              \
            abort();                                                                               \
        memcpy(out + n, (p), l_);                                                                  \
        n += l_;                                                                                   \
    } while (0)
    for (const char *p = value; *p;) {
        if (*p == '\\' && strchr("$`\"\\", p[1]) && p[1]) {
            PUT(p + 1, 1);
            p += 2;
            continue;
        }
        if (*p != '$') {
            PUT(p, 1);
            p++;
            continue;
        }
        const char *name = p + 1;
        size_t len = 0;
        if (*name == '{') {
            const char *end = strchr(name, '}');
            len = end ? (size_t)(end - name - 1) : 0;
            if (end == NULL || len == 0 ||
                strspn(name + 1,
                       "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") != len) {
                PUT(p, 1); /* not a plain ${NAME}: kept as it is */
                p++;
                continue;
            }
            const char *v = root_env(name + 1, len);
            PUT(v, strlen(v));
            p = end + 1;
            continue;
        }
        len = strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_");
        if (len == 0 || (name[0] >= '0' && name[0] <= '9')) {
            PUT(p, 1); /* "$(" and the like: never a command substitution */
            p++;
            continue;
        }
        const char *v = root_env(name, len);
        PUT(v, strlen(v));
        p = name + len;
    }
#undef PUT
    out[n] = '\0';
    return out;
}

/* ---- build definitions ---- */

static const char *const step_names[] = {"COPY", "RUN", "ENV", "WORKDIR", "USER"};

const char *
sbx_step_type_name(enum sbx_step_type t)
{
    return step_names[t];
}

static int
parse_step(json_t *j, size_t index, struct sbx_build_step *out, struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    const char *type = json_string_value(json_object_get(j, "type"));
    json_t *args = json_object_get(j, "args");
    if (!json_is_object(j) || type == NULL || !json_is_array(args))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "step %zu: needs a type and args",
                             index + 1);
    size_t t = 0;
    while (t < 5 && strcmp(type, step_names[t]) != 0)
        t++;
    if (t == 5)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "step %zu: unsupported step type '%s'",
                             index + 1, type);
    out->type = (enum sbx_step_type)t;
    if (json_array_size(args) > SBX_STEP_ARGS_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "step %zu: more than %d arguments",
                             index + 1, SBX_STEP_ARGS_MAX);
    size_t i;
    json_t *a;
    json_array_foreach (args, i, a) {
        const char *v = json_string_value(a);
        if (v == NULL || strlen(v) > SBX_TEMPLATE_ARG_MAX || strlen(v) != json_string_length(a))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "step %zu: arguments must be strings of at most %d bytes",
                                 index + 1, SBX_TEMPLATE_ARG_MAX);
        out->args[out->n_args++] = v;
    }
    out->force = json_is_true(json_object_get(j, "force"));
    size_t n = out->n_args;
    bool ok = true;
    switch (out->type) {
    case SBX_STEP_COPY:
        out->files_hash = json_string_value(json_object_get(j, "filesHash"));
        if (out->files_hash == NULL || strlen(out->files_hash) != 64 ||
            strspn(out->files_hash, "0123456789abcdef") != 64)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "step %zu: COPY requires files hash to be set", index + 1);
        ok = n >= 2 && n <= 4 && out->args[0][0] && out->args[1][0];
        break;
    case SBX_STEP_RUN:
        ok = (n == 1 || n == 2) && out->args[0][0];
        break;
    case SBX_STEP_ENV:
        if (n == 0 || n % 2)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "step %zu: ENV requires both a key and value arguments",
                                 index + 1);
        for (size_t k = 0; k < n; k += 2)
            ok = ok && out->args[k][0] && !strchr(out->args[k], '=');
        break;
    case SBX_STEP_WORKDIR:
        ok = n == 1 && out->args[0][0];
        break;
    case SBX_STEP_USER:
        ok = (n == 1 || n == 2) && charset(out->args[0], "_-.");
        break;
    }
    if (!ok)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "step %zu: bad arguments for %s",
                             index + 1, type);
    return 0;
}

int
sbx_build_def_parse(json_t *body, struct sbx_build_def *out, struct sbx_error **err)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(body))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "request body must be a JSON object");
    out->from_image = json_string_value(json_object_get(body, "fromImage"));
    out->from_template = json_string_value(json_object_get(body, "fromTemplate"));
    if ((out->from_image != NULL) == (out->from_template != NULL))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "exactly one of fromImage and fromTemplate must be given (builds "
                             "from a Dockerfile pushed to a registry are not supported)");
    json_t *reg = json_object_get(body, "fromImageRegistry");
    out->has_registry = reg != NULL && !json_is_null(reg);
    if (out->has_registry && !json_is_object(reg))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "fromImageRegistry must be an object");
    out->registry_type = json_string_value(json_object_get(reg, "type"));
    out->registry_username = json_string_value(json_object_get(reg, "username"));
    out->registry_password = json_string_value(json_object_get(reg, "password"));
    out->force = json_is_true(json_object_get(body, "force"));
    out->start_cmd = json_string_value(json_object_get(body, "startCmd"));
    out->ready_cmd = json_string_value(json_object_get(body, "readyCmd"));
    json_t *steps = json_object_get(body, "steps");
    if (steps && !json_is_array(steps))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "steps must be an array");
    size_t n = json_array_size(steps);
    if (n > SBX_TEMPLATE_STEPS_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "more than %d steps",
                             SBX_TEMPLATE_STEPS_MAX);
    out->steps = calloc(n ? n : 1, sizeof(*out->steps));
    if (out->steps == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        if (parse_step(json_array_get(steps, i), i, &out->steps[i], err) < 0) {
            sbx_build_def_fini(out);
            return -1;
        }
        out->n_steps++;
    }
    return 0;
}

void
sbx_build_def_fini(struct sbx_build_def *d)
{
    free(d->steps);
    d->steps = NULL;
    d->n_steps = 0;
}
