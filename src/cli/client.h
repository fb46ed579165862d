/* What the CLI verbs share: option parsing, the daemon's address and key, HTTP calls to
 * the control plane (libcurl), Connect RPCs to a sandbox's envd through the daemon, and
 * decoding of process events. The CLI is a client like any SDK: it sends exactly what an
 * SDK sends and knows nothing of the daemon's internals. Errors travel up as
 * struct sbx_error; only the verb functions print. */
#ifndef SBX_CLI_CLIENT_H
#define SBX_CLI_CLIENT_H

#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/error.h"
#include "connect/connect.h"

#define SBX_CLI_DEFAULT_API_URL   "http://127.0.0.1:3000"
#define SBX_CLI_USER_AGENT        "sbx-cli/" SBX_VERSION
#define SBX_CLI_MAX_RESPONSE      (16 * 1024 * 1024) /* largest JSON body we buffer */
#define SBX_CLI_CONNECT_TIMEOUT_S 10
#define SBX_CLI_REQUEST_TIMEOUT_S 60 /* unary calls; streams have none */
#define SBX_CLI_ID_MAX            64
#define SBX_CLI_MAX_PAGES         10000 /* a cursor loop must end even if a server misbehaves */

/* Exit statuses of every verb. */
#define SBX_CLI_EXIT_FAILURE 1
#define SBX_CLI_EXIT_USAGE   2

/* Options every verb accepts. */
struct sbx_cli_common {
    const char *api_url; /* --api-url, else E2B_API_URL */
    const char *api_key; /* --api-key, else E2B_API_KEY */
    bool help;
};

struct sbx_cli_config;

/* Verb-specific option handler: returns 0, or -1 with *err (a usage error). */
typedef int (*sbx_cli_opt_cb)(int opt, const char *arg, void *ud, struct sbx_error **err);

/* getopt_long over argv (argv[0] is the verb) with the common options added to verb_opts.
 * Options and operands may be mixed; "--" ends options. On success *first_operand is the
 * index of the first operand (operands are moved to the end of argv). */
int sbx_cli_getopt(int argc, char **argv, const char *shortopts, const struct option *verb_opts,
                   struct sbx_cli_common *common, sbx_cli_opt_cb cb, void *ud, int *first_operand,
                   struct sbx_error **err);

/* What the start of a verb needs: its name and usage, its options (see sbx_cli_getopt), and
 * how many operands it takes (max -1: any; operand names the first missing one). */
struct sbx_cli_verb {
    const char *name;
    const char *usage;
    const char *shortopts;
    const struct option *opts;
    sbx_cli_opt_cb on_opt;
    int min_operands, max_operands;
    const char *operand;
};
/* Parses the options (ud for on_opt), answers --help, checks the operands, and initialises
 * cfg. Returns -1 to go on (then *first is the first operand and cfg must be finished with
 * sbx_cli_config_fini), else the exit status of the verb, after printing what went wrong. */
int sbx_cli_begin(const struct sbx_cli_verb *v, int argc, char **argv, void *ud, int *first,
                  struct sbx_cli_config *cfg);

/* Reporting at the verb boundary. usage_error prints "sbx VERB: message" and the verb's
 * usage on stderr and returns SBX_CLI_EXIT_USAGE; fail prints "sbx VERB: message" and
 * returns SBX_CLI_EXIT_FAILURE. Both free err. */
int sbx_cli_usage_error(const char *verb, const char *usage, struct sbx_error *err);
int sbx_cli_fail(const char *verb, struct sbx_error *err);

/* Adds "K=V" to a JSON object of strings (repeatable --metadata / --env). */
int sbx_cli_add_kv(json_t *obj, const char *arg, const char *what, struct sbx_error **err);
/* Sandbox ids go into URLs and headers: only [A-Za-z0-9_-], at most 64 characters. */
bool sbx_cli_is_valid_id(const char *id);

struct sbx_cli_config {
    char *api_url;     /* without trailing slash */
    char *sandbox_url; /* E2B_SANDBOX_URL, else api_url */
    char *api_key;
};

/* Resolves flags and environment; a missing API key is an error that says where to get
 * one. */
int sbx_cli_config_init(struct sbx_cli_config *cfg, const struct sbx_cli_common *common,
                        struct sbx_error **err);
void sbx_cli_config_fini(struct sbx_cli_config *cfg);

struct sbx_cli_response {
    long status;
    struct sbx_buf body;
    char *next_token; /* X-Next-Token, NULL if absent */
};
void sbx_cli_response_fini(struct sbx_cli_response *r);

/* One control-plane call: method, path ("/sandboxes/<id>", already URL-safe), JSON body or
 * NULL. -1 only when no HTTP response was received; any status is returned in *resp. */
int sbx_cli_api_call(const struct sbx_cli_config *cfg, const char *method, const char *path,
                     json_t *body, struct sbx_cli_response *resp, struct sbx_error **err);
/* Turns a non-2xx control-plane response into an error carrying the server's message. */
int sbx_cli_api_error(const struct sbx_cli_response *resp, struct sbx_error **err);
/* A call about one object of the API, "/sandboxes/<id><suffix>" or "/volumes/<id><suffix>"
 * (kind "sandbox" or "volume"):
 * 404 becomes "<kind> <id> not found", another non-2xx the server's message. */
int sbx_cli_object_call(const struct sbx_cli_config *cfg, const char *kind, const char *id,
                        const char *method, const char *suffix, json_t *body,
                        struct sbx_error **err);
/* The verbs that act on each id they are given (kill, pause, resume, volume rm): options
 * parsed with on_opt(ud), then one() for each id, every failure reported, the exit status 1 if
 * any failed. */
struct sbx_cli_each {
    const char *verb; /* in messages: "pause", "volume rm" */
    const char *usage;
    const char *kind; /* "sandbox", "volume" */
    const char *shortopts;
    const struct option *opts;
    sbx_cli_opt_cb on_opt;
    int (*one)(const struct sbx_cli_config *cfg, const char *id, void *ud, struct sbx_error **err);
};
int sbx_cli_each_id(int argc, char **argv, const struct sbx_cli_each *e, void *ud);
/* Parses a 2xx JSON body. */
json_t *sbx_cli_response_json(const struct sbx_cli_response *resp, struct sbx_error **err);

/* A control-plane call that must succeed (2xx, else *err carries the server's message);
 * *out (may be NULL) gets the parsed JSON body, NULL for 204. */
int sbx_cli_api_json(const struct sbx_cli_config *cfg, const char *method, const char *path,
                     json_t *body, json_t **out, struct sbx_error **err);
/* --format table|json of the listing verbs. */
int sbx_cli_format_parse(const char *arg, bool *json, struct sbx_error **err);
/* Prints j indented on stdout; returns the verb's exit status. */
int sbx_cli_print_json(json_t *j);

/* Appends every sandbox of every page of GET /v2/sandboxes (state: NULL or a filter). */
int sbx_cli_list_sandboxes(const struct sbx_cli_config *cfg, const char *state, json_t *all,
                           struct sbx_error **err);
/* The running sandbox whose id is or starts with arg (ids are long: a unique beginning is
 * enough, as with docker); arg itself if none matches; an error if several do. */
int sbx_cli_resolve_id(const struct sbx_cli_config *cfg, const char *arg, char *id, size_t n,
                       struct sbx_error **err);

/* A sandbox's envd, reached through the daemon's router. */
struct sbx_cli_sandbox {
    char id[SBX_CLI_ID_MAX + 1];
    char *access_token; /* envdAccessToken, NULL if the sandbox has none */
    char *user;         /* sent as Authorization: Basic base64(user ":"), NULL = default */
};

/* GET /sandboxes/<id> (id may be a unique beginning, see resolve_id): checks that the sandbox
 * exists and is running, and takes its envdAccessToken. */
int sbx_cli_sandbox_open(const struct sbx_cli_config *cfg, const char *id,
                         struct sbx_cli_sandbox *sb, struct sbx_error **err);
void sbx_cli_sandbox_fini(struct sbx_cli_sandbox *sb);

/* A libcurl handle with its headers, reusable across unary calls (keep-alive). One per
 * thread. */
struct sbx_cli_rpc;
struct sbx_cli_rpc *sbx_cli_rpc_new(const struct sbx_cli_config *cfg,
                                    const struct sbx_cli_sandbox *sb, struct sbx_error **err);
void sbx_cli_rpc_free(struct sbx_cli_rpc *rpc);

/* Unary Connect call, e.g. method "process.Process/SendInput". *out (may be NULL) gets the
 * response message. A Connect error response becomes *err with its code and message. */
int sbx_cli_rpc_unary(struct sbx_cli_rpc *rpc, const char *method, json_t *req, json_t **out,
                      struct sbx_error **err);

/* A file of the sandbox (envd's /files), streamed: get writes its content to fd, put sends
 * size bytes (-1: until end of input) read from fd. Errors carry the agent's message. */
int sbx_cli_files_get(struct sbx_cli_rpc *rpc, const char *path, int fd, struct sbx_error **err);
/* PUT of a local file's size bytes (from fd) to url, such as a template upload URL. */
int sbx_cli_put_file(const char *url, int fd, long long size, struct sbx_error **err);
int sbx_cli_files_put(struct sbx_cli_rpc *rpc, const char *path, int fd, long long size,
                      struct sbx_error **err);

/* Called for each message of a server stream; returning -1 (with *err) aborts the call. */
typedef int (*sbx_cli_msg_cb)(json_t *msg, void *ud, struct sbx_error **err);

/* Server-streaming Connect call: sends req as one envelope, calls cb per message as the
 * bytes arrive. Returns 0 when the end-of-stream envelope reports success, -1 with *err
 * for an error in it, a cut stream, or a failed callback. */
int sbx_cli_rpc_stream(struct sbx_cli_rpc *rpc, const char *method, json_t *req, sbx_cli_msg_cb cb,
                       void *ud, struct sbx_error **err);

/* The stream decoder behind sbx_cli_rpc_stream, separate so it can be tested on canned
 * bytes: feed response bytes, then finish at the end of the body. */
struct sbx_cli_stream {
    struct sbx_connect_reader reader;
    sbx_cli_msg_cb cb;
    void *ud;
    bool ended;  /* end-of-stream envelope seen */
    bool failed; /* an error has been reported */
};
int sbx_cli_stream_feed(struct sbx_cli_stream *s, const char *data, size_t len,
                        struct sbx_error **err);
int sbx_cli_stream_finish(struct sbx_cli_stream *s, struct sbx_error **err);
void sbx_cli_stream_fini(struct sbx_cli_stream *s);

/* One process.Process event (the "event" oneof of StartResponse / ConnectResponse). */
enum sbx_cli_event_type {
    SBX_CLI_EVENT_UNKNOWN,
    SBX_CLI_EVENT_START,
    SBX_CLI_EVENT_DATA,
    SBX_CLI_EVENT_KEEPALIVE,
    SBX_CLI_EVENT_END,
};

enum sbx_cli_data_kind { SBX_CLI_DATA_STDOUT, SBX_CLI_DATA_STDERR, SBX_CLI_DATA_PTY };

struct sbx_cli_event {
    enum sbx_cli_event_type type;
    uint32_t pid;                /* start */
    enum sbx_cli_data_kind kind; /* data */
    unsigned char *data;         /* data: decoded bytes (malloc'd) */
    size_t len;
    int exit_code;      /* end */
    bool exited;        /* end */
    const char *status; /* end: e.g. "exit status 1", "signal: killed"; borrowed from msg */
    const char *error;  /* end: NULL if none; borrowed from msg */
};

/* Decodes {"event":{...}}; borrowed strings live as long as msg. */
int sbx_cli_event_parse(json_t *msg, struct sbx_cli_event *ev, struct sbx_error **err);
void sbx_cli_event_fini(struct sbx_cli_event *ev);
/* Exit status for an end event, as a shell reports it: the exit code, or 128 + signal
 * number for a process killed by a signal. */
int sbx_cli_event_exit_status(const struct sbx_cli_event *ev);

/* A remote process mirrored locally, as `exec` and `shell` run one: what its
 * process.Process/Start stream has said so far. */
struct sbx_cli_run {
    /* Called on the start event (may be NULL); data is for it. */
    int (*on_start)(struct sbx_cli_run *run, uint32_t pid, struct sbx_error **err);
    void *data;
    bool ended;         /* the end event arrived */
    int exit_status;    /* from the end event, see sbx_cli_event_exit_status */
    bool broken_pipe;   /* writing the local stdout or stderr failed with EPIPE */
    char killed[160];   /* "killed: out of memory (limit 512 MiB)" when the kernel killed it */
    char ended_why[96]; /* how the sandbox ended under it ("sandbox timed out"), if it did */
};
/* A sbx_cli_msg_cb (ud: struct sbx_cli_run *): copies stderr data to the local stderr and
 * stdout and PTY data to the local stdout, and records the end. */
int sbx_cli_run_on_msg(json_t *msg, void *ud, struct sbx_error **err);

/* input.c: the local stdin forwarded to remote process pid on a thread (see input.c). The
 * caller fills cfg, sb, pty, signal_fd (-1: none) and the callbacks, then starts it once the
 * process's pid is known, and stops it when the process has ended. */
struct sbx_cli_input {
    const struct sbx_cli_config *cfg;
    const struct sbx_cli_sandbox *sb;
    bool pty;
    int signal_fd;
    void (*on_winch)(struct sbx_cli_rpc *rpc, uint32_t pid);
    void (*on_signal)(void);
    uint32_t pid;
    pthread_t thread;
    bool running;
    int stop_pipe[2];
};
int sbx_cli_input_start(struct sbx_cli_input *in, uint32_t pid, struct sbx_error **err);
void sbx_cli_input_stop(struct sbx_cli_input *in);

/* Writes all of buf to fd, retrying on EINTR and short writes; -1 with errno. */
int sbx_cli_write_all(int fd, const void *buf, size_t len);

/* Verbs. argv[0] is the verb name. They return the process exit status. */
int sbx_cli_ls(int argc, char **argv);
int sbx_cli_create(int argc, char **argv);
int sbx_cli_kill(int argc, char **argv);
int sbx_cli_exec(int argc, char **argv);
int sbx_cli_shell(int argc, char **argv);
int sbx_cli_template(int argc, char **argv);
/* A Dockerfile (FROM, RUN, ENV, ARG, WORKDIR, USER, CMD/ENTRYPOINT) into the body of
 * POST /v2/templates/{id}/builds/{bid}; COPY, ADD and a second FROM are errors. */
int sbx_cli_dockerfile_parse(const char *text, json_t **out, struct sbx_error **err);
/* Runs req (a process.Process/Start request) in sb and streams its output; with in (may be
 * NULL) the local stdin goes to it once it started. When the stream is cut because the
 * sandbox ended, run->ended_why says how (from the sandbox's log). */
int sbx_cli_process_run(const struct sbx_cli_config *cfg, const struct sbx_cli_sandbox *sb,
                        json_t *req, struct sbx_cli_input *in, struct sbx_cli_run *run,
                        struct sbx_error **err);
/* The exit status of a verb that ran a process (rc, err: what process_run returned), after
 * saying on stderr how it ended when it did not end by itself: "sbx VERB: killed: out of
 * memory (limit 512 MiB)" (128 + 9), "sbx VERB: sandbox timed out" (124). Frees err. */
int sbx_cli_run_status(const char *verb, const struct sbx_cli_run *run, int rc,
                       struct sbx_error *err);
int sbx_cli_keys(int argc, char **argv);
int sbx_cli_logs(int argc, char **argv);
int sbx_cli_cp(int argc, char **argv);
int sbx_cli_inspect(int argc, char **argv);
int sbx_cli_stats(int argc, char **argv);
int sbx_cli_run(int argc, char **argv);
int sbx_cli_pause(int argc, char **argv);
int sbx_cli_resume(int argc, char **argv);
int sbx_cli_snapshot(int argc, char **argv);
int sbx_cli_volume(int argc, char **argv);

/* Argument parsing of the verbs that take more than ids, exposed for unit tests. */
struct sbx_cli_create_args {
    struct sbx_cli_common common;
    const char *template_id;
    long timeout_s;
    bool allow_internet;
    json_t *metadata; /* object, owned */
    json_t *env;      /* object, owned */
};
int sbx_cli_create_parse(int argc, char **argv, struct sbx_cli_create_args *a,
                         struct sbx_error **err);
/* The defaults (template base, the default timeout, internet on, empty maps); and the options
 * of create with their handler (ud: the args), for verbs that create too (run). */
void sbx_cli_create_args_init(struct sbx_cli_create_args *a);
extern const struct option sbx_cli_create_options[];
int sbx_cli_create_on_opt(int opt, const char *arg, void *ud, struct sbx_error **err);
void sbx_cli_create_args_fini(struct sbx_cli_create_args *a);
/* The POST /sandboxes body for these arguments (new reference). */
json_t *sbx_cli_create_body(const struct sbx_cli_create_args *a);
/* Creates a sandbox with these arguments; its id goes to id. */
int sbx_cli_create_sandbox(const struct sbx_cli_config *cfg, const struct sbx_cli_create_args *a,
                           char *id, size_t n, struct sbx_error **err);

struct sbx_cli_exec_args {
    struct sbx_cli_common common;
    const char *id;
    const char *user;
    const char *cwd;
    json_t *env; /* object, owned */
    char **cmd;  /* points into argv */
    int ncmd;
    bool interactive; /* -i: stdin goes to the command */
};
int sbx_cli_exec_parse(int argc, char **argv, struct sbx_cli_exec_args *a, struct sbx_error **err);
void sbx_cli_exec_args_fini(struct sbx_cli_exec_args *a);
/* The process.Process/Start request for these arguments (new reference). */
json_t *sbx_cli_exec_request(const struct sbx_cli_exec_args *a);
/* Quotes argv words for a POSIX shell and joins them with spaces (malloc'd). */
char *sbx_cli_shell_join(char *const *words, int n);

#endif
