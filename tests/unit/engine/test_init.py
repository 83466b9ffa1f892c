"""``innerloop init``'s pure core: what an app's files say, and the files written for it."""

from __future__ import annotations

import io
import json
import textwrap
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from innerloop.builders.dockerfile import parse as parse_dockerfile
from innerloop.config import parse_config
from innerloop.engine.init import (
    GO_BASE,
    GO_RUNTIME,
    NODE_BASE,
    PYTHON_BASE,
    Detected,
    NotDetected,
    detect,
    plan_writes,
    render,
    service_name,
    with_port,
)

STDLIB_APP = textwrap.dedent(
    """\
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)

    if __name__ == "__main__":
        port = int(os.environ.get("PORT", "9090"))
        ThreadingHTTPServer(("", port), Handler).serve_forever()
    """
)


def assert_restricted(manifest_text: str, *, port: int) -> list[dict[str, Any]]:
    """The restricted Pod Security Standard, as assertions on the rendered Deployment."""
    docs = list(yaml.safe_load_all(manifest_text))
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [service] = [d for d in docs if d["kind"] == "Service"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert "privileged" not in security
        assert container["ports"][0]["containerPort"] == port
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector
    return docs


class TestPython:
    def test_stdlib_server_port_from_the_port_default(self) -> None:
        found = detect({"app.py": STDLIB_APP, "README.md": ""})
        assert found.kind == "python"
        assert found.entry == "app.py"
        assert found.command == ("/usr/bin/python3", "/app/app.py")
        assert found.port == 9090
        assert found.port_source.startswith("app.py:9")
        assert found.serves_http
        assert not found.dockerfile and not found.manifests

    @pytest.mark.parametrize(
        ("entry", "code", "port"),
        [
            ("main.py", "import uvicorn\nfrom fastapi import FastAPI\nuvicorn.run(FastAPI(), port=8001)\n", 8001),
            ("server.py", "from flask import Flask\napp = Flask(__name__)\napp.run(host='0.0.0.0', port=5001)\n", 5001),
            ("app.py", "from http.server import HTTPServer\nHTTPServer(('0.0.0.0', 8123), H).serve_forever()\n", 8123),
            ("main.py", "import os\nPORT = 7000\nfrom http.server import HTTPServer\n", 7000),
            ("main.py", "from flask import Flask\napp = Flask(__name__)\n", 5000),
            ("main.py", "from fastapi import FastAPI\napp = FastAPI()\n", 8000),
        ],
    )
    def test_entry_and_port_variants(self, entry: str, code: str, port: int) -> None:
        found = detect({"pyproject.toml": "[project]\nname = 'x'\n", entry: code})
        assert (found.entry, found.port) == (entry, port)

    def test_the_file_that_starts_a_server_wins_over_the_first_candidate(self) -> None:
        found = detect({"requirements.txt": "", "app.py": "X = 1\n", "server.py": STDLIB_APP})
        assert found.entry == "server.py"

    def test_third_party_requirements_get_a_note_about_the_base_image(self) -> None:
        found = detect({"requirements.txt": "flask>=3  # web\n-r dev.txt\n", "app.py": "from flask import Flask\n"})
        assert any("no pip" in n and "flask" in n for n in found.notes)
        assert not detect({"app.py": STDLIB_APP}).notes

    def test_pyproject_without_entry_file_says_what_was_looked_for(self) -> None:
        with pytest.raises(NotDetected, match=r"app\.py, main\.py, server\.py"):
            detect({"pyproject.toml": "[project]\nname = 'x'\n", "lib/util.py": ""})

    def test_a_script_that_starts_no_server_and_has_no_project_file_is_not_an_app(self) -> None:
        with pytest.raises(NotDetected, match=r"package\.json"):
            detect({"app.py": "print('hello')\n"})

    def test_virtualenvs_are_excluded_from_sync(self) -> None:
        found = detect({"app.py": STDLIB_APP, ".venv/pyvenv.cfg": ""})
        assert ".venv/" in found.excludes

    def test_render_writes_config_dockerfile_and_restricted_manifests(self) -> None:
        files = render(detect({"app.py": STDLIB_APP}), "shop", schema="../schema/innerloop.schema.json")
        assert set(files) == {"innerloop.yaml", "Dockerfile", "k8s/shop.yaml"}
        modeline = files["innerloop.yaml"].splitlines()[0]
        assert modeline == "# yaml-language-server: $schema=../schema/innerloop.schema.json"

        project = parse_config(files["innerloop.yaml"])
        service = project.services["shop"]
        assert project.name == "shop"
        assert service.manifests.files == ["k8s/shop.yaml"]
        assert service.image is not None and service.image.name == "shop" and service.image.context == "."
        [rule] = service.sync
        assert (rule.local, rule.remote) == ("./", "/app/")
        assert {"__pycache__/", "*.pyc", "node_modules/", ".git/", "Dockerfile"} <= set(rule.exclude)
        assert service.restart == "process"
        assert [(p.remote, p.local_port) for p in service.ports] == [(9090, 9090)]

        recipe = parse_dockerfile(files["Dockerfile"])
        assert recipe.base == PYTHON_BASE
        assert recipe.workdir == "/app" and rule.remote.rstrip("/") == recipe.workdir
        assert recipe.entrypoint == ["/usr/bin/python3", "/app/app.py"]
        assert recipe.env["PORT"] == "9090"
        assert recipe.user == "65532:65532"

        docs = assert_restricted(files["k8s/shop.yaml"], port=9090)
        container = docs[0]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "shop"  # the name innerloop swaps its built tag into
        assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}
        assert docs[1]["spec"]["ports"] == [{"name": "http", "port": 9090, "targetPort": "http"}]

    def test_no_modeline_without_a_schema(self) -> None:
        files = render(detect({"app.py": STDLIB_APP}), "shop")
        assert "yaml-language-server" not in files["innerloop.yaml"]
        parse_config(files["innerloop.yaml"])

    def test_port_given_by_the_user_wins(self) -> None:
        files = render(with_port(detect({"app.py": STDLIB_APP}), 7777), "shop")
        assert "local: 7777" in files["innerloop.yaml"]
        assert parse_dockerfile(files["Dockerfile"]).env["PORT"] == "7777"
        assert_restricted(files["k8s/shop.yaml"], port=7777)


def _instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile as Docker reads it (dockerfile-parse): (instruction, value), comments left out."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    return [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


class TestNode:
    def test_start_script_and_port_default(self) -> None:
        package = {"name": "web", "scripts": {"start": "node server.js"}}
        code = "const http = require('http');\nhttp.createServer(h).listen(process.env.PORT || 3001);\n"
        found = detect({"package.json": json.dumps(package), "server.js": code})
        assert found.kind == "node"
        assert found.command == ("node", "server.js")
        assert found.port == 3001 and found.serves_http
        assert any("RUN npm ci --omit=dev): a real builder builds it" in n for n in found.notes)
        assert any("no package-lock.json" in n for n in found.notes)

    def test_main_field_and_default_port(self) -> None:
        found = detect({"package.json": json.dumps({"main": "lib/index.js"}), "lib/index.js": "console.log(1)\n"})
        assert found.command == ("node", "lib/index.js")
        assert found.port == 3000 and "no port found" in found.port_source
        assert not found.serves_http

    def test_render(self) -> None:
        found = detect({"package.json": json.dumps({"main": "app.js"}), "app.js": "app.listen(4000)\n"})
        files = render(found, "web")
        assert _instructions(files["Dockerfile"]) == [
            ("FROM", NODE_BASE),
            ("ENV", "NODE_ENV=production"),
            ("WORKDIR", "/app"),
            ("COPY", "package.json ./"),
            ("RUN", "npm install --omit=dev"),  # no lock file: npm ci would refuse
            ("COPY", ". /app/"),
            ("ENV", "PORT=4000"),
            ("USER", "65532:65532"),
            ("EXPOSE", "4000"),
            ("ENTRYPOINT", '["node", "app.js"]'),
        ]
        assert "node_modules/" in files[".dockerignore"].splitlines()
        service = parse_config(files["innerloop.yaml"]).services["web"]
        assert service.ports[0].remote == 4000
        assert [(r.local, r.remote) for r in service.sync] == [("./", "/app/")]
        assert_restricted(files["k8s/web.yaml"], port=4000)

    def test_a_lock_file_is_installed_with_npm_ci(self) -> None:
        listing = {"package.json": json.dumps({"main": "app.js"}), "package-lock.json": "{}", "app.js": ""}
        found = detect(listing)
        assert found.lockfiles == ("package-lock.json",)
        assert not any("no package-lock.json" in n for n in found.notes)
        steps = _instructions(render(found, "web")["Dockerfile"])
        assert ("COPY", "package.json package-lock.json ./") in steps
        assert ("RUN", "npm ci --omit=dev") in steps

    def test_package_json_without_entry_is_refused(self) -> None:
        with pytest.raises(NotDetected, match="start script"):
            detect({"package.json": "{}"})


class TestGo:
    MAIN = 'package main\n\nimport "net/http"\n\nfunc main() {\n\thttp.ListenAndServe(":9000", nil)\n}\n'

    def test_main_package_port_and_build_note(self) -> None:
        found = detect({"go.mod": "module example.com/x\n", "main.go": self.MAIN, "util/u.go": "package util\n"})
        assert (found.kind, found.entry, found.port, found.serves_http) == ("go", ".", 9000, True)
        assert any("multi-stage build (FROM golang:1.19" in n for n in found.notes)
        assert not any("go.mod asks for" in n for n in found.notes)

    def test_main_package_in_cmd(self) -> None:
        found = detect({"go.mod": "module x\n", "cmd/server/main.go": self.MAIN.replace(":9000", ":8088")})
        assert (found.entry, found.port) == ("./cmd/server", 8088)

    def test_render_is_a_multi_stage_build_onto_distroless_without_sync(self) -> None:
        listing = {"go.mod": "module x\n\ngo 1.22\n", "go.sum": "", "cmd/api/main.go": self.MAIN}
        found = detect(listing)
        assert any("go.mod asks for go 1.22" in n for n in found.notes)
        files = render(found, "api")
        assert _instructions(files["Dockerfile"]) == [
            ("FROM", f"{GO_BASE} AS build"),
            ("WORKDIR", "/src"),
            ("COPY", "go.mod go.sum ./"),
            ("RUN", "--mount=type=cache,target=/go/pkg/mod go mod download"),
            ("COPY", ". ."),
            (
                "RUN",
                "--mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build "
                "CGO_ENABLED=0 go build -o /out/app ./cmd/api",
            ),
            ("FROM", GO_RUNTIME),
            ("COPY", "--from=build /out/app /app/app"),
            ("ENV", "PORT=9000"),
            ("USER", "65532:65532"),
            ("EXPOSE", "9000"),
            ("ENTRYPOINT", '["/app/app"]'),
        ]
        service = parse_config(files["innerloop.yaml"]).services["api"]
        # Compiled: nothing to sync, so a saved .go file (outside every sync rule) rebuilds the image.
        assert service.sync == []
        assert service.image is not None and service.image.context == "."
        assert_restricted(files["k8s/api.yaml"], port=9000)

    def test_without_go_sum_only_go_mod_is_copied_first(self) -> None:
        steps = _instructions(render(detect({"go.mod": "module x\n", "main.go": self.MAIN}), "api")["Dockerfile"])
        assert ("COPY", "go.mod ./") in steps

    def test_no_main_package(self) -> None:
        with pytest.raises(NotDetected, match="no main package"):
            detect({"go.mod": "module x\n", "lib.go": "package lib\n"})


def test_unknown_app_lists_what_was_looked_for() -> None:
    with pytest.raises(NotDetected) as caught:
        detect({"notes.md": "", "data.csv": ""})
    message = str(caught.value)
    assert all(word in message for word in ("pyproject.toml", "requirements.txt", "package.json", "go.mod"))
    assert "notes.md" in message


class TestExistingFiles:
    DEPLOYMENT = textwrap.dedent(
        """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: shop-web}
        spec:
          template:
            spec:
              containers:
              - {name: web, image: "registry.example.com/shop/web:1.2", ports: [{containerPort: 8181}]}
              - {name: sidecar, image: envoy}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: shop-web}
        """
    )

    def test_an_existing_dockerfile_is_kept_and_its_workdir_is_the_sync_target(self) -> None:
        dockerfile = 'FROM innerloop.local/python:3.11\nWORKDIR /srv/app\nCOPY . .\nCMD ["python3", "app.py"]\n'
        found = detect({"app.py": STDLIB_APP, "Dockerfile": dockerfile})
        files = render(found, "shop")
        assert "Dockerfile" not in files
        assert parse_config(files["innerloop.yaml"]).services["shop"].sync[0].remote == "/srv/app/"

    def test_a_dockerfile_the_builder_cannot_build_is_kept_with_a_note(self) -> None:
        dockerfile = "FROM python:3.12\nWORKDIR /code\nRUN pip install flask\n"
        found = detect({"app.py": STDLIB_APP, "Dockerfile": dockerfile})
        assert found.workdir == "/code"
        assert any("RUN needs a real builder" in n for n in found.notes)

    def test_existing_manifests_are_referenced_not_generated(self) -> None:
        found = detect({"main.py": "X = 1\n", "requirements.txt": "", "deploy/web.yaml": self.DEPLOYMENT})
        assert found.manifests == ("deploy/web.yaml",)
        assert found.image_name == "registry.example.com/shop/web"
        assert found.container == "web"
        assert found.port == 8181 and "containerPort" in found.port_source
        files = render(found, "shop")
        assert set(files) == {"innerloop.yaml", "Dockerfile"}
        service = parse_config(files["innerloop.yaml"]).services["shop"]
        assert service.manifests.files == ["deploy/web.yaml"]
        assert service.image is not None and service.image.name == "registry.example.com/shop/web"
        assert service.container == "web"

    def test_yaml_that_is_not_a_deployment_is_not_taken_for_manifests(self) -> None:
        found = detect({"app.py": STDLIB_APP, "config.yaml": "kind: settings\n", "chart/t.yaml": "{{ bad"})
        assert found.manifests == ()

    def test_nothing_existing_is_overwritten_without_force(self) -> None:
        rendered = ["innerloop.yaml", "Dockerfile", "k8s/shop.yaml"]
        plan = plan_writes(rendered, ["innerloop.yaml"], force=False)
        assert (plan.write, plan.keep) == (["Dockerfile", "k8s/shop.yaml"], ["innerloop.yaml"])
        forced = plan_writes(rendered, ["innerloop.yaml"], force=True)
        assert (forced.write, forced.keep) == (rendered, [])


@pytest.mark.parametrize(
    ("folder", "name"),
    [("My_Shop", "my-shop"), ("api", "api"), ("--x--", "x"), ("___", "app"), ("a" * 80, "a" * 63), ("Ünï", "n")],
)
def test_service_name_is_a_dns_label(folder: str, name: str) -> None:
    assert service_name(folder) == name


def test_render_refuses_a_name_that_is_not_a_dns_label() -> None:
    found: Detected = detect({"app.py": STDLIB_APP})
    with pytest.raises(ValueError, match="DNS-1123"):
        render(found, "Not_A_Label")
