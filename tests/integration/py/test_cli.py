"""The `sbx` client verbs (create, ls, exec, shell, kill) against the real daemon."""

import contextlib
import json
import re
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture
def cli(sbx_daemon):
    env = dict(os.environ, E2B_API_URL=sbx_daemon.url, E2B_API_KEY=sbx_daemon.api_key)
    env.pop("E2B_SANDBOX_URL", None)

    def run(*args, timeout=60, **kw):
        return subprocess.run([sbx_daemon.binary, *args], env=env, capture_output=True,
                              text=True, timeout=timeout, **kw)

    run.env = env
    run.binary = sbx_daemon.binary
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


@contextlib.contextmanager
def _in_pty(cli, *args):
    """sbx ARGS on a new terminal: yields {"pid", "fd" (the master)}; a test that reaped the
    process sets pid to 0, else it is killed at the end."""
    pid, fd = pty.fork()
    if pid == 0:
        # The CLI's own signal handling, not what this process's threads left: an exec keeps
        # a blocked or ignored SIGINT.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execve(cli.binary, [cli.binary, *args], cli.env)
    p = {"pid": pid, "fd": fd}
    try:
        yield p
    finally:
        if p["pid"]:
            os.kill(p["pid"], 9)
            os.waitpid(p["pid"], 0)
        os.close(fd)


def test_shell_is_interactive_and_sized(sbx_daemon, cli, cli_sandbox):
    with _in_pty(cli, "shell", cli_sandbox) as p:
        pid, fd = p["pid"], p["fd"]
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
        p["pid"] = 0
        assert os.waitstatus_to_exitcode(status) == 3


def test_logs_and_follow(cli, sbx_daemon, cli_sandbox):
    assert cli("exec", cli_sandbox, "--", "sh", "-c", "exit 5").returncode == 5
    r = cli("logs", cli_sandbox)
    assert r.returncode == 0, r.stderr
    assert re.search(r"info\s+daemon\s+sandbox_create template=base", r.stdout)
    assert re.search(r"agent\s+process_end pid=\d+ status=\"exit status 5\"", r.stdout)
    as_json = [json.loads(line) for line in cli("logs", "--format", "json", cli_sandbox)
               .stdout.splitlines()]
    assert {"timestamp", "level", "message", "fields"} <= set(as_json[0])
    # -f follows new lines until the sandbox ends, then exits 0 by itself.
    p = subprocess.Popen([sbx_daemon.binary, "logs", "-f", cli_sandbox], env=cli.env,
                         stdout=subprocess.PIPE, text=True)
    try:
        cli("exec", cli_sandbox, "--", "echo", "followed-line")
        deadline = time.monotonic() + 20
        seen = ""
        while "followed-line" not in seen and time.monotonic() < deadline:
            seen += p.stdout.readline()
        assert "followed-line" in seen
        assert cli("kill", cli_sandbox).returncode == 0
        assert p.wait(20) == 0
        rest = p.stdout.read()
        assert "sandbox_end reason=killed" in rest
        assert seen.count("echo followed-line") == 1  # each line once
    finally:
        p.kill()
    # The log stays after the sandbox is gone.
    r = cli("logs", "--level", "warn", cli_sandbox)
    assert r.returncode == 0 and "sandbox_create" not in r.stdout


def test_logs_errors(cli):
    r = cli("logs", "nosuchsandbox")
    assert r.returncode == 1 and "no log for sandbox 'nosuchsandbox'" in r.stderr
    assert cli("logs").returncode == 2
    assert cli("logs", "--level", "loud", "x").returncode == 2


def test_unique_id_prefixes(cli, cli_sandbox):
    r = cli("exec", cli_sandbox[:6], "--", "echo", "by-prefix")
    assert (r.returncode, r.stdout) == (0, "by-prefix\n")
    # Sandboxes until two share a first character (ids are random [a-z0-9]).
    made = []
    try:
        while len(made) < 30:
            made.append(cli("create").stdout.strip())
            firsts = [m[0] for m in made]
            twins = [m for m in made if firsts.count(m[0]) > 1]
            if twins:
                break
        common = os.path.commonprefix(twins)
        r = cli("exec", common, "--", "true")
        assert r.returncode == 1 and re.search(r"is the beginning of \d+ sandbox ids", r.stderr)
        assert cli("kill", twins[0][:12]).returncode == 0
    finally:
        cli("kill", *made)


def test_exec_interactive_streams_stdin(cli, cli_sandbox):
    r = cli("exec", "-i", cli_sandbox, "--", "sh", "-c", "wc -l; cat >/dev/null; echo done",
            input="".join(f"{i}\n" for i in range(50000)))
    assert (r.returncode, r.stdout) == (0, "50000\ndone\n"), r.stderr
    # Without -i the command's stdin is empty, not the caller's.
    r = cli("exec", cli_sandbox, "--", "cat", input="ignored\n")
    assert (r.returncode, r.stdout) == (0, "")


def test_shell_with_piped_input_runs_it_as_a_script(cli, cli_sandbox):
    for _ in range(3):  # no race with a prompt: this used to hang now and then
        r = cli("shell", cli_sandbox, input="echo one\ncd /tmp\npwd\nexit 6\n", timeout=30)
        assert (r.returncode, r.stdout) == (6, "one\n/tmp\n"), r.stderr
    r = cli("shell", cli_sandbox, input="", timeout=30)
    assert r.returncode == 0


def test_oom_and_timeout_are_reported_as_such(cli, sbx_daemon):
    sid = cli("create", "--timeout", "4").stdout.strip()
    try:
        r = cli("exec", sid, "--", "python3", "-c", "x = bytearray(900 << 20)")
        assert r.returncode == 137
        assert "sbx exec: killed: out of memory (limit 512 MiB)" in r.stderr
        r = cli("exec", sid, "--", "sleep", "60")
        assert r.returncode == 124 and r.stderr.strip() == "sbx exec: sandbox timed out"
    finally:
        cli("kill", sid)


def test_run_rm_and_keep(cli):
    r = cli("run", "--rm", "--metadata", "via=run", "base", "--", "sh", "-c", "echo ran; exit 3")
    assert (r.returncode, r.stdout) == (3, "ran\n"), r.stderr
    assert "via=run" not in cli("ls").stdout  # removed
    r = cli("run", "--timeout", "60", "base", "--", "true")
    sid = re.search(r"sandbox (\w+) keeps running", r.stderr).group(1)
    try:
        assert r.returncode == 0 and sid in cli("ls").stdout
    finally:
        cli("kill", sid)
    assert cli("run", "base").returncode == 2
    r = cli("run", "--rm", "nosuchtemplate", "--", "true")
    assert r.returncode == 1 and "template 'nosuchtemplate' not found" in r.stderr


def test_cp_both_ways(cli, cli_sandbox, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 << 20))
    assert cli("cp", str(src), f"{cli_sandbox}:/home/user/in.bin").returncode == 0
    r = cli("exec", cli_sandbox, "--", "sha256sum", "/home/user/in.bin")
    import hashlib
    assert r.stdout.split()[0] == hashlib.sha256(src.read_bytes()).hexdigest()
    # Into a directory it keeps the name; a relative path is in the home directory.
    assert cli("cp", f"{cli_sandbox}:in.bin", str(tmp_path / "..")).returncode == 0
    assert (tmp_path.parent / "in.bin").read_bytes() == src.read_bytes()
    (tmp_path.parent / "in.bin").unlink()
    r = subprocess.run([cli.binary, "cp", "-", f"{cli_sandbox}:/tmp/piped"], input=b"from stdin",
                       env=cli.env, capture_output=True)
    assert r.returncode == 0
    r = subprocess.run([cli.binary, "cp", f"{cli_sandbox}:/tmp/piped", "-"], env=cli.env,
                       capture_output=True)
    assert r.stdout == b"from stdin"
    # Into a sandbox directory (one that exists, or a PATH ending in '/') the file keeps its
    # name too, as README's `sbx cp notes.txt ID:/home/user/` does.
    for dst, path in ((f"{cli_sandbox}:/home/user/", "/home/user/in.bin"),
                      (f"{cli_sandbox}:/tmp", "/tmp/in.bin"),
                      (f"{cli_sandbox}:new/", "/home/user/new/in.bin")):
        assert cli("cp", str(src), dst).returncode == 0, dst
        assert cli("exec", cli_sandbox, "--", "cmp", path, "/home/user/in.bin").returncode == 0
    r = subprocess.run([cli.binary, "cp", "-", f"{cli_sandbox}:/tmp"], input=b"x", env=cli.env,
                       capture_output=True, text=False)
    assert r.returncode == 1 and b"'/tmp' is a directory: name the file" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["{id}:/dev/zero", "{tmp}/z"], "path '/dev/zero' is not a regular file"),
    (["{id}:/etc", "{tmp}/etc"], "path '/etc' is a directory"),
    (["{id}:/nonexistent", "{tmp}/n"], "not"),
    (["{tmp}", "{id}:x"], "is a directory: sbx cp copies regular files"),
    (["/dev/null", "{id}:x"], "is not a regular file"),
    (["{id}:/etc/hostname", "/dev/null"], "/dev/null exists and is not a regular file"),
    (["{tmp}/a", "{tmp}/b"], "exactly one of SRC and DST must be ID:PATH"),
])
def test_cp_refuses_what_it_cannot_copy(cli, cli_sandbox, tmp_path, args, message):
    argv = [a.format(id=cli_sandbox, tmp=tmp_path) for a in args]
    r = cli("cp", *argv)
    assert r.returncode in (1, 2) and message in r.stderr, r.stderr
    # Nothing half-written is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cp_keeps_an_existing_file_when_the_copy_fails(cli, cli_sandbox, tmp_path):
    kept = tmp_path / "kept"
    kept.write_text("mine")
    r = cli("cp", f"{cli_sandbox}:/nonexistent", str(kept))
    assert r.returncode == 1 and "path '/nonexistent' does not exist" in r.stderr
    assert kept.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_cp_paths_are_the_sandboxs_own(cli, cli_sandbox, tmp_path):
    """Paths that lead out of the sandbox on the host (.., symlinks to host paths, /proc/N/root)
    reach the sandbox's own files, never the host's."""
    secret = tmp_path / "secret"
    secret.write_text("host only")
    up = "../" * 8 + str(tmp_path).lstrip("/")
    assert cli("exec", cli_sandbox, "--", "ln", "-s", str(tmp_path), "hostlink").returncode == 0
    for path in (str(secret), f"{up}/secret", "hostlink/secret"):
        r = cli("cp", f"{cli_sandbox}:{path}", "-")
        assert r.returncode == 1 and "does not exist" in r.stderr and r.stdout == "", path
    r = cli("cp", f"{cli_sandbox}:/proc/1/root/etc/hostname", "-")
    assert r.returncode == 1 and "which the agent never follows" in r.stderr, r.stderr
    r = cli("cp", f"{cli_sandbox}:{'../' * 8}etc/hostname", "-")
    assert r.stdout == cli("exec", cli_sandbox, "--", "cat", "/etc/hostname").stdout
    # Written through the same paths, a file lands in the sandbox, never on the host.
    for path in (f"{up}/planted1", "hostlink/planted2"):
        assert cli("cp", str(secret), f"{cli_sandbox}:{path}").returncode == 0, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]
    r = cli("exec", cli_sandbox, "--", "cat", f"{tmp_path}/planted1", f"{tmp_path}/planted2")
    assert r.stdout == "host onlyhost only"


def test_inspect_stats_and_json_listings(cli, cli_sandbox):
    info = json.loads(cli("inspect", cli_sandbox[:8]).stdout)
    assert info[0]["sandboxID"] == cli_sandbox and info[0]["metadata"] == {"via": "cli"}
    assert re.search(r"^templateID\s+base$", cli("inspect", "--format", "table", cli_sandbox)
                     .stdout, re.M)
    r = cli("inspect", "nosuchsandbox")
    assert r.returncode == 1 and "not found" in r.stderr
    cli("exec", cli_sandbox, "--", "sh", "-c", "head -c 30000000 /dev/urandom > f; sync")
    rows = json.loads(cli("stats", "--format", "json", cli_sandbox).stdout)
    assert rows[0]["sandboxID"] == cli_sandbox and rows[0]["memTotal"] == 512 << 20
    assert rows[0]["diskUsed"] >= 30000000
    table = cli("stats", "--no-stream").stdout
    assert re.search(rf"^{cli_sandbox}\s+\d+\.\d%\s+[\d.]+ \w+ / 512\.0 MiB", table, re.M), table
    listed = json.loads(cli("ls", "--format", "json").stdout)
    assert cli_sandbox in [s["sandboxID"] for s in listed]
    assert cli("ls", "--format", "yaml").returncode == 2


def test_stats_streams_in_a_terminal(cli, cli_sandbox):
    with _in_pty(cli, "stats") as p:
        out = _read_until(p["fd"], b"SANDBOX", timeout=15)
        out += _read_until(p["fd"], b"\x1b[2J", timeout=15)  # redrawn
        assert cli_sandbox.encode() in out and out.count(b"\x1b[H\x1b[2J") >= 2, out
        os.kill(p["pid"], signal.SIGINT)
        _, status = os.waitpid(p["pid"], 0)
        p["pid"] = 0
        assert os.WIFSIGNALED(status) or os.waitstatus_to_exitcode(status) != 0


def test_kill_all_by_metadata(cli):
    a = cli("create", "--metadata", "job=x", "--metadata", "team=t").stdout.strip()
    b = cli("create", "--metadata", "job=y", "--metadata", "team=t").stdout.strip()
    try:
        r = cli("kill", "--all", "-m", "job=x", "-m", "team=t")
        assert r.returncode == 0 and r.stdout.split() == [a] and "killed 1 sandbox" in r.stderr
        listed = cli("ls").stdout
        assert a not in listed and b in listed
        assert cli("kill", "--all", "x").returncode == 2
        assert cli("kill", "-m", "job=y").returncode == 2
        r = cli("kill", "--all", "-m", "team=t")
        assert r.stdout.split() == [b]
    finally:
        cli("kill", a, b)


def test_bash_completion(cli, sbx_daemon):
    script = Path(__file__).resolve().parents[3] / "scripts" / "sbx-completion.bash"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    words = subprocess.run(
        ["bash", "-c", f'source {script}; COMP_WORDS=(sbx lo); COMP_CWORD=1; _sbx; '
         f'echo "${{COMPREPLY[@]}}"; COMP_WORDS=(sbx logs --f); COMP_CWORD=2; _sbx; '
         f'echo "${{COMPREPLY[@]}}"'],
        capture_output=True, text=True, env=dict(cli.env, PATH=f"{Path(sbx_daemon.binary).parent}:"
                                                  + os.environ["PATH"])).stdout.splitlines()
    assert words == ["logs", "--follow --format"]


def _completions(script, *words):
    """What the completion offers for the last of words."""
    r = subprocess.run(["bash", "-c", f'source {script}; COMP_WORDS=({" ".join(words)}); '
                        f'COMP_CWORD={len(words) - 1}; _sbx; printf "%s\\n" "${{COMPREPLY[@]}}"'],
                       capture_output=True, text=True)
    return set(r.stdout.split())


def test_bash_completion_knows_every_verb_and_option(cli):
    """Each verb of `sbx --help`, its subcommands, and the options of its usage are offered;
    nothing it would refuse is."""
    script = Path(__file__).resolve().parents[3] / "scripts" / "sbx-completion.bash"
    top = cli("--help").stdout
    verbs = dict(re.findall(r"^  ([a-z]+) ?((?:[a-z]+\|)+[a-z]+)?", top, re.M))
    assert {"cp", "snapshot", "keys", "template"} <= set(verbs)
    assert set(verbs) <= _completions(script, "sbx", "")
    common = {"--api-url", "--api-key", "--help"}
    for verb, subs in verbs.items():
        if subs:
            assert _completions(script, "sbx", verb, "") == set(subs.split("|")), verb
        if verb == "serve":
            continue
        # Every option of the usage (its first line and the indented ones after it) is offered,
        # and only options the help names (aliases such as --json are in its prose).
        text = cli(verb, "--help").stdout
        usage = re.match(r"usage:.*(?:\n\s.*)*", text).group(0)
        offered = _completions(script, "sbx", verb, *(["x"] if subs else []), "-")
        option = r"(?<![\w-])(--?[a-z][a-z-]*)"
        named = set(re.findall(option, usage)) | common
        assert named <= offered <= named | set(re.findall(option, text)), verb


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
    listed = json.loads(cli("volume", "ls", "--format", "json").stdout)
    assert {"volumeID": vid, "name": name} in listed
    assert cli("volume", "rm", vid).returncode == 0
    r = cli("volume", "rm", vid)
    assert r.returncode == 1 and "not found" in r.stderr
    assert cli("volume", "nope").returncode == 2


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
    listed = json.loads(cli("template", "ls", "--format", "json").stdout)
    assert any(name in t["names"] and t["buildStatus"] == "ready" for t in listed), listed
    r = cli("template", "rm", name, "--format", "json")
    assert r.returncode == 2 and "--format is an option of ls only" in r.stderr
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
    # Import (test_images.py has its archives): a missing file is the CLI's own clear error.
    r = cli("template", "import", str(tmp_path / "missing.tar"))
    assert r.returncode == 1 and "missing.tar: No such file or directory" in r.stderr, r
