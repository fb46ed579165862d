"""Limits of a sandbox that need the full template (pip, npm, the code interpreter): the
reduced capability set still runs everyday tools, and OOM kills are reported as such.
The runtime side of these bounds is in tests/security/test_host_bounds.py."""

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from e2b import CommandExitException, Sandbox

from conftest import own_daemon
from helpers import wait_for


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


@pytest.mark.code_interpreter
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
    """/proc/meminfo, cpuinfo, stat, uptime and loadavg, nproc, os.cpu_count() and
    /sys/fs/cgroup report the sandbox's limits (512 MiB, 1 CPU on the test daemon), not the
    host's. It runs in the cgroup v2 VM lane too (scripts/vm/run.sh)."""
    r = run(sandbox, "grep MemTotal /proc/meminfo; nproc; python3 -c 'import os; print(os.cpu_count())';"
                     " free -m | awk '/^Mem:/ {print $2}'; awk '{print ($1 < 3600)}' /proc/uptime;"
                     " grep -c ^processor /proc/cpuinfo; grep -c '^cpu[0-9]' /proc/stat;"
                     " cut -d' ' -f4 /proc/loadavg;"
                     " python3 -c 'import os; os.sched_setaffinity(0, range(64));"
                     " print(len(os.sched_getaffinity(0)))'")
    lines = r.stdout.split("\n")
    print(r.stdout)
    assert lines[0].split()[1] == str(512 * 1024), lines[0]
    assert lines[1:4] == ["1", "1", "512"]
    assert lines[4] == "1", "uptime is the sandbox's, not the host's"
    assert lines[5] == "1", "/proc/cpuinfo lists the host's CPUs"
    assert lines[6] == "1", "/proc/stat lists the host's CPUs"
    # Runnable/total tasks: the sandbox's few, not the host's.
    tasks = int(lines[7].split("/")[1])
    host_tasks = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    assert tasks < min(50, host_tasks), (lines[7], host_tasks)
    # The sandbox's cpuset holds it to one CPU even when it asks for every CPU.
    assert lines[8] == "1", "a sandbox widened its CPU affinity past its cpuset"
    cg = run(sandbox, "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
                      "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert cg.stdout.strip() == str(512 << 20), cg.stdout
    # Read-only: the limits are the host's to set, even for sandbox root.
    w = run(sandbox, "for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes;"
                     " do [ -e $f ] && echo 1 > $f; done", user="root")
    assert w.exit_code != 0 and "Read-only file system" in w.stderr, w.stderr


@pytest.mark.code_interpreter
def test_the_jvm_sizes_its_heap_from_the_sandbox(sandbox_factory):
    """The JVM is in the code interpreter's template (base, as E2B's, has none)."""
    ci = sandbox_factory(template="code-interpreter-v1", timeout=60)
    java = run(ci, "java -XX:+PrintFlagsFinal -version 2>/dev/null | "
                   "awk '$2 == \"MaxHeapSize\" {print $4}'")
    heap = int(java.stdout.strip())
    print(f"JVM max heap {heap >> 20} MiB")
    assert 0 < heap <= 512 << 20, "the JVM sized its heap from the host's memory"


# One cell per kernel of the code interpreter, and what each shows when it works.
SIX_KERNELS = {
    "python": ("x = 1; x + 1", "2"),
    "javascript": ("1 + 1", "2"),
    "typescript": ("const n: number = 2; n", "2"),
    "r": ("1 + 1", "[1] 2"),
    "java": ("1 + 1", "2"),
    "bash": ("echo 2", "2"),
}


def _kernel_outcome(language, ex, seconds):
    """Each kernel in a full 512 MiB sandbox either works or says it ran out of memory; the
    times are printed for the report (the machine is shared: no timing is asserted)."""
    want = SIX_KERNELS[language][1]
    got = "".join(ex.logs.stdout).strip() if language == "bash" else (
        ex.results[0].text if ex.results else None)
    print(f"{language}: {seconds:.1f} s, {got!r}, error {ex.error and ex.error.value}")
    if ex.error is not None:
        assert "out of memory" in f"{ex.error.name} {ex.error.value}", (language, ex.error)
    else:
        assert got == want, (language, got)


# The sandbox's peak memory in MiB and CPU time in seconds so far, as its cgroup counts them.
USAGE = ("if [ -e /sys/fs/cgroup/memory.peak ]; then p=$(cat /sys/fs/cgroup/memory.peak);"
         " c=$(awk '/^usage_usec/ {print $2 * 1000}' /sys/fs/cgroup/cpu.stat); else"
         " p=$(cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes);"
         " c=$(cat /sys/fs/cgroup/cpuacct/cpuacct.usage); fi; echo $((p >> 20)) $((c / 1000000))")


def _usage(result):
    peak, cpu_ms = map(int, result.stdout.split())
    return f"peak {peak} MiB, {cpu_ms / 1000:.1f} CPU s in all, host load {os.getloadavg()[0]:.1f}"


@pytest.mark.code_interpreter
@pytest.mark.timeout(400)
def test_six_kernels_in_512_mib_one_after_another(sandbox_factory):
    """E2B's suites start every kernel of the code interpreter in one sandbox; at 512 MiB each
    first run either works or fails with "out of memory", none thrashes on."""
    from e2b_code_interpreter import Sandbox as CodeSandbox
    s = sandbox_factory(CodeSandbox, timeout=400)
    start = time.monotonic()
    for language, (code, _) in SIX_KERNELS.items():
        t = time.monotonic()
        ex = s.run_code(code, language=language, timeout=120)
        _kernel_outcome(language, ex, time.monotonic() - t)
    print(f"six kernels one after another: {time.monotonic() - start:.1f} s, "
          f"{_usage(run(s, USAGE))}")


@pytest.mark.code_interpreter
@pytest.mark.timeout(400)
async def test_six_kernels_in_512_mib_at_once(async_sandbox_factory):
    """The same six first runs started together through the async SDK: one CPU and 512 MiB
    for all of them."""
    from e2b_code_interpreter import AsyncSandbox as CodeSandbox
    s = await async_sandbox_factory(CodeSandbox, timeout=400)
    start = time.monotonic()

    async def first_run(language):
        ex = await s.run_code(SIX_KERNELS[language][0], language=language, timeout=120)
        return language, ex, time.monotonic() - start

    for language, ex, seconds in await asyncio.gather(*map(first_run, SIX_KERNELS)):
        _kernel_outcome(language, ex, seconds)
    print(f"six kernels at once: {time.monotonic() - start:.1f} s, "
          f"{_usage(await s.commands.run(USAGE))}")


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


async def test_reported_resources_through_the_async_sdk(async_sandbox):
    """The async SDK's get_info and get_metrics report what the sandbox has (default daemon)."""
    info = await async_sandbox.get_info()
    metrics = (await async_sandbox.get_metrics())[-1]
    r = await async_sandbox.commands.run(INSIDE)
    q, p, m, nproc, mem_total, df_size, _ = map(int, r.stdout.split())
    print(f"info {info.cpu_count}/{info.memory_mb}, metrics {metrics}, inside {r.stdout}")
    assert (info.cpu_count, info.memory_mb << 20) == (q / p, m) == (nproc, mem_total)
    assert (metrics.cpu_count, metrics.mem_total, metrics.disk_total) == (nproc, mem_total, df_size)


def test_sandbox_dirs_come_from_a_stock_and_are_recycled_wiped(sbx_daemon, tmp_path):
    """The sweeper keeps sandbox dirs with a copy of the blank disk ready (disks/ready/) and
    a create takes one. A destroyed sandbox whose disk the spawner does not keep mounted (one
    that outlived a spawner, below) has its dir go back to the stock with its disk reset to the
    blank's bytes. Every sandbox still gets a disk of its own, nothing a sandbox wrote reaches
    a later one, and a disk someone still holds open is removed, not recycled. What no create
    can take any more (a blank that is gone) is removed."""
    with own_daemon(sbx_daemon, tmp_path,
                    "--pool base=0 --pool code-interpreter-v1=0 --disk-mb 64") as d:
        conn = dict(api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        ready = Path(d.state_dir, "disks", "ready")
        blank = Path(d.state_dir, "disks", "blank-67108864-sandbox.ext4").read_bytes
        sbx_dir = lambda s: Path(d.state_dir, "sandboxes", s.sandbox_id)

        def stock():  # the ready dirs by inode; not one the sweeper is still filling (.new)
            out = {}
            for p in ready.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if not p.name.startswith("."):
                        out[p.stat().st_ino] = p
            return out

        first = Sandbox.create(timeout=120, **conn)  # the first create formats the blank
        # Four new ones; recycled dirs may fill it to eight.
        assert wait_for(lambda: ready.is_dir() and len(stock()) == 4, 20)
        before = stock()
        assert all((p / "disk.img").read_bytes() == blank() for p in before.values())
        sbs = [Sandbox.create(timeout=120, **conn) for _ in range(3)]
        dirs = [sbx_dir(s).stat().st_ino for s in sbs]
        assert len(set(dirs)) == 3 and set(dirs) <= set(before)
        assert wait_for(lambda: len(stock()) == 4, 20)  # refilled
        # Each disk is its own: a file written in one sandbox is in no other.
        run(sbs[0], "head -c 4M /dev/urandom > ~/mine; sync")
        assert [run(s, "ls ~/mine 2>/dev/null || echo none").stdout for s in sbs] == [
            "/home/user/mine\n", "none\n", "none\n"]
        # A new spawner holds none of their disks' mounts.
        old = d.worker_pid("sbx-spawner")
        os.kill(old, 9)
        assert wait_for(lambda: (d.worker_pid("sbx-spawner") or old) != old, 20)
        assert wait_for(lambda: run(sbs[0], "true").exit_code == 0, 20)
        # A disk someone still holds open (as a loop device would) is not recycled but
        # removed with its dir, though the stock has room (recycled dirs fill it to 8).
        used, held = dirs[0], sbx_dir(sbs[1])
        held_fd = os.open(held / "disk.img", os.O_RDWR)
        try:
            sbs[1].kill()
            assert wait_for(lambda: os.fstat(held_fd).st_nlink == 0, 20)
            assert dirs[1] not in stock()
        finally:
            os.close(held_fd)
        # Otherwise, killed, its dir comes back to the stock, its disk the blank's bytes again.
        sbs[0].kill()
        assert wait_for(lambda: used in stock(), 20)
        assert (stock()[used] / "disk.img").read_bytes() == blank()
        # The sandbox that gets the recycled dir starts on an empty disk.
        later = []
        while not any(sbx_dir(s).stat().st_ino == used for s in later):
            assert len(later) < 9
            later.append(Sandbox.create(timeout=120, **conn))
        again = next(s for s in later if sbx_dir(s).stat().st_ino == used)
        assert run(again, "ls ~/mine 2>/dev/null || echo none").stdout == "none\n"
        for s in later:  # their disks are kept mounted (the next test), not stocked
            s.kill()
        # Stock of a blank made anew or removed (and an image of the earlier layout) is never
        # taken, and goes at the next fill.
        assert wait_for(lambda: len(stock()) >= 4, 20)
        (ready / "blank-1-sandbox.ext4.1.d0").mkdir()
        (ready / "blank-1-sandbox.ext4.1.0").write_bytes(b"")
        n0, killed = len(stock()) - 2, [sbs[2], first]
        for s in killed:
            s.kill()
        assert wait_for(lambda: not any(p.name.startswith("blank-1-") for p in ready.iterdir()),
                        20)
        assert wait_for(lambda: len(stock()) == min(8, n0 + len(killed)), 20)


def _host_pids(sandbox_id):
    """Host pids of the sandbox's processes (by their cgroup, v1 or v2)."""
    out = []
    for p in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if p.name.isdigit() and f"/sbx/{sandbox_id}\n" in (p / "cgroup").read_text():
                out.append(int(p.name))
    return out


@pytest.mark.skipif(tuple(map(int, os.uname().release.split(".")[:2])) < (6, 15),
                    reason="disks are kept mounted only where overlayfs takes layers by fd "
                           "(Linux 6.15)")
def test_a_disk_stays_mounted_and_is_emptied_for_the_next_sandbox(sbx_daemon, tmp_path):
    """A destroyed sandbox's disk stays mounted, its dir in disks/kept/, and once the sweeper
    has emptied it, it serves the next sandbox of its size: the same image, but nothing of
    the earlier sandbox is left on it (its files, the mode it gave /, the space it used). A
    disk of which something still holds a file is not used again: it goes, with its dir."""
    with own_daemon(sbx_daemon, tmp_path,
                    "--pool base=0 --pool code-interpreter-v1=0 --disk-mb 64") as d:
        conn = dict(api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        kept = Path(d.state_dir, "disks", "kept")
        img = lambda s: Path(d.state_dir, "sandboxes", s.sandbox_id, "disk.img")
        state = "ls /home/user/mine 2>/dev/null || echo none; stat -c %a /; " \
                "df -k / | awk 'NR==2 {print $3}'"
        a = Sandbox.create(timeout=120, **conn)
        fresh = run(a, state).stdout.split()
        assert fresh[:2] == ["none", "755"]
        run(a, "head -c 4M /dev/urandom > /home/user/mine && chmod 700 / && sync", user="root")
        assert run(a, state, user="root").stdout.split()[:2] == ["/home/user/mine", "700"]
        ino = img(a).stat().st_ino
        a.kill()
        assert wait_for(lambda: len(list(kept.iterdir())) == 1, 20)
        time.sleep(1)  # the sweeper empties it meanwhile
        later = []
        while not any(img(s).stat().st_ino == ino for s in later):
            assert len(later) < 5
            later.append(Sandbox.create(timeout=120, **conn))
        b = next(s for s in later if img(s).stat().st_ino == ino)
        assert run(b, state).stdout.split() == fresh
        # Something holds a file of b's disk (through b's root, as an fd left in flight in a
        # unix socket might): once b is gone, its disk is removed, not used again.
        run(b, "echo held > /home/user/held")
        held = os.open(f"/proc/{_host_pids(b.sandbox_id)[0]}/root/home/user/held", os.O_RDONLY)
        image = os.open(img(b), os.O_RDONLY)
        try:
            b.kill()
            assert wait_for(lambda: os.fstat(image).st_nlink == 0, 20)
            assert os.pread(held, 4, 0) == b"held"
        finally:
            os.close(held)
            os.close(image)
        assert all(s.stat().st_ino != ino for s in kept.iterdir())
