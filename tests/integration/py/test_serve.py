"""`sbx serve` itself: first-start API key, the export lines, configuration errors, SIGTERM."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from helpers import TestHost, wait_for

EXPORT = re.compile(r"^export (E2B_API_URL|E2B_SANDBOX_URL|E2B_API_KEY)=(\S+)$", re.M)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def state_dir():
    d = tempfile.mkdtemp(prefix="sbx-serve-", dir="/var/tmp")
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _serve(binary, *args, env=None):
    return subprocess.Popen([binary, "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _read_exports(proc, timeout=30):
    found = {}
    deadline = time.monotonic() + timeout
    while len(found) < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = EXPORT.match(line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


def _get(url, key):
    req = urllib.request.Request(url + "/v2/sandboxes", headers={"X-API-KEY": key})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


def test_first_start_creates_a_key_and_prints_exports(sbx_daemon, state_dir):
    port = _free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--state-dir", state_dir]
    p = _serve(sbx_daemon.binary, *args)
    try:
        env = _read_exports(p)
        assert env["E2B_API_URL"] == env["E2B_SANDBOX_URL"] == f"http://127.0.0.1:{port}"
        key = env["E2B_API_KEY"]
        assert re.fullmatch(r"e2b_[0-9a-f]{40}", key)
        # Kept in the state dir, readable by root only.
        key_file = os.path.join(state_dir, "api_key")
        assert open(key_file).read().strip() == key
        assert os.stat(key_file).st_mode & 0o077 == 0
        assert _get(env["E2B_API_URL"], key) == 200
        assert _get(env["E2B_API_URL"], "e2b_" + "0" * 40) == 401
    finally:
        assert _stop(p) == 0
    # A restart keeps the key.
    p = _serve(sbx_daemon.binary, *args)
    try:
        assert _read_exports(p)["E2B_API_KEY"] == key
    finally:
        assert _stop(p) == 0
    # SIGTERM logged a clean stop.
    assert "event=stopped" in p.stderr.read()


def test_environment_variables_configure_the_daemon(sbx_daemon, state_dir):
    port = _free_port()
    env = dict(os.environ, SBX_LISTEN=f"127.0.0.1:{port}", SBX_STATE_DIR=state_dir,
               SBX_API_KEY="e2b_" + "ab" * 20, SBX_MAX_CONNECTIONS="7")
    p = _serve(sbx_daemon.binary, env=env)
    try:
        exports = _read_exports(p)
        assert exports["E2B_API_KEY"] == "e2b_" + "ab" * 20
        assert _get(f"http://127.0.0.1:{port}", "e2b_" + "ab" * 20) == 200
    finally:
        assert _stop(p) == 0
    assert " max_connections=7 " in p.stderr.read()


def test_open_file_limit_raised_to_the_hard_limit(sbx_daemon, state_dir):
    # Started with the soft limit of a default service (1024), the daemon would run out of
    # descriptors long before the machine runs out of room for sandboxes.
    port = _free_port()
    p = subprocess.Popen(
        ["prlimit", "--nofile=256:8192", sbx_daemon.binary, "serve",
         "--listen", f"127.0.0.1:{port}", "--state-dir", state_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert len(_read_exports(p)) == 3
        limits = open(f"/proc/{p.pid}/limits").read()
        assert re.search(r"^Max open files\s+8192\s+8192\s", limits, re.M), limits
    finally:
        assert _stop(p) == 0
    # Connections get half of what is left once the daemon's own 64 descriptors and a pidfd
    # per sandbox (at most a quarter of the limit) are set aside: they must not take the
    # descriptors that creates and proxied requests need (issue 14).
    start = [line for line in p.stderr.read().splitlines() if "event=start" in line]
    print(start)
    assert start and f" max_connections={(8192 - 64 - 8192 // 4) // 2} " in start[0]


@pytest.mark.parametrize("args,message", [
    (["--listen", "nonsense"], "invalid value"),
    (["--memory-mb", "-5"], "invalid value"),
    (["--no-such-flag"], "usage"),
    (["extra"], "unexpected argument"),
])
def test_bad_configuration_is_a_clear_error(sbx_daemon, args, message):
    r = subprocess.run([sbx_daemon.binary, "serve", *args], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 2
    assert message in r.stderr


def test_unreachable_state_dir_is_refused(sbx_daemon):
    parent = tempfile.mkdtemp(prefix="sbx-private-", dir="/var/tmp")  # mode 0700
    try:
        r = subprocess.run([sbx_daemon.binary, "serve", "--listen", "127.0.0.1:0",
                            "--state-dir", os.path.join(parent, "state")],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 1
        assert "not reachable by sandbox users" in r.stderr
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_more_cpus_than_sandboxes_can_run_on_is_refused(sbx_daemon):
    """A quota above the CPUs there are would be reported as each sandbox's cpuCount and never
    be its own (nproc inside shows the CPUs there are)."""
    have = len(os.sched_getaffinity(0))
    state = tempfile.mkdtemp(prefix="sbx-cpus-", dir="/var/tmp")
    try:
        r = subprocess.run([sbx_daemon.binary, "serve", "--listen", "127.0.0.1:0",
                            "--state-dir", state, "--cpus", str(have + 1)],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 1
        assert (f"--cpus {have + 1}: sandboxes can run on {have} CPU{'' if have == 1 else 's'}"
                f" here, so at most --cpus {have}") in r.stderr
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_a_sandbox_network_the_host_uses_is_refused(sbx_daemon, state_dir):
    """--network-cidr over a range the host already routes elsewhere (here to a test host's
    namespace; nothing is sent to it) is refused at start, naming the route."""
    with TestHost("cidr", "10.199.77.2", "10.199.77.1") as h:
        r = subprocess.run([sbx_daemon.binary, "serve", "--listen", "127.0.0.1:0",
                            "--state-dir", state_dir, "--network-cidr", "10.199.64.0/19"],
                           capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    assert ("the sandbox network 10.199.64.0/19 collides with the host's route to "
            f"10.199.77.0/24 dev {h.dev}: choose a free private range with --network-cidr"
            ) in r.stderr, r.stderr


def test_turning_on_ip_forwarding_is_logged(sbx_daemon, state_dir):
    """Sandboxes reach the internet through the host, which must forward: a daemon that turns
    net.ipv4.ip_forward on says so. It runs in a network namespace of the test's own where
    forwarding is off; the host's own setting is not touched."""
    p = subprocess.Popen(
        ["unshare", "--net", "sh", "-c",
         'ip link set lo up && echo 0 > /proc/sys/net/ipv4/ip_forward && exec "$@"', "sh",
         sbx_daemon.binary, "serve", "--listen", "127.0.0.1:0", "--state-dir", state_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert len(_read_exports(p)) == 3
    finally:
        assert _stop(p) == 0
    assert 'event=network host_setting="net.ipv4.ip_forward=0->1"' in p.stderr.read()


def test_help(sbx_daemon):
    r = subprocess.run([sbx_daemon.binary, "serve", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--state-dir" in r.stdout and "SBX_MEMORY_MB" in r.stdout
    assert "--max-connections N" in r.stdout and "SBX_MAX_CONNECTIONS" in r.stdout


def test_version(sbx_daemon):
    for argv in (["--version"], ["serve", "--version"]):
        r = subprocess.run([sbx_daemon.binary, *argv], capture_output=True, text=True)
        assert r.returncode == 0
        assert re.fullmatch(r"sbx \d+\.\d+\.\d+( \(\S+\))?\n", r.stdout), r.stdout


def _conf(tmp_path, text):
    path = tmp_path / "sbx.conf"
    path.write_text(text)
    return str(path)


def test_config_file_configures_the_daemon_and_flags_win(sbx_daemon, state_dir, tmp_path):
    port, other = _free_port(), _free_port()
    conf = _conf(tmp_path, f"""# sbx.conf of a test
listen = 127.0.0.1:{other}
state-dir = "{state_dir}"
api-key = e2b_{"cd" * 20}
   memory-mb=300
max-connections = 9
""")
    # The environment beats the file, a flag beats both.
    env = dict(os.environ, SBX_LISTEN=f"127.0.0.1:{other + 1}", SBX_MEMORY_MB="200")
    p = _serve(sbx_daemon.binary, "--config", conf, "--listen", f"127.0.0.1:{port}", env=env)
    try:
        assert _read_exports(p)["E2B_API_KEY"] == "e2b_" + "cd" * 20
        assert _get(f"http://127.0.0.1:{port}", "e2b_" + "cd" * 20) == 200
    finally:
        assert _stop(p) == 0
    start = [line for line in p.stderr.read().splitlines() if "event=start" in line][0]
    assert " memory_mb=200 " in start and " max_connections=9 " in start


def test_check_config_prints_the_effective_configuration(sbx_daemon, tmp_path):
    conf = _conf(tmp_path, "listen = 0.0.0.0:3999\napi-key = e2b_secret\ncpus = 2\n")
    env = dict(os.environ, SBX_CPUS="3")
    r = subprocess.run([sbx_daemon.binary, "serve", "--config", conf, "--check-config",
                        "--disk-mb", "64"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = {line.split(" = ")[0]: line for line in r.stdout.splitlines() if " = " in line}
    assert re.match(rf"listen = 0\.0\.0\.0:3999 +# {re.escape(conf)}:1$", lines["listen"])
    assert re.match(r"cpus = 3 +# SBX_CPUS$", lines["cpus"])
    assert re.match(r"disk-mb = 64 +# --disk-mb$", lines["disk-mb"])
    assert re.match(r"memory-mb = 512 +# default$", lines["memory-mb"])
    # The key is a secret: --check-config says it is set, never what it is.
    assert "e2b_secret" not in r.stdout and lines["api-key"].startswith("api-key = (set)")


@pytest.mark.parametrize("text,message", [
    ("listen = 127.0.0.1:3000\nmemory_mb = 5\n",
     ":2: unknown key 'memory_mb' (did you mean 'memory-mb'?)"),
    ("frobnicate = 1\n", ":1: unknown key 'frobnicate'"),
    ("# comment\n\ncpus = many\n", ":3: invalid value 'many' for key 'cpus'"),
    ("listen 127.0.0.1:3000\n", ":1: expected 'key = value'"),
    ("cpus = 1\ncpus = 2\n", ":2: key 'cpus' given twice"),
    ("user = " + "x" * 5000 + "\n", ":1: line longer than"),
])
def test_malformed_config_file_is_refused_with_line_and_key(sbx_daemon, tmp_path, text, message):
    conf = _conf(tmp_path, text)
    for extra in ([], ["--check-config"]):
        r = subprocess.run([sbx_daemon.binary, "serve", "--config", conf, *extra],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 2
        assert f"{conf}{message}" in r.stderr, r.stderr


def test_named_config_file_must_exist(sbx_daemon, tmp_path):
    env = dict(os.environ, SBX_CONFIG=str(tmp_path / "missing.conf"))
    r = subprocess.run([sbx_daemon.binary, "serve", "--check-config"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2 and "missing.conf: No such file" in r.stderr


def test_log_format_json(sbx_daemon, state_dir):
    port = _free_port()
    p = _serve(sbx_daemon.binary, "--listen", f"127.0.0.1:{port}", "--state-dir", state_dir,
               "--log-format", "json")
    try:
        key = _read_exports(p)["E2B_API_KEY"]
        assert _get(f"http://127.0.0.1:{port}", "e2b_wrong") == 401
        assert _get(f"http://127.0.0.1:{port}", key) == 200
    finally:
        assert _stop(p) == 0
    lines = [json.loads(line) for line in p.stderr.read().splitlines()]
    start = next(x for x in lines if x["event"] == "start")
    assert start["level"] == "info" and start["max_connections"] > 0  # numbers stay numbers
    refused = next(x for x in lines if x["event"] == "request" and x["status"] == 401)
    assert refused["error"].startswith("Invalid API key") and refused["remote"] == "127.0.0.1"


def test_a_sandboxs_client_error_is_logged_with_its_reason(sbx_daemon, tmp_path):
    """A 4xx the daemon passes on from a sandbox's agent is logged with the agent's message,
    like the daemon's own 4xx."""
    from e2b import Sandbox
    from conftest import own_daemon
    with own_daemon(sbx_daemon, tmp_path) as d:
        sbx = Sandbox.create(timeout=60, api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        with pytest.raises(Exception):
            sbx.files.read("/nonexistent-for-the-log")
        # Logged once the proxied answer is over, which may be just after the client has it.
        line = wait_for(lambda: next(
            (x for x in d.log_path.read_text().splitlines() if " status=404 " in x), None))
        assert line and " route=/files " in line and "/nonexistent-for-the-log" in line, line


def test_a_browsers_error_page_is_logged_with_its_reason(sbx_daemon):
    sid = "nosuchsandbox" + os.urandom(4).hex()
    status, headers, _ = sbx_daemon.request(
        "GET", "/", auth=False, headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "8000",
                                         "User-Agent": "Mozilla/5.0 Firefox/120.0"})
    assert status == 502 and headers["Content-Type"].startswith("text/html")
    line = next(x for x in sbx_daemon.log_path.read_text().splitlines() if f"sandbox={sid} " in x)
    assert 'error="The sandbox was not found"' in line, line
