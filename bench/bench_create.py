"""Sandbox creation: wall time of the official Python SDK's Sandbox.create(), and the
daemon's own create time (store + namespaces + cgroups + overlay + agent exec, from the
X-Sbx-Spawn-Us response header), against `unshare` with the same namespaces running
/bin/true.

    .venv/bin/python bench/bench_create.py [N]    (root; default N=50)
"""

import subprocess
import sys

from common import Daemon, report, server_side_creates, timed

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

        server = server_side_creates(d, N)

    print(f"# sandbox create, N={N}")
    report("baseline: unshare (same namespaces) /bin/true", baseline)
    report("server-side create (daemon)", server, "unshare", baseline)
    report("Sandbox.create() via Python SDK (wall)", sdk, "unshare", baseline)


if __name__ == "__main__":
    main()
