"""Templates built with the official Template SDK (e2b's Template, shared spec templates.md)
against the real daemon: every step type, the layer cache, failures with their step, names
and tags, exists, list and delete, COPY archives, and sandboxes created from the result.
Build steps run in build sandboxes on the sandbox network with no egress rules, as E2B's
have internet: one test installs a small package from PyPI."""

import gzip
import io
import os
import shutil
import tarfile
import time
import uuid

import pytest
from e2b import Sandbox, Template
from e2b.exceptions import BuildException, TemplateException

import json

from helpers import wait_for


def _name(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def ctx(tmp_path):
    """A file context with a folder, a file, and symlinks (relative, absolute, dangling)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "test.txt").write_text("This is a test file.\n")
    (tmp_path / "folder" / "rel").symlink_to("test.txt")
    (tmp_path / "folder" / "abs").symlink_to("/etc/hostname")
    (tmp_path / "folder" / "dangling").symlink_to("nope")
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho tool-ran\n")
    return tmp_path


def _build(template, name, logs=None, **kw):
    return Template.build(template, name, cpu_count=1, memory_mb=1024,
                          on_build_logs=(logs.append if logs is not None else None), **kw)


def test_every_step_type_and_a_sandbox_of_it(sbx_daemon, ctx):
    name = _name()
    t = (Template(file_context_path=str(ctx)).from_base_image()
         .copy("folder/*", "folder")
         .copy("tool.sh", "/usr/local/bin/tool", mode=0o755, user="root")
         .run_cmd("cat folder/test.txt && whoami && pwd")
         .set_envs({"GREETING": "hello"})
         .run_cmd('echo "$GREETING from $(whoami)" > /tmp/ignored; echo env=$GREETING')
         # Values are expanded once, at the ENV step, as E2B does: $PATH is the system's.
         .set_envs({"PATH": "/opt/tool/bin:$PATH"})
         .run_cmd("echo path=$PATH && ls / > /dev/null")
         .set_workdir("/app")
         .run_cmd("pwd && echo made > made.txt")
         .set_user("root")
         .run_cmd("whoami > /root/who && tool > /root/tool.out"))
    logs = []
    info = _build(t, name, logs)
    assert info.name == name and info.tags == ["default"]
    text = "\n".join(str(e) for e in logs)
    for needle in ("This is a test file.", "/home/user", "env=hello", "/app", "[builder 11/11]",
                   "/opt/tool/bin:/usr/local/sbin:/usr/local/bin:"):
        assert needle in text, text
    s = Sandbox.create(name, timeout=60)
    try:
        assert s.get_info().template_id == info.template_id
        # The last USER and WORKDIR are the sandbox's default user and directory.
        assert s.commands.run("whoami; pwd").stdout == "root\n/app\n"
        assert s.commands.run("whoami", user="user").stdout == "user\n"
        out = s.commands.run(
            "cat /home/user/folder/test.txt; readlink /home/user/folder/rel /home/user/folder/abs"
            " /home/user/folder/dangling; stat -c '%U %a' /home/user/folder/test.txt"
            " /usr/local/bin/tool /app/made.txt; sudo cat /root/who /root/tool.out;"
            " echo greeting=${GREETING:-unset}").stdout
        assert out.split("\n") == [
            "This is a test file.", "test.txt", "/etc/hostname", "nope", "user 644",
            "root 755", "user 644", "root", "tool-ran", "greeting=unset", ""], out
    finally:
        s.kill()


def test_unchanged_rebuild_is_cached_and_skip_cache_is_not(sbx_daemon, ctx):
    name = _name()
    t = (Template(file_context_path=str(ctx)).from_base_image()
         .copy("folder", "data").run_cmd("date +%s%N > stamp"))
    _build(t, name)
    logs = []
    start = time.monotonic()
    _build(t, name, logs)
    cached = time.monotonic() - start
    steps = [str(e) for e in logs if "[builder" in str(e)]
    assert len(steps) == 2 and all("CACHED" in s for s in steps), steps
    assert cached < 10
    logs = []
    _build(t, name, logs, skip_cache=True)
    assert not any("CACHED" in str(e) for e in logs)


def test_uploads_unused_for_a_week_are_deleted_and_uploaded_again(sbx_daemon, tmp_path,
                                                                   restart_daemon):
    import sqlite3
    (tmp_path / "data.txt").write_text(uuid.uuid4().hex)  # an archive no other test uploads
    t = Template(file_context_path=str(tmp_path)).from_base_image().copy("data.txt", "data.txt")
    name = _name()
    uploads = os.path.join(sbx_daemon.state_dir, "db", "uploads")
    before = set(os.listdir(uploads))
    _build(t, name)
    (archive,) = set(os.listdir(uploads)) - before
    # A week unused (its last upload or probe), and files a crash left: an old and a new one.
    db = sqlite3.connect(os.path.join(sbx_daemon.state_dir, "db", "sbx.db"), timeout=30)
    db.execute("UPDATE uploads SET created_at_ms = 0 WHERE hash = ?", (archive[:-4],))
    db.commit()
    db.close()
    for stray, age in ((".crashed.tmp", 2 * 86400), (".uploading.tmp", 0)):
        open(os.path.join(uploads, stray), "w").close()
        os.utime(os.path.join(uploads, stray), (time.time() - age,) * 2)
    restart_daemon()
    left = set(os.listdir(uploads))
    assert archive not in left and ".crashed.tmp" not in left and ".uploading.tmp" in left
    # The next build finds it absent and uploads it again.
    _build(t, name, skip_cache=True)
    assert archive in os.listdir(uploads)
    s = Sandbox.create(name, timeout=30)
    try:
        assert s.files.read("/home/user/data.txt") == (tmp_path / "data.txt").read_text()
    finally:
        s.kill()


def test_superseded_builds_and_their_layers_go_after_a_week(sbx_daemon, restart_daemon):
    import sqlite3
    name = _name()
    old = _build(Template().from_base_image().run_cmd("echo one > /home/user/v"), name)
    new = _build(Template().from_base_image().run_cmd("echo two > /home/user/v"), name)
    db_path = os.path.join(sbx_daemon.state_dir, "db", "sbx.db")
    db = sqlite3.connect(db_path, timeout=30)
    stacks = dict(db.execute("SELECT id, layers FROM template_builds WHERE id IN (?, ?)",
                             (old.build_id, new.build_id)))
    keys = lambda b: {stacks[b][i:i + 64] for i in range(0, len(stacks[b]), 64)}
    (gone,) = keys(old.build_id) - keys(new.build_id)
    kept = keys(new.build_id)
    # A week later: the old build is no tag's, its own layer no kept build's.
    db.execute("UPDATE template_builds SET finished_at_ms = 0 WHERE template_id = ?",
               (new.template_id,))
    db.executemany("UPDATE layers SET created_at_ms = 0 WHERE key = ?",
                   [(k,) for k in keys(old.build_id) | kept])
    db.commit()
    db.close()
    layers = os.path.join(sbx_daemon.state_dir, "layers")
    assert gone in os.listdir(layers)
    restart_daemon()
    assert wait_for(lambda: gone not in os.listdir(layers), 20)
    assert kept <= set(os.listdir(layers))
    st, _, _ = sbx_daemon.request(
        "GET", f"/templates/{new.template_id}/builds/{old.build_id}/status", auth=True)
    assert st == 404
    s = Sandbox.create(name, timeout=30)
    try:
        assert s.files.read("/home/user/v") == "two\n"
    finally:
        s.kill()


def _builds_counted(d, status):
    """sbx_template_build_duration_seconds_count{status=...} of the daemon's /metrics."""
    st, _, body = d.request("GET", "/metrics")
    assert st == 200
    prefix = f'sbx_template_build_duration_seconds_count{{status="{status}"}} '
    return int(next(l for l in body.decode().splitlines() if l.startswith(prefix)).split()[1])


def test_failures_name_their_step_and_nothing_half_built_is_usable(sbx_daemon):
    name = _name()
    failed, ready = _builds_counted(sbx_daemon, "error"), _builds_counted(sbx_daemon, "ready")
    t = Template().from_base_image().run_cmd("echo fine").run_cmd("echo before; exit 3")
    with pytest.raises(BuildException) as e:
        _build(t, name)
    assert "failed to run command 'echo before; exit 3': exit status 3" in str(e.value)
    _build(Template().from_base_image().run_cmd("echo fine"), _name())
    # Each build's duration is in the metrics, by how it ended.
    assert _builds_counted(sbx_daemon, "error") == failed + 1
    assert _builds_counted(sbx_daemon, "ready") == ready + 1
    with pytest.raises(Exception):
        Sandbox.create(name, timeout=30)
    bad_user = Template().from_base_image().run_cmd("whoami", user="nobody-here")
    with pytest.raises(BuildException) as e:
        _build(bad_user, _name())
    assert "command failed: unauthenticated: invalid username: 'nobody-here'" in str(e.value)
    # An image no registry serves (a loopback port nobody listens on: tests reach no
    # internet registry); test_images.py pulls real ones.
    from conftest import _free_port
    ref = f"127.0.0.1:{_free_port()}/ubuntu:22.04"
    pulled = Template().from_image(ref).run_cmd("true")
    with pytest.raises(BuildException) as e:
        _build(pulled, _name())
    assert f"failed to pull image {ref}: " in str(e.value)
    missing = Template().from_template("no-such-template-" + uuid.uuid4().hex[:6])
    with pytest.raises(BuildException) as e:
        _build(missing, _name())
    assert "not found" in str(e.value)


def test_from_template_keeps_context_and_layers(sbx_daemon):
    parent = _name("parent")
    _build(Template().from_base_image().set_workdir("/srv/app").run_cmd("echo one > one"), parent)
    child = _name("child")
    _build(Template().from_template(parent).run_cmd("pwd > where && cat one"), child)
    s = Sandbox.create(child, timeout=60)
    try:
        assert s.commands.run("cat /srv/app/where /srv/app/one").stdout == "/srv/app\none\n"
        # /metrics counts the sandboxes of built templates too, under their template's id.
        st, _, body = sbx_daemon.request("GET", "/metrics")
        series = (f'sbx_sandboxes{{state="running",template="{s.get_info().template_id}"}} 1')
        assert st == 200 and series in body.decode().splitlines()
    finally:
        s.kill()


def test_code_interpreter_children_are_code_interpreters(sbx_daemon):
    from e2b_code_interpreter import Sandbox as CodeSandbox
    name = _name("ci")
    _build(Template().from_template("code-interpreter-v1").run_cmd("echo 41 > /tmp/x && "
                                                                   "cp /tmp/x /home/user/n"), name)
    s = CodeSandbox.create(name, timeout=120)
    try:
        assert s.run_code("int(open('/home/user/n').read()) + 1").text == "42"
    finally:
        s.kill()


def test_names_tags_exists_list_and_delete(sbx_daemon):
    name = _name()
    info = _build(Template().from_base_image().run_cmd("echo v1 > /home/user/v"), f"{name}:v1",
                  tags=["stable"])
    assert sorted(info.tags) == ["stable", "v1"]
    assert Template.exists(f"{name}:v1") and Template.exists("base")
    assert not Template.exists(f"nonexistent-{uuid.uuid4()}")
    # Only tagged: no default tag, so the plain name does not resolve.
    with pytest.raises(Exception):
        Sandbox.create(name, timeout=30)
    s = Sandbox.create(f"{name}:stable", timeout=30)
    assert s.commands.run("cat /home/user/v").stdout == "v1\n"
    s.kill()
    Template.assign_tags(f"{name}:v1", ["production", "default"])
    tags = {t.tag: t.build_id for t in Template.get_tags(info.template_id)}
    assert set(tags) == {"v1", "stable", "production", "default"}
    assert len(set(tags.values())) == 1
    with pytest.raises(Exception):
        Template.assign_tags(f"{name}:v1", [":invalid-tag"])
    with pytest.raises(Exception):
        Template.assign_tags(f"{name}:v1", [])
    Template.remove_tags(name, ["production"])
    assert "production" not in {t.tag for t in Template.get_tags(info.template_id)}
    with pytest.raises(Exception):
        Template.remove_tags(name, ["default"])
    st, _, body = sbx_daemon.request("GET", "/templates")
    assert st == 200 and any(t["templateID"] == info.template_id for t in json.loads(body)), body
    # A template in use is not deleted; once its sandbox is gone it is.
    s = Sandbox.create(name, timeout=60)
    st, _, body = sbx_daemon.request("DELETE", f"/templates/{info.template_id}")
    assert st == 400 and b"used by running sandbox" in body, body
    s.kill()
    st, _, _ = sbx_daemon.request("DELETE", f"/templates/{info.template_id}")
    assert st == 204
    assert not Template.exists(name)
    st, _, _ = sbx_daemon.request("DELETE", "/templates/base")
    assert st == 400


def test_bad_names_and_requests(sbx_daemon):
    for bad in ("Bad Name!", "a:b:c", "x:" + str(uuid.uuid4()), "", "base"):
        st, _, body = sbx_daemon.request("POST", "/v3/templates", body={"name": bad})
        assert st == 400, (bad, body)
    st, _, body = sbx_daemon.request("POST", "/v3/templates", body={"name": _name(), "cpuCount": 3})
    assert st == 400 and b"CPU count" in body
    st, _, body = sbx_daemon.request("POST", "/v3/templates",
                                     body={"name": _name(), "minFreeDiskMb": 100})
    assert st == 400 and b"minFreeDiskMb" in body
    # A second build of a name while the first waits: refused.
    name = _name()
    st, _, body = sbx_daemon.request("POST", "/v3/templates", body={"name": name})
    assert st == 202
    st, _, body = sbx_daemon.request("POST", "/v3/templates", body={"name": name})
    assert st == 409, body


def _upload_url(sbx_daemon, template_id, files_hash):
    st, _, body = sbx_daemon.request("GET", f"/templates/{template_id}/files/{files_hash}")
    assert st == 201, body
    return json.loads(body)["url"]


def _put(url, data):
    import urllib.request
    req = urllib.request.Request(url, data=data, method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _tar(members, gz=True):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = data
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw


def test_copy_archives_that_escape_are_refused(sbx_daemon):
    st, _, body = sbx_daemon.request("POST", "/v3/templates", body={"name": _name()})
    tid = json.loads(body)["templateID"]
    h = "ab" * 32
    url = _upload_url(sbx_daemon, tid, h)
    for members in ([("../escape", tarfile.REGTYPE, b"x")],
                    [("/etc/passwd", tarfile.REGTYPE, b"x")],
                    [("a", tarfile.SYMTYPE, "/etc"), ("a/passwd", tarfile.REGTYPE, b"x")]):
        st, body = _put(url, _tar(members))
        assert st == 400, body
    st, body = _put(url, b"\x1f\x8b" + os.urandom(100))
    assert st == 400, body
    assert not json.loads(sbx_daemon.request("GET", f"/templates/{tid}/files/{h}")[2])["present"]
    # A forged or expired token is refused before any byte is stored.
    st, _ = _put(url.replace("token=", "token=0"), _tar([("ok", tarfile.REGTYPE, b"x")]))
    assert st == 401
    st, body = _put(url, _tar([("ok", tarfile.REGTYPE, b"x")]))
    assert st == 200, body
    assert json.loads(sbx_daemon.request("GET", f"/templates/{tid}/files/{h}")[2])["present"]
    st, _, body = sbx_daemon.request("GET", f"/templates/{tid}/files/not-a-hash")
    assert st == 400


def test_start_and_ready_commands_run_in_every_sandbox(sbx_daemon):
    from e2b import wait_for_port
    name = _name("svc")
    t = (Template().from_base_image().set_workdir("/home/user/www")
         .run_cmd("echo served > index.html")
         .set_start_cmd("python3 -m http.server 8000", wait_for_port(8000)))
    logs = []
    _build(t, name, logs)
    assert any("finalize" in str(e) for e in logs)
    # The create answers once the ready command succeeded: the server answers at once.
    s = Sandbox.create(name, timeout=60)
    try:
        assert s.commands.run("curl -s http://127.0.0.1:8000/index.html").stdout == "served\n"
    finally:
        s.kill()
    # Templates of it start the same command, unless they set their own.
    child = _name("svc-child")
    _build(Template().from_template(name).run_cmd("echo child > child.html"), child)
    s = Sandbox.create(child, timeout=60)
    try:
        assert s.commands.run("curl -s http://127.0.0.1:8000/child.html").stdout == "child\n"
    finally:
        s.kill()
    failing = Template().from_base_image().set_start_cmd("exit 3", "false")
    with pytest.raises(BuildException) as e:
        _build(failing, _name())
    assert "start command failed: exit status 3" in str(e.value)


def test_a_build_step_cannot_fill_the_host_disk(sbx_daemon, tmp_path):
    from conftest import own_daemon
    with own_daemon(sbx_daemon, tmp_path, "--pool base=0 --pool code-interpreter-v1=0 "
                    "--build-disk-mb 64") as d:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {"E2B_API_URL": d.url, "E2B_SANDBOX_URL": d.url,
                         "E2B_API_KEY": d.api_key}.items():
                mp.setenv(k, v)
            layers = os.path.join(d.state_dir, "layers")
            before = set(os.listdir(layers))
            # A step that writes more than its disk fails where it writes, its log says why.
            logs = []
            with pytest.raises(BuildException) as e:
                _build(Template().from_base_image()
                       .run_cmd("head -c 100M /dev/zero > /home/user/big"), _name(), logs)
            assert "exit status 1" in str(e.value)
            assert any("No space left on device" in str(l) for l in logs), logs
            assert set(os.listdir(layers)) == before
            # Within it, a step's files become the template's, copied out of its disk.
            name = _name()
            _build(Template().from_base_image()
                   .run_cmd("head -c 10M /dev/zero > /home/user/ten")
                   .run_cmd("mkdir -p /opt/x && ln -s ../home/user/ten /opt/x/link && "
                            "rm /etc/motd", user="root"), name)
            s = Sandbox.create(name, timeout=30)
            try:
                r = s.commands.run("stat -c %s /home/user/ten && readlink /opt/x/link && "
                                   "stat -c %U /home/user/ten && test ! -e /etc/motd && echo gone")
                assert r.stdout == f"{10 << 20}\n../home/user/ten\nuser\ngone\n"
            finally:
                s.kill()


def test_templates_and_their_layers_survive_restarts_and_go_with_delete(sbx_daemon, tmp_path):
    from conftest import own_daemon
    with own_daemon(sbx_daemon, tmp_path, "--pool base=0 --pool code-interpreter-v1=0") as d:
        env = {"E2B_API_URL": d.url, "E2B_SANDBOX_URL": d.url, "E2B_API_KEY": d.api_key}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            layers = os.path.join(d.state_dir, "layers")
            before = set(os.listdir(layers))
            name = _name()
            info = _build(Template().from_base_image().run_cmd("echo kept > /home/user/k"), name)
            built = set(os.listdir(layers)) - before
            assert len(built) == 1, built
            d.restart()
            s = Sandbox.create(name, timeout=30)
            assert s.commands.run("cat /home/user/k").stdout == "kept\n"
            s.kill()
            st, _, _ = d.request("DELETE", f"/templates/{info.template_id}")
            assert st == 204
            for _ in range(50):
                if not built & set(os.listdir(layers)):
                    break
                time.sleep(0.1)
            assert not built & set(os.listdir(layers))
            assert before <= set(os.listdir(layers))


def test_a_step_that_never_ends_is_killed_at_the_step_timeout(sbx_daemon, tmp_path):
    from conftest import own_daemon
    with own_daemon(sbx_daemon, tmp_path,
                    "--pool base=0 --pool code-interpreter-v1=0 --build-step-timeout 3") as d:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {"E2B_API_URL": d.url, "E2B_SANDBOX_URL": d.url,
                         "E2B_API_KEY": d.api_key}.items():
                mp.setenv(k, v)
            start = time.monotonic()
            with pytest.raises(BuildException) as e:
                _build(Template().from_base_image().run_cmd("sleep 1000"), _name())
            assert "failed to run command 'sleep 1000': the step did not end within 3 s" in \
                str(e.value)
            assert time.monotonic() - start < 30
            # Nothing of it is left running: its build sandbox is gone.
            assert not os.listdir(os.path.join(d.state_dir, "sandboxes"))


def test_build_steps_reach_no_host_path_nor_other_layers(sbx_daemon):
    state = sbx_daemon.state_dir
    # (The quotes keep the markers out of the logged command line.)
    probe = ("for p in /work /var/cache/sbx /var/lib/sbx " + state + " " + state + "/layers; do "
             "test -e $p && echo vis''ible:$p; done; "
             "sudo mount -t tmpfs x /mnt 2>/dev/null && echo mou''nted; "
             "echo probe-done")
    logs = []
    _build(Template().from_base_image().run_cmd(probe, user="root"), _name(), logs)
    text = "\n".join(str(e) for e in logs)
    assert "probe-done" in text and "visible:" not in text and "mounted" not in text, text


def test_build_steps_install_from_the_package_index(sbx_daemon, tmp_path):
    """A pip install in a step reaches PyPI (names resolve through the daemon's DNS forwarder,
    traffic leaves through its NAT), and the sandboxes of the template have the package. pip
    is given the host's CA bundle, which may hold a site's TLS proxy CA that the template's
    own bundle lacks (scripts/templates.sh does the same for the built-in templates)."""
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", tmp_path / "host-ca.crt")
    name = _name()
    logs = []
    t = (Template(file_context_path=str(tmp_path)).from_base_image()
         .copy("host-ca.crt", "/opt/host-ca.crt")
         .run_cmd("pip install --cert /opt/host-ca.crt six==1.17.0", user="root"))
    _build(t, name, logs)
    assert "Successfully installed six-1.17.0" in "\n".join(str(e) for e in logs)
    s = Sandbox.create(name, timeout=60)
    try:
        r = s.commands.run("python3 -c 'import six; print(six.__version__)'")
        assert r.stdout == "1.17.0\n"
    finally:
        s.kill()


@pytest.mark.timeout(900)
def test_from_debian_image_makes_a_root_of_that_suite_once(sbx_daemon):
    """fromDebianImage: a Debian root of the suite by the base template's recipe (mmdebstrap
    from Debian's archive: this test needs the mirror), made once and reused."""
    name = _name("bookworm")
    logs = []
    _build(Template().from_debian_image("bookworm").run_cmd("cat /etc/debian_version"), name,
           logs)
    text = "\n".join(str(e) for e in logs)
    assert "\n12." in text or "] 12." in text, text
    s = Sandbox.create(name, timeout=60)
    try:
        out = s.commands.run(". /etc/os-release; echo $VERSION_CODENAME; whoami; sudo whoami")
        assert out.stdout == "bookworm\nuser\nroot\n"
    finally:
        s.kill()
    logs = []
    _build(Template().from_debian_image("bookworm").run_cmd("true"), _name("bookworm"), logs)
    assert any("CACHED FROM debian" in str(e) for e in logs)
    with pytest.raises(BuildException) as e:
        _build(Template().from_debian_image("buster"), _name())
    assert "failed to pull image debian:buster" in str(e.value)


def test_a_pool_of_a_built_template_hands_out_sandboxes_already_started(sbx_daemon, tmp_path):
    from conftest import own_daemon
    from test_pool import pools, wait_warm
    from e2b import wait_for_file
    name = _name("pooled")
    with own_daemon(sbx_daemon, tmp_path,
                    f"--pool base=0 --pool code-interpreter-v1=0 --pool {name}=1") as d:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {"E2B_API_URL": d.url, "E2B_SANDBOX_URL": d.url,
                         "E2B_API_KEY": d.api_key}.items():
                mp.setenv(k, v)
            assert pools(d)[name]["warm"] == 0  # not built yet: an empty pool
            _build(Template().from_base_image().set_start_cmd(
                "sleep 1; touch /tmp/started; sleep infinity", wait_for_file("/tmp/started")),
                name)
            wait_warm(d, name, 1)
            st, headers, body = d.request("POST", "/sandboxes",
                                          body={"templateID": name, "timeout": 60})
            assert st == 201, body
            # From the pool: answered in far less than the start command's second.
            assert int(headers["X-Sbx-Spawn-Us"]) < 1_000_000
            s = Sandbox.connect(json.loads(body)["sandboxID"])
            assert s.commands.run("test -f /tmp/started && pgrep -c sleep").exit_code == 0
            s.kill()
