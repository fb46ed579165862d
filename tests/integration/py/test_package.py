"""The Debian package on this machine, with real dpkg: `make deb` builds it; install, upgrade
(a running sandbox survives the daemon's restart on the new binary, as systemd restarts it
with KillMode=process), remove (the sandboxes go) and purge. The unit file is checked with
systemd-analyze verify. Everything installed is purged at the end."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers import http_request, wait_for
from test_serve import _free_port

REPO = Path(__file__).resolve().parents[3]


def _clean_env():
    """An administrator's environment: none of the test session's SBX_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SBX_")}


def _sh(*argv, check=True, **kw):
    kw.setdefault("env", _clean_env())
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
    return r


def _installed():
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "sbx"],
                       capture_output=True, text=True)
    return r.stdout if r.returncode == 0 and "installed" in r.stdout else None


@pytest.fixture
def debs(tmp_path):
    if os.geteuid() != 0 or shutil.which("dpkg-deb") is None:
        pytest.skip("needs root and dpkg")
    if (_installed() or os.path.exists("/usr/bin/sbx")) and not os.environ.get("CI"):
        pytest.skip("sbx is installed on this machine already: not touching it")
    out = {}
    for v in ("0.1.0~test1", "0.1.0~test2"):
        r = _sh(str(REPO / "scripts" / "deb.sh"), str(tmp_path),
                env=dict(_clean_env(), DEB_VERSION=v))
        out[v] = r.stdout.strip()
        assert out[v].endswith(f"sbx_{v}_{_sh('dpkg', '--print-architecture').stdout.strip()}.deb")
    yield out
    # Whatever state the test left it in (installed, or only its config files): gone.
    if subprocess.run(["dpkg-query", "-W", "sbx"], capture_output=True).returncode == 0:
        _sh("dpkg", "--purge", "sbx", check=False)


class Service:
    """`sbx serve` run the way the installed unit runs it (ExecStartPre, then ExecStart)."""

    def __init__(self, log):
        self.log = log
        self.proc = None

    def start(self):
        unit = Path("/lib/systemd/system/sbx.service").read_text()
        pre = shlex.split(re.search(r"^ExecStartPre=(.*)$", unit, re.M).group(1))
        start = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1))
        env = _clean_env()
        _sh(*pre, env=env)
        self.proc = subprocess.Popen(start, env=env, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self):
        # KillMode=process: systemd signals the main process only.
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0


# Two release builds of the package, a sandbox, and a state dir with the built-in layers to
# remove: minutes on a loaded machine, not the suite's 60 seconds.
@pytest.mark.timeout(600)
def test_install_upgrade_remove(debs, tmp_path):
    from e2b import Sandbox
    v1, v2 = debs["0.1.0~test1"], debs["0.1.0~test2"]
    state = tempfile.mkdtemp(prefix="sbx-pkg-", dir="/var/tmp")
    os.chmod(state, 0o711)
    port = _free_port()
    key = "e2b_" + "5a" * 20
    service = Service(open(tmp_path / "service.log", "ab"))
    try:
        _sh("dpkg", "-i", v1)
        assert _installed() == "install ok installed 0.1.0~test1"
        assert re.fullmatch(r"sbx \d+\.\d+\.\d+( \(\S+\))?\n", _sh("sbx", "--version").stdout)
        r = _sh("systemd-analyze", "verify", "/lib/systemd/system/sbx.service", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.stat("/var/lib/sbx").st_mode & 0o777 == 0o711
        assert _sh("getent", "passwd", "sbx").stdout.startswith("sbx:")
        unit = Path("/lib/systemd/system/sbx.service").read_text()
        assert re.search(r"^KillMode=process$", unit, re.M) and re.search(r"^Delegate=yes$", unit, re.M)
        assert Path("/usr/share/bash-completion/completions/sbx").exists()
        # The built-in templates: their definitions ship, and the service that builds their
        # layers runs before sbx.service. Same definitions, same layer keys as the binary's.
        r = _sh("systemd-analyze", "verify", "/lib/systemd/system/sbx-templates.service",
                check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"^After=.*sbx-templates\.service", unit, re.M)
        assert re.search(r"^Wants=.*sbx-templates\.service", unit, re.M)
        for name in ("base", "code-interpreter"):
            assert (_sh("/usr/share/sbx/scripts/templates.sh", "key", name).stdout ==
                    _sh(str(REPO / "scripts" / "templates.sh"), "key", name).stdout)
        # This machine's cache has them (setup built them): the service's run is a check.
        built = _sh("/usr/share/sbx/build-templates")
        assert built.stderr.count(": cached (") == 2, built.stderr
        # Nothing under /usr/lib/sbx, which scripts/setup.sh owns (kernels).
        owned = _sh("dpkg", "-L", "sbx").stdout.split()
        assert not any(p.startswith("/usr/lib/sbx") for p in owned), owned
        conf = Path("/etc/sbx/sbx.conf")
        assert "listen = 127.0.0.1:3000" in conf.read_text()
        # The operator's configuration, which the upgrade must keep.
        conf.write_text(f"listen = 127.0.0.1:{port}\nstate-dir = {state}\napi-key = {key}\n")

        service.start()
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _up(port, key), 60)
        sbx = Sandbox.create(timeout=300, api_key=key, api_url=url, sandbox_url=url)
        sbx.commands.run("echo kept > /home/user/before-upgrade")
        bg = sbx.commands.run("sleep 600", background=True)

        _sh("dpkg", "-i", "--force-confold", v2)
        assert _installed() == "install ok installed 0.1.0~test2"
        assert f"state-dir = {state}" in conf.read_text()
        # What postinst's try-restart does under systemd: the supervisor stops, the new
        # binary starts and finds the sandbox still running.
        service.stop()
        service.start()
        assert wait_for(lambda: _up(port, key), 60)
        again = Sandbox.connect(sbx.sandbox_id, api_key=key, api_url=url, sandbox_url=url)
        assert again.files.read("/home/user/before-upgrade") == "kept\n"
        assert bg.pid in [p.pid for p in again.commands.list()]
        assert again.commands.run("echo after").stdout == "after\n"
        agent = _agent_pid(state, sbx.sandbox_id)
        assert agent and os.path.exists(f"/proc/{agent}")

        # Removal: the daemon stops, and the sandboxes it served end with it.
        service.stop()
        _sh("dpkg", "-r", "sbx")
        assert not os.path.exists("/usr/bin/sbx")
        assert wait_for(lambda: not os.path.exists(f"/proc/{agent}"), 20), "sandbox outlived removal"
        assert conf.exists()  # a conffile stays until purge
        _sh("dpkg", "--purge", "sbx")
        assert not conf.exists() and not os.path.exists("/etc/sbx")
        assert _installed() is None
    finally:
        if service.proc and service.proc.poll() is None:
            service.proc.kill()
        shutil.rmtree(state, ignore_errors=True)


def _up(port, key):
    try:
        return http_request("127.0.0.1", port, "GET", "/v2/sandboxes", None,
                            {"X-API-KEY": key}, 2)[0] == 200
    except OSError:
        return False


def _agent_pid(state, sid):
    """The host pid of the sandbox's agent, from the daemon's database."""
    import sqlite3
    db = sqlite3.connect(f"file:{state}/db/sbx.db?mode=ro", uri=True)
    try:
        row = db.execute("SELECT pid FROM sandboxes WHERE id = ?", (sid,)).fetchone()
        return row[0] if row else None
    finally:
        db.close()
