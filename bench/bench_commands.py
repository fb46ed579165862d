"""Command round trip: commands.run("true") through the official Python SDK (daemon →
proxy → agent → fork/exec of /bin/bash -l -c true → streamed end event), and the same Start
RPC as a raw HTTP request on a keep-alive connection (no SDK overhead), against spawning
`/bin/bash --noprofile --norc -c true` directly on the host from Python.

    .venv/bin/python bench/bench_commands.py [N]    (root; default N=200)
"""

import http.client
import json
import struct
import subprocess
import sys
from urllib.parse import urlparse

from common import Daemon, report, timed

from e2b import Sandbox

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def raw_start(conn, sbx):
    msg = json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"]},
                      "stdin": False}).encode()
    conn.request("POST", "/process.Process/Start", body=struct.pack(">BI", 0, len(msg)) + msg,
                 headers={"Content-Type": "application/connect+json",
                          "E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983",
                          "X-Access-Token": sbx._envd_access_token or ""})
    body = conn.getresponse().read()
    assert b'"exitCode"' not in body or b'"end"' in body, body


def main():
    baseline = timed(lambda: subprocess.run(["/bin/bash", "--noprofile", "--norc", "-c", "true"],
                                            check=True), N)
    with Daemon() as d:
        sbx = Sandbox.create(timeout=300)
        try:
            rtt = timed(lambda: sbx.commands.run("true"), N, warmup=5)
            u = urlparse(d.url)
            conn = http.client.HTTPConnection(u.hostname, u.port)
            raw = timed(lambda: raw_start(conn, sbx), N, warmup=5)
        finally:
            sbx.kill()
    print(f"# commands.run round trip, N={N}")
    report("baseline: host bash --noprofile -c true", baseline)
    report('commands.run("true") via Python SDK', rtt, "host_bash", baseline)
    report("Start RPC, raw HTTP keep-alive", raw, "host_bash", baseline)


if __name__ == "__main__":
    main()
