"""Attacks on what a sandbox shares with the host: its own log, host-wide kernel tables, the
agent (PID 1), the kernel's attack surface, tmpfs and memory limits, host uid ranges.
Each test runs the attack through the official SDK and asserts the specific bound or denial,
printing the figures. Fixtures: tests/conftest.py."""

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import pty
import stat
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2b import CommandExitException, Sandbox, SandboxException

from conftest import Daemon, _binary, own_daemon
from helpers import wait_for

LIBC = ctypes.CDLL(None, use_errno=True)
AGENT_LOG_BYTES = 256 * 1024  # SBX_AGENT_LOG_BYTES


def run(sbx, cmd, user=None, timeout=120):
    try:
        return sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitException as e:
        return e


def run_py(sbx, code, user=None, timeout=120):
    """Runs a Python script inside the sandbox; returns its last stdout line as JSON."""
    path = f"/tmp/probe_{os.urandom(4).hex()}.py"
    sbx.files.write(path, textwrap.dedent(code))
    r = run(sbx, f"python3 {path}", user=user, timeout=timeout)
    assert r.exit_code == 0, f"probe failed ({r.exit_code}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sbx(sbx_daemon):
    s = Sandbox.create(timeout=600)
    yield s
    Sandbox.kill(s.sandbox_id)


@pytest.fixture(scope="module")
def neighbour(sbx_daemon):
    s = Sandbox.create(timeout=600)
    yield s
    Sandbox.kill(s.sandbox_id)


def host_bytes(path):
    """Bytes allocated on the host by every file below path, the sandbox's disk image aside."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if f == "disk.img":
                continue
            try:
                total += os.lstat(p).st_blocks * 512
            except OSError:
                pass
    return total


# -- 1. the agent's log ---------------------------------------------------------------------


def test_agent_log_flood_grows_no_host_file(sandbox, state_dir, sbx_daemon):
    """A plain user floods the agent with requests carrying 1.9 KB paths (each logged). The
    agent writes no host file: the sandbox's host dir does not grow, and its log is a ring of
    fixed size in the agent's memory."""
    sdir = Path(state_dir) / "sandboxes" / sandbox.sandbox_id
    before = host_bytes(sdir)
    out = run_py(sandbox, """
        import http.client, json, time
        path = "/" + "a" * 1900
        n = sent = 0
        end = time.monotonic() + 5
        c = http.client.HTTPConnection("127.0.0.1", 49983)
        while time.monotonic() < end:
            c.request("GET", path)
            r = c.getresponse(); r.read()
            n += 1; sent += len(path)
        print(json.dumps({"requests": n, "path_bytes": sent}))
    """, user="user")
    after = host_bytes(sdir)
    names = sorted(p.name for p in sdir.iterdir())
    print(f"flood: {out['requests']} requests, {out['path_bytes']} bytes of paths; "
          f"host files of the sandbox {before} -> {after} bytes; entries {names}")
    assert out["requests"] > 100
    assert "agent.log" not in names
    assert after - before < 64 * 1024, f"host files grew by {after - before} bytes"
    # The log is readable by the sandbox's owner and holds at most the ring's size, newest last.
    status, _, body = sbx_daemon.request(
        "GET", "/sbx/log", headers={"E2b-Sandbox-Id": sandbox.sandbox_id,
                                    "X-Access-Token": sandbox._envd_access_token or ""})
    assert status == 200, body[:200]
    print(f"agent log: {len(body)} bytes kept")
    assert 0 < len(body) <= AGENT_LOG_BYTES
    # The flood shows there: its requests (404s), or the rate limiter's count of them.
    assert b"a" * 1900 in body or b"event=client_errors" in body


def test_agent_log_needs_the_access_token(sandbox, sbx_daemon):
    status, _, _ = sbx_daemon.request("GET", "/sbx/log",
                                      headers={"E2b-Sandbox-Id": sandbox.sandbox_id})
    assert status == 401


def host_mount_devices():
    """st_dev of every filesystem mounted in the host's mount namespace."""
    devs = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        major, minor = line.split()[2].split(":")
        devs.add(os.makedev(int(major), int(minor)))
    return devs


def test_agent_holds_no_writable_host_file(sbx):
    """The agent held its log, a host file, open for writing, and sandbox root took that fd
    with pidfd_getfd (1.5 GiB written, 2 GiB fallocated). Seen from the host, no fd of the
    agent is a file or directory of a host filesystem open for writing, nor a directory of one
    (a handle for openat)."""
    run(sbx, "ls /", user="root")  # the agent has served a request
    agent, host = host_agent(sbx), host_mount_devices()
    seen, bad = [], []
    for fd in (agent / "fd").iterdir():
        try:
            target, st = os.readlink(fd), os.stat(fd)
            flags = next(ln for ln in (agent / "fdinfo" / fd.name).read_text().splitlines()
                         if ln.startswith("flags:"))
        except (OSError, StopIteration):
            continue  # closed meanwhile
        writable = int(flags.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
        on_host = st.st_dev in host and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))
        where = f" (host, {'rw' if writable else 'ro'})" if on_host else ""
        seen.append(f"{fd.name}:{target}{where}")
        if on_host and (writable or stat.S_ISDIR(st.st_mode)):
            bad.append(target)
    print(f"agent fds: {', '.join(sorted(seen, key=lambda x: int(x.split(':')[0])))}")
    assert len(seen) >= 3
    assert not bad, f"the agent holds host files or directories: {bad}"


# -- 2. host-wide kernel tables --------------------------------------------------------------


@contextlib.contextmanager
def holding(sbx, code, timeout=60):
    """Runs code (Python) as sandbox root in the background: it takes a kernel resource and
    calls done(figures), then keeps what it took while the with-block runs. Yields figures."""
    name = f"/tmp/hold_{os.urandom(4).hex()}"
    prelude = textwrap.dedent(f"""
        import json, os, time
        def done(figures):
            with open("{name}.tmp", "w") as f:
                f.write(json.dumps(figures))
            os.rename("{name}.tmp", "{name}.json")
            time.sleep(600)
    """)
    sbx.files.write(f"{name}.py", prelude + textwrap.dedent(code))
    h = sbx.commands.run(f"python3 {name}.py", user="root", background=True)
    try:
        assert wait_for(lambda: sbx.files.exists(f"{name}.json"), timeout=timeout)
        yield json.loads(sbx.files.read(f"{name}.json"))
    finally:
        h.kill()
        with contextlib.suppress(CommandExitException):
            h.wait()  # gone, and what it took with it, before the next test takes its share


def test_inotify_instances_are_per_sandbox(sbx, neighbour):
    """Sandbox root uses up every inotify instance it can get. They are charged to the
    sandbox's own host uid (the owner of its user namespace), not to host root: host root
    and another sandbox can still create instances."""
    with holding(sbx, """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        n = 0
        while n < 100000:
            if libc.inotify_init() < 0:
                break
            n += 1
        done({"instances": n, "errno": ctypes.get_errno()})
    """) as got:
        fd = LIBC.inotify_init()
        host_errno = ctypes.get_errno()
        if fd >= 0:
            os.close(fd)
        other = run_py(neighbour, """
            import ctypes, json
            libc = ctypes.CDLL(None, use_errno=True)
            print(json.dumps({"fd": libc.inotify_init(), "errno": ctypes.get_errno()}))
        """, user="root")
    print(f"sandbox took {got['instances']} inotify instances (then errno {got['errno']}); "
          f"host root inotify_init -> {fd}; neighbour -> {other['fd']}")
    assert got["errno"] == errno.EMFILE and got["instances"] < 100000
    assert fd >= 0, f"host root got errno {host_errno}"
    assert other["fd"] >= 0, f"the neighbour got errno {other['errno']}"


def test_inotify_watches_are_per_sandbox(sbx, neighbour):
    """Sandbox root adds inotify watches until the kernel refuses (fs.inotify.max_user_watches,
    host-wide per user). They are charged to the sandbox's own host uid: host root and another
    sandbox can still add watches."""
    limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    # At most 128 instances (the test above), so each watches 1/100 of the limit.
    with holding(sbx, f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        os.makedirs("/tmp/w", exist_ok=True)
        names = []
        for i in range({limit} // 100 + 1):
            names.append(f"/tmp/w/{{i}}".encode())
            open(names[-1], "w").close()
        n = e = 0
        while not e and n < {2 * limit}:
            fd = libc.inotify_init()
            for name in names:
                if fd < 0 or libc.inotify_add_watch(fd, name, 2) < 0:  # IN_MODIFY
                    e = ctypes.get_errno()
                    break
                n += 1
        done({{"watches": n, "errno": e}})
    """) as got:
        fd = LIBC.inotify_init()
        wd = LIBC.inotify_add_watch(fd, b"/", 2)
        host_errno = ctypes.get_errno()
        os.close(fd)
        other = run_py(neighbour, """
            import ctypes, json
            libc = ctypes.CDLL(None, use_errno=True)
            wd = libc.inotify_add_watch(libc.inotify_init(), b"/tmp", 2)
            print(json.dumps({"wd": wd, "errno": ctypes.get_errno()}))
        """, user="root")
    print(f"sandbox added {got['watches']} inotify watches (then errno {got['errno']}; "
          f"max_user_watches {limit}); host root add_watch -> {wd}; neighbour -> {other['wd']}")
    assert got["errno"] == errno.ENOSPC and got["watches"] <= limit
    assert wd >= 0, f"host root got errno {host_errno}"
    assert other["wd"] >= 0, f"the neighbour got errno {other['errno']}"


GROW_PIPES = """
    import fcntl, os
    def grow(most):
        pipes, err = [], 0
        while len(pipes) < most and not err:
            r, w = os.pipe()
            pipes.append((r, w))
            try:
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
            except OSError as e:
                err = e.errno
        return {"pipes": len(pipes) - (err != 0), "errno": err}, pipes
"""


def test_pipe_buffers_are_per_sandbox(sbx, neighbour):
    """Sandbox root grows pipes to 1 MiB until the kernel's per-user allowance of pipe buffers
    (fs.pipe-user-pages-soft) refuses. The allowance is per host uid and sandbox uids are the
    sandbox's own, so another sandbox and host users keep theirs while it holds its pipes."""
    soft_mib = int(Path("/proc/sys/fs/pipe-user-pages-soft").read_text()) * 4096 >> 20
    with holding(sbx, textwrap.dedent(GROW_PIPES) + textwrap.dedent("""
        got, pipes = grow(4096)
        done(got)
    """)) as got:
        other = run_py(neighbour, textwrap.dedent(GROW_PIPES) + textwrap.dedent("""
            import json
            print(json.dumps(grow(1)[0]))
        """), user="root")
        # A host user (nobody) has an allowance of its own, whatever the sandbox took.
        host = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
             "-I", "-c",
             "import fcntl, os; print(fcntl.fcntl(os.pipe()[1], fcntl.F_SETPIPE_SZ, 1 << 20))"],
            capture_output=True, text=True, cwd="/")
    print(f"sandbox grew {got['pipes']} pipes to 1 MiB, then errno {got['errno']} "
          f"(pipe-user-pages-soft: {soft_mib} MiB per user); neighbour {other}; host user "
          f"nobody: {host.stdout.strip() or host.stderr.strip()}")
    assert got["errno"] == errno.EPERM and got["pipes"] <= soft_mib
    assert other == {"pipes": 1, "errno": 0}
    assert host.stdout.strip() == str(1 << 20), host.stderr  # F_SETPIPE_SZ's new size


def test_ptys_are_capped_per_sandbox(sbx, neighbour):
    """Every devpts instance but the host's draws on one host-wide pool; each sandbox's
    instance has a cap of its own, so one sandbox cannot take the pool."""
    got = run_py(sbx, """
        import json, os
        fds = []
        err = 0
        while len(fds) < 100000:
            try:
                fds.append(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
            except OSError as e:
                err = e.errno
                break
        print(json.dumps({"ptys": len(fds), "errno": err}))
    """, user="root")
    other = run_py(neighbour, """
        import json, os
        fd = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
        print(json.dumps({"ok": fd >= 0}))
    """)
    m, s = pty.openpty()
    os.close(m)
    os.close(s)
    print(f"sandbox opened {got['ptys']} ptys (then errno {got['errno']}); neighbour and host "
          f"still can; kernel.pty.max={Path('/proc/sys/kernel/pty/max').read_text().strip()}")
    assert got["ptys"] == 128 and got["errno"] == errno.ENOSPC
    assert other["ok"]


def test_open_files_cannot_fill_the_host_table(sbx):
    """Open files are charged to the sandbox's memory; the host-wide table (fs.file-max) is
    raised at start so that it is never the smaller bound. A sandbox holding hundreds of
    thousands of files leaves the host able to open files."""
    file_max = int(Path("/proc/sys/fs/file-max").read_text())
    assert file_max >= 2**62, f"fs.file-max is {file_max}: a sandbox could fill it"
    got = run_py(sbx, """
        import json, os, resource, time
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        kids = []
        for i in range(4):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                n = 0
                try:
                    while n < min(hard - 16, 25000):
                        os.open("/dev/null", os.O_RDONLY)
                        n += 1
                except OSError:
                    pass
                os.write(w, str(n).encode()); os.close(w)
                time.sleep(20)
                os._exit(0)
            os.close(w)
            kids.append(r)
        held = sum(int(os.read(r, 32) or b"0") for r in kids)
        print(json.dumps({"held": held, "nofile": hard}))
    """, user="root", timeout=180)
    nr = int(Path("/proc/sys/fs/file-nr").read_text().split()[0])
    with open("/proc/self/status") as f:  # the host can still open files
        assert f.read()
    print(f"sandbox held {got['held']} open files (NOFILE {got['nofile']} per process); "
          f"host file-nr {nr}, file-max {file_max}")
    assert got["held"] > 60000
    assert nr < file_max


# -- 3. the agent, PID 1 ---------------------------------------------------------------------


PTRACE_PROBE = """
    import ctypes, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    res = {}
    def err_of(f):
        try:
            f(); return 0
        except OSError as e:
            return e.errno
    libc.ptrace(ctypes.c_long(0x4206), ctypes.c_long(1), None, None)  # PTRACE_SEIZE
    res["ptrace_seize"] = ctypes.get_errno()
    res["mem"] = err_of(lambda: open("/proc/1/mem", "rb").read(1))
    res["environ"] = err_of(lambda: open("/proc/1/environ", "rb").read())
    res["exe"] = err_of(lambda: os.readlink("/proc/1/exe"))
    res["fd_link"] = err_of(lambda: os.readlink("/proc/1/fd/3"))
    res["fd_open"] = err_of(lambda: os.close(os.open("/proc/1/fd/5", os.O_RDONLY)))
    pidfd = libc.syscall(ctypes.c_long(434), ctypes.c_long(1), ctypes.c_long(0))
    ret = libc.syscall(ctypes.c_long(438), ctypes.c_long(pidfd), ctypes.c_long(3), ctypes.c_long(0))
    res["pidfd_getfd"] = ctypes.get_errno() if ret < 0 else 0
    print(json.dumps(res))
"""


def assert_agent_out_of_reach(got):
    assert got["ptrace_seize"] == errno.EPERM
    for k in ("mem", "environ", "exe", "fd_link", "fd_open"):
        assert got[k] in (errno.EACCES, errno.EPERM), f"/proc/1/{k}: errno {got[k]}"
    assert got["pidfd_getfd"] == errno.EPERM


@pytest.mark.parametrize("user", ["root", "user"])
def test_agent_cannot_be_traced_or_read(sbx, user):
    got = run_py(sbx, PTRACE_PROBE, user=user)
    print(f"as {user}: {got}")
    assert_agent_out_of_reach(got)


@pytest.mark.code_interpreter
def test_agent_out_of_reach_of_kernels(sbx_daemon):
    """Kernels run as sandbox root, as E2B's do: from a cell, PID 1 is as far out of reach as
    from a command run as root."""
    from e2b_code_interpreter import Sandbox as CodeSandbox

    s = CodeSandbox.create(timeout=120)
    try:
        ex = s.run_code(textwrap.dedent(PTRACE_PROBE))
        assert ex.error is None, ex.error
        assert s.run_code("import os; os.getuid()").text == "0"
        got = json.loads("".join(ex.logs.stdout).strip().splitlines()[-1])
        print(f"from a Python kernel: {got}")
        assert_agent_out_of_reach(got)
    finally:
        s.kill()


def host_agent(sbx):
    """/proc/<pid> on the host of sbx's agent: the PID 1 whose uid map is the sandbox's."""
    base = uid_base_of(sbx)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            nspid = next(ln for ln in (d / "status").read_text().splitlines()
                         if ln.startswith("NSpid:"))
            if nspid.split()[-1] == "1" and len(nspid.split()) > 2 and \
                    int((d / "uid_map").read_text().split()[1]) == base:
                return d
        except (OSError, StopIteration):
            pass
    raise AssertionError(f"no agent with host uid base {base}")


def test_agent_binary_is_no_host_path(sbx):
    """The agent runs from the agent runtime, through its loader, mounted read-only in the
    sandbox: its exe names that mount, no host file (and cannot be reopened for writing,
    CVE-2019-5736: the mount is read-only and its files belong to host root)."""
    r = run(sbx, "cat /proc/1/maps", user="root")
    assert r.exit_code != 0
    agent = host_agent(sbx)
    assert b"/run/sbx-agent/agent" in (agent / "cmdline").read_bytes().split(b"\0")
    exe = os.readlink(agent / "exe")
    print(f"agent exe on the host: {exe}")
    assert exe == "/run/sbx-agent/ld.so"
    r = run(sbx, "echo x > /run/sbx-agent/ld.so; touch /run/sbx-agent/new", user="root")
    assert r.exit_code != 0 and "Read-only file system" in r.stderr, r.stderr


def test_uploads_through_hostile_symlinks_never_write_the_agent(sandbox):
    """Uploads and MakeDir write as sandbox root on the user's behalf, as envd does. A user's
    symlinks into the agent's own /proc entries (which the kernel opens to the agent whatever
    their owner, though sandbox root cannot write them) or through /proc magic links are
    refused for every user, and the agent is unchanged; a symlink to a root directory is
    followed as on E2B, and only what the upload makes there is handed to the user."""
    home = "/home/user"
    r = run(sandbox, "ln -s /proc/1/oom_score_adj ~/oom && ln -s /proc/self ~/me && "
                     "ln -s /proc/1/task ~/tasks && ln -s /proc/1/fd ~/fds && "
                     "ln -s /proc/1/root ~/root1 && ln -s /etc ~/etc && cat /proc/1/oom_score_adj")
    assert r.exit_code == 0, r.stderr
    before = r.stdout
    tid = run(sandbox, "ls /proc/1/task | head -n1").stdout.strip() or "1"
    for user in ("user", "root"):
        for path in [f"{home}/oom", f"{home}/me/oom_score_adj", f"{home}/me/mem",
                     f"{home}/tasks/{tid}/oom_score_adj", f"{home}/fds/0", f"{home}/root1/tmp/x",
                     f"{home}/me/sbx-new/x"]:
            with pytest.raises(SandboxException) as ei:
                sandbox.files.write(path, "-1000", user=user)
            print(f"{user} {path}: {ei.value}")
        with pytest.raises(SandboxException):
            sandbox.files.make_dir(f"{home}/me/sbx-dir", user=user)
    after = run(sandbox, f"cat /proc/1/oom_score_adj; ls -l {home}/oom {home}/me | cut -c1")
    assert after.stdout == before + "l\nl\n", after.stdout
    assert not sandbox.files.exists("/tmp/x")
    # A link to a root directory: written through, as on E2B; /etc stays root's.
    sandbox.files.write("etc/sbx-probe/x.txt", "x")
    st = run(sandbox, "stat -c '%n %U %a' /etc /etc/sbx-probe /etc/sbx-probe/x.txt").stdout
    assert st.split("\n")[:3] == ["/etc root 755", "/etc/sbx-probe user 755",
                                   "/etc/sbx-probe/x.txt user 644"], st


def _status_of(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_root_operations_through_hostile_symlinks_never_reach_the_agent(sandbox):
    """Downloads, Stat, ListDir, Move, Remove and watchers act as sandbox root for every user,
    as envd's do. A user's paths and symlinks into the agent's own /proc entries (which the
    kernel opens to the agent whatever their owner: its memory, environment, fds, threads,
    oom_score_adj) or through /proc magic links reach nothing of it, for any user: nothing
    there is read, listed, watched, removed or moved, a Stat shows no fd's target, deep
    listings and recursive watches do not enter /proc, and the agent is unchanged."""
    home = "/home/user"
    r = run(sandbox, "ln -s /proc/1/oom_score_adj ~/oom && ln -s /proc/self ~/me && "
                     "ln -s /proc/1/task ~/tasks && ln -s /proc/1/fd ~/fds && "
                     "ln -s /proc/1/mem ~/mem && ln -s /proc/1/root ~/root1 && "
                     "ln -s /proc/1/exe ~/exe && mkdir ~/walk-user ~/walk-root && "
                     "ln -s /proc/1 ~/walk-user/p1 && ln -s /proc/1 ~/walk-root/p1 && "
                     "echo mine > ~/f.txt && cat /proc/1/oom_score_adj")
    assert r.exit_code == 0, r.stderr
    before = r.stdout
    tid = run(sandbox, "ls /proc/1/task | grep -vx 1 | head -n1").stdout.strip() or "1"
    reads = [f"{home}/oom", f"{home}/me/environ", f"{home}/me/mem", f"{home}/mem",
             f"{home}/tasks/{tid}/environ", f"/proc/{tid}/mem", "/proc/thread-self/environ",
             f"{home}/fds/3", f"{home}/me/fd/3", f"{home}/exe", f"{home}/root1/etc/passwd"]
    dirs = [f"{home}/fds", f"{home}/me", f"{home}/me/fd", f"{home}/tasks", f"/proc/{tid}/fd",
            "/proc/1/map_files", f"{home}/root1", f"{home}/walk-user/p1"]
    for user in ("user", "root"):
        for p in reads:
            with pytest.raises(SandboxException):
                sandbox.files.read(p, user=user)
            st, body = _status_of(sandbox.download_url(p, user=user))
            assert st in (400, 403), (p, st, body[:100])
        for p in dirs:
            with pytest.raises(SandboxException):
                sandbox.files.list(p, user=user)
            with pytest.raises(SandboxException):
                sandbox.files.watch_dir(p, user=user)
        with pytest.raises(SandboxException):
            sandbox.files.get_info(f"{home}/root1/etc", user=user)
        # An fd's entry is the /proc link itself: nothing of what it leads to.
        fd3 = sandbox.files.get_info(f"{home}/fds/3", user=user)
        assert fd3.symlink_target is None and fd3.size == 64, fd3
        for p in [f"{home}/me/oom_score_adj", f"{home}/fds/3", f"{home}/root1/home/user/f.txt"]:
            with pytest.raises(SandboxException):
                sandbox.files.rename(p, f"{home}/moved-{user}", user=user)
        for p in [f"{home}/me/oom_score_adj", f"{home}/fds/3", f"{home}/root1/home/user/f.txt",
                  f"{home}/tasks/{tid}"]:
            with pytest.raises(SandboxException):
                sandbox.files.rename(f"{home}/f.txt", p, user=user)
            with pytest.raises(SandboxException):
                sandbox.files.remove(p, user=user)
        # Deep listings and recursive watches list /proc, never what is in it.
        walk = f"{home}/walk-{user}"
        assert [e.name for e in sandbox.files.list(walk, depth=5, user=user)] == ["p1"]
        assert [e.path for e in sandbox.files.list("/", depth=4, user=user)
                if e.path.startswith("/proc/")] == []
        h = sandbox.files.watch_dir(walk, recursive=True, user=user)
        r = run(sandbox, f"mkdir -p ~/stage-{user} && ln -s /proc/1 ~/stage-{user}/p && "
                         f"mv ~/stage-{user} {walk}/new")
        assert r.exit_code == 0, r.stderr
        assert [(e.type.value, e.name) for e in h.get_new_events()] == [
            ("create", "new"), ("create", "new/p")]
        h.stop()
    after = run(sandbox, f"cat /proc/1/oom_score_adj ~/f.txt; ls -l {home}/oom {home}/me {home}/fds"
                         " | cut -c1; ls ~/moved-* 2>&1")
    assert after.stdout.startswith(before + "mine\nl\nl\nl\n"), after.stdout
    assert "No such file" in after.stdout
    assert sandbox.files.read("f.txt") == "mine\n"  # the agent serves as before


def test_dotdot_and_symlink_climbs_stay_in_the_sandbox(sandbox, tmp_path):
    """".." in a path and symlinks that climb past "/" (relative or absolute) end at the
    sandbox's root, for every operation and user: a host file is neither read, listed,
    stat'ed nor watched through them, and an upload or a move through them lands inside."""
    secret = os.urandom(16).hex()
    host_dir = tmp_path / f"host-{secret[:8]}"
    host_dir.mkdir()
    (host_dir / "marker").write_text(secret)
    up = "../" * 24
    r = run(sandbox, f"ln -s {up} ~/up && echo mine > ~/f.txt")
    assert r.exit_code == 0, r.stderr
    home, climbs = "/home/user", [f"/{up}", f"/home/user/up/", f"/home/user/up/{up}", "~/../../"]
    for user in ("user", "root"):
        root_names = [e.name for e in sandbox.files.list("/", user=user)]
        for c in climbs:
            p = f"{c}{host_dir}/marker"
            assert not sandbox.files.exists(p, user=user), p
            with pytest.raises(SandboxException):
                sandbox.files.read(p, user=user)
            st, body = _status_of(sandbox.download_url(p, user=user))
            assert st == 404 and secret.encode() not in body, (p, st)
            with pytest.raises(SandboxException):
                sandbox.files.list(f"{c}{host_dir}", user=user)
            with pytest.raises(SandboxException):
                sandbox.files.watch_dir(f"{c}{host_dir}", user=user)
            assert [e.name for e in sandbox.files.list(c, user=user)] == root_names, c
        name = f"climb-{user}-{secret[:8]}"
        sandbox.files.write(f"/{up}tmp/{name}.up", "in", user=user)
        sandbox.files.rename(f"/{up}{home}/f.txt", f"{home}/up{home}/{name}.mv", user=user)
        assert sandbox.files.read(f"/tmp/{name}.up") == "in"
        assert sandbox.files.read(f"{home}/{name}.mv") == "mine\n"
        sandbox.files.rename(f"{home}/{name}.mv", f"{home}/f.txt", user=user)
        assert not any(Path("/tmp").glob(f"climb-*-{secret[:8]}*"))
    assert (host_dir / "marker").read_text() == secret


def test_symlink_swaps_never_lead_root_operations_into_the_agent(sandbox):
    """A directory the user swaps for a symlink to /proc/1 and back while root operations walk
    it (as races between a check and a use would exploit): whichever the agent meets, it never
    lists, reads, watches or removes anything of the agent's, and the agent is unchanged."""
    before = run(sandbox, "mkdir ~/race && cat /proc/1/oom_score_adj").stdout
    swap = ("cd ~ && for i in $(seq 20000); do rm -rf race/x; "
            "ln -s /proc/1 race/x; rm -f race/x; mkdir race/x; echo plain > race/x/plain; done")
    h = sandbox.commands.run(swap, background=True)
    agent_names = {"environ", "mem", "oom_score_adj", "status", "fd", "task", "maps", "cmdline"}
    kinds = {}
    for user in ("user", "root"):
        w = sandbox.files.watch_dir("/home/user/race", recursive=True, user=user)
        # 100 rounds, or what fits in 15 s on a slow machine (the VM lane emulates its CPU).
        stop = time.monotonic() + 15
        for _ in range(100):
            if time.monotonic() > stop:
                break
            entries = sandbox.files.list("/home/user/race", depth=3, user=user)
            seen = {e.name for e in entries}
            assert seen <= {"x", "plain"}, seen
            for e in entries:
                kinds[e.path, e.type] = kinds.get((e.path, e.type), 0) + 1
            for p in ("race/x/environ", "race/x/status", "race/x/fd/0"):
                try:
                    got = sandbox.files.read(p, user=user)
                except SandboxException:
                    continue
                raise AssertionError(f"{p} read as {got[:80]!r}")
            try:
                sandbox.files.remove("race/x/oom_score_adj", user=user)
            except SandboxException:
                pass
        names = {e.name.split("/")[-1] for e in w.get_new_events()}
        w.stop()
        assert not names & agent_names, names
    h.kill()
    print("listed during the swaps:", kinds)
    assert run(sandbox, "cat /proc/1/oom_score_adj").stdout == before


# -- 5. kernel attack surface ----------------------------------------------------------------


def test_root_cannot_create_namespaces_or_configure_the_network(sbx):
    r = run(sbx, "unshare -n true; echo net=$?; unshare -m true; echo mnt=$?; "
                 "unshare -p -f true; echo pid=$?; unshare -i true; echo ipc=$?; "
                 "ip link add sbxprobe type dummy; echo link=$?; "
                 "grep CapBnd /proc/self/status", user="root")
    print(r.stdout, r.stderr)
    for ns in ("net", "mnt", "pid", "ipc", "link"):
        assert f"{ns}=0" not in r.stdout, r.stdout
    bnd = int(r.stdout.split("CapBnd:")[1].split()[0], 16)
    for cap, name in ((12, "NET_ADMIN"), (19, "SYS_PTRACE"), (21, "SYS_ADMIN")):
        assert not bnd & (1 << cap), f"sandbox root has CAP_{name}"


# -- 10. tmpfs sizes and OOM reports ---------------------------------------------------------


@pytest.mark.parametrize("path,user", [("/tmp", "user"), ("/dev/shm", "user"), ("/run", "root")])
def test_full_tmpfs_is_enospc_not_an_oom_kill(sandbox, path, user):
    r = run(sandbox, f"dd if=/dev/zero of={path}/fill bs=1M count=4096; echo rc=$?; "
                     f"df -k --output=size {path} | tail -n 1; rm -f {path}/fill; echo alive",
            user=user, timeout=180)
    print(r.stdout, r.stderr[-300:])
    assert "No space left on device" in r.stderr
    assert "rc=1" in r.stdout and "alive" in r.stdout
    size_kib = int(r.stdout.split("rc=1")[1].split()[0])
    assert size_kib * 1024 < 512 << 20, f"{path} is {size_kib} KiB: not below the memory limit"


def test_oom_kill_is_reported_to_the_command(sandbox):
    with pytest.raises(CommandExitException) as ei:
        sandbox.commands.run("python3 -c \"b = b'x' * (2 << 30)\"", timeout=120)
    print(f"exit_code={ei.value.exit_code} error={ei.value.error!r}")
    assert ei.value.error == "killed: out of memory (limit 512 MiB)"
    # A command the user kills is not called an OOM kill.
    with pytest.raises(CommandExitException) as ei:
        sandbox.commands.run("kill -9 $$", timeout=30)
    assert "out of memory" not in (ei.value.error or "")


# -- 9. host uid ranges ----------------------------------------------------------------------


def uid_base_of(sbx):
    r = run(sbx, "awk '{print $2}' /proc/self/uid_map")
    return int(r.stdout.split()[0])


def test_two_daemons_never_share_host_uids(sbx, tmp_path):
    """A second daemon on the same host takes another block of host uids."""
    state = Path(tempfile.mkdtemp(prefix="sbx-state-", dir="/var/tmp"))
    state.chmod(0o711)
    other = Daemon(_binary(), state, tmp_path / "second.log")
    other.start()
    try:
        s2 = Sandbox.create(timeout=60, api_key=other.api_key, api_url=other.url,
                            sandbox_url=other.url)
        try:
            a, b = uid_base_of(sbx), uid_base_of(s2)
            print(f"host uid base: first daemon {a}, second daemon {b}")
            # Blocks of 2^28 uids from 2^30 (src/sandbox/uids.c); each sandbox's range sits
            # at its own slot within its daemon's block.
            assert (a - (1 << 30)) >> 28 != (b - (1 << 30)) >> 28, \
                "the two daemons' uid blocks overlap"
        finally:
            Sandbox.kill(s2.sandbox_id, api_key=other.api_key, api_url=other.url)
    finally:
        other.kill_all_sandboxes()
        assert other.stop() == 0
        subprocess.run(["rm", "-rf", str(state)], check=False)


def runs_in(lo, hi):
    """Whether a host process has a real uid in [lo, hi)."""
    for d in Path("/proc").iterdir():
        try:
            uid = int(next(ln for ln in (d / "status").read_text().splitlines()
                           if ln.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, NotADirectoryError):
            continue
        if lo <= uid < hi:
            return True
    return False


@pytest.mark.timeout(300)
def test_a_sandbox_paused_to_its_disk_keeps_its_host_uids(sbx_daemon, tmp_path):
    """A sandbox paused to its disk has no process, but the files on its disk belong to its
    host uids. Its daemon, restarted while another daemon held its block, took another block:
    the paused sandbox could never boot again (403 "write /etc/hosts: Permission denied") and
    the other daemon's sandboxes had the uids of its files. Now the daemon refuses to start,
    naming the uids, and starts on them once they are free."""
    with own_daemon(sbx_daemon, tmp_path) as d:
        kw = {"api_key": d.api_key, "api_url": d.url, "sandbox_url": d.url}
        s = Sandbox.create(timeout=300, **kw)
        base = uid_base_of(s)
        assert run(s, "echo mine > ~/f").exit_code == 0
        status, _, body = d.request("POST", f"/sandboxes/{s.sandbox_id}/pause",
                                    body={"memory": False})
        assert status == 204, body
        assert d.stop() == 0
        assert wait_for(lambda: not runs_in(base, base + 65536), timeout=30)  # no process left
        block = (base - (1 << 30)) >> 28
        block_base = (1 << 30) + (block << 28)
        # Another daemon holds the block, as sbx holds one: an flock on its lock file.
        with open(f"/run/sbx/uid-block-{block}.lock", "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            p = subprocess.Popen(d.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
            try:
                out, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.terminate()
                out, _ = p.communicate()
                pytest.fail(f"the daemon started on other host uids: {out[-500:]}")
        print(f"restart while block {block} is held: exit {p.returncode}: {out.strip()[-300:]}")
        assert p.returncode != 0
        assert f"host uids {block_base}-" in out and "taken by another sbx daemon" in out
        d.start()
        s = Sandbox.connect(s.sandbox_id, **kw)
        r = run(s, "cat ~/f && echo more >> ~/f && stat -c %U ~/f")
        print(f"resumed on host uid base {uid_base_of(s)}: {r.stdout!r} {r.stderr[-200:]}")
        assert uid_base_of(s) == base and r.stdout == "mine\nuser\n"
        Sandbox.kill(s.sandbox_id, **kw)
