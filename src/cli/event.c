/* Process events of process.Process streams, and the small codecs exec and shell need. */
#include "cli/client.h"

#include <errno.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/base64.h"
#include "base/cleanup.h"

int
sbx_cli_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int
sbx_cli_run_on_msg(json_t *msg, void *ud, struct sbx_error **err)
{
    struct sbx_cli_run *run = ud;
    struct sbx_cli_event ev;
    if (sbx_cli_event_parse(msg, &ev, err) < 0)
        return -1;
    int rc = 0;
    switch (ev.type) {
    case SBX_CLI_EVENT_START:
        if (run->on_start != NULL)
            rc = run->on_start(run, ev.pid, err);
        break;
    case SBX_CLI_EVENT_DATA: {
        int fd = ev.kind == SBX_CLI_DATA_STDERR ? STDERR_FILENO : STDOUT_FILENO;
        if (sbx_cli_write_all(fd, ev.data, ev.len) < 0) {
            run->broken_pipe = errno == EPIPE;
            rc = sbx_error_sys(err, errno, "writing %s", fd == STDERR_FILENO ? "stderr" : "stdout");
        }
        break;
    }
    case SBX_CLI_EVENT_END:
        run->ended = true;
        run->exit_status = sbx_cli_event_exit_status(&ev);
        if (ev.error && strncmp(ev.error, "killed: ", 8) == 0)
            snprintf(run->killed, sizeof(run->killed), "%s", ev.error);
        break;
    default:
        break;
    }
    sbx_cli_event_fini(&ev);
    return rc;
}

static bool
shell_safe(const char *w)
{
    if (*w == '\0')
        return false;
    for (; *w; w++) {
        char c = *w;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("_@%+=:,./-", c) != NULL))
            return false;
    }
    return true;
}

char *
sbx_cli_shell_join(char *const *words, int n)
{
    struct sbx_buf b = {0};
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0)
            bad |= sbx_buf_append(&b, " ", 1, SIZE_MAX / 2);
        if (shell_safe(words[i])) {
            bad |= sbx_buf_append(&b, words[i], strlen(words[i]), SIZE_MAX / 2);
            continue;
        }
        /* Single quotes keep every byte literal; a quote itself becomes '\''. */
        bad |= sbx_buf_append(&b, "'", 1, SIZE_MAX / 2);
        for (const char *p = words[i]; *p; p++) {
            if (*p == '\'')
                bad |= sbx_buf_append(&b, "'\\''", 4, SIZE_MAX / 2);
            else
                bad |= sbx_buf_append(&b, p, 1, SIZE_MAX / 2);
        }
        bad |= sbx_buf_append(&b, "'", 1, SIZE_MAX / 2);
    }
    if (bad || sbx_buf_append(&b, "", 0, SIZE_MAX / 2) < 0) {
        sbx_buf_fini(&b);
        return NULL;
    }
    return b.data;
}

/* proto3 JSON: integers may arrive as numbers or as strings. */
static bool
json_int(json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_string(v)) {
        char *end;
        errno = 0;
        *out = strtoll(json_string_value(v), &end, 10);
        return errno == 0 && *end == '\0' && end != json_string_value(v);
    }
    return false;
}

int
sbx_cli_event_parse(json_t *msg, struct sbx_cli_event *ev, struct sbx_error **err)
{
    memset(ev, 0, sizeof(*ev));
    json_t *e = json_object_get(msg, "event");
    if (!json_is_object(e))
        return sbx_error_set(err, SBX_INTERNAL, 0, "stream message without an event");
    json_t *v;
    long long n;
    if ((v = json_object_get(e, "start")) != NULL) {
        ev->type = SBX_CLI_EVENT_START;
        if (!json_int(json_object_get(v, "pid"), &n) || n < 0 || n > UINT32_MAX)
            return sbx_error_set(err, SBX_INTERNAL, 0, "start event without a valid pid");
        ev->pid = (uint32_t)n;
    } else if ((v = json_object_get(e, "data")) != NULL) {
        static const struct {
            const char *name;
            enum sbx_cli_data_kind kind;
        } kinds[] = {{"stdout", SBX_CLI_DATA_STDOUT},
                     {"stderr", SBX_CLI_DATA_STDERR},
                     {"pty", SBX_CLI_DATA_PTY}};
        ev->type = SBX_CLI_EVENT_DATA;
        const char *b64 = NULL;
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]) && b64 == NULL; i++) {
            b64 = json_string_value(json_object_get(v, kinds[i].name));
            ev->kind = kinds[i].kind;
        }
        if (b64 == NULL) /* an empty chunk has its field omitted (proto3 default) */
            b64 = "";
        ev->data = sbx_base64_decode(b64, strlen(b64), &ev->len);
        if (ev->data == NULL)
            return sbx_error_set(err, SBX_INTERNAL, 0, "data event with invalid base64");
    } else if (json_object_get(e, "keepalive") != NULL) {
        ev->type = SBX_CLI_EVENT_KEEPALIVE;
    } else if ((v = json_object_get(e, "end")) != NULL) {
        ev->type = SBX_CLI_EVENT_END;
        json_t *code = json_object_get(v, "exitCode");
        if (code == NULL)
            code = json_object_get(v, "exit_code");
        ev->exit_code = json_int(code, &n) ? (int)n : 0; /* omitted when 0 */
        ev->exited = json_is_true(json_object_get(v, "exited"));
        ev->status = json_string_value(json_object_get(v, "status"));
        ev->error = json_string_value(json_object_get(v, "error"));
    } else {
        ev->type = SBX_CLI_EVENT_UNKNOWN; /* newer servers may add events: ignore them */
    }
    return 0;
}

void
sbx_cli_event_fini(struct sbx_cli_event *ev)
{
    free(ev->data);
    ev->data = NULL;
}

int
sbx_cli_event_exit_status(const struct sbx_cli_event *ev)
{
    if (ev->exited)
        return ev->exit_code & 0xff;
    /* envd reports a signal death like Go's os.ProcessState: "signal: killed", with the
     * lowercase strsignal(3) text and an optional " (core dumped)". */
    static const char prefix[] = "signal: ";
    if (ev->status && strncmp(ev->status, prefix, sizeof(prefix) - 1) == 0) {
        const char *name = ev->status + sizeof(prefix) - 1;
        size_t len = strcspn(name, "(");
        while (len > 0 && name[len - 1] == ' ')
            len--;
        for (int sig = 1; sig < NSIG; sig++) {
            const char *d = strsignal(sig);
            if (d && strlen(d) == len && strncasecmp(d, name, len) == 0)
                return 128 + sig;
        }
    }
    if (ev->exit_code > 0)
        return ev->exit_code & 0xff;
    return SBX_CLI_EXIT_FAILURE;
}
