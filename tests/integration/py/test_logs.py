"""Sandbox logs: GET /v2/sandboxes/{id}/logs and /sandboxes/{id}/logs in E2B's schema, the
official CLI's `e2b sandbox logs`, `sbx logs`, and a log that outlives its sandbox."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import own_daemon
from helpers import wait_for

REPO = Path(__file__).resolve().parents[3]
E2B_CLI = REPO / "tests" / "integration" / "js" / "node_modules" / "@e2b" / "cli" / "dist" / "index.js"


def _logs(d, sid, v2=True, query=""):
    status, _, body = d.request("GET", f"{'/v2' if v2 else ''}/sandboxes/{sid}/logs{query}")
    return status, json.loads(body)


def _messages(d, sid, **kw):
    status, body = _logs(d, sid, **kw)
    assert status == 200, body
    return [e["message"] for e in body["logs"]]


def test_log_records_processes_and_outlives_the_sandbox(sandbox, sbx_daemon, run_cmd):
    d, sid = sbx_daemon, sandbox.sandbox_id
    run_cmd(sandbox, "echo hello; exit 3")
    run_cmd(sandbox, "kill -TERM $$")
    status, body = _logs(d, sid)
    assert status == 200
    entries = body["logs"]
    assert all(set(e) == {"timestamp", "level", "message", "fields"} for e in entries)
    events = [e["fields"].get("event") for e in entries]
    assert events[0] == "sandbox_create"
    starts = [e for e in entries if e["fields"].get("event") == "process_start"]
    assert any("echo hello; exit 3" in e["fields"]["cmd"] for e in starts)
    ends = [e["fields"]["status"] for e in entries if e["fields"].get("event") == "process_end"]
    assert "exit status 3" in ends and "signal: terminated" in ends
    # Ordered by time, and each timestamp is RFC 3339.
    stamps = [e["timestamp"] for e in entries]
    assert stamps == sorted(stamps) and all(s.endswith("Z") for s in stamps)

    sandbox.kill()
    # After the kill the sandbox is gone but its log stays, with how it ended.
    assert d.request("GET", f"/sandboxes/{sid}")[0] == 404
    after = _messages(d, sid)
    assert any(m.startswith("sandbox_killed") for m in after)
    assert after[-1] == "sandbox_end reason=killed"
    assert any("exit status 3" in m for m in after)
    # v1 carries the same in logs (JSON lines) and logEntries.
    status, v1 = _logs(d, sid, v2=False)
    assert status == 200 and len(v1["logs"]) == len(v1["logEntries"]) == len(after)
    line = json.loads(v1["logs"][-1]["line"])
    assert line["level"] == "info" and line["logger"] == "daemon" and line["event"] == "sandbox_end"


def test_log_queries(sandbox, sbx_daemon, run_cmd):
    d, sid = sbx_daemon, sandbox.sandbox_id
    run_cmd(sandbox, "sh -c 'kill -KILL $$'")
    with pytest.raises(Exception):
        sandbox.commands.run("true", cwd="/nonexistent")  # logged as a warning
    all_entries = _logs(d, sid)[1]["logs"]
    assert len(_logs(d, sid, query="?limit=2")[1]["logs"]) == 2
    back = _logs(d, sid, query="?direction=backward&limit=3")[1]["logs"]
    assert [e["message"] for e in back] == [e["message"] for e in all_entries[::-1][:3]]
    warn = _logs(d, sid, query="?level=warn")[1]["logs"]
    assert warn and all(e["level"] in ("warn", "error") for e in warn)
    assert any(e["fields"]["event"] == "process_start_failed" for e in warn)
    found = _logs(d, sid, query="?search=signal%3A%20killed")[1]["logs"]
    assert found and all("signal: killed" in e["message"] for e in found)
    last_ms = int(time.time() * 1000) + 60000
    assert _logs(d, sid, query=f"?cursor={last_ms}")[1]["logs"] == []
    for bad in ("?limit=5000", "?direction=sideways", "?level=loud", "?cursor=-1"):
        status, body = _logs(d, sid, query=bad)
        assert status == 400 and body["code"] == 400, bad
    assert _logs(d, "nosuchsandbox")[0] == 404


def test_timeout_is_in_the_log(sandbox_factory, sbx_daemon):
    sbx = sandbox_factory(timeout=2)
    sid = sbx.sandbox_id
    assert wait_for(lambda: sbx_daemon.request("GET", f"/sandboxes/{sid}")[0] == 404, 30)
    # Gone for clients at once; its log ends once the spawner has destroyed it.
    assert wait_for(lambda: _messages(sbx_daemon, sid)[-1].startswith("sandbox_end"), 10)
    msgs = _messages(sbx_daemon, sid)
    assert any(m.startswith('sandbox_timeout message="sandbox timed out"') for m in msgs)
    assert msgs[-1] == "sandbox_end reason=timeout"


def test_oom_kill_is_in_the_log(sbx_daemon, tmp_path):
    from e2b import Sandbox
    with own_daemon(sbx_daemon, tmp_path, "--memory-mb 128") as d:
        sbx = Sandbox.create(timeout=60, api_key=d.api_key, api_url=d.url, sandbox_url=d.url)
        try:
            try:
                sbx.commands.run("python3 -c 'x = bytearray(400 << 20)'")
            except Exception:
                pass
            msgs = _messages(d, sbx.sandbox_id, query="?level=warn")
            assert any("killed=\"out of memory (limit 128 MiB)\"" in m for m in msgs), msgs
        finally:
            sbx.kill()


def test_log_outlives_a_daemon_restart(sandbox_factory, sbx_daemon, restart_daemon, run_cmd):
    sbx = sandbox_factory()
    run_cmd(sbx, "echo before-restart")
    sbx.kill()
    restart_daemon()
    msgs = _messages(sbx_daemon, sbx.sandbox_id)
    assert any("echo before-restart" in m for m in msgs) and msgs[-1] == "sandbox_end reason=killed"


@pytest.mark.skipif(not E2B_CLI.exists(), reason="npm @e2b/cli not installed")
def test_official_cli_prints_the_logs(sandbox, sbx_daemon, run_cmd):
    run_cmd(sandbox, "echo from-the-cli-test; exit 4")
    env = dict(os.environ, E2B_API_KEY=sbx_daemon.api_key, E2B_API_URL=sbx_daemon.url,
               E2B_DOMAIN="", NO_COLOR="1")
    r = subprocess.run(["node", str(E2B_CLI), "sandbox", "logs", sandbox.sandbox_id,
                        "--format", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    printed = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert any(p.get("event") == "process_end" and p.get("status") == "exit status 4"
               for p in printed), r.stdout
    assert any("from-the-cli-test" in p.get("cmd", "") for p in printed)
    # Pretty format, the default, works too.
    r = subprocess.run(["node", str(E2B_CLI), "sandbox", "logs", sandbox.sandbox_id], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "process_start" in r.stdout, r.stdout + r.stderr


def test_pause_and_resume_are_in_the_log(sandbox, sbx_daemon):
    sid = sandbox.sandbox_id
    assert sandbox.pause() is True
    sandbox.connect()
    events = [m.split()[0] for m in _messages(sbx_daemon, sid)]
    assert events.index("sandbox_pause") < events.index("sandbox_resume"), events
    assert "sandbox_pause memory=true" in _messages(sbx_daemon, sid)
