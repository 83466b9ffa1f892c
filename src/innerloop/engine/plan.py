"""What `innerloop up` deploys, in which order, and how each service is patched (pure).

Given the parsed config, the manifests' text and what the builder produced,
this module decides everything that does not need the cluster: the start
order from ``dependsOn``, the objects of each service with built images
pinned, the workload innerloop develops on, and its dev-mode patch (for
services that sync, and services that debug: their process runs under its
debugger, see :mod:`innerloop.debug.languages`). The engine only executes
the result.
"""

from __future__ import annotations

import graphlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from innerloop.config import Problem, Project, Service
from innerloop.debug.languages import DebugError, DebugLaunch, detect_language, launch_for
from innerloop.deploy.devmode import (
    TOKEN_KEY,
    DebugPatch,
    DevMode,
    apply_dev_mode,
    find_container,
    original_command,
)
from innerloop.deploy.render import pin_images, pod_spec
from innerloop.protocol.messages import token_sha256

WORKLOAD_KINDS = ("Deployment", "StatefulSet")
AGENT_PORT = 47600


class PlanError(ValueError):
    """The config and the manifests do not fit together; the message says how to fix it."""


class PlanProblems(PlanError):
    """Problems of the config against its manifests, each with its path in innerloop.yaml."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = list(problems)


@dataclass(frozen=True, kw_only=True)
class BuiltImageInfo:
    reference: str  # what pods run: a tag, or repo@sha256:... on a registry
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    # A compiled program's (Go's): (local folder, the build's path for it), read from its debug info.
    source_mappings: Sequence[tuple[str, str]] = ()
    debug_problem: str = ""  # why its debugger cannot debug it (a binary stripped of its debug info)
    program_language: str = ""  # "go": its program is a Go binary (read from the image, for ``language: auto``)


@dataclass(frozen=True, kw_only=True)
class ServicePlan:
    name: str
    docs: list[dict[str, Any]]
    workload_kind: str
    workload_name: str
    selector: dict[str, str]
    container: str
    dev_mode: bool
    token_secret: str = ""
    agent_port: int = AGENT_PORT
    ready_wait: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    debug: DebugLaunch | None = None  # the service runs under its debugger


def sync_mappings(service: Service) -> list[tuple[str, str]]:
    """(local folder relative to the project, container folder) per sync rule: the debuggers' path mappings."""
    return [(rule.local.rstrip("/") or ".", rule.remote.rstrip("/") or "/") for rule in service.sync]


def debug_launch(
    name: str, service: Service, command: list[str], files: Sequence[str], image: BuiltImageInfo | None = None
) -> DebugLaunch:
    """A service's debug launch from its config and original command; a :class:`PlanProblems` says what to set.

    ``image``: the built image, whose program's own debug info may say where it was compiled (Go).
    """
    language: str = service.debug.language
    if language == "auto":
        found = (image.program_language if image is not None else "") or detect_language(command, files)
        if found is None:
            raise PlanProblems(
                [
                    Problem(
                        ("services", name, "debug", "language"),
                        f"cannot tell the language of {' '.join(command) or 'its command'} from it or its synced "
                        "files: set debug.language (python, go, node, java)",
                    )
                ]
            )
        language = found
    mappings = sync_mappings(service)
    if language == "go" and image is not None:
        if image.debug_problem:
            raise PlanProblems([Problem(("services", name, "debug"), image.debug_problem)])
        mappings = list(image.source_mappings) or mappings
    try:
        return launch_for(language, command, port=service.debug.port, wait=service.debug.wait, mappings=mappings)
    except DebugError as err:
        raise PlanProblems([Problem(("services", name, "debug"), str(err))]) from None


def start_order(project: Project) -> list[list[str]]:
    """Services in waves: each wave depends only on earlier waves (config validation rules out cycles)."""
    sorter = graphlib.TopologicalSorter({name: set(s.depends_on) for name, s in project.services.items()})
    sorter.prepare()
    waves: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        waves.append(ready)
        sorter.done(*ready)
    return waves


def token_secret_name(project: str, service: str) -> str:
    return f"innerloop-{project}-{service}-agent"


def object_key(doc: Mapping[str, Any]) -> str:
    """``kind/name``: what makes two manifests the same object in one namespace."""
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _workload_key(doc: Mapping[str, Any]) -> str:
    return f"{str(doc['kind']).lower()}/{doc['metadata']['name']}"


def find_workload(docs: Sequence[dict[str, Any]], service_name: str, service: Service) -> dict[str, Any] | Problem:
    """The workload a service develops on, from its own manifests; a :class:`Problem` when there is none."""
    candidates = [d for d in docs if d.get("kind") in WORKLOAD_KINDS]
    if service.workload:
        for d in candidates:
            if _workload_key(d) == service.workload:
                return d
        found = ", ".join(_workload_key(d) for d in candidates) or "none"
        return Problem(
            ("services", service_name, "workload"),
            f"no {service.workload} in this service's manifests (they define: {found})",
        )
    if len(candidates) != 1:
        found = ", ".join(_workload_key(d) for d in candidates) or "none"
        return Problem(
            ("services", service_name, "manifests"),
            f"these manifests have {len(candidates)} Deployments/StatefulSets ({found}); "
            "set `workload:` to the one this service develops on",
        )
    return candidates[0]


def _selects(service_doc: Mapping[str, Any], workload: Mapping[str, Any]) -> bool:
    """A Service object whose selector matches a workload's pod labels belongs with that workload."""
    selector = (service_doc.get("spec") or {}).get("selector") or {}
    labels = ((workload.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def assign_objects(
    project: Project, sources: Mapping[str, Sequence[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """Which service applies each object, when several services' manifests share objects (pure).

    One file for the whole app is the most common layout, so every object is
    applied by exactly one service: a workload by the service that develops
    on it (with its dev-mode patch), a Service object by the service whose
    workload it selects, anything else by the first service to start that
    lists it. Raises :class:`PlanProblems` with every problem (a workload
    claimed twice, a workload no manifest defines, one object defined
    differently by two services) before anything is deployed.
    """
    order = [name for wave in start_order(project) for name in wave]
    problems: list[Problem] = []
    claimed: dict[str, tuple[str, dict[str, Any]]] = {}  # object key -> (service, workload doc)
    for name in project.services:
        found = find_workload(sources[name], name, project.services[name])
        if isinstance(found, Problem):
            problems.append(found)
            continue
        key = object_key(found)
        if key in claimed:
            problems.append(
                Problem(
                    ("services", name, "workload" if project.services[name].workload else "manifests"),
                    f"{_workload_key(found)} is already developed by service {claimed[key][0]!r}; "
                    "a workload belongs to one service (set `workload:` to another one)",
                )
            )
            continue
        claimed[key] = (name, found)
    first: dict[str, tuple[str, dict[str, Any]]] = {}  # object key -> (first service listing it, its definition)
    listers: dict[str, list[str]] = {}  # object key -> services listing it, in start order
    for name in order:
        for doc in sources[name]:
            key = object_key(doc)
            if key not in first:
                first[key] = (name, doc)
            elif first[key][1] != doc and first[key][0] != name:
                problems.append(
                    Problem(
                        ("services", name, "manifests"),
                        f"{key} is also defined by service {first[key][0]!r}, differently; "
                        "one object must have one definition",
                    )
                )
            if name not in listers.setdefault(key, []):
                listers[key].append(name)
    if problems:
        raise PlanProblems(problems)

    def owner(key: str, doc: Mapping[str, Any]) -> str:
        if key in claimed:
            return claimed[key][0]
        names = listers[key]
        if doc.get("kind") == "Service":
            selecting = [s for s, workload in claimed.values() if s in names and _selects(doc, workload)]
            if selecting:
                return selecting[0]
        return names[0]

    out: dict[str, list[dict[str, Any]]] = {name: [] for name in project.services}
    for key, (_, doc) in first.items():
        out[owner(key, doc)].append(doc)
    return out


def _sync_over_mounts(name: str, service: Service, container: Mapping[str, Any]) -> list[Problem]:
    """Sync targets that are a volume the container already mounts: dev mode mounts its own there."""
    mounts = [str(m.get("mountPath", "")).rstrip("/") for m in container.get("volumeMounts") or []]
    problems = []
    for i, rule in enumerate(service.sync):
        target = rule.remote.rstrip("/")
        for mount in mounts:
            if target == mount or target.startswith(mount + "/"):
                problems.append(
                    Problem(
                        ("services", name, "sync", i, "remote"),
                        f"{rule.remote!r} is inside the volume the container mounts at {mount}: "
                        "sync into the image's own files, outside the container's volumes",
                    )
                )
                break
    return problems


def plan_service(
    *,
    project: Project,
    name: str,
    docs: list[dict[str, Any]],
    built: Mapping[str, BuiltImageInfo],
    agent_image: str,
    token: str,
    debugging: Mapping[str, Sequence[str]] | None = None,
) -> ServicePlan:
    """``debugging``: the services to run under their debugger, each with its synced files' relative names
    (for ``language: auto``)."""
    service = project.services[name]
    pin_images(docs, {image_name: info.reference for image_name, info in built.items()})
    workload = find_workload(docs, name, service)
    if isinstance(workload, Problem):
        raise PlanProblems([workload])
    spec = pod_spec(workload)
    assert spec is not None
    container = find_container(spec, service.container)
    mount_problems = _sync_over_mounts(name, service, container)
    if mount_problems:
        raise PlanProblems(mount_problems)
    selector = dict(workload["spec"].get("selector", {}).get("matchLabels") or {})
    if not selector:
        raise PlanError(f"services.{name}: {workload['metadata']['name']} has no selector.matchLabels")
    debug_files = (debugging or {}).get(name)
    dev_mode = bool(service.sync) or debug_files is not None
    out_docs = list(docs)
    secret = ""
    launch: DebugLaunch | None = None
    if dev_mode:
        image = next((info for info in built.values() if info.reference == container.get("image")), None)
        command = original_command(container, image.entrypoint if image else (), image.cmd if image else ())
        if debug_files is not None:
            launch = debug_launch(name, service, command, debug_files, image)
        secret = token_secret_name(project.name, name)
        patched = apply_dev_mode(
            workload,
            DevMode(
                agent_image=agent_image,
                token_secret=secret,
                command=command,
                sync_targets=[rule.remote for rule in service.sync],
                container=container.get("name"),
                agent_port=AGENT_PORT,
                env=dict(service.env),
                debug=None
                if launch is None
                else DebugPatch(
                    command=launch.command if launch.replaces_command else command,
                    env=launch.env,
                    language=launch.language,
                    port=launch.port,
                ),
            ),
        )
        out_docs = [patched if d is workload else d for d in docs]
        out_docs.insert(
            0,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret},
                "type": "Opaque",
                # Only the hash: every holder of the Role reads Secrets (see agent/server.py).
                "stringData": {TOKEN_KEY: token_sha256(token)},
            },
        )
    elif service.env:
        env = [e for e in container.get("env") or [] if e.get("name") not in service.env]
        container["env"] = env + [{"name": k, "value": v} for k, v in service.env.items()]
    return ServicePlan(
        name=name,
        docs=out_docs,
        workload_kind=str(workload["kind"]),
        workload_name=str(workload["metadata"]["name"]),
        selector=selector,
        container=str(container.get("name")),
        dev_mode=dev_mode,
        token_secret=secret,
        ready_wait=service.healthy == "ready",
        debug=launch,
    )
