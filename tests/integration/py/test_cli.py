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


def test_template_build_ls_rm(cli, tmp_path):
    name = "cli-" + os.urandom(4).hex()
    (tmp_path / "Dockerfile").write_text(
        "FROM e2bdev/base\nENV GREETING=hello\nRUN echo \"$GREETING\" > /home/user/g && \\\n"
        "    echo built\nWORKDIR /home/user\n")
    r = cli("template", "build", str(tmp_path / "Dockerfile"), "--name", name, "--cpu", "1",
            timeout=300)
    assert r.returncode == 0, r.stderr
    assert "[builder 2/3] RUN" in r.stdout and "built\n" in r.stdout, r.stdout
    r = cli("template", "ls")
    assert r.returncode == 0 and name in r.stdout and "ready" in r.stdout, r.stdout
    r = cli("create", "--template", name, "--timeout", "60")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    r = cli("exec", sid, "--", "cat", "/home/user/g")
    assert r.stdout == "hello\n", r
    cli("kill", sid)
    r = cli("template", "rm", name)
    assert r.returncode == 0, r.stderr
    assert name not in cli("template", "ls").stdout
    # A failing step exits non-zero with its step and message.
    (tmp_path / "Dockerfile").write_text("FROM e2bdev/base\nRUN exit 4\n")
    r = cli("template", "build", str(tmp_path / "Dockerfile"), "--name", name, timeout=300)
    assert r.returncode == 1 and "step 1" in r.stderr and "exit status 4" in r.stderr, r
    (tmp_path / "Dockerfile").write_text("FROM e2bdev/base\nCOPY a b\n")
    r = cli("template", "build", str(tmp_path / "Dockerfile"), "--name", name)
    assert r.returncode == 1 and "COPY is not supported" in r.stderr, r
    r = cli("template", "import", "x.tar")
    assert r.returncode == 1 and "not supported yet" in r.stderr, r
