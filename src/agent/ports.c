/* The sandbox's ports, for the daemon: "CONNECT 127.0.0.1:<port>" on the daemon's socket
 * becomes a tunnel to that TCP port of the sandbox's own loopback (IPv4, else IPv6), so a
 * service is reachable through the daemon whether it binds 0.0.0.0 or only 127.0.0.1 or ::1,
 * and whatever the sandbox's egress rules (this path never crosses its network link).
 *
 * Only the daemon reaches this: the socket is the agent's fd 3, whose path the sandbox cannot
 * see; the in-sandbox listeners refuse CONNECT. The destination is always the loopback: the
 * agent takes nothing from the request but the port. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "http/http.h"

struct port_conn {
    struct sbx_http_req *req; /* NULL once the daemon's connection went away */
    uv_tcp_t tcp;
    uv_connect_t connect;
    int port;
    bool tried_v6;
};

static void
on_tcp_closed(uv_handle_t *h)
{
    free(h->data);
}

static void
close_port(void *ud)
{
    struct port_conn *pc = ud;
    pc->tcp.data = pc;
    uv_close((uv_handle_t *)&pc->tcp, on_tcp_closed);
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
    dial(h->data);
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
    req->data = pc;
    sbx_http_req_on_close(req, on_req_closed);
    dial(pc);
}
