/* `sbx serve`, the supervisor: configuration, the privileged start-up (host checks, state
 * dir, the front end's user, API key, host uid block, the listening socket), then the two
 * processes that do the work, restarted when they die: the spawner (root) and the front end
 * (its own user, no capabilities). SIGTERM stops both and leaves sandboxes running. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/fdpass.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/daemon.h"
#include "daemon/internal.h"
#include "http/tls.h"
#include "spawner/spawner.h"

static int
mkdir_owned(const char *path, mode_t mode, uid_t uid, gid_t gid, struct sbx_error **err)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", path);
    struct stat st;
    if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode))
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, ENOTDIR, "%s is not a directory", path);
    if (lchown(path, uid, gid) < 0 || chmod(path, mode) < 0)
        return sbx_error_sys(err, errno, "set owner and mode of %s", path);
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

/* Makes key a valid admin key named name unless the store knows it: a revoked key is never
 * accepted again (returns 1 then), whoever gives it back. */
static int
adopt_key(struct sbx_store *store, const char *key, const char *name, struct sbx_error **err)
{
    struct sbx_api_key k;
    _cleanup_error_ struct sbx_error *find_err = NULL;
    if (sbx_store_api_key_find(store, key, &k, &find_err) == 0) {
        free(k.name);
        return k.revoked_at_ms ? 1 : 0;
    }
    if (find_err->code != SBX_NOT_FOUND) {
        *err = steal_pointer(&find_err);
        return -1;
    }
    return sbx_store_api_key_add(store, key, name, true, NULL, err);
}

static int
write_key_file(const char *path, const char *key, struct sbx_error **err)
{
    _cleanup_close_ int fd =
        open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return sbx_error_sys(err, errno, "create %s", path);
    size_t len = strlen(key);
    if (write(fd, key, len) != (ssize_t)len || write(fd, "\n", 1) != 1)
        return sbx_error_sys(err, errno, "write %s", path);
    return 0;
}

/* The key shown in the export lines ("" for none): the one of --api-key (a named admin key,
 * "config-<last 4>"), else the one in <state>/api_key, generated on the very first start only
 * (named "initial"). A revoked --api-key stops the start; a revoked generated key is removed
 * from the state dir and nothing replaces it: the operator revoked it on purpose. */
static int
ensure_api_key(const struct sbx_daemon_config *cfg, struct sbx_store *store, char **shown,
               struct sbx_error **err)
{
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/api_key", cfg->state_dir) < 0)
        abort();
    if (cfg->api_key) {
        size_t len = strlen(cfg->api_key);
        char name[32];
        snprintf(name, sizeof(name), "config-%s", cfg->api_key + (len > 4 ? len - 4 : 0));
        int rc = adopt_key(store, cfg->api_key, name, err);
        if (rc > 0)
            return sbx_error_set(err, SBX_PERMISSION_DENIED, 0,
                                 "the API key given with --api-key (or SBX_API_KEY, or api-key in "
                                 "the config file) has been revoked; remove it from the "
                                 "configuration");
        *shown = rc < 0 ? NULL : strdup(cfg->api_key);
        return rc;
    }
    char buf[SBX_STORE_API_KEY_MAX + 2] = {0};
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    int64_t ever = sbx_store_api_key_count(store, err);
    if (ever < 0)
        return -1;
    if (n <= 0 && ever > 0) {
        *shown = strdup(""); /* keys exist, none of them ours to show */
        return 0;
    }
    if (n <= 0) {
        char hex[41];
        sbx_random_hex(hex, 20);
        snprintf(buf, sizeof(buf), "e2b_%s", hex);
        if (write_key_file(path, buf, err) < 0)
            return -1;
    }
    int rc = adopt_key(store, buf, "initial", err);
    if (rc > 0) {
        unlink(path);
        sbx_log_warn("api_key", "file=%s action=removed reason=\"the key was revoked\"", path);
    }
    *shown = rc == 0 ? strdup(buf) : rc > 0 ? strdup("") : NULL;
    explicit_bzero(buf, sizeof(buf));
    return rc < 0 ? -1 : 0;
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
set_max_conns(struct sbx_daemon_config *cfg, rlim_t nofile)
{
    int fit = default_max_conns(nofile);
    if (cfg->max_conns == 0)
        cfg->max_conns = fit;
    else if (cfg->max_conns > fit)
        sbx_log_warn("config",
                     "max_connections=%d leaves too few of the %llu open files for sandboxes "
                     "and proxied requests; at most %d is safe",
                     cfg->max_conns, (unsigned long long)nofile, fit);
}

/* Takes this daemon's host uid block (see sbx_uid_block_claim): the one recorded in the
 * state dir while its sandboxes use it, else a free one, recorded. A sandbox paused to its
 * disk uses it too, with no process: its files there belong to the block's uids, and it
 * boots again only on them. */
static int
claim_uid_block(struct sbx_store *store, int *lock_fd, uid_t *uid_base, int *block_out,
                struct sbx_error **err)
{
    _cleanup_free_ char *saved = NULL;
    if (sbx_store_setting_get(store, "uid_block", &saved, err) < 0)
        return -1;
    int preferred = saved ? atoi(saved) : -1;
    _cleanup_sandbox_list_ struct sbx_sandbox_list *all = NULL;
    if (sbx_store_sandbox_list_all(store, &all, err) < 0)
        return -1;
    bool in_use = false;
    for (size_t i = 0; i < all->n; i++) {
        const struct sbx_sandbox_rec *r = all->items[i];
        struct sbx_sandbox_ref ref = {.id = r->id, .pid = r->pid, .start_time = r->pid_start_time};
        in_use |= strcmp(r->state, "paused") == 0 || sbx_sandbox_is_alive(&ref);
    }
    int block = -1;
    *lock_fd = sbx_uid_block_claim(preferred, in_use, &block, err);
    if (*lock_fd < 0)
        return -1;
    if (block != preferred) {
        char v[16];
        snprintf(v, sizeof(v), "%d", block);
        if (sbx_store_setting_set(store, "uid_block", v, err) < 0)
            return -1;
    }
    *uid_base = sbx_uid_block_base(block);
    *block_out = block;
    return 0;
}

/* The sandbox network of this daemon, named and addressed after its uid block (so that the
 * daemons of one host never share either), checked against the host's routes before the
 * spawner builds it. */
static int
plan_network(struct sbx_daemon_config *cfg, int block, struct sbx_error **err)
{
    char derived[32];
    const char *cidr = cfg->network_cidr;
    if (cidr && strcmp(cidr, "off") == 0)
        return 0;
    if (cidr == NULL) {
        snprintf(derived, sizeof(derived), "10.%d.0.0/16", 200 + block);
        cidr = derived;
    }
    struct sbx_netplan plan;
    if (!sbx_netplan_parse(cidr, &plan))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad --network-cidr %s", cidr);
    if (sbx_net_config_init(&cfg->net, &plan, block, cfg->opened, cfg->n_opened, err) < 0 ||
        sbx_net_check_host(&cfg->net, err) < 0)
        return -1;
    cfg->net_on = true;
    return 0;
}

/* One daemon per state dir: two would each think its sandboxes are theirs. The lock is held
 * by the supervisor until it exits (the fd is never closed). */
static int
lock_state_dir(const char *state, struct sbx_error **err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/lock", state);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return sbx_error_sys(err, errno, "open %s", path);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                                 "another sbx daemon is running on the state dir %s", state);
        return sbx_error_sys(err, e, "lock %s", path);
    }
    return fd;
}

/* The front end's user: looked up, or created as a system user with no login and no home. */
static int
ensure_user(const char *name, uid_t *uid, gid_t *gid, struct sbx_error **err)
{
    struct passwd *pw = getpwnam(name);
    if (pw == NULL) {
        pid_t pid = fork();
        if (pid == 0) {
            execlp("useradd", "useradd", "--system", "--user-group", "--no-create-home",
                   "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name,
                   (char *)NULL);
            _exit(127);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                                 "cannot create the user '%s' the front end runs as (useradd "
                                 "failed); create it, or name another with --user",
                                 name);
        sbx_log_info("start", "created_user=%s", name);
        pw = getpwnam(name);
    }
    if (pw == NULL || pw->pw_uid == 0)
        return sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                             "user '%s' is missing or is root: the front end must not be root",
                             name);
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

/* <state>/db holds the database, owned by the front end; a database of an sbx from before the
 * privilege split (in <state> itself) moves there. */
static int
prepare_db_dir(const char *state, uid_t uid, gid_t gid, char **db_path, struct sbx_error **err)
{
    _cleanup_free_ char *dir = NULL;
    if (asprintf(&dir, "%s/db", state) < 0 || asprintf(db_path, "%s/sbx.db", dir) < 0)
        abort();
    if (mkdir_owned(dir, 0700, uid, gid, err) < 0)
        return -1;
    static const char *const files[] = {"sbx.db", "sbx.db-wal", "sbx.db-shm"};
    for (size_t i = 0; i < 3; i++) {
        char old[4096], now[4096];
        snprintf(old, sizeof(old), "%s/%s", state, files[i]);
        snprintf(now, sizeof(now), "%s/%s", dir, files[i]);
        if (rename(old, now) < 0 && errno != ENOENT)
            return sbx_error_sys(err, errno, "move %s to %s", old, now);
    }
    return 0;
}

static int
chown_db(const char *db_path, uid_t uid, gid_t gid, struct sbx_error **err)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[4096];
        snprintf(p, sizeof(p), "%s%s", db_path, suffixes[i]);
        if (lchown(p, uid, gid) < 0 && errno != ENOENT)
            return sbx_error_sys(err, errno, "chown %s", p);
    }
    return 0;
}

/* The listening socket, bound while we are root (a port below 1024 needs it) and handed to
 * every front end, so that a restarted one serves the same socket and no connection waiting
 * in its backlog is lost. */
static int
listen_tcp(const char *host, int port, struct sbx_error **err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "listen address %s: %s", host,
                             gai_strerror(rc));
    _cleanup_close_ int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SBX_LISTEN_BACKLOG) < 0) {
        int e = errno;
        freeaddrinfo(ai);
        return sbx_error_sys(err, e, "listen on %s:%d", host, port);
    }
    freeaddrinfo(ai);
    return steal_fd(&fd);
}

/* ---- the two workers ---- */

struct worker {
    const char *name;
    pid_t pid;
    int64_t started_ms;
};

static struct {
    struct sbx_daemon_config *cfg;
    struct sbx_spawner_config spawner;
    uid_t fe_uid;
    gid_t fe_gid;
    int listen_fd;
    int metrics_fd;    /* --metrics-listen, -1 without */
    int control;       /* our end of the socketpair with the front end */
    int state_lock_fd; /* held while we run; never in a worker (flock(LOCK_UN) on a shared
                        * fd would release it for us too) */
    char *shown_key;
    sigset_t blocked;
    struct worker spawner_w, frontend_w;
    bool stopping;
    bool announced; /* the first front end printed the export lines */
    int fast_failures;
} sv;

/* In a freshly forked worker: die with the supervisor, undo its signal mask. */
static void
worker_setup(const char *name)
{
    close(sv.state_lock_fd);
    prctl(PR_SET_NAME, name);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(1); /* the supervisor died before we could follow it */
    sigprocmask(SIG_UNBLOCK, &sv.blocked, NULL);
}

/* The spawner, with its end of a new channel; *frontend_end gets the other. Waits until it
 * is ready (template prepared), so a broken host fails at start, loudly. */
static int
start_spawner(int *frontend_end, struct sbx_error **err)
{
    int ch[2], ready[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ch) < 0 ||
        pipe2(ready, O_CLOEXEC) < 0)
        return sbx_error_sys(err, errno, "socketpair");
    pid_t pid = fork();
    if (pid < 0)
        return sbx_error_sys(err, errno, "fork the spawner");
    if (pid == 0) {
        worker_setup("sbx-spawner");
        close(ch[0]);
        close(ready[0]);
        close(sv.control);
        close(sv.listen_fd);
        if (sv.metrics_fd >= 0)
            close(sv.metrics_fd);
        sv.spawner.ready_fd = ready[1];
        _exit(sbx_spawner_main(&sv.spawner, ch[1]));
    }
    close(ch[1]);
    close(ready[1]);
    char c;
    ssize_t n;
    do
        n = read(ready[0], &c, 1);
    while (n < 0 && errno == EINTR);
    close(ready[0]);
    if (n != 1) {
        close(ch[0]);
        waitpid(pid, NULL, 0);
        return sbx_error_set(err, SBX_INTERNAL, 0, "the spawner could not start (see its log)");
    }
    sv.spawner_w = (struct worker){"spawner", pid, sbx_now_ms()};
    *frontend_end = ch[0];
    return 0;
}

/* No way back to root: an empty bounding set, the front end's ids, no_new_privs. Checked. */
static void
drop_privileges(void)
{
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            _exit(1);
    if (setgroups(0, NULL) < 0 || setresgid(sv.fe_gid, sv.fe_gid, sv.fe_gid) < 0 ||
        setresuid(sv.fe_uid, sv.fe_uid, sv.fe_uid) < 0 ||
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        _exit(1);
    if (setuid(0) == 0 || geteuid() == 0)
        _exit(1);
}

static int
start_frontend(int channel, struct sbx_error **err)
{
    int ctl[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) < 0)
        return sbx_error_sys(err, errno, "socketpair");
    pid_t pid = fork();
    if (pid < 0)
        return sbx_error_sys(err, errno, "fork the front end");
    if (pid == 0) {
        close(ctl[0]);
        if (sv.control >= 0)
            close(sv.control);
        close(sv.spawner.lock_fd);
        drop_privileges();
        worker_setup("sbx-frontend"); /* after: a change of ids clears the death signal */
        _exit(sbx_frontend_main(sv.cfg, sv.listen_fd, sv.metrics_fd, ctl[1], channel,
                                sv.announced ? NULL : sv.shown_key));
    }
    sv.announced = true;
    close(ctl[1]);
    close(channel);
    if (sv.control >= 0)
        close(sv.control);
    sv.control = ctl[0];
    sv.frontend_w = (struct worker){"front end", pid, sbx_now_ms()};
    return 0;
}

static int
start_workers(struct sbx_error **err)
{
    int channel;
    if (start_spawner(&channel, err) < 0)
        return -1;
    return start_frontend(channel, err);
}

/* The spawner died while the front end runs: a new one, its channel passed to the front end,
 * which answers what the old one had in flight as failed and sends what waited. */
static void
restart_spawner(void)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    int channel;
    if (start_spawner(&channel, &err) < 0) {
        sbx_log_error("supervisor", "error=\"%s\" action=stop", err->msg);
        kill(sv.frontend_w.pid, SIGTERM);
        sv.stopping = true;
        return;
    }
    char c = 'S';
    if (sbx_send_fds(sv.control, &c, 1, &channel, 1) < 0)
        sbx_log_error("supervisor", "error=\"pass the new spawner: %s\"", strerror(errno));
    close(channel);
}

static const char *
describe(int st, char *buf, size_t n)
{
    if (WIFSIGNALED(st))
        snprintf(buf, n, "signal %d", WTERMSIG(st));
    else
        snprintf(buf, n, "status %d", WEXITSTATUS(st));
    return buf;
}

/* Waits for children until both workers are gone for good; returns the exit status. */
static int
supervise(void)
{
    int sfd = signalfd(-1, &sv.blocked, SFD_CLOEXEC);
    if (sfd < 0)
        return 1;
    int rc = 0;
    for (;;) {
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof(si)) != (ssize_t)sizeof(si))
            continue;
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            sbx_log_info("shutdown", "signal=%u sandboxes_left_running=yes", si.ssi_signo);
            sv.stopping = true;
            if (sv.frontend_w.pid > 0)
                kill(sv.frontend_w.pid, SIGTERM);
            continue;
        }
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
            char why[32];
            if (pid == sv.spawner_w.pid) {
                sv.spawner_w.pid = 0;
                if (sv.stopping || sv.frontend_w.pid == 0)
                    continue;
                sbx_log_error("supervisor", "worker=spawner exit=\"%s\" action=restart",
                              describe(st, why, sizeof(why)));
                restart_spawner();
            } else if (pid == sv.frontend_w.pid) {
                sv.frontend_w.pid = 0;
                if (sv.stopping) {
                    rc = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
                    if (rc != 0)
                        sbx_log_error("supervisor", "worker=frontend exit=\"%s\" action=stop",
                                      describe(st, why, sizeof(why)));
                    continue;
                }
                /* Its spawner sees the channel close and exits; both start again. */
                bool fast = sbx_now_ms() - sv.frontend_w.started_ms < 2000;
                sv.fast_failures = fast ? sv.fast_failures + 1 : 0;
                sbx_log_error("supervisor", "worker=frontend exit=\"%s\" action=%s",
                              describe(st, why, sizeof(why)),
                              sv.fast_failures > 3 ? "stop" : "restart");
                if (sv.fast_failures > 3) {
                    sv.stopping = true;
                    rc = 1;
                    continue;
                }
                if (sv.spawner_w.pid > 0 && waitpid(sv.spawner_w.pid, NULL, 0) > 0)
                    sv.spawner_w.pid = 0;
                _cleanup_error_ struct sbx_error *err = NULL;
                if (start_workers(&err) < 0) {
                    sbx_log_error("supervisor", "error=\"%s\" action=stop", err->msg);
                    sv.stopping = true;
                    rc = 1;
                }
            }
        }
        if (sv.stopping && sv.frontend_w.pid == 0 && sv.spawner_w.pid == 0)
            return rc;
        if (sv.stopping && sv.frontend_w.pid == 0 && sv.spawner_w.pid > 0)
            kill(sv.spawner_w.pid, SIGTERM);
    }
}

/* A quota of more CPUs than sandboxes can run on would be reported as their cpuCount and never
 * be theirs: nproc and /proc/cpuinfo inside show the CPUs there are. Sandboxes inherit the
 * supervisor's CPUs (through the spawner). */
static int
check_cpus(const struct sbx_daemon_config *cfg, struct sbx_error **err)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) < 0)
        return sbx_error_sys(err, errno, "sched_getaffinity");
    int have = CPU_COUNT(&set);
    if (cfg->cpu_millis > have * 1000)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "--cpus %d: sandboxes can run on %d CPU%s here, so at most --cpus %d",
                             cfg->cpu_millis / 1000, have, have == 1 ? "" : "s", have);
    return 0;
}

/* The certificate and key, read here as root so that the front end never opens them, and
 * checked at once. */
static int
read_tls(struct sbx_daemon_config *cfg, struct sbx_error **err)
{
    if (!cfg->tls_cert && !cfg->tls_key)
        return 0;
    if (!cfg->tls_cert || !cfg->tls_key)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "--tls-cert and --tls-key go together");
    const char *files[2] = {cfg->tls_cert, cfg->tls_key};
    char *pem[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(files[i], "re");
        size_t n = 0;
        if (f == NULL || getdelim(&pem[i], &n, '\0', f) < 0) {
            int e = errno;
            if (f)
                fclose(f);
            free(pem[0]);
            return sbx_error_sys(err, e ? e : EINVAL, "read %s", files[i]);
        }
        fclose(f);
    }
    char *key_copy = strdup(pem[1]);
    struct sbx_tls *t = sbx_tls_new(pem[0], key_copy, err);
    sbx_secret_free(key_copy);
    if (t == NULL) {
        free(pem[0]);
        sbx_secret_free(pem[1]);
        return sbx_error_prefix(err, "--tls-cert %s, --tls-key %s", cfg->tls_cert, cfg->tls_key);
    }
    sbx_tls_free(t);
    cfg->tls_cert_pem = pem[0];
    cfg->tls_key_pem = pem[1];
    return 0;
}

/* Everything that needs root before the workers start. */
static int
prepare(struct sbx_daemon_config *cfg, struct sbx_error **err)
{
    if (geteuid() != 0)
        return sbx_error_set(err, SBX_PERMISSION_DENIED, 0,
                             "sbx serve must run as root (it creates namespaces and cgroups)");
    char host_desc[128];
    if (sbx_sandbox_preflight(host_desc, sizeof(host_desc), err) < 0)
        return sbx_error_prefix(err, "this host cannot run sandboxes");
    if (check_cpus(cfg, err) < 0)
        return -1;
    char raised[256];
    _cleanup_error_ struct sbx_error *limits_err = NULL;
    if (sbx_sandbox_raise_host_limits(raised, sizeof(raised), &limits_err) < 0)
        sbx_log_warn("host_limits", "error=\"%s\"", limits_err->msg);
    else if (raised[0])
        sbx_log_info("host_limits", "raised=\"%s\"", raised);
    /* Every sandbox holds a pidfd in the front end and every request in flight one or two
     * sockets; the usual soft limit of 1024 would cap the daemon far below what the machine
     * can run. The workers inherit it. */
    struct rlimit nofile = {0};
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nofile) < 0)
            getrlimit(RLIMIT_NOFILE, &nofile);
    }
    set_max_conns(cfg, nofile.rlim_cur);
    if (read_tls(cfg, err) < 0 || ensure_user(cfg->user, &sv.fe_uid, &sv.fe_gid, err) < 0)
        return -1;
    _cleanup_free_ char *sandboxes = NULL, *db = NULL;
    if (asprintf(&sandboxes, "%s/sandboxes", cfg->state_dir) < 0)
        abort();
    /* Searchable but not listable: sandbox uids must reach their own dirs below, the front
     * end its db dir and the agents' sockets, and nobody may enumerate them. */
    if (mkdir_owned(cfg->state_dir, 0711, 0, 0, err) < 0 ||
        (sv.state_lock_fd = lock_state_dir(cfg->state_dir, err)) < 0 ||
        mkdir_owned(sandboxes, 0711, 0, 0, err) < 0 || check_reachable(sandboxes, err) < 0 ||
        prepare_db_dir(cfg->state_dir, sv.fe_uid, sv.fe_gid, &db, err) < 0)
        return -1;
    struct sbx_store *store = sbx_store_open(db, err);
    if (store == NULL)
        return -1;
    int block = -1;
    int rc = ensure_api_key(cfg, store, &sv.shown_key, err) < 0 ||
                     claim_uid_block(store, &sv.spawner.lock_fd, &sv.spawner.uid_base, &block,
                                     err) < 0 ||
                     plan_network(cfg, block, err) < 0
                 ? -1
                 : 0;
    sbx_store_close(store);
    if (rc < 0 || chown_db(db, sv.fe_uid, sv.fe_gid, err) < 0)
        return -1;
    sv.listen_fd = listen_tcp(cfg->listen_host, cfg->listen_port, err);
    if (sv.listen_fd < 0)
        return -1;
    if (cfg->metrics_host &&
        (sv.metrics_fd = listen_tcp(cfg->metrics_host, cfg->metrics_port, err)) < 0)
        return sbx_error_prefix(err, "--metrics-listen");
    sbx_log_info("start",
                 "listen=%s:%d state_dir=%s memory_mb=%d pids_max=%d cpus=%d profile=%s "
                 "uid_base=%u user=%s max_connections=%d %s",
                 cfg->listen_host, cfg->listen_port, cfg->state_dir, cfg->memory_mb, cfg->pids_max,
                 cfg->cpu_millis / 1000, cfg->relaxed ? "relaxed" : "default",
                 (unsigned)sv.spawner.uid_base, cfg->user, cfg->max_conns, host_desc);
    return 0;
}

int
sbx_daemon_main(int argc, char **argv, const void *agent, size_t agent_len)
{
    static struct sbx_daemon_config cfg;
    int rc = sbx_daemon_config_parse(argc, argv, &cfg);
    if (rc >= 0)
        return rc;
    /* A client that goes away mid-write must not kill a worker. */
    signal(SIGPIPE, SIG_IGN);
    sv.cfg = &cfg;
    sv.control = -1;
    sv.state_lock_fd = -1;
    sv.metrics_fd = -1;
    sv.spawner.lock_fd = -1;
    _cleanup_error_ struct sbx_error *err = NULL;
    if (prepare(&cfg, &err) < 0) {
        fprintf(stderr, "sbx serve: %s\n", err->msg);
        return 1;
    }
    sv.spawner.state_dir = cfg.state_dir;
    sv.spawner.layer_cache = cfg.layer_cache;
    sv.spawner.frontend_uid = sv.fe_uid;
    sv.spawner.frontend_gid = sv.fe_gid;
    sv.spawner.relaxed = cfg.relaxed;
    sv.spawner.agent = agent;
    sv.spawner.agent_len = agent_len;
    sv.spawner.net = cfg.net_on ? &cfg.net : NULL;
    /* Signals come through a signalfd here; workers unblock them. */
    sigemptyset(&sv.blocked);
    sigaddset(&sv.blocked, SIGCHLD);
    sigaddset(&sv.blocked, SIGTERM);
    sigaddset(&sv.blocked, SIGINT);
    sigprocmask(SIG_BLOCK, &sv.blocked, NULL);
    /* Agents of a spawner that died come to us rather than to the host's init, which in a
     * container may never reap them; supervise() reaps whatever it is given. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if (start_workers(&err) < 0) {
        fprintf(stderr, "sbx serve: %s\n", err->msg);
        return 1;
    }
    rc = supervise();
    sbx_log_info("stopped", "status=%d", rc);
    return rc;
}
