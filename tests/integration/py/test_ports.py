"""Exposed ports (spec network.md §3): any TCP port a sandbox listens on, on 0.0.0.0 or only
on its loopback, is reachable through the daemon as <port>-<id>.<domain> (Host routing) and
with E2b-Sandbox-Id/E2b-Sandbox-Port: keep-alive, chunked and streamed bodies, WebSocket;
the proxy's errors, the traffic token and maskRequestHost."""

import base64
import http.client
import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from e2b import Sandbox
from helpers import agent_host_pid, wait_for

SERVICES = Path(__file__).parent / "services"


def start_service(sbx, script, port, *args):
    sbx.files.write(f"/tmp/{script}", (SERVICES / script).read_text())
    sbx.commands.run(f"python3 /tmp/{script} {port} {' '.join(args)} >/tmp/{script}.out 2>&1 &")


def conn(d):
    return http.client.HTTPConnection(d.host, d.port, timeout=30)


def get(d, host, path="/", headers=None, method="GET", body=None):
    c = conn(d)
    c.request(method, path, body=body, headers={"Host": host, **(headers or {})})
    r = c.getresponse()
    out = (r.status, r.headers, r.read())
    c.close()
    return out


@pytest.fixture(scope="module")
def served(sbx_daemon):
    """A sandbox with the test service on 0.0.0.0:8000 and on 127.0.0.1:8001 only, and the
    WebSocket echo service on 127.0.0.1:8765."""
    s = Sandbox.create(timeout=600)
    start_service(s, "http_echo.py", 8000)
    start_service(s, "http_echo.py", 8001, "127.0.0.1")
    start_service(s, "ws_echo.py", 8765)
    for port in (8000, 8001):
        assert wait_for(lambda: get(sbx_daemon, s.get_host(port))[0] == 200, 15)
    yield s
    Sandbox.kill(s.sandbox_id)


def test_domain_names_this_server(served, sbx_daemon):
    assert served.sandbox_domain == f"localhost:{sbx_daemon.port}"
    assert served.get_host(8000) == f"8000-{served.sandbox_id}.localhost:{sbx_daemon.port}"
    status, _, body = sbx_daemon.request("GET", f"/sandboxes/{served.sandbox_id}")
    assert json.loads(body)["domain"] == f"localhost:{sbx_daemon.port}"
    # Connect answers it too: a client that only connects builds the same names.
    status, _, body = sbx_daemon.request("POST", f"/sandboxes/{served.sandbox_id}/connect",
                                         {"timeout": 600})
    assert status in (200, 201) and json.loads(body)["domain"] == f"localhost:{sbx_daemon.port}"
    same = Sandbox.connect(served.sandbox_id, timeout=600)
    assert same.get_host(8000) == served.get_host(8000)


@pytest.mark.parametrize("port", [8000, 8001], ids=["any-address", "loopback-only"])
def test_port_by_host_and_by_headers(served, sbx_daemon, port):
    status, _, body = get(sbx_daemon, served.get_host(port), "/hello")
    assert (status, body) == (200, b"ok\n")
    status, _, body = get(sbx_daemon, "localhost", "/hello",
                          {"E2b-Sandbox-Id": served.sandbox_id, "E2b-Sandbox-Port": str(port)})
    assert (status, body) == (200, b"ok\n")


def test_keep_alive_chunked_and_streamed(served, sbx_daemon):
    c = conn(sbx_daemon)
    host = served.get_host(8000)
    # Several requests on one client connection, to a user port and to envd.
    for _ in range(3):
        c.request("GET", "/hello", headers={"Host": host})
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"ok\n")
        c.request("GET", "/health", headers={"Host": served.get_host(49983)})
        r = c.getresponse()
        assert (r.status, r.read()) == (204, b"")
    # A chunked upload comes back whole.
    payload = os.urandom(300_000)
    c.putrequest("POST", "/echo", skip_host=True)
    c.putheader("Host", host)
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    for i in range(0, len(payload), 65536):
        part = payload[i:i + 65536]
        c.send(b"%x\r\n%s\r\n" % (len(part), part))
    c.send(b"0\r\n\r\n")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, payload)
    # A streamed response arrives as it is produced, not at its end.
    c.request("GET", "/stream?n=3&delay=0.7", headers={"Host": host})
    r = c.getresponse()
    arrivals = []
    for _ in range(3):
        line = r.fp.readline()  # the chunk size
        arrivals.append(time.monotonic())
        r.fp.readline()
        r.fp.readline()
    assert arrivals[2] - arrivals[0] > 1.0, arrivals
    c.close()


def test_closed_port_and_gone_sandbox(served, sbx_daemon):
    status, headers, body = get(sbx_daemon, served.get_host(8999))
    assert status == 502 and headers["Content-Type"] == "application/json; charset=utf-8"
    assert body.decode() == json.dumps({"sandboxId": served.sandbox_id, "message":
                                        "The sandbox is running but port is not open",
                                        "port": 8999, "code": 502}, separators=(",", ":"))
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}
    status, headers, body = get(sbx_daemon, served.get_host(8999), headers=browser)
    assert status == 502 and headers["Content-Type"].startswith("text/html")
    assert b"port is not open" in body
    status, _, body = get(sbx_daemon, served.get_host(8999),
                          headers={**browser, "Accept": "application/json"})
    assert json.loads(body)["code"] == 502
    s = Sandbox.create(timeout=60)
    host = s.get_host(8000)
    s.kill()
    status, _, body = get(sbx_daemon, host)
    assert status == 502
    assert json.loads(body) == {"sandboxId": s.sandbox_id, "message": "The sandbox was not found",
                                "code": 502}


def test_port_of_a_paused_sandbox(sbx_daemon):
    """A paused sandbox (without autoResume) is not there for its ports: 502 not found, as
    for a killed one, and the request does not wake it; once resumed, the port answers."""
    s = Sandbox.create(timeout=120)
    try:
        start_service(s, "http_echo.py", 8000)
        host = s.get_host(8000)
        assert wait_for(lambda: get(sbx_daemon, host)[0] == 200, 15)
        assert s.pause() is True
        status, headers, body = get(sbx_daemon, host, "/hello")
        assert (status, headers["Content-Type"]) == (502, "application/json; charset=utf-8")
        assert json.loads(body) == {"sandboxId": s.sandbox_id,
                                    "message": "The sandbox was not found", "code": 502}
        assert Sandbox.get_info(s.sandbox_id).state.value == "paused"
        s.connect()
        assert wait_for(lambda: get(sbx_daemon, host, "/hello")[:3:2] == (200, b"ok\n"), 15)
    finally:
        s.kill()


def test_traffic_token_guards_user_ports(sbx_daemon):
    s = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
    try:
        assert s.traffic_access_token
        start_service(s, "http_echo.py", 8080)
        host = s.get_host(8080)
        assert wait_for(lambda: get(sbx_daemon, host, headers={
            "e2b-traffic-access-token": s.traffic_access_token})[0] == 200, 15)
        status, _, body = get(sbx_daemon, host)
        assert status == 403
        assert json.loads(body) == {"sandboxId": s.sandbox_id, "code": 403, "message":
                                    "Sandbox is secured with traffic access token. Token header "
                                    "'e2b-traffic-access-token' is missing"}
        status, _, body = get(sbx_daemon, host, headers={"e2b-traffic-access-token": "wrong"})
        assert status == 403 and "is invalid" in json.loads(body)["message"]
        # The token never reaches the service; envd's port needs none (it has its own).
        _, _, body = get(sbx_daemon, host, "/headers",
                         {"e2b-traffic-access-token": s.traffic_access_token})
        assert "e2b-traffic-access-token" not in {k.lower() for k in json.loads(body)}
        assert get(sbx_daemon, s.get_host(49983), "/health")[0] == 204
        assert s.commands.run("echo ok").stdout == "ok\n"
    finally:
        s.kill()
    public = Sandbox.create(timeout=120, network={"allow_public_traffic": True})
    try:
        start_service(public, "http_echo.py", 8080)
        assert wait_for(lambda: get(sbx_daemon, public.get_host(8080))[0] == 200, 15)
    finally:
        public.kill()


def test_control_plane_credentials_never_reach_a_service(served, sbx_daemon):
    """Issue 14 (3): code in a sandbox that served a port received every header a client
    sent through the daemon. Now the API key and the sandbox's own tokens stay in the daemon;
    Authorization is the service's own, and goes through."""
    headers = {"X-API-Key": sbx_daemon.api_key, "X-Access-Token": served._envd_access_token,
               "E2B-Traffic-Access-Token": "t", "Authorization": "Bearer service-token"}
    status, _, body = get(sbx_daemon, served.get_host(8000), "/headers", headers)
    seen = {k.lower(): v for k, v in json.loads(body).items()}
    print(f"the service saw: {sorted(seen)}")
    assert status == 200
    assert not {"x-api-key", "x-access-token", "e2b-traffic-access-token"} & set(seen)
    assert sbx_daemon.api_key not in body.decode()
    assert seen["authorization"] == "Bearer service-token"


def test_mask_request_host(sbx_daemon):
    s = Sandbox.create(timeout=120,
                       network={"mask_request_host": "custom-host.example.com:${PORT}"})
    try:
        start_service(s, "http_echo.py", 8080)
        host = s.get_host(8080)
        assert wait_for(lambda: get(sbx_daemon, host)[0] == 200, 15)
        _, _, body = get(sbx_daemon, host, "/headers")
        seen = json.loads(body)
        assert seen["Host"] == "custom-host.example.com:8080"
        assert seen["X-Forwarded-Host"] == host
    finally:
        s.kill()


# -- WebSocket ---------------------------------------------------------------------------------

def ws_connect(d, host):
    c = socket.create_connection((d.host, d.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    c.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
              f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = c.recv(4096)
        assert data, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return c, head.decode(), rest


def ws_frame(data):
    m = os.urandom(4)
    n = len(data)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return bytes([0x81]) + size + m + bytes(x ^ m[i % 4] for i, x in enumerate(data))


def ws_read(c, rest=b""):
    while len(rest) < 2:
        rest += c.recv(65536)
    n = rest[1] & 0x7f
    skip = 2
    if n == 126:
        while len(rest) < 4:
            rest += c.recv(65536)
        n, skip = struct.unpack("!H", rest[2:4])[0], 4
    while len(rest) < skip + n:
        rest += c.recv(65536)
    return rest[skip:skip + n], rest[skip + n:]


def test_websocket_both_ways_and_long_lived(served, sbx_daemon):
    c, head, rest = ws_connect(sbx_daemon, served.get_host(8765))
    assert head.startswith("HTTP/1.1 101 ")
    assert "upgrade: websocket" in head.lower() and "connection: upgrade" in head.lower()
    greeting, rest = ws_read(c, rest)
    assert greeting == b"hello"  # the server speaks first
    for i in range(5):
        msg = os.urandom(20000 if i % 2 else 10).hex().encode()[:30000]
        c.sendall(ws_frame(msg))
        echo, rest = ws_read(c, rest)
        assert echo == msg
        time.sleep(0.5)
    c.sendall(bytes([0x88, 0x80]) + os.urandom(4))  # close
    c.close()


def test_websocket_client_that_vanishes(served, sbx_daemon):
    before = served.commands.run("cat /tmp/ws.log 2>/dev/null | wc -l").stdout.strip()
    c, head, rest = ws_connect(sbx_daemon, served.get_host(8765))
    assert head.startswith("HTTP/1.1 101 ")
    # Gone without a close frame or a FIN: a reset.
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    assert wait_for(lambda: served.commands.run("cat /tmp/ws.log | wc -l").stdout.strip() !=
                    before, 10), "the service never saw its client go"
    assert sbx_daemon.request("GET", "/health")[0] == 200
    # And the service is still reachable.
    c, head, rest = ws_connect(sbx_daemon, served.get_host(8765))
    assert head.startswith("HTTP/1.1 101 ")
    c.close()


def test_ports_are_reachable_whatever_the_egress_rules(sbx_daemon):
    """Ingress goes through the agent's socket, not the sandbox's network link: a sandbox
    denied all egress still serves its ports."""
    s = Sandbox.create(timeout=120, allow_internet_access=False)
    try:
        start_service(s, "http_echo.py", 8000)
        assert wait_for(lambda: get(sbx_daemon, s.get_host(8000))[0] == 200, 15)
    finally:
        s.kill()


def test_invalid_port_is_400(served, sbx_daemon):
    for port in ("abc", "0", "70000", "80x"):
        status, _, body = get(sbx_daemon, "localhost", "/",
                              {"E2b-Sandbox-Id": served.sandbox_id, "E2b-Sandbox-Port": port})
        assert (status, json.loads(body)["message"]) == (400, "Invalid sandbox port"), port


HTTPS_SERVICE = r"""
import http.server, ssl, subprocess, sys
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "/tmp/k.pem",
                "-out", "/tmp/c.pem", "-days", "1", "-subj", "/CN=self-signed"], check=True,
               capture_output=True)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                      http.server.SimpleHTTPRequestHandler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/tmp/c.pem", "/tmp/k.pem")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"""


def _agent_maps(sid):
    """The file names the sandbox's agent has mapped, read from the host."""
    pid = agent_host_pid(sid)
    assert pid is not None, f"no agent found for {sid}"
    with open(f"/proc/{pid}/maps") as f:
        return {os.path.basename(ln.split()[-1]) for ln in f if "/" in ln}


def test_https_ports_reach_a_service_that_serves_tls(sbx_daemon):
    """network.httpsPorts: the service serves HTTPS itself (a self-signed certificate); the
    client still speaks plain HTTP (or TLS) to the daemon, and the agent speaks TLS to it. The
    agent loads OpenSSL only then: every other sandbox is spared its start-up cost and memory."""
    s = Sandbox.create(timeout=120, network={"https_ports": [8443]})
    try:
        s.commands.run("true")
        assert not any(m.startswith(("libssl", "libcrypto")) for m in _agent_maps(s.sandbox_id))
        s.files.write("/tmp/index.html", "over tls\n")
        s.files.write("/tmp/https.py", HTTPS_SERVICE)
        s.commands.run("cd /tmp && python3 /tmp/https.py 8443 >/tmp/https.out 2>&1 &")
        host = s.get_host(8443)
        assert wait_for(lambda: get(sbx_daemon, host, "/index.html")[0] == 200, 20)
        assert get(sbx_daemon, host, "/index.html")[2] == b"over tls\n"
        assert Sandbox.get_info(s.sandbox_id).network["https_ports"] == [8443]
        assert {"libssl.so.3", "libcrypto.so.3"} <= _agent_maps(s.sandbox_id)
    finally:
        s.kill()
