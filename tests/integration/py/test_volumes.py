"""Volumes through the official Python SDK (spec lifecycle.md §6): the control plane, the
volume content API with the volume's token, and volumes mounted into sandboxes (two at once,
data outliving them, one owner for a file in every sandbox). Fixtures: tests/conftest.py."""

import json
import os
import secrets

import pytest

from e2b import (
    Sandbox,
    SandboxException,
    Volume,
    VolumeException,
    VolumeNotFoundException,
    VolumePathNotFoundException,
)
from e2b.exceptions import AuthenticationException
from helpers import http_request


def _name():
    return "v-" + secrets.token_hex(5)


@pytest.fixture
def volume(sbx_daemon):
    vol = Volume.create(_name())
    yield vol
    Volume.destroy(vol.volume_id)


def test_control_plane(sbx_daemon):
    name = _name()
    vol = Volume.create(name)
    assert vol.name == name and vol.volume_id and vol.token
    with pytest.raises(VolumeException, match="already exists"):
        Volume.create(name)
    for bad in ("has space", "dots.no", "", "x" * 65):
        with pytest.raises(VolumeException, match="Invalid volume name"):
            Volume.create(bad)
    listed = {v.volume_id: v.name for v in Volume.list()}
    assert listed[vol.volume_id] == name
    status, _, body = sbx_daemon.request("GET", "/volumes")
    assert all("token" not in v for v in json.loads(body)), "list must not show tokens"
    info = Volume.get_info(vol.volume_id)
    assert info.name == name and info.token == vol.token
    assert Volume.connect(vol.volume_id).token == vol.token
    assert Volume.destroy(vol.volume_id) is True
    assert Volume.destroy(vol.volume_id) is False
    with pytest.raises(VolumeNotFoundException):
        Volume.get_info(vol.volume_id)
    assert not os.path.exists(os.path.join(sbx_daemon.state_dir, "volumes", vol.volume_id))


def test_content_api(volume):
    st = volume.write_file("/hello.txt", "hi there")
    assert (st.name, st.type.value, st.path, st.size, st.mode, st.uid, st.gid) == \
        ("hello.txt", "file", "/hello.txt", 8, 0o644, 0, 0)
    assert volume.read_file("/hello.txt") == "hi there"
    assert volume.read_file("/hello.txt", format="bytes") == b"hi there"
    assert b"".join(volume.read_file("/hello.txt", format="stream")) == b"hi there"
    assert volume.exists("/hello.txt") and not volume.exists("/nope")
    # Existing file: 409 without force; force overwrites.
    with pytest.raises(VolumeException):
        volume.write_file("/hello.txt", "again")
    volume.write_file("/hello.txt", "again", force=True)
    assert volume.read_file("/hello.txt") == "again"
    # Empty files, binary data, a larger streamed upload.
    volume.write_file("/empty", b"")
    assert volume.read_file("/empty", format="bytes") == b""
    blob = os.urandom(3 << 20)
    import io
    volume.write_file("/blob.bin", io.BytesIO(blob))
    assert volume.read_file("/blob.bin", format="bytes") == blob
    # Directories: a missing parent is 404 unless force; an existing one 409 unless force.
    with pytest.raises(VolumePathNotFoundException):
        volume.make_dir("/a/b/c")
    d = volume.make_dir("/a/b/c", force=True, uid=1000, gid=1000, mode=0o750)
    assert (d.type.value, d.uid, d.gid, d.mode) == ("directory", 1000, 1000, 0o750)
    with pytest.raises(VolumeException):
        volume.make_dir("/a/b/c")
    volume.make_dir("/a/b/c", force=True)
    with pytest.raises(VolumePathNotFoundException):
        volume.write_file("/missing/x.txt", "x")
    with pytest.raises(VolumeException):
        volume.write_file("/a", "a directory")
    assert {e.path for e in volume.list("/")} == {"/hello.txt", "/empty", "/blob.bin", "/a"}
    assert {e.path for e in volume.list("/", depth=3)} >= {"/a/b", "/a/b/c"}
    with pytest.raises(VolumePathNotFoundException):
        volume.list("/nope")
    m = volume.update_metadata("/hello.txt", uid=1000, gid=1000, mode=0o600)
    assert (m.uid, m.gid, m.mode) == (1000, 1000, 0o600)
    volume.remove("/a")
    assert not volume.exists("/a/b")
    with pytest.raises(VolumePathNotFoundException):
        volume.remove("/a")
    with pytest.raises(VolumePathNotFoundException):
        volume.read_file("/a")


def test_content_api_needs_the_volume_token(sbx_daemon, volume):
    other = Volume.create(_name())
    try:
        # Another volume's token does not open this one.
        with pytest.raises(AuthenticationException):
            Volume(volume.volume_id, volume.name, token=other.token).read_file("/x")
        status, _, body = http_request(sbx_daemon.host, sbx_daemon.port, "GET",
                                       f"/volumecontent/{volume.volume_id}/path?path=/",
                                       headers={"X-API-Key": sbx_daemon.api_key})
        assert status == 401 and json.loads(body)["code"] == "401"
        status, _, body = http_request(sbx_daemon.host, sbx_daemon.port, "GET",
                                       "/volumecontent/nosuchvolume00000000/path?path=/",
                                       headers={"Authorization": "Bearer x"})
        assert status == 404 and json.loads(body)["code"] == "404"
    finally:
        Volume.destroy(other.volume_id)


def test_two_sandboxes_share_a_volume(volume, sandbox_factory):
    volume.write_file("/from-api.txt", "api", uid=1000, gid=1000)
    a = sandbox_factory(volume_mounts={"/mnt/data": volume})
    b = sandbox_factory(volume_mounts={"/home/user/shared": volume.name})
    assert a.get_info().volume_mounts == [{"name": volume.name, "path": "/mnt/data"}]
    listed = {s.sandbox_id: s for s in Sandbox.list().next_items()}
    assert listed[b.sandbox_id].volume_mounts == [{"name": volume.name, "path": "/home/user/shared"}]
    # The sandbox's user owns a new volume's root and files written for uid 1000.
    assert a.commands.run("stat -c '%U %a' /mnt/data").stdout == "user 755\n"
    a.commands.run("echo from-a > /mnt/data/a.txt && echo more >> /mnt/data/from-api.txt")
    assert b.commands.run("cat /home/user/shared/a.txt").stdout == "from-a\n"
    assert b.commands.run("stat -c %U /home/user/shared/a.txt").stdout == "user\n"
    st = volume.get_info("/a.txt")
    assert (st.uid, st.gid) == (1000, 1000)
    assert volume.read_file("/from-api.txt") == "apimore\n"
    b.commands.run("sudo sh -c 'echo root > /home/user/shared/root.txt'")
    assert volume.get_info("/root.txt").uid == 0
    # Data outlives every sandbox that mounted it.
    a.kill()
    b.kill()
    assert volume.read_file("/a.txt") == "from-a\n"
    c = sandbox_factory(volume_mounts={"/data": volume})
    assert c.commands.run("cat /data/a.txt").stdout == "from-a\n"


def test_symlinks_stay_inside_the_volume(volume, sandbox_factory):
    s = sandbox_factory(volume_mounts={"/mnt/v": volume})
    s.commands.run("ln -s /etc /mnt/v/etc-link && ln -s ../../../../etc/hostname /mnt/v/up")
    # Through the content API the links resolve inside the volume, where nothing is.
    with pytest.raises(VolumePathNotFoundException):
        volume.read_file("/etc-link/passwd")
    with pytest.raises(VolumePathNotFoundException):
        volume.read_file("/up")
    link = volume.get_info("/etc-link")
    assert link.type.value == "symlink" and link.target == "/etc"
    volume.remove("/etc-link")  # removes the link, not what it points to
    assert s.commands.run("test -e /etc/passwd && echo ok").stdout == "ok\n"


def test_mount_validation(sbx_daemon, volume):
    cases = [
        ([{"name": volume.name, "path": "relative"}], "path must be absolute"),
        ([{"name": volume.name, "path": "/proc/x"}], "system directory"),
        ([{"name": volume.name, "path": "/mnt/a/../b"}], "clean"),
        ([{"name": volume.name, "path": "/mnt/a"}, {"name": volume.name, "path": "/mnt/a"}],
         "#1: path overlaps"),
        ([{"name": "nosuch", "path": "/mnt/a"}], "volume 'nosuch' not found"),
        ([{"name": volume.name}], "must be strings"),
    ]
    for mounts, message in cases:
        status, _, body = sbx_daemon.request("POST", "/sandboxes",
                                             body={"templateID": "base", "volumeMounts": mounts})
        assert status == 400, (mounts, body)
        msg = json.loads(body)["message"]
        assert msg.startswith("invalid mounts:\n\t- volume mount #") and message in msg, msg
    with pytest.raises(SandboxException):
        Sandbox.create(volume_mounts={"/etc/x": volume})


def test_delete_is_refused_while_mounted(volume, sandbox_factory):
    s = sandbox_factory(volume_mounts={"/mnt/v": volume})
    with pytest.raises(VolumeException, match="mounted by sandbox"):
        Volume.destroy(volume.volume_id)
    assert s.pause() is True  # paused sandboxes keep their volumes
    with pytest.raises(VolumeException, match="mounted by sandbox"):
        Volume.destroy(volume.volume_id)
    s.kill()


def test_volumes_across_a_filesystem_pause(volume, sandbox_factory):
    s = sandbox_factory(volume_mounts={"/mnt/v": volume})
    s.commands.run("echo before > /mnt/v/f")
    assert s.pause(mode="filesystem") is True
    volume.write_file("/while-paused", "p")
    s.connect()
    assert s.commands.run("cat /mnt/v/f /mnt/v/while-paused").stdout == "before\np"


@pytest.mark.timeout(120)
def test_a_clean_stop_leaves_no_nobodys_sandbox(sbx_daemon, tmp_path):
    """SIGTERM destroys the pools' sandboxes and the volumes' content services (nobody's);
    volumes and their data stay."""
    import shutil
    import tempfile
    import time

    from conftest import Daemon
    state = tempfile.mkdtemp(prefix="sbx-state-", dir="/var/tmp")
    os.chmod(state, 0o711)
    d = Daemon(sbx_daemon.binary, state, tmp_path / "daemon.log")
    try:
        d.start()
        status, _, body = d.request("POST", "/volumes", body={"name": "kept"})
        assert status == 201
        vol = json.loads(body)
        # A content request starts the volume's service.
        status, _, _ = http_request(d.host, d.port, "PUT",
                                    f"/volumecontent/{vol['volumeID']}/file?path=/f",
                                    body=b"data", headers={"Authorization": "Bearer " + vol["token"]})
        assert status == 201
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, _, body = d.request("GET", "/pools")
            if all(p["warm"] == p["target"] for p in json.loads(body)):
                break
            time.sleep(0.2)
        assert os.listdir(os.path.join(state, "sandboxes")), "pools and the service run"
        assert d.stop() == 0
        assert os.listdir(os.path.join(state, "sandboxes")) == [], d.log_tail()
        assert os.path.exists(os.path.join(state, "volumes", vol["volumeID"], "volume.img"))
    finally:
        if d.is_alive():
            d.stop()
        shutil.rmtree(state, ignore_errors=True)
