/* Templates in the front end: the names clients use (templates.md §2.1), the built-in
 * templates and those built with the Template SDK (kept in the store), and the decoding of a
 * build's definition (§2.5). Everything here but sbx_templates_resolve is pure and
 * unit-tested; the build itself runs in builder.c, the endpoints are api_templates.c. */
#ifndef SBX_DAEMON_TEMPLATES_H
#define SBX_DAEMON_TEMPLATES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"
#include "sandbox/sandbox.h"
#include "store/store.h"

#define SBX_TEMPLATE_NAME_MAX   128
#define SBX_TEMPLATE_STEPS_MAX  200
#define SBX_TEMPLATE_ARG_MAX    (64 * 1024) /* one step argument (a RUN script) */
#define SBX_STEP_ARGS_MAX       256         /* arguments of one step (ENV: key, value, ...) */
#define SBX_TEMPLATE_BASE_IMAGE "e2bdev/base"
/* The namespace of this server's names ("<team>/<alias>"): it has one team, the slug the
 * names of snapshots carry. */
#define SBX_TEMPLATE_TEAM "local"

/* "namespace/alias:tag", lower-cased and checked: alias and namespace [a-z0-9_-]+, tag
 * [a-z0-9_.-]+ and not a UUID; "default" is no tag. */
struct sbx_template_name {
    char ns[SBX_TEMPLATE_NAME_MAX + 1]; /* "" if none */
    char alias[SBX_TEMPLATE_NAME_MAX + 1];
    char tag[SBX_STORE_TAG_MAX + 1]; /* "" if none given */
};
int sbx_template_name_parse(const char *s, struct sbx_template_name *out, struct sbx_error **err);
/* A tag alone (assignTags, removeTags, the tags of a build request). */
int sbx_template_tag_check(const char *tag, struct sbx_error **err);

/* What a sandbox of a template is made of. */
struct sbx_template_ref {
    char id[SBX_STORE_TEMPLATE_ID_LEN + 32];             /* the store's id, or a built-in's name */
    char build_id[SBX_STORE_BUILD_ID_LEN + 1];           /* "" for a built-in */
    char layers[SBX_LAYERS_MAX * SBX_LAYER_KEY_LEN + 1]; /* keys, top first */
    bool code_interpreter;
    int cpu_count, memory_mb; /* 0: the daemon's defaults */
    json_t *start;            /* its start and ready commands {cmd, ready, user, cwd, env}, or
                               * NULL (owned) */
    char user[SBX_TEMPLATE_NAME_MAX + 1]; /* its default user and workdir (last USER and */
    char workdir[4096];                   /* WORKDIR steps), "" for the defaults */
};
void sbx_template_ref_fini(struct sbx_template_ref *r);
#define _cleanup_template_ref_ __attribute__((cleanup(sbx_template_ref_fini)))
/* Resolves a name or template id (a tag picks the build, default "default") against the
 * built-in templates, then the store. SBX_NOT_FOUND if neither has it. */
int sbx_templates_resolve(struct sbx_store *store, const char *name, struct sbx_template_ref *out,
                          struct sbx_error **err);

/* An ENV step's value as E2B evaluates it, once, at the step (templates.md §4.2): as
 * `printf "%s" "<value>"` in a root login shell without the build's env, with command
 * substitution escaped. So $HOME is /root, $PATH the system path, a name an earlier ENV set
 * (or any other) empty, \$ a dollar; "$(", backticks and other forms stay as written.
 * malloc'd. */
char *sbx_template_env_expand(const char *value);

/* ---- a build's definition (POST /v2/templates/{id}/builds/{bid}) ---- */
enum sbx_step_type { SBX_STEP_COPY, SBX_STEP_RUN, SBX_STEP_ENV, SBX_STEP_WORKDIR, SBX_STEP_USER };

struct sbx_build_step {
    enum sbx_step_type type;
    const char *args[SBX_STEP_ARGS_MAX]; /* borrowed from the JSON body */
    size_t n_args;
    bool force;
    const char *files_hash; /* COPY: 64 lowercase hex */
};

struct sbx_build_def {
    const char *from_image;    /* NULL if from_template */
    const char *from_template; /* NULL if from_image */
    bool has_registry;         /* fromImageRegistry given */
    /* fromImageRegistry's type ("registry", "aws", "gcp"; NULL if it has none) and, for
     * "registry", its username and password (NULL if absent) */
    const char *registry_type, *registry_username, *registry_password;
    bool force;
    const char *start_cmd, *ready_cmd;
    struct sbx_build_step *steps;
    size_t n_steps;
};
/* Decodes and checks the body; pointers borrow from body. Unknown keys are ignored (the
 * SDKs add some); a bad step is SBX_INVALID_ARGUMENT naming its 1-based index. */
int sbx_build_def_parse(json_t *body, struct sbx_build_def *out, struct sbx_error **err);
void sbx_build_def_fini(struct sbx_build_def *d);
const char *sbx_step_type_name(enum sbx_step_type t);

#endif
