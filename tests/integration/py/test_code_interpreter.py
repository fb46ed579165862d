"""The code interpreter (run_code, contexts) through the official e2b-code-interpreter SDK.

Real kernels run inside each sandbox: ipykernel (Python), bash_kernel, sbx's JavaScript and
TypeScript kernel, IRkernel (R) and sbx's Java kernel, as installed by scripts/setup.sh. What
each kernel shows, as E2B's do, is in test_interpreter_kernels.py.
"""

import json
import os
import re
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import own_daemon
from e2b import InvalidArgumentException, NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox
from helpers import http_request

JUPYTER_PORT = 49999
UNAUTHORIZED = b"unauthorized: missing or invalid access token"
MAX_CONTEXTS = int(re.search(
    r"#define SBX_INTERP_MAX_CONTEXTS (\d+)",
    (Path(__file__).resolve().parents[3] / "src/base/limits.h").read_text()).group(1))


@pytest.fixture
def ci(sandbox_factory):
    return sandbox_factory(sandbox_class=Sandbox, timeout=180)


@pytest.fixture
async def aci(async_sandbox_factory):
    return await async_sandbox_factory(sandbox_class=AsyncSandbox, timeout=180)


def _raw(sbx, method, path, body=None, timeout=60):
    """A request to the sandbox's Jupyter port without the SDK (for bad input)."""
    import httpx

    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(JUPYTER_PORT)}
    if sbx._envd_access_token:
        headers["X-Access-Token"] = sbx._envd_access_token
    url = sbx._jupyter_url + path
    content = body if isinstance(body, (bytes, str)) else None
    return httpx.request(method, url, headers=headers, content=content,
                         json=None if content is not None else body, timeout=timeout)


# -- the quickstart and basic semantics ---------------------------------------------------


def test_quickstart_state_and_count(ci):
    first = ci.run_code("x = 1")
    assert first.error is None
    assert first.execution_count == 1
    ex = ci.run_code("x += 1; x")
    assert ex.text == "2"
    assert ex.execution_count == 2
    assert ex.results[0].is_main_result


def test_stdout_callback_sees_line_while_code_runs(ci):
    seen = []

    def on_stdout(msg):
        seen.append((time.monotonic(), msg.line))

    ex = ci.run_code("import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')",
                     on_stdout=on_stdout)
    assert ex.logs.stdout == ["first\n", "second\n"]
    assert [line for _, line in seen] == ["first\n", "second\n"]
    # The first line arrived while the code slept, not with the second at the end.
    assert seen[1][0] - seen[0][0] > 1.0, seen


def test_stderr_and_timestamp(ci):
    msgs = []
    ex = ci.run_code("import sys; print('oops', file=sys.stderr)", on_stderr=msgs.append)
    assert ex.logs.stderr == ["oops\n"]
    assert msgs[0].error is True and msgs[0].timestamp


def test_error(ci):
    ex = ci.run_code("undefined_name")
    assert ex.error is not None
    assert ex.error.name == "NameError"
    assert ex.error.value == "name 'undefined_name' is not defined"
    assert "undefined_name" in ex.error.traceback
    # Errors are data: the context still works.
    assert ci.run_code("1 + 1").text == "2"


def test_png_html_and_dataframe(ci):
    ex = ci.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
    )
    pngs = [r for r in ex.results if r.png]
    assert len(pngs) == 1 and not pngs[0].is_main_result
    assert pngs[0].png.startswith("iVBORw0KGgo")  # base64 of the PNG signature
    html = ci.run_code("from IPython.display import HTML\nHTML('<b>hi</b>')")
    assert html.results[0].html == "<b>hi</b>"
    df = ci.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    r = df.results[0]
    assert r.is_main_result
    assert "<table" in r.html and "a" in r.text
    assert r.data == {"a": [1, 2], "b": ["x", "y"]}


def test_strings_lose_repr_quotes(ci):
    assert ci.run_code("'hello'").text == "hello"


# -- charts ---------------------------------------------------------------------------------


CHART_PRELUDE = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"


def _chart(ci, code):
    ex = ci.run_code(CHART_PRELUDE + code + "\nplt.show()")
    assert ex.error is None, ex.error
    charts = [r.chart for r in ex.results if r.chart is not None]
    assert len(charts) == 1, ex.results
    return charts[0]


def test_chart_line(ci):
    c = _chart(ci, "ax.plot([1, 2, 3], [4, 5, 6], label='s')\nax.set_title('T')\n"
                   "ax.set_xlabel('time (s)')\nax.set_ylabel('v')")
    assert c.type.value == "line" and c.title == "T"
    assert c.x_label == "time (s)" and c.x_unit == "s" and c.y_label == "v"
    assert c.elements[0].label == "s"
    assert c.elements[0].points == [(1.0, 4.0), (2.0, 5.0), (3.0, 6.0)]
    assert c.x_ticks and c.x_tick_labels and c.x_scale.value == "linear"


def test_chart_scatter(ci):
    c = _chart(ci, "ax.scatter([1, 2], [3, 4], label='pts')")
    assert c.type.value == "scatter"
    assert c.elements[0].label == "pts"
    assert c.elements[0].points == [(1.0, 3.0), (2.0, 4.0)]


def test_chart_bar(ci):
    c = _chart(ci, "ax.bar(['a', 'b'], [3, 4])\nax.set_title('Bars')")
    assert c.type.value == "bar" and c.title == "Bars"
    assert [(e.label, e.value) for e in c.elements] == [("a", 3.0), ("b", 4.0)]


def test_chart_pie(ci):
    c = _chart(ci, "ax.pie([1, 2], labels=['x', 'y'])")
    assert c.type.value == "pie"
    assert [(e.label, e.angle) for e in c.elements] == [("x", 120.0), ("y", 240.0)]


def test_chart_box_and_whisker(ci):
    c = _chart(ci, "ax.boxplot([[1, 2, 3, 4, 5], [1, 3, 5, 7, 9, 30]], labels=['A', 'B'], "
                   "patch_artist=True)")
    assert c.type.value == "box_and_whisker"
    a, b = c.elements
    assert (a.label, a.min, a.first_quartile, a.median, a.third_quartile, a.max) == \
        ("A", 1.0, 2.0, 3.0, 4.0, 5.0)
    assert b.label == "B" and b.outliers == [30.0]


def test_chart_superchart(ci):
    ex = ci.run_code("import matplotlib.pyplot as plt\nfig, (a, b) = plt.subplots(1, 2)\n"
                     "a.plot([1, 2])\nb.bar(['x'], [1])\nfig.suptitle('Both')\nplt.show()")
    c = [r.chart for r in ex.results if r.chart][0]
    assert c.type.value == "superchart" and c.title == "Both"
    assert [e.type.value for e in c.elements] == ["line", "bar"]


# -- contexts -------------------------------------------------------------------------------


def test_contexts_independent_state_cwd_restart_delete_list(ci):
    listed = ci.list_code_contexts()
    assert {c.language for c in listed} >= {"python", "javascript"}
    a = ci.create_code_context(cwd="/tmp")
    b = ci.create_code_context()
    assert a.language == "python" and a.cwd == "/tmp" and b.cwd == "/home/user"
    ids = [c.id for c in ci.list_code_contexts()]
    assert ids[-2:] == [a.id, b.id]
    ci.run_code("v = 'a'", context=a)
    ci.run_code("v = 'b'", context=b)
    assert ci.run_code("v", context=a).text == "a"
    assert ci.run_code("v", context=b).text == "b"
    assert ci.run_code("import os; os.getcwd()", context=a).text == "/tmp"
    ci.restart_code_context(a)
    assert ci.run_code("v", context=a).error.name == "NameError"
    assert ci.run_code("v", context=b).text == "b"
    ci.remove_code_context(b)
    assert b.id not in [c.id for c in ci.list_code_contexts()]
    with pytest.raises(NotFoundException):
        ci.run_code("1", context=b)
    with pytest.raises(NotFoundException):
        ci.remove_code_context(b.id)
    with pytest.raises(NotFoundException):
        ci.restart_code_context("no-such-context")


# -- who may use the interpreter ----------------------------------------------------------


def _as_stranger(sbx, method, path, body=None, headers=None):
    """A request through the daemon that knows only the sandbox id (and maybe a guess)."""
    url = urllib.parse.urlparse(os.environ["E2B_SANDBOX_URL"])
    h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(JUPYTER_PORT),
         "Content-Type": "application/json"}
    h.update(headers or {})
    return http_request(url.hostname, url.port, method, path, body, h)


def test_contexts_need_the_owners_token(ci):
    """Issue 14 (4): with only the sandbox id, DELETE /contexts/<id> deleted the owner's
    context and POST /contexts started kernels at will. Every interpreter route now wants the
    access token (/contexts also the traffic token, all the SDKs send there)."""
    ctx = ci.create_code_context()
    ci.run_code("kept = 42", context=ctx)
    ids_before = [c.id for c in ci.list_code_contexts()]
    attempts = [("GET", "/contexts", None), ("POST", "/contexts", b"{}"),
                ("DELETE", f"/contexts/{ctx.id}", None),
                ("POST", f"/contexts/{ctx.id}/restart", None),
                ("POST", "/execute", json.dumps({"code": "del kept", "context_id": ctx.id}))]
    guesses = [("no token", {}), ("a wrong access token", {"X-Access-Token": "wrong"}),
               ("a wrong traffic token", {"E2B-Traffic-Access-Token": "wrong"}),
               ("the traffic token as access token",
                {"X-Access-Token": ci.traffic_access_token or "none"})]
    for label, headers in guesses:
        for method, path, body in attempts:
            status, _, rbody = _as_stranger(ci, method, path, body, headers)
            print(f"{method} {path} with {label}: {status} {rbody!r}")
            assert (status, rbody) == (401, UNAUTHORIZED)
    # The owner's context and its variable are still there.
    assert [c.id for c in ci.list_code_contexts()] == ids_before
    assert ci.run_code("kept", context=ctx).text == "42"
    # The traffic token opens /contexts, never /execute: only the access token runs code.
    traffic = {"E2B-Traffic-Access-Token": ci.traffic_access_token}
    status, _, rbody = _as_stranger(ci, "GET", "/contexts", None, traffic)
    assert status == 200 and [c["id"] for c in json.loads(rbody)] == ids_before
    status, _, rbody = _as_stranger(ci, "POST", "/execute", json.dumps({"code": "1"}), traffic)
    assert (status, rbody) == (401, UNAUTHORIZED)


def test_health_starts_no_kernel(sandbox):
    """Issue 14 (4): GET /health on port 49999 of a base sandbox started the interpreter and
    its Python kernel. It now answers as E2B's server does, with no side effect; refused
    requests start nothing either."""
    def kernels():
        procs = sandbox.commands.run("ps -e -o comm=").stdout.split()
        print(f"processes: {procs}")
        return [p for p in procs if p.startswith("python")]

    status, _, body = _as_stranger(sandbox, "GET", "/health")
    print(f"GET /health on {JUPYTER_PORT}: {status} {body!r}")
    assert (status, json.loads(body)) == (200, "OK")
    assert kernels() == []
    for method, path in [("GET", "/contexts"), ("POST", "/contexts")]:
        assert _as_stranger(sandbox, method, path, b"{}")[0] == 401
    assert kernels() == []


@pytest.fixture(scope="module")
def roomy_daemon(sbx_daemon, tmp_path_factory):
    """A daemon of its own whose sandboxes have room for MAX_CONTEXTS Python kernels (about
    40 MiB each), so that the context limit, not memory, is what stops them."""
    with own_daemon(sbx_daemon, tmp_path_factory.mktemp("roomy"), "--memory-mb 1536") as d:
        yield d


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_context_count_is_bounded(roomy_daemon):
    url = roomy_daemon.url
    sbx = Sandbox.create(api_key=roomy_daemon.api_key, api_url=url, sandbox_url=url, timeout=200)
    try:
        made = []
        while len(sbx.list_code_contexts()) < MAX_CONTEXTS:
            made.append(sbx.create_code_context())
        with pytest.raises(SandboxException) as e:
            sbx.create_code_context()
        print(f"context {MAX_CONTEXTS + 1}: {e.value}")
        r = _raw(sbx, "POST", "/contexts", {})
        assert (r.status_code, r.text) == (
            429, f"too many contexts: a sandbox holds at most {MAX_CONTEXTS}, remove one first")
        assert r.headers["content-type"].startswith("text/plain")
        # A language's default context, made on its first run, counts as well.
        with pytest.raises(SandboxException) as e:
            sbx.run_code("echo hi", language="bash")
        assert "429" in str(e.value)
        sbx.remove_code_context(made[0])
        assert sbx.run_code("1 + 1", context=sbx.create_code_context()).text == "2"
        assert len(sbx.list_code_contexts()) == MAX_CONTEXTS
    finally:
        sbx.kill()


# -- environment variables ------------------------------------------------------------------


def test_env_vars_sandbox_wide_per_run_and_restored(sbx_daemon):
    sbx = Sandbox.create(timeout=120, envs={"GLOBAL_V": "g", "SHARED_V": "global"})
    try:
        code = "import os; (os.environ.get('GLOBAL_V'), os.environ.get('SHARED_V'), " \
               "os.environ.get('RUN_V'))"
        assert sbx.run_code(code).text == "('g', 'global', None)"
        per_run = sbx.run_code(code, envs={"SHARED_V": "run", "RUN_V": "r"})
        assert per_run.text == "('g', 'run', 'r')"
        assert sbx.run_code(code).text == "('g', 'global', None)"
        ctx = sbx.create_code_context()
        assert sbx.run_code(code, context=ctx).text == "('g', 'global', None)"
        # Per-run env does not bump the execution count.
        assert sbx.run_code("1", context=ctx).execution_count == 2
    finally:
        Sandbox.kill(sbx.sandbox_id)


# -- other languages ------------------------------------------------------------------------


def test_bash(ci):
    ci.run_code("X=5", language="bash")
    ex = ci.run_code("echo $X; pwd; whoami", language="bash", envs={"Y": "it's"})
    assert ex.logs.stdout and "".join(ex.logs.stdout) == "5\n/home/user\nroot\n"
    assert "".join(ci.run_code("echo \"$Y\"", language="bash", envs={"Y": "it's"})
                   .logs.stdout) == "it's\n"


def test_javascript_and_typescript(ci):
    ci.run_code("let x = 41", language="js")
    ex = ci.run_code("console.log(x + 1)", language="javascript")
    assert ex.logs.stdout == ["42\n"]
    ts = ci.run_code("const n: number = 2; console.log(n * 3)", language="ts")
    assert ts.logs.stdout == ["6\n"]
    err = ci.run_code("throw new Error('bad')", language="js")
    assert err.error is not None
    assert ci.run_code("console.log('after')", language="js").logs.stdout == ["after\n"]


def test_r(ci):
    ci.run_code("x <- 20", language="r")
    ex = ci.run_code("x + 1", language="r")
    assert ex.results and ex.results[0].text == "[1] 21"
    assert ci.run_code("stop('boom')", language="r").error is not None


# -- interrupts, kernel death, sandbox death -----------------------------------------------


def test_client_timeout_interrupts_kernel(ci):
    with pytest.raises(TimeoutException):
        ci.run_code("import time; time.sleep(300)", timeout=3)
    start = time.monotonic()
    assert ci.run_code("1 + 1", timeout=10).text == "2"
    assert time.monotonic() - start < 10


def test_kernel_death_is_an_error_and_context_recovers(ci):
    ci.run_code("y = 1")
    ex = ci.run_code("import os; os._exit(1)")
    assert ex.error is not None and ex.error.name == "DeadKernelError"
    again = ci.run_code("1 + 2")
    assert again.text == "3"
    assert ci.run_code("y").error.name == "NameError"  # a fresh kernel


def test_kill_sandbox_mid_execution(ci):
    threading.Timer(2.0, lambda: Sandbox.kill(ci.sandbox_id)).start()
    with pytest.raises(TimeoutException) as e:
        ci.run_code("import time; time.sleep(60)", timeout=30)
    assert "sandbox was killed" in str(e.value)


# -- bad input ------------------------------------------------------------------------------


def test_bad_input(ci):
    with pytest.raises(InvalidArgumentException):
        ci.run_code("1", language="python", context=ci.create_code_context())
    r = _raw(ci, "POST", "/execute", {"code": "1", "context_id": "x", "language": "python"})
    assert r.status_code == 400
    assert r.text == "Only one of context_id or language can be provided"
    r = _raw(ci, "POST", "/execute", {"code": "1", "context_id": "nope"})
    assert r.status_code == 404 and r.text == "Context nope not found"
    with pytest.raises(SandboxException):
        ci.run_code("1", language="cobol")
    r = _raw(ci, "POST", "/execute", b"{not json")
    assert r.status_code == 400
    r = _raw(ci, "POST", "/execute", {"code": 5})
    assert r.status_code == 400
    # Per-run env vars follow create's rule (one validator), named in the answer.
    r = _raw(ci, "POST", "/execute", {"code": "1", "env_vars": {"OK": "1", "A=B": "x"}})
    assert r.status_code == 400 and "invalid environment variable name 'A=B'" in r.text, r.text
    with pytest.raises(SandboxException) as e:
        ci.run_code("1", envs={"": "x"})
    assert "name ''" in str(e.value)
    empty = ci.run_code("")
    assert empty.error is None and empty.results == []


def test_ten_mib_of_code(ci):
    code = "n = 1\n#" + "x" * (10 * 1024 * 1024) + "\nn + 1"
    assert ci.run_code(code, timeout=120).text == "2"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_output_flood_and_invalid_utf8(ci):
    ex = ci.run_code(
        "import sys\nfor i in range(100):\n    sys.stdout.write('x' * 1000000 + '\\n')\n"
        "print('done')", timeout=240)
    assert ex.error is None
    assert sum(len(s) for s in ex.logs.stdout) == 100 * 1000001 + 5
    bad = ci.run_code("import os; os.write(1, b'a\\xff\\xfeb\\n'); print('\\udcff')")
    out = "".join(bad.logs.stdout)
    # fd-level and Python-level output interleave in no fixed order.
    assert "a\ufffd\ufffdb\n" in out and out.count("\ufffd") == 3, repr(out)
    # What a cell writes to fd 1 as its last act belongs to that cell, every time.
    for i in range(30):
        assert ci.run_code(f"os.write(1, b'fd{i}\\n')").logs.stdout == [f"fd{i}\n"]
    # The agent's memory did not keep the flood: the context still answers at once.
    assert ci.run_code("1 + 1").text == "2"


def test_health_inside_sandbox(ci):
    r = ci.commands.run(f"curl -s localhost:{JUPYTER_PORT}/health")
    assert json.loads(r.stdout) == "OK"


# -- async SDK --------------------------------------------------------------------------------


async def test_async_quickstart_contexts_and_callbacks(aci):
    await aci.run_code("x = 1")
    ex = await aci.run_code("x += 1; x")
    assert ex.text == "2" and ex.execution_count == 2
    lines = []

    async def on_stdout(msg):
        lines.append(msg.line)

    await aci.run_code("print('a')\nprint('b')", on_stdout=on_stdout)
    assert "".join(lines) == "a\nb\n"
    ctx = await aci.create_code_context(language="python")
    assert (await aci.run_code("x", context=ctx)).error.name == "NameError"
    await aci.remove_code_context(ctx)
    with pytest.raises(TimeoutException):
        await aci.run_code("import time; time.sleep(60)", timeout=2)
    assert (await aci.run_code("1 + 1", timeout=10)).text == "2"


# -- Java (sbx's JShell kernel on jjava-jupyter) ---------------------------------------------


def test_java(ci):
    ex = ci.run_code("System.out.println(6*7);", language="java")
    assert ex.error is None
    assert ex.logs.stdout == ["42", "\n"]  # one message per print call, as E2B's IJava
    ex = ci.run_code("int x = 20; x + 1", language="java")
    assert ex.error is None
    assert ex.text == "21"
    assert ex.results[0].is_main_result
    # State is kept between runs; a declaration alone has no result; strings print bare.
    assert ci.run_code("x * 2", language="java").text == "40"
    assert ci.run_code("int w = 7;", language="java").results == []
    assert ci.run_code('"it" + "s"', language="java").text == "its"
    assert ci.run_code("List.of(1, 2)", language="java").text == "[1, 2]"  # default imports
    assert ci.run_code('System.getProperty("user.dir")', language="java").text == "/home/user"
    assert ci.run_code('System.getProperty("Y")', language="java",
                       envs={"Y": "it's"}).text == "it's"


def test_java_errors(ci):
    # As E2B's Java kernel (IJava) names them: CompilationException, EvalException.
    err = ci.run_code("int y = undefinedName + 1;", language="java").error
    assert err is not None and err.name == "CompilationException"
    assert "cannot find symbol" in err.value and "undefinedName" in err.value
    # The kernel's own traceback (from iopub, with the source line) wins over the reply's.
    assert "int y = undefinedName + 1;" in err.traceback
    err = ci.run_code("int z = 1;\nz / 0", language="java").error
    assert err is not None and err.name == "EvalException"
    assert err.value == "java.lang.ArithmeticException: / by zero"
    # Statements before the failing one ran; the kernel goes on.
    assert ci.run_code("z", language="java").text == "1"
    err = ci.run_code('throw new IllegalStateException("bad")', language="java").error
    assert err.name == "EvalException" and "IllegalStateException: bad" in err.value
    # The heap is capped below the sandbox's memory limit: the JVM says so, the kernel lives.
    err = ci.run_code("byte[] big = new byte[400_000_000];", language="java").error
    assert err.name == "EvalException" and "OutOfMemoryError" in err.value
    assert ci.run_code("z + 1", language="java").text == "2"


def test_java_timeout_interrupts_without_losing_state(ci):
    ci.run_code("int kept = 5;", language="java")
    with pytest.raises(TimeoutException):
        ci.run_code("while (true) { }", language="java", timeout=3)
    start = time.monotonic()
    assert ci.run_code("kept + 1", language="java", timeout=20).text == "6"
    assert time.monotonic() - start < 10
