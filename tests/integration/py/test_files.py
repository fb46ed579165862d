"""sandbox.files.* through the official Python SDK (sync and async), signed URLs fetched with
plain urllib, and hostile or broken /files input sent raw."""

import gzip
import io
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from e2b import (
    AsyncSandbox,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
)
from e2b.exceptions import FileNotFoundException
from helpers import http_request, wait_for

HOME = "/home/user"


# -- helpers --------------------------------------------------------------------------------


def _envd(sbx, method, target, body=None, headers=None, token=True, sandbox_id=True):
    """One raw request to the sandbox's envd through the daemon; (status, headers, body)."""
    url = urllib.parse.urlparse(os.environ["E2B_SANDBOX_URL"])
    h = {}
    if sandbox_id:
        h["E2b-Sandbox-Id"] = sbx.sandbox_id
        h["E2b-Sandbox-Port"] = "49983"
    if token and sbx._envd_access_token:
        h["X-Access-Token"] = sbx._envd_access_token
    h.update(headers or {})
    return http_request(url.hostname, url.port, method, target, body, h)


def _multipart(parts, boundary="sbxtestboundary"):
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _q(**params):
    return "/files?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


# -- read / write ---------------------------------------------------------------------------


def test_write_read_text_bytes_stream(sandbox):
    info = sandbox.files.write("hello.txt", "héllo\n")
    assert (info.name, info.path, info.type) == ("hello.txt", f"{HOME}/hello.txt", FileType.FILE)
    assert sandbox.files.read("hello.txt") == "héllo\n"
    assert sandbox.files.read(f"{HOME}/hello.txt", format="bytes") == bytearray("héllo\n".encode())
    data = os.urandom(3 * 1024 * 1024 + 17)
    sandbox.files.write("bin/blob", data)
    with sandbox.files.read("bin/blob", format="stream") as s:
        assert b"".join(s) == data
    assert bytes(sandbox.files.read("bin/blob", format="bytes")) == data


def test_empty_files(sandbox):
    sandbox.files.write("empty", b"")
    assert sandbox.files.read("empty") == ""
    assert sandbox.files.read("empty", format="bytes") == bytearray()
    with sandbox.files.read("empty", format="stream") as s:
        assert b"".join(s) == b""
    assert sandbox.files.get_info("empty").size == 0


def test_write_streamed_file_like_and_iterable(sandbox):
    data = os.urandom(1024 * 1024)
    sandbox.files.write("fl.bin", io.BytesIO(data))
    assert bytes(sandbox.files.read("fl.bin", format="bytes")) == data
    sandbox.files.write("it.bin", iter([data[:1000], data[1000:]]))
    assert bytes(sandbox.files.read("it.bin", format="bytes")) == data


def test_write_many_files_nested_and_absolute(sandbox):
    infos = sandbox.files.write_files(
        [
            {"path": "many/a.txt", "data": "A"},
            {"path": "many/deep/er/b.txt", "data": b"B"},
            {"path": "/tmp/abs/c.txt", "data": "C"},
        ]
    )
    assert [(i.name, i.path) for i in infos] == [
        ("a.txt", f"{HOME}/many/a.txt"),
        ("b.txt", f"{HOME}/many/deep/er/b.txt"),
        ("c.txt", "/tmp/abs/c.txt"),
    ]
    assert sandbox.files.read("many/deep/er/b.txt") == "B"
    assert sandbox.files.read("/tmp/abs/c.txt") == "C"
    # Created parents belong to the user, 0755.
    d = sandbox.files.get_info("many/deep")
    assert (d.type, d.owner, d.mode) == (FileType.DIR, "user", 0o755)
    assert sandbox.files.write_files([]) == []


def test_overwrite_truncates(sandbox):
    sandbox.files.write("o.txt", "a long first version")
    sandbox.files.write("o.txt", "short")
    assert sandbox.files.read("o.txt") == "short"


def test_gzip_both_ways(sandbox):
    data = b"compress me " * 10000
    info = sandbox.files.write("gz.txt", data, gzip=True)
    assert info.path == f"{HOME}/gz.txt"
    assert bytes(sandbox.files.read("gz.txt", format="bytes", gzip=True)) == data
    # The raw answer really is gzip when asked for, identity otherwise.
    st, h, body = _envd(sandbox, "GET", _q(path="gz.txt"), headers={"Accept-Encoding": "gzip"})
    assert st == 200, body
    assert h["Content-Encoding"] == "gzip" and gzip.decompress(body) == data
    st, h, body = _envd(sandbox, "GET", _q(path="gz.txt"), headers={"Accept-Encoding": "identity"})
    assert st == 200, body
    assert "Content-Encoding" not in h and body == data
    assert int(h["Content-Length"]) == len(data)
    # An HTTP library's default list is answered with identity (cheaper; always acceptable).
    st, h, body = _envd(sandbox, "GET", _q(path="gz.txt"),
                        headers={"Accept-Encoding": "gzip, deflate"})
    assert st == 200 and "Content-Encoding" not in h and body == data
    st, _, body = _envd(sandbox, "GET", _q(path="gz.txt"),
                        headers={"Accept-Encoding": "br, identity;q=0"})
    assert st == 406
    assert h["Content-Disposition"] == 'inline; filename="gz.txt"'


def test_read_missing_and_directory(sandbox):
    with pytest.raises(FileNotFoundException):
        sandbox.files.read("does/not/exist")
    st, _, body = _envd(sandbox, "GET", _q(path="nope.txt"))
    assert st == 404
    assert json.loads(body) == {"code": 404, "message": f"path '{HOME}/nope.txt' does not exist"}
    st, _, body = _envd(sandbox, "GET", _q(path="/tmp"))
    assert st == 400 and "is a directory" in json.loads(body)["message"]
    with pytest.raises(InvalidArgumentException):
        sandbox.files.write("/tmp", "x")


# -- users ----------------------------------------------------------------------------------


def test_users_and_permissions(sandbox, run_cmd):
    info = sandbox.files.write("mine.txt", "x")
    st = sandbox.files.get_info(info.path)
    assert (st.owner, st.group, st.mode, st.permissions) == ("user", "user", 0o644, "-rw-r--r--")
    # As on E2B every file operation is envd's, done as root for whichever user: the default
    # user reads, lists, stats, moves and removes in root's 0700 /root, which its own commands
    # cannot, and what it writes there is made as root and handed to it.
    r = run_cmd(sandbox, "sudo sh -c 'mkdir -m 700 /root/secret && printf s3 > /root/secret/r.txt"
                         " && chmod 600 /root/secret/r.txt'; stat -c '%U %a' /root; ls /root")
    assert r.stdout.startswith("root 700\n") and r.exit_code != 0, (r.stdout, r.stderr)
    assert sandbox.files.read("/root/secret/r.txt") == "s3"
    st = sandbox.files.get_info("/root/secret/r.txt")
    assert (st.owner, st.group, st.mode) == ("root", "root", 0o600)
    assert sandbox.files.write("/root/handed.txt", "x").path == "/root/handed.txt"
    assert sandbox.files.read("/root/handed.txt") == "x"
    st = sandbox.files.get_info("/root/handed.txt")
    assert (st.owner, st.group, st.mode) == ("user", "user", 0o644)
    assert {"secret", "handed.txt"} <= {e.name for e in sandbox.files.list("/root")}
    assert [e.path for e in sandbox.files.list("/root", depth=2) if e.name == "r.txt"] == [
        "/root/secret/r.txt"]
    moved = sandbox.files.rename("/root/secret/r.txt", "/root/moved/r.txt")
    assert (moved.path, moved.owner, moved.mode) == ("/root/moved/r.txt", "root", 0o600)
    assert sandbox.files.get_info("/root/moved").owner == "user"  # made for the mover
    sandbox.files.remove("/root/secret")
    sandbox.files.remove("/root/moved")
    assert not sandbox.files.exists("/root/secret") and not sandbox.files.exists("/root/moved")
    assert run_cmd(sandbox, "sudo ls /root/secret /root/moved").exit_code != 0
    r = sandbox.files.write("/root/yes.txt", "x", user="root")
    assert r.path == "/root/yes.txt"
    st = sandbox.files.get_info("/root/yes.txt", user="root")
    assert (st.owner, st.group) == ("root", "root")
    assert sandbox.files.read("~/yes.txt", user="root") == "x"
    assert sandbox.files.write("rel.txt", "y", user="root").path == "/root/rel.txt"


def _read_stream(sbx, path):
    with sbx.files.read(path, format="stream") as s:
        return b"".join(s).decode()


# Every form in which the SDKs (and presigned URLs) download a file.
READS = {
    "text": lambda s, p: s.files.read(p),
    "bytes": lambda s, p: bytes(s.files.read(p, format="bytes")).decode(),
    "stream": _read_stream,
    "gzip": lambda s, p: s.files.read(p, gzip=True),
    "signed-url": lambda s, p: _fetch(s.download_url(p))[1].decode(),
}


@pytest.mark.parametrize("form", list(READS))
def test_reads_are_roots_for_the_user(sandbox, run_cmd, form):
    """As on E2B (envd reads as root), the default user reads back a file that only root
    can read, in every form a download takes."""
    r = run_cmd(sandbox, "sudo sh -c 'mkdir -m 700 /root/r && printf secret > /root/r/f.txt && "
                         "chmod 600 /root/r/f.txt'; cat /root/r/f.txt")
    assert r.exit_code != 0 and "Permission denied" in r.stderr, r.stderr
    assert READS[form](sandbox, "/root/r/f.txt") == "secret"
    # And what the user writes there, it reads back.
    sandbox.files.write("/root/r/mine.txt", f"mine {form}")
    assert READS[form](sandbox, "/root/r/mine.txt") == f"mine {form}"


def test_watchers_are_roots_for_the_user(sandbox, run_cmd):
    """The default user watches a directory only root can read (polled, the sync SDK's)."""
    assert run_cmd(sandbox, "sudo mkdir -m 700 -p /root/w/sub").exit_code == 0
    h = sandbox.files.watch_dir("/root/w", recursive=True)
    assert run_cmd(sandbox, "sudo sh -c 'echo x > /root/w/sub/f.txt && rm /root/w/sub/f.txt'"
                   ).exit_code == 0
    assert _events(h) == [("create", "sub/f.txt"), ("write", "sub/f.txt"),
                          ("remove", "sub/f.txt")]
    h.stop()


async def test_async_root_paths_for_the_user(async_sandbox):
    """The same with the async SDK: read, list, stat, move, remove and the WatchDir stream of
    paths below root's 0700 /root, as the default user."""
    import asyncio
    s = async_sandbox
    r = await s.commands.run("sudo sh -c 'mkdir -m 700 /root/a && printf s > /root/a/f.txt'")
    assert r.exit_code == 0
    assert await s.files.read("/root/a/f.txt") == "s"
    assert (await s.files.get_info("/root/a")).owner == "root"
    assert [e.name for e in await s.files.list("/root/a")] == ["f.txt"]
    events = []
    h = await s.files.watch_dir("/root/a", lambda e: events.append((e.type.value, e.name)))
    moved = await s.files.rename("/root/a/f.txt", "/root/a/g.txt")
    assert moved.path == "/root/a/g.txt"
    await s.files.remove("/root/a/g.txt")
    for _ in range(100):
        if ("remove", "g.txt") in events:
            break
        await asyncio.sleep(0.05)
    assert events == [("rename", "f.txt"), ("create", "g.txt"), ("remove", "g.txt")]
    await h.stop()
    assert not await s.files.exists("/root/a/g.txt")


# -- writes as envd makes them: as root, handed to the user ---------------------------------


def _events(handle):
    """The polled watcher's new events as (type, name), in order."""
    return [(e.type.value, e.name) for e in handle.get_new_events()]


def _collapsed(events):
    """Events with consecutive repeats folded into one: the kernel folds a repeat of the last
    event still unread, so whether an overwrite's truncation and its write show as one WRITE
    or two depends on when the watcher reads, on E2B as here."""
    return [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]


def _upload_signed(sbx, path, data):
    body, ct = _multipart([("file", None, data)])
    st, out = _fetch(sbx.upload_url(path), data=body, headers={"Content-Type": ct})
    assert st == 200, out


# Every form in which the SDKs (and presigned URLs) upload a file.
UPLOADS = {
    "multipart": lambda s, p, d: s.files.write(p, d),
    "octet-stream": lambda s, p, d: s.files.write(p, io.BytesIO(d)),
    "gzip": lambda s, p, d: s.files.write(p, d, gzip=True),
    "multipart-many": lambda s, p, d: s.files.write_files([{"path": p, "data": d}]),
    "octet-stream-many": lambda s, p, d: s.files.write_files([{"path": p, "data": d}],
                                                             use_octet_stream=True),
    "signed-url": _upload_signed,
}


@pytest.mark.parametrize("form", list(UPLOADS))
def test_uploads_make_missing_parents_as_root_for_the_user(sandbox, form):
    """As on E2B, the default user can write /<new>/a/x.txt although it cannot write /: the
    parents and the file are made as root, then handed to the user, 0755 and 0644, and a
    watcher of / sees the new directory made (CREATE) and handed over (CHMOD)."""
    top = f"sbx-{form}"
    h = sandbox.files.watch_dir("/")
    UPLOADS[form](sandbox, f"/{top}/a/x.txt", b"hello")
    assert sandbox.files.read(f"/{top}/a/x.txt") == "hello"
    for path, mode in [(f"/{top}", 0o755), (f"/{top}/a", 0o755), (f"/{top}/a/x.txt", 0o644)]:
        st = sandbox.files.get_info(path)
        assert (st.owner, st.group, st.mode) == ("user", "user", mode), path
    assert _events(h) == [("create", top), ("chmod", top)]
    h.stop()


def test_make_dir_makes_missing_parents_as_root_for_the_user(sandbox):
    h = sandbox.files.watch_dir("/")
    assert sandbox.files.make_dir("/sbx-mk/a/b") is True
    for path in ["/sbx-mk", "/sbx-mk/a", "/sbx-mk/a/b"]:
        st = sandbox.files.get_info(path)
        assert (st.owner, st.group, st.mode, st.permissions) == (
            "user", "user", 0o755, "drwxr-xr-x"), path
    assert _events(h) == [("create", "sbx-mk"), ("chmod", "sbx-mk")]
    assert sandbox.files.make_dir("/sbx-mk/a/b") is False
    assert sandbox.files.make_dir("/sbx-mk/a/b", user="root") is False
    # As root the new directory is root's.
    assert sandbox.files.make_dir("/sbx-mk/r", user="root") is True
    st = sandbox.files.get_info("/sbx-mk/r")
    assert (st.owner, st.group, st.mode) == ("root", "root", 0o755)
    # Move makes the destination's parents the same way.
    sandbox.files.write("mv.txt", "m")
    assert sandbox.files.rename("mv.txt", "/sbx-mv/d/mv.txt").path == "/sbx-mv/d/mv.txt"
    st = sandbox.files.get_info("/sbx-mv/d")
    assert (st.owner, st.group, st.mode) == ("user", "user", 0o755)
    h.stop()


def test_watchers_see_envds_event_sequences(sandbox, run_cmd):
    """The polled watcher (the sync SDK's) sees what E2B's watchers see for each write: a new
    file is CREATE, CHMOD, WRITE (E2B's test_watch_iterated counts these three), an
    overwritten one CHMOD, WRITE; an existing root file written by the user becomes the
    user's with its mode kept, as envd's chown does."""
    sandbox.files.make_dir("ev")
    r = run_cmd(sandbox, "sudo sh -c 'echo old > ~user/ev/root.txt && chmod 600 ~user/ev/root.txt'")
    assert r.exit_code == 0, r.stderr
    h = sandbox.files.watch_dir("ev")
    sandbox.files.write("ev/new.txt", "1")
    assert _events(h) == [("create", "new.txt"), ("chmod", "new.txt"), ("write", "new.txt")]
    sandbox.files.write("ev/new.txt", "22")
    assert _collapsed(_events(h)) == [("chmod", "new.txt"), ("write", "new.txt")]
    sandbox.files.write("ev/root.txt", "mine")
    assert _collapsed(_events(h)) == [("chmod", "root.txt"), ("write", "root.txt")]
    st = sandbox.files.get_info("ev/root.txt")
    assert (st.owner, st.group, st.mode) == ("user", "user", 0o600)
    assert sandbox.files.read("ev/root.txt") == "mine"
    sandbox.files.write("ev/empty.txt", "")
    assert _events(h) == [("create", "empty.txt"), ("chmod", "empty.txt")]
    sandbox.files.write("ev/meta.txt", "m", metadata={"k": "v"})
    assert _events(h) == [("create", "meta.txt"), ("chmod", "meta.txt"), ("write", "meta.txt"),
                          ("chmod", "meta.txt")]
    sandbox.files.make_dir("ev/d/e")
    assert _events(h) == [("create", "d"), ("chmod", "d")]
    h.stop()
    # E2B's test_watch_recursive_directory_changes: three events, named below the root.
    sandbox.files.make_dir("rec/nested")
    h = sandbox.files.watch_dir("rec", recursive=True)
    sandbox.files.write("rec/nested/f.txt", "x")
    assert _events(h) == [("create", "nested/f.txt"), ("chmod", "nested/f.txt"),
                          ("write", "nested/f.txt")]
    h.stop()


def test_recursive_watch_reports_new_directories_as_envd(sandbox, run_cmd):
    """A recursive watcher watches directories made after it started, and reports what it
    finds in them as created, as envd's fsnotify walks a new directory: a directory made
    with contents (MakeDir of a/b, an upload of a/b/c.txt, a tree moved in) shows each entry,
    and what happens in it afterwards is seen. A directory moved within the tree keeps being
    watched under its new name without being reported again; one moved out is no longer
    watched."""
    sandbox.files.make_dir("rw")
    h = sandbox.files.watch_dir("rw", recursive=True)
    sandbox.files.make_dir("rw/a/b")
    assert _events(h) == [("create", "a"), ("create", "a/b"), ("chmod", "a")]
    sandbox.files.write("rw/a/b/c.txt", "x")
    assert _events(h) == [("create", "a/b/c.txt"), ("chmod", "a/b/c.txt"), ("write", "a/b/c.txt")]
    # The upload makes a2, a2/b and c.txt (handing each to the user) before the watcher learns
    # of a2; whether its write comes after b's watch is added depends on how the body arrives.
    sandbox.files.write("rw/a2/b/c.txt", "x")
    got = _events(h)
    assert got[:4] == [("create", "a2"), ("create", "a2/b"), ("create", "a2/b/c.txt"),
                       ("chmod", "a2")], got
    assert set(got[4:]) <= {("write", "a2/b/c.txt")}, got
    # A tree moved in (one rename), moved within, moved out.
    r = run_cmd(sandbox, "mkdir -p ~/stage/t/x && echo 1 > ~/stage/t/x/f && mv ~/stage/t ~/rw/t")
    assert r.exit_code == 0, r.stderr
    assert _events(h) == [("create", "t"), ("create", "t/x"), ("create", "t/x/f")]
    assert run_cmd(sandbox, "mv ~/rw/t ~/rw/u && echo 2 > ~/rw/u/x/g").exit_code == 0
    assert _events(h) == [("rename", "t"), ("create", "u"), ("create", "u/x/g"),
                          ("write", "u/x/g")]
    assert run_cmd(sandbox, "mv ~/rw/u ~/stage/u").exit_code == 0
    assert _events(h) == [("rename", "u")]
    assert run_cmd(sandbox, "echo 3 > ~/stage/u/x/h && echo 4 > ~/rw/a/after").exit_code == 0
    assert _events(h) == [("create", "a/after"), ("write", "a/after")]
    h.stop()


def test_watch_reports_the_watched_directory_itself_as_envd(sandbox, run_cmd):
    """fsnotify names events on a watched directory itself after it, "." for the root: its
    changes of attributes, its removal and its move (after which it is no longer watched). A
    subdirectory's change of attributes is reported by its parent's watch and its own, twice,
    as envd reports it. The root's entry is the root's own, its path clean."""
    sandbox.files.make_dir("sw/sub")
    h = sandbox.files.watch_dir("sw", recursive=True)
    assert run_cmd(sandbox, "chmod 700 ~/sw/sub && chmod 700 ~/sw").exit_code == 0
    assert _events(h) == [("chmod", "sub"), ("chmod", "sub"), ("chmod", ".")]
    assert run_cmd(sandbox, "mv ~/sw ~/sw2 && touch ~/sw2/after").exit_code == 0
    assert _events(h) == [("rename", ".")]
    h.stop()
    sandbox.files.make_dir("se")
    h = sandbox.files.watch_dir("se", include_entry=True)
    assert run_cmd(sandbox, "chmod 700 ~/se").exit_code == 0
    [ev] = h.get_new_events()
    assert (ev.name, ev.entry.name, ev.entry.path, ev.entry.mode) == (
        ".", "se", "/home/user/se", 0o700)
    h.stop()
    sandbox.files.write("rm1/f", "x")
    h = sandbox.files.watch_dir("rm1")
    assert run_cmd(sandbox, "rm -r ~/rm1").exit_code == 0
    assert _events(h) == [("remove", "f"), ("remove", ".")]
    h.stop()


async def test_recursive_watch_stream_reports_new_directories(async_sandbox):
    """The same on the WatchDir stream (the async SDK's), entries included."""
    import asyncio
    s = async_sandbox
    await s.files.make_dir("rs")
    events = []
    h = await s.files.watch_dir("rs", lambda e: events.append(e), recursive=True,
                                include_entry=True)
    await s.files.make_dir("rs/a/b")
    await s.files.write("rs/a/b/c.txt", "x")
    want = [("create", "a"), ("create", "a/b"), ("chmod", "a"), ("create", "a/b/c.txt"),
            ("chmod", "a/b/c.txt"), ("write", "a/b/c.txt")]
    for _ in range(100):
        if len(events) >= len(want):
            break
        await asyncio.sleep(0.05)
    assert [(e.type.value, e.name) for e in events] == want
    assert events[1].entry.path == f"{HOME}/rs/a/b" and events[1].entry.type == FileType.DIR
    await h.stop()


async def test_watch_stream_sees_envds_event_sequences(async_sandbox):
    """The same sequences on the WatchDir stream (the async SDK's)."""
    import asyncio
    s = async_sandbox
    await s.files.make_dir("ev")
    events = []
    h = await s.files.watch_dir("ev", lambda e: events.append((e.type.value, e.name)))

    # Each step ends with a fence, a directory made after it: the stream is in order, so the
    # step's events are exactly those before the fence's.
    fences = []

    async def step(op, want, fold=False):
        start = len(events)
        await op
        fence = f"fence{len(fences)}"
        fences.append(fence)
        await s.files.make_dir(f"ev/{fence}")
        for _ in range(100):
            if ("chmod", fence) in events[start:]:
                break
            await asyncio.sleep(0.05)
        got = events[start:events.index(("create", fence), start)]
        assert (_collapsed(got) if fold else got) == want

    await step(s.files.write("ev/new.txt", "1"),
               [("create", "new.txt"), ("chmod", "new.txt"), ("write", "new.txt")])
    await step(s.files.write("ev/new.txt", "22"), [("chmod", "new.txt"), ("write", "new.txt")],
               fold=True)
    await step(s.files.write("/home/user/ev/gz.txt", "z" * 1000, gzip=True),
               [("create", "gz.txt"), ("chmod", "gz.txt"), ("write", "gz.txt")], fold=True)
    await step(s.files.make_dir("ev/d/e"), [("create", "d"), ("chmod", "d")])
    await h.stop()
    st = await s.files.get_info("ev/d/e")
    assert (st.owner, st.mode) == ("user", 0o755)


# -- filesystem RPCs ------------------------------------------------------------------------


def test_stat_exists_make_dir_rename_remove(sandbox):
    assert sandbox.files.exists("nothing") is False
    assert sandbox.files.make_dir("dir/sub") is True
    assert sandbox.files.make_dir("dir/sub") is False
    assert sandbox.files.exists("dir/sub")
    sandbox.files.write("file.txt", "abc")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir("file.txt")
    st = sandbox.files.get_info("file.txt")
    assert (st.name, st.type, st.path, st.size) == ("file.txt", FileType.FILE, f"{HOME}/file.txt", 3)
    assert st.modified_time.year >= 2024
    moved = sandbox.files.rename("file.txt", "dir/new/moved.txt")
    assert (moved.name, moved.path) == ("moved.txt", f"{HOME}/dir/new/moved.txt")
    assert not sandbox.files.exists("file.txt")
    with pytest.raises(FileNotFoundException):
        sandbox.files.rename("file.txt", "x.txt")
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info("file.txt")
    sandbox.files.remove("dir")
    assert not sandbox.files.exists("dir")
    sandbox.files.remove("dir")  # missing is not an error


def test_list_depth_order(sandbox):
    for p in ["ls/file1.txt", "ls/subdir1/subdir1_1/f", "ls/subdir1/subdir1_2/f", "ls/subdir2/f"]:
        sandbox.files.write(p, "x")
    names = lambda es: [e.path[len(f"{HOME}/ls/"):] for e in es]
    assert names(sandbox.files.list("ls")) == ["file1.txt", "subdir1", "subdir2"]
    assert names(sandbox.files.list("ls", depth=2)) == [
        "file1.txt", "subdir1", "subdir1/subdir1_1", "subdir1/subdir1_2", "subdir2", "subdir2/f",
    ]
    assert len(sandbox.files.list("ls", depth=3)) == 8
    with pytest.raises(FileNotFoundException):
        sandbox.files.list("nope")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.list("ls/file1.txt")


def test_symlinks(sandbox, run_cmd):
    sandbox.files.write("t/target.txt", "target")
    run_cmd(sandbox, f"ln -s {HOME}/t/target.txt {HOME}/t/link && ln -s {HOME}/t {HOME}/dirlink"
                     f" && ln -s /nowhere {HOME}/t/dangling")
    st = sandbox.files.get_info("t/link")
    assert st.symlink_target == f"{HOME}/t/target.txt"
    assert st.type == FileType.SYMLINK  # the Python SDK shows isSymlink entries as symlinks
    assert st.mode == 0o644 and st.permissions.startswith("L")
    assert sandbox.files.read("t/link") == "target"
    # Writing through the link updates the target, the link stays.
    sandbox.files.write("t/link", "changed")
    assert sandbox.files.read("t/target.txt") == "changed"
    assert sandbox.files.get_info("t/link").symlink_target == f"{HOME}/t/target.txt"
    # The root of a listing may be a link to a directory; paths keep the requested form.
    # A dangling link has no type, and the SDK leaves such entries out.
    assert [e.path for e in sandbox.files.list("dirlink")] == [
        f"{HOME}/dirlink/link", f"{HOME}/dirlink/target.txt"]


def test_metadata_round_trip(sandbox):
    info = sandbox.files.write("m.txt", "x", metadata={"Owner": "alice", "k2": "v 2"})
    assert info.metadata == {"owner": "alice", "k2": "v 2"}
    assert sandbox.files.get_info("m.txt").metadata == {"owner": "alice", "k2": "v 2"}
    assert [e.metadata for e in sandbox.files.list(".") if e.name == "m.txt"] == [
        {"owner": "alice", "k2": "v 2"}]
    moved = sandbox.files.rename("m.txt", "m2.txt")
    assert moved.metadata == {"owner": "alice", "k2": "v 2"}
    # An upload without metadata clears it.
    assert sandbox.files.write("m2.txt", "y").metadata is None
    assert sandbox.files.get_info("m2.txt").metadata is None


def test_metadata_limits(sandbox):
    st, _, body = _envd(sandbox, "POST", _q(path="big.txt"), body=b"x",
                        headers={"Content-Type": "application/octet-stream",
                                 "X-Metadata-" + "k" * 300: "v"})
    assert st == 400, body
    st, _, body = _envd(sandbox, "POST", _q(path="big.txt"), body=b"x",
                        headers={"Content-Type": "application/octet-stream",
                                 "X-Metadata-a": "v" * 3000, "X-Metadata-b": "v" * 3000})
    assert st == 400, body
    assert not sandbox.files.exists("big.txt")


# -- watch ----------------------------------------------------------------------------------


def test_watch_sync_polling(sandbox):
    sandbox.files.make_dir("w/nested")
    h = sandbox.files.watch_dir("w", recursive=True, include_entry=True)
    sandbox.files.write("w/a.txt", "1")
    sandbox.files.make_dir("w/later")
    time.sleep(0.3)
    sandbox.files.write("w/later/b.txt", "2")
    sandbox.files.write("w/nested/c.txt", "3")
    seen = []

    def have_all():
        seen.extend(h.get_new_events())
        got = {(e.type.value, e.name) for e in seen}
        return {("write", "a.txt"), ("create", "later"), ("write", "later/b.txt"),
                ("write", "nested/c.txt")} <= got

    assert wait_for(have_all), seen
    writes = [e for e in seen if e.name == "a.txt" and e.type.value == "write"]
    assert writes[0].entry is not None and writes[0].entry.path == f"{HOME}/w/a.txt"
    h.stop()
    with pytest.raises(SandboxException):
        h.get_new_events()


def test_watch_errors(sandbox):
    with pytest.raises(FileNotFoundException):
        sandbox.files.watch_dir("no_such_dir")
    sandbox.files.write("plain.txt", "x")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.watch_dir("plain.txt")


async def test_async_files_and_watch(async_sandbox):
    s = async_sandbox
    await s.files.make_dir("aw")
    events = []
    h = await s.files.watch_dir("aw", lambda e: events.append(e), recursive=True)
    await s.files.write("aw/x.txt", "hello")
    await s.files.make_dir("aw/sub")
    import asyncio
    await asyncio.sleep(0.3)
    await s.files.write("aw/sub/y.txt", "nested")
    for _ in range(50):
        names = {(e.type.value, e.name) for e in events}
        if {("write", "aw/x.txt"[3:]), ("write", "sub/y.txt")} <= names:
            break
        await asyncio.sleep(0.1)
    assert ("write", "x.txt") in names and ("write", "sub/y.txt") in names, events
    await h.stop()
    assert await s.files.read("aw/x.txt") == "hello"
    infos = await s.files.write_files([{"path": "aw/1", "data": "1"}, {"path": "aw/2", "data": "2"}])
    assert [i.name for i in infos] == ["1", "2"]
    assert [e.name for e in await s.files.list("aw")] == ["1", "2", "sub", "x.txt"]
    assert await s.files.exists("aw/1")
    await s.files.remove("aw")
    assert not await s.files.exists("aw")
    with pytest.raises(FileNotFoundException):
        await s.files.read("aw/1")


# -- signed URLs ----------------------------------------------------------------------------


def _fetch(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_signed_urls_without_headers(sandbox):
    """Presigned URLs carry no sandbox id: the daemon finds the sandbox by the signature."""
    if not sandbox._envd_access_token:
        pytest.skip("sandbox has no access token")
    sandbox.files.write("hello.txt", "hi user")
    sandbox.files.write("/root/hello.txt", "hi root", user="root")
    assert _fetch(sandbox.download_url("hello.txt")) == (200, b"hi user")
    assert _fetch(sandbox.download_url("/root/hello.txt", user="root")) == (200, b"hi root")
    # Read as root for the default user too, as envd reads.
    assert _fetch(sandbox.download_url("/root/hello.txt")) == (200, b"hi root")
    body, ct = _multipart([("file", None, b"uploaded")])
    st, out = _fetch(sandbox.upload_url("up.txt"), data=body, headers={"Content-Type": ct})
    assert (st, json.loads(out)) == (200, [{"name": "up.txt", "path": f"{HOME}/up.txt",
                                             "type": "file"}])
    st, out = _fetch(sandbox.upload_url("up.txt", user="root"), data=body,
                     headers={"Content-Type": ct})
    assert (st, json.loads(out)) == (200, [{"name": "up.txt", "path": "/root/up.txt",
                                             "type": "file"}])
    assert sandbox.files.read("/root/up.txt", user="root") == "uploaded"
    st, out = _fetch(sandbox.download_url("hello.txt", use_signature_expiration=-10))
    assert (st, json.loads(out)) == (401, {"code": 401, "message": "signature is already expired"})
    assert _fetch(sandbox.download_url("hello.txt", use_signature_expiration=60)) == (200, b"hi user")
    # A signature no recently used sandbox's token makes: 401 from the daemon, in envd's format.
    forged = sandbox.download_url("hello.txt").replace("signature=v1_", "signature=v1_x")
    st, out = _fetch(forged)
    assert st == 401 and json.loads(out)["message"].startswith("invalid signature"), out


def test_signature_rules_at_the_agent(sandbox):
    """§5.3 as the agent enforces it (request routed by sandbox id, no access token)."""
    if not sandbox._envd_access_token:
        pytest.skip("sandbox has no access token")
    sandbox.files.write("s.txt", "signed")
    url = urllib.parse.urlparse(sandbox.download_url("s.txt"))
    st, _, body = _envd(sandbox, "GET", f"/files?{url.query}", token=False)
    assert (st, body) == (200, b"signed")
    st, _, body = _envd(sandbox, "GET", _q(path="s.txt"), token=False)
    assert (st, json.loads(body)["message"]) == (401, "missing signature query parameter")
    st, _, body = _envd(sandbox, "GET", f"/files?{url.query}".replace("s.txt", "t.txt"),
                        token=False)
    assert (st, json.loads(body)["message"]) == (401, "invalid signature")
    st, _, body = _envd(sandbox, "GET", _q(path="s.txt"), headers={"X-Access-Token": "wrong"},
                        token=False)
    assert (st, json.loads(body)["message"]) == (
        401, "access token present in header but does not match")
    expired = urllib.parse.urlparse(sandbox.download_url("s.txt", use_signature_expiration=-1))
    st, _, body = _envd(sandbox, "GET", f"/files?{expired.query}", token=False)
    assert (st, json.loads(body)) == (401, {"code": 401, "message": "signature is already expired"})
    st, _, body = _envd(sandbox, "GET", _q(path="s.txt", username="no_such_user"))
    assert st == 401 and json.loads(body)["message"].startswith("error looking up user")


# -- hostile paths --------------------------------------------------------------------------


def test_dotdot_and_proc_links_stay_inside(sandbox, run_cmd, tmp_path):
    marker = f"/tmp/sbx-host-marker-{os.getpid()}"
    with open(marker, "w") as f:
        f.write("host secret")
    try:
        passwd = run_cmd(sandbox, "cat /etc/passwd").stdout
        assert sandbox.files.read("../../../../../../etc/passwd") == passwd
        run_cmd(sandbox, f"ln -s /proc/1/root {HOME}/p1 && ln -s / {HOME}/abs", user="root")
        assert sandbox.files.read("abs/etc/passwd") == passwd
        with pytest.raises(FileNotFoundException):
            sandbox.files.read(marker, user="root")
        # The agent (PID 1) acts as root but never through a /proc magic link, for any user,
        # though its /proc/self/root (its own root) is the sandbox's "/" (unlike envd, which
        # follows them), and reads nothing on /proc: its own entries are there.
        for user in ("user", "root"):
            for p in ["/proc/self/root/etc/passwd", "/proc/1/root/etc/passwd",
                      f"{HOME}/p1{marker}", f"{HOME}/p1/etc/passwd"]:
                with pytest.raises(InvalidArgumentException, match="never follows"):
                    sandbox.files.read(p, user=user)
            for p in ["/proc/1/environ", "/proc/self/status", "/proc/thread-self/comm"]:
                with pytest.raises(SandboxException, match="on /proc"):
                    sandbox.files.read(p, user=user)
        with pytest.raises(SandboxException):
            sandbox.files.write("/proc/1/oom_score_adj", "1000")
        # Writes through .. chains land inside the sandbox.
        info = sandbox.files.write("../../../tmp/dd.txt", "x")
        assert info.path == "/tmp/dd.txt"
        assert not os.path.exists("/tmp/dd.txt") or open("/tmp/dd.txt").read() != "x"
    finally:
        os.unlink(marker)


def test_long_nul_and_invalid_utf8_paths(sandbox):
    with pytest.raises(InvalidArgumentException):
        sandbox.files.write("a" * 300, "x")  # component over NAME_MAX
    with pytest.raises(InvalidArgumentException):
        sandbox.files.get_info("/".join(["d"] * 3000))  # over PATH_MAX
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir("b" * 300)
    st, _, body = _envd(sandbox, "GET", "/files?path=a%00b")
    assert st == 400 and "NUL" in json.loads(body)["message"]
    st, _, body = _envd(sandbox, "GET", "/files?path=%ff%fe")
    assert st == 400 and "UTF-8" in json.loads(body)["message"]
    st, _, body = _envd(sandbox, "POST", "/files?path=a%00b", body=b"x",
                        headers={"Content-Type": "application/octet-stream"})
    assert st == 400
    body, ct = _multipart([("file", "bad\x00name", b"x")])
    st, _, out = _envd(sandbox, "POST", "/files", body=body, headers={"Content-Type": ct})
    assert st == 400 and "NUL" in json.loads(out)["message"]
    # A NUL in an RPC path never reaches the kernel either.
    with pytest.raises(InvalidArgumentException):
        sandbox.files.get_info("a\x00b")
    # As envd: "~" and "~/x" are the user's home, another user's "~name" is not expanded.
    with pytest.raises(InvalidArgumentException):
        sandbox.files.get_info("~root/x")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.read("~root")
    assert sandbox.files.write("dir~/~x", "t").path == f"{HOME}/dir~/~x"


# -- bad upload input -----------------------------------------------------------------------


def test_bad_multipart_and_gzip(sandbox):
    body, ct = _multipart([("file", "t.txt", b"abc")])
    st, _, out = _envd(sandbox, "POST", "/files", body=body[:-10], headers={"Content-Type": ct})
    assert st == 400 and "closing boundary" in json.loads(out)["message"]
    st, _, out = _envd(sandbox, "POST", "/files", body=body,
                       headers={"Content-Type": "multipart/form-data"})
    assert st == 400 and "boundary" in json.loads(out)["message"]
    dup, ct = _multipart([("file", "d.txt", b"1"), ("file", f"{HOME}/d.txt", b"2")])
    st, _, out = _envd(sandbox, "POST", "/files", body=dup, headers={"Content-Type": ct})
    assert st == 400 and "same path" in json.loads(out)["message"]
    st, _, out = _envd(sandbox, "POST", _q(path="g.txt"), body=b"not gzip at all",
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Encoding": "gzip"})
    assert st == 400 and "gzip" in json.loads(out)["message"]
    assert not sandbox.files.exists("g.txt")
    st, _, out = _envd(sandbox, "POST", _q(path="g.txt"), body=gzip.compress(b"x" * 1000)[:-12],
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Encoding": "gzip"})
    assert st == 400
    assert not sandbox.files.exists("g.txt")
    st, _, out = _envd(sandbox, "POST", _q(path="g.txt"), body=b"x",
                       headers={"Content-Type": "text/plain"})
    assert st == 400
    st, _, out = _envd(sandbox, "POST", "/files", body=b"x",
                       headers={"Content-Type": "application/octet-stream"})
    assert st == 400 and "path" in json.loads(out)["message"]
    # Parts not named "file" are ignored; the answer lists exactly the written files.
    mixed, ct = _multipart([("other", None, b"ignored"), ("file", "ok.txt", b"ok")])
    st, _, out = _envd(sandbox, "POST", "/files", body=mixed, headers={"Content-Type": ct})
    assert (st, json.loads(out)) == (200, [{"name": "ok.txt", "path": f"{HOME}/ok.txt",
                                            "type": "file"}])


def test_disconnect_mid_upload_leaves_no_partial_file(sandbox):
    url = urllib.parse.urlparse(os.environ["E2B_SANDBOX_URL"])
    for ctype, prefix in [("application/octet-stream", b""),
                          ("multipart/form-data; boundary=zz",
                           b'--zz\r\nContent-Disposition: form-data; name="file"; '
                           b'filename="partial.bin"\r\n\r\n')]:
        s = socket.create_connection((url.hostname, url.port), timeout=10)
        head = (f"POST {_q(path='partial.bin')} HTTP/1.1\r\nHost: x\r\n"
                f"E2b-Sandbox-Id: {sandbox.sandbox_id}\r\nE2b-Sandbox-Port: 49983\r\n"
                f"X-Access-Token: {sandbox._envd_access_token or ''}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: 10000000\r\n\r\n").encode()
        s.sendall(head + prefix + b"p" * 300000)
        time.sleep(0.5)
        s.close()
        assert wait_for(lambda: not sandbox.files.exists("partial.bin"), 5), ctype
    # An overwritten file is emptied, never left half-written.
    sandbox.files.write("partial.bin", "old content")
    s = socket.create_connection((url.hostname, url.port), timeout=10)
    s.sendall((f"POST {_q(path='partial.bin')} HTTP/1.1\r\nHost: x\r\n"
               f"E2b-Sandbox-Id: {sandbox.sandbox_id}\r\n"
               f"X-Access-Token: {sandbox._envd_access_token or ''}\r\n"
               f"Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
               ).encode() + b"n" * 1000)
    time.sleep(0.5)
    s.close()
    assert wait_for(lambda: sandbox.files.read("partial.bin") == "", 5)


def test_disk_full_is_507(sandbox, run_cmd):
    # The session daemon gives each sandbox a 256 MiB disk (--disk-mb in tests/conftest.py).
    # fallocate takes all but 256 KiB of it at once without writing data, so no upload fits.
    r = run_cmd(sandbox, "avail=$(df --output=avail -B1 ~ | tail -n1); "
                "fallocate -l $((avail - 262144)) ~/fill && df --output=avail -B1 ~ | tail -n1")
    assert r.exit_code == 0, r.stderr
    assert int(r.stdout) < 1024 * 1024, r.stdout
    with pytest.raises(Exception) as ei:
        sandbox.files.write("big.bin", os.urandom(1024 * 1024))
    assert type(ei.value).__name__ == "NotEnoughSpaceException", repr(ei.value)
    # The raw answer, plain and gzip-encoded, and nothing partial is left behind.
    for body, headers in [(os.urandom(2 * 1024 * 1024), {}),
                          (gzip.compress(b"\0" * (4 * 1024 * 1024)), {"Content-Encoding": "gzip"})]:
        st, _, out = _envd(sandbox, "POST", _q(path="bomb.bin"), body=body,
                           headers={"Content-Type": "application/octet-stream", **headers})
        assert (st, json.loads(out)) == (507, {"code": 507,
                                               "message": "not enough disk space available"})
    assert not sandbox.files.exists("big.bin")
    assert not sandbox.files.exists("bomb.bin")
    # Freeing space inside makes room again.
    assert run_cmd(sandbox, "rm ~/fill").exit_code == 0
    sandbox.files.write("big.bin", os.urandom(1024 * 1024))
    assert sandbox.files.get_info("big.bin").size == 1024 * 1024
