# A WebSocket echo server (RFC 6455, text and binary frames up to 64 KiB), stdlib only.
import base64, hashlib, socket, struct, sys, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
def recv_exact(c, n):
    b = b""
    while len(b) < n:
        x = c.recv(n - len(b))
        if not x: raise EOFError
        b += x
    return b
def serve(c):
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            x = c.recv(4096)
            if not x: return
            head += x
        key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
        acc = base64.b64encode(hashlib.sha1(key + GUID).digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
        c.sendall(b"\x81\x05hello")  # a greeting, server first
        while True:
            b0, b1 = recv_exact(c, 2)
            n = b1 & 0x7f
            if n == 126: n = struct.unpack("!H", recv_exact(c, 2))[0]
            mask = recv_exact(c, 4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(x ^ mask[i % 4] for i, x in enumerate(recv_exact(c, n)))
            if b0 & 0x0f == 8:
                c.sendall(b"\x88\x00"); return
            hdr = bytes([0x80 | (b0 & 0x0f)]) + (bytes([len(data)]) if len(data) < 126 else b"\x7e" + struct.pack("!H", len(data)))
            c.sendall(hdr + data)
    except (EOFError, OSError):
        pass
    finally:
        with open("/tmp/ws.log", "a") as f: f.write("closed\n")
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
