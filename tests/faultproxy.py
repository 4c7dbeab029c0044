"""A fault-injecting HTTP proxy in front of the test registry, on 127.0.0.1:0.

The engine pulls from ``127.0.0.1:<port>/...`` (loopback registries are insecure by default, so
plain HTTP). ``inject(*faults, where=...)`` queues faults for the requests whose
``"METHOD /path "`` contains ``where`` (default: every request; the trailing space lets
``"GET /v2/ "`` name the ping alone); each matching request takes the
next queued fault, every other request is forwarded to the real registry unchanged (headers,
body, status; the registry's basic auth stays the registry's). A fault is an HTTP status (429,
503, ...) answered at once, ``"reset"``: the connection closed with a TCP RST, no answer, or
``"pass"``: forwarded (to let a matching request through before the next fault).
``seen`` records each request as ``(method, path, what was done)``: tests check facts, not time.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Fault = int | str

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.partition(":")
        self.upstream = (host, int(port or 80))
        self.faults: list[tuple[str, Fault]] = []
        self.seen: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def inject(self, *faults: Fault, where: str = "") -> None:
        with self.lock:
            self.faults = [(where, fault) for fault in faults]
            self.seen.clear()

    def injected(self) -> int:
        """How many faults were served so far."""
        with self.lock:
            return sum(1 for _, _, done in self.seen if done != "proxied")

    def _next(self, method: str, path: str) -> Fault | None:
        with self.lock:
            request = f"{method} {path} "
            index = next((i for i, (where, _) in enumerate(self.faults) if where in request), None)
            fault = self.faults.pop(index)[1] if index is not None else None
            fault = None if fault == "pass" else fault
            self.seen.append((method, path, "proxied" if fault is None else str(fault)))
            return fault

    def count(self, request: str) -> int:
        """How many requests whose ``"METHOD /path "`` contains ``request`` came so far."""
        with self.lock:
            return sum(1 for method, path, _ in self.seen if request in f"{method} {path} ")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                fault = proxy._next(self.command, self.path)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if isinstance(fault, int):
                    # The registry's JSON error body for 401/403/429 (the engine shows its code),
                    # a bare text body otherwise (the engine shows the HTTP status).
                    code = {401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}.get(fault)
                    body = (f'{{"errors":[{{"code":"{code}","message":"injected"}}]}}\n' if code
                            else "injected\n").encode()
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/json" if code else "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                self._forward()

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    head = self.command == "HEAD"     # HEAD keeps the upstream's Content-Length
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP and (head or key.lower() != "content-length"):
                            self.send_header(key, value)
                    if not head:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    thread = threading.Thread(target=proxy.server.serve_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
        thread.join()
