/* The sandbox's ports, for the daemon: "CONNECT 127.0.0.1:<port>" on the daemon's socket
 * becomes a tunnel to that TCP port of the sandbox's own loopback (IPv4, else IPv6), so a
 * service is reachable through the daemon whether it binds 0.0.0.0 or only 127.0.0.1 or ::1,
 * and whatever the sandbox's egress rules (this path never crosses its network link).
 *
 * With "Sbx-Tls: 1" the service serves HTTPS itself (the sandbox's httpsPorts): the agent
 * speaks TLS to it and plaintext to the daemon, through a socketpair (http/tls.c).
 *
 * Only the daemon reaches this: the socket is the agent's fd 3, whose path the sandbox cannot
 * see; the in-sandbox listeners refuse CONNECT. The destination is always the loopback: the
 * agent takes nothing from the request but the port. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/agent.h"
#include "http/http.h"
#include "http/tls.h"

struct port_conn {
    struct sbx_http_req *req; /* NULL once the daemon's connection went away */
    uv_tcp_t tcp;
    uv_pipe_t plain; /* with tls: the plaintext side, towards the daemon */
    uv_connect_t connect;
    int port;
    bool tried_v6;
    bool tls;
    int handles;
};

static void
on_closed(uv_handle_t *h)
{
    struct port_conn *pc = h->data;
    if (--pc->handles == 0)
        free(pc);
}

static void
close_handle(struct port_conn *pc, uv_handle_t *h)
{
    h->data = pc;
    if (!uv_is_closing(h))
        uv_close(h, on_closed);
}

static void
close_port(void *ud)
{
    struct port_conn *pc = ud;
    close_handle(pc, (uv_handle_t *)&pc->tcp);
}

static void
close_plain(void *ud)
{
    struct port_conn *pc = ud;
    close_handle(pc, (uv_handle_t *)&pc->plain);
}

/* TLS to the service, plaintext to the daemon: the TLS pump between the service's connection
 * and one end of a socketpair, whose other end the daemon's tunnel gets. */
static int
speak_tls(struct port_conn *pc, struct sbx_tunnel_end *end)
{
    static struct sbx_tls *client;
    int sv[2];
    if (client == NULL && (client = sbx_tls_client_new(NULL)) == NULL)
        return -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
        return -1;
    uv_pipe_init(uv_default_loop(), &pc->plain, 0);
    pc->plain.data = pc;
    pc->handles++;
    if (uv_pipe_open(&pc->plain, sv[0]) < 0) {
        close(sv[0]);
        close(sv[1]);
        close_plain(pc);
        return -1;
    }
    sbx_tls_serve(client, uv_default_loop(), (uv_stream_t *)&pc->tcp, close_port, pc, NULL, 0,
                  sv[1]);
    *end = (struct sbx_tunnel_end){
        .stream = (uv_stream_t *)&pc->plain, .close = close_plain, .ud = pc};
    return 0;
}

static void
on_req_closed(struct sbx_http_req *req)
{
    struct port_conn *pc = req->data;
    pc->req = NULL;
}

static void dial(struct port_conn *pc);

static void
on_tcp_reset(uv_handle_t *h)
{
    struct port_conn *pc = h->data;
    pc->handles--;
    dial(pc);
}

static void
on_connected(uv_connect_t *c, int status)
{
    struct port_conn *pc = c->data;
    struct sbx_http_req *req = pc->req;
    if (req && status < 0 && !pc->tried_v6) {
        /* Nothing on 127.0.0.1: a service may bind "localhost" as ::1 only (Node does). */
        pc->tried_v6 = true;
        uv_close((uv_handle_t *)&pc->tcp, on_tcp_reset);
        return;
    }
    if (req == NULL || status < 0) {
        if (req) {
            sbx_http_req_on_close(req, NULL);
            sbx_http_respond_error(req, 502, "port %d: %s", pc->port, uv_strerror(status));
        }
        close_port(pc);
        return;
    }
    sbx_http_req_on_close(req, NULL);
    uv_tcp_nodelay(&pc->tcp, 1);
    struct sbx_tunnel_end end = {.stream = (uv_stream_t *)&pc->tcp, .close = close_port, .ud = pc};
    if (pc->tls && speak_tls(pc, &end) < 0) {
        sbx_http_respond_error(req, 502, "port %d: no TLS", pc->port);
        close_port(pc);
        return;
    }
    sbx_http_tunnel(req, 200, &end);
}

static void
dial(struct port_conn *pc)
{
    struct sockaddr_storage addr;
    if (pc->tried_v6)
        uv_ip6_addr("::1", pc->port, (struct sockaddr_in6 *)&addr);
    else
        uv_ip4_addr("127.0.0.1", pc->port, (struct sockaddr_in *)&addr);
    uv_tcp_init(uv_default_loop(), &pc->tcp);
    pc->tcp.data = pc;
    pc->handles++;
    pc->connect.data = pc;
    int rc = uv_tcp_connect(&pc->connect, &pc->tcp, (struct sockaddr *)&addr, on_connected);
    if (rc < 0)
        on_connected(&pc->connect, rc);
}

void
sbx_agent_connect_port(struct sbx_http_req *req)
{
    char *end = NULL;
    long port =
        strncmp(req->target, "127.0.0.1:", 10) == 0 ? strtol(req->target + 10, &end, 10) : 0;
    if (end == NULL || *end != '\0' || port < 1 || port > 65535) {
        sbx_http_respond_error(req, 400, "CONNECT takes 127.0.0.1:<port>");
        return;
    }
    struct port_conn *pc = calloc(1, sizeof(*pc));
    if (pc == NULL)
        abort();
    pc->req = req;
    pc->port = (int)port;
    const char *tls = sbx_http_req_header(req, "sbx-tls");
    pc->tls = tls && strcmp(tls, "1") == 0;
    req->data = pc;
    sbx_http_req_on_close(req, on_req_closed);
    dial(pc);
}
