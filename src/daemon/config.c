/* Configuration of `sbx serve`: one table of options, each a flag and an SBX_* environment
 * variable; flags win over the environment, which wins over the compiled-in defaults. Pure:
 * nothing here touches the host, only the config struct (and the log level). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/limits.h"
#include "base/log.h"
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
opt_state_dir(struct sbx_daemon_config *c, const char *v)
{
    return *v == '\0' ? -1 : set_string(&c->state_dir, v);
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

/* The one table: flag (--name), variable, the value's name in the usage, and its help. */
static const struct option_def {
    const char *name;
    const char *env;
    const char *arg;
    int (*apply)(struct sbx_daemon_config *c, const char *v);
    const char *help;
} options[] = {
    {"listen", "SBX_LISTEN", "HOST:PORT", opt_listen,
     "address of the API and sandbox traffic (" SBX_DEFAULT_LISTEN ")"},
    {"state-dir", "SBX_STATE_DIR", "DIR", opt_state_dir,
     "database, API key, template, sandbox dirs (" SBX_DEFAULT_STATE_DIR ")"},
    {"api-key", "SBX_API_KEY", "KEY", opt_api_key,
     "accept this API key; by default one is generated on first start\n"
     "and kept in the state dir"},
    {"memory-mb", "SBX_MEMORY_MB", "N", opt_memory,
     "memory limit of each sandbox (" STR(SBX_DEFAULT_MEMORY_MB) ")"},
    {"pids-max", "SBX_PIDS_MAX", "N", opt_pids,
     "process limit of each sandbox (" STR(SBX_DEFAULT_PIDS_MAX) ")"},
    {"cpus", "SBX_CPUS", "N", opt_cpus,
     "CPUs of each sandbox, as a quota (" STR(SBX_DEFAULT_CPU_COUNT) ")"},
    {"disk-mb", "SBX_DISK_MB", "N", opt_disk,
     "disk limit of each sandbox, at least " STR(SBX_MIN_DISK_MB) " (" STR(
         SBX_DEFAULT_DISK_MB) ")"},
    {"header-timeout", "SBX_HEADER_TIMEOUT", "S", opt_header_timeout,
     "seconds for a request head (" STR(SBX_DEFAULT_HEADER_TIMEOUT_S) ")"},
    {"idle-timeout", "SBX_IDLE_TIMEOUT", "S", opt_idle_timeout,
     "seconds to keep an idle connection (" STR(SBX_DEFAULT_IDLE_TIMEOUT_S) "), at most\n" STR(
         SBX_ANON_IDLE_TIMEOUT_S) " until it carried an authenticated request"},
    {"max-connections", "SBX_MAX_CONNECTIONS", "N", opt_max_conns,
     "client connections held at once, evicting idle and\n"
     "unauthenticated ones first (derived from the open-file limit)"},
    {"sandbox-profile", "SBX_SANDBOX_PROFILE", "P", opt_profile,
     "default, or relaxed: sandbox root keeps NET_ADMIN and\n"
     "SYS_ADMIN and may create namespaces"},
    {"user", "SBX_USER", "NAME", opt_user,
     "the front end's user, created if missing (" SBX_DEFAULT_USER ")"},
    {"log-level", "SBX_LOG_LEVEL", "LEVEL", opt_log_level, "debug, info, warn or error (info)"},
};
#define N_OPTIONS ((int)(sizeof(options) / sizeof(options[0])))

static void
usage(FILE *f)
{
    fputs("usage: sbx serve [options]\n\n", f);
    for (int i = 0; i < N_OPTIONS; i++) {
        char flag[48];
        snprintf(flag, sizeof(flag), "--%s %s", options[i].name, options[i].arg);
        fprintf(f, "  %-22s ", flag);
        for (const char *p = options[i].help; *p; p++) {
            fputc(*p, f);
            if (*p == '\n')
                fprintf(f, "%25s", "");
        }
        fprintf(f, "; %s\n", options[i].env);
    }
    fputs("  --help                 this text\n", f);
}

static void
set_defaults(struct sbx_daemon_config *c)
{
    c->state_dir = strdup(SBX_DEFAULT_STATE_DIR);
    c->user = strdup(SBX_DEFAULT_USER);
    c->memory_mb = SBX_DEFAULT_MEMORY_MB;
    c->pids_max = SBX_DEFAULT_PIDS_MAX;
    c->cpu_millis = SBX_DEFAULT_CPU_COUNT * 1000;
    c->disk_mb = SBX_DEFAULT_DISK_MB;
    c->header_timeout_s = SBX_DEFAULT_HEADER_TIMEOUT_S;
    c->idle_timeout_s = SBX_DEFAULT_IDLE_TIMEOUT_S;
    opt_listen(c, SBX_DEFAULT_LISTEN);
}

int
sbx_daemon_config_parse(int argc, char **argv, struct sbx_daemon_config *c)
{
    set_defaults(c);
    for (int i = 0; i < N_OPTIONS; i++) {
        const char *v = getenv(options[i].env);
        if (v && *v && options[i].apply(c, v) < 0) {
            fprintf(stderr, "sbx serve: invalid %s='%s'\n", options[i].env, v);
            return 2;
        }
    }
    struct option longs[N_OPTIONS + 2];
    for (int i = 0; i < N_OPTIONS; i++)
        longs[i] = (struct option){options[i].name, required_argument, NULL, 0x100 + i};
    longs[N_OPTIONS] = (struct option){"help", no_argument, NULL, 'h'};
    longs[N_OPTIONS + 1] = (struct option){NULL, 0, NULL, 0};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        if (opt == 'h') {
            usage(stdout);
            return 0;
        }
        if (opt == '?' || options[opt - 0x100].apply(c, optarg) < 0) {
            if (opt != '?')
                fprintf(stderr, "sbx serve: invalid value '%s' for --%s\n", optarg,
                        options[opt - 0x100].name);
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
