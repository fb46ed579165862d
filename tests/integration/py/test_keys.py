"""Named API keys: REST (/api-keys), the `sbx keys` verbs, revocation, admin routes, and the
limit on failed authentications, against a real daemon."""

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import own_daemon
from helpers import http_request


def _keys(d, key=None):
    status, _, body = d.request("GET", "/api-keys", headers={"X-API-KEY": key or d.api_key})
    assert status == 200, body
    return json.loads(body)


def _create(d, name, admin=False, key=None):
    status, _, body = d.request("POST", "/api-keys", {"name": name, "admin": admin},
                                headers={"X-API-KEY": key or d.api_key})
    assert status == 201, body
    return json.loads(body)


def _status(d, key, method="GET", path="/v2/sandboxes"):
    return d.request(method, path, headers={"X-API-KEY": key})[0]


def test_key_lifecycle_over_rest(sbx_daemon):
    d = sbx_daemon
    new = _create(d, "ci runner")
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", new["key"])
    assert new["mask"] == {"prefix": "e2b_", "valueLength": 40,
                           "maskedValuePrefix": new["key"][4:6],
                           "maskedValueSuffix": new["key"][-4:]}
    assert new["admin"] is False and new["lastUsed"] is None
    assert _status(d, new["key"]) == 200
    listed = {k["id"]: k for k in _keys(d)}
    assert listed[new["id"]]["name"] == "ci runner"
    # Listing never shows a secret, only masks.
    assert "key" not in listed[new["id"]] and new["key"] not in json.dumps(list(listed.values()))
    assert listed[new["id"]]["lastUsed"] is not None
    # A normal key runs sandboxes but manages no keys.
    assert _status(d, new["key"], "GET", "/api-keys") == 403
    assert d.request("POST", "/api-keys", {"name": "x"}, headers={"X-API-KEY": new["key"]})[0] == 403

    # Revocation takes effect at once, also on a kept-alive connection that used the key.
    conn = http.client.HTTPConnection(d.host, d.port, timeout=10)
    try:
        conn.request("GET", "/v2/sandboxes", headers={"X-API-KEY": new["key"]})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        assert d.request("DELETE", f"/api-keys/{new['id']}")[0] == 204
        conn.request("GET", "/v2/sandboxes", headers={"X-API-KEY": new["key"]})
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 401 and body["code"] == 401
    finally:
        conn.close()
    assert new["id"] not in {k["id"] for k in _keys(d)}
    status, _, body = d.request("DELETE", f"/api-keys/{new['id']}")
    assert status == 404 and json.loads(body)["code"] == 404


@pytest.mark.parametrize("body,message", [
    ({}, "'name' is required"),
    ({"name": ""}, "1 to 64"),
    ({"name": "x" * 65}, "1 to 64"),
    ({"name": "a\nb"}, "control characters"),
    ({"name": 5}, "name"),
])
def test_bad_key_requests(sbx_daemon, body, message):
    status, _, raw = sbx_daemon.request("POST", "/api-keys", body)
    assert status == 400 and message in json.loads(raw)["message"]


def test_renaming_is_refused_clearly(sbx_daemon):
    k = _create(sbx_daemon, "renamed")
    status, _, body = sbx_daemon.request("PATCH", f"/api-keys/{k['id']}", {"name": "new"})
    assert status == 501 and "renaming API keys is not supported" in json.loads(body)["message"]
    assert sbx_daemon.request("DELETE", f"/api-keys/{k['id']}")[0] == 204


def test_last_admin_key_cannot_be_revoked_and_concurrent_revocations(sbx_daemon, tmp_path):
    with own_daemon(sbx_daemon, tmp_path) as d:
        (only,) = _keys(d)
        assert only["admin"] and only["name"] == "config-" + d.api_key[-4:]
        status, _, body = d.request("DELETE", f"/api-keys/{only['id']}")
        assert status == 409 and "last admin key" in json.loads(body)["message"]
        # Two admin keys revoked at once, both with the second one: exactly one goes, one
        # admin key stays. The other request is refused: as the last admin key's revocation
        # (409) if it came second, or for its revoked credential (401) if the second key's
        # own revocation came first.
        second = _create(d, "second admin", admin=True)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(
                lambda k: d.request("DELETE", f"/api-keys/{k['id']}",
                                    headers={"X-API-KEY": second["key"]})[0], [only, second]))
        assert statuses in ([204, 401], [204, 409])
        assert sorted(_status(d, k) for k in (d.api_key, second["key"])) == [200, 401]
        survivor = next(k for k in (d.api_key, second["key"]) if _status(d, k) == 200)
        # Keys made concurrently are all distinct and all listed.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda i: _create(d, f"k{i}", key=survivor), range(16)))
        remaining = {k["id"] for k in _keys(d, survivor) if not k["admin"]}
        assert {m["id"] for m in made} <= remaining and len({m["key"] for m in made}) == 16


def test_revoked_startup_keys_never_come_back(sbx_daemon, tmp_path):
    with own_daemon(sbx_daemon, tmp_path) as d:
        admin = _create(d, "ops", admin=True)
        startup = next(k for k in _keys(d) if k["name"].startswith("config-"))
        assert d.request("DELETE", f"/api-keys/{startup['id']}",
                         headers={"X-API-KEY": admin["key"]})[0] == 204
        assert _status(d, d.api_key) == 401
        # A restart with the revoked --api-key refuses to start rather than revive it.
        d.stop()
        r = subprocess.run(d.argv(), capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "has been revoked" in r.stderr
        d.api_key = admin["key"]  # for own_daemon's clean-up
        d.argv = lambda: [d.binary, "serve", "--listen", f"{d.host}:{d.port}",
                          "--state-dir", d.state_dir]
        d.start()
        assert _status(d, admin["key"]) == 200


def test_generated_key_is_a_named_key_and_stays_revoked(sbx_daemon):
    from test_serve import _free_port, _read_exports, _serve, _stop
    state = tempfile.mkdtemp(prefix="sbx-keys-", dir="/var/tmp")
    os.chmod(state, 0o711)
    port = _free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--state-dir", state]

    def call(method, path, key, body=None):
        hdrs = {"X-API-KEY": key, "Content-Type": "application/json"}
        status, _, raw = http_request("127.0.0.1", port, method, path,
                                      json.dumps(body).encode() if body else None, hdrs)
        return status, json.loads(raw) if raw else None

    try:
        p = _serve(sbx_daemon.binary, *args)
        try:
            key = _read_exports(p)["E2B_API_KEY"]
            status, (initial,) = call("GET", "/api-keys", key)
            assert initial["name"] == "initial" and initial["admin"]
            other = call("POST", "/api-keys", key, {"name": "other", "admin": True})[1]
            assert call("DELETE", f"/api-keys/{initial['id']}", other["key"])[0] == 204
        finally:
            assert _stop(p) == 0
        # Restarted, the daemon neither revives the revoked key nor makes a new one.
        p = _serve(sbx_daemon.binary, *args)
        try:
            lines = [p.stdout.readline() for _ in range(4)]
            assert not any(line.startswith("export E2B_API_KEY") for line in lines), lines
            assert any("sbx keys create" in line for line in lines), lines
            assert not os.path.exists(os.path.join(state, "api_key"))
            assert call("GET", "/v2/sandboxes", key)[0] == 401
            assert call("GET", "/v2/sandboxes", other["key"])[0] == 200
        finally:
            assert _stop(p) == 0
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_failed_authentications_are_limited_per_address(sbx_daemon, tmp_path):
    with own_daemon(sbx_daemon, tmp_path) as d:
        statuses = [_status(d, "e2b_wrong") for _ in range(30)]
        assert statuses == [401] * 30
        status, headers, body = d.request("GET", "/v2/sandboxes", headers={"X-API-KEY": "e2b_x"})
        assert status == 429 and int(headers["Retry-After"]) > 0
        assert "too many failed authentications" in json.loads(body)["message"]
        # While blocked, even a valid key is not checked: the answers tell a guesser nothing.
        assert _status(d, d.api_key) == 429
        assert d.request("GET", "/health", auth=False)[0] == 200
        log = d.log_path.read_text()
        assert "event=auth_blocked remote=127.0.0.1 failures=30" in log
        assert re.search(r"status=401 .*remote=127\.0\.0\.1 error=\"Invalid API key", log)
        d.stop()  # own_daemon cannot kill sandboxes from a blocked address: nothing to kill
        d.start()
        assert _status(d, d.api_key) == 200


def test_keys_cli(sbx_daemon):
    env = dict(os.environ, E2B_API_URL=sbx_daemon.url, E2B_API_KEY=sbx_daemon.api_key)

    def sbx(*args):
        return subprocess.run([sbx_daemon.binary, "keys", *args], env=env, capture_output=True,
                              text=True, timeout=30)

    r = sbx("create", "from-cli")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", key) and "not shown again" in r.stderr
    table = sbx("ls")
    assert table.returncode == 0 and "from-cli" in table.stdout
    assert key not in table.stdout and f"e2b_{key[4:6]}...{key[-4:]}" in table.stdout
    listed = json.loads(sbx("ls", "--format", "json").stdout)
    assert any(k["name"] == "from-cli" and not k["admin"] for k in listed)
    # A normal key cannot manage keys; the CLI says why.
    r = subprocess.run([sbx_daemon.binary, "keys", "ls"], capture_output=True, text=True,
                       env=dict(env, E2B_API_KEY=key))
    assert r.returncode == 1 and "needs an admin API key" in r.stderr
    r = sbx("create", "admin-from-cli", "--admin", "--format", "json")
    admin = json.loads(r.stdout)
    assert admin["admin"] is True and admin["key"].startswith("e2b_")
    # Revoke by name and by id.
    assert sbx("revoke", "from-cli").returncode == 0
    assert sbx("revoke", admin["id"]).returncode == 0
    assert "from-cli" not in sbx("ls").stdout
    r = sbx("revoke", "from-cli")
    assert r.returncode == 1 and "no API key has the id or name 'from-cli'" in r.stderr
    assert sbx("frob").returncode == 2 and sbx("create").returncode == 2


def test_revocation_ends_an_open_follow(sbx_daemon, sandbox):
    """`sbx logs -f` with a key polls with it: its next request after the revocation fails,
    and it stops with the reason."""
    d = sbx_daemon
    k = _create(d, "follower")
    env = dict(os.environ, E2B_API_URL=d.url, E2B_API_KEY=k["key"])
    p = subprocess.Popen([d.binary, "logs", "-f", sandbox.sandbox_id], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "sandbox_create" in p.stdout.readline()
        assert d.request("DELETE", f"/api-keys/{k['id']}")[0] == 204
        assert p.wait(20) == 1
        assert "unauthorized: Invalid API key" in p.stderr.read()
        assert sandbox.is_running()  # the sandbox goes on; only the key's requests end
    finally:
        p.kill()
