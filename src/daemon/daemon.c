/* `sbx serve`: configuration, start-up (state dir, API key, template, recovery of running
 * sandboxes), the event loop, and a clean stop on SIGTERM that leaves sandboxes running. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/daemon.h"
#include "daemon/internal.h"

struct sbx_daemon *sbx_daemon;

static void
usage(FILE *f)
{
    fprintf(f,
            "usage: sbx serve [options]\n"
            "\n"
            "  --listen HOST:PORT   address of the API and sandbox traffic (%s; SBX_LISTEN)\n"
            "  --state-dir DIR      database, API key, template, sandbox dirs (%s; SBX_STATE_DIR)\n"
            "  --api-key KEY        accept this API key (SBX_API_KEY); by default one is\n"
            "                       generated on first start and kept in the state dir\n"
            "  --memory-mb N        memory limit of each sandbox (%d; SBX_MEMORY_MB)\n"
            "  --pids-max N         process limit of each sandbox (%d; SBX_PIDS_MAX)\n"
            "  --cpus N             CPUs of each sandbox, as a quota (%d; SBX_CPUS)\n"
            "  --disk-mb N          disk limit of each sandbox, at least %d (%d; SBX_DISK_MB)\n"
            "  --header-timeout S   seconds for a request head (%d; SBX_HEADER_TIMEOUT)\n"
            "  --idle-timeout S     seconds to keep an idle connection (%d; SBX_IDLE_TIMEOUT),\n"
            "                       at most %d until it carried an authenticated request\n"
            "  --max-connections N  client connections held at once, evicting idle and\n"
            "                       unauthenticated ones first (derived from the open-file\n"
            "                       limit by default; SBX_MAX_CONNECTIONS)\n"
            "  --log-level LEVEL    debug, info, warn or error (info; SBX_LOG_LEVEL)\n",
            SBX_DEFAULT_LISTEN, SBX_DEFAULT_STATE_DIR, SBX_DEFAULT_MEMORY_MB, SBX_DEFAULT_PIDS_MAX,
            SBX_DEFAULT_CPU_COUNT, SBX_MIN_DISK_MB, SBX_DEFAULT_DISK_MB,
            SBX_DEFAULT_HEADER_TIMEOUT_S, SBX_DEFAULT_IDLE_TIMEOUT_S, SBX_ANON_IDLE_TIMEOUT_S);
}

static int
parse_listen(const char *s, struct sbx_daemon_config *c)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s)
        return -1;
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535)
        return -1;
    free(c->listen_host);
    c->listen_host = strndup(s, (size_t)(colon - s));
    c->listen_port = (int)port;
    return 0;
}

static int
parse_positive(const char *s, int *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0 || v > 1 << 24)
        return -1;
    *out = (int)v;
    return 0;
}

static int
parse_level(const char *s)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            sbx_log_set_level((enum sbx_log_level)i);
            return 0;
        }
    return -1;
}

/* One table for flags and their environment variables, applied env first, flags after. */
static int
apply_option(struct sbx_daemon_config *c, int opt, const char *v)
{
    switch (opt) {
    case 'l':
        return parse_listen(v, c);
    case 's':
        free(c->state_dir);
        c->state_dir = strdup(v);
        return 0;
    case 'k':
        free(c->api_key);
        c->api_key = strdup(v);
        return 0;
    case 'm':
        return parse_positive(v, &c->memory_mb);
    case 'p':
        return parse_positive(v, &c->pids_max);
    case 'c': {
        int n = 0;
        if (parse_positive(v, &n) < 0 || n > 1024)
            return -1;
        c->cpu_millis = n * 1000;
        return 0;
    }
    case 'd':
        /* Each sandbox's writable layer is an ext4 filesystem of this size. */
        return parse_positive(v, &c->disk_mb) < 0 || c->disk_mb < SBX_MIN_DISK_MB ? -1 : 0;
    case 'H':
        return parse_positive(v, &c->header_timeout_s);
    case 'I':
        return parse_positive(v, &c->idle_timeout_s);
    case 'C':
        return parse_positive(v, &c->max_conns);
    case 'L':
        return parse_level(v);
    }
    return -1;
}

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"state-dir", required_argument, NULL, 's'},
    {"api-key", required_argument, NULL, 'k'},
    {"memory-mb", required_argument, NULL, 'm'},
    {"pids-max", required_argument, NULL, 'p'},
    {"cpus", required_argument, NULL, 'c'},
    {"disk-mb", required_argument, NULL, 'd'},
    {"header-timeout", required_argument, NULL, 'H'},
    {"idle-timeout", required_argument, NULL, 'I'},
    {"max-connections", required_argument, NULL, 'C'},
    {"log-level", required_argument, NULL, 'L'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const struct {
    const char *env;
    int opt;
} env_opts[] = {
    {"SBX_LISTEN", 'l'},          {"SBX_STATE_DIR", 's'},      {"SBX_API_KEY", 'k'},
    {"SBX_MEMORY_MB", 'm'},       {"SBX_PIDS_MAX", 'p'},       {"SBX_CPUS", 'c'},
    {"SBX_DISK_MB", 'd'},         {"SBX_HEADER_TIMEOUT", 'H'}, {"SBX_IDLE_TIMEOUT", 'I'},
    {"SBX_MAX_CONNECTIONS", 'C'}, {"SBX_LOG_LEVEL", 'L'},
};

static int
parse_config(int argc, char **argv, struct sbx_daemon_config *c)
{
    c->state_dir = strdup(SBX_DEFAULT_STATE_DIR);
    c->memory_mb = SBX_DEFAULT_MEMORY_MB;
    c->pids_max = SBX_DEFAULT_PIDS_MAX;
    c->cpu_millis = SBX_DEFAULT_CPU_COUNT * 1000;
    c->disk_mb = SBX_DEFAULT_DISK_MB;
    c->header_timeout_s = SBX_DEFAULT_HEADER_TIMEOUT_S;
    c->idle_timeout_s = SBX_DEFAULT_IDLE_TIMEOUT_S;
    parse_listen(SBX_DEFAULT_LISTEN, c);
    for (size_t i = 0; i < sizeof(env_opts) / sizeof(env_opts[0]); i++) {
        const char *v = getenv(env_opts[i].env);
        if (v && *v && apply_option(c, env_opts[i].opt, v) < 0) {
            fprintf(stderr, "sbx serve: invalid %s='%s'\n", env_opts[i].env, v);
            return 2;
        }
    }
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        if (opt == 'h') {
            usage(stdout);
            return 0;
        }
        if (opt == '?' || apply_option(c, opt, optarg) < 0) {
            if (opt != '?')
                fprintf(stderr, "sbx serve: invalid value '%s'\n", optarg);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sbx serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return -1; /* go on */
}

static int
mkdir_private(const char *path, struct sbx_error **err)
{
    if (mkdir(path, 0711) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", path);
    /* Searchable but not listable: sandbox uids must reach their own dirs below, and
     * nobody may enumerate them. */
    if (chmod(path, 0711) < 0)
        return sbx_error_sys(err, errno, "chmod %s", path);
    return 0;
}

/* Sandbox uids (unprivileged on the host) must traverse every parent of the state dir to
 * reach their own upper layer; say so at start instead of failing every create. */
static int
check_reachable(const char *dir, struct sbx_error **err)
{
    _cleanup_free_ char *real = realpath(dir, NULL);
    if (real == NULL)
        return sbx_error_sys(err, errno, "resolve %s", dir);
    for (char *slash = real; slash; slash = strchr(slash + 1, '/')) {
        char saved = slash[1];
        slash[1] = '\0';
        struct stat st;
        int rc = stat(real, &st);
        slash[1] = saved;
        if (rc == 0 && !(st.st_mode & S_IXOTH))
            return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                                 "state dir %s is not reachable by sandbox users: a parent "
                                 "directory has mode %03o; use a state dir whose parents are "
                                 "all searchable by others (o+x), e.g. under /var/lib or "
                                 "/var/tmp",
                                 dir, st.st_mode & 0777);
    }
    return 0;
}

/* The key shown in the export lines: --api-key, or the one generated on first start. */
static int
ensure_api_key(struct sbx_daemon *d, char **shown, struct sbx_error **err)
{
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/api_key", d->cfg.state_dir) < 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "out of memory");
    if (d->cfg.api_key) {
        if (sbx_store_api_key_add(d->store, d->cfg.api_key, err) < 0)
            return -1;
        *shown = strdup(d->cfg.api_key);
        return 0;
    }
    char buf[128] = {0};
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
            buf[--n] = '\0';
        if (n > 0) {
            if (sbx_store_api_key_add(d->store, buf, err) < 0)
                return -1;
            *shown = strdup(buf);
            explicit_bzero(buf, sizeof(buf));
            return 0;
        }
    }
    char hex[41];
    sbx_random_hex(hex, 20);
    snprintf(buf, sizeof(buf), "e2b_%s", hex);
    _cleanup_close_ int wfd =
        open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (wfd < 0)
        return sbx_error_sys(err, errno, "create %s", path);
    size_t len = strlen(buf);
    if (write(wfd, buf, len) != (ssize_t)len || write(wfd, "\n", 1) != 1)
        return sbx_error_sys(err, errno, "write %s", path);
    if (sbx_store_api_key_add(d->store, buf, err) < 0)
        return -1;
    *shown = strdup(buf);
    explicit_bzero(buf, sizeof(buf));
    return 0;
}

/* See SBX_DAEMON_RESERVED_FDS. Without a limit below the open-file limit, enough idle
 * connections took every descriptor: accept failed, and so did every create and /health. */
static int
default_max_conns(rlim_t nofile)
{
    rlim_t pidfds = nofile / 4 < SBX_MAX_SANDBOXES ? nofile / 4 : SBX_MAX_SANDBOXES;
    rlim_t reserved = SBX_DAEMON_RESERVED_FDS + pidfds;
    if (nofile < reserved + 2 * SBX_MIN_CONNECTIONS)
        return SBX_MIN_CONNECTIONS;
    rlim_t n = (nofile - reserved) / 2;
    return n > 1 << 24 ? 1 << 24 : (int)n;
}

static void
set_max_conns(struct sbx_daemon *d, rlim_t nofile)
{
    int fit = default_max_conns(nofile);
    if (d->cfg.max_conns == 0)
        d->cfg.max_conns = fit;
    else if (d->cfg.max_conns > fit)
        sbx_log_warn("config",
                     "max_connections=%d leaves too few of the %llu open files for sandboxes "
                     "and proxied requests; at most %d is safe",
                     d->cfg.max_conns, (unsigned long long)nofile, fit);
}

static void
on_stop_signal(uv_signal_t *h, int signum)
{
    sbx_log_info("shutdown", "signal=%d sandboxes_left_running=%s", signum,
                 sbx_daemon->live ? "yes" : "no");
    uv_signal_stop(&sbx_daemon->sigterm);
    uv_signal_stop(&sbx_daemon->sigint);
    sbx_http_server_close(sbx_daemon->http);
    sbx_daemon->http = NULL;
    sbx_lifecycle_shutdown();
    uv_close((uv_handle_t *)&sbx_daemon->sigterm, NULL);
    uv_close((uv_handle_t *)&sbx_daemon->sigint, NULL);
    uv_close((uv_handle_t *)&sbx_daemon->expiry, NULL);
}

static int
start(struct sbx_daemon *d, struct sbx_error **err)
{
    if (geteuid() != 0)
        return sbx_error_set(err, SBX_PERMISSION_DENIED, 0,
                             "sbx serve must run as root (it creates namespaces and cgroups)");
    char host_desc[128];
    if (sbx_sandbox_preflight(host_desc, sizeof(host_desc), err) < 0)
        return sbx_error_prefix(err, "this host cannot run sandboxes");
    /* Every sandbox holds a pidfd here and every request in flight one or two sockets; the
     * usual soft limit of 1024 would cap the daemon far below what the machine can run. */
    struct rlimit nofile = {0};
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nofile) < 0)
            getrlimit(RLIMIT_NOFILE, &nofile);
    }
    set_max_conns(d, nofile.rlim_cur);
    _cleanup_free_ char *sandboxes = NULL, *db = NULL, *shown_key = NULL;
    if (asprintf(&sandboxes, "%s/sandboxes", d->cfg.state_dir) < 0 ||
        asprintf(&db, "%s/sbx.db", d->cfg.state_dir) < 0)
        return sbx_error_set(err, SBX_INTERNAL, 0, "out of memory");
    if (mkdir_private(d->cfg.state_dir, err) < 0 || mkdir_private(sandboxes, err) < 0 ||
        check_reachable(sandboxes, err) < 0)
        return -1;
    d->store = sbx_store_open(db, err);
    if (d->store == NULL)
        return -1;
    if (ensure_api_key(d, &shown_key, err) < 0)
        return -1;
    if (sbx_template_prepare(d->cfg.state_dir, &d->template_dir, err) < 0)
        return sbx_error_prefix(err, "prepare template");
    d->exe_fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (d->exe_fd < 0)
        return sbx_error_sys(err, errno, "open /proc/self/exe");
    uv_timer_init(d->loop, &d->expiry);
    if (sbx_lifecycle_recover(err) < 0)
        return sbx_error_prefix(err, "recover sandboxes");
    d->http = sbx_http_server_new(d->loop, sbx_router_on_request, d);
    sbx_http_server_set_logging(d->http, true);
    sbx_http_server_set_timeouts(d->http, (uint64_t)d->cfg.header_timeout_s * 1000,
                                 (uint64_t)d->cfg.idle_timeout_s * 1000,
                                 SBX_ANON_IDLE_TIMEOUT_S * 1000);
    sbx_http_server_set_max_conns(d->http, (size_t)d->cfg.max_conns);
    if (sbx_http_server_listen_tcp(d->http, d->cfg.listen_host, d->cfg.listen_port, err) < 0)
        return -1;
    /* Before the export lines: whoever reads them may stop us right away. */
    uv_signal_init(d->loop, &d->sigterm);
    uv_signal_init(d->loop, &d->sigint);
    uv_signal_start(&d->sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_stop_signal, SIGINT);
    int port = sbx_http_server_port(d->http);
    const char *host = d->cfg.listen_host;
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
        host = "127.0.0.1";
    printf("sbx is serving on %s:%d. To use it with the E2B SDKs:\n"
           "export E2B_API_URL=http://%s:%d\n"
           "export E2B_SANDBOX_URL=http://%s:%d\n"
           "export E2B_API_KEY=%s\n",
           d->cfg.listen_host, port, host, port, host, port, shown_key);
    fflush(stdout);
    sbx_log_info("start",
                 "listen=%s:%d state_dir=%s memory_mb=%d pids_max=%d cpus=%d max_connections=%d %s",
                 d->cfg.listen_host, port, d->cfg.state_dir, d->cfg.memory_mb, d->cfg.pids_max,
                 d->cfg.cpu_millis / 1000, d->cfg.max_conns, host_desc);
    return 0;
}

int
sbx_daemon_main(int argc, char **argv)
{
    static struct sbx_daemon d;
    sbx_daemon = &d;
    d.exe_fd = -1;
    int rc = parse_config(argc, argv, &d.cfg);
    if (rc >= 0)
        return rc;
    /* A client that goes away mid-write must not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);
    d.loop = uv_default_loop();
    _cleanup_error_ struct sbx_error *err = NULL;
    if (start(&d, &err) < 0) {
        fprintf(stderr, "sbx serve: %s\n", err->msg);
        return 1;
    }
    uv_run(d.loop, UV_RUN_DEFAULT);
    sbx_store_close(d.store);
    sbx_log_info("stopped", "ok=1");
    return 0;
}
