#!/usr/bin/env python3
"""Host smoke test of `sbx agent` without a daemon or namespaces.

Runs the agent as an ordinary process (fd 3 = a listening unix socket, fd 4 = a config file),
talks Connect over HTTP/1.1 to it and checks the process.Process service end to end: unary
and streaming RPCs, stdin, signals, Connect from a second client, timeouts, PTYs, StreamInput,
envd auth. Needs root (commands run as `root` through the Basic auth header).
usage: host_smoke.py BUILD_DIR/sbx   (AGENT_WRAPPER="valgrind -q" to run the agent under one)
"""
import base64, http.client, json, os, socket, struct, subprocess, sys, tempfile, time

def start_agent(binary, token=None, envs=None):
    d = tempfile.mkdtemp(prefix="sbxagent")
    sp = os.path.join(d, "agent.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(sp); ls.listen(64)
    cfg = {"sandboxId": "test123", "envVars": envs or {"GLOBAL_X": "gx"}}
    if token: cfg["accessToken"] = token
    cp = os.path.join(d, "config.json")
    open(cp, "w").write(json.dumps(cfg))
    cf = os.open(cp, os.O_RDONLY)
    log = open(os.path.join(d, "agent.log"), "w")
    a, b = os.dup2(ls.fileno(), 8, inheritable=True), os.dup2(cf, 9, inheritable=True)
    wrapper = os.environ.get("AGENT_WRAPPER", "").split()
    sh = 'exec "$@" agent 3<&%d 4<&%d %d<&- %d<&-' % (a, b, a, b)
    p = subprocess.Popen(["/bin/sh", "-c", sh, "sh"] + wrapper + [binary], stdin=log, stdout=log,
                         stderr=log, pass_fds=(a, b))
    ls.close(); os.close(cf); os.close(a); os.close(b)
    return p, sp, d


BIN = sys.argv[1]
ROOT = "Basic " + base64.b64encode(b"root:").decode()

class UConn(http.client.HTTPConnection):
    def __init__(self, path, timeout=20):
        super().__init__("localhost", timeout=timeout); self.upath = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout); self.sock.connect(self.upath)

def env(msg, flags=0):
    b = json.dumps(msg).encode(); return struct.pack(">BI", flags, len(b)) + b

def unary(sp, method, msg, headers=None, raw=None):
    c = UConn(sp)
    h = {"Content-Type": "application/json", "Authorization": ROOT}
    h.update(headers or {})
    c.request("POST", "/process.Process/" + method, body=raw if raw is not None else json.dumps(msg), headers=h)
    r = c.getresponse(); body = r.read(); c.close()
    return r.status, (json.loads(body) if body else None)

class Stream:
    def __init__(self, sp, method, msg, headers=None):
        self.c = UConn(sp)
        h = {"Content-Type": "application/connect+json", "Authorization": ROOT, "Keepalive-Ping-Interval": "50"}
        h.update(headers or {})
        self.c.request("POST", "/process.Process/" + method, body=env(msg), headers=h)
        self.r = self.c.getresponse()
        assert self.r.status == 200, self.r.status
        assert self.r.getheader("content-type") == "application/connect+json"
    def next(self):
        hdr = self.r.read(5)
        if len(hdr) < 5: return None
        fl, n = struct.unpack(">BI", hdr)
        return fl, json.loads(self.r.read(n))
    def all(self):
        out = []
        while True:
            m = self.next()
            if m is None: break
            out.append(m)
            if m[0] & 2: break
        return out
    def close(self): self.c.close()

def collect(msgs):
    out = {"stdout": b"", "stderr": b"", "pty": b"", "end": None, "start": None, "eos": None, "keepalive": 0}
    for fl, m in msgs:
        if fl & 2: out["eos"] = m; continue
        ev = m["event"]
        if "start" in ev: out["start"] = ev["start"]
        elif "data" in ev:
            for k, v in ev["data"].items(): out[k] += base64.b64decode(v)
        elif "end" in ev: out["end"] = ev["end"]
        elif "keepalive" in ev: out["keepalive"] += 1
    return out

def run(sp, cmd, headers=None, **kw):
    req = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": False}
    req["process"].update(kw)
    s = Stream(sp, "Start", req, headers); res = collect(s.all()); s.close(); return res

results = []
def check(name, cond, info=""):
    results.append((name, bool(cond)))
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else "  " + repr(info)[:600]))

p, sp, d = start_agent(BIN)
time.sleep(1.5 if os.environ.get("AGENT_WRAPPER") else 0.2)
try:
    c = UConn(sp); c.request("GET", "/health"); r = c.getresponse(); r.read()
    check("health 204", r.status == 204)
    c = UConn(sp); c.request("GET", "/nope"); r = c.getresponse(); b = r.read()
    check("unknown path 404 json", r.status == 404 and json.loads(b)["code"] == 404, b)
    st, b = unary(sp, "List", {})
    check("list empty", st == 200 and b == {"processes": []}, (st, b))
    st, b = unary(sp, "Frobnicate", {})
    check("unknown method unimplemented", st == 501 and b["code"] == "unimplemented", (st, b))
    st, b = unary(sp, "List", None, raw="{not json")
    check("malformed json invalid_argument", st == 400 and b["code"] == "invalid_argument", (st, b))
    st, b = unary(sp, "SendSignal", {"process": {"pid": "x1"}, "signal": "SIGNAL_SIGKILL"})
    check("wrong field type invalid_argument", st == 400 and b["code"] == "invalid_argument", (st, b))
    st, b = unary(sp, "SendSignal", {"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"})
    check("signal unknown pid not_found", st == 404 and b["code"] == "not_found" and b["message"] == "process with pid 999999 not found", (st, b))

    r = run(sp, "echo hello; echo err >&2")
    check("echo stdout/stderr", r["stdout"] == b"hello\n" and r["stderr"] == b"err\n" and r["start"]["pid"] > 0, r)
    check("end exit 0", r["end"] == {"exited": True, "status": "exit status 0"} and r["eos"] == {}, r)
    r = run(sp, "exit 3")
    check("end exit 3", r["end"] == {"exitCode": 3, "exited": True, "status": "exit status 3", "error": "exit status 3"}, r)
    r = run(sp, "kill -9 $$")
    check("end signal killed", r["end"] == {"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}, r)
    r = run(sp, "echo $GLOBAL_X $A $HOME $USER $LOGNAME $SHELL $LANG $E2B_SANDBOX; pwd; id -u", envs={"A": "b"})
    check("env + cwd default home", r["stdout"] == b"gx b /root root root /bin/bash C.UTF-8 true\n/root\n0\n", r)
    r = run(sp, "echo $GLOBAL_X", envs={"GLOBAL_X": "override"}, cwd="/tmp")
    check("request env wins", r["stdout"] == b"override\n", r)
    r = run(sp, "pwd", cwd="/tmp")
    check("cwd", r["stdout"] == b"/tmp\n", r)
    r = run(sp, "pwd", cwd="/nonexistent/dir")
    check("bad cwd -> invalid_argument", r["eos"] == {"error": {"code": "invalid_argument", "message": "cwd '/nonexistent/dir' does not exist"}} and r["start"] is None, r)
    r = run(sp, "true", headers={"Authorization": "Basic " + base64.b64encode(b"nosuchuser:").decode()})
    check("bad user -> unauthenticated", r["eos"] == {"error": {"code": "unauthenticated", "message": "invalid username: 'nosuchuser'"}}, r)
    s = Stream(sp, "Start", {"process": {"cmd": "/nonexistent-binary"}})
    r = collect(s.all()); s.close()
    check("exec failure -> invalid_argument", r["eos"]["error"]["code"] == "invalid_argument", r)
    r = run(sp, "head -c 300000 /dev/zero | base64 -w0; echo")
    check("large output", len(r["stdout"]) == 400001, len(r["stdout"]))

    # stdin
    s = Stream(sp, "Start", {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "cat; echo done"]}, "stdin": True})
    fl, m = s.next(); pid = m["event"]["start"]["pid"]
    st, b = unary(sp, "SendInput", {"process": {"pid": pid}, "input": {"stdin": base64.b64encode(b"abc\n").decode()}})
    check("send input ok", st == 200 and b == {}, (st, b))
    fl, m = s.next()
    check("stdin echoed", base64.b64decode(m["event"]["data"]["stdout"]) == b"abc\n", m)
    st, b = unary(sp, "List", {})
    check("list shows running", st == 200 and any(x["pid"] == pid and x["config"]["cmd"] == "/bin/bash" for x in b["processes"]), b)
    st, b = unary(sp, "CloseStdin", {"process": {"pid": pid}})
    r = collect(s.all()); s.close()
    check("close stdin -> EOF", st == 200 and r["stdout"] == b"done\n" and r["end"]["status"] == "exit status 0", (st, b, r))
    r = run(sp, "cat; echo $?")
    check("stdin false = EOF", r["stdout"] == b"0\n", r)
    st, b = unary(sp, "SendInput", {"process": {"pid": 999998}, "input": {"stdin": "YQ=="}})
    check("send input unknown pid", st == 404, (st, b))

    # signal + connect from second client
    s = Stream(sp, "Start", {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "for i in $(seq 1 100); do echo line$i; sleep 0.1; done"]}, "stdin": False})
    fl, m = s.next(); pid = m["event"]["start"]["pid"]
    s2 = Stream(sp, "Connect", {"process": {"pid": pid}})
    fl, m2 = s2.next()
    check("connect start event", m2 == {"event": {"start": {"pid": pid}}}, m2)
    fl, m2 = s2.next()
    check("connect gets data", "data" in m2["event"], m2)
    st, b = unary(sp, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    r1 = collect(s.all()); r2 = collect(s2.all()); s.close(); s2.close()
    check("kill ends both streams", st == 200 and r1["end"]["status"] == "signal: killed" and r2["end"]["status"] == "signal: killed" and r1["eos"] == {} and r2["eos"] == {}, (st, b, r1["end"], r2["end"]))
    st, b = unary(sp, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_UNSPECIFIED"})
    check("signal after exit not_found", st == 404, (st, b))
    s = Stream(sp, "Connect", {"process": {"pid": 123456}})
    r = collect(s.all()); s.close()
    check("connect unknown pid", r["eos"]["error"]["code"] == "not_found", r)

    # timeout = process lifetime
    t0 = time.time()
    s = Stream(sp, "Start", {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "sleep 30"]}, "stdin": False}, {"Connect-Timeout-Ms": "700"})
    r = collect(s.all()); s.close(); dt = time.time() - t0
    check("timeout -> deadline_exceeded", r["eos"]["error"]["code"] == "deadline_exceeded" and 0.6 < dt < 3, (r, dt))
    time.sleep(1.5 if os.environ.get("AGENT_WRAPPER") else 0.2)
    st, b = unary(sp, "List", {})
    check("timed out process killed", all(x["pid"] != r["start"]["pid"] for x in b["processes"]), b)

    # disconnect keeps the process
    s = Stream(sp, "Start", {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "sleep 1.5; echo late"]}, "stdin": False})
    fl, m = s.next(); pid = m["event"]["start"]["pid"]; s.close()
    time.sleep(0.3)
    st, b = unary(sp, "List", {})
    check("disconnect keeps process", any(x["pid"] == pid for x in b["processes"]), b)
    s = Stream(sp, "Connect", {"process": {"pid": pid}})
    r = collect(s.all()); s.close()
    check("reconnect sees output and end", r["stdout"] == b"late\n" and r["end"]["exited"], r)
    s = Stream(sp, "Connect", {"process": {"pid": pid}})
    r = collect(s.all()); s.close()
    check("late connect gets start+end", r["start"]["pid"] == pid and r["end"] is not None, r)

    # tag
    s = Stream(sp, "Start", {"process": {"cmd": "/bin/sleep", "args": ["5"]}, "tag": "mytag", "stdin": False})
    fl, m = s.next(); pid = m["event"]["start"]["pid"]
    st, b = unary(sp, "List", {})
    check("list tag", any(x.get("tag") == "mytag" for x in b["processes"]), b)
    st, b = unary(sp, "SendSignal", {"process": {"tag": "mytag"}, "signal": "SIGNAL_SIGTERM"})
    r = collect(s.all()); s.close()
    check("sigterm by tag", st == 200 and r["end"]["status"] == "signal: terminated", (st, r))

    # PTY
    s = Stream(sp, "Start", {"process": {"cmd": "/bin/bash", "args": ["-i", "-l"], "envs": {"TERM": "xterm-256color"}}, "pty": {"size": {"cols": 80, "rows": 24}}})
    fl, m = s.next(); pid = m["event"]["start"]["pid"]
    st, b = unary(sp, "Update", {"process": {"pid": pid}, "pty": {"size": {"cols": 100, "rows": 30}}})
    check("pty update", st == 200, (st, b))
    st, b = unary(sp, "SendInput", {"process": {"pid": pid}, "input": {"pty": base64.b64encode(b"stty size; tty; tput cols; exit 7\n").decode()}})
    r = collect(s.all()); s.close()
    check("pty output", b"30 100" in r["pty"] and b"/dev/pts/" in r["pty"] and b"\n100\r\n" in r["pty"] and r["stdout"] == b"" and r["end"]["exitCode"] == 7, r)
    st, b = unary(sp, "Update", {"process": {"pid": 1}, "pty": {"size": {"cols": 1, "rows": 1}}})
    check("update unknown", st == 404, (st, b))

    # StreamInput (client streaming, chunked)
    s = Stream(sp, "Start", {"process": {"cmd": "/bin/cat"}, "stdin": True})
    fl, m = s.next(); pid = m["event"]["start"]["pid"]
    def body():
        yield env({"start": {"process": {"pid": pid}}})
        yield env({"data": {"input": {"stdin": base64.b64encode(b"x1\n").decode()}}})
        yield env({"keepalive": {}})
        yield env({"data": {"input": {"stdin": base64.b64encode(b"x2\n").decode()}}})
    c = UConn(sp)
    c.request("POST", "/process.Process/StreamInput", body=body(), headers={"Content-Type": "application/connect+json", "Authorization": ROOT}, encode_chunked=True)
    rr = c.getresponse(); raw = rr.read(); c.close()
    check("stream input response", rr.status == 200 and raw.endswith(b"\x02\x00\x00\x00\x02{}"), raw)
    got = b""
    while got.count(b"\n") < 2:
        fl, m = s.next(); got += base64.b64decode(m["event"]["data"]["stdout"])
    check("stream input data", got == b"x1\nx2\n", got)
    unary(sp, "CloseStdin", {"process": {"pid": pid}})
    s.all(); s.close()

    # keepalive
    s = Stream(sp, "Start", {"process": {"cmd": "/bin/sleep", "args": ["2.5"]}, "stdin": False}, {"Keepalive-Ping-Interval": "1"})
    r = collect(s.all()); s.close()
    check("keepalive events", r["keepalive"] == 2 and r["end"]["exited"], r)

    # latency
    lat = []
    for i in range(30):
        t0 = time.perf_counter()
        s = Stream(sp, "Start", {"process": {"cmd": "/bin/true"}, "stdin": False})
        s.all(); s.close()
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    print("latency Start /bin/true: p50 %.2f ms p99 %.2f ms" % (lat[len(lat)//2], lat[-1]))
    lat = []
    for i in range(10):
        t0 = time.perf_counter(); run(sp, "true"); lat.append((time.perf_counter() - t0) * 1000)
    lat.sort(); print("latency Start bash -l -c true: p50 %.2f ms" % lat[len(lat)//2])
finally:
    p.kill(); p.wait()
    print(open(os.path.join(d, "agent.log")).read()[-3000:] if os.environ.get("SHOWLOG") else "")

# auth
p, sp, d = start_agent(BIN, token="tok123")
time.sleep(1.5 if os.environ.get("AGENT_WRAPPER") else 0.2)
try:
    c = UConn(sp); c.request("GET", "/health"); r = c.getresponse(); r.read()
    check("secure health no token", r.status == 204)
    st, b = unary(sp, "List", {})
    check("secure no token 401", st == 401 and b == {"code": 401, "message": "unauthorized access, please provide a valid access token or method signing if supported"}, (st, b))
    st, b = unary(sp, "List", {}, headers={"X-Access-Token": "tok124"})
    check("secure wrong token 401", st == 401, (st, b))
    st, b = unary(sp, "List", {}, headers={"X-Access-Token": "tok123"})
    check("secure right token", st == 200, (st, b))
    c = UConn(sp); c.request("GET", "/envs", headers={"X-Access-Token": "tok123"}); r = c.getresponse(); b = json.loads(r.read())
    check("envs", r.status == 200 and b["GLOBAL_X"] == "gx" and b["E2B_SANDBOX_ID"] == "test123", b)
finally:
    p.kill(); p.wait()
fails = [n for n, ok in results if not ok]
print("%d passed, %d failed" % (len(results) - len(fails), len(fails)))
sys.exit(1 if fails else 0)
