"""Pause and resume of a code-interpreter sandbox whose kernel runs: the daemon's own time for
a pause that keeps memory (freeze) and its resume (thaw), and for a filesystem-only pause and
its resume (a reboot on the same disk), from the X-Sbx-Op-Us response header, against the
daemon's own time for a cold create of the same template (X-Sbx-Spawn-Us) in the same run.
Also the memory a paused sandbox holds, what a filesystem-only pause gives back, and the CPU
a paused sandbox uses (its cgroup's counter over a second).

    .venv/bin/python bench/bench_pause.py [N]    (root; default N=50)

Targets (issue 11): pause and resume p50 <= 5 ms each with a kernel running, the kernel's
variables intact; a filesystem-only resume no slower than a create of the same template.
"""

import json
import os
import sys
import time
import urllib.request

from common import Daemon, report

from e2b_code_interpreter import Sandbox

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
TEMPLATE = "code-interpreter-v1"


def call(d, method, path, body=None):
    req = urllib.request.Request(d.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-API-KEY": d.key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.headers, r.read()


def op_ms(d, method, path, body=None, header="X-Sbx-Op-Us"):
    status, headers, _ = call(d, method, path, body)
    assert status in (200, 201, 204), status
    return int(headers[header]) / 1000.0


def cgroup_file(sid, v2_name, v1_ctrl, v1_name):
    v2 = f"/sys/fs/cgroup/sbx/{sid}/{v2_name}"
    return v2 if os.path.exists(v2) else f"/sys/fs/cgroup/{v1_ctrl}/sbx/{sid}/{v1_name}"


def memory_bytes(sid):
    path = cgroup_file(sid, "memory.current", "memory", "memory.usage_in_bytes")
    return int(open(path).read()) if os.path.exists(path) else 0


def cpu_ns(sid):
    path = cgroup_file(sid, "cpu.stat", "cpuacct", "cpuacct.usage")
    text = open(path).read()
    return int(text.split("usage_usec")[1].split()[0]) * 1000 if "usage_usec" in text else int(text)


def main():
    # Cold creates only: the baseline is what booting this template costs. Measured between
    # the filesystem-only pauses and resumes, so that a busy moment of the machine weighs on
    # both alike.
    with Daemon("--pool", "base=0,code-interpreter-v1=0") as d:
        create = []

        def create_one():
            status, headers, body = call(d, "POST", "/sandboxes",
                                         {"templateID": TEMPLATE, "timeout": 300})
            create.append(int(headers["X-Sbx-Spawn-Us"]) / 1000.0)
            call(d, "DELETE", f"/sandboxes/{json.loads(body)['sandboxID']}")

        sbx = Sandbox.create(TEMPLATE, timeout=600)
        sid = sbx.sandbox_id
        assert sbx.run_code("x = 41; x").text == "41"
        running_mem = memory_bytes(sid)
        pause, resume = [], []
        for i in range(N):
            pause.append(op_ms(d, "POST", f"/sandboxes/{sid}/pause", {}))
            if i == 0:
                paused_mem = memory_bytes(sid)
                cpu0 = cpu_ns(sid)
                time.sleep(1.0)
                paused_cpu_ns = cpu_ns(sid) - cpu0
            resume.append(op_ms(d, "POST", f"/v2/sandboxes/{sid}/connect", {"timeout": 600}))
        # The kernel kept its state through every pause.
        assert sbx.run_code("x + 1").text == "42"

        fs_pause, fs_resume = [], []
        for i in range(N):
            if i == 0:
                before = memory_bytes(sid)  # its kernel warm
            fs_pause.append(op_ms(d, "POST", f"/sandboxes/{sid}/pause", {"memory": False}))
            if i == 0:
                after = memory_bytes(sid)
            fs_resume.append(op_ms(d, "POST", f"/v2/sandboxes/{sid}/connect", {"timeout": 600}))
            create_one()
        assert sbx.run_code("1 + 1").text == "2"
        sbx.kill()

    print(f"# pause and resume of a {TEMPLATE} sandbox with its kernel running, N={N}")
    report("baseline: server-side cold create", create)
    report("pause, memory kept (freeze)", pause, "create", create)
    report("resume of it (thaw)", resume, "create", create)
    report("pause, filesystem only (stop)", fs_pause, "create", create)
    report("resume of it (reboot on its disk)", fs_resume, "create", create)
    print(f"memory of the sandbox running: {running_mem / 2**20:.1f} MiB; "
          f"held while paused with memory: {paused_mem / 2**20:.1f} MiB; "
          f"CPU used in 1 s paused: {paused_cpu_ns / 1e6:.3f} ms")
    print(f"filesystem-only pause: {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB "
          "after (all given back)")


if __name__ == "__main__":
    main()
