"""Hostile or broken HTTP input, sent raw (http.client / sockets, not the SDK). Each test
checks the answer a client sees and that the daemon keeps serving afterwards. At the end,
client deadlines, against a daemon of their own; there the SDK runs the long request."""

import base64
import json
import socket
import struct
import time

import pytest

from conftest import own_daemon


def _json(body):
    return json.loads(body.decode("utf-8"))


def _assert_api_error(status, headers, body, want_status):
    assert status == want_status, body[:500]
    assert headers.get("Content-Type", "").startswith("application/json")
    err = _json(body)
    assert err["code"] == want_status
    assert isinstance(err["message"], str) and err["message"]


def _still_serving(d):
    status, _, body = d.request("GET", "/v2/sandboxes")
    assert status == 200
    assert isinstance(_json(body), list)


def _raw_exchange(d, data, read_timeout=10):
    """Sends raw bytes on a fresh connection, returns everything read until close/timeout."""
    s = socket.create_connection((d.host, d.port), timeout=read_timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not c:
                break
            chunks.append(c)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)
    finally:
        s.close()


def _complete(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v.strip())
    return False


def _status_of(raw):
    assert raw.startswith(b"HTTP/1."), f"no HTTP response: {raw[:200]!r}"
    return int(raw.split(b" ", 2)[1])


# -- one real sandbox, created over raw HTTP ------------------------------------------------


@pytest.fixture(scope="module")
def raw_sandbox(sbx_daemon):
    status, _, body = sbx_daemon.request("POST", "/v2/sandboxes",
                                         body={"templateID": "base", "timeout": 300})
    assert status == 201, body
    sbx = _json(body)
    yield sbx
    sbx_daemon.request("DELETE", f"/sandboxes/{sbx['sandboxID']}")


def _envd_headers(sbx, extra=None):
    h = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "49983",
         "Connect-Protocol-Version": "1"}
    if sbx.get("envdAccessToken"):
        h["X-Access-Token"] = sbx["envdAccessToken"]
    h.update(extra or {})
    return h


def _envelopes(body):
    out, i = [], 0
    while i + 5 <= len(body):
        flags, n = struct.unpack(">BI", body[i:i + 5])
        out.append((flags, body[i + 5:i + 5 + n]))
        i += 5 + n
    return out


def _connect_error_code(status, headers, body):
    """The Connect error code of a unary or streaming answer (None if it succeeded)."""
    ctype = headers.get("Content-Type", "")
    if status == 200 and ctype.startswith("application/connect+"):
        envs = _envelopes(body)
        assert envs and envs[-1][0] & 0x02, f"stream without end-of-stream envelope: {body!r}"
        end = _json(envs[-1][1])
        return end.get("error", {}).get("code")
    if status == 200:
        return None
    assert ctype.startswith("application/json"), (status, ctype, body)
    return _json(body)["code"]


# -- control plane --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/sandboxes", "/v2/sandboxes"])
def test_malformed_json_is_400(sbx_daemon, path):
    status, headers, body = sbx_daemon.request(
        "POST", path, body=b'{"templateID": "base",', headers={"Content-Type": "application/json"})
    _assert_api_error(status, headers, body, 400)
    _still_serving(sbx_daemon)


@pytest.mark.parametrize("payload", [
    {"templateID": 5},
    {"templateID": "base", "timeout": "300"},
    {"templateID": "base", "timeout": -5},
    {"templateID": "base", "metadata": {"a": 1}},
    {"templateID": "base", "metadata": ["a"]},
    {"templateID": "base", "envVars": {"A": None}},
    ["templateID", "base"],
    "base",
], ids=["template-int", "timeout-string", "timeout-negative", "metadata-value-int",
        "metadata-list", "envvars-null", "body-array", "body-string"])
def test_wrong_field_types_are_400(sbx_daemon, payload):
    status, headers, body = sbx_daemon.request("POST", "/v2/sandboxes", body=json.dumps(payload),
                                               headers={"Content-Type": "application/json"})
    _assert_api_error(status, headers, body, 400)


@pytest.mark.parametrize("name", ["A=B", "", "=", "PATH=/tmp"],
                         ids=["equals", "empty", "only-equals", "path-override"])
def test_env_var_names_execve_cannot_take_are_400(sbx_daemon, name):
    """execve gets "NAME=value": a name with '=' would set another variable, an empty one is
    none. Create refuses them up front, naming the variable, and leaves no sandbox behind
    (it used to answer 201, and the sandbox died when its agent refused the config)."""
    before = set(sbx_daemon.list_sandbox_ids())
    status, headers, body = sbx_daemon.request(
        "POST", "/v2/sandboxes", body={"templateID": "base", "envVars": {"OK": "1", name: "x"}})
    print(f"envVars name {name!r}: {status} {body.decode()}")
    _assert_api_error(status, headers, body, 400)
    assert f"invalid environment variable name '{name}'" in _json(body)["message"]
    assert set(sbx_daemon.list_sandbox_ids()) == before


def test_env_var_bad_names_through_the_sdks_raise(sbx_daemon, sandbox):
    from e2b import InvalidArgumentException, Sandbox, SandboxException

    with pytest.raises(SandboxException) as e:
        Sandbox.create(envs={"A=B": "1"}, timeout=30)
    print(f"Sandbox.create(envs={{'A=B': '1'}}) raised {type(e.value).__name__}: {e.value}")
    assert "400" in str(e.value) and "'A=B'" in str(e.value)
    # process Start applies the same rule to its envs.
    with pytest.raises(InvalidArgumentException) as e:
        sandbox.commands.run("true", envs={"X=Y": "1"})
    print(f"commands.run(envs={{'X=Y': '1'}}) raised {type(e.value).__name__}: {e.value}")
    assert "'X=Y'" in str(e.value)


def test_env_var_names_beyond_posix_are_kept(sandbox_factory):
    """E2B requires no POSIX shell name: whatever execve can carry reaches the commands."""
    envs = {"my-var.1": "dotted", "1X": "digit", "A B": "b=c"}
    sbx = sandbox_factory(envs=envs)
    out = sbx.commands.run("printenv my-var.1 1X 'A B'").stdout
    assert out == "dotted\ndigit\nb=c\n"


def test_set_timeout_wrong_type_is_400(sbx_daemon, raw_sandbox):
    status, headers, body = sbx_daemon.request(
        "POST", f"/sandboxes/{raw_sandbox['sandboxID']}/timeout", body={"timeout": "soon"})
    _assert_api_error(status, headers, body, 400)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/sandboxes"), ("POST", "/v2/sandboxes"), ("POST", "/sandboxes"),
    ("GET", "/sandboxes/whatever"), ("DELETE", "/sandboxes/whatever"),
])
@pytest.mark.parametrize("key", [None, "", "e2b_" + "0" * 40, "wrong"],
                         ids=["missing", "empty", "other-key", "garbage"])
def test_bad_api_key_is_401(sbx_daemon, method, path, key):
    headers = {} if key is None else {"X-API-KEY": key}
    body = {"templateID": "base"} if method == "POST" else None
    status, rheaders, rbody = sbx_daemon.request(method, path, body=body, headers=headers,
                                                 auth=False)
    _assert_api_error(status, rheaders, rbody, 401)


def test_unknown_sandbox_is_404(sbx_daemon):
    for method, path in [("GET", "/sandboxes/nosuchsbx"), ("DELETE", "/sandboxes/nosuchsbx"),
                         ("POST", "/sandboxes/nosuchsbx/timeout")]:
        body = {"timeout": 10} if method == "POST" else None
        status, headers, rbody = sbx_daemon.request(method, path, body=body)
        _assert_api_error(status, headers, rbody, 404)


def test_chunked_request_body_accepted(sbx_daemon):
    # The JS SDK sends its JSON bodies chunked.
    payload = json.dumps({"templateID": "base", "timeout": 30}).encode()
    half = len(payload) // 2
    raw = (b"POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: " + sbx_daemon.api_key.encode()
           + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n"
           + b"%x\r\n" % half + payload[:half] + b"\r\n"
           + b"%x\r\n" % (len(payload) - half) + payload[half:] + b"\r\n0\r\n\r\n")
    resp = _raw_exchange(sbx_daemon, raw, read_timeout=60)
    assert _status_of(resp) == 201, resp[:500]
    body = resp.partition(b"\r\n\r\n")[2]
    if b"transfer-encoding: chunked" in resp.partition(b"\r\n\r\n")[0].lower():
        body = body.split(b"\r\n", 1)[1]
    sid = json.loads(body[body.index(b"{"):body.rindex(b"}") + 1])["sandboxID"]
    assert sbx_daemon.request("DELETE", f"/sandboxes/{sid}")[0] == 204


def test_keep_alive_serves_several_requests(sbx_daemon):
    import http.client

    conn = http.client.HTTPConnection(sbx_daemon.host, sbx_daemon.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/v2/sandboxes", headers={"X-API-KEY": sbx_daemon.api_key})
            r = conn.getresponse()
            assert r.status == 200
            r.read()
        conn.request("GET", "/v2/sandboxes")  # then an unauthenticated one, same connection
        r = conn.getresponse()
        assert r.status == 401
        r.read()
    finally:
        conn.close()


def test_oversize_headers_rejected_and_daemon_keeps_serving(sbx_daemon):
    big = b"A" * (100 * 1024)
    raw = (b"GET /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: " + sbx_daemon.api_key.encode()
           + b"\r\nX-Big: " + big + b"\r\n\r\n")
    resp = _raw_exchange(sbx_daemon, raw)
    assert _status_of(resp) in (431, 400), resp[:300]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    resp = _raw_exchange(sbx_daemon, b"GET /v2/sandboxes HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert _status_of(resp) in (431, 400), resp[:300]
    _still_serving(sbx_daemon)


def test_oversize_body_is_413(sbx_daemon):
    raw = (b"POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: " + sbx_daemon.api_key.encode()
           + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (1 << 30)
           + b'{"templateID": "')
    resp = _raw_exchange(sbx_daemon, raw)
    assert _status_of(resp) == 413, resp[:300]
    _still_serving(sbx_daemon)


def test_garbage_request_line_is_400(sbx_daemon):
    resp = _raw_exchange(sbx_daemon, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    assert resp == b"" or _status_of(resp) == 400
    resp = _raw_exchange(sbx_daemon, b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
    assert _status_of(resp) == 400
    resp = _raw_exchange(
        sbx_daemon,
        b"POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert _status_of(resp) in (400, 401)
    _still_serving(sbx_daemon)


@pytest.mark.parametrize("header", [b"Transfer-Encoding : chunked", b"Content-Length : 5",
                                    b"X-API-KEY : %s"], ids=["te", "cl", "api-key"])
def test_whitespace_before_header_colon_is_400(sbx_daemon, raw_sandbox, header):
    # RFC 9112 §5.1: a proxy that forwards such a header lets the next server frame the body
    # differently (request smuggling). Here the request would go to a sandbox.
    header = header.replace(b"%s", sbx_daemon.api_key.encode())
    raw = (b"POST /files?path=/tmp/smuggled HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: "
           + raw_sandbox["sandboxID"].encode() + b"\r\n" + header + b"\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")
    resp = _raw_exchange(sbx_daemon, raw)
    status_line = resp.split(b"\r\n", 1)[0]
    print(f"{header.split(b':')[0]!r}: {status_line!r}")
    assert _status_of(resp) == 400, resp[:300]
    err = _json(resp.partition(b"\r\n\r\n")[2])
    assert err == {"code": 400, "message": "whitespace between a header field name and the colon"}
    _still_serving(sbx_daemon)


def test_slow_partial_request_does_not_block_others(sbx_daemon):
    s = socket.create_connection((sbx_daemon.host, sbx_daemon.port))
    try:
        s.sendall(b"POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        _still_serving(sbx_daemon)
        assert time.monotonic() - t0 < 5
    finally:
        s.close()


# -- sandbox traffic --------------------------------------------------------------------------


def test_unknown_sandbox_health_is_502(sbx_daemon):
    status, headers, body = sbx_daemon.request(
        "GET", "/health", auth=False,
        headers={"E2b-Sandbox-Id": "nosuchsandbox", "E2b-Sandbox-Port": "49983"})
    assert status == 502
    assert headers.get("Content-Type", "").startswith("application/json")
    assert _json(body) == {"sandboxId": "nosuchsandbox", "message": "The sandbox was not found",
                           "code": 502}


def test_health_of_running_sandbox_is_204(sbx_daemon, raw_sandbox):
    status, _, body = sbx_daemon.request("GET", "/health", auth=False,
                                         headers=_envd_headers(raw_sandbox))
    assert status == 204 and body == b""


def test_envd_requires_access_token(sbx_daemon, raw_sandbox):
    if not raw_sandbox.get("envdAccessToken"):
        pytest.skip("daemon issues no envd access token")
    headers = _envd_headers(raw_sandbox)
    headers["X-Access-Token"] = "wrong"
    status, rheaders, body = sbx_daemon.request(
        "POST", "/process.Process/List", body={}, headers=headers, auth=False)
    assert status == 401
    assert _json(body)["code"] in (401, "unauthenticated")


def test_unknown_rpc_method_is_connect_error(sbx_daemon, raw_sandbox):
    for path in ("/process.Process/NoSuchMethod", "/nosuch.Service/Call"):
        status, headers, body = sbx_daemon.request(
            "POST", path, body={}, headers=_envd_headers(raw_sandbox), auth=False)
        assert status in (404, 501), (path, status, body)
        assert headers.get("Content-Type", "").startswith("application/json")
        err = _json(body)
        assert err["code"] in ("unimplemented", "not_found"), err


def test_unary_rpc_bad_json_is_invalid_argument(sbx_daemon, raw_sandbox):
    status, headers, body = sbx_daemon.request(
        "POST", "/process.Process/SendSignal", body=b'{"process": {"pid": ',
        headers=_envd_headers(raw_sandbox, {"Content-Type": "application/json"}), auth=False)
    assert status == 400
    assert _json(body)["code"] == "invalid_argument"


def _start_request(cmd):
    msg = json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]},
                      "stdin": False}).encode()
    return struct.pack(">BI", 0, len(msg)) + msg


@pytest.mark.parametrize("body", [
    struct.pack(">BI", 0, 100) + b'{"process":',          # promised 100 bytes, sent 11
    b"\x00\x00\x00",                                      # truncated envelope header
    struct.pack(">BI", 0, 9) + b"not json!",               # payload is not JSON
    struct.pack(">BI", 1, 2) + b"{}",                      # "compressed" flag, never negotiated
], ids=["short-payload", "short-header", "bad-json", "compressed-flag"])
def test_broken_connect_envelope_is_invalid_argument(sbx_daemon, raw_sandbox, body):
    status, headers, rbody = sbx_daemon.request(
        "POST", "/process.Process/Start", body=body, auth=False,
        headers=_envd_headers(raw_sandbox, {"Content-Type": "application/connect+json",
                                            "Connect-Timeout-Ms": "10000"}))
    code = _connect_error_code(status, headers, rbody)
    # A compressed message without negotiated compression is "internal" in connect-go.
    allowed = ("invalid_argument", "internal") if body[:1] == b"\x01" else ("invalid_argument",)
    assert code in allowed, (status, rbody)
    _still_serving(sbx_daemon)


def test_raw_connect_stream_works(sbx_daemon, raw_sandbox):
    status, headers, body = sbx_daemon.request(
        "POST", "/process.Process/Start", body=_start_request("echo raw-ok"), auth=False,
        headers=_envd_headers(raw_sandbox, {"Content-Type": "application/connect+json",
                                            "Connect-Timeout-Ms": "10000"}))
    assert status == 200
    assert headers.get("Content-Type") == "application/connect+json"
    envs = _envelopes(body)
    msgs = [_json(p) for f, p in envs]
    assert envs[-1][0] == 0x02 and "error" not in msgs[-1], msgs[-1]
    assert "start" in msgs[0]["event"]
    out = b"".join(base64.b64decode(m["event"]["data"]["stdout"]) for m in msgs[:-1]
                   if "data" in m.get("event", {}) and "stdout" in m["event"]["data"])
    assert out == b"raw-ok\n"
    end = [m["event"]["end"] for m in msgs[:-1] if "end" in m.get("event", {})]
    assert len(end) == 1 and end[0].get("exitCode", 0) == 0


def test_client_disconnect_mid_stream(sbx_daemon, raw_sandbox):
    msg = _start_request("while true; do echo spam; sleep 0.05; done")
    head = ("POST /process.Process/Start HTTP/1.1\r\nHost: x\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in _envd_headers(
                raw_sandbox, {"Content-Type": "application/connect+json",
                              "Connect-Timeout-Ms": "60000"}).items())
            + f"Content-Length: {len(msg)}\r\n\r\n").encode()
    s = socket.create_connection((sbx_daemon.host, sbx_daemon.port), timeout=10)
    s.sendall(head + msg)
    got = b""
    # Payloads are base64: "spam\n" is c3BhbQo=
    while b"c3BhbQo" not in got:
        c = s.recv(4096)
        assert c, f"stream closed early: {got[:500]!r}"
        got += c
    assert b"200" in got.split(b"\r\n", 1)[0]
    # Abort with RST, mid-body.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()

    _still_serving(sbx_daemon)
    # The process keeps running after a client disconnect (spec §3.4.3); kill it.
    status, _, body = sbx_daemon.request("POST", "/process.Process/List", body={}, auth=False,
                                         headers=_envd_headers(raw_sandbox))
    assert status == 200
    spam = [p for p in _json(body)["processes"] if "spam" in " ".join(p["config"].get("args", []))]
    assert len(spam) == 1
    status, _, _ = sbx_daemon.request(
        "POST", "/process.Process/SendSignal", auth=False, headers=_envd_headers(raw_sandbox),
        body={"process": {"pid": spam[0]["pid"]}, "signal": "SIGNAL_SIGKILL"})
    assert status == 200
    # And the sandbox still runs new commands.
    status, _, body = sbx_daemon.request(
        "POST", "/process.Process/Start", body=_start_request("echo after"), auth=False,
        headers=_envd_headers(raw_sandbox, {"Content-Type": "application/connect+json",
                                            "Connect-Timeout-Ms": "10000"}))
    assert status == 200 and b"YWZ0ZXIK" in body  # base64("after\n")


def test_many_aborted_connections(sbx_daemon):
    for _ in range(50):
        s = socket.create_connection((sbx_daemon.host, sbx_daemon.port))
        s.sendall(b"GET /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    _still_serving(sbx_daemon)


# -- client deadlines: a daemon of its own, with short ones -----------------------------------

DEADLINE_S = 1
CLOSE_WAIT_S = 10 * DEADLINE_S  # behaviour, not timing precision, is under test


@pytest.fixture(scope="module")
def strict_daemon(sbx_daemon, tmp_path_factory):
    """A second daemon whose header and idle timeouts are DEADLINE_S: one set by its flag,
    the other by its environment variable."""
    with own_daemon(sbx_daemon, tmp_path_factory.mktemp("strict"),
                    f"--header-timeout {DEADLINE_S}", {"SBX_IDLE_TIMEOUT": str(DEADLINE_S)}) as d:
        yield d


def _read_until_closed(s, limit_s=CLOSE_WAIT_S):
    """Everything received until the server closes the connection; None if it did not close
    within limit_s."""
    deadline = time.monotonic() + limit_s
    data = b""
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            c = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data
        if not c:
            return data
        data += c
    return None


def test_partial_request_head_is_408_and_closed(strict_daemon):
    with socket.create_connection((strict_daemon.host, strict_daemon.port)) as s:
        s.sendall(b"GET /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: ")
        resp = _read_until_closed(s)
    assert resp is not None, "the server kept a connection with a partial request head"
    head, _, body = resp.partition(b"\r\n\r\n")
    assert _status_of(resp) == 408, resp[:300]
    assert b"connection: close" in head.lower()
    err = _json(body)
    assert err["code"] == 408 and err["message"]
    _still_serving(strict_daemon)


def test_silent_connections_are_closed(strict_daemon):
    import http.client

    # Connected, nothing sent: closed without an answer.
    with socket.create_connection((strict_daemon.host, strict_daemon.port)) as s:
        assert _read_until_closed(s) == b""
    # Kept alive after a request, then silent: closed.
    conn = http.client.HTTPConnection(strict_daemon.host, strict_daemon.port, timeout=10)
    try:
        conn.request("GET", "/v2/sandboxes", headers={"X-API-KEY": strict_daemon.api_key})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Connection") == "keep-alive"
        r.read()
        assert _read_until_closed(conn.sock) == b""
    finally:
        conn.close()
    _still_serving(strict_daemon)


def test_requests_being_handled_are_not_cut(strict_daemon):
    from e2b import Sandbox

    url = strict_daemon.url
    sbx = Sandbox.create(api_key=strict_daemon.api_key, api_url=url, sandbox_url=url,
                         timeout=120)
    try:
        # A server-streaming RPC that stays silent for several deadlines at a time.
        quiet = 4 * DEADLINE_S
        r = sbx.commands.run(f"echo start; sleep {quiet}; echo middle; sleep {quiet}; echo end",
                             timeout=60)
        assert r.stdout == "start\nmiddle\nend\n"
        # An upload whose body arrives slowly, proxied to the agent as it comes.
        boundary = "slowboundary"
        pieces = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"
                  .encode(), b"first half, ", b"second half", f"\r\n--{boundary}--\r\n".encode()]
        headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983",
                   "Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Transfer-Encoding": "chunked", "Connection": "close"}
        if sbx._envd_access_token:
            headers["X-Access-Token"] = sbx._envd_access_token
        head = ("POST /files?path=/tmp/slow.txt HTTP/1.1\r\nHost: x\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        with socket.create_connection((strict_daemon.host, strict_daemon.port)) as s:
            s.sendall(head)
            for p in pieces:
                time.sleep(2 * DEADLINE_S)
                s.sendall(b"%x\r\n%s\r\n" % (len(p), p))
            s.sendall(b"0\r\n\r\n")
            resp = _read_until_closed(s, 30)
        assert resp is not None and _status_of(resp) == 200, resp
        assert sbx.files.read("/tmp/slow.txt") == "first half, second half"
    finally:
        sbx.kill()
