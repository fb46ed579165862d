"""Sandboxes on the network (spec network.md): internet by default, name resolution and TLS
trust inside sandboxes, allow_internet_access=False, and no leftovers on the host.

Traffic goes only to this machine: test hosts in network namespaces the tests create and
route themselves (helpers.TestHost, which checks the route first), and, to prove internet
access, the Python package index this machine already reaches."""

import json
import re
import shlex
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2b import Sandbox
from conftest import own_daemon
from helpers import LocalResolver, TestHost, wait_for

# A public-looking documentation range (RFC 5737): not among the always-blocked ones.
HOST_A = ("netA", "198.51.100.2", "198.51.100.1", 26)


def run(sbx, cmd, timeout=60, user=None):
    from e2b import CommandExitException
    try:
        return sbx.commands.run(cmd, timeout=timeout, user=user)
    except CommandExitException as e:
        return e


def curl(sbx, url):
    """curl from inside the sandbox: (exit code, body)."""
    r = run(sbx, f"curl -sS --connect-timeout 3 --max-time 5 {url}")
    return r.exit_code, r.stdout + r.stderr


@pytest.fixture(scope="module")
def host_a():
    with TestHost(*HOST_A) as h:
        h.serve(8080)
        yield h


def test_internet_by_default(sandbox):
    """pip, curl and Node reach the package index over HTTPS: name resolution through the
    gateway, NAT, and the host's CAs (this machine reaches it through a TLS-intercepting
    proxy, so HTTPS fails without them)."""
    r = run(sandbox, "python3 -m pip download --no-deps -q -d /tmp/dl six==1.16.0 && ls /tmp/dl",
            timeout=120)
    assert r.exit_code == 0, r.stderr
    assert "six-1.16.0" in r.stdout
    r = run(sandbox, "curl -sS -o /dev/null -w '%{http_code}' --max-time 20 "
                     "https://pypi.org/simple/six/")
    assert (r.exit_code, r.stdout) == (0, "200"), r.stderr
    r = run(sandbox, "node -e \"fetch('https://pypi.org/simple/six/')"
                     ".then(r => console.log(r.status))\"")
    assert r.stdout.strip() == "200", r.stderr


def test_resolver_is_the_gateway(sandbox, sbx_daemon):
    net = sbx_daemon.network()
    r = run(sandbox, "cat /etc/resolv.conf; ip -4 -o addr show dev eth0; ip route")
    assert f"nameserver {net['gateway']}\noptions edns0" in r.stdout
    assert f"default via {net['gateway']} dev eth0" in r.stdout
    r = run(sandbox, "getent hosts pypi.org")
    assert r.exit_code == 0 and r.stdout.strip(), r.stderr


def test_the_hosts_added_cas_are_trusted_inside(sandbox):
    """The CAs this machine adds (/usr/local/share/ca-certificates; here a TLS-intercepting
    proxy's) are in the sandbox's trust store, which OpenSSL, curl, git and pip read, and
    Node.js is told to read it too."""
    added = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not added:
        pytest.skip("this machine adds no CA of its own")
    bundle = "".join(sandbox.files.read("/etc/ssl/certs/ca-certificates.crt").split())
    for crt in added:
        assert "".join(crt.read_text().split("-----")[2].split()) in bundle, crt.name
    r = run(sandbox, "echo $NODE_EXTRA_CA_CERTS")
    assert r.stdout.strip() == "/etc/ssl/certs/ca-certificates.crt"


def test_names_resolve_through_a_loopback_host_resolver(sbx_daemon, host_a, tmp_path):
    """A host whose resolver listens on a loopback address (systemd-resolved, dnsmasq), which
    no sandbox can reach itself: the daemon forwards to it. The daemon runs in a private mount
    namespace whose /etc/resolv.conf names a resolver of the test's own on 127.x, which knows
    only the test host's name and asks nobody else."""
    with LocalResolver({"web.sbx-dns.test": host_a.addr}, tmp_path) as resolver:
        wrapper = tmp_path / "sbx-with-resolver"
        wrapper.write_text("#!/bin/sh\nexec " +
                           shlex.join(resolver.with_resolver([sbx_daemon.binary])) + ' "$@"\n')
        wrapper.chmod(0o755)
        with own_daemon(SimpleNamespace(binary=wrapper), tmp_path,
                        "--pool base=0 --pool code-interpreter-v1=0") as d:
            s = Sandbox.create(timeout=120, api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
            r = run(s, "getent ahostsv4 web.sbx-dns.test")
            assert r.stdout.split()[:1] == [host_a.addr], r.stdout + r.stderr
            code, out = curl(s, "http://web.sbx-dns.test:8080/")
            assert code == 0 and "test host" in out, out
            s.kill()
        assert "web.sbx-dns.test" in resolver.queries()


def test_ipv6_is_off_inside(sandbox):
    r = run(sandbox, "ip -6 -o addr show dev eth0; ip -6 route show default")
    assert r.stdout.strip() == "", r.stdout
    r = run(sandbox, "python3 -c \"import socket; s = socket.socket(socket.AF_INET6); "
                     "s.settimeout(3); s.connect(('2001:db8::1', 80))\"")
    assert r.exit_code != 0 and "unreachable" in r.stderr, r.stderr


def test_test_host_reachable_by_default(sandbox, host_a):
    code, out = curl(sandbox, f"http://{host_a.addr}:8080/")
    assert code == 0 and "test host" in out, out


def sandbox_from_pool(sbx_daemon, **kwargs):
    """A sandbox created while its template's pool has a warm one (so it is that one)."""
    def warm():
        _, _, body = sbx_daemon.request("GET", "/pools")
        return any(p["template"] == "base" and p["warm"] > 0 for p in json.loads(body))
    assert wait_for(warm, 60), "the base pool never had a warm sandbox"
    return Sandbox.create(timeout=120, **kwargs)


def check_denied_everything(s, host):
    before = len(host.seen())
    code, out = curl(s, f"http://{host.addr}:8080/")
    assert code != 0, out
    assert len(host.seen()) == before, "the denied sandbox reached the test host"
    # Names do not resolve either: DNS is a way out too.
    assert run(s, "getent hosts pypi.org").exit_code != 0


def test_allow_internet_access_false_from_a_pool(sbx_daemon, host_a):
    """A pooled sandbox was spawned for nobody, with the default rules: it is the client's only
    once its rules are the client's."""
    s = sandbox_from_pool(sbx_daemon, allow_internet_access=False)
    try:
        check_denied_everything(s, host_a)
        assert Sandbox.get_info(s.sandbox_id).allow_internet_access is False
    finally:
        s.kill()


def test_allow_internet_access_false_cold(sbx_daemon, host_a, tmp_path):
    with own_daemon(sbx_daemon, tmp_path, "--pool base=0 --pool code-interpreter-v1=0") as d:
        s = Sandbox.create(timeout=120, allow_internet_access=False, api_key=d.api_key,
                           api_url=d.url, sandbox_url=d.url)
        check_denied_everything(s, host_a)
        s.kill()


def links_of(table):
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(l["ifname"] for l in json.loads(out) if l["ifname"].startswith(table + "-"))


def rule_elements(table):
    """Set elements of the daemon's table that name a sandbox, and its number of rules."""
    out = subprocess.run(["nft", "-j", "list", "table", "inet", table], capture_output=True,
                         text=True, check=True).stdout
    doc = json.loads(out)["nftables"]
    elems = []
    for item in doc:
        s = item.get("set")
        if s and s["name"].startswith(("allow_", "deny_")):
            elems += [json.dumps(e) for e in s.get("elem", [])]
    rules = sum(1 for item in doc if "rule" in item)
    return elems, rules


@pytest.mark.timeout(900)
def test_no_network_leftovers_after_cycles_restart_and_kill9(sbx_daemon, tmp_path):
    """300 create/kill cycles (half of them with rules), a restart and a kill -9: afterwards
    no interface, address, route or rule element of a gone sandbox remains, and the table
    has the same rules as at start (none duplicated); once the daemon stops with no sandbox
    left, not even the table. Another table (the test's, hooked to nothing) stays as it was."""
    foreign = ("table inet sbxt_foreign {\n set s { type ipv4_addr; elements = { 192.0.2.7 } }\n"
               " chain c {\n  ip daddr @s counter drop\n }\n}\n")
    subprocess.run(["nft", "delete", "table", "inet", "sbxt_foreign"], capture_output=True)
    subprocess.run(["nft", "-f", "-"], input=foreign, text=True, check=True)
    foreign_before = subprocess.run(["nft", "list", "table", "inet", "sbxt_foreign"],
                                    capture_output=True, text=True, check=True).stdout
    with own_daemon(sbx_daemon, tmp_path, "--pool base=1 --pool code-interpreter-v1=0") as d:
        table = d.network()["table"]
        # The front end points DNS at itself once connected to the spawner (before any
        # create, but maybe after the daemon answers): count the rules with those in.
        assert wait_for(lambda: "dport 53" in subprocess.run(
            ["nft", "list", "chain", "inet", table, "nat_prerouting"], capture_output=True,
            text=True, check=True).stdout, 30)
        _, rules_at_start = rule_elements(table)
        opts = dict(api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        t0 = time.monotonic()
        for i in range(300):
            s = Sandbox.create(timeout=60, allow_internet_access=(i % 2 == 0), **opts)
            s.kill()
        print(f"300 create/kill cycles in {time.monotonic() - t0:.1f} s")
        kept = Sandbox.create(timeout=300, allow_internet_access=False, **opts)

        sandboxes = Path(d.state_dir) / "sandboxes"

        def only_kept():
            # A link for each running sandbox (the kept one, the pool's), one rule (the kept
            # sandbox's deny-all).
            links = links_of(table)
            return (len(links) == len(list(sandboxes.iterdir())) and
                    len(rule_elements(table)[0]) == 1)
        assert wait_for(only_kept, 30), (links_of(table), rule_elements(table))
        d.restart()
        d.kill9()
        d.start()
        assert wait_for(only_kept, 30), (links_of(table), rule_elements(table))
        elems, rules = rule_elements(table)
        assert rules == rules_at_start
        addr = run(kept, "ip -4 -o addr show dev eth0").stdout.split()[3].split("/")[0]
        assert any(addr in e for e in elems), (addr, elems)
        assert run(kept, "getent hosts pypi.org").exit_code != 0  # still denied after both
        kept.kill()
        assert wait_for(lambda: len(links_of(table)) == len(list(sandboxes.iterdir())) and
                        not rule_elements(table)[0], 30)
        routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
        assert len(re.findall(rf"dev {table}-", routes)) == len(links_of(table)), routes
    # Stopped with none of its sandboxes left, the daemon took its table along.
    assert subprocess.run(["nft", "list", "table", "inet", table],
                          capture_output=True).returncode != 0
    assert links_of(table) == []
    assert subprocess.run(["nft", "list", "table", "inet", "sbxt_foreign"], capture_output=True,
                          text=True, check=True).stdout == foreign_before
    subprocess.run(["nft", "delete", "table", "inet", "sbxt_foreign"], check=True)


# -- egress rules: IPs and CIDRs (spec §1.2) and PUT /sandboxes/{id}/network (§4) ------------

B, C = "198.51.100.66", "198.51.100.67"


@pytest.fixture(scope="module")
def hosts_bc():
    """Two test hosts' addresses on one namespace, each answering on port 8080."""
    with TestHost("netBC", B, "198.51.100.65", prefix=26, extra=[C]) as h:
        h.serve(8080)
        yield h


def reach(sbx, *addrs):
    """{addr: True if the sandbox gets an answer from the test host there}."""
    return {a: curl(sbx, f"http://{a}:8080/")[0] == 0 for a in addrs}


@pytest.mark.parametrize("network,want", [
    ({"deny_out": [B]}, {B: False, C: True}),
    ({"deny_out": ["198.51.100.64/30"]}, {B: False, C: False}),
    ({"deny_out": ["0.0.0.0/0"], "allow_out": [B]}, {B: True, C: False}),
    ({"deny_out": ["0.0.0.0/0"], "allow_out": ["198.51.100.64/26"]}, {B: True, C: True}),
    ({"deny_out": ["198.51.100.64/26"], "allow_out": [C]}, {B: False, C: True}),
    ({"allow_out": [B]}, {B: True, C: True}),  # allowing alone restricts nothing
], ids=["deny-ip", "deny-cidr", "allow-ip-over-all", "allow-cidr-over-all", "allow-beats-deny",
        "allow-only"])
def test_egress_rules(network, want, sandbox_factory, hosts_bc):
    s = sandbox_factory(network=network)
    assert reach(s, B, C) == want


def test_update_network_replaces_the_rules_live(sandbox_factory, hosts_bc):
    """The rules change for new connections without restarting anything; omitted fields are
    cleared; allow_internet_access=False in an update denies everything."""
    s = sandbox_factory()
    sleeper = s.commands.run("sleep 600", background=True, timeout=0)
    assert reach(s, B, C) == {B: True, C: True}
    s.update_network({"deny_out": [B]})
    assert reach(s, B, C) == {B: False, C: True}
    info = Sandbox.get_info(s.sandbox_id)
    assert info.network["deny_out"] == [B]
    s.update_network({"deny_out": ["0.0.0.0/0"], "allow_out": [C]})
    assert reach(s, B, C) == {B: False, C: True}
    s.update_network({})
    assert reach(s, B, C) == {B: True, C: True}
    s.update_network({"allow_internet_access": False})
    assert reach(s, B, C) == {B: False, C: False}
    assert run(s, "getent hosts pypi.org").exit_code != 0
    s.update_network({})
    assert reach(s, B, C) == {B: True, C: True}
    # Nothing restarted: the sandbox's processes live on.
    assert any(p.pid == sleeper.pid for p in s.commands.list())


def test_get_info_echoes_the_network_settings(sandbox_factory):
    s = sandbox_factory(network={"deny_out": ["0.0.0.0/0"], "allow_out": [B, "198.51.100.0/28"],
                                 "allow_public_traffic": False,
                                 "mask_request_host": "app.example.com:${PORT}"})
    net = Sandbox.get_info(s.sandbox_id).network
    assert net["allow_out"] == [B, "198.51.100.0/28"]
    assert net["deny_out"] == ["0.0.0.0/0"]
    assert net["allow_public_traffic"] is False
    assert net["mask_request_host"] == "app.example.com:${PORT}"


# -- bad input: the spec's error, nothing half-applied, the daemon serves on ------------------

def create_raw(d, network, **extra):
    body = {"templateID": "base", "timeout": 60, "secure": True, **extra}
    if network is not None:
        body["network"] = network
    status, _, out = d.request("POST", "/sandboxes", body)
    return status, json.loads(out)


@pytest.mark.parametrize("network,extra,status,message", [
    ({"denyOut": ["example.com"]}, {}, 400, "invalid denied CIDR example.com"),
    ({"denyOut": ["0.0.0.0"]}, {}, 400, "invalid denied CIDR 0.0.0.0"),
    ({"denyOut": ["10.0.0.0/33"]}, {}, 400, "invalid denied CIDR 10.0.0.0/33"),
    ({"allowOut": ["0.0.0.0"]}, {}, 400, "invalid allowed address 0.0.0.0"),
    ({"allowOut": ["2001:db8::/32"]}, {}, 400, "invalid allowed address 2001:db8::/32"),
    ({"allowOut": ["bad host!"], "denyOut": ["0.0.0.0/0"]}, {}, 400,
     "invalid allowed domain bad host!"),
    ({"allowOut": ["pypi.org"], "denyOut": ["1.1.1.1"]}, {}, 400,
     "When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' in deny "
     "out to block all other traffic."),
    ({"denyOut": ["198.51.100.%d" % i for i in range(201)]}, {}, 400,
     "network.denyOut has 201 entries; at most 200 are allowed"),
    ({"denyOut": "1.1.1.1"}, {}, 400, "network.denyOut must be a list of strings"),
    ({"maskRequestHost": "bad host:${PORT}"}, {}, 400,
     "mask request host is not valid: bad host:${PORT}"),
    ({"maskRequestHost": "h\u00e9.example.com"}, {}, 400,
     "mask request host is not ASCII: h\u00e9.example.com"),
    ({"allowPublicTraffic": False}, {"secure": False}, 400,
     "You cannot create a sandbox without public access unless you enable secure envd "
     "access via 'secure' flag."),
    ({"rules": {"pypi.org": [{"transform": {"headers": {"X": "y"}}}]}}, {}, 400,
     "network.rules (header transforms) are not supported"),
    ({"egressProxy": {"address": "198.51.100.9:1080", "tls": {"enabled": True}}}, {}, 501,
     "network.egressProxy.tls is not supported"),
    ({"httpsPorts": [0]}, {}, 400, "network.httpsPorts: not a port number"),
    ({"dnsServers": ["1.1.1.1"] * 11}, {}, 400, "invalid DNS server"),
])
def test_bad_network_settings_are_refused(network, extra, status, message, sbx_daemon):
    before = set(sbx_daemon.list_sandbox_ids())
    got, body = create_raw(sbx_daemon, network, **extra)
    assert (got, body["code"]) == (status, status), body
    assert body["message"].startswith(message), body["message"]
    assert set(sbx_daemon.list_sandbox_ids()) == before  # nothing was made
    assert sbx_daemon.request("GET", "/health")[0] == 200


def test_bad_update_leaves_the_rules_as_they_were(sandbox_factory, sbx_daemon, hosts_bc):
    s = sandbox_factory(network={"deny_out": [B]})
    for body in ({"denyOut": ["nope"]}, {"allowOut": ["pypi.org"]}, {"allowOut": 5}):
        status, _, out = sbx_daemon.request("PUT", f"/sandboxes/{s.sandbox_id}/network", body)
        assert status == 400, out
    assert reach(s, B, C) == {B: False, C: True}
    assert Sandbox.get_info(s.sandbox_id).network["deny_out"] == [B]
    status, _, out = sbx_daemon.request("PUT", "/sandboxes/nosuchsandbox/network", {})
    assert status == 404 and json.loads(out)["code"] == 404


# -- host name rules (spec §2.1): on the connection's SNI or Host, through the egress proxy ---

WEB = ("netW", "198.51.100.194", "198.51.100.193", 26)


@pytest.fixture(scope="module")
def web_host():
    """A test host answering on ports 80 and 443 (plain TCP: it records who came)."""
    with TestHost(*WEB) as h:
        h.serve(80)
        h.serve(443)
        yield h


def test_host_name_rules(sandbox_factory, web_host):
    s = sandbox_factory(network={"deny_out": ["0.0.0.0/0"],
                                 "allow_out": ["pypi.org", "*.pythonhosted.org"]})
    # Allowed names resolve and connect (pip fetches from both hosts).
    r = run(s, "python3 -m pip download --no-deps -q -d /tmp/dl six==1.16.0 && ls /tmp/dl",
            timeout=120)
    assert r.exit_code == 0 and "six-1.16.0" in r.stdout, r.stderr
    # Other names do not resolve, and an address reached without an allowed name is denied.
    assert run(s, "getent hosts example.com").exit_code != 0
    code, out = curl(s, f"-H 'Host: example.com' http://{web_host.addr}/")
    assert code != 0, out
    assert web_host.seen() == []


def test_host_name_rules_fall_back_to_addresses(sandbox_factory, web_host):
    """A connection whose name is not allowed is decided on its address (allowOut CIDRs)."""
    s = sandbox_factory(network={"deny_out": ["0.0.0.0/0"],
                                 "allow_out": ["pypi.org", f"{web_host.addr}/32"]})
    code, out = curl(s, f"-H 'Host: unknown.example' http://{web_host.addr}/")
    assert code == 0 and "test host" in out, out
    assert any(line.startswith("tcp ") for line in web_host.seen())


# -- network.egressProxy (spec §2.3): allowed TCP tunnels through the client's SOCKS5 proxy ---

SOCKS = ("netS", "198.51.100.130", "198.51.100.129", 26)


@pytest.fixture(scope="module")
def socks_host():
    """A SOCKS5 server (microsocks) of the test's own: port 1080 open, 1081 with a password."""
    with TestHost(*SOCKS) as h:
        for args in (["-p", "1080"], ["-p", "1081", "-u", "proxyuser", "-P", "proxypass"]):
            h.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", h.ns, "microsocks", "-i", h.addr, *args],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.3)
        yield h


def test_egress_proxy_tunnels_allowed_tcp(sandbox_factory, host_a, socks_host):
    """The test host sees the proxy's address, not the sandbox network's: the connection went
    through SOCKS5. Rules apply first, and a proxy that does not answer means no connection
    (no direct fallback)."""
    url = f"http://{host_a.addr}:8080/"
    s = sandbox_factory(network={"egress_proxy": {"address": f"{socks_host.addr}:1080"}})
    before = len(host_a.seen())
    code, out = curl(s, url)
    assert code == 0 and "test host" in out, out
    assert host_a.seen()[before:] == [f"tcp {socks_host.addr}"]
    info = Sandbox.get_info(s.sandbox_id)
    assert info.network["egress_proxy"]["address"] == f"{socks_host.addr}:1080"

    s.update_network({"egress_proxy": {"address": f"{socks_host.addr}:1081",
                                       "username": "proxyuser", "password": "proxypass"}})
    code, out = curl(s, url)
    assert code == 0, out
    assert "password" not in Sandbox.get_info(s.sandbox_id).network["egress_proxy"]
    seen = len(host_a.seen())
    for bad in ({"egress_proxy": {"address": f"{socks_host.addr}:1081", "username": "proxyuser",
                                  "password": "wrong"}},
                {"egress_proxy": {"address": f"{socks_host.addr}:1099"}},  # nobody answers
                {"egress_proxy": {"address": f"{socks_host.addr}:1080"},
                 "deny_out": [f"{host_a.addr}/32"]}):
        s.update_network(bad)
        code, out = curl(s, url)
        assert code != 0, (bad, out)
    assert len(host_a.seen()) == seen


def test_egress_proxy_at_an_internal_address_is_refused(sbx_daemon):
    status, body = create_raw(sbx_daemon, {"egressProxy": {"address": "10.1.2.3:1080"}})
    assert (status, body["message"]) == (
        400, "Invalid egress proxy config: 10.1.2.3:1080 is an internal address")
    status, body = create_raw(sbx_daemon, {"egressProxy": {"address": "nope"}})
    assert status == 400 and body["message"].startswith("Invalid egress proxy config")
