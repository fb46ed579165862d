/* The Template SDK's endpoints (shared spec templates.md §2): requesting a build, the COPY
 * archives' cache probe and upload, starting a build and polling its status and logs,
 * aliases, tags, listing and deleting templates. Status codes are exactly those the Python
 * SDK insists on (§1.1). Builds run in builder.c. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/builder.h"
#include "daemon/internal.h"
#include "daemon/tar.h"
#include "json/json.h"
#include "daemon/templates.h"
#include "spawner/templates.h"

#define UPLOAD_PATH    "/templates/files/upload"
#define LOGS_PAGE_MAX  100
#define CPU_MAX        32
#define MEMORY_MIN_MB  128
#define BUILD_ID_CHARS 36

static void
bad_request(struct sbx_http_req *req, const char *msg)
{
    sbx_http_respond_error(req, 400, "%s", msg);
}

static bool
is_uuid(const char *s)
{
    if (strlen(s) != BUILD_ID_CHARS)
        return false;
    for (int i = 0; i < BUILD_ID_CHARS; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

void
sbx_api_new_uuid(char out[BUILD_ID_CHARS + 1])
{
    char hex[33];
    sbx_random_hex(hex, 16);
    hex[12] = '4';                              /* version 4 */
    hex[16] = "89ab"[(hex[16] - '0' + 16) % 4]; /* variant 10xx */
    snprintf(out, BUILD_ID_CHARS + 1, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16,
             hex + 20);
}

static bool
is_hash(const char *s)
{
    return strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

/* ---- POST /v3/templates ---- */

static int
parse_resources(json_t *body, int *cpu, int *mem, struct sbx_error **err)
{
    int64_t c = 2, m = 1024;
    if (sbx_json_opt_int(body, "cpuCount", &c, err) < 0 ||
        sbx_json_opt_int(body, "memoryMB", &m, err) < 0)
        return -1;
    if (c < 1 || c > CPU_MAX || (c != 1 && c % 2))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "CPU count must be 1 or an even number up to %d", CPU_MAX);
    if (m < MEMORY_MIN_MB || m % 2 || m > (1 << 20))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "Memory must be divisible by 2 and at least %d MiB", MEMORY_MIN_MB);
    if (json_object_get(body, "minFreeDiskMb") &&
        !json_is_null(json_object_get(body, "minFreeDiskMb")))
        return sbx_error_set(
            err, SBX_INVALID_ARGUMENT, 0,
            "minFreeDiskMb is not supported: sandboxes get the server's --disk-mb");
    *cpu = (int)c;
    *mem = (int)m;
    return 0;
}

/* The tags of a build request: the name's, then tags[], checked, each once; none: default. */
static json_t *
request_tags(json_t *body, const struct sbx_template_name *n, struct sbx_error **err)
{
    json_t *tags = json_array();
    if (n->tag[0])
        json_array_append_new(tags, json_string(n->tag));
    json_t *more = json_object_get(body, "tags");
    if (more && !json_is_array(more)) {
        json_decref(tags);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "tags must be an array"), NULL;
    }
    size_t i;
    json_t *t;
    json_array_foreach (more, i, t) {
        const char *v = json_string_value(t);
        if (v == NULL || sbx_template_tag_check(v, err) < 0) {
            json_decref(tags);
            if (v == NULL)
                sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "tags must be strings");
            return NULL;
        }
        bool seen = false;
        for (size_t k = 0; k < json_array_size(tags); k++)
            seen = seen || strcmp(json_string_value(json_array_get(tags, k)), v) == 0;
        if (!seen)
            json_array_append_new(tags, json_string(v));
    }
    if (json_array_size(tags) == 0 && n->tag[0] == '\0')
        json_array_append_new(tags, json_string("default"));
    return tags;
}

static void
request_build(struct sbx_http_req *req, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_store *store = sbx_daemon->store;
    const char *name = json_string_value(json_object_get(body, "name"));
    if (name == NULL)
        name = json_string_value(json_object_get(body, "alias"));
    struct sbx_template_name n;
    int cpu = 0, mem = 0;
    if (name == NULL)
        return bad_request(req, "Invalid name: a template name is required");
    if (sbx_template_name_parse(name, &n, &err) < 0 || parse_resources(body, &cpu, &mem, &err) < 0)
        return sbx_api_respond_err(req, err);
    if (sbx_builtin_template_find(n.alias))
        return sbx_http_respond_error(
            req, 400, "Invalid name: '%s' is a built-in template of this server", n.alias);
    json_t *tags = request_tags(body, &n, &err);
    if (tags == NULL)
        return sbx_api_respond_err(req, err);
    struct sbx_template_rec t = {0};
    if (sbx_store_template_get(store, n.alias, &t, &err) < 0) {
        sbx_error_free(err);
        err = NULL;
        sbx_random_id(t.id, SBX_STORE_TEMPLATE_ID_LEN);
        t.alias = strdup(n.alias);
        t.created_at_ms = sbx_wall_ms();
        if (sbx_store_template_insert(store, &t, &err) < 0) {
            sbx_template_rec_fini(&t);
            json_decref(tags);
            return sbx_api_respond_err(req, err);
        }
    }
    bool busy = false;
    if (sbx_store_template_busy(store, t.id, &busy, &err) < 0 || busy) {
        sbx_template_rec_fini(&t);
        json_decref(tags);
        if (err)
            return sbx_api_respond_err(req, err);
        return sbx_http_respond_error(req, 409, "a build of template '%s' is in progress", n.alias);
    }
    struct sbx_build_rec b = {.cpu_count = cpu, .memory_mb = mem, .created_at_ms = sbx_wall_ms()};
    sbx_api_new_uuid(b.id);
    snprintf(b.template_id, sizeof(b.template_id), "%s", t.id);
    b.status = "waiting";
    b.tags_json = json_dumps(tags, JSON_COMPACT);
    int rc = sbx_store_build_insert(store, &b, &err);
    free(b.tags_json);
    if (rc < 0) {
        sbx_template_rec_fini(&t);
        json_decref(tags);
        return sbx_api_respond_err(req, err);
    }
    sbx_api_respond_json(req, 202,
                         json_pack("{s:s,s:s,s:b,s:[s],s:[s],s:o}", "templateID", t.id, "buildID",
                                   b.id, "public", 0, "names", t.alias, "aliases", t.alias, "tags",
                                   tags));
    sbx_template_rec_fini(&t);
}

/* ---- files: probe, upload URL, upload ---- */

static void
upload_token(const char *hash, int64_t expires, char out[65])
{
    char msg[128];
    int n = snprintf(msg, sizeof(msg), "%s%c%" PRId64, hash, '\0', expires);
    unsigned char md[32];
    unsigned int len = 0;
    HMAC(EVP_sha256(), sbx_daemon->upload_key, (int)strlen(sbx_daemon->upload_key),
         (const unsigned char *)msg, (size_t)n, md, &len);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void
files_probe(struct sbx_http_req *req, const char *template_id, const char *hash)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_template_rec t = {0};
    if (!is_hash(hash))
        return bad_request(req, "Invalid files hash");
    if (sbx_store_template_get(sbx_daemon->store, template_id, &t, &err) < 0)
        return sbx_api_respond_err(req, err);
    sbx_template_rec_fini(&t);
    /* The URL points back at us: the PUT carries no API key, its token authorises it. */
    const char *host = sbx_http_req_header(req, "host");
    int64_t expires = sbx_wall_ms() / 1000 + SBX_UPLOAD_URL_TTL_S;
    char token[65];
    upload_token(hash, expires, token);
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "http://%s" UPLOAD_PATH "?hash=%s&expires=%" PRId64 "&token=%s",
                 host ? host : "127.0.0.1", hash, expires, token) < 0)
        abort();
    sbx_api_respond_json(req, 201,
                         json_pack("{s:b,s:s}", "present",
                                   sbx_store_upload_has(sbx_daemon->store, hash, true), "url",
                                   url));
}

struct upload {
    char hash[65];
    char tmp[4096];
    int fd;
    uint64_t size;
    struct sbx_tar_check *check;
    struct sbx_error *err; /* the first problem; the rest of the body is drained */
};

static void
upload_free(struct upload *u)
{
    if (u->fd >= 0)
        close(u->fd);
    if (u->tmp[0])
        unlink(u->tmp);
    sbx_tar_check_free(u->check);
    sbx_error_free(u->err);
    free(u);
}

static void
on_upload_close(struct sbx_http_req *req)
{
    upload_free(req->data);
    req->data = NULL;
}

static void
on_upload_data(struct sbx_http_req *req, const char *data, size_t len)
{
    struct upload *u = req->data;
    if (u->err)
        return;
    if ((u->size += len) > SBX_UPLOAD_MAX_BYTES) {
        sbx_error_set(&u->err, SBX_INVALID_ARGUMENT, 0, "the archive is larger than %llu bytes",
                      (unsigned long long)SBX_UPLOAD_MAX_BYTES);
        return;
    }
    if (sbx_tar_check_feed(u->check, data, len, &u->err) < 0)
        return;
    for (size_t off = 0; off < len;) {
        ssize_t n = write(u->fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            sbx_error_sys(&u->err, errno, "store the archive");
            return;
        }
        off += (size_t)n;
    }
}

static void
on_upload_end(struct sbx_http_req *req)
{
    struct upload *u = req->data;
    req->data = NULL;
    sbx_http_req_on_close(req, NULL);
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.tar", sbx_daemon->uploads_dir, u->hash);
    if (u->err == NULL && sbx_tar_check_finish(u->check, &u->err) == 0) {
        /* Written to a temporary file and renamed: two PUTs of one hash (JS uploads COPY
         * steps in parallel) leave one whole archive. */
        if (fsync(u->fd) < 0 || rename(u->tmp, path) < 0)
            sbx_error_sys(&u->err, errno, "store the archive");
        else
            u->tmp[0] = '\0';
    }
    if (u->err == NULL)
        sbx_store_upload_add(sbx_daemon->store, u->hash, (int64_t)u->size, &u->err);
    if (u->err) {
        sbx_http_respond_error(req, u->err->code == SBX_INVALID_ARGUMENT ? 400 : 500,
                               "invalid archive: %s", u->err->msg);
    } else {
        sbx_http_respond(req, 200, "application/json", "{}", 2);
    }
    upload_free(u);
}

/* Deletes the archives unused for SBX_UPLOAD_KEEP_MS, and files of the uploads dir that no
 * row names and nothing has written for a day: what a crash left between a write and its
 * rename, or between the rename and the row. Uploads would otherwise fill the disk. */
void
sbx_api_templates_collect_uploads(void)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_buf expired = {0};
    int64_t now = sbx_wall_ms();
    if (sbx_store_uploads_expire(sbx_daemon->store, now - SBX_UPLOAD_KEEP_MS, &expired, &err) < 0)
        sbx_log_warn("upload_gc", "error=\"%s\"", err->msg);
    _cleanup_close_ int dir = open(sbx_daemon->uploads_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    size_t removed = 0;
    for (size_t off = 0; dir >= 0 && off + 64 <= expired.len; off += 64) {
        char name[80];
        snprintf(name, sizeof(name), "%.64s.tar", expired.data + off);
        removed += unlinkat(dir, name, 0) == 0;
    }
    sbx_buf_fini(&expired);
    DIR *d = dir >= 0 ? fdopendir(dup(dir)) : NULL;
    for (struct dirent *e; d && (e = readdir(d));) {
        struct stat st;
        char hash[65] = "";
        sscanf(e->d_name, "%64[0-9a-f].tar", hash);
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            fstatat(dir, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            now - (int64_t)st.st_mtime * 1000 < 24LL * 3600 * 1000 ||
            (is_hash(hash) && sbx_store_upload_has(sbx_daemon->store, hash, false)))
            continue;
        removed += unlinkat(dir, e->d_name, 0) == 0;
    }
    if (d)
        closedir(d);
    if (removed > 0)
        sbx_log_info("upload_gc", "removed=%zu", removed);
}

bool
sbx_api_templates_is_upload(const struct sbx_http_req *req)
{
    return strcmp(req->method, "PUT") == 0 && strcmp(req->path, UPLOAD_PATH) == 0;
}

void
sbx_api_templates_upload(struct sbx_http_req *req)
{
    _cleanup_free_ char *hash = sbx_http_req_query(req, "hash");
    _cleanup_free_ char *exp = sbx_http_req_query(req, "expires");
    _cleanup_free_ char *token = sbx_http_req_query(req, "token");
    if (hash == NULL || exp == NULL || token == NULL || !is_hash(hash))
        return sbx_http_respond_error(req, 401, "invalid upload URL");
    char *end = NULL;
    long long expires = strtoll(exp, &end, 10);
    char want[65];
    upload_token(hash, expires, want);
    /* Constant time: how long the check takes tells nothing of the token. */
    if (*end != '\0' || strlen(token) != 64 || CRYPTO_memcmp(want, token, 64) != 0)
        return sbx_http_respond_error(req, 401, "invalid upload URL");
    if (expires < sbx_wall_ms() / 1000)
        return sbx_http_respond_error(req, 401, "the upload URL has expired");
    sbx_http_req_mark_authenticated(req);
    struct upload *u = calloc(1, sizeof(*u));
    if (u == NULL)
        abort();
    snprintf(u->hash, sizeof(u->hash), "%s", hash);
    char rnd[17];
    sbx_random_hex(rnd, 8);
    snprintf(u->tmp, sizeof(u->tmp), "%s/.%s.%s", sbx_daemon->uploads_dir, hash, rnd);
    u->fd = open(u->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    u->check = sbx_tar_check_new(SBX_UPLOAD_MAX_BYTES, SBX_UPLOAD_MAX_ENTRIES);
    if (u->fd < 0) {
        u->tmp[0] = '\0';
        upload_free(u);
        return sbx_http_respond_error(req, 500, "cannot store the archive: %s", strerror(errno));
    }
    req->data = u;
    sbx_http_req_on_close(req, on_upload_close);
    sbx_http_req_stream_body(req, on_upload_data, on_upload_end);
}

/* ---- builds ---- */

static int
find_build(const char *template_id, const char *build_id, struct sbx_build_rec *out,
           struct sbx_error **err)
{
    struct sbx_template_rec t = {0};
    if (sbx_store_template_get(sbx_daemon->store, template_id, &t, err) < 0)
        return -1;
    int rc = sbx_store_build_get(sbx_daemon->store, build_id, out, err);
    if (rc == 0 && strcmp(out->template_id, t.id) != 0) {
        sbx_build_rec_fini(out);
        rc = sbx_error_set(err, SBX_NOT_FOUND, 0, "build '%s' not found", build_id);
    }
    sbx_template_rec_fini(&t);
    return rc;
}

static void
start_build(struct sbx_http_req *req, const char *template_id, const char *build_id, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    if (!is_uuid(build_id))
        return sbx_http_respond_error(req, 400, "Invalid build ID: %s", build_id);
    struct sbx_build_rec b;
    if (find_build(template_id, build_id, &b, &err) < 0)
        return sbx_api_respond_err(req, err);
    if (strcmp(b.status, "waiting") != 0) {
        sbx_build_rec_fini(&b);
        return bad_request(req, "build is not in waiting state");
    }
    if (sbx_builder_start(&b, body, &err) < 0) {
        sbx_build_rec_fini(&b);
        if (err->code == SBX_RESOURCE_EXHAUSTED)
            return sbx_http_respond_error(req, 429, "%s", err->msg);
        return sbx_api_respond_err(req, err);
    }
    sbx_http_respond(req, 202, NULL, NULL, 0);
}

static json_t *
log_entries(const char *build_id, int64_t offset, int limit, struct sbx_error **err)
{
    struct sbx_build_log_rec *logs;
    size_t n;
    if (sbx_store_build_logs(sbx_daemon->store, build_id, offset, limit, &logs, &n, err) < 0)
        return NULL;
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_pack("{s:o,s:s,s:s}", "timestamp", sbx_api_time_json(logs[i].at_ms),
                              "level", logs[i].level, "message", logs[i].message);
        if (logs[i].step)
            json_object_set_new(e, "step", json_string(logs[i].step));
        json_array_append_new(arr, e);
    }
    sbx_build_logs_free(logs, n);
    return arr;
}

static void
build_status(struct sbx_http_req *req, const char *template_id, const char *build_id)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    _cleanup_free_ char *off_s = sbx_http_req_query(req, "logsOffset");
    _cleanup_free_ char *limit_s = sbx_http_req_query(req, "limit");
    int64_t offset = off_s ? strtoll(off_s, NULL, 10) : 0;
    int limit = limit_s ? atoi(limit_s) : LOGS_PAGE_MAX;
    if (offset < 0 || limit < 0 || limit > LOGS_PAGE_MAX)
        return bad_request(req, "logsOffset must be >= 0 and limit between 0 and 100");
    struct sbx_build_rec b;
    if (find_build(template_id, build_id, &b, &err) < 0)
        return sbx_api_respond_err(req, err);
    json_t *entries = log_entries(b.id, offset, limit, &err);
    if (entries == NULL) {
        sbx_build_rec_fini(&b);
        return sbx_api_respond_err(req, err);
    }
    json_t *o = json_pack("{s:s,s:s,s:s,s:[],s:o}", "templateID", b.template_id, "buildID", b.id,
                          "status", b.status, "logs", "logEntries", entries);
    if (b.reason_json) {
        json_error_t jerr;
        json_t *reason = json_loads(b.reason_json, 0, &jerr);
        if (reason)
            json_object_set_new(o, "reason", reason);
    }
    sbx_build_rec_fini(&b);
    sbx_api_respond_json(req, 200, o);
}

/* ---- aliases, tags, delete, list ---- */

static void
alias_exists(struct sbx_http_req *req, const char *alias)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    if (sbx_templates_resolve(sbx_daemon->store, alias, &ref, &err) < 0)
        return sbx_api_respond_err(req, err);
    sbx_api_respond_json(req, 200, json_pack("{s:s,s:b}", "templateID", ref.id, "public", 0));
}

static void
assign_tags(struct sbx_http_req *req, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    const char *target = json_string_value(json_object_get(body, "target"));
    json_t *tags = json_object_get(body, "tags");
    _cleanup_template_ref_ struct sbx_template_ref ref = {0};
    if (target == NULL || !json_is_array(tags))
        return bad_request(req, "target and tags are required");
    if (json_array_size(tags) == 0)
        return bad_request(req, "At least one tag is required");
    size_t i;
    json_t *t;
    json_array_foreach (tags, i, t) {
        if (!json_is_string(t) || sbx_template_tag_check(json_string_value(t), &err) < 0)
            return err ? sbx_api_respond_err(req, err) : bad_request(req, "tags must be strings");
    }
    if (sbx_templates_resolve(sbx_daemon->store, target, &ref, &err) < 0)
        return sbx_api_respond_err(req, err);
    if (ref.build_id[0] == '\0')
        return bad_request(req, "the tags of a built-in template cannot change");
    json_array_foreach (tags, i, t) {
        if (sbx_store_tag_set(sbx_daemon->store, ref.id, json_string_value(t), ref.build_id, &err) <
            0)
            return sbx_api_respond_err(req, err);
    }
    sbx_api_respond_json(req, 201, json_pack("{s:s,s:O}", "buildID", ref.build_id, "tags", tags));
}

static void
remove_tags(struct sbx_http_req *req, json_t *body)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    const char *name = json_string_value(json_object_get(body, "name"));
    json_t *tags = json_object_get(body, "tags");
    struct sbx_template_name n;
    struct sbx_template_rec t = {0};
    if (name == NULL || !json_is_array(tags))
        return bad_request(req, "name and tags are required");
    if (json_array_size(tags) == 0)
        return bad_request(req, "At least one tag is required");
    if (sbx_template_name_parse(name, &n, &err) < 0)
        return sbx_api_respond_err(req, err);
    if (n.tag[0] || strchr(name, ':'))
        return bad_request(req, "the name must not contain a tag");
    if (sbx_store_template_get(sbx_daemon->store, n.alias, &t, &err) < 0)
        return sbx_api_respond_err(req, err);
    size_t i;
    json_t *tag;
    json_array_foreach (tags, i, tag) {
        const char *v = json_string_value(tag);
        if (v && strcmp(v, "default") == 0) {
            sbx_template_rec_fini(&t);
            return bad_request(req, "Cannot delete the 'default' tag");
        }
        if (v == NULL || sbx_store_tag_delete(sbx_daemon->store, t.id, v, &err) < 0) {
            sbx_template_rec_fini(&t);
            return err ? sbx_api_respond_err(req, err) : bad_request(req, "tags must be strings");
        }
    }
    sbx_template_rec_fini(&t);
    sbx_http_respond(req, 204, NULL, NULL, 0);
}

static void
list_tags(struct sbx_http_req *req, const char *id)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_template_rec t = {0};
    struct sbx_tag_rec *tags;
    size_t n;
    if (sbx_store_template_get(sbx_daemon->store, id, &t, &err) < 0 ||
        sbx_store_tags_list(sbx_daemon->store, t.id, &tags, &n, &err) < 0) {
        sbx_template_rec_fini(&t);
        return sbx_api_respond_err(req, err);
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:o}", "tag", tags[i].tag, "buildID",
                                             tags[i].build_id, "createdAt",
                                             sbx_api_time_json(tags[i].created_at_ms)));
    free(tags);
    sbx_template_rec_fini(&t);
    sbx_api_respond_json(req, 200, arr);
}

static void
delete_template(struct sbx_http_req *req, const char *id_or_name)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_template_name n;
    struct sbx_template_rec t = {0};
    if (sbx_template_name_parse(id_or_name, &n, &err) < 0)
        return sbx_api_respond_err(req, err);
    if (sbx_builtin_template_find(n.alias))
        return bad_request(req, "built-in templates cannot be deleted");
    if (sbx_store_template_get(sbx_daemon->store, n.alias, &t, &err) < 0)
        return sbx_api_respond_err(req, err);
    /* A snapshot is deleted by its id, tag and all ("<id>:default", "team/name:tag": the whole
     * snapshot goes, spec lifecycle.md §4.3); a built template's tag is never taken for the
     * whole template. */
    if (!t.snapshot && (n.tag[0] || strchr(id_or_name, ':'))) {
        sbx_template_rec_fini(&t);
        return bad_request(req, "delete a template by its name, without a tag (remove a tag "
                                "with DELETE /templates/tags)");
    }
    bool busy = false;
    if (sbx_store_template_busy(sbx_daemon->store, t.id, &busy, &err) == 0 && busy)
        sbx_error_set(&err, SBX_FAILED_PRECONDITION, 0, "template '%s' is being built", t.alias);
    /* Running sandboxes keep their layers mounted; their template must outlive them. */
    for (struct sbx_live *l = sbx_daemon->live; err == NULL && l; l = l->next)
        if (strcmp(l->rec->template_id, t.id) == 0)
            sbx_error_set(&err, SBX_FAILED_PRECONDITION, 0,
                          "template '%s' is used by running sandbox %s; kill it first", t.alias,
                          l->rec->id);
    if (err == NULL)
        sbx_store_template_delete(sbx_daemon->store, t.id, &err);
    sbx_template_rec_fini(&t);
    if (err && err->code == SBX_FAILED_PRECONDITION)
        return bad_request(req, err->msg);
    if (err)
        return sbx_api_respond_err(req, err);
    sbx_builder_collect_layers();
    sbx_http_respond(req, 204, NULL, NULL, 0);
}

static void
list_templates(struct sbx_http_req *req)
{
    _cleanup_error_ struct sbx_error *err = NULL;
    struct sbx_template_rec *ts;
    size_t n;
    if (sbx_store_template_list(sbx_daemon->store, &ts, &n, &err) < 0)
        return sbx_api_respond_err(req, err);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        if (ts[i].snapshot) { /* GET /snapshots lists those */
            sbx_template_rec_fini(&ts[i]);
            continue;
        }
        _cleanup_template_ref_ struct sbx_template_ref ref = {0};
        struct sbx_error *e = NULL;
        bool ready = sbx_templates_resolve(sbx_daemon->store, ts[i].alias, &ref, &e) == 0;
        sbx_error_free(e);
        json_t *o = json_pack("{s:s,s:b,s:[s],s:[s],s:o,s:o,s:i,s:s}", "templateID", ts[i].id,
                              "public", 0, "aliases", ts[i].alias, "names", ts[i].alias,
                              "createdAt", sbx_api_time_json(ts[i].created_at_ms), "updatedAt",
                              sbx_api_time_json(ts[i].created_at_ms), "diskSizeMB",
                              sbx_daemon->cfg.disk_mb, "envdVersion", SBX_ENVD_VERSION);
        json_object_set_new(o, "buildStatus", json_string(ready ? "ready" : "error"));
        if (ready) {
            json_object_set_new(o, "buildID", json_string(ref.build_id));
            json_object_set_new(o, "cpuCount", json_integer(ref.cpu_count));
            json_object_set_new(o, "memoryMB", json_integer(ref.memory_mb));
        }
        json_array_append_new(arr, o);
        sbx_template_rec_fini(&ts[i]);
    }
    free(ts);
    sbx_api_respond_json(req, 200, arr);
}

void
sbx_api_templates_dispatch(struct sbx_http_req *req, json_t *body, char **p, size_t n)
{
    const char *m = req->method;
    bool get = strcmp(m, "GET") == 0, post = strcmp(m, "POST") == 0, del = strcmp(m, "DELETE") == 0;
    /* p[0] is "templates"; segments are percent-decoded by the caller. */
    if (n == 1 && post)
        return request_build(req, body ? body : json_object());
    if (n == 1 && get)
        return list_templates(req);
    if (n == 2 && strcmp(p[1], "tags") == 0 && (post || del))
        return post ? assign_tags(req, body) : remove_tags(req, body);
    if (n == 2 && del)
        return delete_template(req, p[1]);
    if (n == 3 && get && strcmp(p[1], "aliases") == 0)
        return alias_exists(req, p[2]);
    if (n == 3 && get && strcmp(p[2], "tags") == 0)
        return list_tags(req, p[1]);
    if (n == 4 && get && strcmp(p[2], "files") == 0)
        return files_probe(req, p[1], p[3]);
    if (n == 4 && post && strcmp(p[2], "builds") == 0)
        return start_build(req, p[1], p[3], body ? body : json_object());
    if (n == 5 && get && strcmp(p[2], "builds") == 0 && strcmp(p[4], "status") == 0)
        return build_status(req, p[1], p[3]);
    sbx_http_respond_error(req, 404, "no route for %s %s", m, req->path);
}
