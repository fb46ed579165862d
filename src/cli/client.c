/* HTTP plumbing of the CLI: options, configuration, control-plane calls and Connect RPCs
 * over libcurl. */
#include "cli/client.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/base64.h"
#include "base/cleanup.h"
#include "base/limits.h"
#include "base/util.h"

/* ---- options ---- */

enum { OPT_API_URL = 0x1000, OPT_API_KEY };

static const struct option common_opts[] = {
    {"api-url", required_argument, NULL, OPT_API_URL},
    {"api-key", required_argument, NULL, OPT_API_KEY},
    {"help", no_argument, NULL, 'h'},
};
#define N_COMMON ((int)(sizeof(common_opts) / sizeof(common_opts[0])))

int
sbx_cli_getopt(int argc, char **argv, const char *shortopts, const struct option *verb_opts,
               struct sbx_cli_common *common, sbx_cli_opt_cb cb, void *ud, int *first_operand,
               struct sbx_error **err)
{
    int n_verb = 0;
    while (verb_opts && verb_opts[n_verb].name)
        n_verb++;
    _cleanup_free_ struct option *opts = calloc((size_t)(n_verb + N_COMMON + 1), sizeof(*opts));
    _cleanup_free_ char *shorts = NULL;
    if (opts == NULL || asprintf(&shorts, ":h%s", shortopts ? shortopts : "") < 0)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    memcpy(opts, common_opts, sizeof(common_opts));
    if (n_verb)
        memcpy(opts + N_COMMON, verb_opts, (size_t)n_verb * sizeof(*opts));

    optind = 0; /* full re-initialisation of glibc's getopt, so parsing can be repeated */
    opterr = 0; /* we word the messages ourselves */
    int c;
    while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        switch (c) {
        case OPT_API_URL:
            common->api_url = optarg;
            break;
        case OPT_API_KEY:
            common->api_key = optarg;
            break;
        case 'h':
            common->help = true;
            break;
        case ':':
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "option %s needs a value",
                                 argv[optind - 1]);
        case '?':
            if (optopt != 0)
                return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "unknown option -%c", optopt);
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "unknown option %s",
                                 argv[optind - 1]);
        default:
            if (cb == NULL || cb(c, optarg, ud, err) < 0)
                return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "unexpected option");
        }
    }
    *first_operand = optind;
    return 0;
}

int
sbx_cli_begin(const struct sbx_cli_verb *v, int argc, char **argv, void *ud, int *first,
              struct sbx_cli_config *cfg)
{
    struct sbx_cli_common common = {0};
    struct sbx_error *err = NULL;
    if (sbx_cli_getopt(argc, argv, v->shortopts, v->opts, &common, v->on_opt, ud, first, &err) < 0)
        return sbx_cli_usage_error(v->name, v->usage, err);
    if (common.help) {
        fputs(v->usage, stdout);
        return 0;
    }
    int n = argc - *first;
    if (n < v->min_operands || (v->max_operands >= 0 && n > v->max_operands)) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0,
                      n < v->min_operands ? "missing %s" : "unexpected argument '%s'",
                      n < v->min_operands ? v->operand : argv[*first + v->max_operands]);
        return sbx_cli_usage_error(v->name, v->usage, err);
    }
    if (sbx_cli_config_init(cfg, &common, &err) < 0)
        return sbx_cli_fail(v->name, err);
    return -1;
}

int
sbx_cli_usage_error(const char *verb, const char *usage, struct sbx_error *err)
{
    if (err != NULL)
        fprintf(stderr, "sbx %s: %s\n", verb, err->msg ? err->msg : "invalid usage");
    fputs(usage, stderr);
    sbx_error_free(err);
    return SBX_CLI_EXIT_USAGE;
}

int
sbx_cli_fail(const char *verb, struct sbx_error *err)
{
    fprintf(stderr, "sbx %s: %s\n", verb, err && err->msg ? err->msg : "failed");
    sbx_error_free(err);
    return SBX_CLI_EXIT_FAILURE;
}

int
sbx_cli_add_kv(json_t *obj, const char *arg, const char *what, struct sbx_error **err)
{
    const char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s '%s' is not KEY=VALUE", what, arg);
    _cleanup_free_ char *key = strndup(arg, (size_t)(eq - arg));
    json_t *v = json_string(eq + 1);
    if (key == NULL || v == NULL || json_object_set_new(obj, key, v) < 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s '%s' is not valid UTF-8", what, arg);
    return 0;
}

bool
sbx_cli_is_valid_id(const char *id)
{
    return sbx_is_valid_id(id, SBX_CLI_ID_MAX);
}

/* ---- configuration ---- */

static char *
strip_slash(const char *url)
{
    char *s = strdup(url);
    if (s == NULL)
        return NULL;
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}

int
sbx_cli_config_init(struct sbx_cli_config *cfg, const struct sbx_cli_common *common,
                    struct sbx_error **err)
{
    memset(cfg, 0, sizeof(*cfg));
    const char *api = common->api_url ? common->api_url : getenv("E2B_API_URL");
    if (api == NULL || *api == '\0')
        api = SBX_CLI_DEFAULT_API_URL;
    const char *sbx = getenv("E2B_SANDBOX_URL");
    if (common->api_url != NULL || sbx == NULL || *sbx == '\0')
        sbx = api; /* an explicit --api-url moves the sandbox traffic along with it */
    const char *key = common->api_key ? common->api_key : getenv("E2B_API_KEY");
    if (key == NULL || *key == '\0')
        return sbx_error_set(err, SBX_UNAUTHENTICATED, 0,
                             "E2B_API_KEY is not set: export the E2B_* variables that "
                             "`sbx serve` printed at start-up, or pass --api-key");
    cfg->api_url = strip_slash(api);
    cfg->sandbox_url = strip_slash(sbx);
    cfg->api_key = strdup(key);
    if (cfg->api_url == NULL || cfg->sandbox_url == NULL || cfg->api_key == NULL) {
        sbx_cli_config_fini(cfg);
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    }
    return 0;
}

void
sbx_cli_config_fini(struct sbx_cli_config *cfg)
{
    free(cfg->api_url);
    free(cfg->sandbox_url);
    free(cfg->api_key);
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- libcurl helpers ---- */

struct sink {
    struct sbx_buf *buf;
    bool too_big;
};

static size_t
on_body(char *p, size_t size, size_t n, void *ud)
{
    struct sink *s = ud;
    if (sbx_buf_append(s->buf, p, size * n, SBX_CLI_MAX_RESPONSE) < 0) {
        s->too_big = true;
        return 0; /* aborts the transfer */
    }
    return size * n;
}

static size_t
on_header(char *p, size_t size, size_t n, void *ud)
{
    struct sbx_cli_response *r = ud;
    size_t len = size * n;
    static const char name[] = "x-next-token:";
    if (len > sizeof(name) - 1 && strncasecmp(p, name, sizeof(name) - 1) == 0) {
        const char *v = p + sizeof(name) - 1;
        const char *end = p + len;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
            end--;
        free(r->next_token);
        r->next_token = end > v ? strndup(v, (size_t)(end - v)) : NULL;
    }
    return len;
}

static CURL *
easy_new(struct sbx_error **err)
{
    CURL *c = curl_easy_init();
    if (c == NULL) {
        sbx_error_set(err, SBX_INTERNAL, 0, "cannot initialise libcurl");
        return NULL;
    }
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* the shell verb runs two threads */
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)SBX_CLI_CONNECT_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, SBX_CLI_USER_AGENT);
    return c;
}

static int
transport_error(CURLcode rc, const char *url, const char *errbuf, struct sbx_error **err)
{
    return sbx_error_set(err, SBX_UNAVAILABLE, 0,
                         "cannot reach the sbx daemon at %s: %s (is `sbx serve` running?)", url,
                         *errbuf ? errbuf : curl_easy_strerror(rc));
}

static struct curl_slist *slist_add(struct curl_slist *l, bool *oom, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static struct curl_slist *
slist_add(struct curl_slist *l, bool *oom, const char *fmt, ...)
{
    if (*oom)
        return l;
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    struct curl_slist *nl = n < 0 ? NULL : curl_slist_append(l, s);
    free(s);
    if (nl == NULL) {
        *oom = true;
        return l;
    }
    return nl;
}

/* ---- control plane ---- */

void
sbx_cli_response_fini(struct sbx_cli_response *r)
{
    sbx_buf_fini(&r->body);
    free(r->next_token);
    r->next_token = NULL;
}

int
sbx_cli_api_call(const struct sbx_cli_config *cfg, const char *method, const char *path,
                 json_t *body, struct sbx_cli_response *resp, struct sbx_error **err)
{
    memset(resp, 0, sizeof(*resp));
    _cleanup_free_ char *url = NULL;
    _cleanup_free_ char *payload = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (asprintf(&url, "%s%s", cfg->api_url, path) < 0 || (body && payload == NULL))
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");

    bool oom = false;
    struct curl_slist *h = NULL;
    h = slist_add(h, &oom, "X-API-KEY: %s", cfg->api_key);
    h = slist_add(h, &oom, "Accept: application/json");
    h = slist_add(h, &oom, "Expect:"); /* no 100-continue: the SDKs never send it */
    if (body)
        h = slist_add(h, &oom, "Content-Type: application/json");
    CURL *c = oom ? NULL : easy_new(err);
    if (c == NULL) {
        curl_slist_free_all(h);
        return oom ? sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory") : -1;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    struct sink sink = {&resp->body, false};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)SBX_CLI_REQUEST_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, resp);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    if (payload) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
    }
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    if (sink.too_big)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "response larger than %d bytes",
                             SBX_CLI_MAX_RESPONSE);
    if (rc != CURLE_OK)
        return transport_error(rc, cfg->api_url, errbuf, err);
    return 0;
}

/* Message of an error body: {"code":..,"message":".."} (control plane, envd auth, Connect
 * unary errors alike); NULL if there is none. */
static const char *
body_message(json_t *j)
{
    json_t *m = json_object_get(j, "message");
    return json_is_string(m) && *json_string_value(m) ? json_string_value(m) : NULL;
}

static enum sbx_code
code_from_status(long status)
{
    switch (status) {
    case 400:
        return SBX_INVALID_ARGUMENT;
    case 401:
        return SBX_UNAUTHENTICATED;
    case 403:
        return SBX_PERMISSION_DENIED;
    case 404:
        return SBX_NOT_FOUND;
    case 409:
        return SBX_ALREADY_EXISTS;
    case 429:
        return SBX_RESOURCE_EXHAUSTED;
    case 502:
    case 503:
    case 504:
        return SBX_UNAVAILABLE;
    default:
        return SBX_UNKNOWN;
    }
}

static enum sbx_code
code_from_name(const char *name, enum sbx_code fallback)
{
    for (int c = SBX_CANCELED; c <= SBX_UNAUTHENTICATED; c++)
        if (strcmp(sbx_code_name((enum sbx_code)c), name) == 0)
            return (enum sbx_code)c;
    return fallback;
}

static int
http_error(long status, const struct sbx_buf *body, struct sbx_error **err)
{
    json_t *j = body->len ? json_loadb(body->data, body->len, 0, NULL) : NULL;
    const char *msg = body_message(j);
    enum sbx_code code = code_from_status(status);
    json_t *jc = json_object_get(j, "code");
    if (json_is_string(jc)) /* a Connect error: the code is a name */
        code = code_from_name(json_string_value(jc), code);
    if (status == 401)
        sbx_error_set(err, code, 0, "unauthorized: %s (HTTP 401; check E2B_API_KEY)",
                      msg ? msg : "no message");
    else if (msg)
        sbx_error_set(err, code, 0, "%s (HTTP %ld)", msg, status);
    else
        sbx_error_set(err, code, 0, "HTTP %ld", status);
    json_decref(j);
    return -1;
}

int
sbx_cli_api_error(const struct sbx_cli_response *resp, struct sbx_error **err)
{
    return http_error(resp->status, &resp->body, err);
}

json_t *
sbx_cli_response_json(const struct sbx_cli_response *resp, struct sbx_error **err)
{
    json_error_t je;
    json_t *j = json_loadb(resp->body.data ? resp->body.data : "", resp->body.len, 0, &je);
    if (j == NULL)
        sbx_error_set(err, SBX_INTERNAL, 0, "invalid JSON from the daemon: %s", je.text);
    return j;
}

int
sbx_cli_api_json(const struct sbx_cli_config *cfg, const char *method, const char *path,
                 json_t *body, json_t **out, struct sbx_error **err)
{
    if (out)
        *out = NULL;
    struct sbx_cli_response resp;
    int rc = sbx_cli_api_call(cfg, method, path, body, &resp, err);
    if (rc == 0 && resp.status / 100 != 2)
        rc = sbx_cli_api_error(&resp, err);
    else if (rc == 0 && out && resp.status != 204 &&
             (*out = sbx_cli_response_json(&resp, err)) == NULL)
        rc = -1;
    sbx_cli_response_fini(&resp);
    return rc;
}

int
sbx_cli_object_call(const struct sbx_cli_config *cfg, const char *kind, const char *id,
                    const char *method, const char *suffix, json_t *body, struct sbx_error **err)
{
    char full[SBX_CLI_ID_MAX + 1];
    if (strcmp(kind, "sandbox") == 0) { /* a unique beginning of one is enough */
        if (sbx_cli_resolve_id(cfg, id, full, sizeof(full), err) < 0)
            return -1;
        id = full;
    } else if (!sbx_cli_is_valid_id(id)) {
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid %s id '%s'", kind, id);
    }
    char path[64 + SBX_CLI_ID_MAX];
    snprintf(path, sizeof(path), "/%s/%s%s", strcmp(kind, "sandbox") == 0 ? "sandboxes" : "volumes",
             id, suffix);
    struct sbx_cli_response resp;
    int rc = sbx_cli_api_call(cfg, method, path, body, &resp, err);
    if (rc == 0 && resp.status == 404)
        rc = sbx_error_set(err, SBX_NOT_FOUND, 0, "%s %s not found", kind, id);
    else if (rc == 0 && resp.status / 100 != 2)
        rc = sbx_cli_api_error(&resp, err);
    sbx_cli_response_fini(&resp);
    return rc;
}

int
sbx_cli_format_parse(const char *arg, bool *json, struct sbx_error **err)
{
    if (strcmp(arg, "json") != 0 && strcmp(arg, "table") != 0)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "--format must be 'table' or 'json', not '%s'", arg);
    *json = strcmp(arg, "json") == 0;
    return 0;
}

int
sbx_cli_print_json(json_t *j)
{
    json_dumpf(j, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    return fflush(stdout) == 0 ? 0 : SBX_CLI_EXIT_FAILURE;
}

int
sbx_cli_each_id(int argc, char **argv, const struct sbx_cli_each *e, void *ud)
{
    struct sbx_cli_common common = {0};
    struct sbx_error *err = NULL;
    int first;
    if (sbx_cli_getopt(argc, argv, e->shortopts ? e->shortopts : "", e->opts, &common, e->on_opt,
                       ud, &first, &err) < 0)
        return sbx_cli_usage_error(e->verb, e->usage, err);
    if (common.help) {
        fputs(e->usage, stdout);
        return 0;
    }
    if (first == argc) {
        sbx_error_set(&err, SBX_INVALID_ARGUMENT, 0, "missing %s id", e->kind);
        return sbx_cli_usage_error(e->verb, e->usage, err);
    }
    struct sbx_cli_config cfg;
    if (sbx_cli_config_init(&cfg, &common, &err) < 0)
        return sbx_cli_fail(e->verb, err);
    int status = 0;
    for (int i = first; i < argc; i++) {
        if (e->one(&cfg, argv[i], ud, &err) < 0) {
            status = sbx_cli_fail(e->verb, err);
            err = NULL;
        }
    }
    sbx_cli_config_fini(&cfg);
    return status;
}

/* ---- sandboxes ---- */

int
sbx_cli_list_sandboxes(const struct sbx_cli_config *cfg, const char *state, json_t *all,
                       struct sbx_error **err)
{
    _cleanup_free_ char *token = NULL;
    for (int page = 0; page < SBX_CLI_MAX_PAGES; page++) {
        _cleanup_free_ char *path = NULL;
        char *esc = token ? curl_easy_escape(NULL, token, 0) : NULL;
        int n = asprintf(&path, "/v2/sandboxes?limit=100%s%s%s%s", state ? "&state=" : "",
                         state ? state : "", esc ? "&nextToken=" : "", esc ? esc : "");
        curl_free(esc);
        if (n < 0)
            return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "out of memory");
        struct sbx_cli_response resp;
        if (sbx_cli_api_call(cfg, "GET", path, NULL, &resp, err) < 0) {
            sbx_cli_response_fini(&resp);
            return -1;
        }
        if (resp.status != 200) {
            sbx_cli_api_error(&resp, err);
            sbx_cli_response_fini(&resp);
            return -1;
        }
        json_t *items = sbx_cli_response_json(&resp, err);
        free(token);
        token = steal_pointer(&resp.next_token);
        sbx_cli_response_fini(&resp);
        if (items == NULL)
            return -1;
        if (!json_is_array(items)) {
            json_decref(items);
            return sbx_error_set(err, SBX_INTERNAL, 0, "the daemon did not answer a list");
        }
        json_array_extend(all, items);
        json_decref(items);
        if (token == NULL)
            return 0;
    }
    return sbx_error_set(err, SBX_INTERNAL, 0, "too many pages");
}

int
sbx_cli_resolve_id(const struct sbx_cli_config *cfg, const char *arg, char *id, size_t n,
                   struct sbx_error **err)
{
    if (!sbx_cli_is_valid_id(arg))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "invalid sandbox id '%s'", arg);
    json_t *all = json_array();
    if (all == NULL || sbx_cli_list_sandboxes(cfg, NULL, all, err) < 0) {
        json_decref(all);
        return -1;
    }
    size_t i, matches = 0, len = strlen(arg);
    json_t *item;
    struct sbx_buf names = {0};
    snprintf(id, n, "%s", arg); /* none matches: as given (an ended sandbox's logs) */
    json_array_foreach (all, i, item) {
        const char *sid = json_string_value(json_object_get(item, "sandboxID"));
        if (sid == NULL || strncmp(sid, arg, len) != 0)
            continue;
        if (sid[len] == '\0') { /* a whole id wins over longer ones it prefixes */
            matches = 1;
            snprintf(id, n, "%s", sid);
            break;
        }
        if (matches++ == 0)
            snprintf(id, n, "%s", sid);
        sbx_buf_printf(&names, "%s%s", names.len ? ", " : "", sid);
    }
    json_decref(all);
    int rc = 0;
    if (matches > 1)
        rc = sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                           "'%s' is the beginning of %zu sandbox ids (%.*s): give more of it", arg,
                           matches, (int)names.len, names.data);
    sbx_buf_fini(&names);
    return rc;
}

int
sbx_cli_sandbox_open(const struct sbx_cli_config *cfg, const char *id, struct sbx_cli_sandbox *sb,
                     struct sbx_error **err)
{
    memset(sb, 0, sizeof(*sb));
    if (sbx_cli_resolve_id(cfg, id, sb->id, sizeof(sb->id), err) < 0)
        return -1;
    id = sb->id;
    char path[32 + SBX_CLI_ID_MAX];
    snprintf(path, sizeof(path), "/sandboxes/%s", id);
    struct sbx_cli_response resp;
    if (sbx_cli_api_call(cfg, "GET", path, NULL, &resp, err) < 0)
        goto fail;
    if (resp.status == 404) {
        sbx_error_set(err, SBX_NOT_FOUND, 0, "sandbox %s not found", id);
        goto fail;
    }
    if (resp.status != 200) {
        sbx_cli_api_error(&resp, err);
        goto fail;
    }
    json_t *info = sbx_cli_response_json(&resp, err);
    if (info == NULL)
        goto fail;
    const char *state = json_string_value(json_object_get(info, "state"));
    const char *tok = json_string_value(json_object_get(info, "envdAccessToken"));
    if (state != NULL && strcmp(state, "paused") == 0)
        sbx_error_set(err, SBX_FAILED_PRECONDITION, 0,
                      "sandbox %s is paused (sbx resume %s runs it again)", id, id);
    else if (tok != NULL && (sb->access_token = strdup(tok)) == NULL)
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    json_decref(info);
    if (err && *err)
        goto fail;
    sbx_cli_response_fini(&resp);
    return 0;
fail:
    sbx_cli_response_fini(&resp);
    sbx_cli_sandbox_fini(sb);
    return -1;
}

void
sbx_cli_sandbox_fini(struct sbx_cli_sandbox *sb)
{
    free(sb->access_token);
    sb->access_token = NULL;
}

/* ---- Connect RPC ---- */

struct sbx_cli_rpc {
    CURL *curl;
    char *base;
    struct curl_slist *unary_headers;
    struct curl_slist *stream_headers;
    struct curl_slist *file_headers;
};

enum headers_kind { HEADERS_UNARY, HEADERS_STREAM, HEADERS_FILES };

static struct curl_slist *
sandbox_headers(const struct sbx_cli_sandbox *sb, enum headers_kind kind, bool *oom)
{
    struct curl_slist *h = NULL;
    /* The daemon routes on these two headers, like the E2B cloud proxy. */
    h = slist_add(h, oom, "E2b-Sandbox-Id: %s", sb->id);
    h = slist_add(h, oom, "E2b-Sandbox-Port: %d", SBX_ENVD_PORT);
    if (sb->access_token)
        h = slist_add(h, oom, "X-Access-Token: %s", sb->access_token);
    if (sb->user) {
        /* envd takes the operation user from Basic auth with an empty password. */
        _cleanup_free_ char *up = NULL;
        _cleanup_free_ char *b64 = NULL;
        if (asprintf(&up, "%s:", sb->user) < 0 ||
            (b64 = sbx_base64_encode(up, strlen(up), NULL)) == NULL)
            *oom = true;
        else
            h = slist_add(h, oom, "Authorization: Basic %s", b64);
    }
    h = slist_add(h, oom, "Expect:");
    if (kind == HEADERS_FILES)
        return h;
    h = slist_add(h, oom, "Connect-Protocol-Version: 1");
    if (kind == HEADERS_STREAM) {
        h = slist_add(h, oom, "Content-Type: application/connect+json");
        h = slist_add(h, oom, "Keepalive-Ping-Interval: 50");
    } else {
        h = slist_add(h, oom, "Content-Type: application/json");
    }
    return h;
}

struct sbx_cli_rpc *
sbx_cli_rpc_new(const struct sbx_cli_config *cfg, const struct sbx_cli_sandbox *sb,
                struct sbx_error **err)
{
    struct sbx_cli_rpc *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
        return NULL;
    }
    bool oom = false;
    r->base = strdup(cfg->sandbox_url);
    r->unary_headers = sandbox_headers(sb, HEADERS_UNARY, &oom);
    r->stream_headers = sandbox_headers(sb, HEADERS_STREAM, &oom);
    r->file_headers = sandbox_headers(sb, HEADERS_FILES, &oom);
    if (oom || r->base == NULL) {
        sbx_cli_rpc_free(r);
        sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
        return NULL;
    }
    r->curl = easy_new(err);
    if (r->curl == NULL) {
        sbx_cli_rpc_free(r);
        return NULL;
    }
    return r;
}

void
sbx_cli_rpc_free(struct sbx_cli_rpc *r)
{
    if (r == NULL)
        return;
    if (r->curl)
        curl_easy_cleanup(r->curl);
    curl_slist_free_all(r->unary_headers);
    curl_slist_free_all(r->stream_headers);
    curl_slist_free_all(r->file_headers);
    free(r->base);
    free(r);
}

static int
rpc_setup(struct sbx_cli_rpc *r, const char *method, const char *payload, size_t len, bool stream,
          char *errbuf)
{
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s/%s", r->base, method) < 0)
        return -1;
    CURL *c = r->curl;
    curl_easy_setopt(c, CURLOPT_URL, url); /* libcurl copies strings it is given */
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, stream ? r->stream_headers : r->unary_headers);
    /* A stream lives as long as the process it follows; unary calls are bounded. */
    curl_easy_setopt(c, CURLOPT_TIMEOUT, stream ? 0L : (long)SBX_CLI_REQUEST_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    errbuf[0] = '\0';
    return 0;
}

/* Runs the request rpc_setup prepared, handing the response body to on_data; returns curl's
 * verdict and stores the HTTP status (0 if no response head arrived). */
static CURLcode
rpc_perform(struct sbx_cli_rpc *r, curl_write_callback on_data, void *ud, long *status)
{
    curl_easy_setopt(r->curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(r->curl, CURLOPT_WRITEDATA, ud);
    CURLcode rc = curl_easy_perform(r->curl);
    *status = 0;
    curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, status);
    return rc;
}

int
sbx_cli_rpc_unary(struct sbx_cli_rpc *r, const char *method, json_t *req, json_t **out,
                  struct sbx_error **err)
{
    if (out)
        *out = NULL;
    _cleanup_free_ char *payload = json_dumps(req, JSON_COMPACT);
    char errbuf[CURL_ERROR_SIZE];
    if (payload == NULL || rpc_setup(r, method, payload, strlen(payload), false, errbuf) < 0)
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    struct sbx_buf body = {0};
    struct sink sink = {&body, false};
    long status;
    CURLcode rc = rpc_perform(r, on_body, &sink, &status);
    int ret = 0;
    if (sink.too_big) {
        ret = sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, 0, "%s: response too large", method);
    } else if (rc != CURLE_OK) {
        ret = transport_error(rc, r->base, errbuf, err);
    } else if (status != 200) {
        ret = http_error(status, &body, err);
    } else if (out) {
        json_error_t je;
        *out = json_loadb(body.data ? body.data : "{}", body.data ? body.len : 2, 0, &je);
        if (*out == NULL)
            ret = sbx_error_set(err, SBX_INTERNAL, 0, "%s: invalid JSON response: %s", method,
                                je.text);
    }
    sbx_buf_fini(&body);
    return ret;
}

/* ---- server streams ---- */

int
sbx_cli_stream_feed(struct sbx_cli_stream *s, const char *data, size_t len, struct sbx_error **err)
{
    if (s->failed)
        return -1;
    if (sbx_connect_reader_feed(&s->reader, data, len, err) < 0)
        goto fail;
    for (;;) {
        uint8_t flags;
        _cleanup_free_ char *m = NULL;
        size_t n;
        int rc = sbx_connect_reader_next(&s->reader, &flags, &m, &n, err);
        if (rc < 0)
            goto fail;
        if (rc == 0)
            return 0;
        if (s->ended) {
            sbx_error_set(err, SBX_INTERNAL, 0, "message after the end of the stream");
            goto fail;
        }
        json_error_t je;
        json_t *j = json_loadb(m, n, 0, &je);
        if (!json_is_object(j)) {
            json_decref(j);
            sbx_error_set(err, SBX_INTERNAL, 0, "invalid stream message: %s",
                          j ? "not an object" : je.text);
            goto fail;
        }
        if (flags & SBX_CONNECT_FLAG_END_STREAM) {
            s->ended = true;
            json_t *e = json_object_get(j, "error");
            if (e != NULL) {
                const char *code = json_string_value(json_object_get(e, "code"));
                const char *msg = json_string_value(json_object_get(e, "message"));
                sbx_error_set(err, code ? code_from_name(code, SBX_UNKNOWN) : SBX_UNKNOWN, 0,
                              "%s%s%s", code ? code : "unknown", msg ? ": " : "", msg ? msg : "");
                json_decref(j);
                goto fail;
            }
            json_decref(j);
            continue;
        }
        rc = s->cb ? s->cb(j, s->ud, err) : 0;
        json_decref(j);
        if (rc < 0)
            goto fail;
    }
fail:
    s->failed = true;
    return -1;
}

int
sbx_cli_stream_finish(struct sbx_cli_stream *s, struct sbx_error **err)
{
    if (s->failed)
        return -1;
    if (!s->ended || s->reader.buf.len != 0) {
        s->failed = true;
        return sbx_error_set(err, SBX_UNAVAILABLE, 0,
                             "the stream ended without its end message (sandbox killed?)");
    }
    return 0;
}

void
sbx_cli_stream_fini(struct sbx_cli_stream *s)
{
    sbx_connect_reader_fini(&s->reader);
}

struct stream_ctx {
    CURL *curl;
    struct sbx_cli_stream stream;
    struct sbx_error *err; /* first error of the stream or its callback */
    bool is_error_body;    /* the response is not a Connect stream */
    bool checked;
    struct sbx_buf error_body;
};

static size_t
on_stream_body(char *p, size_t size, size_t n, void *ud)
{
    struct stream_ctx *x = ud;
    size_t len = size * n;
    if (!x->checked) {
        x->checked = true;
        long status = 0;
        char *ctype = NULL;
        curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(x->curl, CURLINFO_CONTENT_TYPE, &ctype);
        x->is_error_body = status != 200 || ctype == NULL ||
                           strncasecmp(ctype, "application/connect+json", 24) != 0;
    }
    if (x->is_error_body)
        return sbx_buf_append(&x->error_body, p, len, 64 * 1024) < 0 ? 0 : len;
    if (sbx_cli_stream_feed(&x->stream, p, len, &x->err) < 0)
        return 0; /* aborts the transfer; the error is in x->err */
    return len;
}

int
sbx_cli_rpc_stream(struct sbx_cli_rpc *r, const char *method, json_t *req, sbx_cli_msg_cb cb,
                   void *ud, struct sbx_error **err)
{
    _cleanup_free_ char *json = json_dumps(req, JSON_COMPACT);
    struct sbx_buf env = {0};
    char errbuf[CURL_ERROR_SIZE];
    if (json == NULL || sbx_connect_envelope_format(&env, 0, json, strlen(json)) < 0 ||
        rpc_setup(r, method, env.data, env.len, true, errbuf) < 0) {
        sbx_buf_fini(&env);
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    }
    struct stream_ctx x = {.curl = r->curl, .stream = {.cb = cb, .ud = ud}};
    long status;
    CURLcode rc = rpc_perform(r, on_stream_body, &x, &status);
    int ret = 0;
    if (x.err != NULL) {
        /* The stream's own error wins over the transfer abort it caused. */
        if (err != NULL && *err == NULL)
            *err = steal_pointer(&x.err);
        sbx_error_free(x.err);
        ret = -1;
    } else if (status == 0) {
        ret = transport_error(rc, r->base, errbuf, err);
    } else if (x.is_error_body || (rc == CURLE_OK && status != 200)) {
        ret = http_error(status, &x.error_body, err);
    } else if (rc != CURLE_OK && !x.stream.ended) {
        ret = sbx_error_set(err, SBX_UNAVAILABLE, 0,
                            "connection lost: %s (sandbox killed or daemon stopped?)",
                            *errbuf ? errbuf : curl_easy_strerror(rc));
    } else {
        ret = sbx_cli_stream_finish(&x.stream, err);
    }
    sbx_cli_stream_fini(&x.stream);
    sbx_buf_fini(&x.error_body);
    sbx_buf_fini(&env);
    return ret;
}

/* ---- files (envd's /files), streamed both ways ---- */

struct transfer {
    CURL *curl;
    int fd;
    bool upload; /* the response is only a status (and a message) */
    bool checked, is_error;
    struct sbx_buf error_body;
    int write_errno;
};

static size_t
on_download(char *p, size_t size, size_t n, void *ud)
{
    struct transfer *t = ud;
    size_t len = size * n;
    if (!t->checked) {
        long status = 0;
        curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
        t->is_error = status != 200;
        t->checked = true;
    }
    if (t->is_error || t->upload)
        return sbx_buf_append(&t->error_body, p, len, 64 * 1024) < 0 ? 0 : len;
    if (sbx_cli_write_all(t->fd, p, len) < 0) {
        t->write_errno = errno;
        return 0;
    }
    return len;
}

static size_t
on_upload_read(char *buf, size_t size, size_t n, void *ud)
{
    struct transfer *t = ud;
    ssize_t r;
    do
        r = read(t->fd, buf, size * n);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        t->write_errno = errno;
        return CURL_READFUNC_ABORT;
    }
    return (size_t)r;
}

static int
files_perform(struct sbx_cli_rpc *r, const char *path, struct transfer *t, curl_mime *mime,
              struct sbx_error **err)
{
    char *esc = curl_easy_escape(r->curl, path, 0);
    _cleanup_free_ char *url = NULL;
    if (esc == NULL || asprintf(&url, "%s/files?path=%s", r->base, esc) < 0) {
        curl_free(esc);
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    }
    curl_free(esc);
    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *c = r->curl;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)SBX_CLI_CONNECT_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, SBX_CLI_USER_AGENT);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, r->file_headers);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_download);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
    if (mime)
        curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    t->curl = c;
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    int ret = 0;
    if (t->write_errno)
        ret = sbx_error_sys(err, t->write_errno, mime ? "reading the local file" : "writing");
    else if (status == 0 || (rc != CURLE_OK && !t->is_error))
        ret = transport_error(rc, r->base, errbuf, err);
    else if (status / 100 != 2)
        ret = http_error(status, &t->error_body, err);
    sbx_buf_fini(&t->error_body);
    return ret;
}

int
sbx_cli_files_get(struct sbx_cli_rpc *r, const char *path, int fd, struct sbx_error **err)
{
    struct transfer t = {.fd = fd};
    return files_perform(r, path, &t, NULL, err);
}

int
sbx_cli_files_put(struct sbx_cli_rpc *r, const char *path, int fd, long long size,
                  struct sbx_error **err)
{
    struct transfer t = {.fd = fd, .upload = true};
    curl_mime *mime = curl_mime_init(r->curl);
    curl_mimepart *part = mime ? curl_mime_addpart(mime) : NULL;
    const char *slash = strrchr(path, '/');
    if (part == NULL || curl_mime_name(part, "file") != CURLE_OK ||
        curl_mime_filename(part, slash ? slash + 1 : path) != CURLE_OK ||
        curl_mime_data_cb(part, (curl_off_t)size, on_upload_read, NULL, NULL, &t) != CURLE_OK) {
        curl_mime_free(mime);
        return sbx_error_set(err, SBX_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
    }
    int rc = files_perform(r, path, &t, mime, err);
    curl_mime_free(mime);
    return rc;
}

int
sbx_cli_put_file(const char *url, int fd, long long size, struct sbx_error **err)
{
    CURL *c = easy_new(err);
    if (c == NULL)
        return -1;
    struct transfer t = {.fd = fd, .upload = true};
    struct sbx_buf body = {0};
    struct sink sink = {&body, false};
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, on_upload_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &t);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    int ret = 0;
    if (t.write_errno)
        ret = sbx_error_sys(err, t.write_errno, "reading the local file");
    else if (rc != CURLE_OK && status == 0)
        ret = transport_error(rc, url, errbuf, err);
    else if (status / 100 != 2)
        ret = http_error(status, &body, err);
    sbx_buf_fini(&body);
    return ret;
}
