#include "spawner/templates.h"

#include <string.h>

#include "spawner/layer_keys.h"

static const char *const base_layers[] = {SBX_LAYER_KEY_BASE};
static const char *const ci_layers[] = {SBX_LAYER_KEY_CODE_INTERPRETER, SBX_LAYER_KEY_BASE};

/* Several names, as the SDKs and earlier sbx versions use them, for the two templates. */
static const struct sbx_builtin_template builtins[] = {
    {"base", base_layers, 1, false},
    {"sbx", base_layers, 1, false},
    {"code-interpreter-v1", ci_layers, 2, true},
    {"code-interpreter", ci_layers, 2, true},
    {"code-interpreter-beta", ci_layers, 2, true},
};

const struct sbx_builtin_template *
sbx_builtin_template_find(const char *name)
{
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
        if (strcmp(name, builtins[i].name) == 0)
            return &builtins[i];
    return NULL;
}

const char *const *
sbx_builtin_layers(size_t *n)
{
    *n = sizeof(ci_layers) / sizeof(ci_layers[0]); /* the code interpreter's include base's */
    return ci_layers;
}
