"""Code interpreter: warm run_code("1+1") round trip through the official
e2b_code_interpreter SDK, the same POST /execute as a raw HTTP request on a keep-alive
connection (read to end_of_execution), and Sandbox.create() → first run_code("1+1") result,
against the same kind of kernel (Debian's python3 -m ipykernel_launcher) driven directly on
the host by jupyter_client's BlockingKernelClient, measured in the same run.

The baseline's round trip is the full one a client needs: execute_request sent, then the
execute_result on iopub, the idle status on iopub and the execute_reply on shell all
received. jupyter_client is Debian's (python3-jupyter-client), so that part runs under
/usr/bin/python3 in a subprocess.

    .venv/bin/python bench/bench_interpreter.py [N] [N_CREATE]   (root; defaults 200 and 10)
"""

import http.client
import json
import subprocess
import sys
import time
from urllib.parse import urlparse

from common import Daemon, report, timed

from e2b_code_interpreter import Sandbox

# Runs under /usr/bin/python3; prints one JSON list of milliseconds.
BASELINE = r"""
import json, sys, time
from jupyter_client.manager import KernelManager

n = int(sys.argv[1])
km = KernelManager(kernel_name="python3")
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)


def once():
    msg_id = kc.execute("1+1")
    got_result = got_idle = got_reply = False
    while not (got_result and got_idle):
        m = kc.get_iopub_msg(timeout=10)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        t = m["msg_type"]
        if t == "execute_result":
            assert m["content"]["data"]["text/plain"] == "2"
            got_result = True
        elif t == "status" and m["content"]["execution_state"] == "idle":
            got_idle = True
    while not got_reply:
        m = kc.get_shell_msg(timeout=10)
        got_reply = m["parent_header"].get("msg_id") == msg_id


for _ in range(5):
    once()
out = []
for _ in range(n):
    t0 = time.perf_counter()
    once()
    out.append((time.perf_counter() - t0) * 1000.0)
kc.stop_channels()
km.shutdown_kernel(now=True)
print(json.dumps(out))
"""


def jupyter_client_baseline(n):
    # The kernelspec python3 is ipykernel's own: /usr/bin/python3 -m ipykernel_launcher.
    p = subprocess.run(["/usr/bin/python3", "-c", BASELINE, str(n)], check=True,
                       capture_output=True, text=True, timeout=600)
    return json.loads(p.stdout.strip().splitlines()[-1])


def raw_execute(conn, sbx, body):
    conn.request("POST", "/execute", body=body,
                 headers={"Content-Type": "application/json",
                          "E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49999",
                          "X-Access-Token": sbx._envd_access_token or ""})
    r = conn.getresponse()
    lines = r.read().splitlines()
    assert r.status == 200, (r.status, lines)
    last = json.loads(lines[-1])
    assert last["type"] == "end_of_execution", lines
    assert any(b'"text":"2"' in ln for ln in lines), lines


def check_2(execution):
    assert execution.error is None and execution.text == "2", execution


def main():
    N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    N_CREATE = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    baseline = jupyter_client_baseline(N)
    with Daemon() as d:
        sbx = Sandbox.create(timeout=600)
        try:
            sdk = timed(lambda: check_2(sbx.run_code("1+1")), N, warmup=5)
            u = urlparse(d.url)
            conn = http.client.HTTPConnection(u.hostname, u.port)
            body = json.dumps({"code": "1+1", "context_id": None, "language": None,
                               "env_vars": None}).encode()
            raw = timed(lambda: raw_execute(conn, sbx, body), N, warmup=5)
            conn.close()
        finally:
            sbx.kill()

        first = []
        for _ in range(N_CREATE):
            t0 = time.perf_counter()
            s = Sandbox.create(timeout=120)
            check_2(s.run_code("1+1"))
            first.append((time.perf_counter() - t0) * 1000.0)
            s.kill()

    print(f"# code interpreter, N={N}, N_CREATE={N_CREATE}")
    report("baseline: jupyter_client <-> ipykernel 1+1", baseline)
    report('run_code("1+1") via Python SDK (warm)', sdk, "jupyter_client", baseline)
    report("POST /execute 1+1, raw HTTP keep-alive", raw, "jupyter_client", baseline)
    report('Sandbox.create() -> first run_code("1+1")', first, "jupyter_client", baseline)


if __name__ == "__main__":
    main()
