"""Snapshots and forks: the time a snapshot takes against how much the sandbox changed (an
unchanged sandbox, 1 MiB, 1 GiB), in MiB/s, and the daemon's own time for creates from a
snapshot against creates from a one-step template built on the same parent (both one layer
over base) and from base itself, taking turns in the same run (pools off, so all are cold).
Also a fork of one copy, end to end.

    .venv/bin/python bench/bench_snapshots.py [N]    (root; default N=30)

Targets (issue 11): snapshot time in proportion to the data the sandbox changed, not to the
template; a create from a snapshot as fast as one from a template.
"""

import json
import sys
import time
import urllib.request

from common import Daemon, report, server_side_creates

from e2b import Sandbox, Template

N = int(sys.argv[1]) if len(sys.argv) > 1 else 30
SNAPSHOTS_PER_SIZE = 3


def snapshot_ms(d, sid):
    """POST /sandboxes/{sid}/snapshots, wall time in ms (the copy runs in the spawner), and the
    snapshot's id."""
    req = urllib.request.Request(d.url + f"/sandboxes/{sid}/snapshots", method="POST",
                                 data=b"{}", headers={"X-API-KEY": d.key,
                                                      "Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        body = json.loads(r.read())
    return (time.perf_counter() - t0) * 1000, body["snapshotID"]


def main():
    # Disks of 2 GiB: room for the 1 GiB a sandbox writes.
    with Daemon("--pool", "base=0,code-interpreter-v1=0", "--disk-mb", "2048") as d:
        print(f"# snapshots of base sandboxes, {SNAPSHOTS_PER_SIZE} per size; creates N={N}")
        small = None
        unchanged = None
        for mib in (0, 1, 1024):
            sbx = Sandbox.create(timeout=900)
            if mib:
                sbx.commands.run(f"head -c {mib}M /dev/urandom > /home/user/blob && sync",
                                 timeout=600)
            times = []
            for _ in range(SNAPSHOTS_PER_SIZE):
                ms, sid = snapshot_ms(d, sbx.sandbox_id)
                times.append(ms)
                small = sid if mib == 1 else small
            report(f"snapshot, {mib} MiB changed", times, *(
                ("unchanged", unchanged) if unchanged else ()))
            if mib == 0:
                unchanged = times
            else:
                extra = sorted(times)[len(times) // 2] - sorted(unchanged)[len(unchanged) // 2]
                if extra > 1:
                    print(f"  {mib / extra * 1000:.0f} MiB/s over the unchanged snapshot")
                else:
                    print("  within the noise of the unchanged snapshot")
            sbx.kill()
        # A snapshot is one layer over its parent's stack, as a one-step template built on
        # base is: that template is the like-for-like baseline, base itself the floor.
        Template.build(Template().from_base_image().run_cmd("echo built > /home/user/built"),
                       "bench-one-step", cpu_count=1, memory_mb=512)
        base, template, snapshot = [], [], []
        for _ in range(N):
            base += server_side_creates(d, 1, "base")
            template += server_side_creates(d, 1, "bench-one-step")
            snapshot += server_side_creates(d, 1, small)
        report("create from base (server-side, cold)", base)
        report("create from a one-step template on base", template, "base", base)
        report("create from a snapshot of base", snapshot, "template", template)
        parent = Sandbox.create(timeout=300)
        forks = []
        for _ in range(min(N, 10)):
            t0 = time.perf_counter()
            (child,) = parent.fork()
            forks.append((time.perf_counter() - t0) * 1000)
            child.kill()
        report("fork, count=1 (SDK wall: snapshot + create)", forks)
        parent.kill()


if __name__ == "__main__":
    main()
