"""A small team's project where things go wrong for real: the alert tests' fixture.

One manifest file for the whole app, as many teams keep it:

- ``api`` (dev mode): the book list, called by web over its Service;
- ``web`` (dev mode, forwarded): renders api's books; its ``/checkout``
  handler divides by zero (a traceback in the logs);
- ``cache`` (the bundled Python image, unbuilt, forwarded): ``/fill`` grows
  past its 48Mi limit (OOMKilled);
- ``payments`` (unbuilt): its readiness probe answers 503 forever;
- ``search``: an image the bundled registry does not have (ImagePullBackOff);
- ``reports``: asks for 64 CPUs on a 2-CPU node (Unschedulable).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .kube import free_port

PYTHON = "innerloop.local/python:3.11"

API = """\
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOOKS = [{"title": "Dune"}, {"title": "Emma"}]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"books": BOOKS}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""

WEB = """\
import json
import logging
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logging.basicConfig(level=logging.INFO)
ITEMS_IN_CART = 0


def page():
    with urllib.request.urlopen("http://api:8080/books", timeout=5) as resp:
        books = json.load(resp)["books"]
    return "\\n".join(book["title"] for book in books)


def checkout():
    return f"average price {100 / ITEMS_IN_CART}"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        routes = {"/": page, "/checkout": checkout, "/healthz": lambda: '{"ok": true}'}
        try:
            body, code = routes[self.path]().encode(), 200
        except Exception:
            logging.exception("GET %s failed", self.path)
            body, code = b"internal error", 500
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""

CACHE = """\
from http.server import BaseHTTPRequestHandler, HTTPServer

kept = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/fill":
            print("filling the cache", flush=True)
            for _ in range(64):
                kept.append(bytearray(8 * 1024 * 1024))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")


HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""

PAYMENTS = """\
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if self.path == "/ready" else 200)
        self.end_headers()
        self.wfile.write(b"database not reachable")

    def log_message(self, *args):
        pass


HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""

DOCKERFILE = f"""\
FROM {PYTHON}
WORKDIR /app
COPY app.py /app/app.py
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/bin/python3", "-u", "/app/app.py"]
"""

SECURE_POD = {
    "automountServiceAccountToken": False,
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}
SECURE_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _deployment(name: str, container: dict[str, object]) -> dict[str, object]:
    labels = {"app": name, "app.kubernetes.io/part-of": "team"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **SECURE_POD,
                    "containers": [
                        {
                            "name": name,
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "securityContext": SECURE_CONTAINER,
                            **container,
                        }
                    ],
                },
            },
        },
    }


def _service(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"selector": {"app": name}, "ports": [{"port": 8080, "targetPort": "http"}]},
    }


def _inline(code: str) -> list[str]:
    return ["/usr/bin/python3", "-u", "-c", code]


def write_team_project(dest: Path, *, registry: str) -> tuple[Path, dict[str, int]]:
    """The project in ``dest``: its files, and the local ports of web and cache."""
    for name, code in (("api", API), ("web", WEB)):
        (dest / name).mkdir(parents=True)
        (dest / name / "app.py").write_text(code)
        (dest / name / "Dockerfile").write_text(DOCKERFILE)
    small = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}
    docs = [
        _deployment("api", {"image": "team-api", "resources": small}),
        _service("api"),
        _deployment("web", {"image": "team-web", "resources": small}),
        _service("web"),
        _deployment(
            "cache",
            {
                "image": PYTHON,
                "command": _inline(CACHE),
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "48Mi"}},
            },
        ),
        _deployment(
            "payments",
            {
                "image": PYTHON,
                "command": _inline(PAYMENTS),
                "resources": small,
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 2},
            },
        ),
        _deployment("search", {"image": f"{registry}/team/search:1.4.2", "resources": small}),
        _deployment(
            "reports",
            {
                "image": PYTHON,
                "command": _inline("import time; time.sleep(10**6)"),
                "resources": {"requests": {"cpu": "64", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
            },
        ),
    ]
    (dest / "k8s").mkdir(parents=True)
    (dest / "k8s" / "app.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    ports = {"web": free_port(), "cache": free_port()}

    def service(name: str, **more: object) -> dict[str, object]:
        return {"manifests": {"files": ["k8s/app.yaml"]}, "workload": f"deployment/{name}", **more}

    def synced(name: str) -> dict[str, object]:
        return {
            "image": {"name": f"team-{name}", "context": name},
            "sync": [{"local": f"{name}/", "remote": "/app/", "exclude": ["__pycache__/", "*.pyc", "Dockerfile"]}],
        }

    config = {
        "version": 1,
        "name": "team",
        "services": {
            "api": service("api", **synced("api")),
            "web": service("web", **synced("web"), ports=[{"remote": 8080, "local": ports["web"]}], dependsOn=["api"]),
            "cache": service("cache", ports=[{"remote": 8080, "local": ports["cache"]}]),
            # Nobody depends on payments: `up` need not wait for its readiness.
            "payments": service("payments", healthy="started"),
            "search": service("search"),
            "reports": service("reports"),
        },
    }
    (dest / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest, ports
