/* The spawner's message codec, and a real spawner process fed hostile messages by hand, as
 * a compromised front end could send them: it must answer each with an error, keep running,
 * never touch a path outside its state dir, and never act on a sandbox that is not its own.
 * The process tests need root. */
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/close_range.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/fdpass.h"
#include "harness.h"
#include "spawner/image_ref.h"
#include "spawner/layer_keys.h"
#include "spawner/msg.h"
#include "spawner/spawner.h"

/* ---- codec ---- */

static struct sbx_spawner_msg
spawn_req(const char *id, uint64_t slot)
{
    struct sbx_spawner_msg m = {.op = SBX_SPAWNER_SPAWN,
                                .seq = 7,
                                .uid_slot = slot,
                                .memory_bytes = 256 << 20,
                                .pids_max = 64,
                                .cpu_millis = 1000,
                                .disk_bytes = 64 << 20};
    snprintf(m.id, sizeof(m.id), "%s", id);
    snprintf(m.template_name, sizeof(m.template_name), "base");
    snprintf(m.layers, sizeof(m.layers), "%s", SBX_LAYER_KEY_BASE);
    return m;
}

static int
decode(const void *buf, size_t n, struct sbx_spawner_msg *out, char *why, size_t whylen)
{
    struct sbx_error *err = NULL;
    int rc = sbx_spawner_msg_decode(buf, n, out, &err);
    snprintf(why, whylen, "%s", err ? err->msg : "");
    sbx_error_free(err);
    return rc;
}

TEST(round_trip)
{
    struct sbx_spawner_msg m = spawn_req("abc123", 17), back;
    char buf[SBX_SPAWNER_MSG_MAX], why[256];
    ssize_t n = sbx_spawner_msg_encode(&m, buf, sizeof(buf));
    CHECK(n > 8);
    CHECK(decode(buf, (size_t)n, &back, why, sizeof(why)) == 0);
    CHECK(memcmp(&m, &back, sizeof(m)) == 0);
    /* A reply with counters. */
    struct sbx_spawner_msg rep;
    sbx_spawner_reply_init(&rep, &m, NULL);
    rep.pid = 1234;
    rep.start_time = 99;
    rep.has_stats = true;
    rep.stats.memory_bytes = 5;
    rep.stats.oom_kills = 0;
    n = sbx_spawner_msg_encode(&rep, buf, sizeof(buf));
    CHECK(decode(buf, (size_t)n, &back, why, sizeof(why)) == 0);
    CHECK(back.op == SBX_SPAWNER_REPLY && back.seq == 7 && back.pid == 1234 && back.has_stats &&
          back.stats.memory_bytes == 5);
    /* An error reply carries code, errno and message. */
    struct sbx_error *e = NULL;
    sbx_error_set(&e, SBX_NOT_FOUND, ENOENT, "sandbox x not found");
    sbx_spawner_reply_init(&rep, &m, e);
    sbx_error_free(e);
    n = sbx_spawner_msg_encode(&rep, buf, sizeof(buf));
    CHECK(decode(buf, (size_t)n, &back, why, sizeof(why)) == 0);
    CHECK(back.code == SBX_NOT_FOUND && back.sys_errno == ENOENT);
    CHECK_STR(back.message, "sandbox x not found");
}

/* Encodes a SPAWN, then lets edit() change the bytes; returns the decoder's error. */
static void
expect_refused(const char *what, struct sbx_spawner_msg m, void (*edit)(char *buf, ssize_t *n))
{
    char buf[SBX_SPAWNER_MSG_MAX + 64], why[256];
    ssize_t n = sbx_spawner_msg_encode(&m, buf, SBX_SPAWNER_MSG_MAX);
    CHECK(n > 0);
    if (edit)
        edit(buf, &n);
    struct sbx_spawner_msg out;
    int rc = decode(buf, (size_t)n, &out, why, sizeof(why));
    fprintf(stderr, "%s: %s\n", what, why);
    CHECK(rc < 0 && why[0] != '\0');
}

static void
truncate_last(char *buf, ssize_t *n)
{
    *n -= 3;
}
static void
bad_version(char *buf, ssize_t *n)
{
    buf[0] = 9;
}
static void
unknown_op(char *buf, ssize_t *n)
{
    buf[1] = 42;
}
static void
repeat_first_field(char *buf, ssize_t *n)
{
    size_t flen = (size_t)(uint8_t)buf[10] | (size_t)(uint8_t)buf[11] << 8;
    memcpy(buf + *n, buf + 8, 4 + flen);
    *n += (ssize_t)(4 + flen);
}
static void
unknown_tag(char *buf, ssize_t *n)
{
    buf[8] = 99;
}
static void
overlong_field(char *buf, ssize_t *n)
{
    buf[10] = (char)0xff;
    buf[11] = (char)0x7f;
}
static void
as_destroy_with_spawn_fields(char *buf, ssize_t *n)
{
    buf[1] = SBX_SPAWNER_DESTROY;
}

TEST(decoder_refuses_malformed_and_out_of_range)
{
    struct sbx_spawner_msg out;
    char why[128];
    struct sbx_spawner_msg ok = spawn_req("abc", 1);
    expect_refused("truncated", ok, truncate_last);
    expect_refused("version", ok, bad_version);
    expect_refused("op", ok, unknown_op);
    expect_refused("repeated", ok, repeat_first_field);
    expect_refused("unknown tag", ok, unknown_tag);
    expect_refused("overlong", ok, overlong_field);
    expect_refused("field of another op", ok, as_destroy_with_spawn_fields);
    struct sbx_spawner_msg m = spawn_req("../../etc", 1);
    expect_refused("path in id", m, NULL);
    m = spawn_req("ABC", 1);
    expect_refused("upper case id", m, NULL);
    m = spawn_req("a", 4096);
    expect_refused("slot", m, NULL);
    m = spawn_req("a", 1);
    m.memory_bytes = 1 << 20;
    expect_refused("memory", m, NULL);
    m = spawn_req("a", 1);
    m.disk_bytes = (64 << 20) + 1;
    expect_refused("disk", m, NULL);
    m = spawn_req("a", 1);
    snprintf(m.template_name, sizeof(m.template_name), "../x");
    expect_refused("template path", m, NULL);
    /* Layers: whole keys of lowercase hex only, since the spawner makes paths of them. */
    m = spawn_req("a", 1);
    snprintf(m.layers, sizeof(m.layers), "../../../../../../../../../../../../../../../../etc/x");
    expect_refused("layer path", m, NULL);
    m = spawn_req("a", 1);
    snprintf(m.layers, sizeof(m.layers), "%s0", SBX_LAYER_KEY_BASE);
    expect_refused("partial layer key", m, NULL);
    m = spawn_req("a", 1);
    m.layers[0] = '\0';
    expect_refused("no layers", m, NULL);
    /* A suite goes on mmdebstrap's command line: never an option. */
    struct sbx_spawner_msg deb = {.op = SBX_SPAWNER_DEBIAN_LAYER, .seq = 3};
    memset(deb.layer_key, 'd', SBX_LAYER_KEY_LEN);
    snprintf(deb.suite, sizeof(deb.suite), "--include=x");
    expect_refused("suite option", deb, NULL);
    snprintf(deb.suite, sizeof(deb.suite), "../x");
    expect_refused("suite path", deb, NULL);
    /* An image goes on skopeo's command line: never an option, a transport or a path. */
    struct sbx_spawner_msg img = {.op = SBX_SPAWNER_IMAGE_LAYER, .seq = 4, .timeout_ms = 5000};
    snprintf(img.image, sizeof(img.image), "--src-creds=x");
    expect_refused("image option", img, NULL);
    snprintf(img.image, sizeof(img.image), "oci:/etc");
    expect_refused("image transport", img, NULL);
    snprintf(img.image, sizeof(img.image), "ubuntu:22.04");
    snprintf(img.registry_user, sizeof(img.registry_user), "a:b");
    snprintf(img.registry_password, sizeof(img.registry_password), "p");
    expect_refused("user with a colon", img, NULL);
    img.registry_password[0] = '\0';
    snprintf(img.registry_user, sizeof(img.registry_user), "a");
    expect_refused("user without password", img, NULL);
    m = spawn_req("", 1);
    expect_refused("missing id", m, NULL);
    m = spawn_req("a", 1);
    m.reboot = 2;
    expect_refused("reboot flag", m, NULL);
    /* The pause requests name a sandbox, and carry nothing else. */
    struct sbx_spawner_msg p = {.op = SBX_SPAWNER_FREEZE, .seq = 1};
    expect_refused("freeze without id", p, NULL);
    snprintf(p.id, sizeof(p.id), "abc");
    char buf[SBX_SPAWNER_MSG_MAX];
    ssize_t n = sbx_spawner_msg_encode(&p, buf, sizeof(buf));
    CHECK(n > 0 && decode(buf, (size_t)n, &out, why, sizeof(why)) == 0);
    CHECK(out.op == SBX_SPAWNER_FREEZE && strcmp(out.id, "abc") == 0);
    /* A snapshot names a sandbox and a whole layer key; the stack comes back in the reply. */
    struct sbx_spawner_msg sn = {.op = SBX_SPAWNER_SNAPSHOT, .seq = 4};
    snprintf(sn.id, sizeof(sn.id), "abc");
    expect_refused("snapshot without key", sn, NULL);
    memset(sn.layer_key, 'e', SBX_LAYER_KEY_LEN);
    n = sbx_spawner_msg_encode(&sn, buf, sizeof(buf));
    CHECK(n > 0 && decode(buf, (size_t)n, &out, why, sizeof(why)) == 0);
    CHECK(out.op == SBX_SPAWNER_SNAPSHOT && strcmp(out.layer_key, sn.layer_key) == 0);
    struct sbx_spawner_msg rep = {.op = SBX_SPAWNER_REPLY, .seq = 4};
    snprintf(rep.layers, sizeof(rep.layers), "%s", SBX_LAYER_KEY_BASE);
    n = sbx_spawner_msg_encode(&rep, buf, sizeof(buf));
    CHECK(n > 0 && decode(buf, (size_t)n, &out, why, sizeof(why)) == 0);
    CHECK(strcmp(out.layers, SBX_LAYER_KEY_BASE) == 0);
    struct sbx_spawner_msg st = spawn_req("abc", 1);
    n = sbx_spawner_msg_encode(&st, buf, sizeof(buf));
    buf[1] = SBX_SPAWNER_STOP; /* a STOP with the fields of a SPAWN */
    CHECK(decode(buf, (size_t)n, &out, why, sizeof(why)) < 0);
    /* Volume lines: a system dir, a path inside another volume's, too many, not clean. */
    static const char too_many[] =
        "a:/m/1\nb:/m/2\nc:/m/3\nd:/m/4\ne:/m/5\nf:/m/6\ng:/m/7\nh:/m/8\ni:/m/9";
    const char *bad_volumes[] = {"v1:/etc/x",   "v1:/mnt/a\nv2:/mnt/a/b",
                                 "v1:relative", "v1:/mnt/a/../b",
                                 "V1:/mnt/a",   ":/mnt/a",
                                 "v1:/mnt/a:b", "v1:/mnt/x\n\nv2:/mnt/y",
                                 too_many};
    for (size_t i = 0; i < sizeof(bad_volumes) / sizeof(bad_volumes[0]); i++) {
        m = spawn_req("a", 1);
        snprintf(m.volumes, sizeof(m.volumes), "%s", bad_volumes[i]);
        expect_refused(bad_volumes[i], m, NULL);
    }
    m = spawn_req("a", 1);
    snprintf(m.volumes, sizeof(m.volumes), "v1:/mnt/a\nv2:/home/user/data");
    n = sbx_spawner_msg_encode(&m, buf, sizeof(buf));
    CHECK(n > 0 && decode(buf, (size_t)n, &out, why, sizeof(why)) == 0);
    struct sbx_spawner_volume vols[SBX_SANDBOX_MAX_VOLUMES];
    size_t nv = 0;
    CHECK(sbx_spawner_volumes_parse(out.volumes, vols, &nv, NULL) == 0 && nv == 2);
    CHECK_STR(vols[1].id, "v2");
    CHECK_STR(vols[1].path, "/home/user/data");
    /* Egress rules must arrive as nftables takes them: sorted, disjoint, not adjacent. */
    m = spawn_req("a", 1);
    m.n_net_deny = 2;
    m.net_deny[0] = (struct sbx_ip4_range){0x09000000, 0x090000ff};
    m.net_deny[1] = (struct sbx_ip4_range){0x01000000, 0x010000ff};
    expect_refused("unsorted ranges", m, NULL);
    m.net_deny[0] = (struct sbx_ip4_range){0x01000000, 0x010000ff};
    m.net_deny[1] = (struct sbx_ip4_range){0x01000100, 0x010001ff};
    expect_refused("adjacent ranges", m, NULL);
    m.n_net_deny = 1;
    m.net_deny[0] = (struct sbx_ip4_range){9, 1};
    expect_refused("reversed range", m, NULL);
    m = (struct sbx_spawner_msg){.op = SBX_SPAWNER_NET_PORTS, .seq = 1};
    expect_refused("ports without the DNS port", m, NULL);
    /* Too short for a header. */
    CHECK(decode("\1\1\0", 3, &out, why, sizeof(why)) < 0);
}

/* ---- a real spawner, hostile messages ---- */

struct spawner {
    pid_t pid;
    int ch;
    char state[128];
    const struct sbx_net_config *net; /* NULL: no sandbox network */
};

/* In a forked spawner: keep only its channel (another spawner's channel, inherited, would
 * keep that one from ever seeing its EOF). */
static int
only_fd(int fd)
{
    CHECK(dup2(fd, 3) == 3);
    close_range(4, ~0U, 0);
    return 3;
}

/* Gone, or a zombie nobody reaps (a killed spawner's agents go to init). */
static bool
is_dead(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return true;
    bool zombie = fgets(buf, sizeof(buf), f) && strstr(buf, ") Z ") != NULL;
    fclose(f);
    return zombie;
}

/* This build's agent image (build/sbx-agent), as sbx carries it. */
static void
agent_image(const void **image, size_t *len)
{
    char self[4096], path[4096 + 16];
    ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 1);
    CHECK(k > 0);
    self[k] = '\0';
    snprintf(path, sizeof(path), "%s/../../sbx-agent", dirname(self)); /* build/tests/unit */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    CHECK(fd >= 0 && fstat(fd, &st) == 0);
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK(p != MAP_FAILED);
    close(fd);
    *image = p;
    *len = (size_t)st.st_size;
}

static const char *
layer_cache(void)
{
    const char *c = getenv("SBX_LAYER_CACHE");
    return c && *c ? c : SBX_DEFAULT_LAYER_CACHE;
}

/* A spawner process on s->state (with s->net), talking to us on s->ch. */
static void
fork_spawner(struct spawner *s, uid_t uid_base)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    s->pid = fork();
    CHECK(s->pid >= 0);
    if (s->pid == 0) {
        close(sv[0]);
        const void *image;
        size_t image_len;
        agent_image(&image, &image_len);
        static struct sbx_spawner_config cfg;
        cfg = (struct sbx_spawner_config){.state_dir = s->state,
                                          .uid_base = uid_base,
                                          .agent = image,
                                          .agent_len = image_len,
                                          .layer_cache = layer_cache(),
                                          .lock_fd = -1,
                                          .ready_fd = -1,
                                          .net = s->net};
        int rc = sbx_spawner_main(&cfg, only_fd(sv[1]));
        sbx_test_leak_check(); /* what a long-running spawner would pile up */
        _exit(rc);
    }
    close(sv[1]);
    s->ch = sv[0];
}

static void
spawner_start(struct spawner *s, uid_t uid_base, const struct sbx_net_config *net)
{
    s->net = net;
    snprintf(s->state, sizeof(s->state), "/var/tmp/sbx-spawner-test-XXXXXX");
    CHECK(mkdtemp(s->state) != NULL);
    CHECK(chmod(s->state, 0711) == 0);
    char sb[256];
    snprintf(sb, sizeof(sb), "%s/sandboxes", s->state);
    CHECK(mkdir(sb, 0711) == 0);
    fork_spawner(s, uid_base);
}

static void
spawner_stop(struct spawner *s)
{
    close(s->ch);
    int st = 0;
    CHECK(waitpid(s->pid, &st, 0) == s->pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0); /* a clean exit at EOF, never a crash */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", s->state);
    CHECK(system(cmd) == 0);
}

static void
send_raw(struct spawner *s, const void *buf, size_t n, const int *fds, size_t nfds)
{
    CHECK(sbx_send_fds(s->ch, buf, n, fds, nfds) == 0);
}

static struct sbx_spawner_msg
recv_reply(struct spawner *s)
{
    char buf[SBX_SPAWNER_MSG_MAX], why[256];
    struct sbx_spawner_msg m;
    ssize_t n = recv(s->ch, buf, sizeof(buf), 0);
    CHECK(n > 0);
    CHECK(decode(buf, (size_t)n, &m, why, sizeof(why)) == 0);
    CHECK(m.op == SBX_SPAWNER_REPLY);
    if (m.code != SBX_OK)
        fprintf(stderr, "reply %u: code %llu: %s\n", m.seq, (unsigned long long)m.code, m.message);
    return m;
}

static struct sbx_spawner_msg
call(struct spawner *s, struct sbx_spawner_msg *req, int fd)
{
    char buf[SBX_SPAWNER_MSG_MAX];
    ssize_t n = sbx_spawner_msg_encode(req, buf, sizeof(buf));
    CHECK(n > 0);
    send_raw(s, buf, (size_t)n, &fd, fd >= 0 ? 1 : 0);
    struct sbx_spawner_msg rep = recv_reply(s);
    CHECK(rep.seq == req->seq);
    return rep;
}

static int
config_memfd(const char *id)
{
    int fd = memfd_create("cfg", MFD_CLOEXEC);
    char cfg[128];
    int n = snprintf(cfg, sizeof(cfg), "{\"sandboxId\":\"%s\"}", id);
    CHECK(fd >= 0 && write(fd, cfg, (size_t)n) == n);
    return fd;
}

static struct sbx_spawner_msg
spawn(struct spawner *s, const char *id, uint64_t slot, uint32_t seq)
{
    struct sbx_spawner_msg m = spawn_req(id, slot);
    m.seq = seq;
    int fd = config_memfd(id);
    struct sbx_spawner_msg rep = call(s, &m, fd);
    close(fd);
    return rep;
}

static struct sbx_spawner_msg
simple(struct spawner *s, uint8_t op, const char *id, uint32_t seq)
{
    struct sbx_spawner_msg m = {.op = op, .seq = seq};
    snprintf(m.id, sizeof(m.id), "%s", id);
    return call(s, &m, -1);
}

/* kill -9 of the spawner (its sandboxes keep running), and a new one on the same state. */
static void
restart_spawner(struct spawner *s, uid_t uid_base)
{
    CHECK(kill(s->pid, SIGKILL) == 0);
    CHECK(waitpid(s->pid, NULL, 0) == s->pid);
    close(s->ch);
    fork_spawner(s, uid_base);
}

static struct sbx_spawner_msg
reboot(struct spawner *s, const char *id, uint64_t slot, uint32_t seq)
{
    struct sbx_spawner_msg m = spawn_req(id, slot);
    m.seq = seq;
    m.reboot = 1;
    int fd = config_memfd(id);
    struct sbx_spawner_msg rep = call(s, &m, fd);
    close(fd);
    return rep;
}

TEST(hostile_messages_are_refused_and_the_spawner_goes_on)
{
    REQUIRE_ROOT();
    struct spawner s;
    spawner_start(&s, 1500000000u, NULL);
    /* Garbage, a reply sent as a request, a message too long, too many fds. */
    send_raw(&s, "\1\1\0\0\5\0\0\0garbage", 15, NULL, 0);
    CHECK(recv_reply(&s).code == SBX_INVALID_ARGUMENT);
    /* A well-formed key of a layer the store does not have: refused, nothing made. */
    struct sbx_spawner_msg nl = spawn_req("nolayer", 2);
    memset(nl.layers, 'e', SBX_LAYER_KEY_LEN);
    nl.layers[SBX_LAYER_KEY_LEN] = '\0';
    int nlfd = config_memfd("nolayer");
    CHECK(call(&s, &nl, nlfd).code == SBX_NOT_FOUND);
    close(nlfd);
    char nldir[512];
    snprintf(nldir, sizeof(nldir), "%s/sandboxes/nolayer", s.state);
    CHECK(access(nldir, F_OK) < 0);
    struct sbx_spawner_msg fake;
    sbx_spawner_reply_init(&fake, &(struct sbx_spawner_msg){.seq = 3}, NULL);
    char buf[8192];
    ssize_t n = sbx_spawner_msg_encode(&fake, buf, sizeof(buf));
    send_raw(&s, buf, (size_t)n, NULL, 0);
    CHECK(recv_reply(&s).code == SBX_INVALID_ARGUMENT);
    memset(buf, 1, sizeof(buf));
    send_raw(&s, buf, sizeof(buf), NULL, 0);
    CHECK(recv_reply(&s).code == SBX_INVALID_ARGUMENT);
    int two[2] = {0, 1};
    struct sbx_spawner_msg st = {.op = SBX_SPAWNER_STATS, .seq = 4};
    snprintf(st.id, sizeof(st.id), "x");
    n = sbx_spawner_msg_encode(&st, buf, sizeof(buf));
    send_raw(&s, buf, (size_t)n, two, 2);
    CHECK(recv_reply(&s).code == SBX_INVALID_ARGUMENT);
    /* A spawn whose "config" is a socket (say, a channel to us) never reaches a sandbox. */
    struct sbx_spawner_msg m = spawn_req("sock", 1);
    m.seq = 5;
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
    struct sbx_spawner_msg rep = call(&s, &m, sp[0]);
    CHECK(rep.code == SBX_INVALID_ARGUMENT);
    /* No config at all. */
    m.seq = 6;
    CHECK(call(&s, &m, -1).code == SBX_INVALID_ARGUMENT);
    /* A real sandbox, then a second one on its uid slot: refused. */
    rep = spawn(&s, "first", 1, 10);
    CHECK(rep.code == SBX_OK && rep.pid > 0);
    CHECK(kill((pid_t)rep.pid, 0) == 0);
    CHECK(spawn(&s, "second", 1, 11).code == SBX_ALREADY_EXISTS);
    CHECK(spawn(&s, "first", 2, 12).code == SBX_ALREADY_EXISTS);
    /* Nothing outside our state dir: ids that are not ours are not found. */
    CHECK(simple(&s, SBX_SPAWNER_DESTROY, "nosuch", 13).code == SBX_NOT_FOUND);
    CHECK(simple(&s, SBX_SPAWNER_STATS, "nosuch", 14).code == SBX_NOT_FOUND);
    /* The spawner still works: stats, then destroy, of its own sandbox. */
    rep = simple(&s, SBX_SPAWNER_STATS, "first", 15);
    CHECK(rep.code == SBX_OK && rep.has_stats && rep.stats.pids_current >= 1);
    CHECK(simple(&s, SBX_SPAWNER_NET_POLICY, "first", 19).code == SBX_FAILED_PRECONDITION);
    CHECK(simple(&s, SBX_SPAWNER_DESTROY, "first", 16).code == SBX_OK);
    char dir[256];
    snprintf(dir, sizeof(dir), "%s/sandboxes/first", s.state);
    CHECK(access(dir, F_OK) < 0 && errno == ENOENT);
    /* This spawner has no network: its requests are refused, not ignored. */
    struct sbx_spawner_msg ports = {.op = SBX_SPAWNER_NET_PORTS, .seq = 18, .dns_port = 53};
    CHECK(call(&s, &ports, -1).code == SBX_FAILED_PRECONDITION);
    spawner_stop(&s);
}

/* ---- the network ---- */

/* The output of a command, in buf. */
static void sh(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
sh(char *buf, size_t n, const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    FILE *f = popen(cmd, "r");
    CHECK(f != NULL);
    size_t k = fread(buf, 1, n - 1, f);
    buf[k] = '\0';
    pclose(f);
}

/* Whether nft's listing of set (of table inet tag) shows want. */
static bool
set_shows(const char *tag, const char *set, const char *want)
{
    char out[8192];
    sh(out, sizeof(out), "nft list set inet %s %s", tag, set);
    return strstr(out, want) != NULL;
}

static bool
link_exists(const char *name)
{
    char path[128];
    snprintf(path, sizeof(path), "/sys/class/net/%s", name);
    return access(path, F_OK) == 0;
}

TEST(network_rules_follow_the_spawners_own_sandboxes)
{
    REQUIRE_ROOT();
    struct sbx_netplan plan;
    static struct sbx_net_config net;
    struct sbx_error *err = NULL;
    CHECK(sbx_netplan_parse("10.142.0.0/16", &plan));
    CHECK(sbx_net_config_init(&net, &plan, 42, NULL, 0, &err) == 0);
    CHECK_STR(net.tag, "sbx42");
    struct spawner s;
    spawner_start(&s, 1500000000u, &net);
    /* Spawned with every destination denied: the rule is there before it runs. */
    struct sbx_spawner_msg m = spawn_req("netone", 5);
    m.seq = 1;
    m.n_net_deny = 1;
    m.net_deny[0] = (struct sbx_ip4_range){0, UINT32_MAX};
    int fd = config_memfd("netone");
    CHECK(call(&s, &m, fd).code == SBX_OK);
    close(fd);
    char out[8192];
    sh(out, sizeof(out), "nft list set inet %s deny_5", net.tag);
    CHECK(strstr(out, "10.142.1.5 . 0.0.0.0/0") != NULL);
    CHECK(link_exists("sbx42-5"));
    /* Only its own sandboxes' rules change. */
    CHECK(simple(&s, SBX_SPAWNER_NET_POLICY, "nosuch", 2).code == SBX_NOT_FOUND);
    struct sbx_spawner_msg p = {.op = SBX_SPAWNER_NET_POLICY, .seq = 3, .n_net_allow = 1};
    snprintf(p.id, sizeof(p.id), "netone");
    p.net_allow[0] = (struct sbx_ip4_range){0xc6336400, 0xc63364ff}; /* 198.51.100.0/24 */
    CHECK(call(&s, &p, -1).code == SBX_OK);
    sh(out, sizeof(out), "nft list table inet %s", net.tag);
    CHECK(strstr(out, "10.142.1.5 . 0.0.0.0/0") == NULL);
    CHECK(strstr(out, "10.142.1.5 . 198.51.100.0/24") != NULL);
    /* Known to this spawner: changed by one netlink batch; what nft lists is what was sent. */
    struct sbx_spawner_msg q = {.op = SBX_SPAWNER_NET_POLICY, .n_net_allow = 2, .n_net_deny = 2};
    snprintf(q.id, sizeof(q.id), "netone");
    q.net_allow[0] = (struct sbx_ip4_range){0xc6336407, 0xc6336407}; /* 198.51.100.7 */
    q.net_allow[1] = (struct sbx_ip4_range){0xc6336410, 0xc6336419}; /* .16-.25 */
    q.net_deny[0] = (struct sbx_ip4_range){0x0a000000, 0x0affffff};  /* 10.0.0.0/8 */
    q.net_deny[1] = (struct sbx_ip4_range){0xcb007100, 0xffffffff};  /* 203.0.113.0-... */
    q.net_flags = SBX_NET_PROXY_WEB;
    for (uint32_t round = 0; round < 2; round++) {
        q.seq = 10 + round;
        CHECK(call(&s, &q, -1).code == SBX_OK);
        CHECK(!set_shows(net.tag, "allow_5", "10.142.1.5 . 198.51.100.0/24"));
        CHECK(set_shows(net.tag, "allow_5", "10.142.1.5 . 198.51.100.7,"));
        CHECK(set_shows(net.tag, "allow_5", "10.142.1.5 . 198.51.100.16-198.51.100.25"));
        CHECK(set_shows(net.tag, "deny_5", "10.142.1.5 . 10.0.0.0/8"));
        CHECK(set_shows(net.tag, "deny_5", "10.142.1.5 . 203.0.113.0-255.255.255.255"));
        CHECK(set_shows(net.tag, round ? "proxy_all" : "proxy_web", "10.142.1.5"));
        CHECK(!set_shows(net.tag, round ? "proxy_web" : "proxy_all", "10.142.1.5"));
        /* The second round replaces elements by the same ones, and the proxy flag moves. */
        q.net_flags = SBX_NET_PROXY_ALL;
    }
    /* An element gone behind the spawner's back: the change fails whole and says why (the
     * kernel aborts the batch, so the new rules are not half there). */
    CHECK(system("nft delete element inet sbx42 deny_5 '{ 10.142.1.5 . 10.0.0.0/8 }'") == 0);
    struct sbx_spawner_msg r = {.op = SBX_SPAWNER_NET_POLICY, .seq = 12, .n_net_allow = 1};
    snprintf(r.id, sizeof(r.id), "netone");
    r.net_allow[0] = (struct sbx_ip4_range){0xc6336480, 0xc6336480}; /* 198.51.100.128 */
    struct sbx_spawner_msg rep = call(&s, &r, -1);
    CHECK(rep.code != SBX_OK);
    CHECK(strstr(rep.message, "delete from deny_5") != NULL);
    CHECK(!set_shows(net.tag, "allow_5", "198.51.100.128"));
    CHECK(set_shows(net.tag, "allow_5", "10.142.1.5 . 198.51.100.7,"));
    /* The next change lists the sets and succeeds; so after a restart, which does not know the
     * running sandbox's elements either; the changes after those are batches again. */
    for (uint32_t round = 0; round < 3; round++) {
        if (round == 1)
            restart_spawner(&s, 1500000000u);
        r.seq = 20 + round;
        CHECK(call(&s, &r, -1).code == SBX_OK);
        CHECK(set_shows(net.tag, "allow_5", "10.142.1.5 . 198.51.100.128"));
        CHECK(!set_shows(net.tag, "allow_5", "10.142.1.5 . 198.51.100.7,"));
        CHECK(!set_shows(net.tag, "deny_5", "10.142.1.5"));
        CHECK(!set_shows(net.tag, "proxy_all", "10.142.1.5"));
        q.seq = 30 + round;
        CHECK(call(&s, &q, -1).code == SBX_OK);
        CHECK(!set_shows(net.tag, "allow_5", "10.142.1.5 . 198.51.100.128"));
        CHECK(set_shows(net.tag, "allow_5", "10.142.1.5 . 198.51.100.7,"));
        CHECK(set_shows(net.tag, "deny_5", "10.142.1.5 . 203.0.113.0-255.255.255.255"));
    }
    struct sbx_spawner_msg ports = {.op = SBX_SPAWNER_NET_PORTS, .seq = 4, .dns_port = 5353};
    CHECK(call(&s, &ports, -1).code == SBX_OK);
    sh(out, sizeof(out), "nft list chain inet %s nat_prerouting", net.tag);
    CHECK(strstr(out, "dnat ip to 10.142.0.1:5353") != NULL);
    /* Destroyed: its rules and its link go. */
    CHECK(simple(&s, SBX_SPAWNER_DESTROY, "netone", 5).code == SBX_OK);
    sh(out, sizeof(out), "nft list table inet %s", net.tag);
    CHECK(strstr(out, "10.142.1.5") == NULL);
    for (int i = 0; i < 500 && link_exists("sbx42-5"); i++)
        usleep(10000);
    CHECK(!link_exists("sbx42-5"));
    /* With none of its sandboxes left, a stopping spawner takes its table along. */
    spawner_stop(&s);
    CHECK(system("nft list table inet sbx42 >/dev/null 2>&1") != 0);
}

TEST(a_spawner_never_acts_on_another_daemons_sandbox)
{
    REQUIRE_ROOT();
    struct spawner a, b;
    spawner_start(&a, 1500000000u, NULL);
    spawner_start(&b, 1600000000u, NULL);
    struct sbx_spawner_msg rep = spawn(&b, "theirs", 0, 1);
    CHECK(rep.code == SBX_OK);
    pid_t theirs = (pid_t)rep.pid;
    /* a knows nothing of it: its cgroup exists, but not in a's state dir. */
    CHECK(simple(&a, SBX_SPAWNER_DESTROY, "theirs", 2).code == SBX_NOT_FOUND);
    CHECK(simple(&a, SBX_SPAWNER_STATS, "theirs", 3).code == SBX_NOT_FOUND);
    CHECK(kill(theirs, 0) == 0);
    CHECK(simple(&b, SBX_SPAWNER_DESTROY, "theirs", 4).code == SBX_OK);
    spawner_stop(&a);
    spawner_stop(&b);
}

TEST(a_restarted_spawner_finds_its_sandboxes)
{
    REQUIRE_ROOT();
    struct spawner s;
    spawner_start(&s, 1500000000u, NULL);
    struct sbx_spawner_msg rep = spawn(&s, "kept", 3, 1);
    CHECK(rep.code == SBX_OK);
    pid_t agent = (pid_t)rep.pid;
    /* kill -9 of the spawner: the sandbox keeps running. */
    restart_spawner(&s, 1500000000u);
    CHECK(kill(agent, 0) == 0);
    /* It knows the sandbox again, with its uid slot. */
    CHECK(spawn(&s, "other", 3, 2).code == SBX_ALREADY_EXISTS);
    rep = simple(&s, SBX_SPAWNER_STATS, "kept", 3);
    CHECK(rep.code == SBX_OK && rep.stats.pids_current >= 1);
    CHECK(simple(&s, SBX_SPAWNER_DESTROY, "kept", 4).code == SBX_OK);
    for (int i = 0; i < 100 && !is_dead(agent); i++)
        usleep(10000);
    CHECK(is_dead(agent));
    spawner_stop(&s);
}

TEST(pause_in_place_stop_and_reboot)
{
    REQUIRE_ROOT();
    struct spawner s;
    spawner_start(&s, 1500000000u, NULL);
    struct sbx_spawner_msg rep = spawn(&s, "pz", 4, 1);
    CHECK(rep.code == SBX_OK);
    pid_t agent = (pid_t)rep.pid;
    /* Only sandboxes of ours, and only in a state that allows it. */
    CHECK(simple(&s, SBX_SPAWNER_FREEZE, "nosuch", 2).code == SBX_NOT_FOUND);
    CHECK(simple(&s, SBX_SPAWNER_STOP, "nosuch", 3).code == SBX_NOT_FOUND);
    CHECK(reboot(&s, "pz", 4, 4).code == SBX_FAILED_PRECONDITION); /* it runs */
    /* Frozen (twice is fine), still measurable, thawed; then the pause request of a front end
     * that lost the answer to its first one: it follows immediately. */
    CHECK(simple(&s, SBX_SPAWNER_FREEZE, "pz", 5).code == SBX_OK);
    CHECK(simple(&s, SBX_SPAWNER_FREEZE, "pz", 6).code == SBX_OK);
    rep = simple(&s, SBX_SPAWNER_STATS, "pz", 7);
    CHECK(rep.code == SBX_OK && rep.stats.memory_bytes > 0);
    CHECK(simple(&s, SBX_SPAWNER_THAW, "pz", 8).code == SBX_OK);
    CHECK(simple(&s, SBX_SPAWNER_FREEZE, "pz", 9).code == SBX_OK);
    /* A restart of the spawner finds it frozen. */
    restart_spawner(&s, 1500000000u);
    CHECK(kill(agent, 0) == 0);
    CHECK(simple(&s, SBX_SPAWNER_THAW, "pz", 10).code == SBX_OK);
    CHECK(simple(&s, SBX_SPAWNER_FREEZE, "pz", 11).code == SBX_OK);
    /* Stopped while frozen: nothing runs, the dir and its disk stay. */
    CHECK(simple(&s, SBX_SPAWNER_STOP, "pz", 12).code == SBX_OK);
    for (int i = 0; i < 100 && !is_dead(agent); i++)
        usleep(10000);
    CHECK(is_dead(agent));
    char img[256];
    snprintf(img, sizeof(img), "%s/sandboxes/pz/disk.img", s.state);
    CHECK(access(img, F_OK) == 0);
    CHECK(simple(&s, SBX_SPAWNER_STATS, "pz", 13).code == SBX_FAILED_PRECONDITION);
    CHECK(simple(&s, SBX_SPAWNER_FREEZE, "pz", 14).code == SBX_FAILED_PRECONDITION);
    CHECK(simple(&s, SBX_SPAWNER_STOP, "pz", 15).code == SBX_OK); /* again: nothing to do */
    /* Its slot stays its own, across a restart too; a reboot must name that slot. */
    restart_spawner(&s, 1500000000u);
    CHECK(spawn(&s, "other", 4, 16).code == SBX_ALREADY_EXISTS);
    CHECK(reboot(&s, "pz", 5, 17).code == SBX_INVALID_ARGUMENT);
    CHECK(reboot(&s, "nosuch", 5, 18).code == SBX_NOT_FOUND);
    rep = reboot(&s, "pz", 4, 19);
    CHECK(rep.code == SBX_OK && rep.pid > 0 && (pid_t)rep.pid != agent);
    CHECK(kill((pid_t)rep.pid, 0) == 0);
    CHECK(simple(&s, SBX_SPAWNER_STATS, "pz", 20).code == SBX_OK);
    /* Frozen, then destroyed: everything goes. */
    CHECK(simple(&s, SBX_SPAWNER_FREEZE, "pz", 21).code == SBX_OK);
    CHECK(simple(&s, SBX_SPAWNER_DESTROY, "pz", 22).code == SBX_OK);
    for (int i = 0; i < 100 && !is_dead((pid_t)rep.pid); i++)
        usleep(10000);
    CHECK(is_dead((pid_t)rep.pid));
    char dir[256];
    snprintf(dir, sizeof(dir), "%s/sandboxes/pz", s.state);
    CHECK(access(dir, F_OK) < 0 && errno == ENOENT);
    CHECK(spawn(&s, "other", 4, 23).code == SBX_OK);
    CHECK(simple(&s, SBX_SPAWNER_DESTROY, "other", 24).code == SBX_OK);
    spawner_stop(&s);
}

TEST(volumes_are_made_mounted_and_removed)
{
    REQUIRE_ROOT();
    struct spawner s;
    spawner_start(&s, 1500000000u, NULL);
    struct sbx_spawner_msg m = {.op = SBX_SPAWNER_VOLUME_CREATE, .seq = 1, .disk_bytes = 64 << 20};
    snprintf(m.id, sizeof(m.id), "vol1");
    CHECK(call(&s, &m, -1).code == SBX_OK);
    m.seq = 2;
    CHECK(call(&s, &m, -1).code == SBX_ALREADY_EXISTS);
    char path[256];
    struct stat st;
    snprintf(path, sizeof(path), "%s/volumes/vol1", s.state);
    CHECK(stat(path, &st) == 0 && st.st_uid == 0 && (st.st_mode & 0777) == 0700);
    snprintf(path, sizeof(path), "%s/volumes/vol1/volume.img", s.state);
    CHECK(stat(path, &st) == 0 && st.st_size == 64 << 20 && (st.st_mode & 0777) == 0600);
    /* Mounted in a sandbox; a volume that is not there fails the spawn. */
    struct sbx_spawner_msg sp = spawn_req("withvol", 2);
    sp.seq = 3;
    snprintf(sp.volumes, sizeof(sp.volumes), "vol1:/mnt/data");
    int fd = config_memfd("withvol");
    CHECK(call(&s, &sp, fd).code == SBX_OK);
    close(fd);
    sp = spawn_req("novol", 3);
    sp.seq = 4;
    snprintf(sp.volumes, sizeof(sp.volumes), "nosuch:/mnt/data");
    fd = config_memfd("novol");
    CHECK(call(&s, &sp, fd).code == SBX_NOT_FOUND);
    close(fd);
    snprintf(path, sizeof(path), "%s/sandboxes/novol", s.state);
    CHECK(access(path, F_OK) < 0);
    CHECK(simple(&s, SBX_SPAWNER_DESTROY, "withvol", 5).code == SBX_OK);
    CHECK(simple(&s, SBX_SPAWNER_VOLUME_DELETE, "vol1", 6).code == SBX_OK);
    CHECK(simple(&s, SBX_SPAWNER_VOLUME_DELETE, "vol1", 7).code == SBX_NOT_FOUND);
    snprintf(path, sizeof(path), "%s/volumes/vol1", s.state);
    CHECK(access(path, F_OK) < 0 && errno == ENOENT);
    spawner_stop(&s);
}

TEST(image_references)
{
    struct sbx_image_ref r;
    struct sbx_error *err = NULL;
    static const struct {
        const char *ref, *host;
        bool loopback;
    } ok[] = {
        {"ubuntu:22.04", "docker.io", false},
        {"library/python:3", "docker.io", false},
        {"ghcr.io/e2b-dev/x:1", "ghcr.io", false},
        {"127.0.0.1:5000/a/b:c", "127.0.0.1:5000", true},
        {"127.1.2.3/a", "127.1.2.3", true},
        {"localhost:5000/a@sha256:00", "localhost:5000", true},
        {"localhost/a", "localhost", true},
        {"127.0.0.1.evil.com/a", "127.0.0.1.evil.com", false},
        {"1270.0.0.1:5/a", "1270.0.0.1:5", false},
        {"localhostx:5/a", "localhostx:5", false},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        CHECK(sbx_image_ref_parse(ok[i].ref, &r, &err) == 0);
        CHECK_STR(r.host, ok[i].host);
        CHECK(r.loopback == ok[i].loopback);
    }
    static const char *const bad[] = {"",   "-x",    "/etc", "a//b",       "a/../b", "a b",
                                      "a/", "h:x/a", "h:/a", "docker://a", "a\nb"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(sbx_image_ref_parse(bad[i], &r, &err) < 0);
        sbx_error_free(err);
        err = NULL;
    }
    char h[128];
    snprintf(h, sizeof(h), SBX_IMAGE_ARCHIVE_PREFIX "%064d", 0);
    CHECK(sbx_image_ref_archive(h) == h + strlen(SBX_IMAGE_ARCHIVE_PREFIX));
    CHECK(sbx_image_ref_archive("archive:sha256:00") == NULL);
    CHECK(sbx_image_ref_parse(h, &r, &err) < 0); /* no registry reference looks so */
    sbx_error_free(err);
}

TEST_MAIN(60)
