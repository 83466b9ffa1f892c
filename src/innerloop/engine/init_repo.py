"""``innerloop init`` at the root of a repository with several apps: one ``innerloop.yaml`` for all of them. Pure.

Like ``skaffold init``, this pairs every app of a repository with the existing
manifests that run its image, from a listing (relative path -> text, as
:mod:`innerloop.engine.init` reads one), without running anything:

1. Apps: every folder :func:`~innerloop.engine.init.detect_app` recognises
   (Python, Node, Go) or that has a Dockerfile; the shallowest wins, so an
   app's own subfolders are part of it.
2. Manifests: plain YAML files anywhere, kustomization folders and Helm
   charts. Kustomize and Helm are read as text (resources, ``namePrefix``,
   ``images``; templates with ``.Values`` looked up in ``values.yaml``), not
   rendered: init must work before kubectl or helm are installed, and a
   wrong guess costs one edit of a file that says where it came from.
3. Pairing: a workload's container goes with the app whose folder its image
   is named after (``api``, ``registry.example.com/shop/api`` for ``api/``;
   ``shop-api`` is a weaker match), else the app whose folder its command's
   path goes through, else the app its name is; one workload per app, the
   best guess first.
4. Services: a paired app develops on its workload in the existing file
   (``workload:`` names it when the file holds several); an app with no
   workload gets manifests written; a workload with no app (a redis on a
   published image) is deployed as it is: manifests, no image, no sync.
5. ``dependsOn``: the Services an app's code or its workload's env calls by
   name (``http://api:8080``, ``redis:6379``), mapped to the services whose
   pods they select; an edge that would close a cycle is left out.

Every guess carries its reason: the rendered file says it in comments, the
CLI prints it.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from innerloop.config.model import IMAGE_NAME_PATTERN
from innerloop.engine.init import (
    CONFIG_FILE,
    PYTHON_ENTRIES,
    Detected,
    NotDetected,
    detect_app,
    detect_dockerfile,
    dockerfile_text,
    manifests_text,
    service_name,
    sync_lines,
    yaml_flow,
)

APP_MARKERS = frozenset({"pyproject.toml", "requirements.txt", "setup.py", "package.json", "go.mod", "Dockerfile"})
KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
WORKLOAD_KINDS = {"Deployment": "deployment", "StatefulSet": "statefulset"}
# Files whose text may call another Service by name; lock files are long and never do.
CALLER_SUFFIXES = (".py", ".js", ".mjs", ".cjs", ".ts", ".go", ".json", ".toml", ".cfg", ".ini", ".yaml", ".yml")
NOT_CALLERS = frozenset({"package-lock.json", "yarn.lock", "pnpm-lock.yaml", "go.sum", "poetry.lock"})
MANIFEST_FOLDER = "k8s"  # where manifests for an app without any go, unless the repository keeps them elsewhere

SourceKind = Literal["files", "kustomize", "helm"]


@dataclass(frozen=True, kw_only=True)
class App:
    """A folder with an app in it, and what :mod:`innerloop.engine.init` found there."""

    folder: str  # relative to the repository's root, e.g. "api" or "services/api"
    detected: Detected  # its paths are relative to the folder

    @property
    def names(self) -> frozenset[str]:
        """The names an image or a workload of this app would have: its folder's name."""
        base = posixpath.basename(self.folder)
        return frozenset({base.lower(), service_name(base)})


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where workloads come from, as ``manifests:`` in innerloop.yaml says it."""

    kind: SourceKind
    path: str  # a YAML file, a kustomization folder, a chart folder


@dataclass(frozen=True, kw_only=True)
class Container:
    name: str | None  # None when a Helm template computes it
    image: str  # as written, tag included
    command: tuple[str, ...]  # command, then args
    env: tuple[str, ...]  # literal values
    ports: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A Deployment or StatefulSet of the existing manifests."""

    kind: Literal["deployment", "statefulset"]
    name: str | None  # None when a Helm template computes it
    path: str  # the file it is written in
    source: Source
    labels: Mapping[str, str]
    replicas: int
    containers: tuple[Container, ...]

    @property
    def ref(self) -> str:
        """``deployment/api``, as ``workload:`` writes it; for a name a chart computes, what it is."""
        return f"{self.kind}/{self.name}" if self.name else f"the {self.kind} of {self.source.path}"


@dataclass(frozen=True, kw_only=True)
class KubeService:
    """A Kubernetes Service of the existing manifests: the name other apps call."""

    name: str
    path: str
    source: Source
    selector: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class ExistingManifests:
    workloads: tuple[Workload, ...] = ()
    services: tuple[KubeService, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RepoService:
    """One service of the repository's innerloop.yaml, and why it is what it is."""

    name: str
    app: App | None  # None: a workload on a published image
    workload: Workload | None  # None: an app with no manifests; they are written
    container: Container | None
    files: tuple[str, ...] = ()  # manifests.files, when the source is plain files
    written_manifest: str | None = None  # the file init writes for an app without a workload
    image_name: str | None = None
    port: int | None = None
    local_port: int | None = None
    depends_on: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()  # what was guessed and why: comments in innerloop.yaml, lines init prints


@dataclass(frozen=True, kw_only=True)
class RepoPlan:
    name: str
    services: tuple[RepoService, ...]
    workload_count: int
    notes: tuple[str, ...] = ()
    source_workloads: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (kind, path) -> how many

    @property
    def apps(self) -> list[App]:
        return [s.app for s in self.services if s.app is not None]


# -- apps --------------------------------------------------------------------------------------------------------


def _under(path: str, folder: str) -> bool:
    return not folder or path.startswith(folder + "/")


def _sub_listing(files: Mapping[str, str], folder: str) -> dict[str, str]:
    return {p[len(folder) + 1 :]: t for p, t in files.items() if p.startswith(folder + "/")}


def find_apps(files: Mapping[str, str]) -> tuple[list[App], list[str]]:
    """Every app folder below the root (the shallowest, when one is inside another), and notes on folders skipped."""
    markers = {
        posixpath.dirname(p)
        for p in files
        if "/" in p and (posixpath.basename(p) in APP_MARKERS or posixpath.basename(p) in PYTHON_ENTRIES)
    }
    charts = {posixpath.dirname(p) for p in files if posixpath.basename(p) == "Chart.yaml"}
    apps: list[App] = []
    notes: list[str] = []
    for folder in sorted(markers, key=lambda f: (f.count("/"), f)):
        if any(_under(folder, a.folder) for a in apps) or any(_under(folder, c) or folder == c for c in charts):
            continue
        listing = _sub_listing(files, folder)
        try:
            detected = detect_app(listing)
        except NotDetected as err:
            found = detect_dockerfile(listing)
            if found is None:
                if APP_MARKERS & set(listing):  # a project file, not a stray main.py: worth saying
                    notes.append(f"{folder}/ is not set up: {err}")
                continue
            detected = found
        apps.append(App(folder=folder, detected=detected))
    return apps, notes


# -- manifests ---------------------------------------------------------------------------------------------------


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(value).items()}


def _load_all(text: str) -> list[dict[str, Any]]:
    try:
        return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError:
        return []  # a template, or not YAML at all


def _container(raw: dict[str, Any]) -> Container | None:
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        return None
    return Container(
        name=str(raw["name"]) if isinstance(raw.get("name"), str) else None,
        image=image,
        command=tuple(str(a) for a in [*_list(raw.get("command")), *_list(raw.get("args"))]),
        env=tuple(str(e["value"]) for e in _list(raw.get("env")) if isinstance(e, dict) and "value" in e),
        ports=tuple(
            p["containerPort"] for p in _list(raw.get("ports")) if isinstance(_dict(p).get("containerPort"), int)
        ),
    )


def _objects(doc: dict[str, Any], *, path: str, source: Source, rename: Renames) -> Iterator[Workload | KubeService]:
    kind, meta = doc.get("kind"), _dict(doc.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not isinstance(doc.get("apiVersion"), str):
        return
    spec = _dict(doc.get("spec"))
    if kind == "Service":
        yield KubeService(name=rename.name(name), path=path, source=source, selector=_strings(spec.get("selector")))
    elif kind in WORKLOAD_KINDS:
        template = _dict(spec.get("template"))
        containers = [_container(_dict(c)) for c in _list(_dict(template.get("spec")).get("containers"))]
        replicas = spec.get("replicas", 1)
        yield Workload(
            kind="deployment" if kind == "Deployment" else "statefulset",
            name=rename.name(name),
            path=path,
            source=source,
            labels=_strings(_dict(template.get("metadata")).get("labels")),
            replicas=replicas if isinstance(replicas, int) else 1,
            containers=tuple(rename.container(c) for c in containers if c is not None),
        )


@dataclass(frozen=True)
class Renames:
    """What kustomize does to names and images on the way from a resource file to the rendered objects."""

    prefix: str = ""
    suffix: str = ""
    images: tuple[tuple[str, str], ...] = ()  # (name, newName), innermost kustomization first

    def name(self, name: str) -> str:
        return f"{self.prefix}{name}{self.suffix}"

    def container(self, container: Container) -> Container:
        image = container.image
        for old, new in self.images:
            if strip_tag(image) == old:
                image = new + image[len(old) :]
        return dataclasses.replace(container, image=image)


def _kustomization(files: Mapping[str, str], folder: str) -> dict[str, Any]:
    for name in KUSTOMIZATIONS:
        path = posixpath.join(folder, name)
        if path in files:
            docs = _load_all(files[path])
            return docs[0] if docs else {}
    return {}


def _kustomize_files(
    files: Mapping[str, str], folder: str, kustomizations: set[str], outer: Renames, seen: frozenset[str] = frozenset()
) -> Iterator[tuple[str, Renames]]:
    """The resource files a kustomization renders, each with the renames applied to it."""
    spec = _kustomization(files, folder)
    images = tuple(
        (str(i["name"]), str(i.get("newName") or i["name"]))
        for i in _list(spec.get("images"))
        if isinstance(i, dict) and isinstance(i.get("name"), str)
    )
    renames = Renames(
        prefix=outer.prefix + str(spec.get("namePrefix") or ""),
        suffix=str(spec.get("nameSuffix") or "") + outer.suffix,
        images=images + outer.images,
    )
    for entry in [*_list(spec.get("resources")), *_list(spec.get("bases"))]:
        if not isinstance(entry, str) or "://" in entry:
            continue
        path = posixpath.normpath(posixpath.join(folder, entry))
        if path in kustomizations and path not in seen:
            yield from _kustomize_files(files, path, kustomizations, renames, seen | {folder})
        elif path in files:
            yield path, renames


def _preference(folder: str) -> tuple[int, int, str]:
    """Which kustomization to develop with when several render the same files: a dev overlay, else the shortest."""
    dev = any(part in ("dev", "development", "local") for part in folder.split("/"))
    return (0 if dev else 1, folder.count("/"), folder)


_TEMPLATE = re.compile(r"\{\{-?(.*?)-?\}\}", re.DOTALL)


def _helm_text(text: str, values: Mapping[str, Any], chart: str) -> str:
    """A template's text with ``{{ .Values.x }}`` looked up and ``{{ .Chart.Name }}`` filled in; the rest dropped."""

    def value(match: re.Match[str]) -> str:
        expression = match.group(1)
        if ".Chart.Name" in expression:
            return chart
        reference = re.search(r"\.Values\.([\w.]+)", expression)
        found: object = values
        for key in reference.group(1).split(".") if reference else ["\0"]:
            found = _dict(found).get(key)
        if isinstance(found, dict) and isinstance(found.get("repository"), str):
            return str(found["repository"])
        if isinstance(found, str | int) and not isinstance(found, bool):
            return str(found)
        default = re.search(r"default\s+\"([^\"]*)\"", expression)
        return default.group(1) if default else ""

    return _TEMPLATE.sub(value, text)


def _helm_name(template: str) -> str | None:
    """``metadata.name`` of a template when it is written out, ``None`` when a template computes it."""
    block = re.search(r"^metadata:[ \t]*\n((?:[ \t]+.*\n?)*)", template, re.MULTILINE)
    name = re.search(r"^[ \t]{1,4}name:[ \t]*[\"']?([^\"'\s]*)", block.group(1) if block else "", re.MULTILINE)
    if name is None or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name.group(1)):
        return None
    return name.group(1)


def _helm_chart(files: Mapping[str, str], chart: str) -> Iterator[Workload | KubeService]:
    meta = _load_all(files.get(posixpath.join(chart, "Chart.yaml"), ""))
    name = str(_dict(meta[0] if meta else {}).get("name") or posixpath.basename(chart))
    values_docs = _load_all(files.get(posixpath.join(chart, "values.yaml"), ""))
    values = values_docs[0] if values_docs else {}
    source = Source(kind="helm", path=chart)
    for path in sorted(p for p in files if p.startswith(f"{chart}/templates/") and p.endswith((".yaml", ".yml"))):
        for raw in re.split(r"^---\s*$", files[path], flags=re.MULTILINE):
            kind = re.search(r"^kind:\s*(\w+)\s*$", raw, re.MULTILINE)
            if kind is None or kind.group(1) not in (*WORKLOAD_KINDS, "Service"):
                continue
            object_name = _helm_name(raw)
            text = _helm_text(raw, values, name)
            if kind.group(1) == "Service":
                # A computed name is the release's fullname: the chart's name when the release is named after it.
                yield KubeService(name=object_name or name, path=path, source=source, selector={})
                continue
            images = re.findall(r"^\s*-?\s*image:\s*[\"']?([^\"'\s]+)[\"']?\s*$", text, re.MULTILINE)
            env = tuple(v for v in re.findall(r"^\s*value:\s*[\"']?([^\"'\n]*?)[\"']?\s*$", text, re.MULTILINE))
            replicas = re.search(r"^\s+replicas:\s*(\d+)\s*$", text, re.MULTILINE)
            yield Workload(
                kind=WORKLOAD_KINDS[kind.group(1)],  # type: ignore[arg-type]
                name=object_name,
                path=path,
                source=source,
                labels={},
                replicas=int(replicas.group(1)) if replicas else 1,
                containers=tuple(Container(name=None, image=i, command=(), env=env, ports=()) for i in images),
            )


def read_manifests(files: Mapping[str, str]) -> ExistingManifests:
    """The workloads and Services of a repository's manifests: plain YAML, kustomizations, Helm charts."""
    found: list[Workload | KubeService] = []
    notes: list[str] = []
    charts = sorted({posixpath.dirname(p) for p in files if posixpath.basename(p) == "Chart.yaml"})
    for chart in charts:
        found += _helm_chart(files, chart)
    kustomizations = {posixpath.dirname(p) for p in files if posixpath.basename(p) in KUSTOMIZATIONS}
    rendered: dict[str, list[tuple[str, Renames]]] = {}  # file -> (kustomization, renames)
    for folder in sorted(kustomizations, key=_preference):
        for path, renames in _kustomize_files(files, folder, kustomizations, Renames()):
            rendered.setdefault(path, []).append((folder, renames))
    referenced = {k for k in kustomizations for other in kustomizations if other != k and _references(files, other, k)}
    roots = sorted(kustomizations - referenced, key=_preference)
    for path, owners in sorted(rendered.items()):
        chosen = [(k, r) for k, r in owners if k in roots] or owners
        folder, renames = min(chosen, key=lambda o: _preference(o[0]))
        for doc in _load_all(files[path]):
            found += _objects(doc, path=path, source=Source(kind="kustomize", path=folder), rename=renames)
    if len(roots) > 1:
        notes.append(f"several kustomizations render the same workloads ({', '.join(roots)}): {roots[0]} is used")
    owned = set(rendered)
    for path in sorted(files):
        if (
            not path.endswith((".yaml", ".yml"))
            or posixpath.basename(path) in (CONFIG_FILE, *KUSTOMIZATIONS)
            or path in owned
            or any(_under(path, f) for f in [*charts, *kustomizations])
            or "kind:" not in files[path]
        ):
            continue
        for doc in _load_all(files[path]):
            found += _objects(doc, path=path, source=Source(kind="files", path=path), rename=Renames())
    return ExistingManifests(
        workloads=tuple(o for o in found if isinstance(o, Workload)),
        services=tuple(o for o in found if isinstance(o, KubeService)),
        notes=tuple(notes),
    )


def _references(files: Mapping[str, str], folder: str, other: str) -> bool:
    spec = _kustomization(files, folder)
    entries = [e for e in [*_list(spec.get("resources")), *_list(spec.get("bases"))] if isinstance(e, str)]
    return any(posixpath.normpath(posixpath.join(folder, e)) == other for e in entries)


# -- pairing -----------------------------------------------------------------------------------------------------


def strip_tag(image: str) -> str:
    """``registry:5000/shop/api:1.2@sha256:...`` -> ``registry:5000/shop/api``."""
    return re.sub(r":[^/:]*$", "", re.sub(r"@.*$", "", image))


def _match(app: App, workload: Workload, container: Container) -> tuple[int, str]:
    """How sure a pairing is (0: not at all), and why, for the user."""
    image = strip_tag(container.image)
    repository = image.rsplit("/", 1)[-1].lower()
    if repository in app.names:
        return 4, f"its image {image} is named after {app.folder}/"
    if any(repository.endswith(f"{sep}{name}") for name in app.names for sep in "-_"):
        return 3, f"its image {image} ends with the name of {app.folder}/"
    for arg in container.command:
        parts = [p for p in arg.split("/") if p]
        if "/" in arg and any(p.lower() in app.names for p in parts[:-1]):
            return 2, f"its command runs {arg}, a path through {posixpath.basename(app.folder)}/"
    if workload.name and workload.name in app.names:
        return 1, f"it is named after {app.folder}/"
    return 0, ""


def _pair(apps: list[App], workloads: Iterable[Workload]) -> dict[str, tuple[Workload, Container, str]]:
    """app folder -> (its workload, the container running it, why): best guesses first, one workload per app."""
    candidates = []
    for a, app in enumerate(apps):
        for w, workload in enumerate(workloads):
            for c, container in enumerate(workload.containers):
                score, why = _match(app, workload, container)
                if score:
                    candidates.append((-score, a, w, c, app, workload, container, why))
    pairs: dict[str, tuple[Workload, Container, str]] = {}
    taken: set[int] = set()
    for _, _, w, _, app, workload, container, why in sorted(candidates, key=lambda c: c[:4]):
        if app.folder not in pairs and w not in taken:
            pairs[app.folder] = (workload, container, why)
            taken.add(w)
    return pairs


# -- dependencies ------------------------------------------------------------------------------------------------


def _calls(name: str) -> re.Pattern[str]:
    """A Service called by name: as a URL's host, as ``host:port`` in a string, or as a whole env value."""
    host = rf"{re.escape(name)}(?:\.[a-z0-9-]+)?(?:\.svc(?:\.cluster\.local)?)?"
    return re.compile(
        rf"[a-z][a-z0-9+.-]*://(?:[^@/\s\"']*@)?{host}(?=[:/\"'\s]|$)"
        rf"|(?<![^\"'=\s]){host}:\d{{2,5}}\b"
        rf"|^{host}$",
        re.MULTILINE,
    )


def _callers(files: Mapping[str, str], service: RepoService) -> Iterator[tuple[str, str, bool]]:
    """(where, text, a file?) for everything that may name another Service: the app's code, the workload's env."""
    if service.app is not None:
        for path, text in sorted(files.items()):
            base = posixpath.basename(path)
            if _under(path, service.app.folder) and path.endswith(CALLER_SUFFIXES) and base not in NOT_CALLERS:
                yield path, text, True
    if service.workload is not None:
        for container in service.workload.containers:
            for value in container.env:
                yield f"{service.workload.path} ({service.workload.ref} env)", value, False


def _depends(
    files: Mapping[str, str], services: list[RepoService], owners: Mapping[str, str]
) -> tuple[dict[str, list[str]], list[str], dict[str, list[str]]]:
    """Service name -> what it depends on, notes on edges left out, and why each edge is there."""
    graph: dict[str, list[str]] = {s.name: [] for s in services}
    why: dict[str, list[str]] = {s.name: [] for s in services}
    notes: list[str] = []
    patterns = {kube: _calls(kube) for kube in owners}

    def reaches(start: str, goal: str) -> bool:
        stack, seen = [start], set()
        while stack:
            here = stack.pop()
            if here == goal:
                return True
            if here not in seen:
                seen.add(here)
                stack += graph[here]
        return False

    for service in services:
        for where, text, is_file in _callers(files, service):
            for kube, pattern in patterns.items():
                target = owners[kube]
                if target == service.name or target in graph[service.name]:
                    continue
                match = pattern.search(text)
                if match is None:
                    continue
                line = text.count("\n", 0, match.start()) + 1
                place = f"{where}:{line}" if is_file else where
                if reaches(target, service.name):
                    notes.append(
                        f"{service.name} calls {kube} ({place}), but {target} already depends on {service.name}: "
                        "left out of dependsOn (a cycle)"
                    )
                    continue
                graph[service.name].append(target)
                why[service.name].append(f"dependsOn {target}: {place} calls {match.group(0).strip()}")
    return graph, notes, why


# -- the plan ----------------------------------------------------------------------------------------------------


def _unique(name: str, taken: set[str], *alternatives: str) -> str:
    for candidate in (name, *alternatives):
        if candidate not in taken:
            return candidate
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _selects(kube: KubeService, workload: Workload) -> bool:
    if kube.selector:
        return all(workload.labels.get(k) == v for k, v in kube.selector.items())
    return kube.source.kind == "helm" and workload.source == kube.source  # a chart's Service: its workload's


def plan_repo(files: Mapping[str, str], *, name: str) -> RepoPlan:
    """Every app of the repository in ``files``, paired with its workload; :class:`NotDetected` without apps."""
    apps, notes = find_apps(files)
    if not apps:
        raise NotDetected("no app in any folder (" + "; ".join(notes) + ")" if notes else "no app in any folder")
    manifests = read_manifests(files)
    notes += manifests.notes
    pairs = _pair(apps, manifests.workloads)
    paired = {id(w) for w, _, _ in pairs.values()}
    per_source: dict[tuple[str, str], int] = {}
    for w in manifests.workloads:
        per_source[(w.source.kind, w.source.path)] = per_source.get((w.source.kind, w.source.path), 0) + 1
    plain = sorted({posixpath.dirname(w.path) for w in manifests.workloads if w.source.kind == "files"})
    manifest_folder = plain[0] if plain and plain[0] else MANIFEST_FOLDER

    services: list[RepoService] = []
    taken: set[str] = set()
    used_ports: dict[int, str] = {}
    for app in apps:
        services.append(
            _app_service(
                app,
                pairs=pairs,
                manifests=manifests,
                taken=taken,
                used_ports=used_ports,
                manifest_folder=manifest_folder,
                notes=notes,
            )
        )
    for workload in manifests.workloads:
        if id(workload) in paired:
            continue
        base = service_name(workload.name or posixpath.basename(workload.source.path))
        service = _unique(base, taken)
        taken.add(service)
        images = ", ".join(c.image for c in workload.containers) or "no image"
        services.append(
            RepoService(
                name=service,
                app=None,
                workload=workload,
                container=None,
                files=_files_of(workload, manifests),
                reasons=(
                    f"{workload.ref} in {workload.path} runs {images}, built by no folder here: "
                    "deployed as it is (no image, no sync)",
                ),
            )
        )

    owners: dict[str, str] = {}
    for kube in manifests.services:
        owner = next((s.name for s in services if s.workload is not None and _selects(kube, s.workload)), None)
        if owner is not None:
            owners.setdefault(kube.name, owner)
    for s in services:
        if s.written_manifest is not None:
            owners.setdefault(s.name, s.name)  # the Service written for it has its name
    graph, cycle_notes, edges = _depends(files, services, owners)
    notes += cycle_notes
    final = [
        dataclasses.replace(s, depends_on=tuple(graph[s.name]), reasons=(*s.reasons, *edges[s.name])) for s in services
    ]
    return RepoPlan(
        name=name,
        services=tuple(final),
        workload_count=len(manifests.workloads),
        notes=tuple(notes),
        source_workloads=per_source,
    )


def _app_service(
    app: App,
    *,
    pairs: Mapping[str, tuple[Workload, Container, str]],
    manifests: ExistingManifests,
    taken: set[str],
    used_ports: dict[int, str],
    manifest_folder: str,
    notes: list[str],
) -> RepoService:
    """The service of one app: its workload (or the manifests written for it), image, sync and forward."""
    base = service_name(posixpath.basename(app.folder))
    service = _unique(base, taken, service_name(app.folder))
    taken.add(service)
    detected = app.detected
    found = (
        f"a Dockerfile in {app.folder}/"
        if detected.kind == "dockerfile"
        else f"{detected.kind.capitalize()} app in {app.folder}/ ({detected.entry})"
    )
    # Where the port was found, from the root: "api/app.py:14, PORT default".
    source = re.sub(r"^(?=[^\s,:]+:\d+, )", f"{app.folder}/", detected.port_source)
    reasons = [f"{found}; port {detected.port}: {source}"]
    port = detected.port
    workload, container, why = pairs.get(app.folder, (None, None, ""))
    if workload is not None and container is not None:
        reasons.append(f"{workload.ref} in {workload.path}: {why}")
        if container.ports and port not in container.ports:
            if detected.port_source.startswith("no port found"):
                port = container.ports[0]
                reasons[0] = f"{found}; port {port}: containerPort in {workload.path}"
            else:
                notes.append(
                    f"{service}: {app.folder}/ listens on {port} ({detected.port_source}), but {workload.ref} "
                    f"declares containerPort {', '.join(map(str, container.ports))}"
                )
        if workload.replicas > 1:
            notes.append(
                f"{service}: {workload.ref} runs {workload.replicas} replicas, each in dev mode; for one copy "
                f"of the app while developing, set replicas: 1 in {workload.path} (init leaves it as it is)"
            )
        if len(workload.containers) > 1 and container.name:
            others = ", ".join(c.name or c.image for c in workload.containers if c is not container)
            reasons.append(f"container {container.name} (next to {others})")
        image = strip_tag(container.image)
        if not re.fullmatch(IMAGE_NAME_PATTERN, image):
            notes.append(f"{service}: {workload.ref}'s image {container.image} is computed; set image.name")
            image = base
        written = None
    else:
        image = base
        written = f"{manifest_folder}/{service}.yaml"
        reasons.append(f"no workload in the manifests runs it: {written} is written for it")
    local = port
    while local in used_ports:
        local += 1
    if local != port:
        reasons.append(f"local port {local}: {port} is forwarded for {used_ports[port]}")
    used_ports[local] = service
    notes += [f"{service} ({app.folder}/): {n}" for n in detected.notes]
    return RepoService(
        name=service,
        app=app,
        workload=workload,
        container=container,
        files=_files_of(workload, manifests) if workload else (written,) if written else (),
        written_manifest=written,
        image_name=image,
        port=port,
        local_port=local,
        reasons=tuple(reasons),
    )


def _files_of(workload: Workload, manifests: ExistingManifests) -> tuple[str, ...]:
    """A plain workload's file, and the files of the Services that select its pods."""
    if workload.source.kind != "files":
        return ()
    found = [workload.path] + [
        k.path for k in manifests.services if k.source.kind == "files" and k.selector and _selects(k, workload)
    ]
    return tuple(dict.fromkeys(found))


# -- rendering ---------------------------------------------------------------------------------------------------


def render_repo(plan: RepoPlan, *, schema: str | None = None) -> dict[str, str]:
    """innerloop.yaml at the root, and a Dockerfile and manifests for each app that has none."""
    out = {CONFIG_FILE: _config(plan, schema)}
    for service in plan.services:
        app = service.app
        if app is None:
            continue
        if not app.detected.dockerfile:
            out[posixpath.join(app.folder, "Dockerfile")] = dockerfile_text(app.detected)
        if service.written_manifest is not None:
            out[service.written_manifest] = manifests_text(app.detected, service.name)
    return out


def _config(plan: RepoPlan, schema: str | None) -> str:
    apps = len(plan.apps)
    lines = [f"# yaml-language-server: $schema={schema}"] if schema else []
    lines += [
        f"# Written by `innerloop init` for a repository: {apps} app{'s' * (apps != 1)}, "
        f"{plan.workload_count} workload{'s' * (plan.workload_count != 1)} in its manifests.",
        "# Each service says what was guessed and why. `innerloop up` builds the images, deploys the",
        "# manifests in dependsOn order and syncs every save into the running containers.",
        "version: 1",
        f"name: {plan.name}",
        "services:",
    ]
    for i, service in enumerate(plan.services):
        if i:
            lines.append("")
        lines += [f"  # {reason}" for reason in service.reasons]
        lines += [f"  {service.name}:", "    manifests:"]
        workload = service.workload
        source = workload.source if workload else None
        if source is None or source.kind == "files":
            lines.append(f"      files: {yaml_flow(service.files)}")
        elif source.kind == "kustomize":
            lines.append(f"      kustomize: {source.path}")
        else:
            lines += ["      helm:", f"        chart: {source.path}"]
        if workload is not None and workload.name is not None and _shares(plan, service):
            lines.append(f"    workload: {workload.ref}")
        if service.container and service.container.name and workload and len(workload.containers) > 1:
            lines.append(f"    container: {service.container.name}")
        app = service.app
        if app is not None and service.image_name is not None:
            detected = app.detected
            lines += [
                "    image:",
                f"      name: {service.image_name}",
                f"      context: {app.folder}",
                *sync_lines(detected, f"{app.folder}/"),
            ]
            if service.port is not None:
                lines += ["    ports:", f"      - remote: {service.port}", f"        local: {service.local_port}"]
        if service.depends_on:
            lines.append(f"    dependsOn: {yaml_flow(service.depends_on)}")
    return "\n".join(lines) + "\n"


def _shares(plan: RepoPlan, service: RepoService) -> bool:
    """The service's manifests hold other workloads too, so ``workload:`` must say which one is its."""
    workload = service.workload
    if workload is None:
        return False
    if workload.source.kind != "files":
        return plan.source_workloads.get((workload.source.kind, workload.source.path), 0) > 1
    return sum(plan.source_workloads.get(("files", path), 0) for path in service.files) > 1
