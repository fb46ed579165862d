/* Messages between the front end (unprivileged: HTTP, JSON, SQLite) and the spawner (root:
 * namespaces, cgroups, mounts). Each message is one datagram on a SOCK_SEQPACKET socketpair,
 * at most SBX_SPAWNER_MSG_MAX bytes, carrying at most SBX_SPAWNER_FDS_MAX fds (the agent's
 * config on a spawn; a build step's config and archive).
 *
 * Wire format: a header {u8 version, u8 op, u16 zero, u32 seq}, then fields, each
 * {u8 tag, u8 zero, u16 length, value}: integers are 8 bytes little-endian, strings are their
 * bytes (no NUL), lists of IPv4 ranges are 8 bytes per range (first, last: 4 bytes each,
 * little-endian). The decoder is pure and total: whatever the bytes, it returns either a
 * message whose every field is present where its op needs it and within its range, or an
 * error; the spawner decodes every request with it as if the front end were hostile.
 * fuzz/fuzz_spawner_msg.c replays it. */
#ifndef SBX_SPAWNER_MSG_H
#define SBX_SPAWNER_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/error.h"
#include "sandbox/sandbox.h"
#include "spawner/image_ref.h"

#define SBX_SPAWNER_MSG_VERSION 1
#define SBX_SPAWNER_MSG_MAX     16384 /* a SPAWN with every layer, volume and egress rule fits */
#define SBX_SPAWNER_ID_MAX      32    /* [a-z0-9]{1,32} */
#define SBX_SPAWNER_NAME_MAX    64    /* template names: [a-z0-9._-]{1,64} */
#define SBX_SPAWNER_TEXT_MAX    1024
#define SBX_SPAWNER_SUITE_MAX   32
#define SBX_SPAWNER_FDS_MAX     2    /* fds one message carries (BUILD_STEP: config, archive) */
#define SBX_SPAWNER_CRED_MAX    1024 /* a registry user name or password */
#define SBX_SPAWNER_ENV_MAX     4096 /* an image's Env, "K=V" lines */

enum sbx_spawner_op {
    SBX_SPAWNER_SPAWN = 1,   /* id, template, layers, slot, limits; fd: the agent's config.
                              * Reply: pid, start time */
    SBX_SPAWNER_DESTROY = 2, /* id. Reply: none, once nothing of the sandbox is left */
    SBX_SPAWNER_STATS = 3,   /* id. Reply: the counters */
    /* The network. SPAWN also takes the egress rules, applied before the sandbox starts. */
    SBX_SPAWNER_NET_POLICY = 10, /* id, allowed and denied ranges (none: none). Reply: none,
                                  * once the sandbox's rules are exactly these */
    SBX_SPAWNER_NET_PORTS = 11,  /* dns_port, proxy_port: the front end's DNS forwarder and
                                  * egress proxy on the gateway */
    /* Pause and resume (spawner/pause.c). */
    SBX_SPAWNER_FREEZE = 20, /* id. Reply once every process of the sandbox is frozen */
    SBX_SPAWNER_THAW = 21,   /* id. Reply once they may run again */
    SBX_SPAWNER_STOP = 22,   /* id. Reply once no process of the sandbox is left; its dir and
                              * disk stay for a SPAWN with reboot */
    /* Volumes (spawner/volume.c): id is the volume's. */
    SBX_SPAWNER_VOLUME_CREATE = 23, /* id, disk_bytes. Reply once its image exists */
    SBX_SPAWNER_VOLUME_DELETE = 24, /* id. Reply once its image is gone */
    /* Template builds and layers (spawner/build.c). */
    /* id, layers, layer key, slot, memory, pids, CPU, timeout; fds: the step's config (the
     * build-step agent's, agent/step.c), then optionally a COPY's archive (its stdin). Runs
     * one template build step in a sandbox of those layers with a writable layer in the
     * state dir, sends STEP_LOG messages of its output, and, if it exits 0, commits that
     * layer under the key. Reply, once all is over: exit status and whether the layer is
     * empty (code DEADLINE_EXCEEDED when the timeout killed it). */
    SBX_SPAWNER_BUILD_STEP = 30,
    SBX_SPAWNER_STEP_LOG = 31, /* spawner -> front end: seq of a BUILD_STEP, message: output */
    /* fd: the keys of the layers the front end's templates use, one after the other. Removes
     * every other layer of the store but the built-in templates' and those a sandbox runs
     * on. Reply: how many went. */
    SBX_SPAWNER_LAYERS_GC = 32,
    /* layer key, suite: makes that layer a Debian root of the suite (bookworm or later) by
     * the base template's recipe (mmdebstrap, then its customize script), for builds
     * fromDebianImage. Minutes; the reply comes when it is done. */
    SBX_SPAWNER_DEBIAN_LAYER = 33,
    /* id, layer key: freezes the running sandbox, copies its writable layer into the store as
     * that layer (in a job), thaws it. Reply: the keys of the layers the sandbox runs on
     * (top first), which the new layer goes on top of. */
    SBX_SPAWNER_SNAPSHOT = 34,
    /* image, timeout, optionally registry user and password; fd: with an image
     * "archive:sha256:<hash>", the archive (an OCI or docker archive). Makes a layer of the
     * image's root filesystem (skopeo, then umoci unpack), keyed by its manifest's digest, or
     * finds it made. Reply: layer key, the image's digest and its Env ("K=V" lines). */
    SBX_SPAWNER_IMAGE_LAYER = 35,
    SBX_SPAWNER_REPLY = 64, /* spawner -> front end: code (0 = ok), errno, message */
};

struct sbx_spawner_msg {
    uint8_t op;
    uint32_t seq;    /* chosen by the front end; the reply carries the request's */
    char id[64 + 1]; /* room for any stored id; the decoder takes at most SBX_SPAWNER_ID_MAX */
    char template_name[SBX_SPAWNER_NAME_MAX + 1];
    /* The lower layers of the sandbox's root, top first: their keys (SBX_LAYER_KEY_LEN hex
     * digits each) one after the other, 1 to SBX_LAYERS_MAX of them (a request's; the reply to
     * SNAPSHOT: the layers of the sandbox). */
    char layers[SBX_LAYERS_MAX * SBX_LAYER_KEY_LEN + 1];
    /* BUILD_STEP, SNAPSHOT: the layer it makes; IMAGE_LAYER's reply: the layer made */
    char layer_key[SBX_LAYER_KEY_LEN + 1];
    uint64_t timeout_ms;                   /* BUILD_STEP, IMAGE_LAYER: killed after this long */
    uint64_t exit_status;                  /* reply to BUILD_STEP: 0-255, 128 + signal */
    uint64_t layer_empty;                  /* reply to BUILD_STEP: 1 if the step changed nothing */
    uint64_t layers_removed;               /* reply to LAYERS_GC */
    char suite[SBX_SPAWNER_SUITE_MAX + 1]; /* DEBIAN_LAYER: [a-z0-9.-], e.g. bookworm */
    char image[SBX_IMAGE_REF_MAX + 1];     /* IMAGE_LAYER: see spawner/image_ref.h */
    char registry_user[SBX_SPAWNER_CRED_MAX + 1], registry_password[SBX_SPAWNER_CRED_MAX + 1];
    char image_digest[80];                   /* reply to IMAGE_LAYER: "sha256:<hex>" */
    char image_env[SBX_SPAWNER_ENV_MAX + 1]; /* reply to IMAGE_LAYER */
    uint64_t uid_slot;
    uint64_t memory_bytes, pids_max, cpu_millis, disk_bytes; /* struct sbx_sandbox_limits */
    uint64_t reboot; /* SPAWN: 1 boots a stopped sandbox again on its disk, with its slot */
    /* SPAWN: the volumes to mount, "<volume id>:<path>" lines (sbx_spawner_volumes_parse) */
    char volumes[SBX_SPAWNER_TEXT_MAX + 1];
    int64_t pid;
    uint64_t start_time;
    /* replies */
    uint64_t code; /* enum sbx_code */
    uint64_t sys_errno;
    char message[SBX_SPAWNER_TEXT_MAX + 1];
    bool has_stats;
    struct sbx_sandbox_stats stats;
    /* network: egress rules (normalised lists, see base/ip4.h), the forwarder's port */
    struct sbx_ip4_range net_allow[SBX_NET_MAX_RULES], net_deny[SBX_NET_MAX_RULES];
    uint32_t n_net_allow, n_net_deny;
    uint64_t net_flags; /* SBX_NET_PROXY_* */
    uint64_t dns_port, proxy_port;
};

/* Encodes m into buf; returns the length, or -1 if it does not fit (cannot happen for a
 * message that decodes: every field is bounded). */
ssize_t sbx_spawner_msg_encode(const struct sbx_spawner_msg *m, void *buf, size_t cap);
/* Decodes and validates; on error *out is unspecified. */
int sbx_spawner_msg_decode(const void *buf, size_t len, struct sbx_spawner_msg *out,
                           struct sbx_error **err);
/* The volumes field of a SPAWN: at most SBX_SANDBOX_MAX_VOLUMES lines "<id>:<path>", each
 * id [a-z0-9]{1,32} and each path one sbx_volume_path_check accepts, no path twice or inside
 * another. 0 and *n, or -1 with an invalid_argument error. Pure; the decoder calls it. */
struct sbx_spawner_volume {
    char id[SBX_SPAWNER_ID_MAX + 1];
    char path[SBX_VOLUME_PATH_MAX + 1];
};
int sbx_spawner_volumes_parse(const char *s, struct sbx_spawner_volume *out, size_t *n,
                              struct sbx_error **err);
/* A reply to req: ok when err is NULL, else err's code, errno and message. */
void sbx_spawner_reply_init(struct sbx_spawner_msg *reply, const struct sbx_spawner_msg *req,
                            const struct sbx_error *err);

#endif
