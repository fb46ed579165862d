"""Plain helpers shared by the end-to-end suites (tests/integration/py, tests/security).

pytest puts tests/ on sys.path when it loads tests/conftest.py, so test modules and the
conftest import these as `from helpers import ...`. Fixtures live in tests/conftest.py.
"""

import http.client
import time


def wait_for(predicate, timeout=10.0, interval=0.1):
    """Polls predicate until it returns something true or timeout seconds pass; returns its
    last value, so `assert wait_for(...)` fails only if it never became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    return predicate()


def http_request(host, port, method, target, body=None, headers=None, timeout=30):
    """One HTTP/1.1 request on a fresh connection; returns (status, headers, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()
