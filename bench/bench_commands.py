"""Command round trip: commands.run("true") through the official Python SDK (daemon →
proxy → agent → fork/exec of /bin/bash -l -c true → streamed end event), against running the
same `/bin/bash -l -c true` directly on the host.

    .venv/bin/python bench/bench_commands.py [N]    (root; default N=200)
"""

import subprocess
import sys

from common import Daemon, report, timed

from e2b import Sandbox

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def main():
    baseline = timed(lambda: subprocess.run(["/bin/bash", "-l", "-c", "true"], check=True), N)
    with Daemon():
        sbx = Sandbox.create(timeout=300)
        try:
            rtt = timed(lambda: sbx.commands.run("true"), N, warmup=5)
        finally:
            sbx.kill()
    print(f"# commands.run round trip, N={N}")
    report("baseline: host bash -l -c true", baseline)
    report('commands.run("true") via Python SDK', rtt, "host_bash", baseline)


if __name__ == "__main__":
    main()
