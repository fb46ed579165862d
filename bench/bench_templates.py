"""Templates: what layers cost and what caching saves.

1. Create from a template of 10 layers against one of 1 layer over base (the server-side
   create time, X-Sbx-Spawn-Us, the two templates taking turns): each layer is one more
   idmapped mount and one more overlay lower layer per sandbox. Target: 10-layer p50 within 10% of 1-layer.
2. A template's first build against an unchanged rebuild in the same run (Template.build
   wall time). Target: rebuild <= 2 s and <= 1/3 of the first build.
3. Resident memory per idle sandbox of base and of code-interpreter-v1 (the cgroup's
   memory.current minus page cache, from the metrics endpoint's memUsed), N sandboxes each:
   the layers' files are shared page cache, so what a sandbox costs is its own processes.

    .venv/bin/python bench/bench_templates.py [N]    (root; default N=30)
"""

import json
import os
import sys
import time
import urllib.request

from common import Daemon, percentile, report

N = int(sys.argv[1]) if len(sys.argv) > 1 else 30


def api(d, method, path, body=None):
    req = urllib.request.Request(d.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-API-KEY": d.key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.headers, r.read()


def server_creates(d, templates, n):
    """Server-side create times of each template, the templates taking turns (so that the
    machine's load drifts the same for all), after two warm-up rounds."""
    out = {t: [] for t in templates}
    for i in range(n + 2):
        for t in templates:
            headers, body = api(d, "POST", "/sandboxes", {"templateID": t, "timeout": 120})
            if i >= 2:
                out[t].append(int(headers["X-Sbx-Spawn-Us"]) / 1000.0)
            api(d, "DELETE", f"/sandboxes/{json.loads(body)['sandboxID']}")
    return out


def idle_memory(d, template, n):
    ids = []
    for _ in range(n):
        _, body = api(d, "POST", "/sandboxes", {"templateID": template, "timeout": 300})
        ids.append(json.loads(body)["sandboxID"])
    time.sleep(10)  # kernels and agents settle
    used = []
    for sid in ids:
        _, body = api(d, "GET", f"/sandboxes/{sid}/metrics")
        m = json.loads(body)
        if m:
            used.append(m[-1]["memUsed"] / (1 << 20))
    for sid in ids:
        api(d, "DELETE", f"/sandboxes/{sid}")
    return used


def main():
    with Daemon("--pool", "base=0", "--pool", "code-interpreter-v1=0") as d:
        os.environ.update(E2B_API_URL=d.url, E2B_SANDBOX_URL=d.url, E2B_API_KEY=d.key)
        from e2b import Template

        one = Template().from_base_image().run_cmd("echo 0 > /home/user/layer-0")
        ten = Template().from_base_image()
        for i in range(9):
            ten = ten.run_cmd(f"echo {i} > /home/user/layer-{i}")
        start = time.perf_counter()
        Template.build(one, "bench-one", cpu_count=1, memory_mb=1024)
        first = (time.perf_counter() - start) * 1000.0
        Template.build(ten, "bench-ten", cpu_count=1, memory_mb=1024)
        start = time.perf_counter()
        Template.build(one, "bench-one", cpu_count=1, memory_mb=1024)
        again = (time.perf_counter() - start) * 1000.0

        created = server_creates(d, ["bench-one", "bench-ten"], N)
        one_ms, ten_ms = created["bench-one"], created["bench-ten"]
        mem_base = idle_memory(d, "base", 10)
        mem_ci = idle_memory(d, "code-interpreter-v1", 5)

    print(f"# templates, N={N}")
    report("server-side create, 1-layer template", one_ms)
    report("server-side create, 10-layer template", ten_ms, "1_layer", one_ms)
    print(f"build of a 2-layer template: first {first:.0f} ms, unchanged rebuild {again:.0f} ms"
          f" (ratio {again / first:.2f})")
    for name, used in (("base", mem_base), ("code-interpreter-v1", mem_ci)):
        print(f"idle sandbox memory, {name}: n={len(used)} p50={percentile(used, 50):.1f} MiB"
              f" max={max(used):.1f} MiB")


if __name__ == "__main__":
    main()
