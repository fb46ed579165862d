/* Configuration of `sbx serve`: one table of options, each a key of the config file
 * (/etc/sbx/sbx.conf, `key = value` lines), an SBX_* environment variable and a flag. Later
 * sources win: defaults, the file, the environment, the flags. Nothing here touches the host
 * beyond reading the config file; only the config struct (and the log level) change. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/version.h"
#include "daemon/internal.h"

#define STR_(x) #x
#define STR(x)  STR_(x)

static int
set_string(char **dst, const char *v)
{
    char *s = strdup(v);
    if (s == NULL)
        return -1;
    free(*dst);
    *dst = s;
    return 0;
}

static int
parse_host_port(const char *s, char **host, int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s)
        return -1;
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || p < 0 || p > 65535)
        return -1;
    free(*host);
    *host = strndup(s, (size_t)(colon - s));
    *port = (int)p;
    return *host ? 0 : -1;
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
opt_listen(struct sbx_daemon_config *c, const char *v)
{
    return parse_host_port(v, &c->listen_host, &c->listen_port);
}

static int
opt_metrics_listen(struct sbx_daemon_config *c, const char *v)
{
    return parse_host_port(v, &c->metrics_host, &c->metrics_port);
}

static int
opt_state_dir(struct sbx_daemon_config *c, const char *v)
{
    return *v == '\0' ? -1 : set_string(&c->state_dir, v);
}

static int
opt_layer_cache(struct sbx_daemon_config *c, const char *v)
{
    return v[0] != '/' ? -1 : set_string(&c->layer_cache, v);
}

static int
opt_max_builds(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->max_builds) < 0 || c->max_builds > SBX_MAX_BUILDS ? -1 : 0;
}

static int
opt_build_step_timeout(struct sbx_daemon_config *c, const char *v)
{
    /* The spawner takes 1 s to 24 h. */
    return parse_positive(v, &c->build_step_timeout_s) < 0 || c->build_step_timeout_s > 86400 ? -1
                                                                                              : 0;
}

static int
opt_build_disk(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->build_disk_mb) < 0 || c->build_disk_mb < SBX_MIN_DISK_MB ? -1 : 0;
}

static int
opt_api_key(struct sbx_daemon_config *c, const char *v)
{
    return set_string(&c->api_key, v);
}

static int
opt_memory(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->memory_mb);
}

static int
opt_pids(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->pids_max);
}

static int
opt_cpus(struct sbx_daemon_config *c, const char *v)
{
    int n = 0;
    if (parse_positive(v, &n) < 0 || n > 1024)
        return -1;
    c->cpu_millis = n * 1000;
    return 0;
}

static int
opt_disk(struct sbx_daemon_config *c, const char *v)
{
    /* Each sandbox's writable layer is an ext4 filesystem of this size. */
    return parse_positive(v, &c->disk_mb) < 0 || c->disk_mb < SBX_MIN_DISK_MB ? -1 : 0;
}

static int
opt_header_timeout(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->header_timeout_s);
}

static int
opt_idle_timeout(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->idle_timeout_s);
}

static int
opt_max_conns(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->max_conns);
}

static int
opt_log_level(struct sbx_daemon_config *c, const char *v)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(v, names[i]) == 0) {
            sbx_log_set_level((enum sbx_log_level)i);
            return 0;
        }
    return -1;
}

static int
opt_log_format(struct sbx_daemon_config *c, const char *v)
{
    if (strcmp(v, "logfmt") != 0 && strcmp(v, "json") != 0)
        return -1;
    sbx_log_set_json(strcmp(v, "json") == 0);
    return 0;
}

static int
opt_log_retention(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->log_retention_h);
}

static int
opt_log_store(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->log_store_mb);
}

static int
opt_profile(struct sbx_daemon_config *c, const char *v)
{
    if (strcmp(v, "default") != 0 && strcmp(v, "relaxed") != 0)
        return -1;
    c->relaxed = strcmp(v, "relaxed") == 0;
    return 0;
}

static int
opt_user(struct sbx_daemon_config *c, const char *v)
{
    if (*v == '\0' || strlen(v) > 32)
        return -1;
    return set_string(&c->user, v);
}

/* A duration: N with a unit, s, m, h or d (e.g. "30d"), at most ten years. */
static int
opt_paused_retention(struct sbx_daemon_config *c, const char *v)
{
    static const struct {
        char unit;
        int64_t seconds;
    } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}};
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    if (*v == '\0' || n <= 0 || end == v || end[0] == '\0' || end[1] != '\0')
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (*end == units[i].unit && n <= 3650LL * 86400 / units[i].seconds) {
            c->paused_retention_s = n * units[i].seconds;
            return 0;
        }
    return -1;
}

static int
opt_volume(struct sbx_daemon_config *c, const char *v)
{
    /* Each volume is an ext4 filesystem of this size, like a sandbox's disk. */
    return parse_positive(v, &c->volume_mb) < 0 || c->volume_mb < SBX_MIN_DISK_MB ? -1 : 0;
}

/* --network-cidr: a private range, or "off" for loopback only. */
static int
opt_network_cidr(struct sbx_daemon_config *c, const char *v)
{
    struct sbx_netplan plan;
    if (strcmp(v, "off") != 0 && !sbx_netplan_parse(v, &plan))
        return -1;
    return set_string(&c->network_cidr, v);
}

/* --allow-private: each range must be one of those an operator may open; they add up. */
static int
opt_allow_private(struct sbx_daemon_config *c, const char *v)
{
    _cleanup_free_ char *copy = strdup(v);
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        struct sbx_ip4_range r;
        bool inside = false;
        if (!sbx_ip4_parse_cidr(item, &r, NULL) || c->n_opened == SBX_NET_MAX_OPENED)
            return -1;
        for (size_t i = 0; i < sbx_ip4_n_openable; i++)
            inside |= r.first >= sbx_ip4_openable[i].first && r.last <= sbx_ip4_openable[i].last;
        if (!inside) {
            fprintf(stderr,
                    "sbx serve: --allow-private %s: only parts of 10.0.0.0/8, 100.64.0.0/10, "
                    "172.16.0.0/12 and 192.168.0.0/16 can be opened\n",
                    item);
            return -1;
        }
        c->opened[c->n_opened++] = r;
    }
    return 0;
}

static int
opt_domain(struct sbx_daemon_config *c, const char *v)
{
    /* A host name, with a port if not the default one: it ends up in Host headers. */
    for (const char *p = v; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr(".-:", *p))
            return -1;
    if (*v == '\0' || strlen(v) > 200)
        return -1;
    return set_string(&c->domain, v);
}

static int
opt_tls_cert(struct sbx_daemon_config *c, const char *v)
{
    return *v == '\0' ? -1 : set_string(&c->tls_cert, v);
}

static int
opt_tls_key(struct sbx_daemon_config *c, const char *v)
{
    return *v == '\0' ? -1 : set_string(&c->tls_key, v);
}

/* Pools add up: a later entry for a template replaces an earlier one (defaults, the file, the
 * environment, then each --pool in order). */
static int
opt_pool(struct sbx_daemon_config *c, const char *v)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    if (sbx_pool_configure(v, &err) < 0) {
        fprintf(stderr, "sbx serve: %s\n", err->msg);
        return -1;
    }
    char *joined = NULL;
    if (asprintf(&joined, "%s%s%s", c->pools ? c->pools : "", c->pools ? "," : "", v) < 0)
        return -1;
    free(c->pools);
    c->pools = joined;
    return 0;
}

static int
opt_pool_memory(struct sbx_daemon_config *c, const char *v)
{
    return parse_positive(v, &c->pool_memory_mb);
}

/* The one table: flag (--name) and key of the config file, variable, the value's name in the
 * usage, its default (NULL: none, or derived at start), and its help. */
static const struct option_def {
    const char *name;
    const char *env;
    const char *arg;
    const char *def;
    int (*apply)(struct sbx_daemon_config *c, const char *v);
    const char *help;
} options[] = {
    {"listen", "SBX_LISTEN", "HOST:PORT", SBX_DEFAULT_LISTEN, opt_listen,
     "address of the API and sandbox traffic"},
    {"metrics-listen", "SBX_METRICS_LISTEN", "HOST:PORT", NULL, opt_metrics_listen,
     "serve GET /metrics there too, without an API key (on the main\n"
     "address it needs an admin key)"},
    {"state-dir", "SBX_STATE_DIR", "DIR", SBX_DEFAULT_STATE_DIR, opt_state_dir,
     "database, API key, layers, sandbox dirs"},
    {"layer-cache", "SBX_LAYER_CACHE", "DIR", SBX_DEFAULT_LAYER_CACHE, opt_layer_cache,
     "where scripts/templates.sh built the built-in templates' layers"},
    {"api-key", "SBX_API_KEY", "KEY", NULL, opt_api_key,
     "accept this API key; by default one is generated on first start\n"
     "and kept in the state dir"},
    {"memory-mb", "SBX_MEMORY_MB", "N", STR(SBX_DEFAULT_MEMORY_MB), opt_memory,
     "memory limit of each sandbox"},
    {"pids-max", "SBX_PIDS_MAX", "N", STR(SBX_DEFAULT_PIDS_MAX), opt_pids,
     "process limit of each sandbox"},
    {"cpus", "SBX_CPUS", "N", STR(SBX_DEFAULT_CPU_COUNT), opt_cpus,
     "CPUs of each sandbox, as a quota"},
    {"disk-mb", "SBX_DISK_MB", "N", STR(SBX_DEFAULT_DISK_MB), opt_disk,
     "disk limit of each sandbox, at least " STR(SBX_MIN_DISK_MB)},
    {"header-timeout", "SBX_HEADER_TIMEOUT", "S", STR(SBX_DEFAULT_HEADER_TIMEOUT_S),
     opt_header_timeout, "seconds for a request head"},
    {"idle-timeout", "SBX_IDLE_TIMEOUT", "S", STR(SBX_DEFAULT_IDLE_TIMEOUT_S), opt_idle_timeout,
     "seconds to keep an idle connection, at most " STR(
         SBX_ANON_IDLE_TIMEOUT_S) "\n"
                                  "until it carried an authenticated request"},
    {"max-connections", "SBX_MAX_CONNECTIONS", "N", NULL, opt_max_conns,
     "client connections held at once, evicting idle and\n"
     "unauthenticated ones first (derived from the open-file limit)"},
    {"sandbox-profile", "SBX_SANDBOX_PROFILE", "P", "default", opt_profile,
     "default, or relaxed: sandbox root keeps NET_ADMIN and\n"
     "SYS_ADMIN and may create namespaces"},
    {"user", "SBX_USER", "NAME", SBX_DEFAULT_USER, opt_user,
     "the front end's user, created if missing"},
    {"pool", "SBX_POOL", "TEMPLATE=N", SBX_DEFAULT_POOLS, opt_pool,
     "keep N sandboxes of TEMPLATE started, to hand out at create;\n"
     "comma-separated, and --pool is repeatable"},
    {"pool-memory-mb", "SBX_POOL_MEMORY_MB", "N", STR(SBX_DEFAULT_POOL_MEMORY_MB), opt_pool_memory,
     "memory the pools may hold together"},
    {"max-builds", "SBX_MAX_BUILDS", "N", STR(SBX_DEFAULT_MAX_BUILDS), opt_max_builds,
     "template builds running at once, at most " STR(SBX_MAX_BUILDS)},
    {"build-step-timeout", "SBX_BUILD_STEP_TIMEOUT", "S", STR(SBX_DEFAULT_BUILD_STEP_TIMEOUT_S),
     opt_build_step_timeout, "seconds a template build step may run"},
    {"build-disk-mb", "SBX_BUILD_DISK_MB", "N", STR(SBX_DEFAULT_BUILD_DISK_MB), opt_build_disk,
     "disk each template build step writes into (what one step adds\n"
     "to a template), at least " STR(SBX_MIN_DISK_MB)},
    {"paused-retention", "SBX_PAUSED_RETENTION", "D", "30d", opt_paused_retention,
     "how long a paused sandbox is kept before it is deleted:\n"
     "N followed by s, m, h or d"},
    {"volume-mb", "SBX_VOLUME_MB", "N", STR(SBX_DEFAULT_VOLUME_MB), opt_volume,
     "size of each new volume, at least " STR(SBX_MIN_DISK_MB)},
    {"domain", "SBX_DOMAIN", "D", NULL, opt_domain,
     "sandbox ports are reached as <port>-<id>.D, which must resolve\n"
     "to this server (default localhost:<port>)"},
    {"tls-cert", "SBX_TLS_CERT", "FILE", NULL, opt_tls_cert,
     "serve TLS too (https and http on the one port) with this PEM\n"
     "certificate (chain), e.g. for *.D and D; needs --tls-key"},
    {"tls-key", "SBX_TLS_KEY", "FILE", NULL, opt_tls_key, "the PEM key of --tls-cert"},
    {"network-cidr", "SBX_NETWORK_CIDR", "CIDR", NULL, opt_network_cidr,
     "the sandboxes' private network, at least a /" STR(
         SBX_NETPLAN_MAX_PREFIX) ", or off for\n"
                                 "loopback only (default 10.<200 + uid block>.0.0/16)"},
    {"allow-private", "SBX_ALLOW_PRIVATE", "CIDR", NULL, opt_allow_private,
     "a private range sandboxes may reach after all; comma-separated,\n"
     "and --allow-private is repeatable"},
    {"log-level", "SBX_LOG_LEVEL", "LEVEL", "info", opt_log_level, "debug, info, warn or error"},
    {"log-format", "SBX_LOG_FORMAT", "FORMAT", "logfmt", opt_log_format,
     "logfmt (key=value) or json: one object per line"},
    {"log-retention-hours", "SBX_LOG_RETENTION_HOURS", "H", STR(SBX_DEFAULT_LOG_RETENTION_H),
     opt_log_retention, "keep a sandbox's log this long after it ends"},
    {"log-store-mb", "SBX_LOG_STORE_MB", "N", STR(SBX_DEFAULT_LOG_STORE_MB), opt_log_store,
     "... and the logs of ended sandboxes within this much in all"},
};
#define N_OPTIONS ((int)(sizeof(options) / sizeof(options[0])))

/* Not in the table: they steer parsing rather than configure the daemon. */
enum { OPT_HELP = 'h', OPT_VERSION = 'V', OPT_CONFIG = 0x80, OPT_CHECK, OPT_TABLE = 0x100 };

static void
usage(FILE *f)
{
    fputs("usage: sbx serve [options]\n\n"
          "Each option is also a key of the config file and an environment variable; flags win\n"
          "over variables, which win over the file.\n\n",
          f);
    for (int i = 0; i < N_OPTIONS; i++) {
        char flag[48];
        snprintf(flag, sizeof(flag), "--%s %s", options[i].name, options[i].arg);
        fprintf(f, "  %-22s ", flag);
        for (const char *p = options[i].help; *p; p++) {
            fputc(*p, f);
            if (*p == '\n')
                fprintf(f, "%25s", "");
        }
        if (options[i].def)
            fprintf(f, " (%s)", options[i].def);
        fprintf(f, "; %s\n", options[i].env);
    }
    fputs("  --config FILE          the config file (" SBX_DEFAULT_CONFIG
          ", if it exists); SBX_CONFIG\n"
          "  --check-config         check the configuration, print it and exit\n"
          "  --version              print the version and exit\n"
          "  --help                 this text\n",
          f);
}

static const struct option_def *
find_option(const char *name)
{
    for (int i = 0; i < N_OPTIONS; i++)
        if (strcmp(options[i].name, name) == 0)
            return &options[i];
    return NULL;
}

/* Each option's value as given and where it came from, for --check-config. */
struct given {
    char *value[N_OPTIONS];
    char origin[N_OPTIONS][128];
};

static void
given_fini(struct given *g)
{
    for (int i = 0; i < N_OPTIONS; i++)
        free(g->value[i]);
}

/* Applies v to option i and records it; -1 if the value is invalid. */
static int
apply(struct sbx_daemon_config *c, struct given *g, int i, const char *v, const char *origin)
{
    if (options[i].apply(c, v) < 0)
        return -1;
    free(g->value[i]);
    /* Pools add up (see opt_pool): shown as the sum of what was given. */
    g->value[i] = strdup(options[i].apply == opt_pool ? c->pools : v);
    snprintf(g->origin[i], sizeof(g->origin[i]), "%s", origin);
    return 0;
}

static char *
trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* One line of the file: blank, a comment, or `key = value` (value optionally in double
 * quotes, which keep leading and trailing spaces). Errors name the line and the key. */
static int
apply_line(struct sbx_daemon_config *c, struct given *g, const char *path, int lineno, char *line,
           bool seen[N_OPTIONS])
{
    char *s = trim(line);
    if (*s == '\0' || *s == '#')
        return 0;
    char *eq = strchr(s, '=');
    if (eq == NULL) {
        fprintf(stderr, "sbx serve: %s:%d: expected 'key = value', got '%s'\n", path, lineno, s);
        return -1;
    }
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    size_t vlen = strlen(value);
    if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
        value[vlen - 1] = '\0';
        value++;
    }
    const struct option_def *o = find_option(key);
    if (o == NULL) {
        char alt[64];
        snprintf(alt, sizeof(alt), "%s", key);
        for (char *p = alt; *p; p++)
            if (*p == '_')
                *p = '-';
        const struct option_def *hint = find_option(alt);
        fprintf(stderr, "sbx serve: %s:%d: unknown key '%s'%s%s%s (see sbx serve --help)\n", path,
                lineno, key, hint ? " (did you mean '" : "", hint ? hint->name : "",
                hint ? "'?)" : "");
        return -1;
    }
    int i = (int)(o - options);
    if (seen[i]) {
        fprintf(stderr, "sbx serve: %s:%d: key '%s' given twice\n", path, lineno, key);
        return -1;
    }
    seen[i] = true;
    char origin[128];
    snprintf(origin, sizeof(origin), "%s:%d", path, lineno);
    if (apply(c, g, i, value, origin) < 0) {
        fprintf(stderr, "sbx serve: %s:%d: invalid value '%s' for key '%s'\n", path, lineno, value,
                key);
        return -1;
    }
    return 0;
}

/* Reads the config file; a missing file is an error only when it was named (required). */
static int
read_file(struct sbx_daemon_config *c, struct given *g, const char *path, bool required)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        if (errno == ENOENT && !required)
            return 0;
        fprintf(stderr, "sbx serve: cannot read the config file %s: %s\n", path, strerror(errno));
        return -1;
    }
    bool seen[N_OPTIONS] = {false};
    char line[SBX_CONFIG_LINE_MAX];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            fprintf(stderr, "sbx serve: %s:%d: line longer than %d bytes\n", path, lineno,
                    SBX_CONFIG_LINE_MAX - 2);
            rc = -1;
            break;
        }
        rc = apply_line(c, g, path, lineno, line, seen);
    }
    fclose(f);
    return rc;
}

/* The config file's path: --config (either form) or SBX_CONFIG, else the default. */
static const char *
config_path(int argc, char **argv, bool *named)
{
    const char *path = getenv("SBX_CONFIG");
    *named = path && *path;
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            path = argv[++i];
            *named = true;
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
            *named = true;
        }
    }
    return *named ? path : SBX_DEFAULT_CONFIG;
}

/* --check-config: the effective configuration, in the file's own syntax. */
static void
print_effective(const struct given *g, const char *path, bool file_read)
{
    printf("# sbx %s: configuration OK; file %s%s\n", sbx_version(), path,
           file_read ? "" : " (absent)");
    for (int i = 0; i < N_OPTIONS; i++) {
        if (g->value[i] == NULL) {
            printf("# %s: not set\n", options[i].name);
            continue;
        }
        /* The API key is a secret: shown only as set. */
        const char *v = options[i].apply == opt_api_key ? "(set)" : g->value[i];
        int pad = 30 - (int)(strlen(options[i].name) + strlen(v));
        printf("%s = %s%*s# %s\n", options[i].name, v, pad > 1 ? pad : 1, "", g->origin[i]);
    }
}

int
sbx_daemon_config_parse(int argc, char **argv, struct sbx_daemon_config *c)
{
    struct given g = {0};
    int rc = 2;
    for (int i = 0; i < N_OPTIONS; i++)
        if (options[i].def && apply(c, &g, i, options[i].def, "default") < 0)
            abort(); /* the table's own default is wrong */
    bool named;
    const char *path = config_path(argc, argv, &named);
    bool file_read = access(path, F_OK) == 0;
    if (read_file(c, &g, path, named) < 0)
        goto out;
    for (int i = 0; i < N_OPTIONS; i++) {
        const char *v = getenv(options[i].env);
        if (v && *v && apply(c, &g, i, v, options[i].env) < 0) {
            fprintf(stderr, "sbx serve: invalid %s='%s'\n", options[i].env, v);
            goto out;
        }
    }
    struct option longs[N_OPTIONS + 5];
    for (int i = 0; i < N_OPTIONS; i++)
        longs[i] = (struct option){options[i].name, required_argument, NULL, OPT_TABLE + i};
    longs[N_OPTIONS] = (struct option){"help", no_argument, NULL, OPT_HELP};
    longs[N_OPTIONS + 1] = (struct option){"version", no_argument, NULL, OPT_VERSION};
    longs[N_OPTIONS + 2] = (struct option){"config", required_argument, NULL, OPT_CONFIG};
    longs[N_OPTIONS + 3] = (struct option){"check-config", no_argument, NULL, OPT_CHECK};
    longs[N_OPTIONS + 4] = (struct option){NULL, 0, NULL, 0};
    bool check = false;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        if (opt == OPT_HELP || opt == OPT_VERSION) {
            if (opt == OPT_HELP)
                usage(stdout);
            else
                printf("sbx %s\n", sbx_version());
            rc = 0;
            goto out;
        }
        if (opt == OPT_CONFIG) /* read above */
            continue;
        if (opt == OPT_CHECK) {
            check = true;
            continue;
        }
        int i = opt - OPT_TABLE;
        char origin[48];
        snprintf(origin, sizeof(origin), "--%s", i >= 0 ? options[i].name : "");
        if (i < 0 || apply(c, &g, i, optarg, origin) < 0) {
            if (i >= 0)
                fprintf(stderr, "sbx serve: invalid value '%s' for --%s\n", optarg,
                        options[i].name);
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sbx serve: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    if (check) {
        print_effective(&g, path, file_read);
        rc = 0;
        goto out;
    }
    rc = -1; /* go on */
out:
    given_fini(&g);
    return rc;
}
