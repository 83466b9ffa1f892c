"""backend: the book catalogue. Knows nothing of the other services."""

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOOKS = [
    {"id": 1, "title": "The Phoenix Project", "stock": 3},
    {"id": 2, "title": "Site Reliability Engineering", "stock": 5},
    {"id": 3, "title": "Kubernetes Patterns", "stock": 0},
]
GREETING = "hello from backend"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid a 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
        elif self.path.startswith("/books"):
            self._send(200, {"service": "backend", "pod": socket.gethostname(), "greeting": GREETING, "books": BOOKS})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        if self.path != "/healthz":  # probes every 2 s would drown the interesting lines
            print(f"backend: {self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"backend listening on :{port}", flush=True)
    ThreadingHTTPServer(("", port), Handler).serve_forever()
