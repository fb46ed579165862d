"""What the kernels show and how they run, as in E2B's code interpreter (issue 12), through the
official e2b-code-interpreter SDK, sync and async. The expected stdout chunks, result texts
and event order are those E2B's own suites (e2b-dev/code-interpreter python/tests, js/tests)
assert, plus what a user of those kernels relies on beyond them.

- Kernels run as sandbox root with cwd /home/user; a context may use any existing directory.
"""

import pytest

from e2b import SandboxException
from e2b_code_interpreter import AsyncSandbox, Sandbox

from conftest import run_anyway


@pytest.fixture
def ci(sandbox_factory):
    return sandbox_factory(sandbox_class=Sandbox, timeout=300)


@pytest.fixture
async def aci(async_sandbox_factory):
    return await async_sandbox_factory(sandbox_class=AsyncSandbox, timeout=300)


# -- users and working directories ------------------------------------------------------------


@pytest.mark.timeout(180)
def test_kernels_run_as_root_in_home_user(ci):
    """E2B runs Jupyter and its kernels as root with cwd /home/user; commands stay `user`."""
    assert ci.run_code("import os; (os.getuid(), os.getcwd())").text == "(0, '/home/user')"
    assert "".join(ci.run_code("!whoami").logs.stdout).strip() == "root"
    assert "".join(ci.run_code("whoami; pwd", language="bash").logs.stdout) == \
        "root\n/home/user\n"
    assert ci.commands.run("whoami").stdout == "user\n"
    # Files a kernel writes in /home/user are root's, as on E2B, and readable by user.
    ci.run_code("open('/home/user/from_kernel.txt', 'w').write('k')")
    r = run_anyway(ci, "stat -c %U /home/user/from_kernel.txt && cat /home/user/from_kernel.txt")
    assert r.stdout == "root\nk"


@pytest.mark.timeout(120)
def test_context_with_cwd_root(ci):
    """E2B's test_create_context_with_options: cwd /root (refused before, 500)."""
    ctx = ci.create_code_context(language="python", cwd="/root")
    last = ci.list_code_contexts()[-1]
    assert (last.id, last.language, last.cwd) == (ctx.id, "python", "/root")
    assert ci.run_code("import os; os.getcwd()", context=ctx).text == "/root"
    bash = ci.create_code_context(language="bash", cwd="/root")
    assert "".join(ci.run_code("pwd", context=bash).logs.stdout) == "/root\n"
    # Env vars per run and sandbox-wide still reach such a context.
    ex = ci.run_code("import os; os.environ['E2B_SANDBOX'], os.environ.get('RUN_V')",
                     context=ctx, envs={"RUN_V": "r"})
    assert ex.text == "('true', 'r')"
    # A directory that does not exist is an error the caller sees.
    with pytest.raises(SandboxException) as e:
        ci.create_code_context(cwd="/no/such/dir")
    assert "/no/such/dir" in str(e.value) and "does not exist" in str(e.value)


@pytest.mark.timeout(120)
async def test_context_with_cwd_root_async(aci):
    ctx = await aci.create_code_context(language="python", cwd="/root")
    last = (await aci.list_code_contexts())[-1]
    assert (last.id, last.cwd) == (ctx.id, "/root")
    ex = await aci.run_code("from pathlib import Path; print(Path.cwd())", context=ctx)
    assert ex.logs.stdout == ["/root\n"]


@pytest.mark.timeout(120)
def test_kernel_connection_files_are_roots_only(ci):
    """The kernels' HMAC keys are sandbox root's: a command as `user` cannot read them and
    drive a root kernel."""
    ci.run_code("1")
    r = run_anyway(ci, "cat /run/sbx-kernels/$(ls /run/sbx-kernels | head -1)/connection.json")
    assert r.exit_code != 0 and "Permission denied" in r.stderr, (r.stdout, r.stderr)
    r = ci.commands.run("stat -c '%U %a' /run/sbx-kernels/*/", user="root")
    for line in r.stdout.split():
        if line.isdigit():
            assert int(line, 8) & 0o077 == 0, r.stdout  # nothing for group and others
        else:
            assert line == "root", r.stdout
