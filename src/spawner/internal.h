/* Shared by the files of the spawner process (spawner.c: the loop, the table, spawn, destroy,
 * stats; pause.c: freeze, thaw, stop; volume.c: volumes' images; build.c: build steps, the
 * layer GC, Debian roots). Nothing outside src/spawner/ includes this header. The spawner is
 * one thread: none of this is locked. */
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
#define SB_LAYERS        "layers"     /* in a sandbox's dir: the keys of its layers, for the GC */
#define SB_SLOT          "slot"       /* in a sandbox's dir: its uid slot, for a reboot */
#define SB_AGENT_SOCK    "agent.sock" /* in a sandbox's dir: where its agent listens */
#define SB_STEP          "step"       /* in a build step's dir: nothing of it survives a restart */
#define SBX_SPAWNER_NICE 5 /* below the front end and the sandboxes: see sbx_spawner_main */

/* What a sandbox of ours is doing. A request is refused unless its sandbox is in a phase
 * that allows it; in each phase but RUNNING, FROZEN and STOPPED one request is in flight. */
enum phase {
    SB_SPAWNING,     /* SPAWN: its child sets itself up */
    SB_RUNNING,      /* its agent runs */
    SB_FREEZING,     /* FREEZE: waiting until every process has stopped */
    SB_FROZEN,       /* paused in place: every process stopped, memory kept */
    SB_STOPPING,     /* STOP: waiting for the agent to exit */
    SB_STOPPED,      /* no process; its dir (and disk) kept: paused to its disk, or a leftover */
    SB_DESTROYING,   /* DESTROY: waiting for the agent to exit */
    SB_SNAPSHOTTING, /* SNAPSHOT: frozen while its writable layer is copied (a job) */
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
    /* What a freeze under way leads to: NULL answers the FREEZE; a SNAPSHOT's copy else. */
    void (*on_frozen)(struct sb *s, const struct sbx_error *err);
    struct snap *snap; /* a SNAPSHOT under way (build.c) */
    bool keep_dir;     /* the kill under way is a STOP; the spawn under way is a reboot */
    bool disk_ready;   /* its dir came from the disk stock, with its image */
    int disk_fd;       /* the detached mount of its disk, kept for a later sandbox, or -1 */
    struct step *step; /* a BUILD_STEP's sandbox, else NULL; no other request reaches it */
    struct sb *next;
};

/* A build step's sandbox, from spawn to reply: its output, deadline, exit and commit. Its
 * handles are its own: it is freed once they have closed (sbx_spawner_step_close). */
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
    int handles; /* initialised handles not yet closed */
    struct sbx_spawner_msg reply;
};

struct sb *sbx_spawner_find(const char *id);
/* The first of our sandboxes; the table is a list through sb->next. */
struct sb *sbx_spawner_first(void);
#define PHASE(p) (1u << (p))
/* The sandbox m names if it is in one of phases (PHASE bits); else answers m (not found, or
 * refusal: "sandbox <id> <refusal>") and returns NULL. */
struct sb *sbx_spawner_find_in(const struct sbx_spawner_msg *m, unsigned phases,
                               const char *refusal);
struct sbx_sandbox_ref sbx_spawner_ref(const struct sb *s);
/* Queues a message to the front end (replies, STEP_LOG). */
void sbx_spawner_send(const struct sbx_spawner_msg *m);
/* Answers request seq: ok when err is NULL. */
void sbx_spawner_reply(uint32_t seq, const struct sbx_error *err);
void sbx_spawner_reply_fail(uint32_t seq, enum sbx_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Kills every process of s through its agent's pidfd, then answers seq once nothing runs:
 * a destroy (s and its dir go), or with keep_dir a stop (s stays, SB_STOPPED). */
void sbx_spawner_kill(struct sb *s, uint32_t seq, bool keep_dir);

const char *sbx_spawner_state_dir(void);
const char *sbx_spawner_disks_dir(void); /* blank disk images (sbx_disk_image_create) */
const struct sbx_spawner_config *sbx_spawner_cfg(void);
uv_loop_t *sbx_spawner_loop(void);

/* The sandbox a request that starts a new one is for (SPAWN, BUILD_STEP; a SPAWN with reboot:
 * the stopped one), checked against what we know, its dir made here. NULL with *err if the
 * request may not go ahead. */
struct sb *sbx_spawner_spawn_target(const struct sbx_spawner_msg *m, int config_fd,
                                    struct sbx_error **err);
/* Answers a spawn that failed before its child: a new sandbox's dir goes, a reboot's stays. */
void sbx_spawner_spawn_refused(struct sb *s, const struct sbx_error *err);
/* The plan of a sandbox of m (SPAWN or BUILD_STEP) for s on layers: what both have in common,
 * no fds, no argv. */
void sbx_spawner_plan_init(struct sbx_sandbox_plan *plan, const struct sb *s,
                           const struct sbx_spawner_msg *m, char *const *layers, size_t n_layers);
/* Watches a started spawn: its child's sync socket, and its deadline. */
void sbx_spawner_watch_spawn(struct sb *s);
/* Unlinks s and frees it once its handles have closed. */
void sbx_spawner_sb_drop(struct sb *s);
/* A sealed memfd copy of the front end's config fd. */
int sbx_spawner_copy_config(int fd, struct sbx_error **err);
/* The dirs of m's layers (n malloc'd paths), each of our store. */
int sbx_spawner_layer_paths(const struct sbx_spawner_msg *m, char **paths, size_t *n,
                            struct sbx_error **err);
void sbx_spawner_free_paths(char **paths, size_t n);
/* Records the layers of s in its dir, so that no GC removes them while it runs. */
int sbx_spawner_record_layers(const struct sb *s, const char *layers, struct sbx_error **err);

/* job.c: slow work in child processes ("jobs"), and the tools they run */
#define SBX_SPAWNER_JOB_TEXT_MAX (SBX_SPAWNER_ENV_MAX + 256)
/* What a job reports. */
struct sbx_spawner_job_result {
    int32_t code, sys_errno;
    int32_t value; /* the job's answer: a commit's "empty", a GC's count */
    char message[SBX_SPAWNER_TEXT_MAX];
    char text[SBX_SPAWNER_JOB_TEXT_MAX]; /* the job's answer in words (an image's) */
};
typedef int (*sbx_spawner_job_fn)(void *ud, struct sbx_spawner_job_result *r,
                                  struct sbx_error **err);
typedef void (*sbx_spawner_job_done)(void *ud, const struct sbx_spawner_job_result *r);
/* Forks a child that runs work(ud) and writes its result to the pipe whose read end it
 * returns (*pid: the child). The child never returns into the loop. */
int sbx_spawner_job_fork(sbx_spawner_job_fn work, void *ud, pid_t *pid, struct sbx_error **err);
/* Reads a job's result and reaps it; a job that died without one is an internal error. */
void sbx_spawner_job_finish(int fd, pid_t pid, struct sbx_spawner_job_result *r);
/* A job whose result goes to done(ud, r) on the loop; -1 if it could not start. */
int sbx_spawner_job_start(sbx_spawner_job_fn work, sbx_spawner_job_done done, void *ud,
                          struct sbx_error **err);
/* In a job: runs path (argv) with stdin /dev/null, stdout to out (-1: to log), stderr to
 * log, and fd3 (-1: none) as its fd 3; killed after timeout_ms (0: never). Its exit status
 * (128 + signal if killed by one), or -1 with the error. */
struct sbx_spawner_tool_io {
    int out, log, fd3;
};
int sbx_spawner_run_tool(const char *path, char *const argv[], const struct sbx_spawner_tool_io *io,
                         uint64_t timeout_ms, struct sbx_error **err);
/* The end of log (at most cap - 1 bytes, trailing newlines cut) into buf. */
void sbx_spawner_log_tail(int log, char *buf, size_t cap);

/* build.c: build steps, the layer GC, Debian roots */
void sbx_spawner_build_step(const struct sbx_spawner_msg *m, int config_fd, int archive_fd);
/* The step's agent exited (s->step->exited and wstatus set) or its output ended. */
void sbx_spawner_step_maybe_done(struct sb *s);
/* Closes the step's handles; it is freed once they have closed, and s->step is NULL. */
void sbx_spawner_step_close(struct sb *s);
void sbx_spawner_gc(const struct sbx_spawner_msg *m, int fd);
/* DEBIAN_LAYER: a Debian root of m->suite as layer m->layer_key (a job: mmdebstrap). */
void sbx_spawner_debian_layer(const struct sbx_spawner_msg *m);
/* SNAPSHOT: freezes m's sandbox, copies its writable layer in a job, thaws it. */
void sbx_spawner_snapshot(const struct sbx_spawner_msg *m);

/* image.c: IMAGE_LAYER, a layer of a container image's root (a job: skopeo, umoci);
 * archive_fd (borrowed): an imported archive (-1 for an image of a registry). */
void sbx_spawner_image_layer(const struct sbx_spawner_msg *m, int archive_fd);

/* volume.c */
void sbx_spawner_volume_create(const struct sbx_spawner_msg *m);
void sbx_spawner_volume_delete(const struct sbx_spawner_msg *m);
/* The image of volume id (malloc'd). */
char *sbx_spawner_volume_image(const char *id);

/* sweep.c: destroyed sandboxes' dirs are removed by a helper process, off our loop */
/* Makes <state>/trash and starts the sweeper, which first removes what an earlier one left. */
int sbx_spawner_sweep_start(struct sbx_error **err);
/* Moves the dir of sandbox id into trash (its name is free when this returns) and wakes the
 * sweeper. A dir already gone is not an error. */
int sbx_spawner_sweep(const char *dir, const char *id, struct sbx_error **err);
/* Like sbx_spawner_sweep, for a sandbox whose disk's mount we kept (fd, which this takes):
 * the sweeper empties the disk for a later sandbox if reuse, else lets go of it; the dir waits
 * in <disks>/kept. */
int sbx_spawner_sweep_kept(const char *dir, const char *id, int fd, bool reuse,
                           struct sbx_error **err);
/* Renames a kept dir whose disk is of bytes to dir, which must not exist, and gives its
 * mount's fd to *fd: 1; 0 if none is ready. */
int sbx_spawner_kept_take(uint64_t bytes, const char *dir, int *fd);
/* Wakes the sweeper (starting another if it died): to empty trash, and to refill the stock
 * of ready disk images after a create took one. */
void sbx_spawner_sweep_poke(void);
/* At our exit: the sweeper ends once trash is empty, or after the copy it is making; so that
 * nothing writes in the state dir once we are gone. */
void sbx_spawner_sweep_stop(void);
/* Reaps the sweeper if it has died (SIGCHLD); the next sweep starts another. */
void sbx_spawner_sweep_reap(void);

/* pause.c */
void sbx_spawner_freeze(const struct sbx_spawner_msg *m);
void sbx_spawner_thaw(const struct sbx_spawner_msg *m);
void sbx_spawner_stop(const struct sbx_spawner_msg *m);
/* Freezes s (RUNNING) and calls on_frozen once every process has stopped, or with the error
 * (then s runs again, RUNNING); s->seq is the request's. */
void sbx_spawner_freeze_then(struct sb *s,
                             void (*on_frozen)(struct sb *s, const struct sbx_error *err));

#endif
