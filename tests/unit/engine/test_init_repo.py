"""``innerloop init`` at a repository's root: apps found, paired with the existing manifests, one config (pure)."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from innerloop.builders.dockerfile import parse as parse_dockerfile
from innerloop.config import Project, parse_config
from innerloop.engine.init import NotDetected
from innerloop.engine.init_repo import find_apps, plan_repo, read_manifests, render_repo, strip_tag

API = textwrap.dedent(
    """\
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://shop@db:5432/shop")


    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()


    if __name__ == "__main__":
        ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
    """
)
WEB = textwrap.dedent(
    """\
    const http = require("http");
    const API = process.env.API_URL || "http://api:8080";
    const CDN = "https://web.example.com/static";
    http.createServer((req, res) => fetch(API).then(() => res.end("ok"))).listen(process.env.PORT || 3000);
    """
)
WORKER = textwrap.dedent(
    """\
    package main

    import (
    \t"net"
    \t"net/http"
    )

    func main() {
    \tconn, _ := net.Dial("tcp", "redis:6379")
    \tdefer conn.Close()
    \thttp.ListenAndServe(":8080", nil)
    }
    """
)
METRICS_DOCKERFILE = textwrap.dedent(
    """\
    FROM innerloop.local/busybox:1.35
    WORKDIR /srv
    COPY . /srv/
    EXPOSE 9100
    ENTRYPOINT ["httpd", "-f", "-p", "9100", "-h", "/srv"]
    """
)


def deployment(name: str, *containers: dict[str, object], replicas: int = 1, kind: str = "Deployment") -> str:
    spec: dict[str, object] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": list(containers)}},
    }
    if replicas != 1:
        spec["replicas"] = replicas
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return yaml.safe_dump({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def service(name: str, port: int) -> str:
    spec = {"selector": {"app": name}, "ports": [{"port": port}]}
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})


APP_YAML = "---\n".join(
    [
        deployment(
            "api",
            {
                "name": "api",
                "image": "registry.example.com/shop/api:1.4",
                "ports": [{"containerPort": 8080}],
                "env": [{"name": "REDIS_URL", "value": "redis://redis:6379/0"}],
            },
        ),
        service("api", 8080),
        deployment(
            "web",
            {
                "name": "web",
                "image": "shop-web:latest",
                "ports": [{"containerPort": 3000}],
                "env": [{"name": "API_URL", "value": "http://api:8080"}],
            },
            replicas=2,
        ),
        service("web", 80),
        deployment(
            "worker",
            {"name": "worker", "image": "worker:dev", "command": ["/app/worker"]},
            {"name": "log-shipper", "image": "fluent/fluent-bit:3.0"},
        ),
        service("worker", 8080),
        deployment("db", {"name": "postgres", "image": "postgres:16"}, kind="StatefulSet"),
        service("db", 5432),
        deployment("redis", {"name": "redis", "image": "redis:7"}),
        service("redis", 6379),
    ]
)

MONOREPO = {
    "README.md": "",
    ".github/workflows/ci.yml": "on: push\njobs: {}\n",
    "k8s/app.yaml": APP_YAML,
    "api/app.py": API,
    "web/package.json": json.dumps({"name": "web", "scripts": {"start": "node server.js"}}),
    "web/server.js": WEB,
    "worker/go.mod": "module example.com/shop/worker\n\ngo 1.22\n",
    "worker/main.go": WORKER,
    "metrics/Dockerfile": METRICS_DOCKERFILE,
    "metrics/index.html": "",
    "docs/notes.md": "",
}


def project_of(files: dict[str, str], name: str = "shop") -> tuple[Project, dict[str, str]]:
    rendered = render_repo(plan_repo(files, name=name), schema=".innerloop/innerloop.schema.json")
    return parse_config(rendered["innerloop.yaml"]), rendered


class TestMonorepo:
    def test_every_app_is_found_with_its_kind(self) -> None:
        apps, notes = find_apps(MONOREPO)
        assert [(a.folder, a.detected.kind) for a in apps] == [
            ("api", "python"),
            ("metrics", "dockerfile"),
            ("web", "node"),
            ("worker", "go"),
        ]
        assert notes == []
        metrics = apps[1].detected
        assert (metrics.port, metrics.workdir, metrics.dockerfile) == (9100, "/srv", True)

    def test_the_manifests_workloads_and_services(self) -> None:
        found = read_manifests(MONOREPO)
        assert [(w.ref, w.replicas, len(w.containers)) for w in found.workloads] == [
            ("deployment/api", 1, 1),
            ("deployment/web", 2, 1),
            ("deployment/worker", 1, 2),
            ("statefulset/db", 1, 1),
            ("deployment/redis", 1, 1),
        ]
        assert [s.name for s in found.services] == ["api", "web", "worker", "db", "redis"]

    def test_one_config_with_every_service_paired_by_image_name(self) -> None:
        project, _ = project_of(MONOREPO)
        assert project.name == "shop"
        assert list(project.services) == ["api", "metrics", "web", "worker", "db", "redis"]
        api, web, worker = (project.services[n] for n in ("api", "web", "worker"))
        for name, svc in [("api", api), ("web", web), ("worker", worker)]:
            assert svc.manifests.files == ["k8s/app.yaml"], name  # the shared file, referenced
            assert svc.workload == f"deployment/{name}"
            assert svc.image is not None and svc.image.context == name
        for name, svc in [("api", api), ("web", web)]:
            [rule] = svc.sync
            assert (rule.local, rule.remote) == (f"{name}/", "/app/")
        assert worker.sync == []  # Go is compiled: a saved .go file rebuilds the image instead
        assert api.image is not None and api.image.name == "registry.example.com/shop/api"  # tag dropped
        assert web.image is not None and web.image.name == "shop-web"  # <project>-<folder>
        assert worker.image is not None and worker.image.name == "worker"
        assert worker.container == "worker"  # not the log shipper next to it
        assert api.container is None and web.container is None

    def test_ports_from_the_code_with_distinct_local_ports(self) -> None:
        project, _ = project_of(MONOREPO)
        forwards = {n: [(p.remote, p.local_port) for p in s.ports] for n, s in project.services.items()}
        assert forwards == {
            "api": [(8080, 8080)],
            "metrics": [(9100, 9100)],
            "web": [(3000, 3000)],
            "worker": [(8080, 8081)],  # 8080 is api's here
            "db": [],
            "redis": [],
        }

    def test_workloads_on_published_images_are_services_without_image_or_sync(self) -> None:
        project, _ = project_of(MONOREPO)
        db, redis = project.services["db"], project.services["redis"]
        assert (db.manifests.files, db.workload) == (["k8s/app.yaml"], "statefulset/db")
        assert (redis.manifests.files, redis.workload) == (["k8s/app.yaml"], "deployment/redis")
        for svc in (db, redis):
            assert svc.image is None and svc.sync == [] and svc.ports == []

    def test_depends_on_from_the_code_and_the_manifests_env(self) -> None:
        project, _ = project_of(MONOREPO)
        depends = {n: s.depends_on for n, s in project.services.items()}
        assert depends == {
            "api": ["db", "redis"],  # code: postgres://shop@db:5432, env: redis://redis:6379/0
            "metrics": [],
            "web": ["api"],  # code and env: http://api:8080; https://web.example.com is not a Service
            "worker": ["redis"],  # code: "redis:6379"
            "db": [],
            "redis": [],
        }

    def test_the_guesses_are_explained_in_the_file(self) -> None:
        _, rendered = project_of(MONOREPO)
        text = rendered["innerloop.yaml"]
        assert text.splitlines()[0] == "# yaml-language-server: $schema=.innerloop/innerloop.schema.json"
        assert "# deployment/api in k8s/app.yaml: its image registry.example.com/shop/api is named after api/" in text
        assert "# dependsOn db: api/app.py:4 calls postgres://shop@db" in text
        assert "# dependsOn redis: k8s/app.yaml (deployment/api env) calls redis://redis" in text
        assert "# Python app in api/ (app.py); port 8080: api/app.py:14, PORT default" in text
        assert "# local port 8081: 8080 is forwarded for api" in text
        assert "statefulset/db in k8s/app.yaml runs postgres:16" in text

    def test_notes_name_the_two_replicas_and_the_base_images(self) -> None:
        notes = plan_repo(MONOREPO, name="shop").notes
        assert any(n.startswith("web: deployment/web runs 2 replicas") for n in notes)
        assert any(n.startswith("web (web/): the Dockerfile installs the dependencies (FROM node:") for n in notes)
        assert any("multi-stage build (FROM golang:1.19" in n for n in notes)

    def test_only_the_app_without_manifests_gets_them_and_the_shared_file_is_not_rewritten(self) -> None:
        _, rendered = project_of(MONOREPO)
        assert set(rendered) == {
            "innerloop.yaml",
            "k8s/metrics.yaml",
            "api/Dockerfile",
            "web/Dockerfile",
            "worker/Dockerfile",
        }
        docs = list(yaml.safe_load_all(rendered["k8s/metrics.yaml"]))
        assert [d["kind"] for d in docs] == ["Deployment", "Service"]
        container = docs[0]["spec"]["template"]["spec"]["containers"][0]
        assert (container["image"], container["ports"][0]["containerPort"]) == ("metrics", 9100)
        assert parse_dockerfile(rendered["api/Dockerfile"]).entrypoint == ["/usr/bin/python3", "/app/app.py"]

    def test_a_second_run_pairs_the_manifests_the_first_one_wrote(self) -> None:
        _, first = project_of(MONOREPO)
        again = {**MONOREPO, **first}
        project, rendered = project_of(again)
        assert set(rendered) == {"innerloop.yaml"}
        assert project.services["metrics"].manifests.files == ["k8s/metrics.yaml"]
        assert project.services["metrics"].workload is None  # alone in its file


class TestPairing:
    def test_by_the_commands_path_when_the_image_says_nothing(self) -> None:
        files = {
            "tools/reports/main.py": "import http.server\nhttp.server.HTTPServer(('', 8000), H).serve_forever()\n",
            "k8s/jobs.yaml": deployment(
                "nightly", {"name": "run", "image": "python:3.11", "command": ["python3", "/src/reports/main.py"]}
            ),
        }
        project, _ = project_of(files)
        reports = project.services["reports"]
        assert reports.image is not None and reports.image.name == "python"  # what innerloop swaps its image in for
        assert reports.manifests.files == ["k8s/jobs.yaml"] and reports.workload is None

    def test_a_service_in_its_own_file_is_listed_with_its_workload(self) -> None:
        files = {
            "api/app.py": API,
            "deploy/api/deployment.yaml": deployment("api", {"name": "api", "image": "api"}),
            "deploy/api/service.yaml": service("api", 8080),
        }
        project, _ = project_of(files)
        assert project.services["api"].manifests.files == ["deploy/api/deployment.yaml", "deploy/api/service.yaml"]

    def test_a_kustomization_is_referenced_with_its_prefix_and_images(self) -> None:
        base = {
            "k8s/base/kustomization.yaml": "resources: [api.yaml, redis.yaml]\n",
            "k8s/base/api.yaml": deployment("api", {"name": "api", "image": "api"}),
            "k8s/base/redis.yaml": deployment("redis", {"name": "redis", "image": "redis:7"}),
            "k8s/overlays/dev/kustomization.yaml": textwrap.dedent(
                """\
                resources: [../../base]
                namePrefix: dev-
                images:
                  - {name: api, newName: registry.example.com/api, newTag: dev}
                patches:
                  - path: replicas.yaml
                """
            ),
            "k8s/overlays/dev/replicas.yaml": deployment("api", {"name": "api", "image": "ignored"}, replicas=3),
            "k8s/overlays/prod/kustomization.yaml": "resources: [../../base]\n",
        }
        project, _ = project_of({"api/app.py": API, **base})
        api = project.services["api"]
        assert api.manifests.kustomize == "k8s/overlays/dev"  # the dev overlay, not prod or the base
        assert api.workload == "deployment/dev-api"
        assert api.image is not None and api.image.name == "registry.example.com/api"
        assert project.services["dev-redis"].manifests.kustomize == "k8s/overlays/dev"

    def test_a_helm_chart_is_paired_through_its_values(self) -> None:
        chart = {
            "charts/web/Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\n",
            "charts/web/values.yaml": "image:\n  repository: shop/web\n  tag: '1.0'\napiUrl: http://api:8080\n",
            "charts/web/templates/deployment.yaml": textwrap.dedent(
                """\
                apiVersion: apps/v1
                kind: Deployment
                metadata:
                  name: {{ include "web.fullname" . }}
                spec:
                  template:
                    spec:
                      containers:
                        - name: {{ .Chart.Name }}
                          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
                          env:
                            - name: API_URL
                              value: {{ .Values.apiUrl | quote }}
                """
            ),
            "charts/web/templates/service.yaml": (
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\n"
            ),
        }
        files = {
            "web/package.json": json.dumps({"main": "server.js"}),
            "web/server.js": WEB,
            "api/app.py": API,
            "k8s/api.yaml": deployment("api", {"name": "api", "image": "api"}) + "---\n" + service("api", 8080),
            **chart,
        }
        project, _ = project_of(files)
        web = project.services["web"]
        assert web.manifests.helm is not None and web.manifests.helm.chart == "charts/web"
        assert web.image is not None and web.image.name == "shop/web"
        assert web.workload is None  # the chart's only workload; its name is computed
        assert web.depends_on == ["api"]

    def test_a_call_back_that_would_close_a_cycle_is_left_out_with_a_note(self) -> None:
        files = {
            "a/app.py": API.replace("postgres://shop@db:5432/shop", "http://b:8080"),
            "b/app.py": API.replace("postgres://shop@db:5432/shop", "http://a:8080"),
        }
        plan = plan_repo(files, name="x")
        assert [(s.name, s.depends_on) for s in plan.services] == [("a", ("b",)), ("b", ())]
        assert any("a cycle" in n for n in plan.notes)
        project, _ = project_of(files)  # and it loads: no cycle
        assert project.services["b"].depends_on == []

    def test_two_apps_never_share_a_workload(self) -> None:
        files = {
            "api/app.py": API,
            "api-v2/app.py": API,
            "k8s/api.yaml": deployment("api", {"name": "api", "image": "api"}),
        }
        plan = plan_repo(files, name="x")
        paired = {s.name: s.workload.ref if s.workload else s.written_manifest for s in plan.services}
        assert paired == {"api": "deployment/api", "api-v2": "k8s/api-v2.yaml"}


def test_a_repository_without_apps_is_refused() -> None:
    with pytest.raises(NotDetected, match="no app"):
        plan_repo({"k8s/app.yaml": APP_YAML, "README.md": ""}, name="x")


def test_a_project_file_without_an_app_is_mentioned() -> None:
    _, notes = find_apps({"lib/pyproject.toml": "[project]\nname = 'lib'\n", "api/app.py": API})
    assert notes and notes[0].startswith("lib/ is not set up: pyproject.toml found")


@pytest.mark.parametrize(
    ("image", "name"),
    [("api", "api"), ("api:1.2", "api"), ("reg:5000/a/api:1", "reg:5000/a/api"), ("a/b@sha256:00", "a/b")],
)
def test_strip_tag(image: str, name: str) -> None:
    assert strip_tag(image) == name
