"""api: joins the catalogue from the backend with prices, for the front end."""

import json
import os
import socket
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BACKEND_URL = os.environ.get("BACKEND_URL", "http://backend:8080")
PRICES = {1: 24.99, 2: 39.5, 3: 45.0}


def fetch_books(headers: dict[str, str]) -> dict:
    req = urllib.request.Request(f"{BACKEND_URL}/books", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid a 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
            return
        if not self.path.startswith("/api/books"):
            self._send(404, {"error": f"no route {self.path}"})
            return
        # Pass routing headers on, so personal intercepts further down still match.
        forwarded = {k: v for k, v in self.headers.items() if k.lower() in ("baggage", "x-innerloop-user")}
        try:
            backend = fetch_books(forwarded)
        except OSError as err:
            self._send(502, {"service": "api", "error": f"backend unreachable at {BACKEND_URL}: {err}"})
            return
        books = [{**b, "price": PRICES.get(b["id"])} for b in backend["books"]]
        self._send(200, {"service": "api", "pod": socket.gethostname(), "books": books, "via": [backend]})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        if self.path != "/healthz":  # probes every 2 s would drown the interesting lines
            print(f"api: {self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"api listening on :{port}, backend at {BACKEND_URL}", flush=True)
    ThreadingHTTPServer(("", port), Handler).serve_forever()
