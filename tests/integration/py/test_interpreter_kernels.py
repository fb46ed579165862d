"""What the kernels show and how they run, as in E2B's code interpreter (issue 12), through the
official e2b-code-interpreter SDK, sync and async. The expected stdout chunks, result texts
and event order are those E2B's own suites (e2b-dev/code-interpreter python/tests, js/tests)
assert, plus what a user of those kernels relies on beyond them.

- Java: sandbox-wide env vars are system properties too; one stdout message per print call.
- Pillow: image.show() and image.save(path) display the image as a PNG.
- Kernels run as sandbox root with cwd /home/user; a context may use any existing directory.
"""

import textwrap

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


def texts(execution):
    return [(r.text, r.is_main_result) for r in execution.results]


# -- Java --------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_java_stdout_one_message_per_print(ci):
    """E2B's test_java_kernel: println's text and line end arrive as two messages."""
    ex = ci.run_code('System.out.println("Hello, World!")', language="java")
    assert ex.error is None
    assert ex.logs.stdout == ["Hello, World!", "\n"]
    assert ex.logs.stdout[0] == "Hello, World!"
    ex = ci.run_code('System.out.print("a"); System.out.print(1); System.err.println("e");',
                     language="java")
    assert ex.logs.stdout == ["a", "1"] and ex.logs.stderr == ["e", "\n"]


@pytest.mark.timeout(240)
def test_java_env_vars_are_system_properties(sbx_daemon):
    """E2B's env_vars/test_java, and the same in a second context and after a restart."""
    sbx = Sandbox.create(timeout=240, envs={"TEST_ENV_VAR": "supertest"})
    try:
        ex = sbx.run_code('System.getProperty("TEST_ENV_VAR")', language="java")
        assert ex.text == "supertest"
        # Setting them was no execution of the user's.
        assert ex.execution_count == 1
        # Still environment variables too.
        assert sbx.run_code('System.getenv("TEST_ENV_VAR")', language="java").text == \
            "supertest"
        ex = sbx.run_code('System.getProperty("TEST_ENV_VAR")', language="java",
                          envs={"TEST_ENV_VAR": "overwrite"})
        assert ex.text == "overwrite"
        assert sbx.run_code('System.getProperty("TEST_ENV_VAR")', language="java").text == \
            "supertest"
        assert sbx.run_code('System.getProperty("FOO")', envs={"FOO": "bar"},
                            language="java").text == "bar"
        assert sbx.run_code('System.getProperty("FOO", "default")', language="java").text == \
            "default"
        ctx = sbx.create_code_context(language="java")
        assert sbx.run_code('System.getProperty("TEST_ENV_VAR")', context=ctx).text == \
            "supertest"
        sbx.restart_code_context(ctx)
        ex = sbx.run_code('System.getProperty("TEST_ENV_VAR")', context=ctx)
        assert ex.text == "supertest" and ex.execution_count == 1
    finally:
        sbx.kill()


@pytest.mark.timeout(180)
async def test_java_async_sdk(aci):
    ex = await aci.run_code('System.out.println("Hello, World!")', language="java")
    assert ex.logs.stdout[0] == "Hello, World!" and ex.logs.stdout == ["Hello, World!", "\n"]
    ex = await aci.run_code('System.getProperty("FOO")', envs={"FOO": "bar"}, language="java")
    assert ex.text == "bar"
    ex = await aci.run_code('System.getProperty("FOO", "default")', language="java")
    assert ex.text == "default"
    ex = await aci.run_code('System.getProperty("user.dir")', language="java")
    assert ex.results[0].text == "/home/user"


# -- Pillow ------------------------------------------------------------------------------------

IMAGE = """
    import numpy
    from PIL import Image

    imarray = numpy.random.rand(16,16,3) * 255
    image = Image.fromarray(imarray.astype('uint8')).convert('RGBA')
"""


def _one_png(execution):
    assert execution.error is None, execution.error
    assert len(execution.results) == 1, execution.results
    r = execution.results[0]
    assert r.png and r.png.startswith("iVBORw0KGgo")  # base64 of the PNG signature
    return r


@pytest.mark.timeout(120)
async def test_pillow_show_and_save_display_png(aci):
    """E2B's images/test_images: show(), a bare image and save(path) each give a PNG."""
    ex = await aci.run_code(IMAGE + '\n    image.show()\n    print("Image shown.")\n')
    r = _one_png(ex)
    assert not r.is_main_result and ex.logs.stdout == ["Image shown.\n"]
    assert ex.logs.stderr == []
    ex = await aci.run_code(IMAGE + "\n    image\n")
    assert _one_png(ex).is_main_result
    ex = await aci.run_code(IMAGE + '\n    image.save("test.png")\n    print("Image saved.")\n')
    assert not _one_png(ex).is_main_result and ex.logs.stdout == ["Image saved.\n"]
    # No viewer was started: nothing of one reaches a later cell.
    ex = await aci.run_code("import time; time.sleep(1); print('next')")
    assert ex.logs.stdout == ["next\n"] and ex.logs.stderr == []
    assert (await aci.files.read("/home/user/test.png", format="bytes"))[:4] == b"\x89PNG"


@pytest.mark.timeout(120)
def test_pillow_sync_sdk(ci):
    ex = ci.run_code(textwrap.dedent(IMAGE) + "image.convert('P').show()\n")
    _one_png(ex)
    # Saving to a file object, or Pillow's own PNG encoding, displays nothing.
    ex = ci.run_code("import io\nbuf = io.BytesIO()\nimage.save(buf, 'PNG')\nlen(buf.getvalue()) > 0")
    assert texts(ex) == [("True", True)]


# -- users and working directories ------------------------------------------------------------


@pytest.mark.timeout(180)
def test_kernels_run_as_root_in_home_user(ci):
    """E2B runs Jupyter and its kernels as root with cwd /home/user; commands stay `user`."""
    assert ci.run_code("import os; (os.getuid(), os.getcwd())").text == "(0, '/home/user')"
    assert "".join(ci.run_code("!whoami").logs.stdout).strip() == "root"
    assert "".join(ci.run_code("whoami; pwd", language="bash").logs.stdout) == \
        "root\n/home/user\n"
    assert ci.run_code('System.getProperty("user.name")', language="java").text == "root"
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
