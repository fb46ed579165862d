"""Warm pools: creates are served from sandboxes started ahead of time, which take their
client's identity (tokens, env vars, metadata, timeout) at hand-out and never carry anything
of another client. Pooled sandboxes are not listed, are replaced in the background, and do
not outlive a restart of the front end. Fixtures: tests/conftest.py."""

import json
import os
import signal

import pytest

from e2b import Sandbox
from e2b_code_interpreter import Sandbox as CodeSandbox
from conftest import own_daemon
from helpers import wait_for


def pools(daemon):
    status, _, body = daemon.request("GET", "/pools")
    assert status == 200
    return {p["template"]: p for p in json.loads(body)}


def wait_warm(daemon, template, n=1, timeout=60):
    assert wait_for(lambda: pools(daemon)[template]["warm"] >= n, timeout=timeout), \
        f"the {template} pool never had {n} warm: {pools(daemon)}"


def sandbox_dirs(daemon):
    return set(os.listdir(os.path.join(daemon.state_dir, "sandboxes")))


def test_default_pools_fill_and_are_not_listed(sbx_daemon):
    wait_warm(sbx_daemon, "base", 2)
    wait_warm(sbx_daemon, "code-interpreter-v1", 1)
    p = pools(sbx_daemon)
    print(p)
    assert p["base"]["target"] == 2 and p["code-interpreter-v1"]["target"] == 1
    assert p["base"]["memoryEstimateBytes"] > 0
    listed = {s.sandbox_id for s in Sandbox.list().next_items()}
    # The pooled sandboxes run (their dirs exist) but nobody sees them.
    assert len(sandbox_dirs(sbx_daemon) - listed) >= 3


def test_pooled_create_takes_the_clients_identity(sbx_daemon, sandbox_factory):
    wait_warm(sbx_daemon, "code-interpreter-v1", 1)
    warm_ids = sandbox_dirs(sbx_daemon)
    s = sandbox_factory(CodeSandbox, envs={"WHO": "alice"}, metadata={"owner": "alice"},
                        timeout=77)
    assert s.sandbox_id in warm_ids, "the create was not served from the pool"
    # Env vars reach commands and the already running kernel, before the first execution.
    assert s.run_code("import os; os.environ['WHO']").text == "alice"
    assert s.commands.run("echo $WHO $E2B_SANDBOX_ID").stdout.split() == ["alice", s.sandbox_id]
    info = Sandbox.get_info(s.sandbox_id)
    assert info.metadata == {"owner": "alice"}
    assert abs((info.end_at - info.started_at).total_seconds() - 77) < 2
    # Its token is its own: the agent refuses requests without it.
    status, _, _ = sbx_daemon.request("POST", "/process.Process/List", body={},
                                      headers={"E2b-Sandbox-Id": s.sandbox_id}, auth=False)
    assert status == 401
    # Its identity was given once and cannot be given again.
    status, _, _ = sbx_daemon.request(
        "POST", "/init", body={"accessToken": "x"},
        headers={"E2b-Sandbox-Id": s.sandbox_id, "X-Access-Token": s._envd_access_token})
    assert status == 404
    assert s.commands.run("echo still").stdout == "still\n"
    # The pool starts a replacement.
    wait_warm(sbx_daemon, "code-interpreter-v1", 1)


def test_clients_of_one_pool_share_nothing(sbx_daemon, sandbox_factory):
    wait_warm(sbx_daemon, "base", 2)
    a = sandbox_factory(envs={"SECRET": "a-secret"})
    a.files.write("/home/user/mine.txt", "a's data")
    a.commands.run("sleep 300", background=True, timeout=0)
    wait_warm(sbx_daemon, "base", 2)
    b = sandbox_factory()
    assert a.sandbox_id != b.sandbox_id
    assert a._envd_access_token != b._envd_access_token
    assert not b.files.exists("/home/user/mine.txt")
    assert b.commands.run("echo ${SECRET:-none}").stdout == "none\n"
    # A pooled sandbox has run nothing of anyone's: only the agent and this command.
    procs = b.commands.run("ps -e -o comm= | sort").stdout.split()
    assert "sleep" not in procs, procs
    # Only what the template itself has (the shell's files from /etc/skel), nothing of a's.
    assert b.commands.run("ls -A /tmp /home/user").stdout.split() == [
        "/home/user:", ".bash_logout", ".bashrc", ".profile", "/tmp:"]


def test_restart_of_the_front_end_leaves_no_pooled_sandbox(sbx_daemon, sandbox_factory):
    wait_warm(sbx_daemon, "base", 2)
    kept = sandbox_factory()
    before = sandbox_dirs(sbx_daemon)
    old = sbx_daemon.worker_pid("sbx-frontend")
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: (sbx_daemon.worker_pid("sbx-frontend") or old) != old, timeout=20)
    wait_warm(sbx_daemon, "base", 2)
    wait_warm(sbx_daemon, "code-interpreter-v1", 1)
    after = sandbox_dirs(sbx_daemon)
    listed = {s.sandbox_id for s in Sandbox.list().next_items()}
    assert kept.sandbox_id in listed and kept.commands.run("true").exit_code == 0
    # The old pool's sandboxes are gone; only the new pools' and the listed ones remain.
    p = pools(sbx_daemon)
    pooled_now = sum(x["warm"] + x["starting"] for x in p.values())
    assert len(after - listed) == pooled_now, (after - listed, p)
    assert not (before - listed) & (after - listed), "a pooled sandbox survived the restart"


@pytest.fixture
def tiny_pool_daemon(sbx_daemon, tmp_path):
    with own_daemon(sbx_daemon, tmp_path,
                    "--pool base=50 --pool code-interpreter-v1=0 --pool-memory-mb 1") as d:
        yield d


def test_pools_stay_within_their_memory_budget(tiny_pool_daemon):
    d = tiny_pool_daemon
    # One is started to learn what a sandbox costs; then the pool grows only while the
    # budget holds one more (an idle base sandbox is about 0.5 MiB), far short of its 50.
    assert wait_for(lambda: "memory budget of 1 MiB reached" in d.log_tail(200), timeout=60)
    p = pools(d)["base"]
    n = p["warm"] + p["starting"]
    assert 1 <= n < 50, p
    assert (n - 1) * p["memoryEstimateBytes"] < 1 << 20, p
    # Creates are served all the same (cold once the pool is empty).
    ids = []
    for _ in range(3):
        s = Sandbox.create(timeout=60, api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        assert s.commands.run("true").exit_code == 0
        ids.append(s.sandbox_id)
    for sid in ids:
        Sandbox.kill(sid, api_key=d.api_key, api_url=d.url)


def test_a_bad_pool_option_is_a_clear_error(sbx_daemon, tmp_path):
    import subprocess
    # A name of a template not built yet is fine (its pool stays empty until it is built).
    for arg, msg in (("no such=1", "bad template name 'no such'"), ("base", "TEMPLATE=N"),
                     ("base=-1", "TEMPLATE=N"), ("base=1000", "TEMPLATE=N")):
        r = subprocess.run([sbx_daemon.binary, "serve", "--pool", arg], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 2 and msg in r.stderr, (arg, r.stderr)


def test_a_clean_stop_destroys_the_pools_but_not_the_sandboxes(sbx_daemon, tmp_path):
    with own_daemon(sbx_daemon, tmp_path, "--pool base=2") as d:
        wait_warm(d, "base", 2)
        kept = Sandbox.create(timeout=120, api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        wait_warm(d, "base", 2)
        assert len(sandbox_dirs(d)) >= 4  # the client's, two warm, the code interpreter's
        assert d.stop() == 0
        # Nobody's sandboxes went with the daemon; the client's kept running.
        assert sandbox_dirs(d) == {kept.sandbox_id}, sandbox_dirs(d)
        d.start()
        assert kept.commands.run("echo alive").stdout == "alive\n"
