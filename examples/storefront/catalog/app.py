"""catalog: the items for sale. Runs with two replicas; each answer says which pod served it."""

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "catalog v1"
ITEMS = [{"sku": "mug", "name": "Mug"}, {"sku": "tee", "name": "T-shirt"}]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
        elif self.path.startswith("/items"):
            self._send(200, {"service": "catalog", "version": VERSION, "pod": socket.gethostname(), "items": ITEMS})
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
        if self.path != "/healthz":
            print(f"catalog: {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"catalog listening on :{port} ({VERSION})", flush=True)
    ThreadingHTTPServer(("", port), Handler).serve_forever()
