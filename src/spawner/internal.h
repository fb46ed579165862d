/* Shared by the files of the spawner process (spawner.c: the loop, the table, spawn, destroy,
 * stats; pause.c: freeze, thaw, stop; volume.c: volumes' images). Nothing outside
 * src/spawner/ includes this header. */
#ifndef SBX_SPAWNER_INTERNAL_H
#define SBX_SPAWNER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "base/error.h"
#include "sandbox/sandbox.h"
#include "spawner/msg.h"

/* What a sandbox of ours is doing. A request is refused unless its sandbox is in a phase
 * that allows it; in each phase but RUNNING, FROZEN and STOPPED one request is in flight. */
enum phase {
    SB_SPAWNING,   /* SPAWN: its child sets itself up */
    SB_RUNNING,    /* its agent runs */
    SB_FREEZING,   /* FREEZE: waiting until every process has stopped */
    SB_FROZEN,     /* paused in place: every process stopped, memory kept */
    SB_STOPPING,   /* STOP: waiting for the agent to exit */
    SB_STOPPED,    /* no process; its dir (and disk) kept: paused to its disk, or a leftover */
    SB_DESTROYING, /* DESTROY: waiting for the agent to exit */
};

/* A sandbox of ours: spawned here, or found at start in our state dir. */
struct sb {
    char id[SBX_SPAWNER_ID_MAX + 1];
    char *dir;
    int slot; /* -1: unknown (no agent ran when we found it, and no slot file) */
    enum phase phase;
    pid_t pid;
    uint64_t start_time;
    uint32_t seq;                          /* the request being worked on */
    struct sbx_sandbox_spawning *spawning; /* SB_SPAWNING */
    uv_poll_t *spawn_poll;                 /* on the spawning child's sync socket */
    uv_poll_t *exit_poll;                  /* on the agent's pidfd, while stopping */
    int pidfd;
    uv_timer_t timer;  /* the spawn's deadline, FREEZE's polls; closed when s is dropped */
    uint64_t since_ms; /* when FREEZE began */
    bool keep_dir;     /* the kill under way is a STOP; the spawn under way is a reboot */
    struct sb *next;
};

struct sb *sbx_spawner_find(const char *id);
#define PHASE(p) (1u << (p))
/* The sandbox m names if it is in one of phases (PHASE bits); else answers m (not found, or
 * refusal: "sandbox <id> <refusal>") and returns NULL. */
struct sb *sbx_spawner_find_in(const struct sbx_spawner_msg *m, unsigned phases,
                               const char *refusal);
struct sbx_sandbox_ref sbx_spawner_ref(const struct sb *s);
/* Answers request seq: ok when err is NULL. */
void sbx_spawner_reply(uint32_t seq, const struct sbx_error *err);
void sbx_spawner_reply_fail(uint32_t seq, enum sbx_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Kills every process of s through its agent's pidfd, then answers seq once nothing runs:
 * a destroy (s and its dir go), or with keep_dir a stop (s stays, SB_STOPPED). */
void sbx_spawner_kill(struct sb *s, uint32_t seq, bool keep_dir);

const char *sbx_spawner_state_dir(void);
const char *sbx_spawner_template_dir(void);

/* volume.c */
void sbx_spawner_volume_create(const struct sbx_spawner_msg *m);
void sbx_spawner_volume_delete(const struct sbx_spawner_msg *m);
/* The image of volume id (malloc'd). */
char *sbx_spawner_volume_image(const char *id);

/* pause.c */
void sbx_spawner_freeze(const struct sbx_spawner_msg *m);
void sbx_spawner_thaw(const struct sbx_spawner_msg *m);
void sbx_spawner_stop(const struct sbx_spawner_msg *m);

#endif
