"""A domain and TLS (issue 9, 6): with --domain D, --tls-cert and --tls-key (a wildcard
certificate of *.D), the 1.x SDKs, which speak only HTTPS to api.<E2B_DOMAIN> and
<port>-<id>.<E2B_DOMAIN>, work with nothing but E2B_DOMAIN set: the seed quickstart runs
verbatim on e2b-code-interpreter 1.x (.venv-sdk1, scripts/setup.sh test).

The test makes its own CA and certificate, and its own name resolution: dnsmasq on a
loopback address answers *.D with 127.0.0.1, and the client runs in a private mount
namespace whose /etc/resolv.conf names it. Nothing of the host's is changed."""

import os
import subprocess

import pytest

from conftest import REPO, own_daemon
from helpers import LocalResolver

SDK1 = REPO / ".venv-sdk1" / "bin" / "python"
DOMAIN = "sbx.test"
QUICKSTART = '''\
from e2b_code_interpreter import Sandbox
with Sandbox() as sandbox:
    sandbox.run_code("x = 1")
    execution = sandbox.run_code("x += 1; x")
    print(execution.text)  # outputs 2
'''


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path):
    """A CA, and a certificate of *.sbx.test and sbx.test signed by it."""
    d = tmp_path
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "ca.key", "-out",
            d / "ca.pem", "-days", "1", "-subj", "/CN=sbx test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "srv.key", "-out",
            d / "srv.csr", "-subj", f"/CN=*.{DOMAIN}")
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:*.{DOMAIN},DNS:{DOMAIN}\n")
    openssl("x509", "-req", "-in", d / "srv.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
            "-CAcreateserial", "-out", d / "srv.pem", "-days", "1", "-extfile", d / "ext.cnf")
    return d


@pytest.fixture
def resolver(tmp_path):
    """A resolver of the test's own answering *.sbx.test with 127.0.0.1 and nothing else."""
    with LocalResolver({DOMAIN: "127.0.0.1"}, tmp_path) as r:
        yield r


def test_quickstart_on_the_1x_sdk_over_tls(sbx_daemon, tmp_path, certs, resolver):
    if not SDK1.exists():
        pytest.skip(f"{SDK1} missing: run scripts/setup.sh test")
    args = (f"--tls-cert {certs / 'srv.pem'} --tls-key {certs / 'srv.key'} "
            f"--domain {DOMAIN}:{{port}} --pool code-interpreter-v1=1 --pool base=0")
    with own_daemon(sbx_daemon, tmp_path, args) as d:
        script = tmp_path / "quickstart.py"
        script.write_text(QUICKSTART)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("E2B_") and k not in ("SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")}
        env.update(E2B_DOMAIN=f"{DOMAIN}:{d.port}", E2B_API_KEY=d.api_key,
                   SSL_CERT_FILE=str(certs / "ca.pem"))
        r = subprocess.run(resolver.with_resolver([str(SDK1), str(script)]),
                           env=env, capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stdout) == (0, "2\n"), r.stderr[-3000:]
        log = d.log_path.read_text()
        assert "route=/execute status=200" in log and "route=/sandboxes status=201" in log
