"""Shared fixtures of the end-to-end suites (tests/integration/py, tests/security).

The session starts the real daemon once:

    <sbx> serve --listen 127.0.0.1:<free port> --state-dir <tmp> --api-key e2b_<40 hex> \
                --disk-mb 256

with the binary from $SBX_BIN or <repo>/build/sbx, waits until `GET /v2/sandboxes`
answers 200, and points the official SDKs at it through E2B_API_URL, E2B_SANDBOX_URL and
E2B_API_KEY. At the end every sandbox is killed, the daemon gets SIGTERM (SIGKILL after
10 s) and the session fails if it crashed or exited non-zero. Its output goes to
<tmp>/daemon.log; a failing test gets the log's tail in its report.

Environment knobs: SBX_BIN (binary), SBX_SERVE_ARGS (extra `sbx serve` arguments),
SBX_START_TIMEOUT (seconds to wait for readiness, default 60).
"""

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers import http_request

REPO = Path(__file__).resolve().parents[1]
LOG_TAIL_LINES = 80
STOP_GRACE_S = 10


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One `sbx serve` process; restartable on the same port and state dir."""

    def __init__(self, binary, state_dir, log_path):
        self.binary = str(binary)
        self.state_dir = str(state_dir)
        self.log_path = Path(log_path)
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.api_key = "e2b_" + secrets.token_hex(20)
        self.proc = None
        self._log = None
        # Exit statuses we caused on purpose (kill -9) and must not count as crashes.
        self.problems = []

    # -- process control -------------------------------------------------------------

    def argv(self):
        extra = shlex.split(os.environ.get("SBX_SERVE_ARGS", ""))
        return [
            self.binary, "serve",
            "--listen", f"{self.host}:{self.port}",
            "--state-dir", self.state_dir,
            "--api-key", self.api_key,
            # Small sandbox disks, so that tests can fill one (test_disk_full_is_507).
            "--disk-mb", "256",
        ] + extra

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {' '.join(self.argv())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            # Own session: a kill -9 of the daemon reaches only the daemon, and the
            # test runner's terminal signals do not reach it.
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + float(os.environ.get("SBX_START_TIMEOUT", "60"))
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                pytest.fail(f"sbx serve exited with status {rc} while starting\n{self.log_tail()}")
            try:
                status, _, _ = self.request("GET", "/v2/sandboxes", timeout=2)
                if status == 200:
                    return
                last = f"GET /v2/sandboxes -> {status}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        pytest.fail(f"sbx serve not ready after timeout (last: {last})\n{self.log_tail()}")

    def stop(self, sig=signal.SIGTERM, grace=STOP_GRACE_S):
        """Stops the daemon; returns its exit status (negative: killed by a signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.problems.append(f"did not exit within {grace}s of {sig.name}; SIGKILLed")
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self._log.write(f"===== exited with status {rc}\n".encode())
        self._log.close()
        return rc

    def stop_checked(self):
        """SIGTERM; records a problem unless the daemon exits 0."""
        rc = self.stop()
        if rc not in (0, None):
            self.problems.append(f"exited with status {rc} after SIGTERM")
        return rc

    def kill9(self):
        """kill -9 the daemon (sandboxes must survive it); does not restart."""
        assert self.is_alive(), "daemon not running"
        rc = self.stop(signal.SIGKILL, grace=STOP_GRACE_S)
        assert rc == -signal.SIGKILL
        return rc

    def restart(self):
        """SIGTERM (if running, exit status must be 0), then start again: same port and state."""
        if self.is_alive():
            rc = self.stop()
            assert rc == 0, f"daemon exited with status {rc} on SIGTERM\n{self.log_tail()}"
        self.start()

    def is_alive(self):
        return self.proc is not None and self.proc.poll() is None

    def worker_pid(self, name):
        """The pid of one of the daemon's workers, "sbx-frontend" or "sbx-spawner" (children
        of the supervisor, which is the process we started), or None."""
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.proc.pid and (d / "comm").read_text().strip() == name:
                    return int(d.name)
            except (OSError, ValueError, IndexError):
                pass
        return None

    def network(self):
        """The sandbox network the spawner last reported: {"cidr", "gateway", "table"}."""
        import re
        text = self.log_path.read_bytes().decode("utf-8", "replace")
        found = re.findall(r"event=network cidr=(\S+) gateway=(\S+) table=inet/(\S+)", text)
        assert found, "the daemon reported no sandbox network"
        cidr, gateway, table = found[-1]
        return {"cidr": cidr, "gateway": gateway, "table": table}

    def log_tail(self, lines=LOG_TAIL_LINES):
        try:
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return "(no daemon log)"
        tail = text.splitlines()[-lines:]
        return f"--- tail of {self.log_path} ---\n" + "\n".join(tail)

    # -- raw HTTP --------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, auth=True, timeout=30):
        """One HTTP/1.1 request on a fresh connection; returns (status, headers, body bytes)."""
        hdrs = {}
        if auth:
            hdrs["X-API-KEY"] = self.api_key
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        elif isinstance(body, str):
            body = body.encode()
        hdrs.update(headers or {})
        return http_request(self.host, self.port, method, path, body, hdrs, timeout)

    def list_sandbox_ids(self):
        ids, token = [], None
        for _ in range(100):
            path = "/v2/sandboxes?limit=100" + (f"&nextToken={token}" if token else "")
            status, headers, body = self.request("GET", path)
            if status != 200:
                break
            ids += [s["sandboxID"] for s in json.loads(body)]
            token = headers.get("X-Next-Token")
            if not token:
                break
        return ids

    def kill_all_sandboxes(self):
        for sid in self.list_sandbox_ids():
            try:
                self.request("DELETE", f"/sandboxes/{sid}")
            except OSError:
                pass


@contextlib.contextmanager
def own_daemon(like, log_dir, extra_args="", env=None):
    """A daemon of a test's own: the binary of `like` with a fresh state dir, started with
    extra `sbx serve` arguments ({port} stands for its port) and environment variables; at
    the end its sandboxes are killed, it must exit 0 on SIGTERM, and its state dir goes."""
    state_dir = tempfile.mkdtemp(prefix="sbx-state-", dir="/var/tmp")
    os.chmod(state_dir, 0o711)
    d = Daemon(like.binary, state_dir, Path(log_dir) / "daemon.log")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SBX_SERVE_ARGS",
                  os.environ.get("SBX_SERVE_ARGS", "") + " " + extra_args.format(port=d.port))
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        d.start()
    try:
        yield d
    finally:
        # Also after a failed test: a daemon left running holds a host uid block.
        d.kill_all_sandboxes()
        rc = d.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    assert rc == 0, d.log_tail()


def _binary():
    path = Path(os.environ.get("SBX_BIN") or REPO / "build" / "sbx")
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.exit(f"sbx binary not found at {path} (build it, or set SBX_BIN)", returncode=4)
    return path.resolve()


_DAEMON = None


@pytest.fixture(scope="session")
def sbx_daemon(tmp_path_factory):
    """The running daemon (a Daemon: .url .api_key .state_dir .port .restart() .kill9())."""
    global _DAEMON
    base = tmp_path_factory.mktemp("sbx")
    # Sandbox uids must be able to traverse every parent of the state dir, and pytest's
    # base temp dir is 0700: keep the state in /var/tmp.
    state_dir = Path(tempfile.mkdtemp(prefix="sbx-state-", dir="/var/tmp"))
    state_dir.chmod(0o711)
    daemon = Daemon(_binary(), state_dir, base / "daemon.log")
    for var in ("E2B_DEBUG", "E2B_DOMAIN", "E2B_ACCESS_TOKEN"):
        os.environ.pop(var, None)
    # The daemons of the tests take no configuration from the host's /etc/sbx/sbx.conf.
    os.environ.setdefault("SBX_CONFIG", "/dev/null")
    os.environ["E2B_API_URL"] = daemon.url
    os.environ["E2B_SANDBOX_URL"] = daemon.url
    os.environ["E2B_VOLUME_API_URL"] = daemon.url  # the volume content API
    os.environ["E2B_API_KEY"] = daemon.api_key
    daemon.start()
    _DAEMON = daemon
    yield daemon
    _DAEMON = None
    if daemon.is_alive():
        daemon.kill_all_sandboxes()
        daemon.stop_checked()
    else:
        daemon.problems.append(f"not running at the end (status {daemon.proc.returncode})")
    if daemon.problems:
        pytest.fail("sbx daemon: " + "; ".join(daemon.problems) + "\n" + daemon.log_tail())
    # Kept when something went wrong (above), for a look; else gone, as own_daemon's are.
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon_url(sbx_daemon):
    return sbx_daemon.url


@pytest.fixture(scope="session")
def api_key(sbx_daemon):
    return sbx_daemon.api_key


@pytest.fixture(scope="session")
def state_dir(sbx_daemon):
    return sbx_daemon.state_dir


@pytest.fixture
def restart_daemon(sbx_daemon):
    """Call it to SIGTERM the daemon (must exit 0) and start it again on the same port/state."""
    return sbx_daemon.restart


@pytest.fixture
def kill9_daemon(sbx_daemon):
    """Call it to kill -9 the daemon; restart with restart_daemon(). Restarted after the test
    if the test did not."""
    yield sbx_daemon.kill9
    if not sbx_daemon.is_alive():
        sbx_daemon.start()


@pytest.fixture(autouse=True)
def _daemon_still_alive(request):
    """Every test leaves the daemon running: a crash is reported at the test that caused it."""
    yield
    d = _DAEMON
    if d is not None and d.proc is not None and not d.is_alive():
        rc = d.proc.returncode
        d.problems.append(f"died during {request.node.nodeid} (status {rc})")
        d.start()  # keep the rest of the session meaningful
        pytest.fail(f"sbx daemon died during this test (status {rc})\n{d.log_tail()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # In CI every test must run: a skip there hides a missing dependency or privilege.
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which is not allowed: {report.longrepr}"
    if report.failed and _DAEMON is not None:
        report.sections.append(("sbx daemon log", _DAEMON.log_tail()))


# -- sandboxes -----------------------------------------------------------------------------


@pytest.fixture
def sandbox_factory(sbx_daemon):
    """Creates sync Sandboxes (default timeout 120 s; e2b's Sandbox unless sandbox_class names
    another, e.g. the code interpreter's) and kills them after the test."""
    from e2b import Sandbox

    made = []

    def create(sandbox_class=Sandbox, **kwargs):
        kwargs.setdefault("timeout", 120)
        sbx = sandbox_class.create(**kwargs)
        made.append((sandbox_class, sbx.sandbox_id))
        return sbx

    yield create
    for cls, sid in made:
        try:
            cls.kill(sid)
        except Exception:
            pass


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory()


@pytest.fixture
async def async_sandbox_factory(sbx_daemon):
    """The async twin of sandbox_factory (AsyncSandbox by default)."""
    from e2b import AsyncSandbox

    made = []

    async def create(sandbox_class=AsyncSandbox, **kwargs):
        kwargs.setdefault("timeout", 120)
        sbx = await sandbox_class.create(**kwargs)
        made.append((sandbox_class, sbx.sandbox_id))
        return sbx

    yield create
    for cls, sid in made:
        try:
            await cls.kill(sid)
        except Exception:
            pass


@pytest.fixture
async def async_sandbox(async_sandbox_factory):
    return await async_sandbox_factory()


def run_anyway(sbx, cmd, **kwargs):
    """commands.run that returns the CommandResult whatever the exit code."""
    from e2b import CommandExitException

    try:
        return sbx.commands.run(cmd, **kwargs)
    except CommandExitException as e:
        return e


@pytest.fixture(scope="session")
def run_cmd():
    """run_cmd(sbx, cmd, **kw) -> result with .exit_code/.stdout/.stderr, never raising on exit."""
    return run_anyway
