"""The daemon restarts (SIGTERM, or a crash: kill -9) while sandboxes and their processes
keep running; after the restart everything is reachable again through the SDK."""

import secrets

import pytest

from e2b import Sandbox, SandboxQuery
from helpers import wait_for


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_sandboxes_survive_daemon_restart(how, sandbox_factory, sbx_daemon, kill9_daemon,
                                          restart_daemon):
    tag = "restart-" + secrets.token_hex(4)
    a = sandbox_factory(metadata={"tag": tag, "n": "a"}, envs={"KEEP": "kept"})
    b = sandbox_factory(metadata={"tag": tag, "n": "b"})
    a.commands.run(f"echo {tag} > /home/user/state.txt")
    sleeper = a.commands.run("sleep 600", background=True, timeout=0)
    ticker = b.commands.run("while true; do echo tick; sleep 0.3; done", background=True,
                            timeout=0)
    end_a = a.get_info().end_at

    if how == "sigterm":
        restart_daemon()  # asserts exit status 0
    else:
        kill9_daemon()
        # While the daemon is down the sandboxes' processes keep running; the daemon's
        # startup reconnects to them.
        restart_daemon()

    listed = {s.sandbox_id: s for s in
              Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()}
    assert set(listed) == {a.sandbox_id, b.sandbox_id}
    assert listed[a.sandbox_id].metadata == {"tag": tag, "n": "a"}

    # Read the end time before connecting: connect itself extends it (spec §2.3).
    info = Sandbox.get_info(a.sandbox_id)
    assert abs((info.end_at - end_a).total_seconds()) < 2, "timeout must survive the restart"
    a2 = Sandbox.connect(a.sandbox_id)
    assert a2.is_running()

    procs = {p.pid: p for p in a2.commands.list()}
    assert sleeper.pid in procs, "background process lost across the restart"
    assert procs[sleeper.pid].args == ["-l", "-c", "sleep 600"]

    # New commands run, the sandbox's files and env vars are intact.
    assert a2.commands.run("cat /home/user/state.txt").stdout == f"{tag}\n"
    assert a2.commands.run("echo $KEEP").stdout == "kept\n"

    # A process that kept printing can be re-attached.
    b2 = Sandbox.connect(b.sandbox_id)
    got = []
    h = b2.commands.connect(ticker.pid, timeout=0)
    for out, _, _ in h:
        if out:
            got.append(out)
            break
    assert got and "tick" in got[0]
    h.disconnect()
    assert b2.commands.kill(ticker.pid) is True
    assert a2.commands.kill(sleeper.pid) is True

    # Kill still works for sandboxes from before the restart.
    assert Sandbox.kill(b.sandbox_id) is True
    assert not b2.is_running()


@pytest.mark.timeout(120)
def test_expiry_still_enforced_after_restart(sandbox_factory, restart_daemon):
    sbx = sandbox_factory()
    sbx.set_timeout(6)
    restart_daemon()
    assert wait_for(lambda: not sbx.is_running(), 20, 0.5), \
        "a sandbox whose timeout elapsed across a restart must be killed"


@pytest.mark.timeout(120)
def test_create_after_restart_and_ids_unique(sandbox_factory, restart_daemon):
    before = sandbox_factory()
    restart_daemon()
    after = sandbox_factory()
    assert after.sandbox_id != before.sandbox_id
    assert after.commands.run("echo new").stdout == "new\n"
    assert before.commands.run("echo old").stdout == "old\n"
