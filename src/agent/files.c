/* GET/POST /files: streamed downloads (identity or gzip) and uploads (multipart/form-data or
 * application/octet-stream, optionally gzip-encoded). Both act as envd does, as sandbox root
 * for the requested user, whose home resolves the path: downloads read what root can, uploads
 * hand what they make to the user, within the bounds fsutil.h describes.
 *
 * Memory stays bounded: downloads read one chunk at a time and wait for the connection to
 * drain; uploads are written synchronously as each received slice is parsed, so the HTTP
 * layer reads no faster than the disk takes the data.
 *
 * An upload writes the final file in place, in envd's order, so that watchers see the same
 * events: a new file is created (CREATE), given to the user (CHMOD) and written (WRITE); an
 * existing one is given to the user (CHMOD), truncated and written (WRITE). If it fails or the
 * client goes away mid-file, the partial file is removed when the upload created it, or truncated
 * to empty when it overwrote an existing file: no partial content is ever left under the final
 * name. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "agent/filesystem.h"
#include "agent/fsutil.h"
#include "agent/multipart.h"
#include "base/signature.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "base/util.h"

/* ---- query and auth ---- */

/* Percent-decoded value of key with its length (may hold NUL bytes). *bad on a malformed
 * escape. NULL if absent. */
static char *
query_param(const struct sbx_http_req *req, const char *key, size_t *len, bool *bad)
{
    const char *q = req->query;
    size_t klen = strlen(key);
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t plen = amp ? (size_t)(amp - q) : strlen(q);
        if (plen >= klen && strncmp(q, key, klen) == 0 && (plen == klen || q[klen] == '=')) {
            if (plen == klen) {
                *len = 0;
                return strdup("");
            }
            char *v = sbx_http_percent_decode(q + klen + 1, plen - klen - 1, true, len);
            if (v == NULL)
                *bad = true;
            return v;
        }
        q = amp ? amp + 1 : NULL;
    }
    return NULL;
}

struct files_params {
    char *path; /* raw, decoded; NULL if absent */
    size_t path_len;
    char *username;
    char *signature;
    char *expiration;
};

static void
params_fini(struct files_params *p)
{
    free(p->path);
    free(p->username);
    free(p->signature);
    free(p->expiration);
}

static int
params_parse(const struct sbx_http_req *req, struct files_params *p)
{
    bool bad = false;
    size_t n;
    memset(p, 0, sizeof(*p));
    p->path = query_param(req, "path", &p->path_len, &bad);
    p->username = query_param(req, "username", &n, &bad);
    if (p->username && strlen(p->username) != n)
        bad = true;
    p->signature = query_param(req, "signature", &n, &bad);
    p->expiration = query_param(req, "signature_expiration", &n, &bad);
    return bad ? -1 : 0;
}

/* Spec §5.3. Returns NULL when authorized, else the 401 message. */
static const char *
check_auth(const struct sbx_http_req *req, const struct sbx_agent_config *cfg,
           const struct files_params *p, const char *op)
{
    if (cfg->access_token == NULL)
        return NULL;
    const char *tok = cfg->access_token;
    const char *hdr = sbx_http_req_header(req, "x-access-token");
    if (hdr != NULL) {
        /* Constant time: a partial match must not be measurable. */
        if (sbx_secret_equal(hdr, strlen(hdr), tok, strlen(tok)))
            return NULL;
        return "access token present in header but does not match";
    }
    if (p->signature == NULL)
        return "missing signature query parameter";
    int64_t exp = 0;
    bool has_exp = p->expiration != NULL;
    if (has_exp && sbx_signature_parse_exp(p->expiration, &exp) < 0)
        return "invalid signature";
    /* The path is signed as the caller wrote it, before resolution. */
    if (!sbx_signature_v1_matches(p->signature, p->path ? p->path : "", op,
                                  p->username ? p->username : "", tok, has_exp, exp))
        return "invalid signature";
    if (has_exp && exp < (int64_t)time(NULL))
        return "signature is already expired";
    return NULL;
}

/* Checks auth, looks the user up; on failure answers and returns -1. */
static int
prepare(struct sbx_http_req *req, const struct sbx_agent_config *cfg, struct files_params *p,
        const char *op, struct sbx_agent_user *u)
{
    memset(u, 0, sizeof(*u));
    if (params_parse(req, p) < 0) {
        sbx_http_respond_error(req, 400, "malformed query string");
        return -1;
    }
    const char *deny = check_auth(req, cfg, p, op);
    if (deny) {
        sbx_http_respond_error(req, 401, "%s", deny);
        return -1;
    }
    _cleanup_error_ struct sbx_error *e = NULL;
    const char *name = p->username && *p->username ? p->username : sbx_agent_default_user();
    if (sbx_agent_user_lookup("/etc", name, u, &e) < 0) {
        sbx_http_respond_error(req, 401, "error looking up user '%s': %s", name, e->msg);
        return -1;
    }
    return 0;
}

static int
status_of(const struct sbx_error *e)
{
    if (e->sys_errno == ENOSPC || e->sys_errno == EDQUOT)
        return 507;
    switch (e->code) {
    case SBX_NOT_FOUND:
        return 404;
    case SBX_INVALID_ARGUMENT:
    case SBX_ALREADY_EXISTS:
        return 400;
    case SBX_PERMISSION_DENIED:
        return 403;
    case SBX_FAILED_PRECONDITION:
        return 400;
    default:
        return 500;
    }
}

static void
respond_sbx_error(struct sbx_http_req *req, const struct sbx_error *e)
{
    int st = status_of(e);
    if (st == 507)
        sbx_http_respond_error(req, 507, "not enough disk space available");
    else
        sbx_http_respond_error(req, st, "%s", e->msg);
}

/* ---- download ---- */

struct download {
    struct sbx_http_req *req;
    int fd;
    int64_t remaining;
    bool gzip;
    void (*done)(void);
    z_stream z;
    char in[SBX_AGENT_IO_CHUNK];
    char out[SBX_AGENT_IO_CHUNK];
};

static void
download_free(struct download *d)
{
    if (d->fd >= 0)
        close(d->fd);
    if (d->gzip)
        deflateEnd(&d->z);
    if (d->done)
        d->done();
    free(d);
}

static void
on_download_closed(struct sbx_http_req *req)
{
    struct download *d = req->data;
    req->data = NULL;
    if (d)
        download_free(d);
}

static void download_pump(struct sbx_http_req *req);

/* Deflates avail_in bytes (or finishes); returns false if the connection backed up. */
static bool
download_deflate(struct download *d, int flush)
{
    bool ok = true;
    do {
        d->z.next_out = (Bytef *)d->out;
        d->z.avail_out = sizeof(d->out);
        deflate(&d->z, flush);
        size_t n = sizeof(d->out) - d->z.avail_out;
        if (n > 0 && !sbx_http_write(d->req, d->out, n))
            ok = false;
    } while (d->z.avail_out == 0);
    return ok;
}

static void
download_pump(struct sbx_http_req *req)
{
    struct download *d = req->data;
    if (d == NULL)
        return;
    for (;;) {
        size_t want = d->remaining < (int64_t)sizeof(d->in) ? (size_t)d->remaining : sizeof(d->in);
        ssize_t n = want > 0 ? read(d->fd, d->in, want) : 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || (n == 0 && d->remaining > 0 && !d->gzip)) {
            /* The file shrank or failed under us after Content-Length went out: the only
             * honest signal left is to cut the response. */
            req->data = NULL;
            sbx_http_abort(req);
            download_free(d);
            return;
        }
        if (n == 0) {
            if (d->gzip) {
                d->z.avail_in = 0;
                download_deflate(d, Z_FINISH);
            }
            req->data = NULL;
            sbx_http_end(req);
            download_free(d);
            return;
        }
        d->remaining -= n;
        bool ok;
        if (d->gzip) {
            d->z.next_in = (Bytef *)d->in;
            d->z.avail_in = (uInt)n;
            ok = download_deflate(d, Z_NO_FLUSH);
        } else {
            ok = sbx_http_write(req, d->in, (size_t)n);
        }
        if (!ok) {
            sbx_http_on_drain(req, download_pump);
            return;
        }
    }
}

/* Accept-Encoding negotiation. gzip is used when the client asks for it specifically (the
 * SDKs' gzip option sends exactly "gzip"); a header that also lists codings we do not
 * speak ("gzip, deflate", "gzip, deflate, br") is an HTTP library's default, and identity,
 * always acceptable unless refused with q=0, is then much cheaper than compressing (envd
 * would compress those too; both SDKs decode either). 406 only if identity is refused and
 * gzip is not acceptable. Returns 1 gzip, 0 identity, -1 none. */
static int
negotiate_encoding(const char *h)
{
    if (h == NULL || *h == '\0')
        return 0;
    double q_gzip = -1, q_identity = -1, q_star = -1;
    bool others = false;
    _cleanup_free_ char *copy = strdup(h);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        double q = 1.0;
        char *semi = strchr(tok, ';');
        if (semi) {
            *semi = '\0';
            char *qs = strstr(semi + 1, "q=");
            if (qs)
                q = strtod(qs + 2, NULL);
        }
        size_t l = strlen(tok);
        while (l > 0 && (tok[l - 1] == ' ' || tok[l - 1] == '\t'))
            tok[--l] = '\0';
        if (strcasecmp(tok, "gzip") == 0)
            q_gzip = q;
        else if (strcasecmp(tok, "identity") == 0)
            q_identity = q;
        else if (strcmp(tok, "*") == 0)
            q_star = q;
        else if (*tok)
            others = true;
    }
    bool identity_refused = q_identity == 0 || (q_identity < 0 && q_star == 0);
    if (q_gzip > 0 && !others && (q_identity < 0 || q_gzip >= q_identity))
        return 1;
    if (!identity_refused)
        return 0;
    if (q_gzip > 0 || (q_gzip < 0 && q_star > 0))
        return 1;
    return -1;
}

static void
add_disposition(struct sbx_http_req *req, const char *base)
{
    /* Quoted, with anything outside printable ASCII (and the quote and backslash)
     * percent-encoded into the RFC 5987 form: no header injection, no broken quoting. */
    struct sbx_buf plain = {0}, ext = {0};
    bool needs_ext = false;
    for (const unsigned char *p = (const unsigned char *)base; *p; p++) {
        if (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\' && *p != '%') {
            sbx_buf_append(&plain, p, 1, SIZE_MAX / 2);
            sbx_buf_append(&ext, p, 1, SIZE_MAX / 2);
        } else {
            needs_ext = true;
            sbx_buf_append(&plain, "_", 1, SIZE_MAX / 2);
            sbx_buf_printf(&ext, "%%%02X", *p);
        }
    }
    sbx_buf_append(&plain, "", 1, SIZE_MAX / 2);
    sbx_buf_append(&ext, "", 1, SIZE_MAX / 2);
    _cleanup_free_ char *v = NULL;
    if (needs_ext) {
        if (asprintf(&v, "inline; filename=\"%s\"; filename*=UTF-8''%s", plain.data, ext.data) < 0)
            abort();
    } else if (asprintf(&v, "inline; filename=\"%s\"", plain.data) < 0) {
        abort();
    }
    sbx_http_add_header(req, "Content-Disposition", v);
    sbx_buf_fini(&plain);
    sbx_buf_fini(&ext);
}

static void
files_get(struct sbx_http_req *req, const struct sbx_agent_config *cfg)
{
    struct files_params p;
    struct sbx_agent_user u;
    if (prepare(req, cfg, &p, SBX_SIGNATURE_OP_READ, &u) < 0) {
        params_fini(&p);
        sbx_agent_user_fini(&u);
        return;
    }
    _cleanup_error_ struct sbx_error *e = NULL;
    _cleanup_free_ char *path = sbx_agent_path_resolve(p.path, p.path_len, u.home, &e);
    params_fini(&p);
    sbx_agent_user_fini(&u);
    int gz = negotiate_encoding(sbx_http_req_header(req, "accept-encoding"));
    int fd = -1;
    struct stat st;
    if (path != NULL) {
        /* As envd reads, as root, following symlinks but never a magic link (fsutil.h).
         * O_NONBLOCK: opening a FIFO must not hang the agent; non-regular files are refused
         * below anyway. */
        fd = sbx_agent_open_for_user(AT_FDCWD, path, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0);
        if (fd < 0 && errno == ENOENT)
            sbx_error_set(&e, SBX_NOT_FOUND, ENOENT, "path '%s' does not exist", path);
        else if (fd < 0)
            sbx_agent_open_error(&e, errno, "open", path, (int)strlen(path));
    }
    if (fd >= 0 && sbx_agent_fd_is_proc(fd)) {
        /* The agent's own /proc entries (its memory, environment, fds) open to it whatever
         * their owner: nothing on procfs is read for a client. */
        sbx_error_set(&e, SBX_PERMISSION_DENIED, EACCES,
                      "path '%s' is on /proc, which the agent never reads for a client", path);
        close(fd);
        fd = -1;
    }
    if (fd >= 0 && fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
        sbx_error_set(&e, SBX_INVALID_ARGUMENT, 0,
                      S_ISDIR(st.st_mode) ? "path '%s' is a directory"
                                          : "path '%s' is not a regular file",
                      path);
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        respond_sbx_error(req, e);
        return;
    }
    if (gz < 0) {
        close(fd);
        sbx_http_respond_error(req, 406, "no acceptable encoding found, supported: [gzip]");
        return;
    }
    add_disposition(req, sbx_agent_path_base(path));
    sbx_http_add_header(req, "Vary", "Accept-Encoding");
    sbx_agent_file_send(req, fd, st.st_size, gz == 1, NULL);
}

void
sbx_agent_file_send(struct sbx_http_req *req, int fd, int64_t size, bool gzip, void (*done)(void))
{
    fcntl(fd, F_SETFL, 0); /* back to blocking reads of a regular file */
    if (!gzip && size == 0) {
        close(fd);
        sbx_http_respond(req, 200, "application/octet-stream", "", 0);
        if (done)
            done();
        return;
    }
    struct download *d = calloc(1, sizeof(*d));
    if (d == NULL)
        abort();
    d->req = req;
    d->fd = fd;
    d->remaining = size;
    d->gzip = gzip;
    d->done = done;
    if (d->gzip) {
        /* Level 1: downloads are dominated by throughput; 15 + 16 selects the gzip wrapper. */
        if (deflateInit2(&d->z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            abort();
        sbx_http_add_header(req, "Content-Encoding", "gzip");
    } else {
        char len[32];
        snprintf(len, sizeof(len), "%lld", (long long)size);
        sbx_http_add_header(req, "Content-Length", len);
    }
    req->data = d;
    sbx_http_req_on_close(req, on_download_closed);
    sbx_http_start(req, 200, "application/octet-stream");
    download_pump(req);
}

/* ---- upload ---- */

struct upload {
    struct sbx_http_req *req;
    struct sbx_agent_user user;
    char *path_param; /* resolved `path` query parameter, NULL if absent */
    json_t *metadata; /* object of strings, NULL if none */
    json_t *results;  /* array of {name,path,type[,metadata]} */
    struct sbx_multipart *mp;
    bool gzip;
    z_stream z;
    bool z_ended;            /* at a gzip member boundary */
    struct sbx_error *error; /* first failure; the rest of the body is drained */
    /* the file being written */
    int fd;
    int dirfd; /* O_PATH fd of its directory */
    char *cur_path;
    bool cur_created;
    bool cur_skip; /* a part not named "file" */
    struct stat cur_st;
    char zout[SBX_AGENT_IO_CHUNK];
};

static void
file_abort(struct upload *up)
{
    if (up->fd < 0)
        return;
    /* No partial content under the final name: remove what this upload created (only if
     * the name in the directory we opened still is our inode), empty what it was
     * overwriting. */
    if (up->cur_created) {
        struct stat now;
        const char *name = sbx_agent_path_base(up->cur_path);
        if (fstatat(up->dirfd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
            now.st_ino == up->cur_st.st_ino && now.st_dev == up->cur_st.st_dev)
            unlinkat(up->dirfd, name, 0);
    } else if (ftruncate(up->fd, 0) < 0) {
        /* nothing more can be done */
    }
    close(up->fd);
    close(up->dirfd);
    up->fd = up->dirfd = -1;
    free(up->cur_path);
    up->cur_path = NULL;
}

static void
upload_free(struct upload *up)
{
    file_abort(up);
    sbx_agent_user_fini(&up->user);
    free(up->path_param);
    json_decref(up->metadata);
    json_decref(up->results);
    sbx_multipart_free(up->mp);
    if (up->gzip)
        inflateEnd(&up->z);
    sbx_error_free(up->error);
    free(up);
}

static int
file_begin(struct upload *up, char *path /* stolen */, struct sbx_error **err)
{
    _cleanup_free_ char *p = path;
    size_t i;
    json_t *r;
    json_array_foreach (up->results, i, r) {
        if (strcmp(json_string_value(json_object_get(r, "path")), p) == 0)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "you cannot upload multiple files to the same path '%s' in "
                                 "one upload request",
                                 p);
    }
    if (json_array_size(up->results) >= SBX_AGENT_UPLOAD_MAX_FILES)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "more than %d files in one upload",
                             SBX_AGENT_UPLOAD_MAX_FILES);
    if (strcmp(p, "/") == 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, EISDIR, "path '%s' is a directory", p);
    /* As the agent, the way envd writes (see fsutil.h for what keeps symlinks in bounds). */
    _cleanup_free_ char *dir = sbx_agent_path_dir(p);
    _cleanup_close_ int dfd = sbx_agent_dir_make(dir, up->user.uid, up->user.gid, NULL, err);
    if (dfd < 0)
        return -1;
    /* A new file first (O_EXCL|O_NOFOLLOW, so we know whether this upload created it), else
     * the existing one, through a final symlink if there is one (envd's semantics); not
     * truncated until we know what it is. 0644 as envd's 0666 & ~022. */
    const char *name = sbx_agent_path_base(p);
    bool created = true;
    int fd = sbx_agent_open_for_user(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY,
                                     0644);
    if (fd < 0 && errno == EEXIST) {
        created = false;
        fd = sbx_agent_open_for_user(dfd, name, O_WRONLY | O_CREAT | O_NOCTTY | O_NONBLOCK, 0644);
    }
    if (fd < 0 && errno == EISDIR)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, EISDIR, "path '%s' is a directory", p);
    if (fd < 0)
        return sbx_agent_open_error(err, errno, "open for writing", p, (int)strlen(p));
    struct stat st;
    if (sbx_agent_fd_is_proc(fd)) {
        close(fd);
        return sbx_error_set(err, SBX_PERMISSION_DENIED, EACCES,
                             "path '%s' is on /proc, which uploads never write", p);
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "path '%s' is not a regular file", p);
    }
    /* envd hands the file to the user before it writes; an existing file then loses its old
     * content, and not before: a failure here leaves it as it was. */
    if (fchown(fd, up->user.uid, up->user.gid) < 0 ||
        (!created && (ftruncate(fd, 0) < 0 || fcntl(fd, F_SETFL, 0) < 0))) {
        int e = errno;
        if (created)
            unlinkat(dfd, name, 0); /* just made by us, still empty */
        close(fd);
        return sbx_agent_open_error(err, e, "open for writing", p, (int)strlen(p));
    }
    up->fd = fd;
    up->dirfd = steal_fd(&dfd);
    up->cur_created = created;
    up->cur_st = st;
    up->cur_path = steal_pointer(&p);
    return 0;
}

static int
file_write(struct upload *up, const char *data, size_t len, struct sbx_error **err)
{
    while (len > 0) {
        ssize_t n = write(up->fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            return sbx_agent_fs_error(err, e, "write '%s'", up->cur_path);
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int
file_end(struct upload *up, struct sbx_error **err)
{
    /* Without metadata headers an upload clears the old metadata (envd). */
    if ((up->metadata || !up->cur_created) &&
        sbx_agent_metadata_write_fd(up->fd, up->metadata, err) < 0) {
        if (up->metadata)
            return -1;
        sbx_error_free(*err); /* clearing on a filesystem without xattrs is fine */
        *err = NULL;
    }
    close(up->dirfd);
    up->dirfd = -1;
    if (close(up->fd) < 0 && (errno == ENOSPC || errno == EDQUOT)) {
        up->fd = -1;
        return sbx_agent_fs_error(err, errno, "close '%s'", up->cur_path);
    }
    up->fd = -1;
    json_t *r = json_object();
    json_object_set_new(r, "name", json_string(sbx_agent_path_base(up->cur_path)));
    json_object_set_new(r, "path", json_string(up->cur_path));
    json_object_set_new(r, "type", json_string("file"));
    if (up->metadata)
        json_object_set(r, "metadata", up->metadata);
    json_array_append_new(up->results, r);
    free(up->cur_path);
    up->cur_path = NULL;
    return 0;
}

/* multipart callbacks */

static int
mp_begin(void *ud, const struct sbx_multipart_part *part, struct sbx_error **err)
{
    struct upload *up = ud;
    up->cur_skip = strcmp(part->name, "file") != 0;
    if (up->cur_skip)
        return 0;
    char *path;
    if (up->path_param) {
        path = strdup(up->path_param);
    } else if (part->filename && part->filename_len > 0) {
        path = sbx_agent_path_resolve(part->filename, part->filename_len, up->user.home, err);
        if (path == NULL)
            return sbx_error_prefix(err, "part filename");
    } else {
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "a part named 'file' has no filename and no path parameter was "
                             "given");
    }
    return file_begin(up, path, err);
}

static int
mp_data(void *ud, const char *data, size_t len, struct sbx_error **err)
{
    struct upload *up = ud;
    if (up->cur_skip)
        return 0;
    return file_write(up, data, len, err);
}

static int
mp_end(void *ud, struct sbx_error **err)
{
    struct upload *up = ud;
    if (up->cur_skip)
        return 0;
    return file_end(up, err);
}

static const struct sbx_multipart_callbacks mp_callbacks = {mp_begin, mp_data, mp_end};

/* Decoded body bytes. */
static int
body_sink(struct upload *up, const char *data, size_t len, struct sbx_error **err)
{
    if (up->mp)
        return sbx_multipart_feed(up->mp, data, len, err);
    return file_write(up, data, len, err);
}

static int
inflate_feed(struct upload *up, const char *data, size_t len, struct sbx_error **err)
{
    up->z.next_in = (Bytef *)data;
    up->z.avail_in = (uInt)len;
    while (up->z.avail_in > 0) {
        if (up->z_ended) {
            /* Another gzip member follows (concatenated members are one stream). */
            inflateReset(&up->z);
            up->z_ended = false;
        }
        up->z.next_out = (Bytef *)up->zout;
        up->z.avail_out = sizeof(up->zout);
        int rc = inflate(&up->z, Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "error decompressing request body: invalid gzip data (%s)",
                                 up->z.msg ? up->z.msg : "corrupt");
        size_t n = sizeof(up->zout) - up->z.avail_out;
        if (n > 0 && body_sink(up, up->zout, n, err) < 0)
            return -1;
        if (rc == Z_STREAM_END)
            up->z_ended = true;
        else if (rc == Z_BUF_ERROR && n == 0)
            break;
    }
    return 0;
}

static void
upload_fail(struct upload *up, struct sbx_error *e /* stolen */)
{
    if (up->error == NULL)
        up->error = e;
    else
        sbx_error_free(e);
    file_abort(up);
}

static void
on_upload_data(struct sbx_http_req *req, const char *data, size_t len)
{
    struct upload *up = req->data;
    if (up == NULL || up->error)
        return; /* draining after a failure, so that the client reads our answer */
    struct sbx_error *e = NULL;
    int rc = up->gzip ? inflate_feed(up, data, len, &e) : body_sink(up, data, len, &e);
    if (rc < 0)
        upload_fail(up, e);
}

static void
on_upload_end(struct sbx_http_req *req)
{
    struct upload *up = req->data;
    if (up == NULL)
        return;
    struct sbx_error *e = NULL;
    if (up->error == NULL && up->gzip && !up->z_ended)
        sbx_error_set(&e, SBX_INVALID_ARGUMENT, 0,
                      "error decompressing request body: unexpected end of gzip data");
    else if (up->error == NULL && up->mp)
        sbx_multipart_finish(up->mp, &e);
    else if (up->error == NULL && up->fd >= 0)
        file_end(up, &e);
    if (e)
        upload_fail(up, e);
    req->data = NULL;
    if (up->error) {
        respond_sbx_error(req, up->error);
    } else {
        char *body = json_dumps(up->results, JSON_COMPACT);
        sbx_http_respond(req, 200, "application/json", body, strlen(body));
        free(body);
    }
    upload_free(up);
}

static void
on_upload_closed(struct sbx_http_req *req)
{
    struct upload *up = req->data;
    req->data = NULL;
    if (up)
        upload_free(up); /* aborts the file being written */
}

/* X-Metadata-<key> headers -> object (keys lowercased by the HTTP layer). */
static int
parse_metadata(const struct sbx_http_req *req, json_t **out, struct sbx_error **err)
{
    static const char prefix[] = "x-metadata-";
    json_t *md = NULL;
    size_t total = 0;
    for (size_t i = 0; i < req->n_headers; i++) {
        const char *name = req->headers[i].name;
        if (strncmp(name, prefix, sizeof(prefix) - 1) != 0)
            continue;
        const char *key = name + sizeof(prefix) - 1;
        if (sbx_agent_metadata_check(key, req->headers[i].value, &total, err) < 0) {
            json_decref(md);
            return -1;
        }
        if (md == NULL)
            md = json_object();
        json_object_set_new(md, key, json_string(req->headers[i].value));
    }
    *out = md;
    return 0;
}

static void
files_post(struct sbx_http_req *req, const struct sbx_agent_config *cfg)
{
    struct files_params p;
    struct upload *up = calloc(1, sizeof(*up));
    if (up == NULL)
        abort();
    up->fd = up->dirfd = -1;
    up->req = req;
    up->results = json_array();
    if (prepare(req, cfg, &p, SBX_SIGNATURE_OP_WRITE, &up->user) < 0) {
        params_fini(&p);
        upload_free(up);
        return;
    }
    _cleanup_error_ struct sbx_error *e = NULL;
    if (p.path != NULL) {
        up->path_param = sbx_agent_path_resolve(p.path, p.path_len, up->user.home, &e);
        if (up->path_param == NULL)
            goto fail;
    }
    if (parse_metadata(req, &up->metadata, &e) < 0)
        goto fail;
    const char *ce = sbx_http_req_header(req, "content-encoding");
    if (ce && *ce && strcasecmp(ce, "identity") != 0) {
        if (strcasecmp(ce, "gzip") != 0) {
            sbx_error_set(&e, SBX_INVALID_ARGUMENT, 0,
                          "unsupported Content-Encoding: %s, supported: [gzip]", ce);
            goto fail;
        }
        up->gzip = true;
        if (inflateInit2(&up->z, 15 + 16) != Z_OK)
            abort();
    }
    const char *ct = sbx_http_req_header(req, "content-type");
    if (ct && strncasecmp(ct, "multipart/", 10) == 0) {
        _cleanup_free_ char *boundary = sbx_multipart_boundary(ct, &e);
        if (boundary == NULL)
            goto fail;
        up->mp = sbx_multipart_new(boundary, &mp_callbacks, up);
    } else if (ct && strncasecmp(ct, "application/octet-stream", 24) == 0) {
        if (up->path_param == NULL) {
            sbx_error_set(&e, SBX_INVALID_ARGUMENT, 0,
                          "the path query parameter is required for octet-stream uploads");
            goto fail;
        }
        /* Open at once: an empty body still creates (or empties) the file. */
        char *path = strdup(up->path_param);
        if (file_begin(up, path, &e) < 0)
            goto fail;
    } else {
        sbx_error_set(&e, SBX_INVALID_ARGUMENT, 0, "unsupported content type '%s'", ct ? ct : "");
        goto fail;
    }
    params_fini(&p);
    req->data = up;
    sbx_http_req_on_close(req, on_upload_closed);
    sbx_http_req_stream_body(req, on_upload_data, on_upload_end);
    return;
fail:
    params_fini(&p);
    /* Answer after draining the body, so the client is still listening for it. */
    up->error = steal_pointer(&e);
    req->data = up;
    sbx_http_req_on_close(req, on_upload_closed);
    sbx_http_req_stream_body(req, on_upload_data, on_upload_end);
}

bool
sbx_agent_files_handle(struct sbx_http_req *req, const struct sbx_agent_config *cfg)
{
    if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0)
        files_get(req, cfg);
    else if (strcmp(req->method, "POST") == 0)
        files_post(req, cfg);
    else
        sbx_http_respond_error(req, 405, "method %s not allowed on /files", req->method);
    return true;
}
