"""What the kernels show and how they run, as in E2B's code interpreter (issue 12), through the
official e2b-code-interpreter SDK, sync and async. The expected stdout chunks, result texts
and event order are those E2B's own suites (e2b-dev/code-interpreter python/tests, js/tests)
assert, plus what a user of those kernels relies on beyond them.

- JavaScript and TypeScript: one kernel (src/jupyter/javascript), the last expression's value
  is the main result (awaited), top-level await, ES imports, types stripped unchecked.
- Java: sandbox-wide env vars are system properties too; one stdout message per print call.
- Pillow: image.show() and image.save(path) display the image as a PNG.
- Kernels run as sandbox root with cwd /home/user; a context may use any existing directory.
"""

import textwrap
import time

import pytest

from e2b import SandboxException, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox

from conftest import run_anyway


@pytest.fixture(scope="module")
def shared(sbx_daemon):
    """One sandbox for the tests that each work in contexts of their own."""
    s = Sandbox.create(timeout=900)
    yield s
    Sandbox.kill(s.sandbox_id)


@pytest.fixture
def js(shared):
    """A fresh JavaScript context of the shared sandbox, removed after the test (each Node
    kernel holds tens of MiB)."""
    ctx = shared.create_code_context(language="js")
    yield lambda code, **kw: shared.run_code(code, context=ctx, **kw)
    shared.remove_code_context(ctx)


@pytest.fixture
def ci(sandbox_factory):
    return sandbox_factory(sandbox_class=Sandbox, timeout=300)


@pytest.fixture
async def aci(async_sandbox_factory):
    return await async_sandbox_factory(sandbox_class=AsyncSandbox, timeout=300)


def texts(execution):
    return [(r.text, r.is_main_result) for r in execution.results]


# -- JavaScript and TypeScript ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_js_e2b_default_kernel_suite(ci):
    """E2B's test_default_kernels and test_cwd, JavaScript and TypeScript parts."""
    assert ci.run_code("console.log('Hello, World!')", language="js").logs.stdout == \
        ["Hello, World!\n"]
    ex = ci.run_code("\n    import { readFileSync } from 'fs'\n    console.log(typeof readFileSync)\n"
                     "    ", language="js")
    assert ex.error is None and ex.logs.stdout == ["function\n"]
    ex = ci.run_code("\n    await Promise.resolve('Hello World!')\n    ", language="js")
    assert ex.text == "Hello World!"
    assert texts(ex) == [("Hello World!", True)] and ex.logs.stdout == []
    ex = ci.run_code("const message: string = 'Hello, World!'; console.log(message)",
                     language="ts")
    assert ex.logs.stdout == ["Hello, World!\n"]
    assert ci.run_code("process.cwd()", language="js").text == "/home/user"
    assert ci.run_code("process.cwd()", language="ts").text == "/home/user"
    # As root, like every kernel (test_kernels_run_as_root_in_home_user).
    assert ci.run_code("process.getuid()", language="js").text == "0"


def test_js_last_expression_is_the_main_result(js):
    ex = js("1 + 2")
    assert ex.text == "3" and texts(ex) == [("3", True)] and ex.logs.stdout == []
    assert ex.results[0].formats() == ["text"]
    # undefined shows nothing (E2B starts its kernel with --hide-undefined); null does.
    assert js("undefined").results == []
    assert js("let declared = 1").results == []
    assert js("null").text == "null"
    # Objects as util.inspect prints them; strings lose their quotes, whichever Node chose.
    assert js("({ a: 1, b: 'x', c: [1, 2] })").text == "{ a: 1, b: 'x', c: [ 1, 2 ] }"
    assert js("'bar'").text == "bar"
    assert js("\"it's\"").text == "it's"
    # A printed value and a result are each where they belong, in one execution.
    ex = js("console.log('printed'); 40 + 2")
    assert ex.logs.stdout == ["printed\n"] and ex.text == "42"
    assert ex.execution_count == js("1").execution_count - 1


def test_js_top_level_await_keeps_declarations(js):
    ex = js("const a = 20\nconst b = await Promise.resolve(a + 1)\n"
            "function twice(x) { return 2 * x }\nclass Box { constructor(v) { this.v = v } }\n"
            "twice(b)")
    assert ex.error is None and ex.text == "42"
    # Everything the cell declared, before and after its first await, is there afterwards.
    assert js("[a, b, twice(1), new Box(3).v]").text == "[ 20, 21, 2, 3 ]"
    # A promise left as the value is awaited too; an assignment is not a value.
    assert js("Promise.resolve('resolved')").text == "resolved"
    assert js("b = await Promise.resolve(7)").results == []
    assert js("b").text == "7"
    ex = js("await new Promise((resolve) => setTimeout(resolve, 200)); 'later'")
    assert ex.text == "later"
    err = js("await Promise.reject(new TypeError('nope'))").error
    assert (err.name, err.value) == ("TypeError", "nope")


def test_js_imports_and_require(js):
    ex = js("import fs from 'fs'\nimport * as path from 'path'\n"
            "[typeof fs.readFileSync, path.join('a', 'b')]")
    assert ex.error is None and ex.text == "[ 'function', 'a/b' ]"
    assert js("require('os').platform()").text == "linux"
    # Modules resolve from the working directory, as in `node -e`, not from the kernel's
    # (zeromq is one of the kernel's; Debian's npm brings @babel/core system-wide).
    err = js("require('zeromq')").error
    assert err is not None and "Cannot find module 'zeromq'" in err.value


def test_ts_types_are_stripped_not_checked(js):
    ex = js("interface Point { x: number; y: number }\n"
            "const p: Point = { x: 1, y: 2 }\nconst wrong: number = 'not a number' as any\n"
            "enum Color { Red, Green }\n[p.x + p.y, wrong, Color.Green]")
    assert ex.error is None, ex.error
    assert ex.text == "[ 3, 'not a number', 1 ]"
    # A type error is no error: the code runs as JavaScript.
    ex = js("const n: number = 'five'; n")
    assert ex.error is None and ex.text == "five"


def test_js_errors(js):
    err = js("throw new Error('bad')").error
    assert (err.name, err.value) == ("Error", "bad")
    assert err.traceback.startswith("evalmachine.<anonymous>") and "Error: bad" in err.traceback
    assert "node:vm" not in err.traceback and "/usr/lib/sbx" not in err.traceback
    err = js("let x: = 1").error
    assert err.name == "SyntaxError" and err.value.startswith("Unexpected token")
    assert "let x: = 1" in err.traceback
    err = js("throw 'a string'").error
    assert (err.name, err.value) == ("string", "'a string'")
    # Errors are data: the very next run works.
    assert js("console.log('after')").logs.stdout == ["after\n"]


def test_js_rich_results(js):
    ex = js("$$.html('<b>hi</b>')")
    assert [(r.html, r.is_main_result) for r in ex.results] == [("<b>hi</b>", True)]
    ex = js("({ _toHtml: () => '<i>obj</i>', toString() { return 'obj' } })")
    r = ex.results[0]
    assert r.is_main_result and r.html == "<i>obj</i>" and r.text.startswith("{")
    ex = js("$$.display().svg('<svg/>'); 5")
    assert [(r.svg, r.text, r.is_main_result) for r in ex.results] == \
        [("<svg/>", None, False), (None, "5", True)]
    ex = js("$$.async(); setTimeout(() => $$.done({ late: true }), 200)")
    assert ex.text == "{ late: true }"


def test_js_output_streams_while_the_cell_awaits(js):
    seen = []
    ex = js("console.log('first'); console.error('oops')\n"
            "await new Promise((resolve) => setTimeout(resolve, 1500))\nconsole.log('second')",
            on_stdout=lambda m: seen.append((time.monotonic(), m.line)))
    assert ex.logs.stdout == ["first\n", "second\n"]
    assert ex.logs.stderr == ["oops\n"]
    assert [line for _, line in seen] == ["first\n", "second\n"]
    assert seen[1][0] - seen[0][0] > 1.0, seen
    # What one tick writes is one message.
    assert js("for (let i = 0; i < 3; i++) console.log(i)").logs.stdout == ["0\n1\n2\n"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_js_output_flood_is_bounded(js):
    # 100,000 lines arrive whole and in order.
    ex = js("for (let i = 0; i < 100000; i++) console.log(i)", timeout=120)
    out = "".join(ex.logs.stdout)
    assert out == "".join(f"{i}\n" for i in range(100000))
    # Code that prints 64 MiB without yielding cannot make the kernel hold all of it: beyond
    # 32 MiB waiting to be sent, output is dropped, and the cell says how much.
    ex = js("const line = 'x'.repeat(1023)\n"
            "for (let i = 0; i < 65536; i++) console.log(line)\n'printed'", timeout=240)
    sent = sum(len(s) for s in ex.logs.stdout)
    print(f"sent {sent} of {65536 * 1024} bytes; stderr {ex.logs.stderr}")
    assert 16 << 20 < sent <= 34 << 20
    assert ex.text == "printed"
    assert len(ex.logs.stderr) == 1 and ex.logs.stderr[0].endswith(
        "bytes of output were dropped: they were written faster than the kernel could send "
        "them]\n")
    assert js("1 + 1").text == "2"


def test_js_interrupt_stops_the_cell_and_keeps_the_state(js):
    js("let kept = 5")
    with pytest.raises(TimeoutException):
        js("while (true) {}", timeout=3)
    assert js("kept + 1", timeout=20).text == "6"
    with pytest.raises(TimeoutException):
        js("await new Promise(() => {})", timeout=3)
    assert js("kept", timeout=20).text == "5"


@pytest.mark.timeout(120)
def test_js_env_vars(sbx_daemon):
    """E2B's env_vars/test_js: sandbox-wide, per execution, overwritten then restored."""
    sbx = Sandbox.create(timeout=120, envs={"TEST_ENV_VAR": "supertest"})
    try:
        for lang in ("javascript", "typescript"):
            assert sbx.run_code("process.env.TEST_ENV_VAR", language=lang).text == "supertest"
            ex = sbx.run_code("process.env.TEST_ENV_VAR", language=lang,
                              envs={"TEST_ENV_VAR": "overwrite"})
            assert ex.text == "overwrite"
            assert sbx.run_code("process.env.TEST_ENV_VAR", language=lang).text == "supertest"
            assert sbx.run_code("process.env.FOO", envs={"FOO": "bar"}, language=lang).text == \
                "bar"
            assert sbx.run_code("process.env.FOO || 'default'", language=lang).text == "default"
    finally:
        sbx.kill()


@pytest.mark.timeout(120)
async def test_js_async_sdk(aci):
    """E2B's async test_default_kernels, JavaScript and TypeScript parts."""
    ex = await aci.run_code("console.log('Hello, World!')", language="js")
    assert ex.logs.stdout == ["Hello, World!\n"]
    ex = await aci.run_code("\n    import { readFileSync } from 'fs'\n"
                            "    console.log(typeof readFileSync)\n    ", language="js")
    assert ex.logs.stdout == ["function\n"]
    ex = await aci.run_code("\n    await Promise.resolve('Hello World!')\n    ", language="js")
    assert ex.text == "Hello World!"
    ex = await aci.run_code(
        "const message: string = 'Hello, World!'; console.log(message);", language="ts")
    assert ex.logs.stdout == ["Hello, World!\n"]
    ctx = await aci.create_code_context(language="ts", cwd="/root")
    assert (await aci.run_code("(1 as number) + 2", context=ctx)).text == "3"
    assert (await aci.run_code("process.cwd()", context=ctx)).text == "/root"


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
