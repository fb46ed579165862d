"""GET /metrics: scraped from a real daemon while sandboxes run, checked with promtool (the
Prometheus project's own linter of the exposition format), and access-controlled."""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import own_daemon
from helpers import http_request, wait_for
from test_serve import _free_port

PROMTOOL = shutil.which("promtool")


def _promtool_check(text):
    if PROMTOOL is None:
        pytest.skip("promtool not installed (scripts/setup.sh test installs prometheus)")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def _samples(text):
    """{(name, frozenset(labels)): value} of the exposition text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def test_metrics_are_valid_and_follow_what_happens(sbx_daemon, tmp_path, sandbox_factory):
    port = _free_port()
    with own_daemon(sbx_daemon, tmp_path, f"--metrics-listen 127.0.0.1:{port}") as d:
        from e2b import Sandbox
        sbx = Sandbox.create(timeout=60, api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        try:
            sbx.commands.run("head -c 20000000 /dev/urandom > /home/user/blob; sync; "
                             "python3 -c 'x = bytearray(64 << 20); import time'")
            assert d.request("GET", "/v2/sandboxes/nonexistent", auth=True)[0] == 404
            assert d.request("GET", "/v2/sandboxes", headers={"X-API-KEY": "e2b_wrong"})[0] == 401
            status, headers, body = http_request("127.0.0.1", port, "GET", "/metrics")
            assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = body.decode()
            _promtool_check(text)
            s = _samples(text)
            sid = sbx.sandbox_id
            labels = frozenset({("sandbox_id", sid), ("template", "base")})
            assert s[("sbx_sandboxes", frozenset({("state", "running"), ("template", "base")}))] == 1
            assert s[("sbx_sandbox_creates_total", frozenset())] == 1
            assert s[("sbx_sandbox_create_duration_seconds_count", frozenset())] == 1
            assert s[("sbx_sandbox_memory_limit_bytes", labels)] == 512 << 20
            assert s[("sbx_sandbox_memory_bytes", labels)] > 0
            assert s[("sbx_sandbox_disk_bytes", labels)] >= 20000000
            assert s[("sbx_sandbox_cpu_seconds_total", labels)] > 0
            assert s[("sbx_http_requests_total",
                      frozenset({("class", "sandboxes"), ("code", "404")}))] >= 1
            assert s[("sbx_http_requests_total",
                      frozenset({("class", "sandbox_traffic"), ("code", "200")}))] >= 1
            assert s[("sbx_auth_failures_total", frozenset())] >= 1
            # The default pools: their targets, and the create counted as a hit or a miss.
            base = frozenset({("template", "base")})
            assert s[("sbx_pool_target", base)] == 2
            assert 0 <= s[("sbx_pool_warm", base)] <= 2
            assert s[("sbx_pool_target", frozenset({("template", "code-interpreter-v1")}))] == 1
            assert (s[("sbx_pool_creates_total", frozenset({("result", "hit")}))]
                    + s[("sbx_pool_creates_total", frozenset({("result", "miss")}))]) == 1
            assert s[("sbx_build_info", frozenset({("version", re.search(
                r'version="([^"]+)"', text).group(1))}))] == 1
        finally:
            sbx.kill()
        text = http_request("127.0.0.1", port, "GET", "/metrics")[2].decode()
        _promtool_check(text)
        s = _samples(text)
        assert s[("sbx_sandbox_ends_total", frozenset({("reason", "killed")}))] == 1
        assert s[("sbx_sandboxes", frozenset({("state", "running"), ("template", "base")}))] == 0
        # A killed sandbox leaves no series behind: cardinality follows running sandboxes.
        assert sbx.sandbox_id not in text
        # The metrics address serves nothing else.
        status, _, body = http_request("127.0.0.1", port, "GET", "/v2/sandboxes",
                                       headers={"X-API-KEY": d.api_key})
        assert status == 404 and json.loads(body)["code"] == 404


def test_metrics_on_the_main_address_need_an_admin_key(sbx_daemon):
    d = sbx_daemon
    assert d.request("GET", "/metrics", auth=False)[0] == 401
    status, _, body = d.request("POST", "/api-keys", {"name": "metrics-reader"})
    normal = json.loads(body)
    try:
        status, _, body = d.request("GET", "/metrics", headers={"X-API-KEY": normal["key"]})
        assert status == 403 and "--metrics-listen" in json.loads(body)["message"]
        status, _, body = d.request("GET", "/metrics")
        assert status == 200
        _promtool_check(body.decode())
    finally:
        d.request("DELETE", f"/api-keys/{normal['id']}")


def test_failed_creates_are_counted_by_code(sbx_daemon, tmp_path):
    """A create that fails (here: the template's layers are missing from the layer cache)."""
    empty = tmp_path / "no-layers"
    empty.mkdir()
    with own_daemon(sbx_daemon, tmp_path, f"--layer-cache {empty} "
                    "--pool base=0,code-interpreter-v1=0") as d:
        assert d.request("POST", "/sandboxes", {"templateID": "base"})[0] == 404
        text = d.request("GET", "/metrics")[2].decode()
        _promtool_check(text)
        s = _samples(text)
        assert s[("sbx_sandbox_create_errors_total", frozenset({("code", "not_found")}))] == 1
        assert s[("sbx_sandbox_creates_total", frozenset())] == 0


def _scrape(d):
    status, _, body = d.request("GET", "/metrics")
    assert status == 200
    _promtool_check(body.decode())
    return _samples(body.decode())


@pytest.mark.timeout(300)
def test_timeouts_and_builds_are_counted(sbx_daemon, sandbox_factory, tmp_path):
    d = sbx_daemon
    timeout = ("sbx_sandbox_ends_total", frozenset({("reason", "timeout")}))
    failed = ("sbx_template_build_duration_seconds_count", frozenset({("status", "error")}))
    before = _scrape(d)
    sid = sandbox_factory(timeout=2).sandbox_id
    assert wait_for(lambda: d.request("GET", f"/sandboxes/{sid}")[0] == 404, 30)
    assert wait_for(lambda: _scrape(d)[timeout] > before[timeout], 10)
    (tmp_path / "Dockerfile").write_text("FROM e2bdev/base\nRUN exit 4\n")
    env = dict(os.environ, E2B_API_URL=d.url, E2B_API_KEY=d.api_key)
    r = subprocess.run([d.binary, "template", "build", str(tmp_path / "Dockerfile"), "--name",
                        "metrics-" + os.urandom(4).hex()], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and "exit status 4" in r.stderr, r.stderr
    after = _scrape(d)
    assert after[failed] == before[failed] + 1
    assert (after[("sbx_template_build_duration_seconds_sum", frozenset({("status", "error")}))]
            > before[("sbx_template_build_duration_seconds_sum",
                      frozenset({("status", "error")}))])
