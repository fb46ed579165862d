"""Shared pieces of the benchmarks: a private daemon, timing, and the report format.

Every benchmark prints, for each measured operation, p50 and p99 in milliseconds, and the
ratio of its p50 to the p50 of a named baseline measured in the same run on the same
machine. Benchmarks are never asserted in tests: these machines are shared and noisy.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentile(samples, p):
    s = sorted(samples)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def timed(fn, n, warmup=2):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def report(name, samples_ms, baseline_name=None, baseline_ms=None):
    p50, p99 = percentile(samples_ms, 50), percentile(samples_ms, 99)
    line = f"{name:<44} n={len(samples_ms):<4} p50={p50:9.3f} ms  p99={p99:9.3f} ms"
    if baseline_ms:
        b50 = percentile(baseline_ms, 50)
        line += f"  ratio_p50_vs_{baseline_name}={p50 / b50:.2f}x"
    print(line, flush=True)
    return p50, p99


class Daemon:
    """A private `sbx serve` on a free port with a throwaway state dir."""

    def __init__(self, *args, binary=None):
        self.binary = binary or os.environ.get("SBX_BIN") or str(REPO / "build" / "sbx")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = "e2b_" + secrets.token_hex(20)
        self.state = tempfile.mkdtemp(prefix="sbx-bench-", dir="/var/tmp")
        os.chmod(self.state, 0o711)
        self.log = open(os.path.join(self.state, "daemon.log"), "wb")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--state-dir",
             self.state, "--api-key", self.key, "--log-level", "warn", *args],
            stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(self.url + "/v2/sandboxes",
                                             headers={"X-API-KEY": self.key})
                urllib.request.urlopen(req, timeout=2).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("sbx serve did not become ready")
        os.environ.update(E2B_API_URL=self.url, E2B_SANDBOX_URL=self.url, E2B_API_KEY=self.key)

    def get(self, path):
        req = urllib.request.Request(self.url + path, headers={"X-API-KEY": self.key})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def wait_pools_warm(self, timeout=120):
        """Until every pool has its target of warm sandboxes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p["warm"] == p["target"] for p in self.get("/pools")):
                return
            time.sleep(0.02)
        raise RuntimeError(f"pools not warm: {self.get('/pools')}")

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def median(xs):
    return statistics.median(xs)


def server_side_creates(d, n, template="base"):
    """n creates and kills through the REST API: the daemon's own create times in ms, from
    its X-Sbx-Spawn-Us response header (store + namespaces + cgroups + overlay + agent)."""
    out = []
    for _ in range(n):
        req = urllib.request.Request(
            d.url + "/sandboxes", method="POST",
            data=json.dumps({"templateID": template, "timeout": 120}).encode(),
            headers={"X-API-KEY": d.key, "Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            out.append(int(r.headers["X-Sbx-Spawn-Us"]) / 1000.0)
            sid = json.loads(r.read())["sandboxID"]
        kill = urllib.request.Request(d.url + f"/sandboxes/{sid}", method="DELETE",
                                      headers={"X-API-KEY": d.key})
        urllib.request.urlopen(kill).read()
    return out
