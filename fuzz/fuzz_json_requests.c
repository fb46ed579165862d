/* Fuzz target: JSON request bodies from untrusted clients, through every decoder that takes
 * them apart: the control plane's create, timeout and network bodies (src/daemon/api.c,
 * src/daemon/egress.c), the typed
 * field helpers (src/json/json.c) and the agent's process.Process request decoders
 * (src/agent/process_msg.c). The input is the raw body; it is parsed as the daemon parses it
 * (json_loadb) and, if it is an object, handed to each decoder. Decoders must either succeed
 * with a consistent result or fail with an error; nothing may crash or leak. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/process.h"
#include "base/limits.h"
#include "daemon/internal.h"
#include "daemon/templates.h"
#include "json/json.h"
#include "fuzz_common.h"

/* A decoder either fills *err (once) and returns -1, or leaves it empty. */
static void
settle(int rc, struct sbx_error **err)
{
    if (rc < 0)
        CHECK(*err != NULL && (*err)->msg != NULL);
    else
        CHECK(*err == NULL);
    sbx_error_free(*err);
    *err = NULL;
}

/* What every accepted map of environment variables must be: names execve(2) can carry. */
static bool
env_map_ok(json_t *map)
{
    const char *k;
    size_t klen;
    json_t *v;
    if (!json_is_object(map) || json_object_size(map) > SBX_MAX_ENV_VARS)
        return false;
    json_object_keylen_foreach(map, k, klen, v)
    {
        if (klen == 0 || memchr(k, '=', klen) || memchr(k, '\0', klen) || !json_is_string(v) ||
            strlen(json_string_value(v)) != json_string_length(v))
            return false;
    }
    return true;
}

/* What a stored network setting must load into: normalised lists within their bounds. */
static void
check_stored_network(json_t *stored)
{
    CHECK(json_is_object(stored));
    char *s = json_dumps(stored, JSON_COMPACT);
    struct sbx_netset *n = sbx_netset_load(json_object_size(stored) ? s : NULL);
    CHECK(n->n_allow <= SBX_NET_MAX_RULES && n->n_deny <= SBX_NET_MAX_RULES);
    CHECK(sbx_ip4_ranges_are_normal(n->allow, n->n_allow));
    CHECK(sbx_ip4_ranges_are_normal(n->deny, n->n_deny));
    CHECK(n->mask_host == NULL || strchr(n->mask_host, '\n') == NULL);
    sbx_netset_free(n);
    free(s);
}

static void
control_plane(json_t *body)
{
    struct sbx_error *err = NULL;
    for (int v2 = 0; v2 <= 1; v2++) {
        struct sbx_create_opts o;
        int rc = sbx_api_create_opts_parse(body, v2, &o, &err);
        if (rc == 0) {
            CHECK(o.template_id != NULL);
            CHECK(o.timeout_s >= 1 && o.timeout_s <= SBX_MAX_TIMEOUT_S);
            CHECK(o.metadata == NULL || json_is_object(o.metadata));
            CHECK(o.env_vars == NULL || env_map_ok(o.env_vars));
            CHECK(!v2 || o.secure);
            /* The timeout policy the SDKs check: autoResume only with a pause that keeps memory. */
            CHECK(!o.auto_resume || (o.auto_pause && o.auto_pause_memory));
            CHECK(o.volume_mounts == NULL ||
                  json_array_size(o.volume_mounts) <= SBX_SANDBOX_MAX_VOLUMES);
            check_stored_network(o.network);
            sbx_api_create_opts_fini(&o);
        }
        settle(rc, &err);
    }
    /* A template build's definition (POST /v2/templates/{id}/builds/{bid}). */
    struct sbx_build_def def;
    int def_rc = sbx_build_def_parse(body, &def, &err);
    if (def_rc == 0) {
        CHECK((def.from_image != NULL) != (def.from_template != NULL));
        CHECK(def.n_steps <= SBX_TEMPLATE_STEPS_MAX);
        for (size_t i = 0; i < def.n_steps; i++) {
            CHECK(def.steps[i].n_args <= SBX_STEP_ARGS_MAX);
            CHECK(def.steps[i].type != SBX_STEP_COPY || strlen(def.steps[i].files_hash) == 64);
            CHECK(def.steps[i].type != SBX_STEP_ENV || def.steps[i].n_args % 2 == 0);
        }
        sbx_build_def_fini(&def);
    }
    settle(def_rc, &err);
    json_t *stored = NULL;
    int net_rc = sbx_netset_decode_update(body, "{\"allowPublicTraffic\":false}", &stored, &err);
    if (net_rc == 0) {
        check_stored_network(stored);
        json_decref(stored);
    }
    settle(net_rc, &err);
    for (int extend = 0; extend <= 1; extend++) {
        int64_t secs = -1;
        int rc = sbx_api_timeout_parse(body, extend, &secs, &err);
        if (rc == 0)
            CHECK(secs >= 0 && secs <= SBX_MAX_TIMEOUT_S);
        settle(rc, &err);
    }
    /* The typed helpers on every top-level key, whatever its type. */
    const char *k;
    json_t *v;
    json_object_foreach (body, k, v) {
        const char *s = NULL;
        bool b = false;
        int64_t i = 0;
        json_t *m = NULL;
        settle(sbx_json_opt_string(body, k, &s, &err), &err);
        settle(sbx_json_opt_bool(body, k, &b, &err), &err);
        settle(sbx_json_opt_int(body, k, &i, &err), &err);
        settle(sbx_json_opt_string_map(body, k, &m, &err), &err);
        int rc = sbx_json_opt_env_map(body, k, &m, &err);
        CHECK(rc != 1 || env_map_ok(m));
        settle(rc, &err);
    }
}

static void
agent(json_t *msg)
{
    struct sbx_error *err = NULL;
    struct sbx_agent_start_req sr;
    int rc = sbx_agent_start_req_parse(msg, &sr, &err);
    if (rc == 0) {
        CHECK(sr.cmd != NULL && sr.cmd[0] != '\0');
        CHECK(sr.args != NULL && sr.args[sr.n_args] == NULL);
        CHECK(env_map_ok(sr.envs));
        json_decref(sbx_agent_config_json(&sr));
        sbx_agent_start_req_fini(&sr);
    }
    settle(rc, &err);

    static const char *const sel_keys[] = {"process", "selector"};
    for (size_t i = 0; i < 2; i++) {
        struct sbx_agent_selector sel;
        rc = sbx_agent_selector_parse(msg, sel_keys[i], &sel, &err);
        if (rc == 0)
            sbx_agent_selector_fini(&sel);
        settle(rc, &err);
    }

    bool is_pty = false;
    unsigned char *data = NULL;
    size_t len = 0;
    rc = sbx_agent_input_parse(json_object_get(msg, "input"), &is_pty, &data, &len, &err);
    CHECK(rc == 0 || data == NULL);
    free(data);
    settle(rc, &err);

    int sig = 0;
    settle(sbx_agent_signal_parse(json_object_get(msg, "signal"), &sig, &err), &err);

    uint16_t cols = 0, rows = 0;
    json_t *pty = json_object_get(msg, "pty");
    if (pty)
        settle(sbx_agent_pty_size_parse(pty, &cols, &rows, &err), &err);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    /* The daemon's decoding (api.c on_body), the Connect one (duplicates rejected) and the
     * code interpreter's of /execute (NUL allowed in strings). */
    static const size_t flags[] = {0, JSON_REJECT_DUPLICATES, JSON_ALLOW_NUL};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        json_t *v = json_loadb((const char *)data, size, flags[i], &jerr);
        if (v == NULL)
            continue;
        if (json_is_object(v)) {
            control_plane(v);
            agent(v);
        } else {
            /* Non-objects must be refused, not misread. */
            struct sbx_error *err = NULL;
            struct sbx_create_opts o;
            struct sbx_agent_start_req sr;
            CHECK(sbx_api_create_opts_parse(v, false, &o, &err) < 0);
            settle(-1, &err);
            CHECK(sbx_agent_start_req_parse(v, &sr, &err) < 0);
            settle(-1, &err);
        }
        json_decref(v);
    }
    return 0;
}
