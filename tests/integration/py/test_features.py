"""docs/features.md, checked: every row of its table names an E2B feature and its state in
sbx, and here every row has a probe that checks that state against the real daemon. A
"supported" probe uses the feature through the official SDK; a "not supported" probe asserts
a 4xx/501 whose message names the feature; a "partial" probe does both. A row without a
probe, a probe without a row, or a state that differs from the probe's, fails.

Probes share a few sandboxes (made on first use, killed at the end of the module) to stay
fast on small machines. Fixtures: tests/conftest.py."""

import json
import re
import secrets
from pathlib import Path

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState, Template, Volume
from e2b.exceptions import BuildException
from e2b_code_interpreter import Sandbox as CodeInterpreter

from helpers import http_request, wait_for

DOC = Path(__file__).resolve().parents[3] / "docs" / "features.md"
STATES = ("supported", "partial", "not supported")


def _rows():
    """{feature: state} of the table in docs/features.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 3 or cells[0] in ("Feature", "---"):
            continue
        assert cells[0] not in rows, f"row {cells[0]!r} twice in {DOC}"
        rows[cells[0]] = cells[1]
    return rows


ROWS = _rows()


# -- shared sandboxes ----------------------------------------------------------------------


class Shared:
    """Sandboxes made on first use by name, killed at the end of the module."""

    def __init__(self, daemon):
        self.daemon = daemon
        self._made = {}

    def get(self, name, make):
        if name not in self._made:
            self._made[name] = make()
        return self._made[name]

    def base(self):
        return self.get("base", lambda: Sandbox.create(timeout=300, envs={"FEATURE": "on"},
                                                       metadata={"probe": "features"}))

    def ci(self):
        return self.get("ci", lambda: CodeInterpreter.create(timeout=300))

    def info(self, sbx):
        """The raw getInfo JSON of sbx."""
        status, _, body = self.daemon.request("GET", f"/sandboxes/{sbx.sandbox_id}")
        assert status == 200, body
        return json.loads(body)

    def close(self):
        for sbx in self._made.values():
            try:
                Sandbox.kill(sbx.sandbox_id)
            except Exception:
                pass


@pytest.fixture(scope="module")
def shared(sbx_daemon):
    s = Shared(sbx_daemon)
    yield s
    s.close()


def refused(status, body, *names):
    """A refusal: 400 or 501 in E2B's error format whose message names the feature (a 404
    would read as "no such thing" to the SDKs)."""
    assert status in (400, 501), (status, body)
    err = json.loads(body)
    assert err["code"] == status, err
    for name in names:
        assert name.lower() in err["message"].lower(), (name, err["message"])


def refused_by_sdk(call, *names):
    """The same through the SDK: the call raises, and its message has the status and names
    the feature."""
    with pytest.raises(Exception) as e:
        call()
    assert re.search(r"\b(400|501)\b", str(e.value)), str(e.value)
    for name in names:
        assert name.lower() in str(e.value).lower(), (name, str(e.value))


def create_raw(d, body, headers=None):
    return d.request("POST", "/v2/sandboxes", body={"templateID": "base", **body}, headers=headers)


# -- probes: sandboxes ---------------------------------------------------------------------


def p_create(s):
    status, _, body = s.daemon.request("POST", "/sandboxes", body={
        "templateID": "base", "timeout": 30, "secure": True, "allow_internet_access": True})
    assert status == 201, body
    Sandbox.kill(json.loads(body)["sandboxID"])
    assert s.base().is_running()


def p_builtin_templates(s):
    assert s.base().get_info().template_id == "base"
    status, _, body = create_raw(s.daemon, {"templateID": "no-such-template"})
    refused(status, body, "no-such-template")


def p_custom_templates(s):
    name = "features-" + secrets.token_hex(4)
    Template.build(Template().from_base_image().run_cmd("echo built > /home/user/f"), name,
                   cpu_count=1, memory_mb=512)
    sbx = Sandbox.create(name, timeout=30)
    try:
        assert sbx.commands.run("cat /home/user/f").stdout == "built\n"
    finally:
        sbx.kill()
    status, _, body = s.daemon.request("GET", "/templates")
    assert status == 200 and name.encode() in body, body
    # fromImage pulls (test_images.py); one no registry serves fails the base step.
    from conftest import _free_port
    ref = f"127.0.0.1:{_free_port()}/ubuntu:22.04"
    with pytest.raises(BuildException) as e:
        Template.build(Template().from_image(ref), name + "-img", cpu_count=1, memory_mb=512)
    assert f"failed to pull image {ref}: " in str(e.value) and "refused" in str(e.value)
    assert s.daemon.request("DELETE", f"/templates/{name}")[0] == 204


def p_connect(s):
    sbx = s.base()
    same = Sandbox.connect(sbx.sandbox_id)
    assert same.sandbox_id == sbx.sandbox_id and same.is_running()


def p_kill(s):
    sbx = Sandbox.create(timeout=30)
    assert Sandbox.kill(sbx.sandbox_id) is True
    assert not sbx.is_running()
    assert Sandbox.kill(sbx.sandbox_id) is False


def p_timeout(s):
    sbx = s.base()
    before = sbx.get_info().end_at
    sbx.set_timeout(600)
    assert sbx.get_info().end_at > before
    status, _, _ = s.daemon.request("POST", f"/sandboxes/{sbx.sandbox_id}/refreshes",
                                    body={"duration": 1})
    assert status == 204
    sbx.set_timeout(300)


def p_info(s):
    info = s.base().get_info()
    assert info.state.value == "running" and info.metadata == {"probe": "features"}
    assert info.lifecycle and info.lifecycle["on_timeout"] == "kill"


def p_list(s):
    sbx = s.base()
    query = SandboxQuery(metadata={"probe": "features"}, state=[SandboxState.RUNNING])
    found = Sandbox.list(query=query, limit=1).next_items()
    assert [x.sandbox_id for x in found] == [sbx.sandbox_id]
    s.ci()  # a second sandbox, for the deprecated v1 list to have a page to cut
    status, headers, body = s.daemon.request("GET", "/sandboxes?limit=1")
    assert status == 200 and len(json.loads(body)) == 1 and headers.get("X-Next-Token"), \
        "the v1 list applies limit"


def p_env_vars(s):
    assert s.base().commands.run("echo $FEATURE").stdout == "on\n"


def p_secure(s):
    sbx = s.base()
    status, _, body = s.daemon.request(
        "POST", "/process.Process/List", body={},
        headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"})
    assert status == 401, body
    assert sbx.commands.list() is not None


def p_signed_urls(s):
    sbx = s.base()
    sbx.files.write("signed.txt", "signed")
    url = sbx.download_url("signed.txt", use_signature_expiration=60)
    assert "signature=" in url
    target = url[len(s.daemon.url):]
    status, _, body = http_request(s.daemon.host, s.daemon.port, "GET", target)
    assert status == 200 and body == b"signed"


def p_idempotency(s):
    status, _, body = create_raw(s.daemon, {}, headers={"Idempotency-Key": "k-1"})
    refused(status, body, "Idempotency-Key")


def p_metrics(s):
    assert len(s.base().get_metrics()) >= 1


def p_metrics_many(s):
    sid = s.base().sandbox_id
    status, _, body = s.daemon.request("GET", f"/sandboxes/metrics?sandbox_ids={sid}")
    refused(status, body, "/sandboxes/metrics")


def p_logs(s):
    sbx = s.base()
    sbx.commands.run("true")
    status, _, body = s.daemon.request("GET", f"/v2/sandboxes/{sbx.sandbox_id}/logs")
    assert status == 200 and json.loads(body)["logs"], body


# -- probes: commands, files, code -----------------------------------------------------------


def p_commands(s):
    sbx = s.base()
    h = sbx.commands.run("read x; echo got $x", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "it\n")
    assert h.wait().stdout == "got it\n"


def p_pty(s):
    from e2b import PtySize

    sbx = s.base()
    out = []
    h = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(h.pid, b"echo pty-$((40+2)); exit\n")
    h.wait(on_pty=out.append)
    assert b"pty-42" in b"".join(out)


def p_filesystem(s):
    fs = s.base().files
    fs.make_dir("probe/d")
    fs.write("probe/d/a.txt", "a")
    fs.rename("probe/d/a.txt", "probe/b.txt")
    assert fs.read("probe/b.txt") == "a"
    assert {e.name for e in fs.list("probe", depth=2)} == {"d", "b.txt"}
    fs.remove("probe")
    assert not fs.exists("probe")


def p_file_metadata(s):
    fs = s.base().files
    fs.write("meta.txt", "m", metadata={"owner": "probe"})
    assert fs.get_info("meta.txt").metadata == {"owner": "probe"}


def p_watchers(s):
    sbx = s.base()
    sbx.files.make_dir("watched")
    w = sbx.files.watch_dir("watched")
    sbx.files.write("watched/new.txt", "x")
    assert wait_for(lambda: any(e.name == "new.txt" for e in w.get_new_events()))
    w.stop()


def p_code(s):
    ex = s.ci().run_code("x = 41\nx + 1")
    assert ex.text == "42" and ex.execution_count >= 1


def p_languages(s):
    ci = s.ci()
    assert ci.run_code("1 + 1", language="javascript").text == "2"
    assert "bash-ok" in "".join(ci.run_code("echo bash-ok", language="bash").logs.stdout)


def p_contexts(s):
    ci = s.ci()
    ctx = ci.create_code_context(cwd="/tmp")
    assert ci.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
    assert ctx.id in [c.id for c in ci.list_code_contexts()]
    ci.remove_code_context(ctx)


def p_rich_results(s):
    ex = s.ci().run_code("from IPython.display import HTML\nHTML('<b>rich</b>')")
    assert ex.results and ex.results[0].html == "<b>rich</b>"


# -- probes: network -----------------------------------------------------------------------


def _net(s):
    """One sandbox with every network option that has to be fixed at create."""
    return s.get("net", lambda: Sandbox.create(timeout=300, allow_internet_access=False, network={
        "allow_out": ["example.com"], "dns_servers": ["1.1.1.1"],
        "allow_public_traffic": False, "mask_request_host": "masked.example:${PORT}",
        "https_ports": [8443]}))


def p_internet_switch(s):
    info = s.info(_net(s))
    assert info["allowInternetAccess"] is False
    assert info["network"]["denyOut"] == ["0.0.0.0/0"]


def p_egress_lists(s):
    assert s.info(_net(s))["network"]["allowOut"] == ["example.com"]
    status, _, body = create_raw(s.daemon, {"network": {"denyOut": ["example.com"]}})
    refused(status, body, "denied CIDR")


def p_dns_servers(s):
    assert s.info(_net(s))["network"]["dnsServers"] == ["1.1.1.1"]


def p_header_rules(s):
    status, _, body = create_raw(s.daemon, {"network": {"rules": {"example.com": [{}]}}})
    refused(status, body, "network.rules")


def p_egress_proxy(s):
    sbx = s.get("proxy", lambda: Sandbox.create(timeout=60, network={
        "egress_proxy": {"address": "198.51.100.9:1080", "username": "u", "password": "p"}}))
    assert s.info(sbx)["network"]["egressProxy"] == {"address": "198.51.100.9:1080",
                                                     "username": "u"}
    status, _, body = create_raw(s.daemon, {"network": {"egressProxy": {
        "address": "198.51.100.9:1080", "tls": {"enabled": True}}}})
    refused(status, body, "egressProxy.tls")


def p_update_network(s):
    sbx = s.base()
    sbx.update_network({"deny_out": ["198.51.100.7"]})
    assert s.info(sbx)["network"]["denyOut"] == ["198.51.100.7"]
    sbx.update_network({})
    assert "denyOut" not in s.info(sbx).get("network", {})


def p_private_traffic(s):
    sbx = _net(s)
    assert sbx.traffic_access_token
    status, _, body = s.daemon.request(
        "GET", "/", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"})
    assert status == 403 and "traffic access token" in json.loads(body)["message"]


def p_mask_host(s):
    assert s.info(_net(s))["network"]["maskRequestHost"] == "masked.example:${PORT}"


def p_https_ports(s):
    assert s.info(_net(s))["network"]["httpsPorts"] == [8443]


def p_exposed_ports(s):
    sbx = s.base()
    sbx.commands.run("python3 -m http.server 8000 --directory /tmp", background=True)
    assert sbx.get_host(8000).startswith(f"8000-{sbx.sandbox_id}.")

    def served():
        return s.daemon.request("GET", "/", headers={
            "E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"})[0] == 200

    assert wait_for(served, timeout=20)


def p_iam(s):
    status, _, body = create_raw(s.daemon, {"iam": {"tokens": {
        "aws": {"audience": "sts.amazonaws.com", "tokenType": "JWT-SVID"}}}})
    refused(status, body, "iam")
    refused_by_sdk(lambda: Sandbox.create(timeout=30, iam={"tokens": {
        "aws": {"audience": "sts.amazonaws.com", "token_type": "JWT-SVID"}}}), "iam")


def p_mcp(s):
    # The SDK's default template for MCP is E2B's mcp-gateway, which sbx does not have.
    refused_by_sdk(lambda: Sandbox.create(timeout=30, mcp={"exa": {"apiKey": "k"}}),
                   "mcp-gateway")
    # On a template without the gateway's binary the SDK's own start fails, and the SDK kills
    # the sandbox it made.
    tag = secrets.token_hex(8)
    with pytest.raises(Exception, match="Failed to start MCP gateway"):
        Sandbox.create("base", timeout=30, metadata={"mcp": tag}, mcp={"exa": {"apiKey": "k"}})
    assert not Sandbox.list(query=SandboxQuery(metadata={"mcp": tag})).next_items()
    status, _, body = create_raw(s.daemon, {"mcp": "not an object"})
    assert status == 400 and "mcp" in json.loads(body)["message"], body


# -- probes: pause, snapshots, volumes, accounts ---------------------------------------------


def _paused(sbx):
    return sbx.get_info().state.value == "paused"


def p_pause(s):
    sbx = s.get("pause", lambda: Sandbox.create(timeout=300))
    h = sbx.commands.run("sleep 600", background=True)
    assert sbx.pause() and not sbx.is_running()
    Sandbox.connect(sbx.sandbox_id)
    assert h.pid in [p.pid for p in sbx.commands.list()]


def p_fs_pause(s):
    sbx = s.get("pause", lambda: Sandbox.create(timeout=300))
    sbx.files.write("kept.txt", "kept")
    assert sbx.pause(mode="filesystem")
    assert s.info(sbx)["pauseMode"] == "filesystem"
    Sandbox.connect(sbx.sandbox_id)
    assert sbx.files.read("kept.txt") == "kept"


def _auto(s):
    sbx = s.get("auto", lambda: Sandbox.create(
        timeout=1, lifecycle={"on_timeout": "pause", "auto_resume": True}))
    s.get("auto-paused", lambda: wait_for(lambda: _paused(sbx), timeout=60))
    return sbx


def p_auto_pause(s):
    sbx = _auto(s)
    assert s.get("auto-paused", lambda: None), "not paused at its timeout"
    assert sbx.get_info().lifecycle["on_timeout"] == "pause"


def p_auto_resume(s):
    sbx = _auto(s)
    assert sbx.commands.run("echo awake").stdout == "awake\n"
    assert sbx.get_info().state.value == "running"
    sbx.set_timeout(60)


def p_snapshots(s):
    sbx = s.base()
    sbx.files.write("snap.txt", "in the snapshot")
    snap = sbx.create_snapshot()
    try:
        assert snap.snapshot_id in [i.snapshot_id for i in sbx.list_snapshots().next_items()]
        child = Sandbox.create(snap.snapshot_id, timeout=60)
        try:
            assert child.files.read("snap.txt") == "in the snapshot"
        finally:
            child.kill()
        refused_by_sdk(lambda: sbx.create_snapshot(mode="full"), "snapshots of memory")
    finally:
        assert Sandbox.delete_snapshot(snap.snapshot_id)


def p_fork(s):
    sbx = s.base()
    sbx.files.write("fork.txt", "forked")
    (child,) = sbx.fork(timeout=60)
    try:
        assert child.sandbox_id != sbx.sandbox_id
        assert child.files.read("fork.txt") == "forked"
    finally:
        child.kill()
        for snap in Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items():
            Sandbox.delete_snapshot(snap.snapshot_id)


def p_volumes(s):
    vol = Volume.create("features-" + secrets.token_hex(4))
    try:
        sbx = Sandbox.create(timeout=60, volume_mounts={"/mnt/v": vol})
        try:
            sbx.commands.run("echo in-volume > /mnt/v/f.txt")
        finally:
            Sandbox.kill(sbx.sandbox_id)
        assert vol.read_file("/f.txt") == "in-volume\n"
    finally:
        Volume.destroy(vol.volume_id)


def p_api_keys(s):
    d = s.daemon
    status, _, body = d.request("POST", "/api-keys", {"name": "features"})
    assert status == 201, body
    key = json.loads(body)
    status, _, body = d.request("PATCH", f"/api-keys/{key['id']}", {"name": "renamed"})
    refused(status, body, "renaming API keys")
    assert d.request("DELETE", f"/api-keys/{key['id']}")[0] == 204


def p_teams(s):
    status, _, body = s.daemon.request("GET", "/teams")
    refused(status, body, "teams")


def p_secrets(s):
    status, _, body = s.daemon.request("GET", "/secrets")
    refused(status, body, "secrets")


SUPPORTED, PARTIAL, NOT = STATES

PROBES = {
    "Create a sandbox": (SUPPORTED, p_create),
    "Built-in templates": (SUPPORTED, p_builtin_templates),
    "Custom templates": (PARTIAL, p_custom_templates),
    "Connect and resume": (SUPPORTED, p_connect),
    "Kill": (SUPPORTED, p_kill),
    "Timeout and refresh": (SUPPORTED, p_timeout),
    "Sandbox info": (SUPPORTED, p_info),
    "List with filters and pages": (SUPPORTED, p_list),
    "Environment variables": (SUPPORTED, p_env_vars),
    "Secure sandboxes": (SUPPORTED, p_secure),
    "Signed file URLs": (SUPPORTED, p_signed_urls),
    "Idempotent create": (NOT, p_idempotency),
    "Sandbox metrics": (SUPPORTED, p_metrics),
    "Metrics of several sandboxes": (NOT, p_metrics_many),
    "Sandbox logs": (SUPPORTED, p_logs),
    "Commands": (SUPPORTED, p_commands),
    "PTY": (SUPPORTED, p_pty),
    "Filesystem": (SUPPORTED, p_filesystem),
    "File metadata": (SUPPORTED, p_file_metadata),
    "Directory watchers": (SUPPORTED, p_watchers),
    "Code interpreter": (SUPPORTED, p_code),
    "Code interpreter languages": (SUPPORTED, p_languages),
    "Code interpreter contexts": (SUPPORTED, p_contexts),
    "Rich results": (SUPPORTED, p_rich_results),
    "Internet access switch": (SUPPORTED, p_internet_switch),
    "Egress allow and deny lists": (SUPPORTED, p_egress_lists),
    "DNS servers": (SUPPORTED, p_dns_servers),
    "Egress header rules": (NOT, p_header_rules),
    "Egress proxy": (PARTIAL, p_egress_proxy),
    "Update network": (SUPPORTED, p_update_network),
    "Private traffic": (SUPPORTED, p_private_traffic),
    "Host masking": (SUPPORTED, p_mask_host),
    "HTTPS sandbox ports": (SUPPORTED, p_https_ports),
    "Exposed ports": (SUPPORTED, p_exposed_ports),
    "Workload identity": (NOT, p_iam),
    "MCP gateway": (PARTIAL, p_mcp),
    "Pause and resume": (SUPPORTED, p_pause),
    "Filesystem-only pause": (SUPPORTED, p_fs_pause),
    "Auto-pause": (SUPPORTED, p_auto_pause),
    "Auto-resume": (SUPPORTED, p_auto_resume),
    "Snapshots": (PARTIAL, p_snapshots),
    "Fork": (PARTIAL, p_fork),
    "Volumes": (SUPPORTED, p_volumes),
    "API keys": (PARTIAL, p_api_keys),
    "Teams": (NOT, p_teams),
    "Secrets": (NOT, p_secrets),
}


def test_every_row_has_a_probe_and_every_probe_a_row():
    assert ROWS, f"no table in {DOC}"
    assert sorted(set(ROWS) - set(PROBES)) == [], "rows of docs/features.md without a probe"
    assert sorted(set(PROBES) - set(ROWS)) == [], "probes without a row in docs/features.md"
    bad = {k: v for k, v in ROWS.items() if v not in STATES}
    assert bad == {}, f"states must be one of {STATES}"


@pytest.mark.parametrize("feature", [k for k in ROWS if k in PROBES])
def test_feature_state(feature, shared):
    state, probe = PROBES[feature]
    assert ROWS[feature] == state, f"docs/features.md says {ROWS[feature]!r}; the probe checks {state!r}"
    probe(shared)


async def test_refusals_through_the_async_sdk(sbx_daemon):
    """The async SDK meets the refusals the probes above check through the sync one: create
    options sbx does not implement fail with their status and name, and make no sandbox."""
    from e2b import AsyncSandbox

    async def running():
        return {s.sandbox_id for s in await AsyncSandbox.list().next_items()}

    before = await running()
    for kwargs, name in (
        (dict(iam={"tokens": {"aws": {"audience": "sts.amazonaws.com",
                                      "token_type": "JWT-SVID"}}}), "iam"),
        (dict(network={"allow_out": ["example.com"], "rules": {
            "example.com": [{"transform": {"headers": {"X-Probe": "1"}}}]}}), "network.rules"),
        (dict(mcp={"exa": {"apiKey": "k"}}), "mcp-gateway"),
    ):
        with pytest.raises(Exception) as e:
            await AsyncSandbox.create(timeout=30, **kwargs)
        assert re.search(r"\b(400|501)\b", str(e.value)), str(e.value)
        assert name in str(e.value).lower(), (name, str(e.value))
    assert await running() <= before
