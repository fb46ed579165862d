/* `sbx agent`: PID 1 of a sandbox. Reads the config the daemon passes on fd 4, serves the
 * daemon's unix socket (fd 3) and, inside the sandbox's own network namespace, TCP ports
 * 49983 (envd) and 49999 (code interpreter), all with one request handler: envd auth, then
 * routing by path. */
#include "agent/agent.h"
#include "agent/start.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "agent/filesystem.h"
#include "agent/interpreter.h"
#include "agent/log_ring.h"
#include "agent/process.h"
#include "base/buf.h"
#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "connect/connect.h"
#include "http/http.h"
#include "json/json.h"

#define CONFIG_MAX_BYTES    (1024 * 1024)
#define SBX_AGENT_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define UNAUTHORIZED_BODY                                                                          \
    "{\"code\":401,\"message\":\"unauthorized access, please provide a valid access token or "     \
    "method signing if supported\"}"

static struct sbx_agent_config config;

static int
read_config(int fd, struct sbx_agent_config *cfg, struct sbx_error **err)
{
    struct sbx_buf b = {0};
    char chunk[4096];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            sbx_buf_fini(&b);
            return sbx_error_sys(err, errno, "read config fd %d", fd);
        }
        if (n == 0)
            break;
        if (sbx_buf_append(&b, chunk, (size_t)n, CONFIG_MAX_BYTES) < 0) {
            sbx_buf_fini(&b);
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "config larger than %d bytes",
                                 CONFIG_MAX_BYTES);
        }
    }
    json_error_t jerr;
    json_t *root = json_loadb(b.data ? b.data : "", b.len, 0, &jerr);
    sbx_buf_fini(&b);
    if (!json_is_object(root)) {
        json_decref(root);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "config: %s", jerr.text);
    }
    json_t *id = json_object_get(root, "sandboxId");
    json_t *tok = json_object_get(root, "accessToken");
    json_t *traffic = json_object_get(root, "trafficAccessToken");
    json_t *envs = NULL;
    json_t *interp = json_object_get(root, "codeInterpreter");
    json_t *mem = json_object_get(root, "memoryMiB");
    json_t *pooled = json_object_get(root, "pooled");
    json_t *volume = json_object_get(root, "volumeService");
    if (sbx_json_opt_env_map(root, "envVars", &envs, err) < 0) {
        json_decref(root);
        return sbx_error_prefix(err, "config");
    }
    if (!json_is_string(id) || (tok && !json_is_null(tok) && !json_is_string(tok)) ||
        (traffic && !json_is_null(traffic) && !json_is_string(traffic))) {
        json_decref(root);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "config: wrong field types");
    }
    cfg->sandbox_id = strdup(json_string_value(id));
    cfg->access_token =
        json_is_string(tok) && json_string_length(tok) > 0 ? strdup(json_string_value(tok)) : NULL;
    cfg->traffic_token = json_is_string(traffic) && json_string_length(traffic) > 0
                             ? strdup(json_string_value(traffic))
                             : NULL;
    cfg->code_interpreter = json_is_true(interp);
    cfg->pooled = json_is_true(pooled);
    cfg->volume_service = json_is_true(volume);
    cfg->memory_mib =
        json_is_integer(mem) && json_integer_value(mem) > 0 && json_integer_value(mem) <= INT32_MAX
            ? (int)json_integer_value(mem)
            : 0;
    json_t *duser = json_object_get(root, "defaultUser"),
           *dcwd = json_object_get(root, "defaultWorkdir");
    sbx_agent_set_default_user(json_string_value(duser));
    sbx_agent_set_default_cwd(json_string_value(dcwd));
    json_t *start = json_object_get(root, "start");
    cfg->start = json_is_object(start) ? json_incref(start) : NULL;
    cfg->env_vars = json_object();
    /* As on E2B, every command can tell it runs in a sandbox; the config may override. */
    json_object_set_new(cfg->env_vars, "E2B_SANDBOX", json_string("true"));
    json_object_set_new(cfg->env_vars, "E2B_SANDBOX_ID", json_string(cfg->sandbox_id));
    /* Node.js trusts only the CAs built into it; give it the system's store (the host's, in
     * the template), as OpenSSL, curl, git and pip already use, so that HTTPS works from
     * sandboxes behind a TLS-intercepting proxy too. */
    if (access(SBX_AGENT_CA_BUNDLE, R_OK) == 0)
        json_object_set_new(cfg->env_vars, "NODE_EXTRA_CA_CERTS", json_string(SBX_AGENT_CA_BUNDLE));
    if (envs != NULL)
        json_object_update(cfg->env_vars, envs);
    json_decref(root);
    return 0;
}

/* ---- routes owned by other agent services plug in here ---- */

/* filesystem.Filesystem RPCs (filesystem service). */
static bool
route_filesystem(struct sbx_http_req *req)
{
    return sbx_agent_fs_handle(req);
}

/* GET/POST /files (file transfer; does its own token-or-signature check, spec §5.3). */
static bool
route_files(struct sbx_http_req *req)
{
    return sbx_agent_files_handle(req, &config);
}

/* Code interpreter: POST /execute, /contexts... (served on port 49999 by the SDKs, but
 * routed by path, so any listener works). */
static bool
route_interpreter(struct sbx_http_req *req)
{
    return sbx_interp_handle(req, &config);
}

/* ---- envd ---- */

static bool
is_authorized(const struct sbx_http_req *req)
{
    return config.access_token == NULL ||
           sbx_http_req_has_secret(req, "x-access-token", config.access_token);
}

static void
respond_envs(struct sbx_http_req *req)
{
    _cleanup_free_ char *body = json_dumps(config.env_vars, JSON_COMPACT);
    sbx_http_respond(req, 200, "application/json", body, strlen(body));
}

/* "/<package>.<Service>/<Method>", the shape of every Connect RPC path. */
static bool
is_rpc_path(const char *path)
{
    const char *slash = strchr(path + 1, '/');
    const char *dot = strchr(path, '.');
    return path[0] == '/' && slash && dot && dot < slash && slash[1] != '\0' &&
           strchr(slash + 1, '/') == NULL;
}

/* ---- a pooled sandbox: started before its client is known ---- */

static void
on_ready_client_closed(struct sbx_http_req *req)
{
    *(struct sbx_http_req **)req->data = NULL;
}

static void
on_warm(void *ud, bool ok)
{
    struct sbx_http_req **slot = ud;
    struct sbx_http_req *req = *slot;
    free(slot);
    if (req == NULL)
        return;
    sbx_http_req_on_close(req, NULL);
    req->data = NULL;
    if (ok)
        sbx_http_respond(req, 204, NULL, NULL, 0);
    else
        sbx_http_respond_error(req, 503, "the default kernel did not start");
}

static void
on_started(void *ud, bool ok, const char *why)
{
    struct sbx_http_req **slot = ud;
    if (*slot == NULL) {
        free(slot);
        return;
    }
    if (!ok) {
        struct sbx_http_req *req = *slot;
        free(slot);
        sbx_http_req_on_close(req, NULL);
        req->data = NULL;
        sbx_http_respond_error(req, 503, "%s", why);
        return;
    }
    /* A pooled code interpreter is ready once its default kernel is warm too. */
    if (config.code_interpreter && config.pooled)
        sbx_interp_when_warm(on_warm, slot);
    else
        on_warm(slot, true);
}

/* GET /sbx/ready (the daemon's): answered once the template's start command is ready and, in
 * a pooled code interpreter, the default kernel is warm. */
static void
handle_ready(struct sbx_http_req *req)
{
    struct sbx_http_req **slot = malloc(sizeof(*slot));
    if (slot == NULL)
        abort();
    *slot = req;
    req->data = slot;
    sbx_http_req_on_close(req, on_ready_client_closed);
    sbx_agent_start_when_ready(on_started, slot);
}

/* POST /init: the client's identity, once. Until then nothing runs here but what the template
 * starts, so nothing of another client can be in this sandbox. */
static void
on_init_body(struct sbx_http_req *req, struct sbx_buf *body)
{
    json_error_t jerr;
    json_t *j = json_loadb(body->data ? body->data : "", body->len, 0, &jerr);
    json_t *envs = NULL, *tok = json_object_get(j, "accessToken"),
           *traffic = json_object_get(j, "trafficAccessToken");
    _cleanup_error_ struct sbx_error *err = NULL;
    if (!json_is_object(j) || (tok && !json_is_null(tok) && !json_is_string(tok)) ||
        (traffic && !json_is_null(traffic) && !json_is_string(traffic)) ||
        sbx_json_opt_env_map(j, "envVars", &envs, &err) < 0) {
        sbx_http_respond_error(req, 400, "bad init body%s%s", err ? ": " : "", err ? err->msg : "");
        json_decref(j);
        return;
    }
    if (json_is_string(tok) && json_string_length(tok) > 0)
        config.access_token = strdup(json_string_value(tok));
    if (json_is_string(traffic) && json_string_length(traffic) > 0)
        config.traffic_token = strdup(json_string_value(traffic));
    if (envs)
        json_object_update(config.env_vars, envs);
    json_decref(j);
    config.env_generation++;
    config.pooled = false;
    sbx_interp_env_changed();
    /* The sandbox's log is its client's: it starts now, not when the pool started it. */
    sbx_agent_log_reset();
    sbx_log_info("agent_init", "sandbox=%s secure=%s", config.sandbox_id,
                 config.access_token ? "true" : "false");
    sbx_http_respond(req, 204, NULL, NULL, 0);
}

/* Only the daemon reaches a pooled sandbox (it is not routable), on the unix socket. */
static void
handle_pooled(struct sbx_http_req *req, bool from_daemon)
{
    if (from_daemon && strcmp(req->path, "/init") == 0 && strcmp(req->method, "POST") == 0) {
        sbx_http_req_read_body(req, SBX_HTTP_MAX_BUFFERED_BODY, on_init_body);
        return;
    }
    sbx_http_respond_error(req, 503, "this sandbox is not assigned yet");
}

static void
on_request(struct sbx_http_req *req, void *ud)
{
    const char *path = req->path;
    snprintf(req->log_sandbox, sizeof(req->log_sandbox), "%s", config.sandbox_id);
    if (ud == NULL && strcmp(path, "/sbx/ready") == 0 && strcmp(req->method, "GET") == 0) {
        handle_ready(req); /* only on the daemon's socket */
        return;
    }
    if (config.pooled) {
        handle_pooled(req, ud == NULL);
        return;
    }
    /* The daemon's way to the sandbox's own ports; never offered inside the sandbox. */
    if (strcmp(req->method, "CONNECT") == 0) {
        if (ud == NULL)
            sbx_agent_connect_port(req);
        else
            sbx_http_respond_error(req, 405, "CONNECT is not served here");
        return;
    }
    if (config.volume_service) {
        /* Only the daemon, which checked the volume's token, reaches the unix socket. */
        if (ud == NULL)
            sbx_agent_volume_handle(req);
        else
            sbx_http_respond_error(req, 404, "path %s not found", path);
        return;
    }
    /* Port 49999 is the code interpreter's (E2B's Jupyter server), with its own /health and
     * its own auth (the SDKs send X-Access-Token there on /execute only). Its requests come
     * through the daemon with E2b-Sandbox-Port, or straight to the in-sandbox listener. */
    const char *sport = sbx_http_req_header(req, "e2b-sandbox-port");
    if (((sport && strcmp(sport, "49999") == 0) || (intptr_t)ud == SBX_JUPYTER_PORT) &&
        route_interpreter(req))
        return;
    if (strcmp(path, "/health") == 0 && strcmp(req->method, "GET") == 0) {
        sbx_http_respond(req, 204, NULL, NULL, 0);
        return;
    }
    if (strcmp(path, "/files") == 0) {
        if (!route_files(req))
            sbx_http_respond_error(req, 404, "not found");
        return;
    }
    if (!is_authorized(req)) {
        sbx_http_respond(req, 401, "application/json; charset=utf-8", UNAUTHORIZED_BODY,
                         strlen(UNAUTHORIZED_BODY));
        return;
    }
    static const char process_prefix[] = "/process.Process/";
    if (strncmp(path, process_prefix, sizeof(process_prefix) - 1) == 0) {
        sbx_agent_process_handle(req, path + sizeof(process_prefix) - 1);
        return;
    }
    if (strcmp(path, "/envs") == 0 && strcmp(req->method, "GET") == 0) {
        respond_envs(req);
        return;
    }
    if (strcmp(path, "/sbx/log") == 0 && strcmp(req->method, "GET") == 0) {
        req->quiet = true; /* reading the log must not write to it */
        sbx_agent_log_respond(req);
        return;
    }
    if (route_filesystem(req))
        return;
    if (is_rpc_path(path)) {
        /* An unknown Connect service: answer in Connect's own format. */
        _cleanup_error_ struct sbx_error *e = NULL;
        sbx_error_set(&e, SBX_UNIMPLEMENTED, 0, "unknown service method %s", path);
        sbx_connect_error(req, e);
        return;
    }
    sbx_http_respond_error(req, 404, "path %s not found", path);
}

static int
serve(uv_loop_t *loop, struct sbx_error **err)
{
    struct sbx_http_server *unix_srv = sbx_http_server_new(loop, on_request, NULL);
    sbx_http_server_set_logging(unix_srv, true);
    if (sbx_http_server_listen_fd(unix_srv, SBX_AGENT_LISTEN_FD, err) < 0)
        return sbx_error_prefix(err, "listen fd %d", SBX_AGENT_LISTEN_FD);
    /* The TCP ports exist for code inside the sandbox (and for the interpreter's own calls
     * to envd). Only PID 1 has a network namespace of its own; an agent started by hand on a
     * host must not open a root shell service on the host's network. */
    if (getpid() != 1)
        return 0;
    const int ports[] = {SBX_ENVD_PORT, SBX_JUPYTER_PORT};
    for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
        struct sbx_http_server *s =
            sbx_http_server_new(loop, on_request, (void *)(intptr_t)ports[i]);
        sbx_http_server_set_logging(s, true);
        if (sbx_http_server_listen_tcp(s, "0.0.0.0", ports[i], err) < 0)
            return sbx_error_prefix(err, "listen on port %d", ports[i]);
    }
    return 0;
}

static void
lower_own_oom_score(void)
{
    /* The OOM killer should pick user code (oom_score_adj 500, set at spawn), never PID 1,
     * whose death ends the sandbox. Lowering below 0 needs CAP_SYS_RESOURCE in the initial
     * user namespace, so this usually fails inside a sandbox; the spawner sets it then. */
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t unused = write(fd, "-900", 4);
    (void)unused;
    close(fd);
}

int
sbx_agent_main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--step") == 0)
        return sbx_agent_step_main();
    sbx_agent_log_init();
    /* Non-dumpable, and sandbox root lacks CAP_SYS_PTRACE: nothing in the sandbox can trace
     * PID 1, read its memory (the access token) or take its fds (the daemon's socket) through
     * ptrace, /proc/1/mem, /proc/1/fd or pidfd_getfd (ptrace(2), "ptrace access mode"). Its
     * children inherit the flag only until they exec. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
        sbx_log_error("agent_start", "error=\"PR_SET_DUMPABLE: %s\"", strerror(errno));
        return 1;
    }
    _cleanup_error_ struct sbx_error *err = NULL;
    /* The listening socket is inherited; make sure no user process inherits it too. */
    fcntl(SBX_AGENT_LISTEN_FD, F_SETFD, FD_CLOEXEC);
    int rc = read_config(SBX_AGENT_CONFIG_FD, &config, &err);
    close(SBX_AGENT_CONFIG_FD);
    if (rc < 0) {
        sbx_log_error("agent_config", "error=\"%s\"", err->msg);
        return 1;
    }
    lower_own_oom_score();
    uv_loop_t *loop = uv_default_loop();
    if (sbx_agent_process_init(loop, &config, &err) < 0 || serve(loop, &err) < 0) {
        sbx_log_error("agent_start", "error=\"%s\"", err->msg);
        return 1;
    }
    sbx_agent_start_init(loop, &config, config.start);
    if (config.volume_service)
        sbx_agent_volume_init();
    /* Code-interpreter sandboxes start their default Python kernel now, so the first
     * run_code does not pay for it; other templates start kernels on first use only. */
    else if (config.code_interpreter && sbx_interp_init(loop, &config, &err) < 0) {
        sbx_log_warn("interpreter_start", "error=\"%s\"", err->msg);
        sbx_error_free(err);
        err = NULL;
    }
    sbx_log_info("agent_ready", "sandbox=%s pid=%d secure=%s", config.sandbox_id, (int)getpid(),
                 config.access_token ? "true" : "false");
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
