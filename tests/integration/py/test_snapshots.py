"""Snapshots and fork through the official Python SDK (spec lifecycle.md §4, §5): a snapshot
is a copy of a running sandbox's files (never its processes), named or not, listed, deleted,
and a template that Sandbox.create starts from; fork is a snapshot and sandboxes made from it
at once. Fixtures: tests/conftest.py."""

import json
import os
import secrets
import subprocess

import pytest

from e2b import Sandbox, SandboxNotFoundException
from e2b.exceptions import NotFoundException, SandboxException

TEAM = "local"


def _ids(**kwargs):
    return [s.snapshot_id for s in Sandbox.list_snapshots(**kwargs).next_items()]


def _all_ids(**kwargs):
    pager = Sandbox.list_snapshots(**kwargs)
    out = []
    while pager.has_next:
        out += [s.snapshot_id for s in pager.next_items()]
    return out


@pytest.fixture
def snapshots():
    """Snapshot ids to delete after the test, once its sandboxes are gone (tests name this
    fixture before sandbox_factory, so that it is torn down after it)."""
    made = []
    yield made
    for sid in made:
        Sandbox.delete_snapshot(sid)


def test_unnamed_snapshot_restores_files_and_keeps_parent_running(snapshots, sandbox_factory):
    parent = sandbox_factory()
    parent.files.write("/home/user/state.txt", "before")
    parent.files.make_dir("/home/user/app")
    parent.files.write("/home/user/app/a.py", "print('a')")
    parent.files.write("/home/user/app/b.txt", "bee")
    end_before = parent.get_info().end_at
    snap = parent.create_snapshot()
    snapshots.append(snap.snapshot_id)
    assert snap.snapshot_id.endswith(":default") and snap.names == []
    # The parent keeps running, same id and end, its files as they were, and it can write.
    assert parent.is_running()
    assert parent.get_info().end_at == end_before
    assert parent.files.read("/home/user/state.txt") == "before"
    parent.files.write("/home/user/state.txt", "after")

    child = sandbox_factory(template=snap.snapshot_id)
    assert child.sandbox_id != parent.sandbox_id
    assert child.files.read("/home/user/state.txt") == "before"
    assert child.files.exists("/home/user/app")
    assert child.files.read("/home/user/app/a.py") == "print('a')"
    assert child.files.read("/home/user/app/b.txt") == "bee"
    # Owned as in the parent: the default user may write over them.
    child.commands.run("echo mine > /home/user/app/b.txt")
    assert child.files.read("/home/user/app/b.txt").strip() == "mine"


def test_two_sandboxes_from_one_snapshot_are_independent(snapshots, sandbox_factory):
    parent = sandbox_factory()
    parent.files.write("/home/user/shared.txt", "base")
    snap = parent.create_snapshot()
    snapshots.append(snap.snapshot_id)
    a = sandbox_factory(template=snap.snapshot_id)
    b = sandbox_factory(template=snap.snapshot_id)
    a.files.write("/home/user/shared.txt", "changed in a")
    assert b.files.read("/home/user/shared.txt") == "base"
    assert parent.files.read("/home/user/shared.txt") == "base"


def test_named_and_tagged_snapshots(snapshots, sandbox_factory):
    name = "snap-" + secrets.token_hex(4)
    sbx = sandbox_factory()
    sbx.files.write("/home/user/v.txt", "one")
    first = sbx.create_snapshot(name=name)
    snapshots.append(first.snapshot_id)
    assert first.snapshot_id == f"{TEAM}/{name}:default"
    assert first.names == [f"{TEAM}/{name}"]
    sbx.files.write("/home/user/v.txt", "two")
    tagged = sbx.create_snapshot(name=f"{name}:v2")
    assert tagged.snapshot_id == f"{TEAM}/{name}:v2"
    assert tagged.names == [f"{TEAM}/{name}"]
    # Each tag starts its own build; the namespaced and bare forms resolve alike.
    assert sandbox_factory(template=first.snapshot_id).files.read("/home/user/v.txt") == "one"
    assert sandbox_factory(template=f"{name}:v2").files.read("/home/user/v.txt") == "two"
    assert set(_ids(name=name)) == {first.snapshot_id, tagged.snapshot_id}
    assert _ids(name=f"{name}:v2") == [tagged.snapshot_id]
    assert _ids(name=f"{TEAM}/{name}:default") == [first.snapshot_id]
    assert _ids(name=name + "-does-not-exist") == []


def test_list_newest_first_by_sandbox_and_paged(snapshots, sandbox_factory):
    sbx = sandbox_factory()
    made = []
    for _ in range(3):
        made.append(sbx.create_snapshot().snapshot_id)
        snapshots.append(made[-1])
    assert sbx.list_snapshots().next_items()[0].snapshot_id == made[-1]
    assert _ids(sandbox_id=sbx.sandbox_id) == made[::-1]
    pager = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id, limit=2)
    first = [s.snapshot_id for s in pager.next_items()]
    assert first == made[:0:-1] and pager.has_next
    second = [s.snapshot_id for s in pager.next_items()]
    assert second == [made[0]] and not pager.has_next
    assert made[-1] in _all_ids()
    assert _ids(sandbox_id="nosuchsandbox") == []


def test_delete_true_then_false_and_refused_while_in_use(sandbox_factory):
    parent = sandbox_factory()
    snap = parent.create_snapshot()
    child = sandbox_factory(template=snap.snapshot_id)
    with pytest.raises(Exception) as e:
        Sandbox.delete_snapshot(snap.snapshot_id)
    assert "used by running sandbox" in str(e.value)
    child.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    assert snap.snapshot_id not in _all_ids(sandbox_id=parent.sandbox_id)
    with pytest.raises(Exception):
        Sandbox.create(template=snap.snapshot_id)


def test_snapshot_of_paused_killed_or_unknown_sandbox_is_not_found(sandbox_factory):
    paused = sandbox_factory()
    paused.pause()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.create_snapshot(paused.sandbox_id)
    killed = sandbox_factory()
    killed.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.create_snapshot(killed.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.create_snapshot("nosuchsandbox0000000")


@pytest.mark.parametrize("name", ["bad name", "a/b/c", "other-team/x", "x:bad tag", "UPPER:"
                                  "t@g", "base", "a" * 200])
def test_invalid_snapshot_names_are_refused(sbx_daemon, sandbox_factory, name):
    sbx = sandbox_factory()
    status, _, body = sbx_daemon.request("POST", f"/sandboxes/{sbx.sandbox_id}/snapshots",
                                         body={"name": name})
    assert status == 400, body


def test_snapshot_survives_daemon_restart(snapshots, sandbox_factory, restart_daemon):
    sbx = sandbox_factory()
    sbx.files.write("/home/user/kept.txt", "kept")
    snap = sbx.create_snapshot(name="restart-" + secrets.token_hex(3))
    snapshots.append(snap.snapshot_id)
    restart_daemon()
    assert snap.snapshot_id in _ids(sandbox_id=sbx.sandbox_id)
    assert sandbox_factory(template=snap.snapshot_id).files.read("/home/user/kept.txt") == "kept"


def test_kill9_during_a_snapshot_leaves_no_half_made_snapshot(sandbox_factory, sbx_daemon,
                                                               kill9_daemon, restart_daemon):
    import threading
    import time
    sbx = sandbox_factory()
    # Enough data that the copy takes a while (the test daemon's disks are 256 MiB).
    sbx.commands.run("head -c 200M /dev/urandom > /home/user/big && sync", timeout=120)
    layers = os.path.join(sbx_daemon.state_dir, "layers")
    failed = []
    t = threading.Thread(target=lambda: _snapshot_expecting_failure(sbx, failed))
    t.start()
    deadline = time.monotonic() + 30
    while not any(n.startswith(".new-") for n in os.listdir(layers)):
        assert time.monotonic() < deadline, "the snapshot's copy never started"
        time.sleep(0.005)
    kill9_daemon()
    t.join(60)
    assert failed == [True]
    restart_daemon()
    # Nothing half-made is left or listed, and the sandbox runs again (not left frozen).
    assert not [n for n in os.listdir(layers) if n.startswith(".new-")]
    assert _ids(sandbox_id=sbx.sandbox_id) == []
    assert sbx.get_info().state.value == "running"
    assert sbx.commands.run("echo alive", timeout=10).stdout == "alive\n"
    assert sbx.commands.run("stat -c %s /home/user/big").stdout == f"{200 << 20}\n"


def _snapshot_expecting_failure(sbx, failed):
    try:
        sbx.create_snapshot()
        failed.append(False)
    except Exception:
        failed.append(True)


def test_snapshot_keeps_the_template_settings(snapshots, sandbox_factory):
    """A snapshot of a code interpreter is a code interpreter (its default user too)."""
    from e2b_code_interpreter import Sandbox as CodeSandbox
    parent = sandbox_factory(sandbox_class=CodeSandbox)
    parent.files.write("/home/user/data.txt", "42")
    snap = parent.create_snapshot()
    snapshots.append(snap.snapshot_id)
    child = sandbox_factory(sandbox_class=CodeSandbox, template=snap.snapshot_id)
    run = child.run_code("print(open('/home/user/data.txt').read())")
    assert run.logs.stdout == ["42\n"]
    assert child.commands.run("whoami").stdout.strip() == "user"


# ---- fork ----

def _fork_snapshots(parent_id):
    return _all_ids(sandbox_id=parent_id)


def test_fork_one(sandbox_factory, sbx_daemon):
    parent = sandbox_factory()
    parent.files.write("/home/user/state.txt", "parent")
    forks = parent.fork()
    assert len(forks) == 1
    child = forks[0]
    try:
        assert child.sandbox_id != parent.sandbox_id
        assert child.is_running() and parent.is_running()
        assert child.files.read("/home/user/state.txt") == "parent"
        child.files.write("/home/user/state.txt", "fork")
        assert parent.files.read("/home/user/state.txt") == "parent"
    finally:
        child.kill()
    for sid in _fork_snapshots(parent.sandbox_id):
        Sandbox.delete_snapshot(sid)


def test_fork_two_and_static_fork(sandbox_factory):
    parent = sandbox_factory()
    forks = parent.fork(count=2, timeout=60)
    forks += Sandbox.fork(parent.sandbox_id)
    try:
        ids = {f.sandbox_id for f in forks}
        assert len(ids) == 3 and parent.sandbox_id not in ids
        assert all(f.is_running() for f in forks)
    finally:
        for f in forks:
            f.kill()
    for sid in _fork_snapshots(parent.sandbox_id):
        Sandbox.delete_snapshot(sid)


def test_fork_of_killed_paused_or_bad_count(sandbox_factory, sbx_daemon):
    killed = sandbox_factory()
    killed.kill()
    with pytest.raises(SandboxNotFoundException):
        killed.fork()
    status, _, body = sbx_daemon.request("POST", f"/sandboxes/{killed.sandbox_id}/fork", body={})
    assert status == 404 and json.loads(body)["code"] == 404
    paused = sandbox_factory()
    paused.pause()
    with pytest.raises(Exception) as e:
        paused.fork()
    assert "is paused and cannot be forked; resume it first" in str(e.value)
    running = sandbox_factory()
    for count in (0, 101, -1):
        status, _, body = sbx_daemon.request("POST", f"/sandboxes/{running.sandbox_id}/fork",
                                             body={"count": count})
        assert status == 400, body
    status, _, body = sbx_daemon.request("POST", f"/sandboxes/{running.sandbox_id}/fork",
                                         body={"count": "two"})
    assert status == 400, body


def test_cli_snapshot(snapshots, sandbox_factory, sbx_daemon):
    sbx = sandbox_factory()
    sbx.files.write("/home/user/cli.txt", "cli")
    env = dict(os.environ, E2B_API_URL=sbx_daemon.url, E2B_API_KEY=sbx_daemon.api_key)
    out = subprocess.run([sbx_daemon.binary, "snapshot", sbx.sandbox_id], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    sid = out.stdout.strip()
    snapshots.append(sid)
    assert sid.endswith(":default")
    name = "cli-" + secrets.token_hex(3)
    out = subprocess.run([sbx_daemon.binary, "snapshot", sbx.sandbox_id, name], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{TEAM}/{name}:default"
    snapshots.append(out.stdout.strip())
    out = subprocess.run([sbx_daemon.binary, "snapshot", "nosuchsandbox"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "not found" in out.stderr


def test_a_snapshot_the_state_disk_has_no_room_for_is_refused(sbx_daemon, tmp_path):
    """The state dir on a small filesystem of the test's own: a snapshot that would need more
    than it has free is refused before its copy starts, and the sandbox goes on."""
    import shutil
    import tempfile
    from pathlib import Path
    from conftest import REPO, Daemon
    base = subprocess.run([str(REPO / "scripts" / "templates.sh"), "key", "base"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # A layer cache of base alone (the daemon copies it onto the small filesystem).
    cache = Path(tempfile.mkdtemp(dir="/var/tmp"))
    os.symlink(f"/var/cache/sbx/layers/{base}", cache / base)
    image = tmp_path / "state.ext4"
    subprocess.run(["truncate", "-s", "2200M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt = tempfile.mkdtemp(dir="/var/tmp")
    subprocess.run(["mount", "-o", "loop", str(image), mnt], check=True)
    d = None
    try:
        os.chmod(mnt, 0o711)
        d = Daemon(sbx_daemon.binary, mnt, tmp_path / "daemon.log")
        env = {"SBX_SERVE_ARGS": f"--layer-cache {cache} --pool base=0 "
                                 "--pool code-interpreter-v1=0 --network-cidr off"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            d.argv = (lambda argv: lambda: argv[:argv.index("--disk-mb")] +
                      ["--disk-mb", "900"] + argv[argv.index("--disk-mb") + 2:])(d.argv())
            d.start()
        sbx = Sandbox.create(timeout=120, api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        free = shutil.disk_usage(mnt).free
        mib = (free >> 20) - 300  # leaves ~300 MiB: less than the copy's need plus its margin
        sbx.commands.run(f"head -c {mib}M /dev/urandom > /home/user/big && sync", timeout=300)
        with pytest.raises(Exception) as e:
            sbx.create_snapshot()
        assert "not enough free disk space for the snapshot" in str(e.value), str(e.value)
        assert not [n for n in os.listdir(os.path.join(mnt, "layers")) if n.startswith(".new-")]
        assert sbx.commands.run("echo alive").stdout == "alive\n"
        st, _, body = d.request("GET", "/snapshots")
        assert st == 200 and json.loads(body) == []
        sbx.kill()
    finally:
        if d is not None:
            d.stop()
        subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(mnt, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
