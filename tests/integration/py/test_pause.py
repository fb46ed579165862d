"""Pause and resume through the official Python SDK (spec lifecycle.md §1-3): a pause that
keeps memory (processes, kernels and files as they were), a filesystem-only pause that boots
the sandbox again on its disk, the timeout policy (on_timeout pause, auto_resume), retention
of paused sandboxes, and restarts of the daemon while sandboxes are paused.
Fixtures: tests/conftest.py."""

import glob
import json
import os
import secrets
import signal
import threading
import time
from datetime import datetime, timezone

import pytest

from e2b import Sandbox, SandboxNotFoundException, SandboxQuery, SandboxState
from e2b_code_interpreter import Sandbox as CodeSandbox
from conftest import own_daemon
from helpers import agent_host_pid, wait_for

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def _state(sid):
    return Sandbox.get_info(sid).state


def _pause_mode(daemon, sid):
    """pauseMode of getInfo (the Python SDK does not read it)."""
    status, _, body = daemon.request("GET", f"/sandboxes/{sid}")
    assert status == 200, body
    return json.loads(body).get("pauseMode")


def _listed(tag, states=None):
    q = SandboxQuery(metadata={"tag": tag}, state=states)
    return {s.sandbox_id: s.state for s in Sandbox.list(query=q).next_items()}


def _cgroup_cpu_ns(sid):
    """CPU time of the sandbox's cgroup, on either cgroup layout."""
    for path in (f"/sys/fs/cgroup/sbx/{sid}/cpu.stat", f"/sys/fs/cgroup/cpuacct/sbx/{sid}/cpuacct.usage"):
        if os.path.exists(path):
            text = open(path).read()
            if path.endswith("cpu.stat"):
                return int(text.split("usage_usec")[1].split()[0]) * 1000
            return int(text)
    return None


def test_pause_keeps_processes_files_and_env(sandbox_factory):
    tag = "p" + secrets.token_hex(4)
    sbx = sandbox_factory(envs={"KEEP": "kept"}, metadata={"tag": tag})
    sleeper = sbx.commands.run("sleep 3600", background=True, timeout=0)
    sbx.commands.run("sleep 2 && echo done > /home/user/later.txt", background=True, timeout=0)
    sbx.files.write("/home/user/f.txt", "hello")
    boot = sbx.commands.run(BOOT_ID).stdout

    assert sbx.pause() is True
    assert not sbx.is_running()
    info = sbx.get_info()
    assert info.state == SandboxState.PAUSED
    # While paused, endAt is when it was paused: its clock stands still.
    assert abs((info.end_at - datetime.now(timezone.utc)).total_seconds()) < 5
    assert _listed(tag) == {sbx.sandbox_id: SandboxState.PAUSED}
    assert _listed(tag, [SandboxState.PAUSED]) == {sbx.sandbox_id: SandboxState.PAUSED}
    assert _listed(tag, [SandboxState.RUNNING]) == {}
    # Nothing of it runs: its cgroup's CPU time stands still.
    cpu = _cgroup_cpu_ns(sbx.sandbox_id)
    time.sleep(0.5)
    assert cpu is not None and _cgroup_cpu_ns(sbx.sandbox_id) == cpu
    # Pausing again answers 409, which the SDK reports as False.
    assert sbx.pause() is False
    assert Sandbox.pause(sbx.sandbox_id) is False

    time.sleep(2.5)
    same = Sandbox.connect(sbx.sandbox_id, timeout=200)
    assert same.sandbox_id == sbx.sandbox_id
    assert sbx.is_running()  # the old handle: same tokens
    info = sbx.get_info()
    assert info.state == SandboxState.RUNNING
    remaining = (info.end_at - datetime.now(timezone.utc)).total_seconds()
    assert 180 <= remaining <= 201, remaining
    assert sleeper.pid in {p.pid for p in sbx.commands.list()}
    assert sbx.files.read("/home/user/f.txt") == "hello"
    assert sbx.commands.run("echo $KEEP").stdout == "kept\n"
    assert sbx.commands.run(BOOT_ID).stdout == boot
    # The background job's sleep elapsed while frozen (CLOCK_MONOTONIC ran on).
    assert wait_for(lambda: sbx.files.exists("/home/user/later.txt"), 10)
    assert sbx.files.read("/home/user/later.txt") == "done\n"


def test_filesystem_pause_boots_again_on_the_same_disk(sandbox_factory, sbx_daemon):
    sbx = sandbox_factory(envs={"KEEP": "kept"}, metadata={"m": "1"})
    sbx.commands.run("sleep 3600", background=True, timeout=0)
    sbx.files.write("/home/user/fs_only.txt", "on disk")
    sbx.commands.run("sudo sh -c 'echo root-owned > /etc/sbx-marker'")
    boot = sbx.commands.run(BOOT_ID).stdout
    token = sbx._envd_access_token

    assert sbx.pause(mode="filesystem") is True
    assert not sbx.is_running()
    assert _pause_mode(sbx_daemon, sbx.sandbox_id) == "filesystem"
    sbx.connect()
    assert sbx.is_running() and sbx._envd_access_token == token
    info = sbx.get_info()
    assert info.state == SandboxState.RUNNING and info.metadata == {"m": "1"}
    assert sbx.files.read("/home/user/fs_only.txt") == "on disk"
    assert sbx.commands.run("cat /etc/sbx-marker").stdout == "root-owned\n"
    assert sbx.commands.run("echo $KEEP $(id -un)").stdout == "kept user\n"
    assert sbx.commands.run(BOOT_ID).stdout != boot
    assert [p for p in sbx.commands.list() if "sleep" in " ".join(p.args)] == []


def test_connect_with_reboot_gives_up_memory(sandbox_factory, sbx_daemon):
    sbx = sandbox_factory()
    boot = sbx.commands.run(BOOT_ID).stdout
    sbx.files.write("/home/user/x", "y")
    assert sbx.pause() is True
    assert _pause_mode(sbx_daemon, sbx.sandbox_id) == "full"
    Sandbox.connect(sbx.sandbox_id, on_resume="reboot")
    assert sbx.commands.run(BOOT_ID).stdout != boot
    assert sbx.files.read("/home/user/x") == "y"


def test_code_interpreter_kernel_keeps_its_variables(sandbox_factory):
    sbx = sandbox_factory(CodeSandbox)
    assert sbx.run_code("x = 40 + 2; x").text == "42"
    assert sbx.pause() is True
    CodeSandbox.connect(sbx.sandbox_id)
    assert sbx.run_code("x + 1").text == "43"


def test_bad_requests(sandbox_factory, sbx_daemon):
    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause("nosuchsandbox0000000000")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("nosuchsandbox0000000000")
    killed = sandbox_factory()
    killed.kill()
    with pytest.raises(SandboxNotFoundException):
        killed.pause()

    sbx = sandbox_factory()
    sid = sbx.sandbox_id
    # The deprecated resume: 409 for a running sandbox, 201 for a paused one.
    status, _, body = sbx_daemon.request("POST", f"/sandboxes/{sid}/resume", body={})
    assert status == 409 and b"already running" in body
    status, _, _ = sbx_daemon.request("POST", f"/sandboxes/{sid}/pause", body={"memory": "yes"})
    assert status == 400
    assert sbx.pause() is True
    # A paused sandbox's timeout stands still; its metrics are empty.
    status, _, body = sbx_daemon.request("POST", f"/sandboxes/{sid}/timeout", body={"timeout": 60})
    assert status == 409, body
    assert Sandbox.get_metrics(sid) == []
    status, headers, body = sbx_daemon.request("POST", f"/sandboxes/{sid}/resume",
                                               body={"timeout": 30})
    assert status == 201, body
    remaining = (Sandbox.get_info(sid).end_at - datetime.now(timezone.utc)).total_seconds()
    assert 20 <= remaining <= 31
    assert int(headers["X-Sbx-Op-Us"]) > 0
    # Snapshots and forks of a sandbox are test_snapshots.py's; a bad fork count is refused.
    status, _, body = sbx_daemon.request("POST", f"/sandboxes/{sid}/fork", body={"count": 0})
    assert status == 400, body


def test_concurrent_pause_and_connect(sandbox_factory):
    sbx = sandbox_factory()
    results = {}

    def pause():
        results["pause"] = Sandbox.pause(sbx.sandbox_id)

    threads = [threading.Thread(target=pause) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Exactly one pause wins; the others see it paused or pausing (409 -> False).
    Sandbox.connect(sbx.sandbox_id)
    assert sbx.is_running()

    # A connect racing a pause resumes once the pause is done, whichever comes first.
    for _ in range(3):
        t = threading.Thread(target=pause)
        t.start()
        Sandbox.connect(sbx.sandbox_id)
        t.join()
        if _state(sbx.sandbox_id) == SandboxState.PAUSED:
            Sandbox.connect(sbx.sandbox_id)
        assert sbx.commands.run("echo ok").stdout == "ok\n"


def test_kill_a_paused_sandbox_leaves_nothing(sandbox_factory, sbx_daemon):
    for mode in ("full", "filesystem"):
        sbx = sandbox_factory()
        sbx.commands.run("sleep 3600", background=True, timeout=0)
        sid = sbx.sandbox_id
        assert sbx.pause(mode=mode) is True
        assert Sandbox.kill(sid) is True
        assert not os.path.exists(os.path.join(sbx_daemon.state_dir, "sandboxes", sid))
        assert not glob.glob(f"/sys/fs/cgroup/*/sbx/{sid}") + glob.glob(f"/sys/fs/cgroup/sbx/{sid}")
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sid)
        assert Sandbox.kill(sid) is False


@pytest.mark.timeout(90)
def test_on_timeout_pause_then_connect(sandbox_factory):
    sbx = sandbox_factory(timeout=3, lifecycle={"on_timeout": "pause", "auto_resume": False})
    proc = sbx.commands.run("sleep 3600", background=True, timeout=0)
    assert sbx.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": False}
    assert wait_for(lambda: _state(sbx.sandbox_id) == SandboxState.PAUSED, 15, 0.2)
    assert not sbx.is_running()  # no auto-resume: a request does not wake it
    assert _state(sbx.sandbox_id) == SandboxState.PAUSED
    sbx.connect(timeout=60)
    assert sbx.is_running()
    assert proc.pid in {p.pid for p in sbx.commands.list()}


@pytest.mark.timeout(90)
def test_on_timeout_filesystem_pause_reboots_on_connect(sandbox_factory, sbx_daemon):
    sbx = sandbox_factory(timeout=3,
                          lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    sbx.files.write("/home/user/marker", "m")
    boot = sbx.commands.run(BOOT_ID).stdout
    assert wait_for(lambda: _state(sbx.sandbox_id) == SandboxState.PAUSED, 15, 0.2)
    assert _pause_mode(sbx_daemon, sbx.sandbox_id) == "filesystem"
    sbx.connect()
    assert sbx.files.read("/home/user/marker") == "m"
    assert sbx.commands.run(BOOT_ID).stdout != boot


@pytest.mark.timeout(90)
def test_auto_resume_wakes_a_paused_sandbox(sandbox_factory, sbx_daemon):
    sbx = sandbox_factory(timeout=3, lifecycle={"on_timeout": "pause", "auto_resume": True})
    proc = sbx.commands.run("sleep 3600", background=True, timeout=0)
    assert wait_for(lambda: _state(sbx.sandbox_id) == SandboxState.PAUSED, 15, 0.2)
    # Without its access token a request cannot wake it.
    status, _, body = sbx_daemon.request("GET", "/health", auth=False,
                                         headers={"E2b-Sandbox-Id": sbx.sandbox_id})
    assert status == 403 and b"can't be resumed" in body
    assert _state(sbx.sandbox_id) == SandboxState.PAUSED
    # Any request of the SDK's does, transparently, for the create-time timeout.
    assert sbx.commands.run("echo awake").stdout == "awake\n"
    assert _state(sbx.sandbox_id) == SandboxState.RUNNING
    assert proc.pid in {p.pid for p in sbx.commands.list()}
    # ... and at the next timeout it is paused again.
    assert wait_for(lambda: _state(sbx.sandbox_id) == SandboxState.PAUSED, 15, 0.2)


def test_lifecycle_validation(sbx_daemon):
    bad = [
        ({"autoPause": False, "autoPauseMemory": False},
         "autoPauseMemory=false only applies when autoPause is true."),
        ({"autoPause": True, "autoPauseMemory": False, "autoResume": {"enabled": True}}, "autoResume"),
        ({"autoResume": {"enabled": True}}, "autoResume"),
        ({"autoResume": True}, "autoResume"),
    ]
    for body, message in bad:
        status, _, resp = sbx_daemon.request("POST", "/sandboxes", body={"templateID": "base", **body})
        assert status == 400 and message.encode() in resp, (body, resp)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_paused_sandboxes_survive_a_restart(how, sandbox_factory, sbx_daemon, kill9_daemon,
                                            restart_daemon):
    frozen = sandbox_factory(envs={"A": "a"})
    on_disk = sandbox_factory()
    proc = frozen.commands.run("sleep 3600", background=True, timeout=0)
    on_disk.files.write("/home/user/d", "disk")
    assert frozen.pause() is True
    assert on_disk.pause(mode="filesystem") is True
    if how == "kill9":
        kill9_daemon()
    restart_daemon()
    assert _state(frozen.sandbox_id) == SandboxState.PAUSED
    assert _state(on_disk.sandbox_id) == SandboxState.PAUSED
    assert not frozen.is_running()
    frozen.connect()
    assert proc.pid in {p.pid for p in frozen.commands.list()}
    assert frozen.commands.run("echo $A").stdout == "a\n"
    on_disk.connect()
    assert on_disk.files.read("/home/user/d") == "disk"


@pytest.mark.timeout(120)
def test_lost_processes_resume_from_the_disk(sandbox_factory, sbx_daemon):
    """If the frozen processes of a paused sandbox are gone (the host rebooted; here they are
    killed), it is resumed from its disk rather than lost."""
    sbx = sandbox_factory()
    sbx.files.write("/home/user/keep", "k")
    boot = sbx.commands.run(BOOT_ID).stdout
    assert sbx.pause() is True
    agent = agent_host_pid(sbx.sandbox_id)
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    # A cgroup v1 frozen task dies only once thawed (v2 lets SIGKILL through).
    v1_freezer = f"/sys/fs/cgroup/freezer/sbx/{sbx.sandbox_id}/freezer.state"
    if os.path.exists(v1_freezer):
        with open(v1_freezer, "w") as f:
            f.write("THAWED")
    assert wait_for(lambda: _pause_mode(sbx_daemon, sbx.sandbox_id) == "filesystem", 10)
    assert _state(sbx.sandbox_id) == SandboxState.PAUSED
    sbx.connect()
    assert sbx.files.read("/home/user/keep") == "k"
    assert sbx.commands.run(BOOT_ID).stdout != boot


@pytest.mark.timeout(120)
def test_paused_retention(sbx_daemon, tmp_path):
    with own_daemon(sbx_daemon, tmp_path, "--paused-retention 3s --pool base=0") as d:
        status, _, body = d.request("POST", "/sandboxes", body={"templateID": "base"})
        assert status == 201
        sid = json.loads(body)["sandboxID"]
        assert d.request("POST", f"/sandboxes/{sid}/pause", body={})[0] == 204
        assert d.request("GET", f"/sandboxes/{sid}")[0] == 200
        assert wait_for(lambda: d.request("GET", f"/sandboxes/{sid}")[0] == 404, 20, 0.3)
        # Gone for clients at once; its dir and the log line once the spawner has removed it.
        assert wait_for(lambda: not os.path.exists(os.path.join(d.state_dir, "sandboxes", sid)))
        assert wait_for(lambda: "reason=paused_retention" in
                        d.log_path.read_text())


@pytest.mark.timeout(240)
def test_kill9_in_the_middle_of_pauses_and_resumes(sandbox_factory, sbx_daemon, kill9_daemon,
                                                   restart_daemon):
    """kill -9 of the daemon while a pause or resume is under way: after the restart the
    sandbox is running or paused, never half (frozen while said to run, or destroyed), and
    connect brings it back with its files (and, unless it went to its disk, its process)."""
    sbx = sandbox_factory(timeout=600)
    sbx.files.write("/home/user/keep", "k")
    proc = sbx.commands.run("sleep 3600", background=True, timeout=0)
    sid = sbx.sandbox_id
    for i, (path, body) in enumerate([
        ("pause", {}), ("connect", {}), ("pause", {"memory": False}), ("connect", {}),
        ("pause", {}), ("connect", {"memory": False}),
    ]):
        url = f"/v2/sandboxes/{sid}/connect" if path == "connect" else f"/sandboxes/{sid}/pause"

        def request():
            try:
                sbx_daemon.request("POST", url, body=body, timeout=10)
            except OSError:
                pass  # the daemon died under it

        t = threading.Thread(target=request)
        t.start()
        time.sleep(0.001 * (i % 3))
        kill9_daemon()
        t.join()
        restart_daemon()
        state = _state(sid)
        assert state in (SandboxState.RUNNING, SandboxState.PAUSED)
        if state == SandboxState.RUNNING:
            assert sbx.commands.run("echo alive", timeout=10).stdout == "alive\n"
        else:
            assert not sbx.is_running()
    Sandbox.connect(sid)
    assert sbx.files.read("/home/user/keep") == "k"
    assert sbx.commands.run("echo ok").stdout == "ok\n"
    del proc  # gone after the filesystem-only pauses, as it should be
