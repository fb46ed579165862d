"""Isolation probes: code run inside sandboxes through the official SDK tries to reach what it
must not, and each test asserts the specific denial. Fixtures: tests/conftest.py."""

import errno
import json
import os
import platform
import secrets
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from e2b import CommandExitException, Sandbox

# Syscall numbers for the ctypes probes.
SYSCALLS = {
    "x86_64": {"init_module": 175, "finit_module": 313, "delete_module": 176, "bpf": 321,
               "perf_event_open": 298, "kexec_load": 246, "keyctl": 250, "add_key": 248,
               "open_by_handle_at": 304, "mount": 165, "unshare": 272, "syslog": 103},
    "aarch64": {"init_module": 105, "finit_module": 273, "delete_module": 106, "bpf": 280,
                "perf_event_open": 241, "kexec_load": 104, "keyctl": 219, "add_key": 217,
                "open_by_handle_at": 265, "mount": 40, "unshare": 97, "syslog": 116},
}[platform.machine()]

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000


def run(sbx, cmd, user=None, timeout=60):
    try:
        return sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitException as e:
        return e


def syscall_errno(sbx, name, args, user="root"):
    """Runs syscall(name, *args) in the sandbox via python ctypes; returns (ret, errno)."""
    script = (
        "import ctypes, json\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        "buf = ctypes.create_string_buffer(512)\n"
        f"args = {args!r}\n"
        "args = [ctypes.c_void_p(ctypes.addressof(buf)) if a == 'BUF' else (ctypes.c_char_p(a.encode()) "
        "if isinstance(a, str) else ctypes.c_long(a)) for a in args]\n"
        f"ret = libc.syscall(ctypes.c_long({SYSCALLS[name]}), *args)\n"
        "print(json.dumps([ret, ctypes.get_errno()]))\n"
    )
    r = run(sbx, f"python3 -c {shlex.quote(script)}", user=user)
    assert r.exit_code == 0, r.stderr
    ret, err = json.loads(r.stdout)
    return ret, err


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


# -- processes ------------------------------------------------------------------------------


def test_pid1_is_the_agent(sbx):
    r = run(sbx, "tr '\\0' ' ' < /proc/1/cmdline", user="root")
    argv = r.stdout.split()
    assert "agent" in argv, f"pid 1 is {r.stdout!r}"


@pytest.mark.parametrize("user", ["user", "root"])
def test_host_processes_invisible(sbx, sbx_daemon, user):
    r = run(sbx, "ls /proc | grep -E '^[0-9]+$' | sort -n", user=user)
    pids = [int(p) for p in r.stdout.split()]
    assert 1 in pids
    assert len(pids) < 50, f"{len(pids)} processes visible: host processes leak in"
    r = run(sbx, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '", user=user)
    assert "serve" not in r.stdout.split(), "the host daemon is visible"
    assert "pytest" not in r.stdout, "the test runner (a host process) is visible"
    r = run(sbx, "ps -e -o pid=,comm=", user=user)
    assert r.exit_code == 0
    assert "systemd" not in r.stdout and "sshd" not in r.stdout


def test_sandbox_root_is_not_host_root(sbx):
    """A process run as root inside maps to an unprivileged host uid (user namespace)."""
    marker = "sbxroot" + secrets.token_hex(4)
    h = sbx.commands.run(f"exec -a {marker} sleep 120", user="root", background=True, timeout=0)
    try:
        host_pid = None
        for _ in range(50):
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    try:
                        if (d / "cmdline").read_bytes().split(b"\0")[0] == marker.encode():
                            host_pid = d.name
                    except OSError:
                        pass
            if host_pid:
                break
            time.sleep(0.1)
        assert host_pid, "sandbox process not found on the host"
        status = (Path("/proc") / host_pid / "status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert all(int(u) != 0 for u in uids), f"sandbox root runs as host uid {uids}"
        caps = next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1]
        # Capabilities held in a child user namespace are no host capabilities; the
        # bounding set must at least exclude SYS_MODULE (bit 16) and SYS_RAWIO (bit 17).
        bnd = int(next(line for line in status.splitlines()
                       if line.startswith("CapBnd:")).split()[1], 16)
        assert not bnd & (1 << 16) and not bnd & (1 << 17), f"CapBnd {bnd:x}, CapEff {caps}"
    finally:
        h.kill()


def test_user_processes_have_no_capabilities(sbx):
    r = run(sbx, "grep -E '^Cap(Eff|Prm):' /proc/self/status")
    for line in r.stdout.splitlines():
        assert line.split()[1] == "0000000000000000", r.stdout


def test_seccomp_filter_active(sbx):
    r = run(sbx, "grep -E '^Seccomp:' /proc/self/status", user="root")
    assert r.stdout.split()[1] == "2", r.stdout


# -- host files -----------------------------------------------------------------------------


def test_host_paths_absent(sbx, sbx_daemon):
    repo = str(Path(__file__).resolve().parents[2])
    paths = ["/work", repo, "/var/lib/sbx", "/var/cache/sbx", sbx_daemon.state_dir,
             str(sbx_daemon.log_path), "/root/.bash_history",
             "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ed25519_key"]
    for user in ("user", "root"):
        for p in paths:
            r = run(sbx, f"test -e '{p}'", user=user)
            assert r.exit_code != 0, f"{p} visible to {user} inside the sandbox"
    # The root is the template's Debian, whatever the host runs: the host's own /etc and
    # /usr (host keys, the host's kernels) are not there.
    assert run(sbx, "ls /etc/ssh 2>/dev/null | grep -c _key || true").stdout.strip() == "0"


def test_host_marker_file_invisible(sbx, tmp_path):
    secret = secrets.token_hex(16)
    marker = Path("/tmp") / f"sbx-host-marker-{secret[:8]}"
    marker.write_text(secret)
    try:
        r = run(sbx, f"test -e {marker} || echo absent; "
                     f"grep -rs {secret} /tmp /home /root /etc 2>/dev/null | head -1", user="root")
        assert r.stdout.strip() == "absent"
    finally:
        marker.unlink()


def test_host_identity_not_visible(sbx):
    host_name = socket.gethostname()
    r = run(sbx, "hostname")
    assert r.stdout.strip() != host_name
    for f in ("/etc/hostname", "/etc/machine-id"):
        try:
            host = Path(f).read_text().strip()
        except OSError:
            continue
        if not host:
            continue
        r = run(sbx, f"cat {f} 2>/dev/null", user="root")
        assert r.stdout.strip() != host, f"{f} is the host's"
    host_shadow_root = next((line for line in Path("/etc/shadow").read_text().splitlines()
                             if line.startswith("root:")), None)
    r = run(sbx, "cat /etc/shadow 2>/dev/null", user="root")
    if host_shadow_root and len(host_shadow_root.split(":")[1]) > 2:
        assert host_shadow_root not in r.stdout


def test_host_devices_absent(sbx):
    r = run(sbx, "ls /dev", user="root")
    names = set(r.stdout.split())
    for dev in ("mem", "kmem", "port", "kmsg", "sda", "vda", "nvme0", "nvme0n1", "loop0",
                "fuse", "kvm"):
        assert dev not in names, f"/dev/{dev} present"
    assert {"null", "zero", "urandom"} <= names


# -- other sandboxes ---------------------------------------------------------------------------


def test_cannot_read_other_sandbox_files(sbx, neighbour):
    secret = "sbxsecret" + secrets.token_hex(12)
    sbx.commands.run(f"echo {secret} > /tmp/secret.txt; echo {secret} > /home/user/secret.txt")
    sbx.commands.run(f"echo {secret} > /root/secret.txt", user="root")
    r = run(neighbour, "ls /tmp/secret.txt /home/user/secret.txt /root/secret.txt 2>&1; "
                       f"grep -rs {secret} /tmp /home /root /var /opt /srv 2>/dev/null | head -3",
            user="root")
    assert secret not in r.stdout
    assert r.stdout.count("No such file") == 3, r.stdout
    # The owner still sees it.
    assert sbx.commands.run("cat /tmp/secret.txt").stdout.strip() == secret


def test_cannot_signal_or_see_other_sandbox_processes(sbx, neighbour):
    marker = "sbxvictim" + secrets.token_hex(4)
    h = sbx.commands.run(f"exec -a {marker} sleep 300", background=True, timeout=0)
    try:
        # "[s]bx..." so that the grep's own command line does not match itself.
        r = run(neighbour, f"grep -l '[{marker[0]}]{marker[1:]}' /proc/[0-9]*/cmdline 2>/dev/null",
                user="root")
        assert r.stdout.strip() == "", "another sandbox's process is visible"
        # Try to kill A's pid number from B, as root.
        run(neighbour, f"kill -9 {h.pid} 2>/dev/null; pkill -9 -f {marker}", user="root")
        time.sleep(0.3)
        alive = {p.pid for p in sbx.commands.list()}
        assert h.pid in alive, "a process of sandbox A was killed from sandbox B"
        r = run(sbx, f"tr '\\0' ' ' < /proc/{h.pid}/cmdline")
        assert marker in r.stdout
    finally:
        h.kill()


# -- privileged operations as root -------------------------------------------------------------


def test_mount_tmpfs_denied(sbx):
    r = run(sbx, "mount -t tmpfs x /mnt", user="root")
    assert r.exit_code != 0
    assert "permission denied" in r.stderr.lower() or "not permitted" in r.stderr.lower(), \
        r.stderr
    ret, err = syscall_errno(sbx, "mount", ["x", "/mnt", "tmpfs", 0, 0])
    assert (ret, err) == (-1, errno.EPERM)


def test_mount_via_sudo_denied(sbx):
    r = run(sbx, "sudo -n mount -t tmpfs x /mnt")
    assert r.exit_code != 0
    assert "/mnt" not in run(sbx, "cat /proc/mounts").stdout.split()


@pytest.mark.parametrize("user", ["user", "root"])
@pytest.mark.parametrize("cmd", ["unshare -U true", "unshare -r true"])
def test_unshare_denied(sbx, user, cmd):
    r = run(sbx, cmd, user=user)
    assert r.exit_code != 0, f"`{cmd}` as {user} succeeded"
    assert "unshare failed" in r.stderr or "not permitted" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("user", ["user", "root"])
def test_unshare_newuser_syscall_eperm(sbx, user):
    assert syscall_errno(sbx, "unshare", [CLONE_NEWUSER], user=user) == (-1, errno.EPERM)


@pytest.mark.parametrize("name,args", [
    ("init_module", ["BUF", 64, ""]),
    ("finit_module", [0, "", 0]),
    ("delete_module", ["ext4", 0]),
    ("kexec_load", [0, 0, 0, 0]),
    ("bpf", [0, "BUF", 72]),             # BPF_MAP_CREATE
    ("perf_event_open", ["BUF", 0, -1, -1, 0]),
    ("keyctl", [0, -3, 0]),              # KEYCTL_GET_KEYRING_ID, session keyring
    ("add_key", ["user", "sbx", "BUF", 4, -3]),
    ("open_by_handle_at", [3, "BUF", 0]),
    ("syslog", [3, "BUF", 64]),          # SYSLOG_ACTION_READ_ALL (dmesg)
])
def test_dangerous_syscalls_eperm(sbx, name, args):
    assert syscall_errno(sbx, name, args, user="root") == (-1, errno.EPERM)


def test_module_tools_fail(sbx):
    r = run(sbx, "modprobe dummy 2>&1 || insmod /nonexistent.ko 2>&1 || echo failed", user="root")
    assert r.stdout.strip().endswith("failed") or r.exit_code != 0
    r = run(sbx, "dmesg", user="root")
    assert r.exit_code != 0


# -- network ------------------------------------------------------------------------------------


def test_only_loopback_and_the_sandbox_link(sbx):
    """Loopback and the sandbox's own link to the host (tests/security/test_net_probes.py)."""
    r = run(sbx, "tail -n +3 /proc/net/dev | cut -d: -f1")
    assert sorted(x.strip() for x in r.stdout.split()) == ["eth0", "lo"], r.stdout


def _host_ips():
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"],
                         capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_daemon_port_unreachable(sbx, sbx_daemon):
    targets = [("127.0.0.1", sbx_daemon.port)] + [(ip, sbx_daemon.port) for ip in _host_ips()]
    script = (
        "import socket, json, sys\n"
        f"res = {{}}\n"
        f"for host, port in {targets!r}:\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        "    try:\n"
        "        s.connect((host, port)); res[host] = 'connected'\n"
        "    except socket.timeout:\n"
        "        res[host] = 'timeout'\n"
        "    except OSError as e:\n"
        "        res[host] = e.errno\n"
        "print(json.dumps(res))\n"
    )
    for user in ("user", "root"):
        r = run(sbx, f"python3 -c {shlex.quote(script)}", user=user)
        res = json.loads(r.stdout)
        assert res["127.0.0.1"] == errno.ECONNREFUSED, res
        # The host's addresses refuse sandboxes (the sandbox network's rules) or have no
        # route (a daemon started with --network-cidr off).
        for ip in _host_ips():
            assert res[ip] in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH,
                               "timeout"), res


def test_host_abstract_unix_socket_unreachable(sbx):
    name = "\0sbx-probe-" + secrets.token_hex(6)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(name)
    srv.listen(1)
    try:
        script = ("import socket\ns = socket.socket(socket.AF_UNIX)\n"
                  f"try:\n    s.connect({name!r}); print('connected')\n"
                  "except OSError as e:\n    print(e.errno)\n")
        r = run(sbx, f"python3 -c {shlex.quote(script)}", user="root")
        assert r.stdout.strip() == str(errno.ECONNREFUSED)
    finally:
        srv.close()


# -- /proc and /sys -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/proc/kcore", "/proc/keys", "/proc/timer_list",
                                  "/proc/sched_debug"])
def test_sensitive_proc_files_unreadable(sbx, path):
    script = (f"try:\n    d = open({path!r}, 'rb').read(4096)\n    print(len(d))\n"
              "except OSError as e:\n    print('denied', e.errno)\n")
    r = run(sbx, f"python3 -c {shlex.quote(script)}", user="root")
    out = r.stdout.strip()
    assert out == "0" or out.startswith("denied"), f"{path}: read {out} bytes"


def test_proc_sysrq_not_writable(sbx):
    # "h" only prints help to the kernel log: harmless even if the write went through.
    r = run(sbx, "echo h > /proc/sysrq-trigger", user="root")
    assert r.exit_code != 0


def test_proc_sys_read_only(sbx):
    r = run(sbx, "echo 1 > /proc/sys/vm/overcommit_memory", user="root")
    assert r.exit_code != 0


def test_sys_not_writable(sbx):
    script = ("import os\nif not os.path.exists('/sys/kernel'):\n    print('absent')\n"
              "else:\n    print('ro' if os.statvfs('/sys').f_flag & os.ST_RDONLY else 'rw')\n")
    r = run(sbx, f"python3 -c {shlex.quote(script)}", user="root")
    assert r.stdout.strip() in ("absent", "ro"), r.stdout
    r = run(sbx, "echo 1 > /sys/kernel/mm/ksm/run", user="root")
    assert r.exit_code != 0


# -- resource limits -------------------------------------------------------------------------------


def _others_answer(neighbour, sbx_daemon, within=None):
    """Another sandbox and the daemon's control plane still answer (within seconds, if
    given): a sandbox at its limits hurts nobody else."""
    t0 = time.monotonic()
    assert neighbour.commands.run("echo ok").stdout == "ok\n"
    assert sbx_daemon.request("GET", "/v2/sandboxes")[0] == 200
    if within is not None:
        assert time.monotonic() - t0 < within


@pytest.mark.timeout(120)
def test_fork_bomb_hits_pids_limit(sbx_daemon, neighbour):
    victim = Sandbox.create(timeout=120)
    try:
        script = (
            "import os, time\n"
            "pids = []; err = None\n"
            "try:\n"
            "    for _ in range(100000):\n"
            "        pid = os.fork()\n"
            "        if pid == 0:\n"
            "            time.sleep(60); os._exit(0)\n"
            "        pids.append(pid)\n"
            "except OSError as e:\n"
            "    err = e.errno\n"
            "print(len(pids), err, flush=True)\n"
            "for p in pids: os.kill(p, 9)\n"
            "for p in pids: os.waitpid(p, 0)\n"
        )
        r = run(victim, f"python3 -c {shlex.quote(script)}", timeout=90)
        count, err = r.stdout.split()
        assert err == str(errno.EAGAIN), r.stdout + r.stderr
        assert 0 < int(count) <= 4096
        # Everyone else is fine: the daemon, another sandbox, and the victim itself.
        _others_answer(neighbour, sbx_daemon, within=10)
        assert victim.commands.run("echo alive").stdout == "alive\n"
    finally:
        Sandbox.kill(victim.sandbox_id)


@pytest.mark.timeout(120)
def test_shell_fork_bomb_contained(sbx_daemon, neighbour):
    victim = Sandbox.create(timeout=120)
    try:
        try:
            run(victim, "timeout -s KILL 5 bash -c ':(){ :|:& };:'; echo done", timeout=30)
        except Exception:
            pass  # the sandbox may be too busy to report; what matters is everyone else
        _others_answer(neighbour, sbx_daemon, within=15)
        assert Sandbox.kill(victim.sandbox_id) is True
        assert not victim.is_running()
    finally:
        Sandbox.kill(victim.sandbox_id)


@pytest.mark.timeout(120)
def test_memory_hog_is_oom_killed(sbx_daemon, neighbour):
    victim = Sandbox.create(timeout=120)
    try:
        script = ("chunks = []\n"
                  "for i in range(32):\n"
                  "    chunks.append(b'x' * (64 << 20))\n"
                  "print('allocated 2 GiB', flush=True)\n")
        r = run(victim, f"python3 -c {shlex.quote(script)}", timeout=90)
        assert "allocated 2 GiB" not in r.stdout, "2 GiB allocated despite the memory limit"
        assert r.exit_code in (137, -1), (r.exit_code, r.stderr)
        assert victim.commands.run("echo alive").stdout == "alive\n"
        assert victim.is_running()
        _others_answer(neighbour, sbx_daemon)
    finally:
        Sandbox.kill(victim.sandbox_id)


def _loops_backed_by(path):
    """Loop devices whose backing file is below path."""
    found = []
    for f in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if f.read_text().startswith(path + "/"):
                found.append(f.parent.parent.name)
        except OSError:
            pass
    return found


@pytest.mark.timeout(120)
def test_disk_fill_hits_limit(sbx_daemon, neighbour):
    # The session daemon's sandboxes have 256 MiB disks (tests/conftest.py).
    victim = Sandbox.create(timeout=120)
    sandbox_dir = os.path.join(sbx_daemon.state_dir, "sandboxes", victim.sandbox_id)
    try:
        script = ("import errno, os, sys\n"
                  "path, n = sys.argv[1], 0\n"
                  "try:\n"
                  "    with open(path, 'wb') as f:\n"  # on Linux 6.1 a full disk fails the open
                  "        for n in range(1, 1025):\n"
                  "            f.write(b'x' * (1 << 20)); f.flush()\n"
                  "        os.fsync(f.fileno())\n"
                  "except OSError as e:\n"
                  "    print(errno.errorcode[e.errno], n)\n")
        q = shlex.quote(script)
        r = run(victim, f"python3 -c {q} /home/user/fill", timeout=90)
        code, mib = r.stdout.split()
        assert code == "ENOSPC" and 200 <= int(mib) <= 257, r.stdout
        # Sandbox root has no way past it either (no reserved blocks, no host capability).
        r = run(victim, f"python3 -c {q} /usr/local/fill", user="root", timeout=30)
        assert r.stdout.split()[0] == "ENOSPC", r.stdout
        # On the host, the sandbox's disk is one image file holding at most the limit.
        img = os.stat(os.path.join(sandbox_dir, "disk.img"))
        assert (img.st_uid, img.st_mode & 0o777) == (0, 0o600)
        assert img.st_blocks * 512 <= 256 << 20
        assert victim.commands.run("echo alive").stdout == "alive\n"
        assert victim.is_running()
        _others_answer(neighbour, sbx_daemon)
        assert len(_loops_backed_by(sandbox_dir)) == 1
    finally:
        Sandbox.kill(victim.sandbox_id)
    # Killing it detaches its loop device and deletes the image.
    deadline = time.monotonic() + 5
    while _loops_backed_by(sandbox_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _loops_backed_by(sandbox_dir) == []
    assert not os.path.exists(sandbox_dir)
