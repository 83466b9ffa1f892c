"""``innerloop init``: recognise an app from its files and write what ``innerloop up`` needs. Pure.

``detect`` reads a listing (relative path -> text; binary or uninteresting
files may map to ``""``, their presence is what counts) and guesses the kind
of app, the command that starts it, and the port it listens on. ``render``
turns that into file texts: ``innerloop.yaml`` always, a Dockerfile and
``k8s/<name>.yaml`` only when the app has none. Deciding which of those may
be written (nothing local is overwritten without ``--force``) is
:func:`plan_writes`; reading the folder and writing files is the CLI's job.

Guesses are made from the code with a handful of regular expressions (the
``PORT`` environment default, a literal port given to ``serve``/``listen``/
``uvicorn.run``, ...), not by running anything: a wrong guess costs the
newcomer one edit of a file that says where the guess came from, while
running unknown code to find its port would cost much more.

A Python app's image builds with innerloop's daemonless builder (no RUN, on
``innerloop.local/python:3.11``). A Node or Go app gets the Dockerfile a team
would write, which a real builder (buildah, podman, docker, chosen
automatically) builds from public bases: Node ``FROM node:18-slim`` with
``npm ci --omit=dev``; Go a multi-stage build ``FROM golang:1.19`` onto
``gcr.io/distroless/static-debian12:nonroot``. Those names resolve through
the machine's registries.conf (the bundled cluster's registry mirrors them).
A Go service gets no sync rule: its code is compiled, so a saved ``.go``
file rebuilds the image and redeploys it.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from innerloop.builders.dockerfile import DockerfileError
from innerloop.builders.dockerfile import parse as parse_dockerfile
from innerloop.config.model import DNS_LABEL_PATTERN, IMAGE_NAME_PATTERN

CONFIG_FILE = "innerloop.yaml"
PYTHON_BASE = "innerloop.local/python:3.11"  # built by the bundled cluster, see engine/sources.py
BUSYBOX_BASE = "innerloop.local/busybox:1.35"
NODE_BASE = "node:18-slim"  # public names: a real builder pulls them (here, through the bundled registry's mirror)
GO_BASE = "golang:1.19"
GO_RUNTIME = "gcr.io/distroless/static-debian12:nonroot"
GO_MODULES, GO_BUILD_CACHE = "/go/pkg/mod", "/root/.cache/go-build"  # where golang images keep them
NODE_LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")
NONROOT = "65532:65532"
WORKDIR = "/app"
PYTHON_ENTRIES = ("app.py", "main.py", "server.py")
NODE_ENTRIES = ("server.js", "index.js", "app.js", "main.js")
BASE_EXCLUDES = ("__pycache__/", "*.pyc", "node_modules/", ".git/", ".innerloop/", "Dockerfile")
# What a folder walk never needs to look into.
SKIPPED_FOLDERS = frozenset(
    {".git", ".innerloop", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".mypy_cache"}
)
WHAT_IS_LOOKED_FOR = (
    "Python: pyproject.toml, requirements.txt or an app.py/main.py/server.py that starts a server; "
    "Node: package.json; Go: go.mod with a main package"
)

Kind = Literal["python", "node", "go", "dockerfile"]  # dockerfile: nothing else recognised


class NotDetected(ValueError):
    """No app innerloop init knows how to set up; the message lists what was looked for."""


@dataclass(frozen=True, kw_only=True)
class Detected:
    """What ``detect`` found: enough to write a config, a Dockerfile and manifests."""

    kind: Kind
    entry: str  # the file (Python, Node) or main package folder (Go) that starts the app
    command: tuple[str, ...]  # how the container starts it
    port: int
    port_source: str  # where the port comes from, for the user: "app.py: PORT default", "--port", ...
    serves_http: bool
    workdir: str = WORKDIR
    dockerfile: bool = False  # the app has its own Dockerfile; it is kept
    manifests: tuple[str, ...] = ()  # existing YAML files holding the app's Deployment
    image_name: str | None = None  # the image the existing Deployment runs (without tag)
    workload: str | None = None  # deployment/<name> when the manifests hold several
    container: str | None = None  # when that Deployment has several containers
    excludes: tuple[str, ...] = BASE_EXCLUDES
    lockfiles: tuple[str, ...] = ()  # copied before the dependency install (package-lock.json, go.sum)
    notes: tuple[str, ...] = ()


# -- detection ---------------------------------------------------------------------------------------------------


def detect(files: Mapping[str, str]) -> Detected:
    """Recognise the app in ``files`` (relative POSIX path -> text); raise :class:`NotDetected` if unknown.

    The YAML files of the listing that hold a Deployment are taken as the app's manifests.
    """
    return _with_manifests(detect_app(files), files)


def detect_app(files: Mapping[str, str]) -> Detected:
    """As :func:`detect`, without looking for manifests (a repository's are paired by :mod:`.init_repo`)."""
    found = _detect_python(files) or _detect_node(files) or _detect_go(files)
    if found is None:
        python = [p for p in ("pyproject.toml", "requirements.txt", "setup.py") if p in files]
        if python:
            raise NotDetected(
                f"{python[0]} found, but no Python entry file: looked for {', '.join(PYTHON_ENTRIES)} or a "
                'top-level .py file with `if __name__ == "__main__"`'
            )
        listed = ", ".join(sorted(p for p in files if "/" not in p)[:12]) or "nothing"
        raise NotDetected(f"no app found (looked for {WHAT_IS_LOOKED_FOR}); top-level files: {listed}")
    found = _with_dockerfile(found, files)
    venvs = sorted({p.split("/", 1)[0] + "/" for p in files if p.endswith("/pyvenv.cfg") and p.count("/") == 1})
    if venvs:
        found = dataclasses.replace(found, excludes=(*found.excludes, *venvs))
    return found


def detect_dockerfile(files: Mapping[str, str]) -> Detected | None:
    """A folder with a Dockerfile and no app innerloop recognises: its WORKDIR, EXPOSE and command."""
    if "Dockerfile" not in files:
        return None
    try:
        recipe = parse_dockerfile(files["Dockerfile"])
        command = tuple([*(recipe.entrypoint or []), *(recipe.cmd or [])])
    except DockerfileError:
        command = ()
    unknown = Detected(
        kind="dockerfile",
        entry="Dockerfile",
        command=command,
        port=8080,
        port_source="no port found (the Dockerfile has no EXPOSE); 8080 assumed",
        serves_http=False,
    )
    found = _with_dockerfile(unknown, files)
    return dataclasses.replace(found, serves_http=found.port_source == "Dockerfile EXPOSE")


def with_port(detected: Detected, port: int) -> Detected:
    """The same app, listening on ``port`` as the user said (``--port``)."""
    return dataclasses.replace(detected, port=port, port_source="--port")


_SERVER_MARKERS = {
    "python": re.compile(
        r"serve_forever|HTTPServer|uvicorn|Flask\(|FastAPI\(|web\.run_app|wsgiref|socketserver|\.run\([^)]*port"
    ),
    "node": re.compile(r"createServer|express\(|fastify|new Koa|\.listen\("),
    "go": re.compile(r"ListenAndServe|net\.Listen|\.Run\(|\.Start\(\s*\":|\.Listen\(\s*\":"),
}
_PORT_PATTERNS: dict[str, list[tuple[re.Pattern[str], str]]] = {
    "python": [
        (re.compile(r"(?:environ\.get|getenv)\(\s*[\"']PORT[\"']\s*,\s*[\"']?(\d{2,5})"), "PORT default"),
        (re.compile(r"environ\.get\(\s*[\"']PORT[\"']\s*\)\s*or\s*[\"']?(\d{2,5})"), "PORT default"),
        (re.compile(r"\bport\s*=\s*(\d{2,5})\b"), "port="),
        (re.compile(r"\(\s*\(\s*[\"'][^\"']*[\"']\s*,\s*(\d{2,5})\s*\)"), "server address"),
        (re.compile(r"^PORT\s*=\s*(\d{2,5})\b", re.MULTILINE), "PORT ="),
    ],
    "node": [
        (re.compile(r"process\.env\.PORT\s*(?:\|\||\?\?)\s*[\"']?(\d{2,5})"), "PORT default"),
        (re.compile(r"\.listen\(\s*(\d{2,5})\b"), "listen()"),
        (re.compile(r"\bport\s*[=:]\s*(\d{2,5})\b", re.IGNORECASE), "port ="),
    ],
    "go": [
        (re.compile(r"(?:Listen|ListenAndServe|Run|Start)\(\s*\"[^\":]*:(\d{2,5})\""), "listen address"),
        (re.compile(r"\bport\s*:?=\s*\":?(\d{2,5})\"", re.IGNORECASE), "port default"),
        (re.compile(r"\":(\d{2,5})\""), "address literal"),
    ],
}


def _guess_port(kind: Kind, sources: Iterable[tuple[str, str]], default: int) -> tuple[int, str]:
    """The first port the patterns find, in order of how telling they are, and where it was found."""
    texts = list(sources)
    for pattern, what in _PORT_PATTERNS[kind]:
        for path, text in texts:
            match = pattern.search(text)
            if match and 1 <= int(match.group(1)) <= 65535:
                line = text.count("\n", 0, match.start()) + 1
                return int(match.group(1)), f"{path}:{line}, {what}"
    return default, f"no port found in the code; {default} is the usual default (change it with --port)"


def _detect_python(files: Mapping[str, str]) -> Detected | None:
    markers = [p for p in ("pyproject.toml", "requirements.txt", "setup.py") if p in files]
    top_level = sorted(p for p in files if p.endswith(".py") and "/" not in p)
    server = _SERVER_MARKERS["python"]
    candidates = [p for p in PYTHON_ENTRIES if p in files] + [
        p for p in top_level if p not in PYTHON_ENTRIES and "__main__" in files[p]
    ]
    if not candidates or (not markers and not any(server.search(files[p]) for p in candidates)):
        return None
    entry = next((p for p in candidates if server.search(files[p])), candidates[0])
    text = files[entry]
    serves_http = bool(server.search(text))
    default = 5000 if "Flask(" in text else 8000 if "uvicorn" in text or "FastAPI(" in text else 8080
    port, source = _guess_port("python", [(entry, text)], default)
    notes = []
    third_party = _python_requirements(files)
    if third_party:
        notes.append(
            f"{PYTHON_BASE} has the standard library only (no pip): {', '.join(third_party)} must be vendored "
            "into this folder, or use a Dockerfile FROM an image that has them"
        )
    return Detected(
        kind="python",
        entry=entry,
        command=("/usr/bin/python3", posixpath.join(WORKDIR, entry)),
        port=port,
        port_source=source,
        serves_http=serves_http,
        notes=tuple(notes),
    )


def _python_requirements(files: Mapping[str, str]) -> list[str]:
    names: list[str] = []
    for raw in files.get("requirements.txt", "").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\s<>=!~\[;@]", line, maxsplit=1)[0])
    try:
        project = tomllib.loads(files.get("pyproject.toml", "")).get("project", {})
    except tomllib.TOMLDecodeError:
        project = {}
    for requirement in project.get("dependencies", []) if isinstance(project, dict) else []:
        if isinstance(requirement, str):
            names.append(re.split(r"[\s<>=!~\[;@]", requirement.strip(), maxsplit=1)[0])
    return sorted(set(filter(None, names)))


def _detect_node(files: Mapping[str, str]) -> Detected | None:
    if "package.json" not in files:
        return None
    try:
        package = json.loads(files["package.json"] or "{}")
    except json.JSONDecodeError:
        package = {}
    if not isinstance(package, dict):
        package = {}
    scripts = package.get("scripts") if isinstance(package.get("scripts"), dict) else {}
    start = scripts.get("start") if isinstance(scripts, dict) else None
    main = package.get("main")
    command: tuple[str, ...]
    entry: str | None = None
    if isinstance(start, str) and re.fullmatch(r"node\s+[^;&|]+", start.strip()):
        args = start.split()[1:]
        command = ("node", *args)
        entry = next((a for a in args if not a.startswith("-")), None)
    elif isinstance(main, str) and main in files:
        entry, command = main, ("node", main)
    elif (entry := next((p for p in NODE_ENTRIES if p in files), None)) is not None:
        command = ("node", entry)
    elif isinstance(start, str):
        command = ("npm", "start")
    else:
        raise NotDetected(
            "package.json has no scripts.start or main, and there is no server.js, index.js or app.js: "
            'add a start script (e.g. "start": "node server.js")'
        )
    sources = [(entry, files[entry])] if entry and entry in files else []
    sources += [(p, t) for p, t in files.items() if p.endswith((".js", ".mjs", ".cjs", ".ts")) and p != entry]
    sources = [(p, t) for p, t in sources if not p.startswith("node_modules/")]
    port, source = _guess_port("node", sources, 3000)
    lockfiles = tuple(p for p in NODE_LOCKFILES if p in files)
    notes = [
        f"the Dockerfile installs the dependencies (FROM {NODE_BASE}, RUN npm ci --omit=dev): a real builder "
        "builds it (buildah, podman or docker, whichever is installed)",
    ]
    if not lockfiles:
        notes.append("no package-lock.json: `npm ci` needs one; run `npm install` once and keep the lock file")
    if command[0] == "npm":
        notes.append("`npm start` writes to $HOME, which the read-only root filesystem refuses: prefer node <file>")
    return Detected(
        kind="node",
        entry=entry or "package.json",
        command=command,
        port=port,
        port_source=source,
        serves_http=any(_SERVER_MARKERS["node"].search(t) for _, t in sources),
        lockfiles=lockfiles,
        notes=tuple(notes),
    )


def _detect_go(files: Mapping[str, str]) -> Detected | None:
    if "go.mod" not in files:
        return None
    mains = sorted(
        p
        for p, t in files.items()
        if p.endswith(".go")
        and not p.endswith("_test.go")
        and re.search(r"^package main\b", t, re.MULTILINE)
        and re.search(r"^func main\(\)", t, re.MULTILINE)
    )
    if not mains:
        raise NotDetected("go.mod found, but no main package (a .go file with `package main` and `func main()`)")
    # The main package nearest the top: "." before "cmd/server".
    folder = min((posixpath.dirname(p) for p in mains), key=lambda d: (d.count("/") if d else -1, d))
    package = f"./{folder}" if folder else "."
    sources = [(p, t) for p, t in files.items() if p.endswith(".go") and posixpath.dirname(p) == folder]
    port, source = _guess_port("go", sources, 8080)
    notes = [
        f"the Dockerfile is a multi-stage build (FROM {GO_BASE}, go build, then {GO_RUNTIME}): a real builder "
        "builds it (buildah, podman or docker, whichever is installed)",
        "no sync for a compiled app: `innerloop up` rebuilds the image and redeploys it when a .go file changes",
    ]
    wanted = re.search(r"^go\s+(\d+)\.(\d+)", files["go.mod"], re.MULTILINE)
    if wanted and (int(wanted.group(1)), int(wanted.group(2))) > (1, 19):
        notes.append(
            f"go.mod asks for go {wanted.group(1)}.{wanted.group(2)}; the Dockerfile builds with {GO_BASE}: "
            "change its FROM when the code needs the newer toolchain"
        )
    return Detected(
        kind="go",
        entry=package,
        command=(f"{WORKDIR}/app",),
        port=port,
        port_source=source,
        serves_http=any(_SERVER_MARKERS["go"].search(t) for _, t in sources),
        lockfiles=("go.sum",) if "go.sum" in files else (),
        notes=tuple(notes),
    )


def _with_dockerfile(detected: Detected, files: Mapping[str, str]) -> Detected:
    if "Dockerfile" not in files:
        return detected
    text = files["Dockerfile"]
    notes = list(detected.notes)
    try:
        recipe = parse_dockerfile(text)
        workdir, exposed = recipe.workdir, recipe.exposed
    except DockerfileError as err:
        notes.append(f"the existing Dockerfile is kept, but innerloop's builder cannot build it: {err}")
        workdirs = re.findall(r"^\s*WORKDIR\s+(\S+)", text, re.IGNORECASE | re.MULTILINE)
        workdir, exposed = (workdirs[-1] if workdirs else ""), re.findall(r"^\s*EXPOSE\s+(\d+)", text, re.MULTILINE)
    changes: dict[str, Any] = {"dockerfile": True, "notes": tuple(notes)}
    if workdir.startswith("/"):
        changes["workdir"] = workdir.rstrip("/") or "/"
    else:
        notes.append(f"the Dockerfile sets no WORKDIR: sync goes to {WORKDIR}/, check that the app runs from there")
    port = next((int(p.split("/")[0]) for p in exposed if p.split("/")[0].isdigit()), None)
    if port is not None and detected.port_source.startswith("no port found"):
        changes |= {"port": port, "port_source": "Dockerfile EXPOSE"}
    return dataclasses.replace(detected, **changes)


def _deployments(files: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")) or posixpath.basename(path) == CONFIG_FILE or "kind:" not in text:
            continue
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            continue  # a Helm template or not Kubernetes at all
        found += [(path, d) for d in documents if isinstance(d, dict) and d.get("kind") == "Deployment"]
    return found


def _with_manifests(detected: Detected, files: Mapping[str, str]) -> Detected:
    deployments = _deployments(files)
    if not deployments:
        return detected
    path, chosen = deployments[0]
    name = str(chosen.get("metadata", {}).get("name", ""))
    spec = chosen.get("spec", {}).get("template", {}).get("spec", {})
    containers = [c for c in spec.get("containers", []) if isinstance(c, dict)]
    changes: dict[str, Any] = {"manifests": tuple(sorted({p for p, _ in deployments}))}
    if len(deployments) > 1:
        changes["workload"] = f"deployment/{name}"
    container = containers[0] if containers else {}
    if len(containers) > 1:
        changes["container"] = container.get("name")
    image = re.sub(r"@.*$|:[^/:]*$", "", str(container.get("image", "")))
    if re.fullmatch(IMAGE_NAME_PATTERN, image):
        changes["image_name"] = image
    ports = [p.get("containerPort") for p in container.get("ports", []) if isinstance(p, dict)]
    if ports and isinstance(ports[0], int) and detected.port_source.startswith("no port found"):
        changes |= {"port": ports[0], "port_source": f"{path} (containerPort)"}
    return dataclasses.replace(detected, **changes)


def service_name(folder: str) -> str:
    """A DNS-1123 label from a folder name: ``My_App`` -> ``my-app``; ``app`` when nothing is left."""
    name = re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")[:63].strip("-")
    return name if re.fullmatch(DNS_LABEL_PATTERN, name) else "app"


# -- rendering ---------------------------------------------------------------------------------------------------


def render(detected: Detected, name: str, *, schema: str | None = None) -> dict[str, str]:
    """The files ``innerloop up`` needs, by path relative to the app's folder.

    ``schema``: the JSON Schema's path relative to that folder, for the
    editor modeline on the first line (left out when ``None``).
    """
    if not re.fullmatch(DNS_LABEL_PATTERN, name):
        raise ValueError(f"{name!r} is not a DNS-1123 label")
    manifests = list(detected.manifests) or [f"k8s/{name}.yaml"]
    out = {CONFIG_FILE: _config(detected, name, manifests, schema)}
    if not detected.dockerfile:
        out["Dockerfile"] = dockerfile_text(detected)
        ignore = dockerignore_text(detected)
        if ignore is not None:
            out[".dockerignore"] = ignore
    if not detected.manifests:
        out[manifests[0]] = manifests_text(detected, name)
    return out


def yaml_flow(items: Iterable[str]) -> str:
    """A YAML flow sequence, quoting only the items that need it: ``[__pycache__/, "*.pyc"]``."""
    return "[" + ", ".join(json.dumps(i) if re.search(r"[*\[\]{}:,#&!|>'\"%@`]|^[-?]", i) else i for i in items) + "]"


def _config(detected: Detected, name: str, manifests: list[str], schema: str | None) -> str:
    lines = [f"# yaml-language-server: $schema={schema}"] if schema else []
    lines += [
        f"# Written by `innerloop init` for a {detected.kind.capitalize()} app ({detected.entry});",
        f"# port {detected.port}: {detected.port_source}.",
        "# `innerloop up` builds the image, deploys the manifests and syncs every save into the container.",
        "version: 1",
        f"name: {name}",
        "services:",
        f"  {name}:",
        "    manifests:",
        f"      files: {yaml_flow(manifests)}",
        "    image:",
        f"      name: {detected.image_name or name}",
        "      context: .",
    ]
    if detected.workload:
        lines.append(f"    workload: {detected.workload}")
    if detected.container:
        lines.append(f"    container: {detected.container}")
    lines += sync_lines(detected, "./")
    lines += [
        "    ports:",
        f"      - remote: {detected.port}",
        f"        local: {detected.port}",
    ]
    return "\n".join(lines) + "\n"


def sync_lines(detected: Detected, local: str) -> list[str]:
    """The service's sync rule and restart, as innerloop.yaml lines; none for a compiled (Go) app,
    whose saved sources must rebuild the image rather than reach the container."""
    if detected.kind == "go":
        return ["    # No sync: the code is compiled; a saved .go file rebuilds the image and redeploys it."]
    return [
        "    sync:",
        f"      - local: {local}",
        f"        remote: {detected.workdir.rstrip('/')}/",
        f"        exclude: {yaml_flow(detected.excludes)}",
        "    restart: process",
    ]


def dockerfile_text(detected: Detected) -> str:
    tail = [
        f"ENV PORT={detected.port}",
        f"USER {NONROOT}",
        f"EXPOSE {detected.port}",
        f"ENTRYPOINT {json.dumps(list(detected.command))}",
    ]
    if detected.kind == "node":
        lock = detected.lockfiles[0] if detected.lockfiles else None
        lines = [
            "# Written by `innerloop init`: dependencies first (a cached layer), then the code.",
            "# It has RUN, so a real builder builds it (buildah, podman or docker).",
            f"FROM {NODE_BASE}",
            "ENV NODE_ENV=production",
            f"WORKDIR {WORKDIR}",
            f"COPY package.json {lock} ./" if lock else "COPY package.json ./",
            "RUN npm ci --omit=dev" if lock else "RUN npm install --omit=dev",
            f"COPY . {WORKDIR}/",
            *tail,
        ]
    elif detected.kind == "go":
        lines = [
            "# Written by `innerloop init`: built in the Go toolchain image, run as a static binary on",
            "# distroless (no shell). Multi-stage, so a real builder builds it (buildah, podman or docker).",
            f"FROM {GO_BASE} AS build",
            "WORKDIR /src",
            f"COPY {' '.join(['go.mod', *detected.lockfiles])} ./",
            "# Cache mounts (BuildKit, buildah, podman): a rebuild recompiles your code, not the standard library.",
            f"RUN --mount=type=cache,target={GO_MODULES} go mod download",
            "COPY . .",
            f"RUN --mount=type=cache,target={GO_MODULES} --mount=type=cache,target={GO_BUILD_CACHE} "
            f"CGO_ENABLED=0 go build -o /out/app {detected.entry}",
            "",
            f"FROM {GO_RUNTIME}",
            f"COPY --from=build /out/app {WORKDIR}/app",
            *tail,
        ]
    else:
        lines = [
            "# Written by `innerloop init`; built by innerloop without a Docker daemon (no RUN, one FROM).",
            f"FROM {PYTHON_BASE}",
            f"WORKDIR {WORKDIR}",
            f"COPY . {WORKDIR}/",
            "ENV PYTHONUNBUFFERED=1",
            *tail,
        ]
    return "\n".join(lines) + "\n"


def dockerignore_text(detected: Detected) -> str | None:
    """What the build context leaves out for a Node or Go Dockerfile's ``COPY .`` (None: nothing to write)."""
    if detected.kind == "node":
        return "node_modules/\nnpm-debug.log\n.git/\n.innerloop/\n"
    if detected.kind == "go":
        return ".git/\n.innerloop/\n"
    return None


def manifests_text(detected: Detected, name: str) -> str:
    """A Deployment and a Service that pass the restricted Pod Security Standard (as examples/bookshop/k8s)."""
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": name}
    port_name = "http" if detected.serves_http else "tcp"
    container: dict[str, Any] = {
        "name": name,
        "image": detected.image_name or name,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": port_name, "containerPort": detected.port}],
        "env": [{"name": "PORT", "value": str(detected.port)}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
    }
    if detected.serves_http:
        container["readinessProbe"] = {"tcpSocket": {"port": port_name}, "periodSeconds": 2}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": port_name, "port": detected.port, "targetPort": port_name}],
        },
    }
    head = (
        "# Written by `innerloop init`: non-root, no capabilities, read-only root filesystem\n"
        "# (the restricted Pod Security Standard). innerloop swaps in the image it builds.\n"
    )
    return head + yaml.safe_dump_all([deployment, service], sort_keys=False)


# -- writing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WritePlan:
    """Which rendered files to write, and which existing files to keep as they are."""

    write: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)


def plan_writes(rendered: Iterable[str], existing: Iterable[str], *, force: bool) -> WritePlan:
    """No local file is overwritten unless ``force``."""
    present = set(existing)
    plan = WritePlan()
    for path in rendered:
        (plan.keep if path in present and not force else plan.write).append(path)
    return plan
