# An HTTP service for tests of exposed ports (run inside a sandbox): GET /headers answers the
# request's headers as JSON; POST /echo answers the body it read (chunked or not); GET
# /stream?n=N&delay=S streams N chunks, S seconds apart; GET /big?mib=N sends N MiB.
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_body(self, body, ctype="application/octet-stream"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path == "/headers":
            self.send_body(json.dumps(dict(self.headers.items())).encode(), "application/json")
        elif u.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(q.get("n", 3))):
                part = f"part {i} {time.monotonic()}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(float(q.get("delay", 0.5)))
            self.wfile.write(b"0\r\n\r\n")
        elif u.path == "/big":
            n = int(q.get("mib", 1)) << 20
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * (1 << 20)
            for _ in range(n >> 20):
                self.wfile.write(chunk)
        else:
            self.send_body(b"ok\n", "text/plain")

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                n = int(self.rfile.readline().strip(), 16)
                if n == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(n)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_body(body)


ThreadingHTTPServer((sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0", int(sys.argv[1])),
                    Handler).serve_forever()
