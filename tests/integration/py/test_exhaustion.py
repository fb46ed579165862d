"""Unauthenticated clients that try to exhaust the daemon: its connections (against a daemon
started with a small --max-connections) and its log (thousands of bad requests). Each runs
against a daemon of its own and prints the figures it measured."""

import http.client
import re
import select
import socket
import time

import pytest

from conftest import own_daemon

MAX_CONNS = 20
FLOOD = 10 * MAX_CONNS
AUTH_FAIL_MAX = 30  # SBX_AUTH_FAIL_MAX: wrong keys an address may send in a minute
BAD_REQUESTS = 3000
LOG_INTERVAL_S = 10  # of the summaries of client errors and of evictions


@pytest.fixture(scope="module")
def limited_daemon(sbx_daemon, tmp_path_factory):
    with own_daemon(sbx_daemon, tmp_path_factory.mktemp("limited"),
                    f"--max-connections {MAX_CONNS}") as d:
        yield d


@pytest.fixture(scope="module")
def quiet_daemon(sbx_daemon, tmp_path_factory):
    with own_daemon(sbx_daemon, tmp_path_factory.mktemp("quiet")) as d:
        yield d


def _log_lines(d):
    return d.log_path.read_text(errors="replace").splitlines()


def _wait_for_log(d, predicate, timeout=3 * LOG_INTERVAL_S):
    """Polls the daemon's log until predicate(lines) is true; returns the lines."""
    deadline = time.monotonic() + timeout
    while True:
        lines = _log_lines(d)
        if predicate(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def _is_open(s):
    """True if the server has not closed s (nothing to read: no EOF, no reset)."""
    readable, _, _ = select.select([s], [], [], 0.05)
    if not readable:
        return True
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def _unauthenticated_request(d):
    """A connection that sent one request without an API key and read its 401."""
    s = socket.create_connection((d.host, d.port), timeout=10)
    s.sendall(b"GET /v2/sandboxes HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 401 "), data
    return s


def _authenticated_connection(d):
    conn = http.client.HTTPConnection(d.host, d.port, timeout=10)
    conn.request("GET", "/v2/sandboxes", headers={"X-API-KEY": d.api_key})
    r = conn.getresponse()
    r.read()
    assert r.status == 200 and r.getheader("Connection") == "keep-alive"
    return conn


def _still_serves(conn, d):
    """The same kept-alive connection carries another request (http.client does not
    reconnect on its own while it holds a socket)."""
    sock = conn.sock
    conn.request("GET", "/v2/sandboxes", headers={"X-API-KEY": d.api_key})
    r = conn.getresponse()
    r.read()
    return r.status == 200 and conn.sock is sock


def test_connection_flood_cannot_lock_clients_out(limited_daemon):
    d = limited_daemon
    api = _authenticated_connection(d)  # the oldest connection of all
    flood = []
    try:
        # Ten times the limit: silent connections, and ones that sent one request without a key.
        for i in range(FLOOD):
            if i % 2:
                flood.append(_unauthenticated_request(d))
            else:
                flood.append(socket.create_connection((d.host, d.port), timeout=10))
        status, _, body = d.request("GET", "/health", auth=False)
        assert status == 200, body
        status, _, body = d.request("POST", "/v2/sandboxes", body={"templateID": "base",
                                                                   "timeout": 30})
        assert status == 201, body
        held = sum(_is_open(s) for s in flood)
        kept = _is_open(api.sock)
        print(f"{FLOOD} flood connections against --max-connections {MAX_CONNS}: "
              f"{held} still held, {FLOOD - held} evicted; /health 200 and create 201 served; "
              f"the authenticated connection {'kept' if kept else 'evicted'}")
        # The flood holds at most what the limit leaves besides the authenticated connection,
        # which was never evicted, although it is the oldest.
        assert held <= MAX_CONNS - 1
        assert kept and _still_serves(api, d)
        # The operator is told, once per interval.
        evicted = lambda lines: sum(int(m.group(1)) for m in map(
            re.compile(r"event=conn_limit max_connections=\d+ evicted=(\d+)").search, lines) if m)
        lines = _wait_for_log(d, lambda lines: evicted(lines) >= FLOOD - MAX_CONNS)
        print(f"logged: {evicted(lines)} evictions, in "
              f"{sum('event=conn_limit' in line for line in lines)} line(s)")
        assert evicted(lines) >= FLOOD - MAX_CONNS
    finally:
        for s in flood:
            s.close()
        api.close()
        d.kill_all_sandboxes()


def test_unauthenticated_connection_idles_briefly(limited_daemon):
    d = limited_daemon
    api = _authenticated_connection(d)
    anon = _unauthenticated_request(d)
    t0 = time.monotonic()
    try:
        # The anonymous idle deadline is 10 s, the authenticated one --idle-timeout (310 s).
        while _is_open(anon) and time.monotonic() - t0 < 60:
            time.sleep(0.2)
        took = time.monotonic() - t0
        kept = _is_open(api.sock)
        print(f"connection after a 401 closed after {took:.1f} s idle; the authenticated one, "
              f"as old, {'still open' if kept else 'closed'}")
        assert not _is_open(anon), "an unauthenticated connection was held for over 60 s"
        assert kept and _still_serves(api, d)
    finally:
        anon.close()
        api.close()


def _pipelined(d, requests, count):
    """Sends count copies of requests, pipelined on one connection; returns the statuses."""
    with socket.create_connection((d.host, d.port), timeout=30) as s:
        s.sendall(requests * count)
        data = b""
        while data.count(b"HTTP/1.1 ") < count:
            chunk = s.recv(1 << 20)
            assert chunk, f"closed after {data.count(b'HTTP/1.1 ')} of {count} answers"
            data += chunk
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", data)


def test_bad_request_flood_grows_the_log_by_a_bounded_number_of_lines(quiet_daemon):
    d = quiet_daemon
    before = _log_lines(d)
    size = d.log_path.stat().st_size
    # Wrong API keys, pipelined on keep-alive connections; and a header the server refuses,
    # each on a connection of its own (the server closes it).
    statuses = []
    for _ in range(BAD_REQUESTS // 500):
        statuses += _pipelined(
            d, b"GET /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: e2b_wrong\r\n\r\n", 500)
    for _ in range(50):
        statuses += _pipelined(d, b"GET /v2/sandboxes HTTP/1.1\r\nX-API-KEY : k\r\n\r\n", 1)
    sent = len(statuses)
    # After 30 wrong keys the address is refused without its keys being checked (429).
    assert statuses.count(b"401") == AUTH_FAIL_MAX and statuses.count(b"400") == 50
    assert statuses.count(b"429") == BAD_REQUESTS - AUTH_FAIL_MAX

    def figures(lines):
        new = lines[len(before):]
        logged = [line for line in new if re.search(r"event=request .* status=4\d\d ", line)]
        held = sum(int(m.group(1)) for m in map(
            re.compile(r"event=client_errors remote=127\.0\.0\.1 suppressed=(\d+)").search, new)
            if m)
        return new, logged, held

    def accounted(lines):
        _, logged, held = figures(lines)
        return len(logged) + held >= sent

    # Every request is either logged or counted in a summary, which comes at the interval's end.
    lines = _wait_for_log(d, accounted)
    new, logged, held = figures(lines)
    grown = d.log_path.stat().st_size - size
    print(f"{sent} bad requests: the log grew by {len(new)} lines ({grown} bytes): "
          f"{len(logged)} request lines, summaries counting {held} more")
    assert len(logged) + held == sent
    assert len(logged) <= 3  # one per interval, and the flood took less than three
    assert len(new) <= 10
    assert 'status=401 ' in logged[0] and 'remote=127.0.0.1 ' in logged[0]
    assert 'error="Invalid API key, please provide a valid X-API-KEY"' in logged[0]
    assert any("event=auth_blocked remote=127.0.0.1" in line for line in new)
    # Blocked for the rest of the minute, whatever key it sends; /health still answers.
    assert d.request("GET", "/v2/sandboxes")[0] == 429
    assert d.request("GET", "/health", auth=False)[0] == 200
