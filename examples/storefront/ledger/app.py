"""ledger: a StatefulSet that keeps orders in a file on its own volume."""

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "ledger v1"
DATA = Path(os.environ.get("LEDGER_DATA", "/data")) / "orders.json"


def orders() -> list:
    return json.loads(DATA.read_text()) if DATA.exists() else []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
        elif self.path.startswith("/orders"):
            self._send(200, {"service": "ledger", "version": VERSION, "pod": socket.gethostname(), "orders": orders()})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        order = json.loads(self.rfile.read(length) or b"{}")
        DATA.write_text(json.dumps([*orders(), order]))
        self._send(201, {"service": "ledger", "stored": order})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        if self.path != "/healthz":
            print(f"ledger: {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"ledger listening on :{port} ({VERSION}), data in {DATA}", flush=True)
    ThreadingHTTPServer(("", port), Handler).serve_forever()
