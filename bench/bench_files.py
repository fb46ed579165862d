"""File transfers: a 1 KiB write + read round trip through the official Python SDK
(sbx.files.write / sbx.files.read), and the throughput of a 256 MiB upload and download,
through the SDK and through a raw HTTP client on a keep-alive connection (sendfile(2) for
the body, recv_into a 1 MiB buffer; no SDK overhead), with the peak RSS of the daemon and of
the agent during each transfer.

Baselines, measured in the same run: the 1 KiB round trip against writing and reading the
same 1 KiB file on the host from Python; the 256 MiB transfers against `cat` of the same host
file into /dev/null (download) and into /var/tmp (upload: the same copy into the page cache
of the same disk).

    .venv/bin/python bench/bench_files.py [N_SMALL] [N_BIG]   (root; default 200 and 5)

Memory: before each transfer the peak RSS of both processes is reset (clear_refs 5) and
their idle VmRSS read; a thread samples VmRSS every 5 ms during it; the reported growth is
max(VmHWM, sampled peak) - idle. The agent is the sandbox's PID 1, found on the host as the
process of the sandbox's cgroup whose innermost pid (NSpid) is 1.

Targets (issue): small round trip p50 <= 5 ms; upload and download >= 300 MiB/s; peak RSS
growth < 16 MiB.
"""

import glob
import http.client
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from urllib.parse import urlencode, urlparse

from common import Daemon, percentile, report, timed

from e2b import Sandbox

BIG = 256 * 1024 * 1024
MIB = 1024 * 1024
REMOTE_BIG = "/home/user/bench-big.bin"


# ---- memory ----

def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def find_agent(sandbox_id):
    """Host pid of the sandbox's PID 1: a process in a cgroup named after the sandbox whose
    innermost namespace pid is 1."""
    pids = set()
    for procs in glob.glob(f"/sys/fs/cgroup/*/sbx/{sandbox_id}*/cgroup.procs") + \
            glob.glob(f"/sys/fs/cgroup/sbx/{sandbox_id}*/cgroup.procs"):
        with open(procs) as f:
            pids.update(int(x) for x in f.read().split())
    if not pids:  # other layouts: look through /proc/*/cgroup
        for cg in glob.glob("/proc/[0-9]*/cgroup"):
            try:
                with open(cg) as f:
                    if sandbox_id in f.read():
                        pids.add(int(cg.split("/")[2]))
            except OSError:
                pass
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:") and line.split()[-1] == "1":
                        return pid
        except OSError:
            pass
    raise RuntimeError(f"agent of sandbox {sandbox_id} not found")


class RssWatch:
    """Peak RSS growth of some processes over one measured operation."""

    def __init__(self, pids):
        self.pids = pids
        self.growth = {name: [] for name in pids}
        self.idle = {}

    def __enter__(self):
        for name, pid in self.pids.items():
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.idle[name] = status_kib(pid, "VmRSS")
        self.peak = dict(self.idle)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stop.wait(0.005):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], status_kib(pid, "VmRSS"))

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        for name, pid in self.pids.items():
            peak = max(self.peak[name], status_kib(pid, "VmHWM"))
            self.growth[name].append((self.idle[name], peak - self.idle[name]))

    def line(self, what):
        parts = []
        for name, g in self.growth.items():
            idle = max(i for i, _ in g)
            worst = max(d for _, d in g)
            parts.append(f"{name} idle={idle / 1024:.1f} MiB peak_growth={worst / 1024:.2f} MiB")
        print(f"  rss during {what}: " + "; ".join(parts), flush=True)


# ---- raw HTTP on a keep-alive connection ----

class Raw:
    def __init__(self, url, sbx):
        u = urlparse(url)
        self.addr = (u.hostname, u.port)
        self.host = f"{u.hostname}:{u.port}"
        self.headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983",
                        "X-Access-Token": sbx._envd_access_token or ""}
        self.sock = None
        self.buf = bytearray(MIB)

    def connect(self):
        self.sock = socket.create_connection(self.addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=0)
        self.pending = b""

    def head(self, method, path, extra):
        h = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        h += [f"{k}: {v}" for k, v in {**self.headers, **extra}.items()]
        return ("\r\n".join(h) + "\r\n\r\n").encode()

    def recv_head(self):
        data = self.pending
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        return status, hdrs, rest

    def recv_body(self, hdrs, rest, keep):
        """Reads a Content-Length body; returns it if keep, else its length."""
        n = int(hdrs["content-length"])
        got = len(rest)
        out = [rest] if keep else None
        view = memoryview(self.buf)
        while got < n:
            k = self.sock.recv_into(view[:min(len(view), n - got)])
            if k == 0:
                raise RuntimeError("short body")
            if keep:
                out.append(bytes(view[:k]))
            got += k
        self.pending = b""
        return b"".join(out) if keep else got

    def request(self, method, path, extra=None, body=b"", body_file=None, body_len=0,
                tail=b"", keep=True):
        if self.sock is None:
            self.connect()
        extra = dict(extra or {})
        if body_file is not None or body or method == "POST":
            extra["Content-Length"] = str(len(body) + body_len + len(tail))
        self.sock.sendall(self.head(method, path, extra) + body)
        if body_file is not None:
            with open(body_file, "rb") as f:
                self.sock.sendfile(f, 0, body_len)
        if tail:
            self.sock.sendall(tail)
        status, hdrs, rest = self.recv_head()
        payload = self.recv_body(hdrs, rest, keep)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {payload!r}")
        if hdrs.get("connection", "").lower() == "close":
            self.sock.close()
            self.sock = None
        return payload

    def upload_octet(self, remote, local, size):
        q = urlencode({"path": remote})
        return self.request("POST", f"/files?{q}", {"Content-Type": "application/octet-stream"},
                            body_file=local, body_len=size)

    def upload_multipart(self, remote, local, size):
        b = uuid.uuid4().hex
        pre = (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n"
               f"Content-Type: application/octet-stream\r\n\r\n").encode()
        post = f"\r\n--{b}--\r\n".encode()
        q = urlencode({"path": remote})
        return self.request("POST", f"/files?{q}",
                            {"Content-Type": f"multipart/form-data; boundary={b}"},
                            body=pre, body_file=local, body_len=size, tail=post)

    def download(self, remote):
        q = urlencode({"path": remote})
        return self.request("GET", f"/files?{q}", keep=False)


# ---- reporting ----

def report_rate(name, samples_ms, baseline_name, baseline_ms, size=BIG):
    report(name, samples_ms, baseline_name, baseline_ms)
    p50 = percentile(samples_ms, 50)
    worst = percentile(samples_ms, 99)
    b50 = percentile(baseline_ms, 50)
    print(f"  throughput: p50 {size / MIB / (p50 / 1000):8.1f} MiB/s  (worst "
          f"{size / MIB / (worst / 1000):.1f} MiB/s; {baseline_name} "
          f"{size / MIB / (b50 / 1000):.1f} MiB/s)", flush=True)


def main():
    n_small = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    n_big = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = tempfile.mkdtemp(prefix="sbx-bench-files-", dir="/var/tmp")
    small_local = os.path.join(work, "small.bin")
    big = os.path.join(work, "big.bin")
    copy = os.path.join(work, "copy.bin")
    payload = os.urandom(1024)
    with open(big, "wb") as f:
        for _ in range(BIG // MIB):
            f.write(os.urandom(MIB))

    def host_small():
        with open(small_local, "wb") as f:
            f.write(payload)
        with open(small_local, "rb") as f:
            assert f.read() == payload

    base_small = timed(host_small, n_small, warmup=5)
    subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    base_read = timed(lambda: subprocess.run(["cat", big], stdout=subprocess.DEVNULL,
                                             check=True), n_big, warmup=1)

    def cat_copy():
        with open(copy, "wb") as out:
            subprocess.run(["cat", big], stdout=out, check=True)

    base_write = timed(cat_copy, n_big, warmup=1)
    os.unlink(copy)

    with Daemon() as d:
        sbx = Sandbox.create(timeout=600)
        try:
            pids = {"daemon": d.proc.pid, "agent": find_agent(sbx.sandbox_id)}

            def sdk_small():
                sbx.files.write("/home/user/bench-small.bin", payload)
                assert bytes(sbx.files.read("/home/user/bench-small.bin", format="bytes")) \
                    == payload

            small = timed(sdk_small, n_small, warmup=5)
            raw = Raw(d.url, sbx)

            def raw_small():
                raw.request("POST", "/files?path=/home/user/bench-small.bin",
                            {"Content-Type": "application/octet-stream"}, body=payload)
                assert raw.request("GET", "/files?path=/home/user/bench-small.bin") == payload

            small_raw = timed(raw_small, n_small, warmup=5)

            results = {}

            def measure(name, fn):
                watch = RssWatch(pids)

                def one():
                    with watch:
                        fn()

                results[name] = (timed(one, n_big, warmup=1), watch)

            with open(big, "rb") as f:
                big_bytes = f.read()
            measure("raw upload (octet-stream, sendfile)",
                    lambda: raw.upload_octet(REMOTE_BIG, big, BIG))
            measure("raw upload (multipart, sendfile)",
                    lambda: raw.upload_multipart(REMOTE_BIG, big, BIG))
            measure("raw download (identity)",
                    lambda: raw.download(REMOTE_BIG) == BIG or sys.exit("short download"))

            def sdk_write_stream():
                with open(big, "rb") as f:
                    sbx.files.write(REMOTE_BIG, f)

            measure("SDK files.write(file object: octet-stream)", sdk_write_stream)
            measure("SDK files.write(bytes: multipart)",
                    lambda: sbx.files.write(REMOTE_BIG, big_bytes))

            def sdk_read_stream():
                n = 0
                for chunk in sbx.files.read(REMOTE_BIG, format="stream"):
                    n += len(chunk)
                assert n == BIG

            measure("SDK files.read(format=stream)", sdk_read_stream)
            measure("SDK files.read(format=bytes)",
                    lambda: len(sbx.files.read(REMOTE_BIG, format="bytes")) == BIG
                    or sys.exit("short read"))
            # The content really arrived: the last upload was the SDK's bytes upload.
            assert bytes(sbx.files.read(REMOTE_BIG, format="bytes")) == big_bytes
            del big_bytes
        finally:
            sbx.kill()

    print(f"# files: 1 KiB round trip N={n_small}; 256 MiB transfers N={n_big}")
    report("baseline: host 1 KiB write+read (Python)", base_small)
    report("SDK files.write + files.read, 1 KiB", small, "host_small", base_small)
    report("raw HTTP POST + GET /files, 1 KiB", small_raw, "host_small", base_small)
    report("baseline: cat 256 MiB > /dev/null", base_read)
    report("baseline: cat 256 MiB > /var/tmp/copy", base_write)
    for name, (samples, watch) in results.items():
        up = "upload" in name or "write" in name
        report_rate(name + ", 256 MiB", samples, "cat_copy" if up else "cat_devnull",
                    base_write if up else base_read)
        watch.line(name.split(" (")[0].split("(")[0])
    for f in (big, small_local):
        os.unlink(f)
    os.rmdir(work)


if __name__ == "__main__":
    main()
