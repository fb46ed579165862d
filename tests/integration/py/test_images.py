"""Templates from container images (templates.md §3, issue 10 item 4): `sbx template import`
of an OCI archive and of a docker archive, and `fromImage` pulls from a registry, with the
official Template SDK. Nothing here reaches the internet: the tests make their own image
(a few host binaries with their own libraries, and a marker file), with umoci and skopeo, and
serve it from Debian's docker-registry on loopback. The image has none of the libraries of
the sbx agent (libuv, libzmq, ...), no user `user` and no useradd, as most real images: the
agent runs from its own runtime, and the build's implicit base step makes the user."""

import hashlib
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid

import pytest
from e2b import Sandbox, Template
from e2b.exceptions import BuildException
from e2b.sandbox.commands.command_handle import CommandExitException

from conftest import _free_port

MARKER = "made by test_images.py\n"
TOOLS = ["/bin/sh", "/bin/bash", "/bin/cat", "/usr/bin/id", "/usr/bin/env", "/bin/ls",
         "/usr/bin/whoami", "/bin/mkdir", "/bin/chown", "/bin/chmod", "/usr/bin/touch"]
AGENT_ONLY_LIBS = ["libuv.so.1", "libzmq.so.5", "libjansson.so.4", "libhttp_parser.so.2.9"]


def _name(prefix="img"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _copy_with_libs(binary, root):
    """binary and the shared libraries it loads (ldd), at their paths under root."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    paths = [binary] + [w for line in out.splitlines() for w in line.split() if w.startswith("/")]
    for p in paths:
        real = os.path.realpath(p)
        for dest in {p, real}:
            target = os.path.join(root, dest.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                shutil.copy2(real, target)


@pytest.fixture(scope="module")
def image(sbx_daemon, tmp_path_factory):
    """An OCI layout with one image (tag "t"), and it as an OCI and a docker archive."""
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup.sh test")
    d = tmp_path_factory.mktemp("image")
    root = d / "rootfs"
    for b in TOOLS:
        _copy_with_libs(b, str(root))
    libs = {f.name for f in root.rglob("*.so*")}
    assert not libs & set(AGENT_ONLY_LIBS), libs  # what the agent loads is not the image's
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/marker").write_text(MARKER)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    for p, mode, owner in (("root", 0o700, 0), ("home", 0o755, 0), ("tmp", 0o1777, 0),
                           ("run", 0o755, 0)):
        (root / p).mkdir(parents=True, exist_ok=True)
        os.chmod(root / p, mode)
        os.chown(root / p, owner, owner)
    layout = d / "layout"
    for argv in (["umoci", "init", "--layout", str(layout)],
                 ["umoci", "new", "--image", f"{layout}:t"],
                 ["umoci", "insert", "--image", f"{layout}:t", str(root), "/"],
                 ["umoci", "config", "--image", f"{layout}:t", "--config.env", "FROM_IMAGE=yes",
                  "--config.workingdir", "/etc"]):
        subprocess.run(argv, check=True, capture_output=True)
    oci, docker = d / "tiny-oci.tar", d / "tiny-docker.tar"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:t", f"oci-archive:{oci}"],
                   check=True)
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:t",
                    f"docker-archive:{docker}:sbx-test/tiny:1"], check=True)
    return {"layout": layout, "oci": oci, "docker": docker,
            "mb": sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6}


@pytest.fixture(scope="module")
def registry(image, tmp_path_factory):
    """Debian's docker-registry on a free loopback port, holding the image."""
    if not os.path.exists("/usr/bin/docker-registry"):
        pytest.fail("docker-registry is missing: run scripts/setup.sh test")
    d = tmp_path_factory.mktemp("registry")
    port = _free_port()
    (d / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = open(d / "registry.log", "w")
    p = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(d / "config.yml")],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and p.poll() is None, \
                    (d / "registry.log").read_text()
                time.sleep(0.1)
        ref = f"127.0.0.1:{port}/sbx-test/tiny:1"
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci:{image['layout']}:t", f"docker://{ref}"], check=True)
        yield ref
    finally:
        p.terminate()
        p.wait(timeout=10)
        log.close()


def _cli(sbx_daemon, *args, timeout=300):
    env = dict(os.environ, E2B_API_URL=sbx_daemon.url, E2B_API_KEY=sbx_daemon.api_key)
    return subprocess.run([sbx_daemon.binary, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _build(template, name, logs=None):
    return Template.build(template, name, cpu_count=1, memory_mb=512,
                          on_build_logs=(logs.append if logs is not None else None))


def _run(name, cmd):
    sbx = Sandbox.create(name, timeout=60)
    try:
        return sbx.commands.run(cmd).stdout
    finally:
        sbx.kill()


def _layer(sbx_daemon, digest):
    key = hashlib.sha256(f"sbx-image-1\n{digest}".encode()).hexdigest()
    return os.path.join(sbx_daemon.state_dir, "layers", key)


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_import_of_an_archive_makes_a_template(sbx_daemon, image, kind):
    name = _name(kind)
    start = time.monotonic()
    r = _cli(sbx_daemon, "template", "import", str(image[kind]), name)
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"built {name}" in r.stdout
    print(f"import of a {image['mb']:.1f} MB {kind} archive: {took:.2f} s")
    try:
        assert _run(name, "cat /etc/marker; id -un") == MARKER + "user\n"
        # The name defaults to the archive's file name.
        r = _cli(sbx_daemon, "template", "import", str(image[kind]))
        assert r.returncode == 0 and f"built tiny-{kind}" in r.stdout, r.stderr
        assert _cli(sbx_daemon, "template", "rm", f"tiny-{kind}").returncode == 0
    finally:
        _cli(sbx_daemon, "template", "rm", name)


def test_import_of_a_bad_archive_is_refused_clearly(sbx_daemon, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all\n" * 64)
    r = _cli(sbx_daemon, "template", "import", str(junk), _name())
    assert r.returncode != 0
    assert "invalid archive" in r.stderr and "HTTP 400" in r.stderr, r.stderr
    plain = tmp_path / "plain.tar"
    (tmp_path / "hello.txt").write_text("hello\n")
    with tarfile.open(plain, "w") as t:
        t.add(tmp_path / "hello.txt", arcname="hello.txt")
    r = _cli(sbx_daemon, "template", "import", str(plain), _name())
    assert r.returncode != 0
    assert "build failed at step base: failed to pull image archive:sha256:" in r.stderr, r.stderr
    assert "not an OCI archive" in r.stderr and "nor a docker archive" in r.stderr, r.stderr


def test_from_image_pulls_from_a_registry_once(sbx_daemon, registry):
    logs = []
    name = _name()
    start = time.monotonic()
    _build(Template().from_image(registry)
           .run_cmd("cat /etc/marker > /home/user/m; echo $FROM_IMAGE >> /home/user/m; pwd >> "
                    "/home/user/m"), name, logs)
    took = time.monotonic() - start
    pulled = [str(l.message) for l in logs if f"FROM {registry} (sha256:" in str(l.message)]
    assert pulled, [str(l.message) for l in logs]
    digest = pulled[0].split("(")[-1].rstrip(")")
    layer = _layer(sbx_daemon, digest)
    ino = os.stat(layer).st_ino
    print(f"build from {registry}: {took:.2f} s")
    try:
        # The image's ENV goes on into the build; its WORKDIR (/etc) does not (as on E2B).
        assert _run(name, "cat /home/user/m") == MARKER + "yes\n/home/user\n"
        start = time.monotonic()
        _build(Template().from_image(registry).run_cmd("echo second > /home/user/s"),
               _name("again"))
        print(f"second build from {registry}: {time.monotonic() - start:.2f} s")
        assert os.stat(layer).st_ino == ino  # the same layer: not pulled again
    finally:
        _cli(sbx_daemon, "template", "rm", name)


def test_pull_failures_fail_the_base_step(sbx_daemon):
    port = _free_port()  # nobody listens there
    ref = f"127.0.0.1:{port}/nothing/here:1"
    with pytest.raises(BuildException) as e:
        _build(Template().from_image(ref), _name())
    assert f"failed to pull image {ref}: " in str(e.value)
    assert "connection refused" in str(e.value)
    with pytest.raises(BuildException) as e:
        _build(Template().from_aws_registry(ref, access_key_id="a", secret_access_key="b",
                                            region="us-east-1"), _name())
    assert "registry credentials of type 'aws' are not supported" in str(e.value)
    with pytest.raises(BuildException) as e:
        _build(Template().from_image("-rm:1"), _name())
    assert "failed to pull image -rm:1: invalid image reference" in str(e.value)


def test_registry_credentials_reach_the_registry(sbx_daemon, registry):
    # The test registry takes any credentials: the pull works with them (an auth file of
    # the spawner's making), and the same image is the same layer.
    logs = []
    _build(Template().from_image(registry, username="someone", password="s3cret:x"), _name(),
           logs)
    assert any(f"FROM {registry} (sha256:" in str(l.message) for l in logs)


def test_an_image_without_the_agents_libraries_runs_sandboxes(sbx_daemon, registry):
    """The agent loads its libraries from its runtime (mounted read-only at /run/sbx-agent),
    never from the image; commands run on the image's own libraries with no LD_LIBRARY_PATH;
    the implicit base step made `user`, the default user."""
    logs = []
    name = _name("norun")
    _build(Template().from_image(registry).run_cmd("echo built > /home/user/built"), name, logs)
    assert any("USER user" in str(l.message) for l in logs), [str(l.message) for l in logs]
    sbx = Sandbox.create(name, timeout=60)
    try:
        assert sbx.commands.run("echo hi").stdout == "hi\n"
        assert sbx.commands.run("whoami").stdout == "user\n"
        assert sbx.commands.run("cat ~/built").stdout == "built\n"
        for lib in AGENT_ONLY_LIBS:
            assert sbx.commands.run(f"ls /lib/*/{lib} /usr/lib/*/{lib} 2>/dev/null || true",
                                    user="root").stdout == ""
        sbx.files.write("/home/user/f.txt", "written\n")
        assert sbx.files.read("/home/user/f.txt") == "written\n"
        assert sbx.commands.run("cat /home/user/f.txt").stdout == "written\n"
        env = sbx.commands.run("env").stdout
        assert "LD_LIBRARY_PATH" not in env and "LD_PRELOAD" not in env, env
        for user in ("user", "root"):
            with pytest.raises(CommandExitException) as e:
                sbx.commands.run("touch /run/sbx-agent/x", user=user)
            assert "Read-only file system" in e.value.stderr, e.value.stderr
            with pytest.raises(CommandExitException):
                sbx.commands.run("echo x >> /run/sbx-agent/agent", user=user)
    finally:
        sbx.kill()
        _cli(sbx_daemon, "template", "rm", name)
