"""commands.* through the official Python SDK."""

import threading
import time

import pytest

from e2b import (
    AsyncSandbox,
    CommandExitException,
    InvalidArgumentException,
    Sandbox,
    SandboxNotRunningException,
    TimeoutException,
)
from helpers import wait_for


def _pids(sbx):
    return {p.pid for p in sbx.commands.list()}


# -- foreground --------------------------------------------------------------------------


def test_run_stdout_stderr_exit_code(sandbox):
    r = sandbox.commands.run("echo out; echo err >&2")
    assert r.exit_code == 0
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    assert r.error is None


def test_run_nonzero_raises_command_exit(sandbox):
    with pytest.raises(CommandExitException) as ei:
        sandbox.commands.run("echo partial; echo boom >&2; exit 3")
    e = ei.value
    assert e.exit_code == 3
    assert e.stdout == "partial\n"
    assert e.stderr == "boom\n"
    assert e.error and "3" in e.error


def test_run_large_and_binary_safe_output(sandbox):
    # 1 MiB of output must arrive complete and in order (several envd data chunks).
    r = sandbox.commands.run("head -c 1048576 /dev/zero | tr '\\0' 'a'; echo; echo END")
    assert r.stdout == "a" * 1048576 + "\nEND\n"
    r = sandbox.commands.run("printf 'h\\xc3\\xa9llo \\xe2\\x82\\xac\\n'")
    assert r.stdout == "héllo €\n"


def test_login_shell_and_path(sandbox):
    r = sandbox.commands.run("echo $0; command -v python3 bash curl git")
    lines = r.stdout.splitlines()
    assert lines[0] == "bash" or lines[0].endswith("/bash")
    assert len(lines) == 5, r.stdout


# -- background, streaming, stdin ----------------------------------------------------------


def test_background_and_wait(sandbox):
    t0 = time.monotonic()
    h = sandbox.commands.run("sleep 1; echo done", background=True)
    assert time.monotonic() - t0 < 1.0, "background run must return before the command ends"
    assert h.pid > 0
    assert h.pid in _pids(sandbox)
    r = h.wait()
    assert r.exit_code == 0 and r.stdout == "done\n"
    assert wait_for(lambda: h.pid not in _pids(sandbox), 5), "exited process still listed"


def test_output_callbacks_stream(sandbox):
    events = []
    t0 = time.monotonic()
    r = sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.4; done",
        on_stdout=lambda s: events.append(("out", s, time.monotonic() - t0)),
        on_stderr=lambda s: events.append(("err", s, time.monotonic() - t0)),
    )
    total = time.monotonic() - t0
    out = "".join(s for k, s, _ in events if k == "out")
    err = "".join(s for k, s, _ in events if k == "err")
    assert out == "out1\nout2\nout3\n" == r.stdout
    assert err == "err1\nerr2\nerr3\n" == r.stderr
    first_out = min(t for k, _, t in events if k == "out")
    assert first_out < total - 0.6, "output must be streamed, not delivered at exit"


def test_stdin_send_and_close(sandbox):
    h = sandbox.commands.run("cat", background=True, stdin=True)
    h.send_stdin("hello\n")
    sandbox.commands.send_stdin(h.pid, "world\n")
    h.close_stdin()
    r = h.wait()
    assert r.exit_code == 0
    assert r.stdout == "hello\nworld\n"


def test_stdin_disabled_by_default(sandbox):
    # Without stdin=True the process reads /dev/null: `cat` ends at once.
    r = sandbox.commands.run("cat; echo eof", timeout=10)
    assert r.stdout == "eof\n"


def test_kill_command(sandbox):
    h = sandbox.commands.run("sleep 600", background=True, timeout=0)
    assert h.pid in _pids(sandbox)
    assert sandbox.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as ei:
        h.wait()
    assert ei.value.exit_code != 0
    assert wait_for(lambda: h.pid not in _pids(sandbox), 5)


def test_kill_via_handle_and_unknown_pid(sandbox):
    h = sandbox.commands.run("sleep 600", background=True, timeout=0)
    assert h.kill() is True
    assert wait_for(lambda: h.pid not in _pids(sandbox), 5)
    assert sandbox.commands.kill(999999) is False


def test_list_processes(sandbox):
    h = sandbox.commands.run("sleep 600", background=True, envs={"LISTED": "yes"},
                             cwd="/tmp", timeout=0)
    try:
        procs = {p.pid: p for p in sandbox.commands.list()}
        assert h.pid in procs
        p = procs[h.pid]
        assert p.cmd == "/bin/bash"
        assert p.args == ["-l", "-c", "sleep 600"]
        assert p.envs.get("LISTED") == "yes"
        assert p.cwd == "/tmp"
    finally:
        h.kill()


def test_connect_to_running_process_from_second_handle(sandbox):
    h1 = sandbox.commands.run("sleep 1.5; echo from-the-process; exit 4", background=True)
    other = Sandbox.connect(sandbox.sandbox_id)
    h2 = other.commands.connect(h1.pid)
    assert h2.pid == h1.pid
    with pytest.raises(CommandExitException) as e2:
        h2.wait()
    assert e2.value.exit_code == 4
    assert "from-the-process" in e2.value.stdout
    # The first stream got the same output (fan-out).
    with pytest.raises(CommandExitException) as e1:
        h1.wait()
    assert e1.value.exit_code == 4 and "from-the-process" in e1.value.stdout


def test_connect_unknown_pid_fails(sandbox):
    with pytest.raises(Exception) as ei:
        sandbox.commands.connect(999999)
    assert "not found" in str(ei.value).lower() or "999999" in str(ei.value)


def test_process_survives_disconnect(sandbox):
    h = sandbox.commands.run("sleep 2; echo still-here", background=True)
    h.disconnect()
    assert h.pid in _pids(sandbox)
    r = sandbox.commands.connect(h.pid).wait()
    assert r.stdout == "still-here\n"


def test_command_timeout_kills_process(sandbox):
    t0 = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=2)
    assert time.monotonic() - t0 < 15
    # envd uses Connect-Timeout-Ms as the process lifetime: the process is gone.
    assert wait_for(
        lambda: not any(p.args[-1:] == ["sleep 30"] for p in sandbox.commands.list()), 5
    ), "timed-out command still running"


def test_background_command_timeout(sandbox):
    h = sandbox.commands.run("sleep 30", background=True, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutException):
        h.wait()
    assert time.monotonic() - t0 < 15


# -- users, cwd, env ------------------------------------------------------------------------


def test_default_user_is_user(sandbox):
    r = sandbox.commands.run("whoami; id -u; echo $HOME; pwd")
    assert r.stdout.split() == ["user", "1000", "/home/user", "/home/user"]


def test_root_user(sandbox):
    r = sandbox.commands.run("whoami; id -u; echo $HOME", user="root")
    assert r.stdout.split() == ["root", "0", "/root"]


def test_unknown_user_rejected(sandbox):
    with pytest.raises(Exception) as ei:
        sandbox.commands.run("true", user="nosuchuser")
    assert not isinstance(ei.value, CommandExitException)


def test_files_created_are_owned_by_the_user(sandbox):
    r = sandbox.commands.run("touch /tmp/u1 && stat -c %U /tmp/u1")
    assert r.stdout == "user\n"
    r = sandbox.commands.run("touch /tmp/r1 && stat -c %U /tmp/r1", user="root")
    assert r.stdout == "root\n"


def test_cwd(sandbox):
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    sandbox.commands.run("mkdir -p /home/user/work/sub")
    assert sandbox.commands.run("pwd", cwd="/home/user/work/sub").stdout == "/home/user/work/sub\n"


def test_bad_cwd_is_invalid_argument(sandbox):
    with pytest.raises(InvalidArgumentException):
        sandbox.commands.run("pwd", cwd="/no/such/dir")


def test_per_command_envs_do_not_leak(sandbox):
    assert sandbox.commands.run("echo $FOO", envs={"FOO": "bar"}).stdout == "bar\n"
    assert sandbox.commands.run("echo \"[$FOO]\"").stdout == "[]\n"


def test_sandbox_envs_and_override(sandbox_factory):
    sbx = sandbox_factory(envs={"GLOBAL_A": "1", "GLOBAL_B": "2"})
    assert sbx.commands.run("echo $GLOBAL_A$GLOBAL_B").stdout == "12\n"
    assert sbx.commands.run("echo $GLOBAL_A", envs={"GLOBAL_A": "x"}).stdout == "x\n"
    assert sbx.commands.run("echo $GLOBAL_A", user="root").stdout == "1\n"
    assert sbx.commands.run("echo $GLOBAL_A").stdout == "1\n"


def test_sudo_without_password(sandbox):
    assert sandbox.commands.run("sudo -n whoami").stdout == "root\n"


def test_python_user_site_is_writable(sandbox):
    r = sandbox.commands.run(
        "python3 -c 'import site; print(site.USER_SITE)'"
    )
    user_site = r.stdout.strip()
    assert user_site.startswith("/home/user/")
    sandbox.commands.run(
        f"mkdir -p '{user_site}' && echo 'VALUE = 42' > '{user_site}/sbx_probe_mod.py'"
    )
    r = sandbox.commands.run("cd / && python3 -c 'import sbx_probe_mod; print(sbx_probe_mod.VALUE)'")
    assert r.stdout == "42\n"


def test_common_tools_present(sandbox):
    r = sandbox.commands.run("bash --version >/dev/null && python3 -c 'print(1+1)' "
                             "&& curl --version >/dev/null && git --version >/dev/null && echo ok")
    assert r.stdout.endswith("ok\n")


# -- sandbox killed while streaming -----------------------------------------------------------


@pytest.mark.timeout(45)
def test_kill_sandbox_while_streaming(sandbox):
    got = threading.Event()
    h = sandbox.commands.run("while true; do echo tick; sleep 0.2; done",
                             background=True, timeout=0)

    def killer():
        got.wait(10)
        Sandbox.kill(sandbox.sandbox_id)

    t = threading.Thread(target=killer)
    t.start()
    t0 = time.monotonic()
    with pytest.raises(SandboxNotRunningException) as ei:
        h.wait(on_stdout=lambda s: got.set())
    t.join()
    assert got.is_set(), "no output before the kill"
    assert time.monotonic() - t0 < 20, "the stream must end promptly when the sandbox is killed"
    assert "killed" in str(ei.value) or "not found" in str(ei.value)
    assert not sandbox.is_running()


async def test_async_kill_sandbox_while_streaming(async_sandbox):
    import asyncio

    got = asyncio.Event()
    h = await async_sandbox.commands.run(
        "while true; do echo tick; sleep 0.2; done", background=True, timeout=0,
        on_stdout=lambda s: got.set())
    await asyncio.wait_for(got.wait(), 10)
    await AsyncSandbox.kill(async_sandbox.sandbox_id)
    with pytest.raises(SandboxNotRunningException):
        await asyncio.wait_for(h.wait(), 20)


# -- async API --------------------------------------------------------------------------------


async def test_async_commands(async_sandbox):
    chunks = []
    r = await async_sandbox.commands.run("echo a; echo b >&2", on_stdout=chunks.append)
    assert (r.stdout, r.stderr, r.exit_code) == ("a\n", "b\n", 0)
    assert "".join(chunks) == "a\n"

    h = await async_sandbox.commands.run("cat", background=True, stdin=True)
    await h.send_stdin("piped\n")
    await h.close_stdin()
    assert (await h.wait()).stdout == "piped\n"

    with pytest.raises(CommandExitException) as ei:
        await async_sandbox.commands.run("exit 7")
    assert ei.value.exit_code == 7

    h = await async_sandbox.commands.run("sleep 600", background=True, timeout=0)
    assert h.pid in {p.pid for p in await async_sandbox.commands.list()}
    assert await async_sandbox.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException):
        await h.wait()
