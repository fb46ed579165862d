"""The daemon's privilege split: the front end (HTTP, JSON, SQLite) runs as an unprivileged
user with no capabilities; the spawner (root) is the only worker that acts on sandboxes; a
kill -9 of either loses no sandbox, and the daemon goes on serving."""

import os
import pwd
import signal
import time

import pytest

from e2b import Sandbox
from helpers import wait_for


def status_fields(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        fields[k] = v.split()
    return fields


def test_front_end_is_unprivileged_and_spawner_is_root(sbx_daemon):
    fe, sp = sbx_daemon.worker_pid("sbx-frontend"), sbx_daemon.worker_pid("sbx-spawner")
    assert fe and sp, "both workers run under the supervisor"
    f = status_fields(fe)
    print(f"front end {fe}: Uid {f['Uid']} CapEff {f['CapEff']} CapBnd {f['CapBnd']} "
          f"NoNewPrivs {f['NoNewPrivs']}")
    assert all(int(u) != 0 for u in f["Uid"]), "the front end runs as root"
    assert pwd.getpwuid(int(f["Uid"][0])).pw_name == "sbx"
    assert all(int(g) != 0 for g in f["Gid"])
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(f[cap][0], 16) == 0, f"the front end holds {cap} {f[cap][0]}"
    assert f["NoNewPrivs"] == ["1"]
    assert f["Groups"] == []
    s = status_fields(sp)
    assert s["Uid"][0] == "0"
    # The front end owns the database and the agents' sockets, nothing else of the state dir.
    db = os.stat(os.path.join(sbx_daemon.state_dir, "db", "sbx.db"))
    assert db.st_uid == int(f["Uid"][0])
    assert os.stat(sbx_daemon.state_dir).st_uid == 0


def test_front_end_cannot_act_as_root(sbx_daemon, sandbox):
    """What a compromised front end could open directly: not a sandbox's disk nor the
    supervisor's files, only its own database and the agents' sockets."""
    fe = sbx_daemon.worker_pid("sbx-frontend")
    uid = int(status_fields(fe)["Uid"][0])
    sid = sandbox.sandbox_id
    sdir = os.path.join(sbx_daemon.state_dir, "sandboxes", sid)
    pid = os.fork()
    if pid == 0:
        denied = 0
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for path in (f"{sdir}/disk.img", f"{sbx_daemon.state_dir}/lock"):
                try:
                    open(path, "rb").read(1)
                except PermissionError:
                    denied += 1
        finally:
            os._exit(denied)  # never return into pytest as another user
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker", ["sbx-spawner", "sbx-frontend"])
def test_kill9_of_a_worker_loses_no_sandbox(worker, sbx_daemon, sandbox_factory):
    a = sandbox_factory(envs={"KEEP": "kept"})
    a.commands.run("echo before > /home/user/state.txt")
    sleeper = a.commands.run("sleep 600", background=True, timeout=0)
    old = sbx_daemon.worker_pid(worker)
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: (sbx_daemon.worker_pid(worker) or old) != old, timeout=20), \
        f"the supervisor did not restart the {worker}"
    assert sbx_daemon.is_alive()
    # The sandbox, its files, env and processes are all still there.
    assert wait_for(lambda: _reachable(a), timeout=20)
    assert a.files.read("/home/user/state.txt") == "before\n"
    assert a.commands.run("echo $KEEP").stdout == "kept\n"
    assert sleeper.pid in {p.pid for p in a.commands.list()}
    # And the daemon serves everything again: create, metrics (spawner), kill.
    b = sandbox_factory()
    assert b.commands.run("echo new").stdout == "new\n"
    assert b.get_metrics()
    assert Sandbox.kill(a.sandbox_id) is True
    assert a.sandbox_id not in {s.sandbox_id for s in Sandbox.list().next_items()}
    log = sbx_daemon.log_tail(400)
    print("\n".join(ln for ln in log.splitlines() if "supervisor" in ln or "spawner" in ln))
    assert f"worker={worker.removeprefix('sbx-')}" in log


def _reachable(sbx):
    try:
        return sbx.commands.run("true").exit_code == 0
    except Exception:
        return False


def test_creates_while_the_spawner_is_killed(sbx_daemon, sandbox_factory):
    """Creates in flight when the spawner dies fail cleanly or succeed; none leaves a sandbox
    the daemon does not know, and the daemon goes on."""
    import concurrent.futures as cf
    before = set(os.listdir(os.path.join(sbx_daemon.state_dir, "sandboxes")))
    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(_try_create) for _ in range(16)]
        time.sleep(0.05)
        os.kill(sbx_daemon.worker_pid("sbx-spawner"), signal.SIGKILL)
        results = [f.result() for f in futs]
    made = [r for r in results if isinstance(r, str)]
    failed = [r for r in results if not isinstance(r, str)]
    print(f"{len(made)} created, {len(failed)} failed: {set(map(str, failed))}")
    for sid in made:
        Sandbox.kill(sid)
    # Whatever failed is cleaned up: no sandbox dir is left that the daemon does not know.
    def leftover():
        now = set(os.listdir(os.path.join(sbx_daemon.state_dir, "sandboxes")))
        return now - before
    assert wait_for(lambda: not leftover(), timeout=20), f"left behind: {leftover()}"
    assert sandbox_factory().commands.run("true").exit_code == 0


def _try_create():
    try:
        s = Sandbox.create(timeout=60)
        return s.sandbox_id
    except Exception as e:
        return e
