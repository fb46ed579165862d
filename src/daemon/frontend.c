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
#include "http/tls.h"

struct sbx_daemon *sbx_daemon;

/* After the pools are drained: everything else stops, the sandboxes stay. */
static void
stop(void)
{
    uv_close((uv_handle_t *)&sbx_daemon->sigterm, NULL);
    uv_close((uv_handle_t *)&sbx_daemon->sigint, NULL);
    sbx_lifecycle_shutdown();
    sbx_spawner_client_close();
    uv_poll_stop(&sbx_daemon->control);
    uv_close((uv_handle_t *)&sbx_daemon->control, NULL);
    uv_close((uv_handle_t *)&sbx_daemon->expiry, NULL);
    uv_close((uv_handle_t *)&sbx_daemon->log_prune, NULL);
    /* What is still in flight (requests to agents, timers) is abandoned with the process. */
    uv_stop(sbx_daemon->loop);
}

static void
on_stop_signal(uv_signal_t *h, int signum)
{
    /* The handlers stay until the end: a second SIGTERM (the supervisor forwards one, and a
     * service manager may signal every process) must not cut the pools' drain short. */
    if (sbx_daemon->http == NULL)
        return;
    sbx_log_info("frontend_stop", "signal=%d", signum);
    sbx_http_server_close(sbx_daemon->http);
    sbx_daemon->http = NULL;
    if (sbx_daemon->metrics_http)
        sbx_http_server_close(sbx_daemon->metrics_http);
    sbx_daemon->metrics_http = NULL;
    sbx_pool_drain(stop);
}

static void
on_housekeeping(uv_timer_t *t)
{
    sbx_logs_prune();
    sbx_api_templates_collect_uploads();
    sbx_builder_expire();
}

static void
on_network_synced(const struct sbx_spawner_msg *reply, struct sbx_error *err, void *ud)
{
    if (err)
        sbx_log_error("network", "sandbox=%s error=\"%s\"", ud ? (const char *)ud : "-", err->msg);
    free(ud);
}

/* Tells a (new) spawner where the DNS forwarder and the egress proxy listen, and every
 * sandbox's egress rules
 * again: a spawner that had to rebuild the nftables table has lost them. */
static void
sync_network(void)
{
    if (!sbx_daemon->cfg.net_on)
        return;
    struct sbx_spawner_msg ports = {
        .op = SBX_SPAWNER_NET_PORTS, .dns_port = sbx_dns_port(), .proxy_port = sbx_outbound_port()};
    sbx_spawner_call(&ports, -1, on_network_synced, NULL);
    for (struct sbx_live *l = sbx_daemon->live; l; l = l->next) {
        if (l->dying || sbx_netset_is_default(l->net))
            continue;
        struct sbx_spawner_msg req = {.op = SBX_SPAWNER_NET_POLICY};
        snprintf(req.id, sizeof(req.id), "%s", l->rec->id);
        sbx_netset_to_msg(l->net, &req);
        sbx_spawner_call(&req, -1, on_network_synced, strdup(l->rec->id));
    }
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
    sbx_metrics_spawner_restart();
    sbx_spawner_client_set_channel(sbx_daemon->loop, fd);
    sync_network();
}

static int
start(struct sbx_daemon *d, int listen_fd, int metrics_fd, int control, int channel,
      const char *shown_key, struct sbx_error **err)
{
    sbx_metrics_init();
    _cleanup_free_ char *db = NULL;
    if (asprintf(&db, "%s/db/sbx.db", d->cfg.state_dir) < 0)
        abort();
    d->store = sbx_store_open(db, err);
    /* Creates and kills are fsynced off the event loop, grouped (durable.c). */
    if (d->store == NULL || sbx_store_defer_sync(d->store, err) < 0)
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
    if (sbx_dns_start(d, err) < 0 || sbx_outbound_start(d, err) < 0)
        return -1;
    if (sbx_lifecycle_recover(err) < 0)
        return sbx_error_prefix(err, "recover sandboxes");
    sbx_builder_collect_layers(); /* layers of older definitions, of deleted templates */
    sync_network();
    if (sbx_pool_configure(d->cfg.pools, err) < 0)
        return -1;
    sbx_pool_fill();
    uv_timer_init(d->loop, &d->log_prune);
    uv_timer_start(&d->log_prune, on_housekeeping, 0, SBX_LOG_PRUNE_INTERVAL_MS);
    d->http = sbx_http_server_new(d->loop, sbx_router_on_request, d);
    sbx_http_server_set_logging(d->http, true);
    sbx_http_server_set_observer(d->http, sbx_metrics_request_done, NULL);
    sbx_http_server_set_timeouts(d->http, (uint64_t)d->cfg.header_timeout_s * 1000,
                                 (uint64_t)d->cfg.idle_timeout_s * 1000,
                                 SBX_ANON_IDLE_TIMEOUT_S * 1000);
    sbx_http_server_set_max_conns(d->http, (size_t)d->cfg.max_conns);
    if (d->cfg.tls_cert_pem) {
        /* A copy of the key: this process's is wiped as it loads. */
        char *key = strdup(d->cfg.tls_key_pem);
        struct sbx_tls *tls = key ? sbx_tls_new(d->cfg.tls_cert_pem, key, err) : NULL;
        sbx_secret_free(key);
        if (tls == NULL)
            return -1;
        sbx_http_server_set_tls(d->http, tls);
    }
    if (sbx_http_server_listen_fd(d->http, listen_fd, err) < 0)
        return -1;
    if (metrics_fd >= 0) {
        /* Its own server, so that its requests never meet the API's keys or routes. */
        d->metrics_http = sbx_http_server_new(d->loop, sbx_metrics_on_request, d);
        sbx_http_server_set_observer(d->metrics_http, sbx_metrics_request_done, NULL);
        sbx_http_server_set_timeouts(d->metrics_http, (uint64_t)d->cfg.header_timeout_s * 1000,
                                     (uint64_t)d->cfg.idle_timeout_s * 1000,
                                     SBX_ANON_IDLE_TIMEOUT_S * 1000);
        sbx_http_server_set_max_conns(d->metrics_http, SBX_MIN_CONNECTIONS);
        if (sbx_http_server_listen_fd(d->metrics_http, metrics_fd, err) < 0)
            return -1;
    }
    uv_signal_init(d->loop, &d->sigterm);
    uv_signal_init(d->loop, &d->sigint);
    uv_signal_start(&d->sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_stop_signal, SIGINT);
    int port = sbx_http_server_port(d->http);
    /* Names under localhost resolve to the loopback in browsers and curl: getHost() works on
     * this machine out of the box. */
    if (d->cfg.domain == NULL && asprintf(&d->cfg.domain, "localhost:%d", port) < 0)
        abort();
    const char *host = d->cfg.listen_host;
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
        host = "127.0.0.1";
    if (shown_key) {
        printf("sbx is serving on %s:%d. To use it with the E2B SDKs:\n"
               "export E2B_API_URL=http://%s:%d\n"
               "export E2B_SANDBOX_URL=http://%s:%d\n",
               d->cfg.listen_host, port, host, port, host, port);
        if (*shown_key)
            printf("export E2B_API_KEY=%s\n", shown_key);
        else
            printf("# E2B_API_KEY: one of your keys (an admin makes more: sbx keys create NAME)\n");
        fflush(stdout);
    }
    sbx_log_info("frontend_ready", "listen=%s:%d uid=%d domain=%s", d->cfg.listen_host, port,
                 (int)getuid(), d->cfg.domain);
    return 0;
}

int
sbx_frontend_main(const struct sbx_daemon_config *cfg, int listen_fd, int metrics_fd, int control,
                  int channel, const char *shown_key)
{
    static struct sbx_daemon d;
    sbx_daemon = &d;
    d.cfg = *cfg;
    d.loop = uv_default_loop();
    _cleanup_error_ struct sbx_error *err = NULL;
    if (start(&d, listen_fd, metrics_fd, control, channel, shown_key, &err) < 0) {
        fprintf(stderr, "sbx serve: %s\n", err->msg);
        return 1;
    }
    uv_run(d.loop, UV_RUN_DEFAULT);
    sbx_store_close(d.store);
    return 0;
}
