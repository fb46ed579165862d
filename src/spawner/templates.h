/* The built-in templates: the names clients use and the layers each stands for, top first.
 * Their layers are built by scripts/templates.sh into the host-wide layer cache; the keys
 * below are computed from the same definitions when sbx is built (layer_keys.h), so a binary
 * always asks for the layers of the definitions it was built with. The spawner imports them
 * into its layer store at start; the front end resolves template names with this table.
 * Nothing here touches the filesystem. */
#ifndef SBX_SPAWNER_TEMPLATES_H
#define SBX_SPAWNER_TEMPLATES_H

#include <stdbool.h>
#include <stddef.h>

struct sbx_builtin_template {
    const char *name;
    const char *const *layers; /* keys, top first */
    size_t n_layers;
    bool code_interpreter; /* sandboxes start the default kernel (the agent's interpreter) */
};

/* The template a client's name stands for, or NULL. */
const struct sbx_builtin_template *sbx_builtin_template_find(const char *name);
/* Every layer key the built-in templates use, each once; *n gets the count. */
const char *const *sbx_builtin_layers(size_t *n);

#endif
