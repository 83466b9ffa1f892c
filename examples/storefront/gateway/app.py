"""gateway: the entry point. Calls catalog, ledger and cache by their Service names, passing routing headers on."""

import json
import os
import socket
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "gateway v1"
CATALOG_URL = os.environ.get("CATALOG_URL", "http://catalog")  # Service port 80 -> targetPort 8080
LEDGER_URL = os.environ.get("LEDGER_URL", "http://ledger:8080")
CACHE_URL = os.environ.get("CACHE_URL", "http://cache:8080")
ROUTING_HEADERS = ("x-innerloop-user", "baggage")


def call(url: str, headers: dict[str, str]) -> dict:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
            body = resp.read()
            return json.loads(body) if resp.headers.get_content_type() == "application/json" else {"ok": True}
    except OSError as err:
        return {"error": f"{url} unreachable: {err}"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
            return
        if self.path.startswith("/catalog"):  # just the catalog: what the replica tests poll
            self._send(200, call(f"{CATALOG_URL}/items", self._routing()))
            return
        if self.path != "/":
            self._send(404, {"error": f"no route {self.path}"})
            return
        headers = self._routing()
        self._send(
            200,
            {
                "service": "gateway",
                "version": VERSION,
                "pod": socket.gethostname(),
                "catalog": call(f"{CATALOG_URL}/items", headers),
                "ledger": call(f"{LEDGER_URL}/orders", headers),
                "cache": call(f"{CACHE_URL}/", headers),
            },
        )

    def _routing(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k.lower() in ROUTING_HEADERS}

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        if self.path != "/healthz":
            print(f"gateway: {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"gateway listening on :{port} ({VERSION})", flush=True)
    ThreadingHTTPServer(("", port), Handler).serve_forever()
