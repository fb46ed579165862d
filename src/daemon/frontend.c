/* The front end: everything that talks to clients, as an unprivileged user. It opens the
 * state store, finds the sandboxes that kept running, serves HTTP on the socket the
 * supervisor bound, and reaches sandboxes only through the spawner (requests) and the
 * agents' sockets (proxying). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/fdpass.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/util.h"
#include "daemon/builder.h"
#include "daemon/internal.h"

struct sbx_daemon *sbx_daemon;

/* After the pools are drained: everything else stops, the sandboxes stay. */
static void
stop(void)
{
    sbx_lifecycle_shutdown();
    sbx_spawner_client_close();
    uv_poll_stop(&sbx_daemon->control);
    uv_close((uv_handle_t *)&sbx_daemon->control, NULL);
    uv_close((uv_handle_t *)&sbx_daemon->expiry, NULL);
    /* What is still in flight (requests to agents, timers) is abandoned with the process. */
    uv_stop(sbx_daemon->loop);
}

static void
on_stop_signal(uv_signal_t *h, int signum)
{
    sbx_log_info("frontend_stop", "signal=%d", signum);
    uv_signal_stop(&sbx_daemon->sigterm);
    uv_signal_stop(&sbx_daemon->sigint);
    uv_close((uv_handle_t *)&sbx_daemon->sigterm, NULL);
    uv_close((uv_handle_t *)&sbx_daemon->sigint, NULL);
    sbx_http_server_close(sbx_daemon->http);
    sbx_daemon->http = NULL;
    sbx_pool_drain(stop);
}

/* The supervisor passes the channel to each new spawner here. */
static void
on_control(uv_poll_t *h, int status, int events)
{
    int fd = -1;
    char c;
    ssize_t n = sbx_recv_fds(h->io_watcher.fd, &c, 1, &fd, 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        /* The supervisor is gone (we die with it anyway). */
        uv_poll_stop(h);
        return;
    }
    if (fd < 0)
        return;
    sbx_log_info("spawner_restarted", "ok=1");
    sbx_spawner_client_set_channel(sbx_daemon->loop, fd);
}

static int
start(struct sbx_daemon *d, int listen_fd, int control, int channel, const char *shown_key,
      struct sbx_error **err)
{
    _cleanup_free_ char *db = NULL;
    if (asprintf(&db, "%s/db/sbx.db", d->cfg.state_dir) < 0)
        abort();
    d->store = sbx_store_open(db, err);
    if (d->store == NULL)
        return -1;
    /* COPY archives the Template SDK uploads (api_templates.c): ours alone, like the db. */
    if (asprintf(&d->uploads_dir, "%s/db/uploads", d->cfg.state_dir) < 0)
        abort();
    if (mkdir(d->uploads_dir, 0700) < 0 && errno != EEXIST)
        return sbx_error_sys(err, errno, "mkdir %s", d->uploads_dir);
    sbx_random_hex(d->upload_key, sizeof(d->upload_key) / 2);
    /* Builds the last front end left unfinished will never finish. */
    if (sbx_store_builds_fail_unfinished(
            d->store,
            "{\"message\":\"An internal error occurred. Please try again or contact support "
            "with the build ID.\"}",
            err) < 0)
        return -1;
    sbx_spawner_client_set_channel(d->loop, channel);
    uv_poll_init(d->loop, &d->control, control);
    uv_poll_start(&d->control, UV_READABLE, on_control);
    uv_timer_init(d->loop, &d->expiry);
    if (sbx_lifecycle_recover(err) < 0)
        return sbx_error_prefix(err, "recover sandboxes");
    sbx_builder_collect_layers(); /* layers of older definitions, of deleted templates */
    if (sbx_pool_configure(d->cfg.pools, err) < 0)
        return -1;
    sbx_pool_fill();
    d->http = sbx_http_server_new(d->loop, sbx_router_on_request, d);
    sbx_http_server_set_logging(d->http, true);
    sbx_http_server_set_timeouts(d->http, (uint64_t)d->cfg.header_timeout_s * 1000,
                                 (uint64_t)d->cfg.idle_timeout_s * 1000,
                                 SBX_ANON_IDLE_TIMEOUT_S * 1000);
    sbx_http_server_set_max_conns(d->http, (size_t)d->cfg.max_conns);
    if (sbx_http_server_listen_fd(d->http, listen_fd, err) < 0)
        return -1;
    uv_signal_init(d->loop, &d->sigterm);
    uv_signal_init(d->loop, &d->sigint);
    uv_signal_start(&d->sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_stop_signal, SIGINT);
    int port = sbx_http_server_port(d->http);
    const char *host = d->cfg.listen_host;
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
        host = "127.0.0.1";
    if (shown_key) {
        printf("sbx is serving on %s:%d. To use it with the E2B SDKs:\n"
               "export E2B_API_URL=http://%s:%d\n"
               "export E2B_SANDBOX_URL=http://%s:%d\n"
               "export E2B_API_KEY=%s\n",
               d->cfg.listen_host, port, host, port, host, port, shown_key);
        fflush(stdout);
    }
    sbx_log_info("frontend_ready", "listen=%s:%d uid=%d", d->cfg.listen_host, port, (int)getuid());
    return 0;
}

int
sbx_frontend_main(const struct sbx_daemon_config *cfg, int listen_fd, int control, int channel,
                  const char *shown_key)
{
    static struct sbx_daemon d;
    sbx_daemon = &d;
    d.cfg = *cfg;
    d.loop = uv_default_loop();
    _cleanup_error_ struct sbx_error *err = NULL;
    if (start(&d, listen_fd, control, channel, shown_key, &err) < 0) {
        fprintf(stderr, "sbx serve: %s\n", err->msg);
        return 1;
    }
    uv_run(d.loop, UV_RUN_DEFAULT);
    sbx_store_close(d.store);
    return 0;
}
