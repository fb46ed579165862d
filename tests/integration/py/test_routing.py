"""Control-plane corners the SDK suites do not reach on their own: metrics, v1 paths,
refreshes, Host-based routing, one keep-alive connection that mixes control-plane and
sandbox requests, and Expect: 100-continue from curl."""

import http.client
import json
import subprocess
import time
from datetime import datetime, timedelta, timezone

from e2b import Sandbox


def _json(resp):
    return json.loads(resp.read() or b"null")


def test_metrics_come_from_the_sandbox_cgroup(sandbox):
    sandbox.commands.run("python3 -c 'x = bytearray(64 << 20); import time; time.sleep(3)'",
                         background=True, timeout=0)
    deadline = time.monotonic() + 20
    metrics = []
    while time.monotonic() < deadline:
        metrics = sandbox.get_metrics()
        if metrics and metrics[-1].mem_used >= 64 << 20:
            break
        time.sleep(0.3)
    assert metrics, "no metric within 20 s"
    m = metrics[-1]
    assert m.cpu_count >= 1
    assert 0 <= m.cpu_used_pct <= 100 * m.cpu_count
    assert m.mem_total == 512 << 20, "the default memory limit"
    assert m.mem_used >= 64 << 20, "the 64 MiB allocation shows in the cgroup"
    assert abs((m.timestamp - datetime.now(timezone.utc)).total_seconds()) < 30
    # A window that ended before the sandbox existed has no samples.
    long_ago = datetime.now(timezone.utc) - timedelta(days=1)
    assert sandbox.get_metrics(start=long_ago - timedelta(hours=1), end=long_ago) == []


def test_v1_create_connect_and_insecure_sandboxes(sbx_daemon):
    status, _, body = sbx_daemon.request("POST", "/sandboxes", body={
        "templateID": "base", "timeout": 60, "secure": False,
        "allow_internet_access": False, "metadata": {}, "envVars": {}})
    assert status == 201
    sb = json.loads(body)
    sid = sb["sandboxID"]
    try:
        assert "envdAccessToken" not in sb and sb["envdVersion"] == "0.6.13"
        # Insecure: envd answers without a token.
        status, _, _ = sbx_daemon.request(
            "POST", "/process.Process/List", body={}, auth=False,
            headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"})
        assert status == 200
        status, _, body = sbx_daemon.request("POST", f"/sandboxes/{sid}/connect",
                                             body={"timeout": 30})
        assert status == 200 and json.loads(body)["sandboxID"] == sid
        status, _, body = sbx_daemon.request("GET", "/sandboxes")
        assert status == 200 and sid in [s["sandboxID"] for s in json.loads(body)]
    finally:
        sbx_daemon.request("DELETE", f"/sandboxes/{sid}")


def test_refreshes_extend_but_never_shorten(sbx_daemon, sandbox):
    sid = sandbox.sandbox_id
    before = Sandbox.get_info(sid).end_at
    status, _, _ = sbx_daemon.request("POST", f"/sandboxes/{sid}/refreshes",
                                      body={"duration": 1})
    assert status == 204
    assert Sandbox.get_info(sid).end_at == before
    status, _, _ = sbx_daemon.request("POST", f"/sandboxes/{sid}/refreshes",
                                      body={"duration": 3600})
    assert status == 204
    assert Sandbox.get_info(sid).end_at - before > timedelta(minutes=50)
    status, _, body = sbx_daemon.request("POST", "/sandboxes/nosuch/refreshes",
                                         body={"duration": 10})
    assert status == 404 and json.loads(body)["code"] == 404


def test_host_header_routing(sbx_daemon, sandbox):
    conn = http.client.HTTPConnection(sbx_daemon.host, sbx_daemon.port, timeout=10)
    try:
        conn.request("GET", "/health", headers={"Host": f"49983-{sandbox.sandbox_id}.sbx.test"})
        r = conn.getresponse()
        r.read()
        assert r.status == 204
        conn.request("GET", "/health", headers={"Host": "49983-nosuchsandbox.sbx.test"})
        r = conn.getresponse()
        assert r.status == 502
        assert _json(r) == {"sandboxId": "nosuchsandbox", "message": "The sandbox was not found",
                            "code": 502}
    finally:
        conn.close()


def test_one_keepalive_connection_mixes_control_plane_and_sandbox(sbx_daemon, sandbox):
    sid = sandbox.sandbox_id
    envd = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983",
            "X-Access-Token": sandbox._envd_access_token}
    api = {"X-API-KEY": sbx_daemon.api_key}
    conn = http.client.HTTPConnection(sbx_daemon.host, sbx_daemon.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", f"/sandboxes/{sid}", headers=api)
            r = conn.getresponse()
            assert r.status == 200 and _json(r)["sandboxID"] == sid
            conn.request("GET", "/health", headers=envd)
            r = conn.getresponse()
            r.read()
            assert r.status == 204
            conn.request("POST", "/process.Process/List", body=b"{}",
                         headers=dict(envd, **{"Content-Type": "application/json"}))
            r = conn.getresponse()
            assert r.status == 200 and "processes" in _json(r)
        # The same socket was used throughout (no reconnect happened).
        assert conn.sock is not None
    finally:
        conn.close()


# -- Expect: 100-continue --------------------------------------------------------------------

EXPECT_TIMEOUT_S = 30  # what curl waits for a 100 before it sends the body anyway


def _curl_expect(url, *args):
    """POSTs with Expect: 100-continue through curl; returns (status, body, 100s seen, s)."""
    t0 = time.monotonic()
    r = subprocess.run(
        ["curl", "-sS", "-v", "--expect100-timeout", str(EXPECT_TIMEOUT_S), "--max-time", "120",
         "-H", "Expect: 100-continue", "-o", "-", "-w", "\n%{http_code}", *args, url],
        capture_output=True, timeout=180)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    body, _, status = r.stdout.rpartition(b"\n")
    continues = r.stderr.count(b"< HTTP/1.1 100 Continue")
    return int(status), body, continues, took


def test_expect_continue_create_answered_at_once(sbx_daemon):
    status, body, continues, took = _curl_expect(
        sbx_daemon.url + "/v2/sandboxes", "-H", f"X-API-KEY: {sbx_daemon.api_key}",
        "-H", "Content-Type: application/json",
        "--data-binary", json.dumps({"templateID": "base", "timeout": 60}))
    print(f"create: status {status}, {continues} x 100 Continue, {took:.2f} s")
    assert status == 201, body
    sbx_daemon.request("DELETE", f"/sandboxes/{json.loads(body)['sandboxID']}")
    assert continues == 1
    assert took < EXPECT_TIMEOUT_S / 2, "the body waited for curl's expect timeout"


def test_expect_continue_upload_through_the_proxy(sbx_daemon, sandbox, tmp_path):
    src = tmp_path / "upload.bin"
    src.write_bytes(b"expect 100-continue\n" * 500)
    status, body, continues, took = _curl_expect(
        sbx_daemon.url + "/files?path=/tmp/expect.txt",
        "-H", f"E2b-Sandbox-Id: {sandbox.sandbox_id}", "-H", "E2b-Sandbox-Port: 49983",
        "-H", f"X-Access-Token: {sandbox._envd_access_token}", "-F", f"file=@{src}")
    print(f"upload: status {status}, {continues} x 100 Continue, {took:.2f} s")
    assert status == 200, body
    assert continues == 1  # the daemon's, and not the agent's as well
    assert took < EXPECT_TIMEOUT_S / 2, "the body waited for curl's expect timeout"
    assert sandbox.files.read("/tmp/expect.txt") == src.read_text()


def test_expect_continue_not_sent_before_a_refusal(sbx_daemon):
    status, body, continues, took = _curl_expect(
        sbx_daemon.url + "/v2/sandboxes", "-H", "X-API-KEY: e2b_" + "0" * 40,
        "-H", "Content-Type: application/json", "--data-binary", json.dumps({"templateID": "base"}))
    print(f"wrong key: status {status}, {continues} x 100 Continue, {took:.2f} s")
    assert status == 401 and json.loads(body)["code"] == 401
    assert continues == 0  # the final answer alone: the body is never sent
    assert took < EXPECT_TIMEOUT_S / 2
