"""The sandbox network against its baselines, measured in the same run:

  create      server-side create (X-Sbx-Spawn-Us, pools off) with the network, against the
              same daemon binary with --network-cidr off, the two taking turns
  iperf3      TCP throughput from a sandbox to a host namespace of the benchmark's own
              (NAT, the sandbox's rules), against the same iperf3 run between two plain
              namespaces joined by a veth pair
  getHost     HTTP through the daemon to a port of a sandbox (Host routing, the agent's
              tunnel): a 256 MiB download in MiB/s, and the round trip of a small GET on a
              keep-alive connection, against the same server program reached directly on the
              host's loopback
  rules       PUT /sandboxes/{id}/network round trip, and the TCP connect time from inside a
              sandbox to the host namespace, with the rules of 10 and of 1,000 sandboxes in
              the daemon's nftables table (the others' elements are added to the table for
              addresses no sandbox has, as running sandboxes' would be)

    .venv/bin/python bench/bench_network.py [N] [--no-create] [--rules-only]
        [--baseline-bin OTHER_SBX] [--live L]     (root; needs iperf3; default N=30)

With --baseline-bin, the rules part runs first against that build's daemon, then against this
one's, in the same run, and each line of this build's gets its ratio to the baseline's. With
--live L, L base sandboxes (default network) run in the daemon during the rules part.
"""

import argparse
import concurrent.futures as cf

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from common import Daemon, report, server_side_creates, timed

from e2b import Sandbox

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
from helpers import TestHost  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("n", nargs="?", type=int, default=30, help="creates per daemon (create part)")
ap.add_argument("--no-create", action="store_true", help="skip the create part")
ap.add_argument("--rules-only", action="store_true", help="only the rules part")
ap.add_argument("--baseline-bin", help="another sbx build measured beside this one (rules)")
ap.add_argument("--live", type=int, default=0, help="base sandboxes running during the rules part")
ARGS = ap.parse_args()
N = ARGS.n
NO_POOLS = ("--pool", "base=0", "--pool", "code-interpreter-v1=0")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def bench_create():
    # Both daemons run, and take turns create by create: on a shared machine the load moves
    # between runs more than the network costs.
    base, net = [], []
    with Daemon("--network-cidr", "off", *NO_POOLS) as off, Daemon(*NO_POOLS) as on:
        for _ in range(N):
            base += server_side_creates(off, 1)
            net += server_side_creates(on, 1)
    print(f"# create, N={N}, pools off, the two daemons taking turns")
    report("server-side create, --network-cidr off", base)
    report("server-side create with the network", net, "off", base)


def iperf_gbps(json_text):
    return json.loads(json_text)["end"]["sum_received"]["bits_per_second"] / 1e9


def iperf3_into(s):
    """The host's iperf3 and the libraries the base template lacks, copied into sandbox s
    (its template has no iperf3, and a sandbox may not fetch Debian's): the command to run."""
    libs = sh("ldd /usr/bin/iperf3 | awk '/libiperf|libsctp/ {print $3}'").split()
    for path in ["/usr/bin/iperf3"] + libs:
        with open(path, "rb") as f:
            s.files.write(f"/tmp/iperf3/{os.path.basename(path)}", f.read())
    return "chmod +x /tmp/iperf3/iperf3 && LD_LIBRARY_PATH=/tmp/iperf3 /tmp/iperf3/iperf3"


def bench_iperf(d):
    print("# iperf3, 5 s, 1 stream")
    with TestHost("bench", "198.51.100.2", "198.51.100.1", prefix=26) as h, \
            TestHost("benc2", "198.51.100.130", "198.51.100.129", prefix=26):
        server = subprocess.Popen(["ip", "netns", "exec", h.ns, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        # Baseline: namespace to namespace through the host (routed, no sbx rules).
        base = iperf_gbps(sh(f"ip netns exec sbxt-benc2 iperf3 -J -t 5 -c {h.addr}"))
        server.wait(10)
        server = subprocess.Popen(["ip", "netns", "exec", h.ns, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        s = Sandbox.create(timeout=120)
        r = s.commands.run(f"{iperf3_into(s)} -J -t 5 -c {h.addr}", timeout=60)
        got = iperf_gbps(r.stdout)
        s.kill()
        server.wait(10)
    print(f"{'namespace -> namespace (baseline)':<44} {base:6.2f} Gbit/s")
    print(f"{'sandbox -> namespace':<44} {got:6.2f} Gbit/s  ratio={got / base:.2f}x")


def www(root):
    """A 256 MiB and a tiny file under root, and the command serving them on 127.0.0.1:8000
    (the same server program on the host and in the sandbox)."""
    make = (f"mkdir -p {root} && head -c 268435456 /dev/zero > {root}/big && "
            f"echo ok > {root}/small")
    serve = f"sh -c 'cd {root} && exec python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1'"
    return make, serve


def download_mibps(host, port, hosthdr, path="/big"):
    c = http.client.HTTPConnection(host, port, timeout=120)
    t0 = time.perf_counter()
    c.request("GET", path, headers={"Host": hosthdr})
    r = c.getresponse()
    n = 0
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        n += len(b)
    dt = time.perf_counter() - t0
    c.close()
    return n / dt / (1 << 20)


def small_rtts(host, port, hosthdr, n):
    c = http.client.HTTPConnection(host, port, timeout=30)

    def one():
        c.request("GET", "/small", headers={"Host": hosthdr})
        c.getresponse().read()
    out = timed(one, n, warmup=20)
    c.close()
    return out


def bench_gethost(d):
    print("# getHost: the daemon to a sandbox's port, against the same server on the host")
    make, serve = www("/var/tmp/sbx-bench-www")
    sh(make)
    direct = subprocess.Popen(serve, shell=True, start_new_session=True)
    s = Sandbox.create(timeout=300)
    # On the sandbox's disk: its /tmp is memory, a fraction of its limit.
    make_in, serve_in = www("/home/user/www")
    s.commands.run(make_in, timeout=120)
    s.commands.run(serve_in, background=True, timeout=0)
    time.sleep(1.5)
    host = s.get_host(8000)
    try:
        base = [download_mibps("127.0.0.1", 8000, "localhost") for _ in range(3)]
        prox = [download_mibps("127.0.0.1", d.port, host) for _ in range(3)]
        print(f"{'256 MiB GET direct (baseline)':<44} {max(base):8.0f} MiB/s")
        print(f"{'256 MiB GET through getHost':<44} {max(prox):8.0f} MiB/s  "
              f"ratio={max(prox) / max(base):.2f}x")
        b = small_rtts("127.0.0.1", 8000, "localhost", 500)
        p = small_rtts("127.0.0.1", d.port, host, 500)
        report("small GET direct (baseline)", b)
        p50, _ = report("small GET through getHost", p, "direct", b)
        print(f"{'added latency p50':<44} {p50 - sorted(b)[len(b) // 2]:.3f} ms")
    finally:
        os.killpg(direct.pid, signal.SIGTERM)
        s.kill()
        sh("rm -rf /var/tmp/sbx-bench-www")


def table_of(addr):
    dev = json.loads(sh(f"ip -j route get {addr}"))[0]["dev"]
    return dev.rsplit("-", 1)[0]


def fill_table(table, addrs):
    """Rules for sandboxes at addrs (a deny-all and five allowed ranges each), as the spawner
    would add them: shard = the address's low six bits."""
    by_shard = {}
    for a in addrs:
        k = int(a.split(".")[3]) & 63
        by_shard.setdefault(k, []).append(a)
    cmds = []
    for k, group in by_shard.items():
        allow = ", ".join(f"{a} . 192.0.2.{16 * j}/28" for a in group for j in range(5))
        deny = ", ".join(f"{a} . 0.0.0.0/0" for a in group)
        cmds += [f"add element inet {table} allow_{k} {{ {allow} }}",
                 f"add element inet {table} deny_{k} {{ {deny} }}"]
    subprocess.run(["nft", "-f", "-"], input="\n".join(cmds), text=True, check=True)
    return "\n".join(c.replace("add element", "delete element") for c in cmds)


CONNECTS = r"""
import socket, sys, time
out = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    s = socket.create_connection((sys.argv[1], 5201), timeout=5)
    out.append((time.perf_counter() - t0) * 1000)
    s.close()
print(" ".join(f"{x:.4f}" for x in out))
"""


def api(d, method, path, body=None):
    req = urllib.request.Request(d.url + path, method=method,
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"X-API-KEY": d.key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        out = r.read()
    return json.loads(out) if out else None


def start_live(d, n):
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as ex:
        ids = list(ex.map(lambda _: api(d, "POST", "/sandboxes",
                                        {"templateID": "base", "timeout": 900})["sandboxID"],
                          range(n)))
    print(f"{n} live base sandboxes started in {time.perf_counter() - t0:.1f} s", flush=True)
    return ids


def stop_live(d, ids):
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda sid: api(d, "DELETE", f"/sandboxes/{sid}"), ids))


def measure_rules(d):
    live = start_live(d, ARGS.live) if ARGS.live else []
    try:
        return measure_rules_among(d)
    finally:
        stop_live(d, live)


def measure_rules_among(d):
    with TestHost("bench", "198.51.100.2", "198.51.100.1", prefix=26) as h:
        h.serve(5201)
        s = Sandbox.create(timeout=300, network={"deny_out": ["0.0.0.0/0"],
                                                 "allow_out": ["198.51.100.0/26"]})
        s.files.write("/tmp/connects.py", CONNECTS)
        me = s.commands.run("ip -4 -o addr show dev eth0").stdout.split()[3].split("/")[0]
        table = table_of(me)
        base = [int(x) for x in me.split(".")]
        # Addresses of slots past those in use here: 999 other sandboxes' worth of rules.
        start = base[2] * 256 + base[3] + 100
        others = [f"{base[0]}.{base[1]}.{v // 256}.{v % 256}" for v in range(start, start + 999)]
        results = {}
        undo = []
        for total, addrs in ((10, others[:9]), (1000, others[9:])):
            undo.append(fill_table(table, addrs))
            def put(i=[0]):
                i[0] += 1
                body = {"denyOut": ["0.0.0.0/0"], "allowOut": [f"198.51.100.{i[0] % 60}/32",
                                                                "198.51.100.0/26"]}
                req = urllib.request.Request(d.url + f"/sandboxes/{s.sandbox_id}/network",
                                             method="PUT", data=json.dumps(body).encode(),
                                             headers={"X-API-KEY": d.key,
                                                      "Content-Type": "application/json"})
                urllib.request.urlopen(req).read()
            mark = len(open(d.log.name, "rb").read())
            results[total] = timed(put, 200, warmup=5)
            # The spawner's own part (nftables), from its log line of each change.
            tail = open(d.log.name, "rb").read()[mark:].decode()
            results[f"s{total}"] = [int(x) / 1000 for x in
                                    re.findall(r"event=net_policy .* us=(\d+)", tail)][-200:]
            out = s.commands.run(f"python3 /tmp/connects.py {h.addr} 300", timeout=120)
            results[f"c{total}"] = [float(x) for x in out.stdout.split()]
        s.kill()
        subprocess.run(["nft", "-f", "-"], input="\n".join(undo), text=True, check=False)
    return results


LINES = [(10, "PUT /network, 10 sandboxes with rules"),
         (1000, "PUT /network, 1,000 sandboxes with rules"),
         ("s10", "  of which the spawner (nftables), 10"),
         ("s1000", "  of which the spawner (nftables), 1,000"),
         ("c10", "TCP connect from a sandbox, 10"),
         ("c1000", "TCP connect from a sandbox, 1,000")]


def bench_rules(d, base=None):
    """base: the baseline build's results, measured before in the same run."""
    print("# rules: with the rules of 10 and of 1,000 sandboxes in the table"
          + (f", {ARGS.live} sandboxes live" if ARGS.live else ""))
    r = measure_rules(d)
    for key, name in LINES:
        if base:
            report(name, r[key], "baseline", base[key])
        else:
            # Without a baseline build: the 1,000 lines against the 10 ones.
            small = {1000: 10, "s1000": "s10", "c1000": "c10"}.get(key)
            report(name, r[key], "10" if small else None, r[small] if small else None)
    return r


def baseline_rules(binary):
    with Daemon("--pool", "code-interpreter-v1=0", "--log-level", "info", binary=binary) as d:
        print(f"# baseline build: {binary}")
        return bench_rules(d)


def main():
    if not (ARGS.no_create or ARGS.rules_only):
        bench_create()
    base = baseline_rules(ARGS.baseline_bin) if ARGS.baseline_bin else None
    with Daemon("--pool", "code-interpreter-v1=0", "--log-level", "info") as d:
        if not ARGS.rules_only:
            bench_iperf(d)
            bench_gethost(d)
        if base:
            print("# this build")
        bench_rules(d, base)


if __name__ == "__main__":
    main()
