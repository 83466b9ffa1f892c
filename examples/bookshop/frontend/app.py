"""frontend: renders the shop page from the api; /api.json shows the whole call chain."""

import html
import json
import os
import socket
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_URL = os.environ.get("API_URL", "http://api:8080")


def fetch_api(headers: dict[str, str]) -> dict:
    req = urllib.request.Request(f"{API_URL}/api/books", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid a 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, "application/json", json.dumps({"ok": True}).encode())
            return
        forwarded = {k: v for k, v in self.headers.items() if k.lower() in ("baggage", "x-innerloop-user")}
        try:
            api = fetch_api(forwarded)
        except OSError as err:
            body = {"service": "frontend", "error": f"api unreachable at {API_URL}: {err}"}
            self._send(502, "application/json", json.dumps(body).encode())
            return
        chain = {"service": "frontend", "pod": socket.gethostname(), "via": [api]}
        if self.path.startswith("/api.json"):
            self._send(200, "application/json", json.dumps(chain).encode())
            return
        rows = "".join(
            f"<tr><td>{html.escape(b['title'])}</td><td>{b['price']}</td><td>{b['stock']}</td></tr>"
            for b in api["books"]
        )
        greeting = html.escape(api["via"][0]["greeting"])
        page = (
            "<!doctype html><title>bookshop</title><h1>bookshop</h1>"
            f"<p>{greeting}</p><table><tr><th>title</th><th>price</th><th>stock</th></tr>{rows}</table>"
        )
        self._send(200, "text/html; charset=utf-8", page.encode())

    def _send(self, status: int, ctype: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        if self.path != "/healthz":  # probes every 2 s would drown the interesting lines
            print(f"frontend: {self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"frontend listening on :{port}, api at {API_URL}", flush=True)
    ThreadingHTTPServer(("", port), Handler).serve_forever()
