/* Fuzz target: the spawner's message decoder (src/spawner/msg.c), which the privileged
 * spawner runs on every request of the front end as if it were hostile. Invariants: whatever
 * decodes has its strings terminated and within their limits, its numbers within range, and
 * re-encodes to bytes that decode to the same message. */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "spawner/msg.h"

static void
check_valid(const struct sbx_spawner_msg *m)
{
    CHECK(strlen(m->id) <= SBX_SPAWNER_ID_MAX);
    CHECK(memchr(m->template_name, '\0', sizeof(m->template_name)) != NULL);
    CHECK(memchr(m->message, '\0', sizeof(m->message)) != NULL);
    if (m->op == SBX_SPAWNER_SPAWN) {
        CHECK(m->id[0] != '\0' && m->template_name[0] != '\0');
        CHECK(m->uid_slot < 4096 && m->memory_bytes >= (16u << 20) && m->disk_bytes % 4096 == 0);
        CHECK(strchr(m->id, '/') == NULL && strchr(m->template_name, '/') == NULL);
    }
    if (m->op == SBX_SPAWNER_SPAWN || m->op == SBX_SPAWNER_BUILD_STEP)
        CHECK(m->layers[0] != '\0' && strlen(m->layers) % SBX_LAYER_KEY_LEN == 0 &&
              strchr(m->layers, '/') == NULL);
    if (m->op == SBX_SPAWNER_BUILD_STEP)
        CHECK(sbx_layer_key_is_valid(m->layer_key) && m->timeout_ms >= 1000 && m->id[0] != '\0');
    if (m->op == SBX_SPAWNER_STEP_LOG)
        CHECK(m->message[0] != '\0');
    /* A snapshot names a sandbox of ours and a layer path of the store, nothing else. */
    if (m->op == SBX_SPAWNER_SNAPSHOT)
        CHECK(sbx_layer_key_is_valid(m->layer_key) && m->id[0] != '\0' &&
              strchr(m->id, '/') == NULL && m->layers[0] == '\0');
    if (m->op == SBX_SPAWNER_DEBIAN_LAYER)
        CHECK(sbx_layer_key_is_valid(m->layer_key) && m->suite[0] != '\0' && m->suite[0] != '-' &&
              strchr(m->suite, '/') == NULL && strchr(m->suite, '=') == NULL);
    if (m->op == SBX_SPAWNER_DESTROY || m->op == SBX_SPAWNER_STATS || m->op == SBX_SPAWNER_FREEZE ||
        m->op == SBX_SPAWNER_THAW || m->op == SBX_SPAWNER_STOP || m->op == SBX_SPAWNER_NET_POLICY)
        CHECK(m->id[0] != '\0' && strchr(m->id, '.') == NULL);
    CHECK(m->reboot <= 1 && (m->reboot == 0 || m->op == SBX_SPAWNER_SPAWN));
    if (m->op == SBX_SPAWNER_VOLUME_CREATE || m->op == SBX_SPAWNER_VOLUME_DELETE)
        CHECK(m->id[0] != '\0' && strchr(m->id, '/') == NULL);
    if (m->volumes[0]) {
        /* Every volume line is one the spawner may mount: a clean path, not a system dir. */
        struct sbx_spawner_volume v[SBX_SANDBOX_MAX_VOLUMES];
        size_t n = 0;
        CHECK(m->op == SBX_SPAWNER_SPAWN &&
              sbx_spawner_volumes_parse(m->volumes, v, &n, NULL) == 0);
        for (size_t i = 0; i < n; i++)
            CHECK(v[i].path[0] == '/' && strstr(v[i].path, "/../") == NULL &&
                  strcmp(v[i].path, "/proc") != 0 && strncmp(v[i].path, "/proc/", 6) != 0 &&
                  strchr(v[i].id, '/') == NULL);
    }
    /* Egress rules reach nftables as they are: sorted, disjoint, within their bound. */
    CHECK(m->n_net_allow <= SBX_NET_MAX_RULES && m->n_net_deny <= SBX_NET_MAX_RULES);
    CHECK(sbx_ip4_ranges_are_normal(m->net_allow, m->n_net_allow));
    CHECK(sbx_ip4_ranges_are_normal(m->net_deny, m->n_net_deny));
    CHECK(m->op != SBX_SPAWNER_NET_PORTS || (m->dns_port >= 1 && m->dns_port <= 65535));
    CHECK(m->op == SBX_SPAWNER_SPAWN || m->op == SBX_SPAWNER_NET_POLICY ||
          (m->n_net_allow == 0 && m->n_net_deny == 0));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sbx_spawner_msg m, again;
    struct sbx_error *err = NULL;
    if (sbx_spawner_msg_decode(data, size, &m, &err) < 0) {
        CHECK(err != NULL && err->msg != NULL);
        sbx_error_free(err);
        return 0;
    }
    check_valid(&m);
    char buf[SBX_SPAWNER_MSG_MAX];
    ssize_t n = sbx_spawner_msg_encode(&m, buf, sizeof(buf));
    CHECK(n > 0);
    CHECK(sbx_spawner_msg_decode(buf, (size_t)n, &again, &err) == 0);
    CHECK(memcmp(&m, &again, sizeof(m)) == 0);
    return 0;
}
