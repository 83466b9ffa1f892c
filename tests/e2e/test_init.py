"""`innerloop init` on a folder with a plain Python app, or at a repository's root with several, then `innerloop up`
on what it wrote: a newcomer's path."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from innerloop.config import load_config

from .kube import Kube, eventually, free_port

APP = textwrap.dedent(
    """\
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ANSWER = "first answer"


    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            body = ANSWER.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


    if __name__ == "__main__":
        ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
    """
)


def test_init_then_up_serves_the_app_and_syncs_an_edit(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    folder = tmp_path / "Hello_App"
    folder.mkdir()
    (folder / "app.py").write_text(APP)

    init = subprocess.run([*innerloop_cli, "init"], cwd=folder, capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    assert "innerloop up" in init.stdout
    assert (folder / "Dockerfile").is_file() and (folder / "k8s" / "hello-app.yaml").is_file()

    config = yaml.safe_load((folder / "innerloop.yaml").read_text())
    forward = config["services"]["hello-app"]["ports"][0]
    assert forward["remote"] == 8080
    port = free_port()
    forward["local"] = port
    (folder / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    log = tmp_path / "up.log"

    def answer() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return str(resp.read().decode())

    proc = subprocess.Popen(
        [*innerloop_cli, "up", "-n", namespace, "--no-color"],
        cwd=folder,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        eventually(lambda: proc.poll() is None and "in sync" in log.read_text() and answer(), timeout_s=180)
        assert answer() == "first answer"
        [pod] = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=hello-app")["items"]
        assert pod["status"]["containerStatuses"][0]["ready"] is True  # the generated tcpSocket probe passes

        source = folder / "app.py"
        source.write_text(source.read_text().replace('"first answer"', '"an edited answer"'))
        eventually(lambda: answer() == "an edited answer", timeout_s=30, interval_s=0.1)
        [same] = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=hello-app")["items"]
        assert same["metadata"]["name"] == pod["metadata"]["name"]  # synced and restarted, not redeployed
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, log.read_text()

    down = subprocess.run(
        [*innerloop_cli, "down", "-n", namespace], cwd=folder, capture_output=True, text=True, timeout=60, check=False
    )
    assert down.returncode == 0, down.stderr
    assert kube.get_json("deployments", "-n", namespace)["items"] == []
    assert kube.get_json("services", "-n", namespace)["items"] == []


# -- Node and Go: the Dockerfiles init writes build here (a real builder, public base names) -------------------------

NODE_APP = {
    "package.json": json.dumps(
        {"name": "greeter", "version": "1.0.0", "private": True, "scripts": {"start": "node server.js"}}
    ),
    "package-lock.json": json.dumps(
        {"name": "greeter", "version": "1.0.0", "lockfileVersion": 3, "requires": True,
         "packages": {"": {"name": "greeter", "version": "1.0.0"}}}
    ),
    "server.js": 'const ANSWER = "first answer";\n'
    'require("http").createServer((req, res) => res.end(ANSWER)).listen(process.env.PORT || 3000);\n',
}  # fmt: skip
GO_APP = {
    "go.mod": "module example.com/greeter\n\ngo 1.19\n",
    "main.go": textwrap.dedent(
        """\
        package main

        import (
        \t"fmt"
        \t"net/http"
        \t"os"
        )

        const answer = "first answer"

        func main() {
        \tport := os.Getenv("PORT")
        \tif port == "" {
        \t\tport = "8080"
        \t}
        \thttp.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, answer) })
        \tpanic(http.ListenAndServe(":"+port, nil))
        }
        """
    ),
}


APPS = {"node": (NODE_APP, "server.js"), "go": (GO_APP, "main.go")}


@pytest.mark.parametrize("kind", sorted(APPS))
def test_init_writes_a_dockerfile_that_builds_here_and_up_serves_its_edits(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path, kind: str
) -> None:
    """Node: npm ci on node:18-slim, an edit synced into the same pod. Go: multi-stage onto distroless, an
    edit rebuilds and redeploys (the same edit every run: a warm run finds that image by its input hash)."""
    files, source = APPS[kind]
    folder = tmp_path / "greeter"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    init = subprocess.run([*innerloop_cli, "init"], cwd=folder, capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    assert "a real builder builds it" in init.stdout
    dockerfile = (folder / "Dockerfile").read_text()
    assert ("RUN npm ci --omit=dev" if kind == "node" else "COPY --from=build /out/app /app/app") in dockerfile
    config = yaml.safe_load((folder / "innerloop.yaml").read_text())
    forward = config["services"]["greeter"]["ports"][0]
    port = forward["local"] = free_port()
    (folder / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")

    def answer() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return str(resp.read().decode())

    def pod() -> str:
        pods = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=greeter")["items"]
        live = [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) == 1, live
        return str(live[0])

    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [*innerloop_cli, "up", "-n", namespace, "--no-color"],
        cwd=folder,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        eventually(lambda: proc.poll() is None and answer() == "first answer", timeout_s=600)
        assert "using buildah" in log.read_text()
        before = pod()
        edit = "an edited answer" if kind == "node" else "an edited go answer"
        (folder / source).write_text((folder / source).read_text().replace('"first answer"', f'"{edit}"'))
        eventually(lambda: answer() == edit, timeout_s=30 if kind == "node" else 600, interval_s=0.1)
        if kind == "node":
            assert pod() == before  # synced and restarted
        else:
            assert pod() != before  # rebuilt and redeployed
            assert "greeter: main.go changed, which sync cannot serve: redeploying" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, log.read_text()


# -- a repository with several apps and one shared manifest file ---------------------------------------------------

REPO_API = textwrap.dedent(
    """\
    import os
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ANSWER = "first answer"
    CACHE_URL = os.environ.get("CACHE_URL", "http://cache:8080")


    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/cache":  # through the cache's Service, by name
                with urllib.request.urlopen(CACHE_URL, timeout=5) as resp:
                    body = resp.read()
            else:
                body = ANSWER.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


    if __name__ == "__main__":
        ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
    """
)
REPO_WEB = 'const API = process.env.API_URL || "http://api:8080";\nrequire("http").createServer(h).listen(3000);\n'
REPO_WORKER = textwrap.dedent(
    """\
    package main

    import (
    \t"net"
    \t"net/http"
    )

    func main() {
    \tnet.Dial("tcp", "db:5432")
    \thttp.ListenAndServe(":8080", nil)
    }
    """
)
DOCS_DOCKERFILE = textwrap.dedent(
    """\
    FROM innerloop.local/busybox:1.35
    WORKDIR /srv
    COPY . /srv/
    EXPOSE 8000
    ENTRYPOINT ["httpd", "-f", "-p", "8000", "-h", "/srv"]
    """
)


def _workload(
    kind: str, name: str, containers: list[dict[str, Any]], *, replicas: int = 1, port: int | None = None
) -> list[dict[str, Any]]:
    labels = {"app": name}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": containers},
        },
    }
    if kind == "StatefulSet":
        spec["serviceName"] = name
    docs: list[dict[str, Any]] = [{"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}]
    if port is not None:
        service = {"selector": labels, "ports": [{"port": port, "targetPort": port}]}
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": service})
    return docs


def _repository(root: Path, busybox: str) -> None:
    """api/ (Python), web/ (Node), worker/ (Go), docs-site/ (a Dockerfile only); k8s/app.yaml for all but docs-site."""
    files = {
        "README.md": "# shop\n",
        "api/app.py": REPO_API,
        "web/package.json": json.dumps({"name": "web", "scripts": {"start": "node server.js"}}),
        "web/server.js": REPO_WEB,
        "worker/go.mod": "module example.com/shop/worker\n\ngo 1.22\n",
        "worker/main.go": REPO_WORKER,
        "docs-site/Dockerfile": DOCS_DOCKERFILE,
        "docs-site/index.html": "the docs\n",
    }
    sleep = {"image": busybox, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}
    cache_command = "mkdir -p /tmp/www && echo cached > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
    docs = [
        *_workload(
            "Deployment",
            "api",
            [
                {
                    "name": "api",
                    "image": "shop-api:dev",
                    "imagePullPolicy": "IfNotPresent",
                    "ports": [{"containerPort": 8080}],
                    "env": [{"name": "DATABASE_URL", "value": "postgres://shop@db:5432/shop"}],
                }
            ],
            port=8080,
        ),
        *_workload("Deployment", "web", [{"name": "web", "image": "shop-web:dev"}], replicas=2, port=3000),
        *_workload(
            "Deployment",
            "worker",
            [{"name": "worker", "image": "shop-worker:dev", "command": ["/app/app"]}, {"name": "shipper", **sleep}],
        ),
        *_workload("StatefulSet", "db", [{"name": "db", **sleep}], port=5432),
        *_workload(
            "Deployment",
            "cache",
            [{"name": "cache", **sleep, "command": ["sh", "-c", cache_command]}],
            port=8080,
        ),
    ]
    files["k8s/app.yaml"] = yaml.safe_dump_all(docs, sort_keys=False)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_init_at_a_repository_root_writes_one_config_for_every_app(innerloop_cli: list[str], tmp_path: Path) -> None:
    root = tmp_path / "shop"
    _repository(root, "innerloop.local/busybox:1.35")
    before, shared = _files(root), (root / "k8s" / "app.yaml").read_text()

    init = subprocess.run([*innerloop_cli, "init"], cwd=root, capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    assert "found 4 apps and 5 workloads" in init.stdout
    assert "kept      k8s/app.yaml (existing manifests, referenced)" in init.stdout
    assert "deployment/web runs 2 replicas" in init.stdout
    assert init.stdout.rstrip().endswith("next: innerloop up")

    # One config at the root; the shared file is referenced, not rewritten; only docs-site gets manifests.
    assert (root / "k8s" / "app.yaml").read_text() == shared
    assert _files(root) - before == {
        "innerloop.yaml",
        "k8s/docs-site.yaml",
        "api/Dockerfile",
        "web/Dockerfile",
        "worker/Dockerfile",
        ".innerloop/innerloop.schema.json",
        ".innerloop/.gitignore",
    }
    assert not list(root.glob("*/innerloop.yaml"))
    project = load_config(root / "innerloop.yaml")  # the loader `innerloop up` uses
    services = project.services
    assert list(services) == ["api", "docs-site", "web", "worker", "db", "cache"]  # apps, then the rest in file order
    workloads = {n: (s.manifests.files, s.workload, s.container) for n, s in services.items()}
    assert workloads == {
        "api": (["k8s/app.yaml"], "deployment/api", None),
        "docs-site": (["k8s/docs-site.yaml"], None, None),
        "web": (["k8s/app.yaml"], "deployment/web", None),
        "worker": (["k8s/app.yaml"], "deployment/worker", "worker"),
        "cache": (["k8s/app.yaml"], "deployment/cache", None),
        "db": (["k8s/app.yaml"], "statefulset/db", None),
    }
    images = {n: (s.image.name, s.image.context) if s.image else None for n, s in services.items()}
    assert images == {
        "api": ("shop-api", "api"),
        "docs-site": ("docs-site", "docs-site"),
        "web": ("shop-web", "web"),
        "worker": ("shop-worker", "worker"),
        "cache": None,
        "db": None,
    }
    syncs = {n: [(r.local, r.remote) for r in s.sync] for n, s in services.items()}
    assert syncs == {
        "api": [("api/", "/app/")],
        "docs-site": [("docs-site/", "/srv/")],
        "web": [("web/", "/app/")],
        "worker": [],  # Go is compiled: a saved .go file rebuilds the image instead
        "cache": [],
        "db": [],
    }
    depends = {n: s.depends_on for n, s in services.items()}
    assert depends == {
        "api": ["cache", "db"],  # its code's CACHE_URL default; DATABASE_URL in its manifest's env
        "docs-site": [],
        "web": ["api"],
        "worker": ["db"],
        "cache": [],
        "db": [],
    }
    assert [(p.remote, p.local_port) for p in services["worker"].ports] == [(8080, 8081)]

    # Run again: everything exists now, nothing is overwritten.
    written = {p: (root / p).read_text() for p in _files(root)}
    again = subprocess.run([*innerloop_cli, "init"], cwd=root, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert "kept      innerloop.yaml (exists; --force overwrites it)" in again.stdout
    assert {p: (root / p).read_text() for p in _files(root)} == written


def test_init_at_a_repository_root_then_up_deploys_what_it_wrote(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    root = tmp_path / "shop"
    _repository(root, kube.images["busybox"])
    init = subprocess.run([*innerloop_cli, "init"], cwd=root, capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr

    # Everything this machine can build: web needs node:22-slim from a registry, worker a Go binary built first.
    config = yaml.safe_load((root / "innerloop.yaml").read_text())
    services = config["services"]
    for unbuildable in ("web", "worker"):
        del services[unbuildable]
    api_port, docs_port = free_port(), free_port()
    services["api"]["ports"][0]["local"] = api_port
    services["docs-site"]["ports"][0]["local"] = docs_port
    assert services["api"]["dependsOn"] == ["cache", "db"]
    (root / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def get(port: int, path: str = "/") -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return str(resp.read().decode())

    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [*innerloop_cli, "up", "-n", namespace, "--no-color"],
        cwd=root,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        eventually(lambda: proc.poll() is None and get(api_port) == "first answer", timeout_s=240)
        assert get(api_port, "/cache") == "cached\n"  # the published-image service, by its Service name
        assert get(docs_port) == "the docs\n"  # the Dockerfile-only app, on the manifests init wrote
        text = log.read_text()
        assert text.index("cache: ready") < text.index("api: ready")  # dependsOn order

        [pod] = kube.get_json("pods", "-n", namespace, "-l", "app=api")["items"]
        source = root / "api" / "app.py"
        source.write_text(source.read_text().replace('"first answer"', '"an edited answer"'))
        eventually(lambda: get(api_port) == "an edited answer", timeout_s=30, interval_s=0.1)
        [same] = kube.get_json("pods", "-n", namespace, "-l", "app=api")["items"]
        assert same["metadata"]["name"] == pod["metadata"]["name"]  # synced into the shared file's workload
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, log.read_text()

    down = subprocess.run(
        [*innerloop_cli, "down", "-n", namespace], cwd=root, capture_output=True, text=True, timeout=60, check=False
    )
    assert down.returncode == 0, down.stderr
    assert kube.get_json("deployments", "-n", namespace)["items"] == []
