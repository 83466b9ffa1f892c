"""What `innerloop up` deploys, in which order, and how each service is patched (pure).

Given the parsed config, the manifests' text and what the builder produced,
this module decides everything that does not need the cluster: the start
order from ``dependsOn``, the objects of each service with built images
pinned, the workload innerloop develops on, and its dev-mode patch (for
services that sync). The engine only executes the result.
"""

from __future__ import annotations

import graphlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from innerloop.config import Project, Service
from innerloop.deploy.devmode import DevMode, apply_dev_mode, find_container, original_command
from innerloop.deploy.render import pin_images, pod_spec

WORKLOAD_KINDS = ("Deployment", "StatefulSet")
AGENT_PORT = 47600


class PlanError(ValueError):
    """The config and the manifests do not fit together; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True)
class BuiltImageInfo:
    tag: str
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()


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


def _workload(docs: Sequence[dict[str, Any]], service_name: str, service: Service) -> dict[str, Any]:
    candidates = [d for d in docs if d.get("kind") in WORKLOAD_KINDS]
    if service.workload:
        kind, _, name = service.workload.partition("/")
        for d in candidates:
            if str(d["kind"]).lower() == kind.lower() and d["metadata"]["name"] == name:
                return d
        raise PlanError(f"services.{service_name}.workload: no {service.workload} in its manifests")
    if len(candidates) != 1:
        found = ", ".join(f"{d['kind'].lower()}/{d['metadata']['name']}" for d in candidates) or "none"
        raise PlanError(
            f"services.{service_name}: its manifests have {len(candidates)} Deployments/StatefulSets ({found}); "
            "set `workload:` to the one to develop on"
        )
    return candidates[0]


def plan_service(
    *,
    project: Project,
    name: str,
    docs: list[dict[str, Any]],
    built: Mapping[str, BuiltImageInfo],
    agent_image: str,
    token: str,
) -> ServicePlan:
    service = project.services[name]
    pin_images(docs, {image_name: info.tag for image_name, info in built.items()})
    workload = _workload(docs, name, service)
    spec = pod_spec(workload)
    assert spec is not None
    container = find_container(spec, service.container)
    selector = dict(workload["spec"].get("selector", {}).get("matchLabels") or {})
    if not selector:
        raise PlanError(f"services.{name}: {workload['metadata']['name']} has no selector.matchLabels")
    dev_mode = bool(service.sync)
    out_docs = list(docs)
    secret = ""
    if dev_mode:
        image = next((info for info in built.values() if info.tag == container.get("image")), None)
        command = original_command(container, image.entrypoint if image else (), image.cmd if image else ())
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
                "stringData": {"token": token},
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
    )
