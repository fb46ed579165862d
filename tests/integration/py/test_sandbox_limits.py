"""Limits of a sandbox that need the full template (pip, npm, the code interpreter): the
reduced capability set still runs everyday tools, and OOM kills are reported as such.
The runtime side of these bounds is in tests/security/test_host_bounds.py."""

import json
import os
import shlex
import textwrap
from pathlib import Path

import pytest

from e2b import CommandExitException, Sandbox

from conftest import own_daemon


def run(sbx, cmd, user=None, timeout=120):
    try:
        return sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitException as e:
        return e


def test_everyday_tools_work_without_those_capabilities(sandbox):
    """git, pip and npm, as the default user and with sudo, do not need NET_ADMIN,
    SYS_ADMIN, SYS_PTRACE or new namespaces."""
    script = textwrap.dedent("""
        set -e
        cd /tmp
        git init -q repo && cd repo && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m x
        cd /tmp && git clone -q repo clone && echo git=ok
        mkdir -p pkg/sbxprobe && cd pkg
        printf 'from setuptools import setup\\nsetup(name="sbxprobe", version="1.0", packages=["sbxprobe"])\\n' > setup.py
        echo 'X = 42' > sbxprobe/__init__.py
        pip install -q --user --break-system-packages --no-index --no-build-isolation . 2>&1 | tail -n 3
        cd /tmp && python3 -c 'import sbxprobe; print("pip=ok", sbxprobe.X)'
        mkdir -p npmpkg && cd npmpkg && npm init -y >/dev/null && npm pack -q >/dev/null
        mkdir -p /tmp/app && cd /tmp/app && npm init -y >/dev/null
        npm install --offline --no-audit --no-fund /tmp/npmpkg/npmpkg-1.0.0.tgz >/dev/null && echo npm=ok
        sudo apt-get --version >/dev/null && echo sudo=ok
    """)
    r = run(sandbox, f"bash -c {shlex.quote(script)}", timeout=300)
    print(r.stdout, r.stderr[-2000:])
    for tool in ("git=ok", "pip=ok 42", "npm=ok", "sudo=ok"):
        assert tool in r.stdout, f"{tool} missing: {r.stderr[-2000:]}"


def test_oom_kill_is_reported_to_the_kernel_user(sandbox_factory):
    from e2b_code_interpreter import Sandbox as CodeSandbox
    s = sandbox_factory(CodeSandbox, timeout=300)
    ex = s.run_code("x = b'x' * (2 << 30)", timeout=120)
    print(f"error: {ex.error}")
    assert ex.error is not None
    assert "out of memory (limit 512 MiB)" in f"{ex.error.name} {ex.error.value}"
    # The context goes on with a fresh kernel.
    assert s.run_code("1 + 1").text == "2"


def test_a_sandbox_sees_its_own_memory_and_cpus(sandbox):
    """/proc/meminfo, nproc, os.cpu_count(), /sys/fs/cgroup and the JVM all report the
    sandbox's limits (512 MiB, 1 CPU on the test daemon), not the host's."""
    r = run(sandbox, "grep MemTotal /proc/meminfo; nproc; python3 -c 'import os; print(os.cpu_count())';"
                     " free -m | awk '/^Mem:/ {print $2}'; awk '{print ($1 < 3600)}' /proc/uptime")
    lines = r.stdout.split("\n")
    print(r.stdout)
    assert lines[0].split()[1] == str(512 * 1024), lines[0]
    assert lines[1:4] == ["1", "1", "512"]
    assert lines[4] == "1", "uptime is the sandbox's, not the host's"
    cg = run(sandbox, "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
                      "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert cg.stdout.strip() == str(512 << 20), cg.stdout
    # Read-only: the limits are the host's to set, even for sandbox root.
    w = run(sandbox, "for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes;"
                     " do [ -e $f ] && echo 1 > $f; done", user="root")
    assert w.exit_code != 0 and "Read-only file system" in w.stderr, w.stderr
    # The JVM is in the code interpreter's template (base, as E2B's, has none).
    ci = Sandbox.create("code-interpreter-v1", timeout=60)
    try:
        java = run(ci, "java -XX:+PrintFlagsFinal -version 2>/dev/null | "
                       "awk '$2 == \"MaxHeapSize\" {print $4}'")
    finally:
        ci.kill()
    heap = int(java.stdout.strip())
    print(f"JVM max heap {heap >> 20} MiB")
    assert 0 < heap <= 512 << 20, "the JVM sized its heap from the host's memory"


def _enforced_from_the_host(sid):
    """(CPUs of the cgroup's quota, its memory limit in bytes), read on the host (v2 or v1)."""
    v2 = Path(f"/sys/fs/cgroup/sbx/{sid}")
    if (v2 / "cpu.max").exists():
        quota, period = (v2 / "cpu.max").read_text().split()
        memory = (v2 / "memory.max").read_text()
    else:
        cpu = Path(f"/sys/fs/cgroup/cpu/sbx/{sid}")
        quota, period = (cpu / "cpu.cfs_quota_us").read_text(), (cpu / "cpu.cfs_period_us").read_text()
        memory = Path(f"/sys/fs/cgroup/memory/sbx/{sid}/memory.limit_in_bytes").read_text()
    return int(quota) / int(period), int(memory)


# Inside: the cgroup's quota and limit as the sandbox reads them, nproc, MemTotal and `df /`.
INSIDE = (
    "if [ -e /sys/fs/cgroup/cpu.max ]; then read q p < /sys/fs/cgroup/cpu.max;"
    " m=$(cat /sys/fs/cgroup/memory.max); else q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us);"
    " p=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us);"
    " m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); fi;"
    " echo $q $p $m $(nproc) $(awk '/^MemTotal/ {print $2 * 1024}' /proc/meminfo)"
    " $(df -B1 --output=size,used / | tail -n1)"
)


def _check_reported_is_enforced(daemon, sbx, cpus, memory_mb, disk_mb):
    sid = sbx.sandbox_id
    info = sbx.get_info()
    listed = [s for s in Sandbox.list(api_key=daemon.api_key, api_url=daemon.url).next_items()
              if s.sandbox_id == sid]
    detail = {}
    for path in (f"/sandboxes/{sid}", "/v2/sandboxes?limit=100"):
        status, _, body = daemon.request("GET", path)
        assert status == 200, body
        got = json.loads(body)
        got = got if isinstance(got, dict) else next(s for s in got if s["sandboxID"] == sid)
        detail[path] = (got["cpuCount"], got["memoryMB"], got["diskSizeMB"])
    metrics = sbx.get_metrics()[-1]
    q, p, m, nproc, mem_total, df_size, df_used = map(int, run(sbx, INSIDE).stdout.split())
    print(f"{sid}: info {info.cpu_count}/{info.memory_mb}, api {detail}, metrics {metrics}, "
          f"inside quota {q}/{p} memory {m} nproc {nproc} MemTotal {mem_total} df {df_size}/{df_used}")
    assert (info.cpu_count, info.memory_mb) == (cpus, memory_mb)
    assert [(s.cpu_count, s.memory_mb) for s in listed] == [(cpus, memory_mb)]
    assert set(detail.values()) == {(cpus, memory_mb, disk_mb)}
    assert _enforced_from_the_host(sid) == (cpus, memory_mb << 20)
    assert (q / p, m, nproc, mem_total) == (cpus, memory_mb << 20, cpus, memory_mb << 20)
    assert (metrics.cpu_count, metrics.mem_total) == (cpus, memory_mb << 20)
    assert metrics.disk_total == df_size == disk_mb << 20
    # What the disk holds, as df counts it (ext4's metadata too); a quiet sandbox, measured
    # a moment apart.
    assert abs(metrics.disk_used - df_used) < 1 << 20, (metrics.disk_used, df_used)


@pytest.mark.timeout(180)
def test_reported_resources_are_the_enforced_ones(sbx_daemon, tmp_path, monkeypatch):
    """getInfo, list and metrics report the CPUs, memory and disk a sandbox has: its cgroup's
    quota and limit (read on the host and inside), nproc and MemTotal inside, and the size
    `df /` shows; with non-default --cpus, --memory-mb and --disk-mb, and across a restart
    with other values, after which the old sandbox keeps (and reports) its own."""
    cpus = min(2, len(os.sched_getaffinity(0)))
    with own_daemon(sbx_daemon, tmp_path, f"--cpus {cpus} --memory-mb 384 --disk-mb 200") as d:
        conn = dict(api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        old = Sandbox.create(timeout=150, **conn)
        _check_reported_is_enforced(d, old, cpus, 384, 200)
        # Writing moves the disk's use, as df sees it.
        run(old, "head -c 30M /dev/zero > ~/blob && sync")
        _check_reported_is_enforced(d, old, cpus, 384, 200)
        monkeypatch.setenv("SBX_SERVE_ARGS", os.environ.get("SBX_SERVE_ARGS", "") +
                           " --cpus 1 --memory-mb 256 --disk-mb 128")
        d.restart()
        _check_reported_is_enforced(d, old, cpus, 384, 200)
        new = Sandbox.create(timeout=60, **conn)
        _check_reported_is_enforced(d, new, 1, 256, 128)
