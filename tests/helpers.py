"""Plain helpers shared by the end-to-end suites (tests/integration/py, tests/security).

pytest puts tests/ on sys.path when it loads tests/conftest.py, so test modules and the
conftest import these as `from helpers import ...`. Fixtures live in tests/conftest.py.
"""

import http.client
import json
import os
import random
import subprocess
import time
from pathlib import Path


def wait_for(predicate, timeout=10.0, interval=0.1):
    """Polls predicate until it returns something true or timeout seconds pass; returns its
    last value, so `assert wait_for(...)` fails only if it never became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    return predicate()


def http_request(host, port, method, target, body=None, headers=None, timeout=30):
    """One HTTP/1.1 request on a fresh connection; returns (status, headers, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def agent_host_pid(sid):
    """The host pid of the sandbox's agent: the process in its cgroup that is PID 1 of its
    PID namespace. None if there is none (not started, or gone)."""
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/cgroup") as f:
                if f"/sbx/{sid}" not in f.read():
                    continue
            with open(f"/proc/{p}/status") as f:
                if any(ln.startswith("NSpid:") and ln.split()[-1] == "1" for ln in f):
                    return int(p)
        except OSError:
            pass
    return None


# -- hosts of a test's own, for network tests ------------------------------------------------

# A TCP service for a test host: answers every connection with a short HTTP response naming
# itself and records the peer of each connection (and each UDP datagram on the same port) in
# a log, so that a test can tell what reached it.
TEST_SERVICE = r"""
import socket, sys, threading
addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def note(line):
    with open(log, "a") as f:
        f.write(line + "\n")
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64)
    while True:
        c, peer = s.accept()
        note(f"tcp {peer[0]}")
        try:
            c.recv(65536)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\ntest host " + addr.encode() + b"\n")
        except OSError:
            pass
        c.close()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, port))
    while True:
        data, peer = u.recvfrom(65536)
        note(f"udp {peer[0]} {data[:64].decode(errors='replace')}")
threading.Thread(target=udp, daemon=True).start()
open(log, "a").close()
tcp()
"""


class TestHost:
    """A host of the test's own, outside every sandbox: a network namespace joined to this
    machine by a veth pair, holding `addr` (and `extra` addresses, each routed to it by the
    test). Traffic sent to it never leaves the machine: the route to each of its addresses is
    checked before the host is handed out. serve() starts TEST_SERVICE on a port of it.

        with TestHost("a", "198.51.100.2", "198.51.100.1") as h:
            h.serve(8080)
            ... h.seen() lists what reached it ...
    """

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, tag, addr, gateway, prefix=24, extra=()):
        self.ns = f"sbxt-{tag}"
        self.dev = f"sbxt{tag}h"
        self.addr, self.gateway, self.prefix, self.extra = addr, gateway, prefix, list(extra)
        self.log = f"/tmp/{self.ns}.log"
        self.procs = []

    def _ip(self, *args, ns=False):
        cmd = (["ip", "netns", "exec", self.ns] if ns else []) + ["ip", *args]
        subprocess.run(cmd, check=True, capture_output=True)

    def __enter__(self):
        self.close()  # what an interrupted run may have left
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self):
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self._ip("link", "add", self.dev, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        self._ip("addr", "add", f"{self.gateway}/{self.prefix}", "dev", self.dev)
        self._ip("link", "set", self.dev, "up")
        self._ip("link", "set", "lo", "up", ns=True)
        self._ip("addr", "add", f"{self.addr}/{self.prefix}", "dev", "eth0", ns=True)
        self._ip("link", "set", "eth0", "up", ns=True)
        self._ip("route", "add", "default", "via", self.gateway, ns=True)
        for a in self.extra:
            self._ip("addr", "add", f"{a}/32", "dev", "eth0", ns=True)
            self._ip("route", "add", f"{a}/32", "dev", self.dev)
        for a in [self.addr] + self.extra:
            out = subprocess.run(["ip", "-j", "route", "get", a], check=True,
                                 capture_output=True, text=True).stdout
            dev = json.loads(out)[0].get("dev")
            assert dev == self.dev, f"{a} routes via {dev}, not the test host: not sending there"
        if os.path.exists(self.log):
            os.unlink(self.log)

    def serve(self, port, addr=None):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, "/usr/bin/python3", "-c",
                              TEST_SERVICE, addr or "0.0.0.0", str(port), self.log],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        assert wait_for(lambda: os.path.exists(self.log), 10), "test service did not start"
        time.sleep(0.2)

    def seen(self):
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []
        subprocess.run(["ip", "link", "del", self.dev], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def __exit__(self, *exc):
        self.close()


class LocalResolver:
    """dnsmasq on a loopback address of its own, answering the names of `names` (a name ->
    address; a name covers its subdomains) and nothing else: it asks no other resolver. conf
    is a resolv.conf naming it, for a process in a private mount namespace (with_resolver);
    queries() lists the names it was asked.

        with LocalResolver({"sbx.test": "127.0.0.1"}, tmp_path) as r: ...
    """

    def __init__(self, names, directory):
        octets = [random.randrange(1, 250) for _ in range(3)]
        self.addr = f"127.{octets[0]}.{octets[1]}.{octets[2] + 2}"
        self.names = names
        self.conf = Path(directory) / "resolv.conf"
        self.log = Path(directory) / "dnsmasq.log"
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--listen-address={self.addr}",
             "--bind-interfaces", "--port=53", "--no-resolv", "--no-hosts", "--log-queries",
             f"--log-facility={self.log}"] +
            [f"--address=/{name}/{addr}" for name, addr in self.names.items()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        assert self.proc.poll() is None, self.proc.stdout.read()
        self.conf.write_text(f"nameserver {self.addr}\n")
        return self

    def queries(self):
        text = self.log.read_text() if self.log.exists() else ""
        return [line.split("]: query[A] ", 1)[1].split()[0] for line in text.splitlines()
                if "]: query[A] " in line]

    def with_resolver(self, argv):
        """argv run in a private mount namespace whose /etc/resolv.conf names this resolver."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(self.conf), *argv]

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
