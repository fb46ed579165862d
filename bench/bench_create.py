"""Sandbox creation: wall time of the official Python SDK's Sandbox.create(), and the
daemon's own create time (store + namespaces + cgroups + overlay + agent exec, from the
X-Sbx-Spawn-Us response header), against `unshare` with the same namespaces running
/bin/true.

    .venv/bin/python bench/bench_create.py [N]    (root; default N=50)
"""

import json
import subprocess
import sys
import urllib.request

from common import Daemon, report, timed

from e2b import Sandbox

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
UNSHARE = ["unshare", "--user", "--map-root-user", "--pid", "--mount", "--net", "--ipc",
           "--uts", "--cgroup", "--fork", "/bin/true"]


def main():
    baseline = timed(lambda: subprocess.run(UNSHARE, check=True), N)
    with Daemon() as d:
        created = []

        def sdk_create():
            created.append(Sandbox.create(timeout=120))

        sdk = timed(sdk_create, N)
        for s in created:
            s.kill()

        server = []
        for _ in range(N):
            req = urllib.request.Request(
                d.url + "/sandboxes", method="POST",
                data=json.dumps({"templateID": "base", "timeout": 120}).encode(),
                headers={"X-API-KEY": d.key, "Content-Type": "application/json"})
            with urllib.request.urlopen(req) as r:
                server.append(int(r.headers["X-Sbx-Spawn-Us"]) / 1000.0)
                sid = json.loads(r.read())["sandboxID"]
            kill = urllib.request.Request(d.url + f"/sandboxes/{sid}", method="DELETE",
                                          headers={"X-API-KEY": d.key})
            urllib.request.urlopen(kill).read()

    print(f"# sandbox create, N={N}")
    report("baseline: unshare (same namespaces) /bin/true", baseline)
    report("server-side create (daemon)", server, "unshare", baseline)
    report("Sandbox.create() via Python SDK (wall)", sdk, "unshare", baseline)


if __name__ == "__main__":
    main()
