"""A loopback S3 fault proxy: it forwards every request to an upstream S3 server (SeaweedFS) unchanged
(the client's SigV4 signature covers the Host it sent, which the upstream checks as received) and, on a
fixed schedule, answers with a fault instead:

  500          500 InternalError (XML body, as S3 sends it)
  503          503 ServiceUnavailable
  slowdown     503 SlowDown
  reset        the connection closed without an answer (after the request was read: a PUT may or may
               not have happened upstream — here it has not)
  stall        the answer held back for `stall_s` seconds, then sent
  truncate     a GET's headers with the full Content-Length, half the body, then the connection closed

    with FaultProxy(upstream="http://127.0.0.1:8333", every=5) as proxy:
        env["OVPIPE_S3_ENDPOINT"] = proxy.endpoint

Every `every`-th request is faulted, the kinds taken in turn; `counts` says how many of each were sent.
"""
from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from urllib.parse import urlparse

KINDS = ("500", "503", "slowdown", "reset", "stall", "truncate")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_ERRORS = {"500": (500, "InternalError", "We encountered an internal error. Please try again."),
           "503": (503, "ServiceUnavailable", "Please reduce your request rate."),
           "slowdown": (503, "SlowDown", "Please reduce your request rate.")}


class FaultProxy:
    def __init__(self, upstream: str, every: int = 5, kinds=KINDS, stall_s: float = 2.0, start_after: int = 0):
        u = urlparse(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.every, self.kinds, self.stall_s, self.start_after = every, tuple(kinds), stall_s, start_after
        self.requests = 0
        self.counts = {k: 0 for k in self.kinds}
        self.upstream_errors = 0  # upstream unreachable (e.g. restarting): answered 503
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.enabled = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def faulted(self) -> int:
        return sum(self.counts.values())

    def _next_fault(self, method: str) -> str | None:
        with self._lock:
            self.requests += 1
            n = self.requests - self.start_after
            if not self.enabled or n <= 0 or n % self.every:
                return None
            kind = self.kinds[(n // self.every - 1) % len(self.kinds)]
            if kind == "truncate" and method != "GET":
                kind = "reset"
            self.counts[kind] += 1
            return kind

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if not size:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self):
                body = self._body()
                fault = proxy._next_fault(self.command)
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault in _ERRORS:
                    status, code, msg = _ERRORS[fault]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                           f"<Message>{msg}</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                try:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=300)
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                except OSError:  # upstream down (restarting): what a load balancer in front would say
                    with proxy._lock:
                        proxy.upstream_errors += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(resp.status, resp.reason)
                head = self.command == "HEAD"  # no body: the upstream's Content-Length is the object's size
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if head:
                    return
                if fault == "truncate" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client hanging up is part of the game
                import sys

                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
