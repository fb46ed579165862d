/* sbx template: ls, rm and build of templates, through the Template SDK's endpoints.
 *
 *   sbx template ls                      GET /templates
 *   sbx template rm NAME...              DELETE /templates/<name>
 *   sbx template build FILE --name NAME  a Dockerfile of FROM, RUN, ENV, ARG, WORKDIR, USER,
 *                                        CMD/ENTRYPOINT (the start command) as the SDK's
 *                                        fromDockerfile reads one; COPY and ADD need the
 *                                        files of a context: build those with the SDK.
 *   sbx template import TAR [NAME]       a template of an image archive: an OCI archive
 *                                        (skopeo copy ... oci-archive:) or a docker archive
 *                                        (docker save); NAME defaults to TAR's file name.
 *
 * The build follows the SDK: POST /v3/templates, POST /v2/templates/{id}/builds/{bid}, then
 * the status with its logs every 200 ms until the build ends. An import uploads the archive
 * as the SDK uploads a COPY's files (the probe by hash, then a PUT to the URL it names), and
 * builds from the image "archive:sha256:<hash of the archive>", which names that upload. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "cli/client.h"
#include "spawner/image_ref.h"

#define POLL_MS        200
#define DOCKERFILE_MAX (1 << 20)

static const char usage[] = "usage: sbx template ls [--format table|json]\n"
                            "       sbx template rm NAME...\n"
                            "       sbx template build FILE --name NAME [--cpu N] [--memory-mb N]\n"
                            "       sbx template import TAR [NAME] [--cpu N] [--memory-mb N]\n"
                            "         TAR: an OCI archive or a docker archive (docker save);\n"
                            "         NAME: the template's, by default TAR's file name\n"
                            "       (each also takes --api-url URL --api-key KEY)\n";

/* ---- the Dockerfile ---- */

static json_t *
step(const char *type)
{
    return json_pack("{s:s,s:[],s:b}", "type", type, "args", "force", 0);
}

/* "KEY=VALUE ..." or "KEY VALUE" into an ENV step's arguments. */
static int
env_args(json_t *args, const char *rest, struct sbx_error **err)
{
    if (strchr(rest, '=') == NULL) {
        const char *sp = strchr(rest, ' ');
        if (sp == NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "ENV %s: no value", rest);
        json_array_append_new(args, json_stringn(rest, (size_t)(sp - rest)));
        json_array_append_new(args, json_string(sp + 1 + strspn(sp + 1, " ")));
        return 0;
    }
    /* KEY=VALUE pairs; a value may be quoted ("two words"). */
    for (const char *p = rest; *p;) {
        p += strspn(p, " \t");
        if (*p == '\0')
            break;
        const char *eq = strchr(p, '=');
        size_t klen = eq ? (size_t)(eq - p) : 0;
        if (eq == NULL || klen == 0 || memchr(p, ' ', klen) != NULL)
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "ENV: '%.40s' is not KEY=VALUE", p);
        const char *v = eq + 1, *end;
        size_t vlen;
        if (*v == '"' || *v == '\'') {
            end = strchr(v + 1, *v);
            if (end == NULL)
                return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "ENV: unterminated quote");
            vlen = (size_t)(end - v - 1);
            v++;
            end++;
        } else {
            vlen = strcspn(v, " \t");
            end = v + vlen;
        }
        json_array_append_new(args, json_stringn(p, klen));
        json_array_append_new(args, json_stringn(v, vlen));
        p = end;
    }
    return 0;
}

/* CMD/ENTRYPOINT: the exec form (a JSON array) joined by spaces, or the shell form. */
static char *
command_of(const char *rest)
{
    json_error_t jerr;
    json_t *arr = rest[0] == '[' ? json_loads(rest, 0, &jerr) : NULL;
    if (!json_is_array(arr)) {
        json_decref(arr);
        return strdup(rest);
    }
    struct sbx_buf b = {0};
    size_t i;
    json_t *v;
    json_array_foreach (arr, i, v)
        sbx_buf_printf(&b, "%s%s", i ? " " : "", json_is_string(v) ? json_string_value(v) : "");
    sbx_buf_append(&b, "", 1, SIZE_MAX);
    json_decref(arr);
    return b.data;
}

/* One instruction (continuation lines already joined) into the build definition. */
static int
instruction(json_t *def, const char *line, struct sbx_error **err)
{
    char op[16] = {0};
    size_t n = strcspn(line, " \t");
    if (n == 0 || n >= sizeof(op))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "bad instruction '%.40s'", line);
    for (size_t i = 0; i < n; i++)
        op[i] = (char)(line[i] >= 'a' && line[i] <= 'z' ? line[i] - 32 : line[i]);
    const char *rest = line + n + strspn(line + n, " \t");
    json_t *steps = json_object_get(def, "steps");
    if (strcmp(op, "FROM") == 0) {
        if (json_object_get(def, "fromImage") || json_object_get(def, "fromTemplate"))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "multi-stage builds (a second FROM) are not supported");
        /* An image (e2bdev/base, debian:<suite>, ...) or a template of the server. */
        bool image = strchr(rest, ':') != NULL || strchr(rest, '/') != NULL;
        json_object_set_new(def, image ? "fromImage" : "fromTemplate", json_string(rest));
        return 0;
    }
    if (*rest == '\0')
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s needs an argument", op);
    json_t *s = NULL;
    if (strcmp(op, "RUN") == 0 || strcmp(op, "WORKDIR") == 0 || strcmp(op, "USER") == 0) {
        s = step(op);
        json_array_append_new(json_object_get(s, "args"), json_string(rest));
    } else if (strcmp(op, "ENV") == 0 || strcmp(op, "ARG") == 0) {
        s = step("ENV");
        bool bare_arg = strcmp(op, "ARG") == 0 && strchr(rest, '=') == NULL;
        if (bare_arg) { /* ARG without a default: an empty value, as the SDK does */
            json_array_append_new(json_object_get(s, "args"), json_string(rest));
            json_array_append_new(json_object_get(s, "args"), json_string(""));
        } else if (env_args(json_object_get(s, "args"), rest, err) < 0) {
            json_decref(s);
            return -1;
        }
    } else if (strcmp(op, "CMD") == 0 || strcmp(op, "ENTRYPOINT") == 0) {
        _cleanup_free_ char *cmd = command_of(rest);
        json_object_set_new(def, "startCmd", json_string(cmd));
        return 0;
    } else if (strcmp(op, "EXPOSE") == 0 || strcmp(op, "VOLUME") == 0 || strcmp(op, "LABEL") == 0 ||
               strcmp(op, "MAINTAINER") == 0) {
        return 0;
    } else {
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "%s is not supported by sbx template build%s", op,
                             strcmp(op, "COPY") == 0 || strcmp(op, "ADD") == 0
                                 ? " (it needs a file context: build with the Template SDK)"
                                 : "");
    }
    json_array_append_new(steps, s);
    return 0;
}

int
sbx_cli_dockerfile_parse(const char *text, json_t **out, struct sbx_error **err)
{
    json_t *def = json_pack("{s:[],s:b}", "steps", "force", 0);
    struct sbx_buf line = {0};
    int rc = 0;
    for (const char *p = text; rc == 0 && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        const char *s = p;
        while (len > 0 && (*s == ' ' || *s == '\t')) {
            s++;
            len--;
        }
        bool cont = len > 0 && s[len - 1] == '\\';
        if (len > 0 && *s != '#') {
            if (line.len > 0)
                sbx_buf_append(&line, " ", 1, SIZE_MAX);
            sbx_buf_append(&line, s, cont ? len - 1 : len, SIZE_MAX);
        }
        if (!cont && line.len > 0) {
            sbx_buf_append(&line, "", 1, SIZE_MAX);
            rc = instruction(def, line.data, err);
            line.len = 0;
        }
        p = nl ? nl + 1 : p + strlen(p);
    }
    if (rc == 0 && line.len > 0) {
        sbx_buf_append(&line, "", 1, SIZE_MAX);
        rc = instruction(def, line.data, err);
    }
    sbx_buf_fini(&line);
    if (rc == 0 && !json_object_get(def, "fromImage") && !json_object_get(def, "fromTemplate"))
        rc = sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "the Dockerfile has no FROM");
    if (rc < 0) {
        json_decref(def);
        return -1;
    }
    *out = def;
    return 0;
}

/* ---- the verbs ---- */

static int
call_json(const struct sbx_cli_config *cfg, const char *method, const char *path, json_t *body,
          long want, json_t **out, struct sbx_error **err)
{
    struct sbx_cli_response resp;
    int rc = sbx_cli_api_call(cfg, method, path, body, &resp, err);
    if (rc == 0 && resp.status != want)
        rc = sbx_cli_api_error(&resp, err);
    if (rc == 0 && out)
        rc = (*out = sbx_cli_response_json(&resp, err)) ? 0 : -1;
    sbx_cli_response_fini(&resp);
    return rc;
}

static void
print_table(json_t *all)
{
    printf("%-22s %-32s %-7s %4s %8s\n", "TEMPLATE ID", "NAME", "STATUS", "CPU", "MEMORY");
    size_t i;
    json_t *t;
    json_array_foreach (all, i, t) {
        json_t *names = json_object_get(t, "names");
        printf("%-22s %-32s %-7s %4lld %6lldMi\n",
               json_string_value(json_object_get(t, "templateID")),
               json_string_value(json_array_get(names, 0)),
               json_string_value(json_object_get(t, "buildStatus")),
               (long long)json_integer_value(json_object_get(t, "cpuCount")),
               (long long)json_integer_value(json_object_get(t, "memoryMB")));
    }
}

static int
ls(const struct sbx_cli_config *cfg, bool as_json, struct sbx_error **err)
{
    json_t *all = NULL;
    if (call_json(cfg, "GET", "/templates", NULL, 200, &all, err) < 0)
        return -1;
    if (as_json)
        sbx_cli_print_json(all);
    else
        print_table(all);
    json_decref(all);
    return 0;
}

static int
rm(const struct sbx_cli_config *cfg, const char *name, struct sbx_error **err)
{
    char *esc = curl_easy_escape(NULL, name, 0);
    _cleanup_free_ char *path = NULL;
    if (esc == NULL || asprintf(&path, "/templates/%s", esc) < 0)
        abort();
    curl_free(esc);
    return call_json(cfg, "DELETE", path, NULL, 204, NULL, err);
}

static char *
read_file(const char *path, struct sbx_error **err)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return sbx_error_sys(err, errno, "open %s", path), NULL;
    char *buf = malloc(DOCKERFILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, DOCKERFILE_MAX + 1, f) : 0;
    fclose(f);
    if (buf == NULL || n > DOCKERFILE_MAX) {
        free(buf);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s is larger than 1 MiB", path), NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* Prints the build's log from offset on; *done once it ended (error: -1 with the reason). */
static int
poll_build(const struct sbx_cli_config *cfg, const char *tid, const char *bid, size_t *offset,
           bool *done, struct sbx_error **err)
{
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "/templates/%s/builds/%s/status?logsOffset=%zu", tid, bid, *offset) < 0)
        abort();
    json_t *st = NULL;
    if (call_json(cfg, "GET", path, NULL, 200, &st, err) < 0)
        return -1;
    json_t *entries = json_object_get(st, "logEntries");
    size_t i;
    json_t *e;
    json_array_foreach (entries, i, e)
        printf("%s\n", json_string_value(json_object_get(e, "message")));
    fflush(stdout);
    *offset += json_array_size(entries);
    const char *status = json_string_value(json_object_get(st, "status"));
    int rc = 0;
    if (status && strcmp(status, "error") == 0 && json_array_size(entries) == 0) {
        json_t *reason = json_object_get(st, "reason");
        const char *msg = json_string_value(json_object_get(reason, "message"));
        const char *step = json_string_value(json_object_get(reason, "step"));
        rc = sbx_error_set(err, SBX_FAILED_PRECONDITION, 0, "build failed%s%s: %s",
                           step ? " at step " : "", step ? step : "", msg ? msg : "unknown");
    }
    *done = status && (strcmp(status, "ready") == 0 || strcmp(status, "error") == 0) &&
            json_array_size(entries) == 0;
    json_decref(st);
    return rc;
}

/* POST /v3/templates: *made has the template's and the build's ids. */
static int
request_build(const struct sbx_cli_config *cfg, const char *name, int cpu, int mem, json_t **made,
              struct sbx_error **err)
{
    json_t *req = json_pack("{s:s,s:i,s:i}", "name", name, "cpuCount", cpu, "memoryMB", mem);
    int rc = call_json(cfg, "POST", "/v3/templates", req, 202, made, err);
    json_decref(req);
    if (rc == 0 && (!json_is_string(json_object_get(*made, "templateID")) ||
                    !json_is_string(json_object_get(*made, "buildID")))) {
        json_decref(*made);
        return sbx_error_set(err, SBX_INTERNAL, 0, "unexpected answer to POST /v3/templates");
    }
    return rc;
}

/* Starts the build of made (request_build's answer) with def and prints its log until it
 * ends. */
static int
run_build(const struct sbx_cli_config *cfg, json_t *made, const char *name, json_t *def,
          struct sbx_error **err)
{
    const char *tid = json_string_value(json_object_get(made, "templateID"));
    const char *bid = json_string_value(json_object_get(made, "buildID"));
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "/v2/templates/%s/builds/%s", tid, bid) < 0)
        abort();
    int rc = call_json(cfg, "POST", path, def, 202, NULL, err);
    size_t offset = 0;
    for (bool done = false; rc == 0 && !done;) {
        rc = poll_build(cfg, tid, bid, &offset, &done, err);
        if (rc == 0 && !done)
            usleep(POLL_MS * 1000);
    }
    if (rc == 0)
        printf("built %s (template %s, build %s)\n", name, tid, bid);
    return rc;
}

static int
build(const struct sbx_cli_config *cfg, const char *file, const char *name, int cpu, int mem,
      struct sbx_error **err)
{
    _cleanup_free_ char *text = read_file(file, err);
    json_t *def = NULL, *made = NULL;
    if (text == NULL || sbx_cli_dockerfile_parse(text, &def, err) < 0)
        return -1;
    int rc = request_build(cfg, name, cpu, mem, &made, err);
    if (rc == 0)
        rc = run_build(cfg, made, name, def, err);
    json_decref(def);
    json_decref(made);
    return rc;
}

/* The SHA-256 of fd's bytes in hex; *size gets their count. */
static int
hash_file(int fd, char out[65], long long *size, struct sbx_error **err)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        abort();
    static char buf[1 << 16];
    *size = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
        if (n > 0) {
            EVP_DigestUpdate(ctx, buf, (size_t)n);
            *size += n;
        }
    }
    unsigned char md[32];
    EVP_DigestFinal_ex(ctx, md, NULL);
    EVP_MD_CTX_free(ctx);
    if (n < 0 || lseek(fd, 0, SEEK_SET) < 0)
        return sbx_error_sys(err, errno, "read the archive");
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* A template name from an archive's path: its file name without .tar, .tar.gz or .tgz, in
 * the characters names take. */
static char *
name_of(const char *tar)
{
    const char *base = strrchr(tar, '/');
    char *name = strdup(base ? base + 1 : tar);
    if (name == NULL)
        abort();
    static const char *const exts[] = {".tar.gz", ".tgz", ".tar"};
    for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
        size_t n = strlen(name), e = strlen(exts[i]);
        if (n > e && strcmp(name + n - e, exts[i]) == 0) {
            name[n - e] = '\0';
            break;
        }
    }
    for (char *c = name; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
        else if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' || *c == '_'))
            *c = '-';
    return name;
}

static int
import(const struct sbx_cli_config *cfg, const char *tar, const char *name, int cpu, int mem,
       struct sbx_error **err)
{
    _cleanup_close_ int fd = open(tar, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return sbx_error_sys(err, errno, "open %s", tar);
    if (!S_ISREG(st.st_mode))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s is not a file", tar);
    char hash[65];
    long long size;
    json_t *made = NULL, *probe = NULL;
    if (hash_file(fd, hash, &size, err) < 0 || request_build(cfg, name, cpu, mem, &made, err) < 0)
        return -1;
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "/templates/%s/files/%s",
                 json_string_value(json_object_get(made, "templateID")), hash) < 0)
        abort();
    int rc = call_json(cfg, "GET", path, NULL, 201, &probe, err);
    const char *url = json_string_value(json_object_get(probe, "url"));
    if (rc == 0 && url == NULL)
        rc = sbx_error_set(err, SBX_INTERNAL, 0, "no upload URL in the answer to GET %s", path);
    if (rc == 0 && !json_is_true(json_object_get(probe, "present")))
        rc = sbx_cli_put_file(url, fd, size, err);
    json_t *def = json_pack("{s:s+,s:[],s:b}", "fromImage", SBX_IMAGE_ARCHIVE_PREFIX, hash, "steps",
                            "force", 0);
    if (rc == 0)
        rc = run_build(cfg, made, name, def, err);
    json_decref(def);
    json_decref(probe);
    json_decref(made);
    return rc;
}

struct build_args {
    const char *name;
    int cpu, mem;
    bool json, format_given; /* --format: ls only */
};

enum { OPT_NAME = 1, OPT_CPU, OPT_MEM, OPT_FORMAT };

static int
on_opt(int opt, const char *arg, void *ud, struct sbx_error **err)
{
    struct build_args *a = ud;
    if (opt == OPT_FORMAT) {
        a->format_given = true;
        return sbx_cli_format_parse(arg, &a->json, err);
    }
    char *end = NULL;
    long v = opt == OPT_NAME ? 0 : strtol(arg, &end, 10);
    if (opt == OPT_NAME)
        a->name = arg;
    else if (*arg == '\0' || *end != '\0' || v <= 0 || v > 1 << 20)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid number '%s'", arg);
    else if (opt == OPT_CPU)
        a->cpu = (int)v;
    else
        a->mem = (int)v;
    return 0;
}

int
sbx_cli_template(int argc, char **argv)
{
    static const struct option opts[] = {{"name", required_argument, NULL, OPT_NAME},
                                         {"cpu", required_argument, NULL, OPT_CPU},
                                         {"memory-mb", required_argument, NULL, OPT_MEM},
                                         {"format", required_argument, NULL, OPT_FORMAT},
                                         {NULL, 0, NULL, 0}};
    struct sbx_cli_common common = {0};
    struct build_args a = {.cpu = 2, .mem = 1024};
    struct sbx_error *err = NULL;
    int first;
    if (sbx_cli_getopt(argc, argv, "", opts, &common, on_opt, &a, &first, &err) < 0)
        return sbx_cli_usage_error("template", usage, err);
    if (common.help) {
        fputs(usage, stdout);
        return 0;
    }
    const char *sub = first < argc ? argv[first] : "";
    int nargs = argc - first - 1;
    bool ok = (strcmp(sub, "ls") == 0 && nargs == 0) || (strcmp(sub, "rm") == 0 && nargs > 0) ||
              (strcmp(sub, "build") == 0 && nargs == 1 && a.name) ||
              (strcmp(sub, "import") == 0 && (nargs == 1 || nargs == 2));
    if (ok && a.format_given && strcmp(sub, "ls") != 0) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "--format is an option of ls only");
        return sbx_cli_usage_error("template", usage, err);
    }
    if (!ok) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0,
                      "expected ls, rm NAME..., build FILE --name or import TAR [NAME]");
        return sbx_cli_usage_error("template", usage, err);
    }
    struct sbx_cli_config cfg;
    if (sbx_cli_config_init(&cfg, &common, &err) < 0)
        return sbx_cli_fail("template", err);
    int status = 0;
    if (strcmp(sub, "ls") == 0) {
        if (ls(&cfg, a.json, &err) < 0)
            status = sbx_cli_fail("template", err);
    } else if (strcmp(sub, "rm") == 0) {
        for (int i = first + 1; i < argc; i++)
            if (rm(&cfg, argv[i], &err) < 0) {
                status = sbx_cli_fail("template", err);
                err = NULL;
            }
    } else if (strcmp(sub, "import") == 0) {
        _cleanup_free_ char *name = nargs == 2 ? strdup(argv[first + 2]) : name_of(argv[first + 1]);
        if (name == NULL || import(&cfg, argv[first + 1], name, a.cpu, a.mem, &err) < 0)
            status = sbx_cli_fail("template", err);
    } else if (build(&cfg, argv[first + 1], a.name, a.cpu, a.mem, &err) < 0) {
        status = sbx_cli_fail("template", err);
    }
    sbx_cli_config_fini(&cfg);
    return status;
}
