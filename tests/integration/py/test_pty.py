"""PTY sessions through the official Python SDK (async API: output arrives via on_data)."""

import asyncio
import re
import threading
import time

import pytest

from e2b import AsyncSandbox, CommandExitException, PtySize, Sandbox


class Screen:
    """Collects PTY bytes; wait_for(regex) polls until the output matches."""

    def __init__(self):
        self.data = bytearray()

    def __call__(self, chunk: bytes):
        self.data.extend(chunk)

    @property
    def text(self):
        return self.data.decode("utf-8", "replace")

    async def wait_for(self, pattern, timeout=10.0, since=0):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.text, since)
            if m:
                return m
            await asyncio.sleep(0.05)
        raise AssertionError(f"PTY output never matched {pattern!r}; got:\n{self.text[-2000:]!r}")


async def _ask(sbx, pid, screen, shell_expr, timeout=10.0):
    """Types `echo "Q<n>=<expr>"` and returns what the shell printed for it."""
    marker = f"Q{time.monotonic_ns() % 1000000}"
    start = len(screen.text)
    await sbx.pty.send_stdin(pid, f'echo "{marker}=$({shell_expr})"\n'.encode())
    # The echoed input shows `=$(`; only the command's output has the value after `=`.
    m = await screen.wait_for(rf"{marker}=([^$\r\n][^\r\n]*)", timeout, since=start)
    return m.group(1).strip()


async def test_pty_size_input_and_resize(async_sandbox):
    screen = Screen()
    h = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=screen)
    assert h.pid > 0
    assert await _ask(async_sandbox, h.pid, screen, "tput cols") == "80"
    assert await _ask(async_sandbox, h.pid, screen, "tput lines") == "24"
    assert (await _ask(async_sandbox, h.pid, screen, "tty")).startswith("/dev/pts/")
    assert await _ask(async_sandbox, h.pid, screen, "echo $TERM") == "xterm-256color"

    await async_sandbox.pty.resize(h.pid, PtySize(rows=40, cols=132))
    assert await _ask(async_sandbox, h.pid, screen, "tput cols") == "132"
    assert await _ask(async_sandbox, h.pid, screen, "stty size") == "40 132"

    # Typed input reaches the shell and a line editor echoes it.
    await async_sandbox.pty.send_stdin(h.pid, b"echo typed-$((6*7))\n")
    await screen.wait_for(r"typed-42")
    assert await _ask(async_sandbox, h.pid, screen, "whoami") == "user"

    await async_sandbox.pty.send_stdin(h.pid, b"exit 0\n")
    r = await asyncio.wait_for(h.wait(), 10)
    assert r.exit_code == 0
    assert r.stdout == "" and r.stderr == "", "PTY output comes only as pty data"


async def test_pty_as_root_with_cwd_and_envs(async_sandbox):
    screen = Screen()
    h = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=screen, user="root",
                                       cwd="/tmp", envs={"PTY_VAR": "pv"})
    assert await _ask(async_sandbox, h.pid, screen, "whoami") == "root"
    assert await _ask(async_sandbox, h.pid, screen, "pwd") == "/tmp"
    assert await _ask(async_sandbox, h.pid, screen, "echo $PTY_VAR") == "pv"
    assert await async_sandbox.pty.kill(h.pid) is True


async def test_pty_kill(async_sandbox):
    screen = Screen()
    h = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=screen)
    assert h.pid in {p.pid for p in await async_sandbox.commands.list()}
    assert await async_sandbox.pty.kill(h.pid) is True
    with pytest.raises(CommandExitException) as ei:
        await asyncio.wait_for(h.wait(), 10)
    assert ei.value.exit_code != 0
    for _ in range(50):
        if h.pid not in {p.pid for p in await async_sandbox.commands.list()}:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("killed PTY still listed")


async def test_pty_disconnect_and_reconnect(async_sandbox):
    first = Screen()
    h = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=first, timeout=0)
    assert await _ask(async_sandbox, h.pid, first, "echo before") == "before"
    await h.disconnect()

    # The shell keeps running without a client; a new connection (a different SDK
    # handle) re-attaches and drives it.
    other = await AsyncSandbox.connect(async_sandbox.sandbox_id)
    assert h.pid in {p.pid for p in await other.commands.list()}
    second = Screen()
    h2 = await other.pty.connect(h.pid, on_data=second, timeout=0)
    assert h2.pid == h.pid
    assert await _ask(other, h.pid, second, "echo $((40+2))") == "42"
    seen_by_first = len(first.data)
    await other.pty.send_stdin(h.pid, b"exit 0\n")
    r = await asyncio.wait_for(h2.wait(), 10)
    assert r.exit_code == 0
    assert len(first.data) == seen_by_first, "a disconnected handle must not get output"


async def test_pty_timeout_ends_session(async_sandbox):
    screen = Screen()
    h = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=screen, timeout=2)
    with pytest.raises(Exception):
        await asyncio.wait_for(h.wait(), 15)
    for _ in range(50):
        if h.pid not in {p.pid for p in await async_sandbox.commands.list()}:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("PTY still running after its timeout")


def test_pty_sync_api(sandbox):
    """The sync SDK: output is read by iterating the handle (here on a thread)."""
    h = sandbox.pty.create(PtySize(rows=30, cols=100))
    out = bytearray()
    done = threading.Event()

    def reader():
        try:
            h.wait(on_pty=out.extend)
        except Exception:
            pass
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    sandbox.pty.send_stdin(h.pid, b'echo "W=$(tput cols)"\n')
    deadline = time.monotonic() + 10
    while b"W=100" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"W=100" in out, bytes(out)[-500:]
    sandbox.pty.resize(h.pid, PtySize(rows=30, cols=77))
    sandbox.pty.send_stdin(h.pid, b'echo "W=$(tput cols)"\n')
    deadline = time.monotonic() + 10
    while b"W=77" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"W=77" in out, bytes(out)[-500:]
    assert sandbox.pty.kill(h.pid) is True
    assert done.wait(10), "PTY stream did not end after kill"
