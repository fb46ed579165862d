/* Layers of container images (IMAGE_LAYER): skopeo reads the image, from a registry or from
 * an imported archive, into an OCI layout, and umoci unpacks its root filesystem, whiteouts
 * applied, with the owners the image gives its files (a layer stores files with the uids
 * they have in sandboxes). The layer's key is derived from the image's manifest digest, so
 * a second pull of the same image asks the registry for its manifest only.
 *
 * Everything runs in a job (a child process): a pull takes as long as the network does. The
 * image's parts are made under .new-<key> in the layer store and only the finished root is
 * renamed into place: a failed or killed pull, a disk that fills, leaves no layer. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base64.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"
#include "spawner/image_ref.h"
#include "spawner/internal.h"

#define SKOPEO        "/usr/bin/skopeo"
#define UMOCI         "/usr/bin/umoci"
#define IMAGE_LOG_MAX 900 /* of a tool's output, read for its error */
#define OUT_MAX       (SBX_SPAWNER_ENV_MAX + 128)
/* skopeo inspect's answer: the manifest's digest, then the image's Env, a line each. */
#define INSPECT_FORMAT "{{.Digest}}\n{{range .Env}}{{.}}\n{{end}}"

struct image {
    uint32_t seq;
    char ref[SBX_IMAGE_REF_MAX + 1];
    struct sbx_image_ref parsed; /* of a registry's image */
    bool archive;
    int fd3; /* the archive, or the registry's auth file; -1 */
    uint64_t deadline_ms;
};

/* What a tool's log says went wrong: skopeo's own message (the msg="..." of its last
 * line), else the log's last line. */
static void
tool_reason(int log, char *out, size_t cap)
{
    char tail[IMAGE_LOG_MAX + 1];
    sbx_spawner_log_tail(log, tail, sizeof(tail));
    const char *line = strrchr(tail, '\n');
    line = line ? line + 1 : tail;
    const char *msg = strstr(line, "msg=\"");
    if (msg == NULL) {
        snprintf(out, cap, "%s", line);
        return;
    }
    size_t n = 0;
    for (const char *p = msg + 5;
         *p && !(*p == '"' && (p[1] == '\0' || p[1] == ' ')) && n + 1 < cap; p++)
        out[n++] = *p == '\\' && p[1] ? *++p : *p;
    out[n] = '\0';
}

/* Runs a tool within the pull's deadline; 0, or -1 with "<what>: <its reason>". */
static int
run(const struct image *im, const char *path, char *const argv[], int out, const char *what,
    struct sbx_error **err)
{
    _cleanup_close_ int log = memfd_create("sbx-image-log", MFD_CLOEXEC);
    if (log < 0)
        return sbx_error_sys(err, errno, "memfd_create");
    uint64_t now = sbx_now_ms();
    if (now >= im->deadline_ms)
        return sbx_error_set(err, SBX_DEADLINE_EXCEEDED, 0, "%s: out of time", what);
    struct sbx_spawner_tool_io io = {.out = out, .log = log, .fd3 = im->fd3};
    int st = sbx_spawner_run_tool(path, argv, &io, im->deadline_ms - now, err);
    if (st < 0)
        return sbx_error_prefix(err, "%s", what);
    if (st == 0)
        return 0;
    char reason[IMAGE_LOG_MAX + 1];
    tool_reason(log, reason, sizeof(reason));
    return sbx_error_set(err, SBX_UNAVAILABLE, 0, "%s", reason[0] ? reason : what);
}

/* An auth file of the registry with user and password, as fd 3 of skopeo: on no command
 * line (other host users read those), and never one the front end wrote (an auth file can
 * name credential helpers, programs skopeo would run as root). */
static int
auth_file(const char *host, const char *user, const char *password, struct sbx_error **err)
{
    _cleanup_free_ char *pair = NULL;
    if (asprintf(&pair, "%s:%s", user, password) < 0)
        abort();
    _cleanup_free_ char *b64 = sbx_base64_encode(pair, strlen(pair), NULL);
    explicit_bzero(pair, strlen(pair));
    _cleanup_free_ char *json = NULL;
    /* host is letters, digits and .-: (sbx_image_ref_parse): nothing to escape in JSON. */
    if (b64 == NULL || asprintf(&json, "{\"auths\":{\"%s\":{\"auth\":\"%s\"}}}", host, b64) < 0)
        abort();
    explicit_bzero(b64, strlen(b64));
    int fd = memfd_create("sbx-auth", MFD_CLOEXEC);
    size_t len = strlen(json);
    if (fd < 0 || write(fd, json, len) != (ssize_t)len) {
        explicit_bzero(json, len);
        if (fd >= 0)
            close(fd);
        return sbx_error_sys(err, errno, "write the registry's auth file");
    }
    explicit_bzero(json, len);
    return fd;
}

/* skopeo inspect of src into out (NUL-terminated). */
static int
inspect(const struct image *im, const char *src, char *out, struct sbx_error **err)
{
    _cleanup_close_ int fd = memfd_create("sbx-inspect", MFD_CLOEXEC);
    if (fd < 0)
        return sbx_error_sys(err, errno, "memfd_create");
    char timeout[32];
    snprintf(timeout, sizeof(timeout), "%llus",
             (unsigned long long)((im->deadline_ms - sbx_now_ms()) / 1000 + 1));
    /* Plain HTTP only to a registry on this machine's loopback (a test's, a developer's
     * local one): its traffic never leaves the host, so there is nothing for TLS to guard;
     * any other registry is TLS with verified certificates. */
    char *argv[16] = {"skopeo", "--command-timeout", timeout, "inspect", "--no-tags"};
    size_t n = 5;
    if (!im->archive && im->parsed.loopback)
        argv[n++] = "--tls-verify=false";
    if (!im->archive && im->fd3 >= 0)
        argv[n++] = "--authfile=/dev/fd/3";
    argv[n++] = "--format=" INSPECT_FORMAT;
    argv[n++] = (char *)src;
    argv[n] = NULL;
    if (run(im, SKOPEO, argv, fd, "skopeo inspect", err) < 0)
        return -1;
    ssize_t len = pread(fd, out, OUT_MAX, 0);
    if (len < 0 || len >= OUT_MAX)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "the image's Env is larger than %d bytes", SBX_SPAWNER_ENV_MAX);
    out[len] = '\0';
    if (memchr(out, '\0', (size_t)len) != NULL)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "the image's Env has a NUL byte");
    return 0;
}

/* The archive's source for skopeo: an OCI archive, else a docker archive (docker save). */
static int
archive_source(const struct image *im, char *src, size_t cap, char *out, struct sbx_error **err)
{
    struct sbx_error *oci = NULL;
    snprintf(src, cap, "oci-archive:/dev/fd/3");
    if (inspect(im, src, out, &oci) == 0)
        return 0;
    snprintf(src, cap, "docker-archive:/dev/fd/3");
    struct sbx_error *docker = NULL;
    int rc = inspect(im, src, out, &docker);
    if (rc < 0)
        sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                      "not an OCI archive (%s) nor a docker archive (%s)", oci->msg, docker->msg);
    sbx_error_free(oci);
    sbx_error_free(docker);
    return rc;
}

static void
layer_key(const char *digest, char out[SBX_LAYER_KEY_LEN + 1])
{
    char in[128];
    int len = snprintf(in, sizeof(in), "sbx-image-1\n%s", digest);
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(in, (size_t)len, md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* The dirs a sandbox mounts on (or writes /etc/hosts into), which images built FROM scratch
 * may lack. What the image has there (a dir, or anything else) stays as it is. */
static int
provide_mount_points(const char *rootfs, struct sbx_error **err)
{
    static const struct {
        const char *name;
        mode_t mode;
    } dirs[] = {{"proc", 0555}, {"sys", 0555}, {"dev", 0755},
                {"run", 0755},  {"etc", 0755}, {"tmp", 01777}};
    _cleanup_close_ int root = open(rootfs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (root < 0)
        return sbx_error_sys(err, errno, "open the image's root");
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (mkdirat(root, dirs[i].name, dirs[i].mode) < 0) {
            if (errno == EEXIST)
                continue;
            return sbx_error_sys(err, errno, "mkdir /%s in the image's root", dirs[i].name);
        }
        /* umask took its bits: the mode is what it says (tmp's sticky bit above all). */
        if (fchmodat(root, dirs[i].name, dirs[i].mode, 0) < 0)
            return sbx_error_sys(err, errno, "chmod /%s in the image's root", dirs[i].name);
    }
    return 0;
}

/* skopeo copy of src (pinned to digest) into tmp/oci, umoci unpack into tmp/bundle, and
 * its rootfs into the store as key. */
static int
make_layer(const struct image *im, const char *src, const char *digest, const char *key,
           const char *tmp, struct sbx_error **err)
{
    char pinned[SBX_IMAGE_REF_MAX + 100], oci[4200], bundle[4200], rootfs[4300];
    if (im->archive) {
        snprintf(pinned, sizeof(pinned), "%s", src);
    } else {
        /* The manifest inspected, not whatever the tag names a moment later. */
        size_t name = strcspn(im->ref, "@");
        const char *slash = strrchr(im->ref, '/');
        const char *colon = strrchr(slash ? slash : im->ref, ':');
        if (colon && (size_t)(colon - im->ref) < name)
            name = (size_t)(colon - im->ref);
        snprintf(pinned, sizeof(pinned), "docker://%.*s@%s", (int)name, im->ref, digest);
    }
    snprintf(oci, sizeof(oci), "oci:%s/oci:image", tmp);
    snprintf(bundle, sizeof(bundle), "%s/bundle", tmp);
    snprintf(rootfs, sizeof(rootfs), "%s/rootfs", bundle);
    char timeout[32];
    snprintf(timeout, sizeof(timeout), "%llus",
             (unsigned long long)((im->deadline_ms - sbx_now_ms()) / 1000 + 1));
    char *copy[12] = {"skopeo", "--command-timeout", timeout, "copy", "--quiet"};
    size_t n = 5;
    if (!im->archive && im->parsed.loopback) /* see inspect() */
        copy[n++] = "--src-tls-verify=false";
    if (!im->archive && im->fd3 >= 0)
        copy[n++] = "--src-authfile=/dev/fd/3";
    copy[n++] = pinned;
    copy[n++] = oci;
    copy[n] = NULL;
    if (run(im, SKOPEO, copy, -1, "skopeo copy", err) < 0)
        return -1;
    char *unpack[] = {"umoci", "unpack", "--image", oci + 4, bundle, NULL};
    if (run(im, UMOCI, unpack, -1, "umoci unpack", err) < 0)
        return sbx_error_prefix(err, "unpack");
    if (provide_mount_points(rootfs, err) < 0)
        return -1;
    _cleanup_free_ char *dst = sbx_layer_path(sbx_spawner_cfg()->state_dir, key);
    if (chmod(rootfs, 0755) < 0 || rename(rootfs, dst) < 0)
        return sbx_error_sys(err, errno, "move the image's root into the layer store");
    return 0;
}

/* In a job: the layer of the image; r->text: "<key>\n<digest>\n<Env lines>". */
static int
image_work(void *ud, struct sbx_spawner_job_result *r, struct sbx_error **err)
{
    struct image *im = ud;
    const char *state = sbx_spawner_cfg()->state_dir;
    static char out[OUT_MAX + 1];
    char src[SBX_IMAGE_REF_MAX + 32];
    if (im->archive) {
        if (archive_source(im, src, sizeof(src), out, err) < 0)
            return -1;
    } else {
        snprintf(src, sizeof(src), "docker://%s", im->ref);
        if (inspect(im, src, out, err) < 0)
            return -1;
    }
    char *env = strchr(out, '\n');
    if (env)
        *env++ = '\0';
    if (strncmp(out, "sha256:", 7) != 0 || strlen(out) != 71 ||
        strspn(out + 7, "0123456789abcdef") != 64)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "skopeo named no manifest digest");
    char key[SBX_LAYER_KEY_LEN + 1];
    layer_key(out, key);
    snprintf(r->text, sizeof(r->text), "%s\n%s\n%s", key, out, env ? env : "");
    if (sbx_layer_exists(state, key))
        return 0;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s/" SBX_LAYERS_DIR "/.new-%s", state, key);
    if (mkdir(tmp, 0700) < 0)
        return errno == EEXIST ? sbx_error_set(err, SBX_UNAVAILABLE, 0,
                                               "image %s is being unpacked for another build; "
                                               "try again when it is done",
                                               out)
                               : sbx_error_sys(err, errno, "mkdir %s", tmp);
    int rc = make_layer(im, src, out, key, tmp, err);
    /* What is left of the image's parts (all of it, if it failed) goes. */
    struct sbx_error *ignored = NULL;
    if (sbx_layer_drop_unfinished(state, key, &ignored) < 0)
        sbx_error_free(ignored);
    return rc;
}

static void
on_image_done(void *ud, const struct sbx_spawner_job_result *r)
{
    struct image *im = ud;
    struct sbx_spawner_msg req = {.seq = im->seq}, rep;
    _cleanup_error_ struct sbx_error *err = NULL;
    const char *digest = strchr(r->text, '\n');
    const char *env = digest ? strchr(digest + 1, '\n') : NULL;
    if (r->code != SBX_OK)
        sbx_error_set(&err, (enum sbx_code)r->code, r->sys_errno, "%s", r->message);
    else if (env == NULL || digest - r->text != SBX_LAYER_KEY_LEN)
        sbx_error_set(&err, SBX_INTERNAL, 0, "the image's layer was made, but not named");
    else if (strlen(env + 1) > SBX_SPAWNER_ENV_MAX)
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "the image's Env is larger than %d bytes",
                      SBX_SPAWNER_ENV_MAX);
    sbx_spawner_reply_init(&rep, &req, err);
    if (err == NULL) {
        snprintf(rep.layer_key, sizeof(rep.layer_key), "%.*s", SBX_LAYER_KEY_LEN, r->text);
        snprintf(rep.image_digest, sizeof(rep.image_digest), "%.*s", (int)(env - digest - 1),
                 digest + 1);
        snprintf(rep.image_env, sizeof(rep.image_env), "%s", env + 1);
    }
    sbx_log_info("image_layer", "image=%s layer=%s ok=%d", im->ref, err ? "-" : rep.layer_key,
                 err == NULL);
    sbx_spawner_send(&rep);
    if (im->fd3 >= 0)
        close(im->fd3);
    free(im);
}

void
sbx_spawner_image_layer(const struct sbx_spawner_msg *m, int archive_fd)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct image *im = calloc(1, sizeof(*im));
    if (im == NULL)
        abort();
    im->seq = m->seq;
    im->fd3 = -1;
    im->deadline_ms = sbx_now_ms() + m->timeout_ms;
    snprintf(im->ref, sizeof(im->ref), "%s", m->image);
    im->archive = sbx_image_ref_archive(m->image) != NULL;
    struct stat st;
    if (im->archive) {
        /* The front end's upload, read by skopeo as /dev/fd/3: a file, nothing else. */
        if (archive_fd < 0 || fstat(archive_fd, &st) < 0 || !S_ISREG(st.st_mode) ||
            m->registry_user[0])
            sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "an archive's image needs its file");
        else if ((im->fd3 = fcntl(archive_fd, F_DUPFD_CLOEXEC, 0)) < 0)
            sbx_error_sys(&err, errno, "dup");
    } else if (archive_fd >= 0) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "a registry's image takes no file");
    } else if (sbx_image_ref_parse(m->image, &im->parsed, &err) == 0 && m->registry_user[0]) {
        im->fd3 = auth_file(im->parsed.host, m->registry_user, m->registry_password, &err);
    }
    if (err == NULL && sbx_spawner_job_start(image_work, on_image_done, im, &err) == 0) {
        sbx_log_info("image_layer", "image=%s action=\"pull\"", im->ref);
        return;
    }
    if (im->fd3 >= 0)
        close(im->fd3);
    free(im);
    sbx_spawner_reply(m->seq, err);
}
