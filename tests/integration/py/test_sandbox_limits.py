"""Limits of a sandbox that need the full template (pip, npm, the code interpreter): the
reduced capability set still runs everyday tools, and OOM kills are reported as such.
The runtime side of these bounds is in tests/security/test_host_bounds.py."""

import shlex
import textwrap

from e2b import CommandExitException


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
    java = run(sandbox, "java -XX:+PrintFlagsFinal -version 2>/dev/null | awk '$2 == \"MaxHeapSize\" {print $4}'")
    heap = int(java.stdout.strip())
    print(f"JVM max heap {heap >> 20} MiB")
    assert 0 < heap <= 512 << 20, "the JVM sized its heap from the host's memory"
