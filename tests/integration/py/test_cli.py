"""The `sbx` client verbs (create, ls, exec, shell, kill) against the real daemon."""

import json
import os
import pty
import select
import subprocess
import time

import pytest


@pytest.fixture
def cli(sbx_daemon):
    env = dict(os.environ, E2B_API_URL=sbx_daemon.url, E2B_API_KEY=sbx_daemon.api_key)
    env.pop("E2B_SANDBOX_URL", None)

    def run(*args, timeout=60, **kw):
        return subprocess.run([sbx_daemon.binary, *args], env=env, capture_output=True,
                              text=True, timeout=timeout, **kw)

    run.env = env
    return run


@pytest.fixture
def cli_sandbox(cli):
    r = cli("create", "--timeout", "120", "--metadata", "via=cli", "--env", "GREETING=hi")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    assert sid.isalnum()
    yield sid
    cli("kill", sid)


def test_create_ls_kill(cli, cli_sandbox):
    r = cli("ls", "--json")
    assert r.returncode == 0, r.stderr
    listed = {s["sandboxID"]: s for s in json.loads(r.stdout)}
    assert listed[cli_sandbox]["metadata"] == {"via": "cli"}
    table = cli("ls")
    assert cli_sandbox in table.stdout and "via=cli" in table.stdout
    assert cli("kill", cli_sandbox).returncode == 0
    again = cli("kill", cli_sandbox)
    assert again.returncode == 1 and "not found" in again.stderr
    assert cli_sandbox not in cli("ls").stdout


def test_exec_streams_output_and_exit_code(cli, cli_sandbox):
    r = cli("exec", cli_sandbox, "--", "sh", "-c", "echo out $GREETING; echo err >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout == "out hi\n"
    assert r.stderr == "err\n"
    r = cli("exec", cli_sandbox, "--user", "root", "--", "id", "-u")
    assert (r.returncode, r.stdout) == (0, "0\n")
    # Arguments keep their boundaries (no shell re-splitting).
    r = cli("exec", cli_sandbox, "--", "printf", "[%s]", "a b", "c")
    assert r.stdout == "[a b][c]"


def test_exec_output_arrives_while_running(cli, sbx_daemon, cli_sandbox):
    p = subprocess.Popen([sbx_daemon.binary, "exec", cli_sandbox, "--", "sh", "-c",
                          "echo first; sleep 3; echo second"],
                         env=cli.env, stdout=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        assert p.stdout.readline() == "first\n"
        assert time.monotonic() - t0 < 2.5, "first line was held back until the end"
        assert p.stdout.readline() == "second\n"
        assert p.wait(10) == 0
    finally:
        p.kill()


def test_exec_killed_by_signal(cli, cli_sandbox):
    r = cli("exec", cli_sandbox, "--", "sh", "-c", "kill -9 $$")
    assert r.returncode == 128 + 9


def test_usage_errors(cli):
    assert cli("exec").returncode == 2
    assert cli("frobnicate").returncode != 0
    r = cli("kill", "nosuchsandbox")
    assert r.returncode == 1 and "not found" in r.stderr


def _read_until(fd, needle, timeout=15):
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_shell_is_interactive_and_sized(sbx_daemon, cli, cli_sandbox):
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sbx_daemon.binary, [sbx_daemon.binary, "shell", cli_sandbox], cli.env)
    try:
        import fcntl
        import struct
        import termios
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 101, 0, 0))
        os.write(fd, b"echo cols=$(tput cols)\r")
        out = _read_until(fd, b"cols=101")
        assert b"cols=101" in out, out
        # Resize the local terminal: the shell sees the new size.
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 77, 0, 0))
        os.kill(pid, 28)  # SIGWINCH, as the terminal would send
        time.sleep(0.5)
        os.write(fd, b"echo cols=$(tput cols)\r")
        out = _read_until(fd, b"cols=77")
        assert b"cols=77" in out, out
        os.write(fd, b"exit 3\r")
        _read_until(fd, b"\x00", timeout=5)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
        pid = 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_pause_and_resume(cli, cli_sandbox):
    cli("exec", cli_sandbox, "--", "sh", "-c", "echo kept > /home/user/f")
    assert cli("pause", cli_sandbox).returncode == 0
    again = cli("pause", cli_sandbox)
    assert again.returncode == 1 and "already paused" in again.stderr
    r = cli("exec", cli_sandbox, "--", "true")
    assert r.returncode == 1 and "sbx resume" in r.stderr
    assert "paused" in cli("ls", "--state", "paused").stdout
    assert cli("resume", "--timeout", "60", cli_sandbox).returncode == 0
    assert cli("exec", cli_sandbox, "--", "cat", "/home/user/f").stdout == "kept\n"
    assert cli("pause", "--filesystem", cli_sandbox).returncode == 0
    assert cli("resume", "--reboot", cli_sandbox).returncode == 0
    assert cli("exec", cli_sandbox, "--", "cat", "/home/user/f").stdout == "kept\n"
    r = cli("pause", "nosuchsandbox0000")
    assert r.returncode == 1 and "not found" in r.stderr
    assert cli("resume").returncode == 2


def test_volume_verbs(cli):
    name = "cli-" + os.urandom(4).hex()
    r = cli("volume", "create", name)
    assert r.returncode == 0, r.stderr
    vid = r.stdout.strip()
    assert vid.isalnum()
    assert cli("volume", "create", name).returncode == 1
    table = cli("volume", "ls")
    assert vid in table.stdout and name in table.stdout
    listed = json.loads(cli("volume", "ls", "--json").stdout)
    assert {"volumeID": vid, "name": name} in listed
    assert cli("volume", "rm", vid).returncode == 0
    r = cli("volume", "rm", vid)
    assert r.returncode == 1 and "not found" in r.stderr
    assert cli("volume", "nope").returncode == 2
