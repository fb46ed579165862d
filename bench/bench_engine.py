"""The engine's targets (privilege-separated, non-blocking spawner, warm pools):

  first    Sandbox.create() -> first run_code("1+1") result through the official Python SDK,
           from a warm pool, against the host starting `python3 -c "print(1+1)"`;
           server-side create from a pool and without one (X-Sbx-Spawn-Us), against unshare
  busy     commands.run("true") on one sandbox while 20 sandboxes are created at once,
           against its idle round trip
  rate     base sandboxes created and killed for a while by 1, 4 and 16 concurrent clients
           (creates/s, without pools), with commands.run("true") on another sandbox meanwhile
           (also while the baselines run, so that all carry the same extra load); against
           crun (an OCI container: read-only root with the host's /usr, its own namespaces
           and cgroup), bwrap and unshare starting /bin/true at the same concurrency
  density  resident memory of idle base and idle code-interpreter sandboxes (kernel warm),
           as sandboxes per GiB; then N live base sandboxes and list/create round trips
           among them
  (each language's first run_code, with and without a pool: bench_first_call.py --no-pool)

    .venv/bin/python bench/bench_engine.py [first|busy|rate|density ...] [--n N]
        [--seconds S] [--live N] [--baseline-bin OTHER_SBX [--rounds R]]
"""

import argparse
import concurrent.futures as cf
import contextlib
import ctypes
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

from common import Daemon, percentile, report, timed

from e2b import Sandbox
from e2b_code_interpreter import Sandbox as CodeSandbox

UNSHARE = ["unshare", "--user", "--map-root-user", "--pid", "--mount", "--net", "--ipc",
           "--uts", "--cgroup", "--fork", "/bin/true"]
BWRAP = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib",
         "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
         "--proc", "/proc", "--dev", "/dev", "/bin/true"]


# crun refuses a hybrid cgroup layout (v1 controllers beside a v2 mount that holds one), which
# is what these machines have. Each crun then runs in a mount namespace of its own without the
# v2 mount: the cost of two syscalls in the child, and crun uses the v1 controllers as sbx does.
HYBRID = os.path.ismount("/sys/fs/cgroup/unified")


# Looked up here, not in the child: a child forked from these threads runs hide_unified_cgroup
# between fork and exec, where a dlopen (ctypes.CDLL) can wait forever for a loader lock that
# another thread held at the fork (it did: one run of the rate bench hung in crun's point).
LIBC = ctypes.CDLL(None, use_errno=True)
UNSHARE_FN, MOUNT_FN, UMOUNT2_FN = LIBC.unshare, LIBC.mount, LIBC.umount2


def hide_unified_cgroup():
    CLONE_NEWNS, MS_REC, MS_PRIVATE, MNT_DETACH = 0x20000, 0x4000, 1 << 18, 2
    if (UNSHARE_FN(CLONE_NEWNS) != 0
            or MOUNT_FN(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0
            or UMOUNT2_FN(b"/sys/fs/cgroup/unified", MNT_DETACH) != 0):
        os._exit(111)


def crun_bundle(top):
    """An OCI bundle comparable to a base sandbox: read-only root holding the host's /usr
    (read-only) and the usual symlinks, default namespaces, /bin/true."""
    os.makedirs(f"{top}/rootfs/usr")
    for link in ("bin", "lib", "lib64", "sbin"):
        os.symlink(f"usr/{link}", f"{top}/rootfs/{link}")
    subprocess.run(["crun", "spec"], cwd=top, check=True)
    with open(f"{top}/config.json") as f:
        spec = json.load(f)
    spec["process"].update(terminal=False, args=["/bin/true"])
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                           "options": ["rbind", "ro"]})
    with open(f"{top}/config.json", "w") as f:
        json.dump(spec, f)
    return top


def crun_runner(bundle):
    ids = itertools.count()
    lock = threading.Lock()

    def run():
        with lock:
            n = next(ids)
        subprocess.run(["crun", "run", "--bundle", bundle, f"sbx-bench-{os.getpid()}-{n}"],
                       check=True, stdin=subprocess.DEVNULL,
                       preexec_fn=hide_unified_cgroup if HYBRID else None)
    return run


def post(d, path, body):
    req = urllib.request.Request(d.url + path, method="POST", data=json.dumps(body).encode(),
                                 headers={"X-API-KEY": d.key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.headers, json.loads(r.read())


def delete(d, sid):
    req = urllib.request.Request(d.url + f"/sandboxes/{sid}", method="DELETE",
                                 headers={"X-API-KEY": d.key})
    urllib.request.urlopen(req, timeout=60).read()


def server_create_ms(d, template):
    h, body = post(d, "/sandboxes", {"templateID": template, "timeout": 120})
    return int(h["X-Sbx-Spawn-Us"]) / 1000.0, body["sandboxID"]


def bench_first(n):
    host = timed(lambda: subprocess.run(["/usr/bin/python3", "-c", "print(1+1)"], check=True,
                                        stdout=subprocess.DEVNULL), n)
    unshare = timed(lambda: subprocess.run(UNSHARE, check=True), n)
    first, pooled_server, cold_server = [], [], []
    with Daemon("--pool", "code-interpreter-v1=2", "--pool", "base=2") as d:
        for _ in range(n):
            d.wait_pools_warm()
            t0 = time.perf_counter()
            s = CodeSandbox.create(timeout=120)
            r = s.run_code("1+1")
            first.append((time.perf_counter() - t0) * 1000)
            assert r.text == "2", r
            s.kill()
        for _ in range(n):
            d.wait_pools_warm()
            ms, sid = server_create_ms(d, "base")
            pooled_server.append(ms)
            delete(d, sid)
    with Daemon("--pool", "code-interpreter-v1=0", "--pool", "base=0") as d:
        for _ in range(n):
            ms, sid = server_create_ms(d, "base")
            cold_server.append(ms)
            delete(d, sid)
    print(f"# create -> first result, N={n}")
    report("baseline: host python3 -c 'print(1+1)'", host)
    report("Sandbox.create() + run_code('1+1'), pool", first, "host_python", host)
    report("baseline: unshare (same namespaces) /bin/true", unshare)
    report("server-side create from a pool", pooled_server, "unshare", unshare)
    report("server-side create without a pool", cold_server, "unshare", unshare)


def busy_round(d, s, busy):
    """20 creates at once on d while commands.run("true") loops on s; then their kills."""
    stop = threading.Event()

    def poke():
        while not stop.is_set():
            t0 = time.perf_counter()
            s.commands.run("true")
            busy.append((time.perf_counter() - t0) * 1000)

    t = threading.Thread(target=poke)
    t.start()
    with cf.ThreadPoolExecutor(20) as ex:
        ids = list(ex.map(lambda _: server_create_ms(d, "base")[1], range(20)))
    stop.set()
    t.join()
    with cf.ThreadPoolExecutor(20) as ex:
        list(ex.map(lambda sid: delete(d, sid), ids))


def bench_busy(n, baseline_bin=None):
    """With baseline_bin, that build's daemon runs beside this one's and they take turns."""
    builds = [("sbx", None)] + ([("baseline", baseline_bin)] if baseline_bin else [])
    rounds = max(1, n // 20)
    with contextlib.ExitStack() as stack:
        ds = []
        for name, binary in builds:
            d = stack.enter_context(
                Daemon("--pool", "base=0", "--pool", "code-interpreter-v1=0", binary=binary))
            s = Sandbox.create(timeout=600)  # the SDK talks to d now
            ds.append((name, d, s, timed(lambda: s.commands.run("true"), n), []))
        for _ in range(rounds):
            for _, d, s, _, busy in ds:
                busy_round(d, s, busy)
        print(f"# commands.run('true') while 20 sandboxes are created at once ({rounds} rounds)")
        for name, _, s, idle, busy in ds:
            report(f"idle commands.run('true'), {name}", idle)
            p50, p99 = report(f"commands.run('true') during 20 creates, {name}", busy, "idle",
                              idle)
            bound = 5 * percentile(idle, 50) + 20
            print(f"target p99 <= 5 x idle p50 + 20 ms = {bound:.1f} ms: "
                  f"{'met' if p99 <= bound else 'NOT met'}")
            s.kill()


def rate_of(fn, clients, seconds):
    done = []
    stop = time.monotonic() + seconds

    def worker():
        k = 0
        while time.monotonic() < stop:
            fn()
            k += 1
        done.append(k)

    with cf.ThreadPoolExecutor(clients) as ex:
        for _ in range(clients):
            ex.submit(worker)
    return sum(done) / seconds


def rate_point(cycle, probe, clients, seconds):
    """cycle() calls per second at this concurrency, and commands.run's latency on probe (an
    sbx sandbox) meanwhile. The probe pokes during every engine's points, sbx's and the
    baselines' alike, so that each rate is measured under the same extra load."""
    lat = []
    stop = threading.Event()

    def poke():
        while not stop.is_set():
            t0 = time.perf_counter()
            probe.commands.run("true")
            lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.01)

    t = threading.Thread(target=poke)
    t.start()
    r = rate_of(cycle, clients, seconds)
    stop.set()
    t.join()
    return r, lat


def sbx_cycle(d):
    def cycle():
        _, sid = server_create_ms(d, "base")
        delete(d, sid)
    return cycle


def bench_rate(seconds, baseline_bin=None, rounds=1):
    """With baseline_bin, that build runs beside this one (same options) and the two take
    turns, `rounds` times per point, so that both see the same load."""
    print(f"# create+kill rate, {seconds} s per point and build, {rounds} round(s)")
    baselines = [("unshare", lambda: subprocess.run(UNSHARE, check=True))]
    tmp = tempfile.TemporaryDirectory(prefix="sbx-bench-crun-")
    if shutil.which("crun"):
        baselines.insert(0, ("crun", crun_runner(crun_bundle(tmp.name))))
    if shutil.which("bwrap"):
        baselines.insert(1, ("bwrap", lambda: subprocess.run(BWRAP, check=True)))
    builds = [("sbx", None)] + ([("baseline", baseline_bin)] if baseline_bin else [])
    rates = {}
    # crun's container, like bwrap's and unshare's, has only loopback: "no network" is the
    # comparable sandbox; the default has the network (interface, NAT, rules).
    for net in ("network", "no network"):
        with contextlib.ExitStack() as stack:
            ds = []
            for name, binary in builds:
                d = stack.enter_context(
                    Daemon("--pool", "base=0", "--pool", "code-interpreter-v1=0",
                           *([] if net == "network" else ["--network-cidr", "off"]),
                           binary=binary))
                ds.append((name, d, Sandbox.create(timeout=3600)))  # d now; outlives every point
            for clients in (1, 4, 16):
                got = {name: ([], []) for name, _, _ in ds}
                for _ in range(rounds):
                    for name, d, probe in ds:
                        r, lat = rate_point(sbx_cycle(d), probe, clients, seconds)
                        got[name][0].append(r)
                        got[name][1].extend(lat)
                line = f"{net:<10} clients={clients:<3}"
                for name, _, _ in ds:
                    rates[(net, clients, name)] = statistics.mean(got[name][0])
                    line += f"  {name} {rates[(net, clients, name)]:6.1f}/s"
                if baseline_bin:
                    line += (f"  ({rates[(net, clients, 'sbx')] / rates[(net, clients, 'baseline')]:.2f}x"
                             " the baseline build)")
                print(line, flush=True)
                for name, _, _ in ds:
                    report(f"  commands.run('true') meanwhile, {name}", got[name][1])
            if net == "no network":
                for clients in (1, 4, 16):
                    line = f"clients={clients:<3}"
                    for name, fn in baselines:
                        b, _ = rate_point(fn, ds[0][2], clients, seconds)
                        line += (f"  {name} {b:6.1f}/s (sbx {rates[('network', clients, 'sbx')] / b:.2f}x,"
                                 f" no network {rates[('no network', clients, 'sbx')] / b:.2f}x)")
                    print(line, flush=True)
            for _, _, probe in ds:
                probe.kill()
    tmp.cleanup()
    missing = [c for c in ("crun", "bwrap") if not shutil.which(c)]
    if missing:
        print(f"({' and '.join(missing)} not installed: scripts/setup.sh test installs them)")


def bench_density(k, live):
    # base with a pool of one: a create among the live sandboxes is then timed both as a
    # client gets it by default (from the pool) and cold (the next create at once, while the
    # pool's refill is under way: it also competes with that refill).
    with Daemon("--pool", "base=1", "--pool", "code-interpreter-v1=0") as d:
        for name, cls, template in (("base", Sandbox, "base"),
                                    ("code-interpreter (Python kernel warm)", CodeSandbox,
                                     "code-interpreter-v1")):
            boxes = [cls.create(timeout=600) for _ in range(k)]
            if cls is CodeSandbox:
                for b in boxes:
                    b.run_code("1")
            time.sleep(2)
            mem = [b.get_metrics()[-1].mem_used for b in boxes]
            per = sum(mem) / len(mem)
            print(f"idle {name}: {per / 2**20:.1f} MiB each (cgroup memory, mean of {k}) -> "
                  f"{2**30 / per:.0f} per GiB", flush=True)
            for b in boxes:
                b.kill()
        ids = []
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as ex:
            ids = list(ex.map(lambda _: server_create_ms(d, "base")[1], range(live)))
        print(f"{live} live base sandboxes started in {time.perf_counter() - t0:.1f} s",
              flush=True)
        lst = timed(lambda: d.get("/v2/sandboxes?limit=100"), 50)
        pooled, cold = [], []
        for _ in range(50):
            d.wait_pools_warm()
            pair = []
            for out in (pooled, cold):
                t0 = time.perf_counter()
                pair.append(server_create_ms(d, "base")[1])
                out.append((time.perf_counter() - t0) * 1000)
            for sid in pair:
                delete(d, sid)
        report(f"list (100 per page) among {live} sandboxes", lst)
        report(f"create from the pool (HTTP round trip) among {live}", pooled)
        report(f"create, cold (HTTP round trip) among {live}", cold)
        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda sid: delete(d, sid), ids))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="*",
                    default=["first", "busy", "rate", "density"])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--live", type=int, default=1000)
    ap.add_argument("--baseline-bin", help="another sbx build, run beside this one (rate, busy)")
    ap.add_argument("--rounds", type=int, default=1, help="turns per point with --baseline-bin")
    a = ap.parse_args()
    for w in a.what:
        {"first": lambda: bench_first(a.n), "busy": lambda: bench_busy(a.n, a.baseline_bin),
         "rate": lambda: bench_rate(a.seconds, a.baseline_bin, a.rounds),
         "density": lambda: bench_density(10, a.live)}[w]()


if __name__ == "__main__":
    main()
