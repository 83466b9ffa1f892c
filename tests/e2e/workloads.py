"""Deployments and Services for the forward and log tests (restricted Pod Security, local images only)."""

from __future__ import annotations

import json
from typing import Any

from .kube import restricted_security

# A tiny HTTP server that answers with the name of the pod serving it, so a
# test can tell which pod a request reached. Python as PID 1 ignores SIGTERM,
# so a deleted pod keeps serving until its (short) grace period ends.
HTTP_SERVER = """
import http.server, os, sys, time
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)  # a slow start: Ready (no probe) but not listening
NAME = os.environ["HOSTNAME"].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between them
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(NAME)))
        self.end_headers()
        self.wfile.write(NAME)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 8000), Handler).serve_forever()
"""


def http_server_command(*, start_delay_s: float = 0.0) -> list[str]:
    return ["python3", "-c", HTTP_SERVER, str(start_delay_s)]


def deployment_manifest(
    name: str,
    image: str,
    command: list[str],
    *,
    replicas: int = 1,
    ports: list[dict[str, Any]] | None = None,
) -> str:
    sec = restricted_security()
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "securityContext": sec["container"],
    }
    if ports:
        container["ports"] = ports
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": sec["pod"],
                    "containers": [container],
                },
            },
        },
    }
    return json.dumps(doc)


def service_manifest(name: str, *, port: int, target_port: int | str) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "web", "port": port, "targetPort": target_port}],
        },
    }
    return json.dumps(doc)
