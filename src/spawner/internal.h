/* What the files of the spawner share: its table of sandboxes, its replies, and the checks
 * and preparations of a spawn that build steps make too. Nothing outside src/spawner/
 * includes this. The spawner is one thread: none of this is locked. */
#ifndef SBX_SPAWNER_INTERNAL_H
#define SBX_SPAWNER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "base/error.h"
#include "sandbox/sandbox.h"
#include "spawner/msg.h"
#include "spawner/spawner.h"

#define CONFIG_MAX_BYTES (4 * 1024 * 1024) /* the agent's config: token, env vars */
#define AGENT_SOCK       "agent.sock"
#define SB_LAYERS        "layers" /* in a sandbox's dir: the keys of its layers, for the GC */
#define SB_STEP          "step"   /* in a build step's dir: nothing of it survives a restart */

enum phase { SB_SPAWNING, SB_RUNNING, SB_DESTROYING };

/* A sandbox of ours: spawned here, or found at start in our state dir. */
struct sb {
    char id[SBX_SPAWNER_ID_MAX + 1];
    char *dir;
    int slot; /* -1: unknown (no agent ran when we found it) */
    enum phase phase;
    pid_t pid;
    uint64_t start_time;
    uint32_t seq;                          /* the request being worked on */
    struct sbx_sandbox_spawning *spawning; /* SB_SPAWNING */
    uv_poll_t spawn_poll;                  /* on the spawning child's sync socket */
    uv_timer_t deadline;                   /* of the spawn */
    uv_poll_t exit_poll;                   /* on the agent's pidfd, while destroying */
    int pidfd;
    int handles;       /* initialised handles not yet closed */
    bool dropped;      /* out of the table: freed once no handle is left */
    struct step *step; /* a BUILD_STEP's sandbox, else NULL */
    struct sb *next;
};

/* A build step's sandbox, from spawn to reply: its output, deadline, exit and commit. */
struct step {
    uint32_t seq; /* the BUILD_STEP, answered once all is over */
    char key[SBX_LAYER_KEY_LEN + 1];
    uid_t uid_base;
    int out_fd; /* read end of the step's output (its agent's fd 3) */
    uv_poll_t out_poll;
    uv_timer_t timer;
    bool out_done, exited, timed_out, replied;
    int wstatus;
    int commit_fd; /* result of the commit child */
    pid_t commit_pid;
    uv_poll_t commit_poll;
    struct sbx_spawner_msg reply;
};

struct out;

/* The spawner's state (spawner.c). */
struct sbx_spawner_state {
    const struct sbx_spawner_config *cfg;
    uv_loop_t *loop;
    char *disks_dir;
    int exe_fd;
    int channel;
    uv_poll_t channel_poll;
    struct out *out_head, *out_tail;
    struct sb *sbs;
    uv_signal_t sigchld;
};
extern struct sbx_spawner_state sbx_sp;

/* ---- spawner.c ---- */
/* Queues a message to the front end (replies, STEP_LOG). */
void sbx_spawner_send(const struct sbx_spawner_msg *m);
/* Replies to seq: ok when err is NULL. */
void sbx_spawner_reply_error(uint32_t seq, const struct sbx_error *err);
void sbx_spawner_reply_fail(uint32_t seq, enum sbx_code code, const char *fmt, const char *arg);
struct sb *sbx_spawner_sb_new(const char *id);
/* Unlinks s and frees it once its handles have closed. */
void sbx_spawner_sb_drop(struct sb *s);
void sbx_spawner_sb_handle_init(struct sb *s, uv_handle_t *h);
void sbx_spawner_sb_handle_close(struct sb *s, uv_handle_t *h);
struct sbx_sandbox_ref sbx_spawner_ref_of(const struct sb *s);
/* The dirs of m's layers (n malloc'd paths), each of our store. */
int sbx_spawner_layer_paths(const struct sbx_spawner_msg *m, char **paths, size_t *n,
                            struct sbx_error **err);
void sbx_spawner_free_paths(char **paths, size_t n);
/* Checks a request that starts a sandbox (new id, free slot, a config fd) and makes its dir. */
int sbx_spawner_spawn_allowed(const struct sbx_spawner_msg *m, int config_fd,
                              struct sbx_error **err);
int sbx_spawner_record_layers(const struct sb *s, const char *layers, struct sbx_error **err);
/* A sealed memfd copy of the front end's config fd. */
int sbx_spawner_copy_config(int fd, struct sbx_error **err);
/* Watches a started spawn: its child's sync socket, and its deadline. */
void sbx_spawner_watch_spawn(struct sb *s);

/* ---- build.c: build steps and the layer GC ---- */
void sbx_spawner_build_step(const struct sbx_spawner_msg *m, int config_fd, int archive_fd);
/* The step's agent exited (s->step->exited and wstatus set) or its output ended. */
void sbx_spawner_step_maybe_done(struct sb *s);
void sbx_spawner_step_close(struct sb *s);
void sbx_spawner_step_free(struct step *st);
void sbx_spawner_gc(const struct sbx_spawner_msg *m, int fd);
/* DEBIAN_LAYER: a Debian root of m->suite as layer m->layer_key (a job: mmdebstrap). */
void sbx_spawner_debian_layer(const struct sbx_spawner_msg *m);

#endif
