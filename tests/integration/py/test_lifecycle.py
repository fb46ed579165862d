"""Sandbox lifecycle through the official Python SDK (sync Sandbox and AsyncSandbox)."""

import contextlib
import glob
import json
import os
import secrets
import time
from datetime import datetime, timezone

import pytest
from packaging.version import Version

from helpers import wait_for
from e2b import (
    AsyncSandbox,
    Sandbox,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
)


def _tag():
    return "t" + secrets.token_hex(6)


def _list_all(query=None, limit=None):
    paginator = Sandbox.list(query=query, limit=limit)
    items = []
    while paginator.has_next:
        items += paginator.next_items()
    return items


def test_create_with_metadata_envs_timeout(sandbox_factory):
    tag = _tag()
    before = datetime.now(timezone.utc)
    sbx = sandbox_factory(timeout=90, metadata={"suite": "lifecycle", "tag": tag},
                          envs={"SBX_GLOBAL": "g1"})
    assert sbx.sandbox_id and sbx.sandbox_id.isalnum() and sbx.sandbox_id == sbx.sandbox_id.lower()
    assert sbx.is_running()

    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.template_id
    assert info.metadata == {"suite": "lifecycle", "tag": tag}
    assert info.state == SandboxState.RUNNING
    assert info.cpu_count >= 1
    assert info.memory_mb > 0
    assert Version(info.envd_version) >= Version("0.5.2")
    assert info.started_at.tzinfo is not None
    assert abs((info.started_at - before).total_seconds()) < 30
    lifetime = (info.end_at - info.started_at).total_seconds()
    assert 80 <= lifetime <= 100, f"timeout=90 but endAt-startedAt={lifetime}s"

    # Sandbox-wide env vars reach commands.
    assert sbx.commands.run("echo $SBX_GLOBAL").stdout == "g1\n"


def test_default_timeout_is_300s(sandbox_factory):
    from e2b import Sandbox as S

    sbx = S.create()
    try:
        info = sbx.get_info()
        lifetime = (info.end_at - info.started_at).total_seconds()
        assert 290 <= lifetime <= 310
    finally:
        sbx.kill()


def test_get_info_by_id_and_unknown_id(sandbox):
    info = Sandbox.get_info(sandbox.sandbox_id)
    assert info.sandbox_id == sandbox.sandbox_id
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("nosuchsandbox0000000000")


def test_list_with_metadata_filter(sandbox_factory):
    tag = _tag()
    a = sandbox_factory(metadata={"tag": tag, "role": "a"})
    b = sandbox_factory(metadata={"tag": tag, "role": "b"})
    sandbox_factory(metadata={"tag": _tag(), "role": "a"})  # must not match

    both = _list_all(SandboxQuery(metadata={"tag": tag}))
    assert {s.sandbox_id for s in both} == {a.sandbox_id, b.sandbox_id}
    by_id = {s.sandbox_id: s for s in both}
    assert by_id[a.sandbox_id].metadata == {"tag": tag, "role": "a"}
    assert by_id[a.sandbox_id].state == SandboxState.RUNNING

    only_a = _list_all(SandboxQuery(metadata={"tag": tag, "role": "a"}))
    assert [s.sandbox_id for s in only_a] == [a.sandbox_id]

    assert _list_all(SandboxQuery(metadata={"tag": tag, "role": "zzz"})) == []


def test_list_metadata_with_special_characters(sandbox_factory):
    # The SDK encodes metadata filters three times (spec §2.5); the server must undo all.
    key, value = "k y&=%", "v&w=x %2F/ü"
    sbx = sandbox_factory(metadata={key: value})
    found = _list_all(SandboxQuery(metadata={key: value}))
    assert [s.sandbox_id for s in found] == [sbx.sandbox_id]
    assert found[0].metadata == {key: value}
    assert _list_all(SandboxQuery(metadata={key: value + "-not"})) == []


def test_list_state_filter(sandbox_factory):
    tag = _tag()
    sbx = sandbox_factory(metadata={"tag": tag})
    running = _list_all(SandboxQuery(metadata={"tag": tag}, state=[SandboxState.RUNNING]))
    assert [s.sandbox_id for s in running] == [sbx.sandbox_id]
    paused = _list_all(SandboxQuery(metadata={"tag": tag}, state=[SandboxState.PAUSED]))
    assert paused == []
    both = _list_all(SandboxQuery(metadata={"tag": tag},
                                  state=[SandboxState.RUNNING, SandboxState.PAUSED]))
    assert [s.sandbox_id for s in both] == [sbx.sandbox_id]


@pytest.mark.timeout(120)
def test_list_paging_with_next_token(sandbox_factory):
    tag = _tag()
    made = [sandbox_factory(metadata={"tag": tag}).sandbox_id for _ in range(3)]

    paginator = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=2)
    assert paginator.has_next
    first = paginator.next_items()
    assert len(first) == 2
    assert paginator.has_next and paginator.next_token
    second = paginator.next_items()
    assert len(second) == 1
    assert not paginator.has_next
    assert paginator.next_token is None
    ids = [s.sandbox_id for s in first + second]
    assert sorted(ids) == sorted(made), "pages must cover every sandbox exactly once"
    # Newest first by default (by start time, across pages).
    starts = [s.started_at for s in first + second]
    assert starts == sorted(starts, reverse=True)

    # A token can be handed to a new paginator.
    p1 = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=1)
    head = p1.next_items()
    assert len(head) == 1 and p1.has_next
    p2 = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=5,
                      next_token=p1.next_token)
    rest = p2.next_items()
    assert sorted(s.sandbox_id for s in head + rest) == sorted(made)
    assert not p2.has_next


def test_set_timeout_extends_and_shortens(sandbox):
    sandbox.set_timeout(600)
    end = sandbox.get_info().end_at
    remaining = (end - datetime.now(timezone.utc)).total_seconds()
    assert 580 <= remaining <= 610
    sandbox.set_timeout(30)
    remaining = (sandbox.get_info().end_at - datetime.now(timezone.utc)).total_seconds()
    assert 20 <= remaining <= 31
    assert sandbox.is_running()


def test_expires_after_timeout(sandbox):
    sid = sandbox.sandbox_id
    sandbox.set_timeout(3)
    assert sandbox.is_running()
    deadline = time.monotonic() + 15
    while sandbox.is_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not sandbox.is_running(), "sandbox still running 15 s after a 3 s timeout"
    assert sid not in {s.sandbox_id for s in _list_all()}
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sid)


def test_kill(sandbox_factory):
    sbx = sandbox_factory()
    sid = sbx.sandbox_id
    assert sbx.kill() is True
    assert not sbx.is_running()
    assert sid not in {s.sandbox_id for s in _list_all()}
    assert Sandbox.kill(sid) is False, "second kill of the same sandbox"
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sid)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sid)


def test_kill_unknown_returns_false(sbx_daemon):
    assert Sandbox.kill("nosuchsandbox0000000000") is False


def test_kill_by_id(sandbox_factory):
    sbx = sandbox_factory()
    assert Sandbox.kill(sbx.sandbox_id) is True
    assert not sbx.is_running()


def test_connect_by_id_shares_state(sandbox):
    sandbox.commands.run("echo shared-state > /tmp/connect-check")
    other = Sandbox.connect(sandbox.sandbox_id)
    assert other.sandbox_id == sandbox.sandbox_id
    assert other.is_running()
    assert other.commands.run("cat /tmp/connect-check").stdout == "shared-state\n"


def test_connect_extends_but_never_shortens_timeout(sandbox):
    sandbox.set_timeout(100)
    end_before = sandbox.get_info().end_at
    Sandbox.connect(sandbox.sandbox_id, timeout=10)
    assert sandbox.get_info().end_at >= end_before
    Sandbox.connect(sandbox.sandbox_id, timeout=400)
    remaining = (sandbox.get_info().end_at - datetime.now(timezone.utc)).total_seconds()
    assert remaining >= 380


def test_context_manager_kills_on_exit(sbx_daemon):
    with Sandbox.create(timeout=60) as sbx:
        sid = sbx.sandbox_id
        assert sbx.is_running()
    assert Sandbox.kill(sid) is False


async def test_async_lifecycle(sbx_daemon):
    tag = _tag()
    sbx = await AsyncSandbox.create(timeout=60, metadata={"tag": tag}, envs={"A_ENV": "async"})
    try:
        assert await sbx.is_running()
        info = await sbx.get_info()
        assert info.metadata == {"tag": tag}
        r = await sbx.commands.run("echo $A_ENV")
        assert r.stdout == "async\n"

        paginator = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}))
        listed = await paginator.next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]

        other = await AsyncSandbox.connect(sbx.sandbox_id)
        assert (await other.commands.run("echo hi")).stdout == "hi\n"
        await sbx.set_timeout(200)
        remaining = ((await sbx.get_info()).end_at - datetime.now(timezone.utc)).total_seconds()
        assert 180 <= remaining <= 201
    finally:
        assert await sbx.kill() is True
    assert not await sbx.is_running()
    assert await AsyncSandbox.kill(sbx.sandbox_id) is False



def _pools_settled(sbx_daemon):
    status, _, body = sbx_daemon.request("GET", "/pools")
    return status == 200 and all(p["warm"] == p["target"] for p in json.loads(body))


def _daemon_pidfds(sbx_daemon):
    """The front end holds one pidfd per running sandbox (client sockets come and go, also
    between the listing and the readlink)."""
    fd_dir = f"/proc/{sbx_daemon.worker_pid('sbx-frontend')}/fd"
    n = 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):
            n += os.readlink(os.path.join(fd_dir, fd)) == "anon_inode:[pidfd]"
    return n


def _pids_in_cgroup_of(sid):
    """Host pids whose cgroup path names this sandbox."""
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cgroup") as f:
                    if f"/sbx/{sid}" in f.read():
                        pids.append(int(p))
            except OSError:
                pass
    return pids


def _host_uid(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def test_kill_leaves_nothing_behind(sbx_daemon, sandbox_factory):
    sbx = sandbox_factory()
    sbx.commands.run("sleep 600", background=True, timeout=0)
    sid = sbx.sandbox_id
    sandbox_dir = os.path.join(sbx_daemon.state_dir, "sandboxes", sid)
    cgroups = glob.glob(f"/sys/fs/cgroup/*/sbx/{sid}") + glob.glob(f"/sys/fs/cgroup/sbx/{sid}")
    assert os.path.isdir(sandbox_dir) and cgroups, "sandbox dir and cgroups exist while running"
    pids = _pids_in_cgroup_of(sid)
    assert len(pids) >= 2, "agent and sleep run in the sandbox's cgroup"
    # Sandbox root is an unprivileged host uid of the sandbox's own range (>= 2^30).
    assert all(_host_uid(p) >= 1 << 30 for p in pids)
    # The warm pools hold pidfds too: count once they have replaced what the create took.
    assert wait_for(lambda: _pools_settled(sbx_daemon), timeout=60)
    pidfds_running = _daemon_pidfds(sbx_daemon)

    assert Sandbox.kill(sid) is True
    assert not os.path.exists(sandbox_dir)
    assert not any(os.path.exists(c) for c in cgroups)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")], "a sandbox process survived"
    assert _daemon_pidfds(sbx_daemon) == pidfds_running - 1, "the daemon kept the pidfd"
    # The uid range is free again: the next sandbox may take it, and works.
    nxt = sandbox_factory()
    assert nxt.commands.run("id -u").stdout == "1000\n"
