"""What an intercept adds to the cluster, as plain objects (no I/O).

For a Service ``S`` the first intercept creates, all labelled
``innerloop.dev/intercept-router: S`` so ``innerloop clean`` finds them:

- ``S-il-origin``: a shadow Service with S's original selector and ports:
  where the router sends everything it does not intercept;
- ``S-il-router``: the router's Deployment (agent image, ``route`` command;
  no readiness probe: a probe's first success lands up to a period after
  the start, and the CLI proves the router listens by registering through
  it before the Service is switched),
  restricted Pod Security: non-root, read-only root filesystem, no
  capabilities, no privilege escalation. Ports below 1024 are bound through
  the namespaced, PSS-allowed sysctl ``net.ipv4.ip_unprivileged_port_start``,
  not through NET_BIND_SERVICE;
- a ConfigMap with the router's config and S as it was (for the restore);
- a ServiceAccount, Role and RoleBinding that let the router do exactly two
  things: read and patch S, and delete its own Deployment. That is how it
  cleans up after a crashed CLI.

Everything but the Deployment carries an owner reference to it, so deleting
the Deployment removes the rest. S itself only gets its selector switched
(:mod:`innerloop.router.restore`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROUTER_LABEL = "innerloop.dev/intercept-router"
MANAGED_BY = {"app.kubernetes.io/managed-by": "innerloop"}
CONTROL_PORT = 47601
CONFIG_DIR = "/etc/innerloop-router"
FIRST_FREE_PORT = 20000  # for a named targetPort no pod declares


class InterceptPlanError(ValueError):
    """The Service cannot be intercepted as it is; the message says why."""


def _name(service: str, suffix: str) -> str:
    name = f"{service}-{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(service.encode()).hexdigest()[:8]
    return f"{service[: 63 - len(suffix) - 10]}-{digest}-{suffix}"


def router_name(service: str) -> str:
    return _name(service, "il-router")


def origin_name(service: str) -> str:
    return _name(service, "il-origin")


def router_selector(service: str) -> dict[str, str]:
    return {ROUTER_LABEL: service}


@dataclass(frozen=True, kw_only=True)
class PortPlan:
    port: int  # the Service port
    name: str | None  # the Service port's name
    target: int | str  # the Service's targetPort, as written
    listen: int  # what the router listens on, so that targetPort resolves to it


def plan_ports(service: Mapping[str, Any], pod_ports: Mapping[str, int]) -> list[PortPlan]:
    """The router's listening ports: a numeric targetPort as is; a named one as the pods number it."""
    spec = service.get("spec") or {}
    plans: list[PortPlan] = []
    taken: set[int] = set()
    for item in spec.get("ports") or []:
        if item.get("protocol", "TCP") != "TCP":
            continue  # UDP and SCTP keep going to the pods: the router speaks TCP
        target = item.get("targetPort", item["port"])
        if isinstance(target, int):
            listen = target
        elif target.isdigit():
            listen = int(target)
        else:
            listen = pod_ports.get(target, 0)
            if not listen or listen in taken:
                listen = next(p for p in range(FIRST_FREE_PORT, 65536) if p not in taken)
        if listen in taken:
            continue  # two Service ports on one targetPort: one listener serves both
        taken.add(listen)
        plans.append(PortPlan(port=int(item["port"]), name=item.get("name"), target=target, listen=listen))
    if not plans:
        raise InterceptPlanError(f"service {service['metadata']['name']} has no TCP port to intercept")
    return plans


def check_interceptable(service: Mapping[str, Any]) -> None:
    name = service["metadata"]["name"]
    spec = service.get("spec") or {}
    if not spec.get("selector"):
        raise InterceptPlanError(
            f"service {name} has no selector (its endpoints are managed by hand); only Services that select pods"
            " can be intercepted"
        )
    if spec.get("type") == "ExternalName":
        raise InterceptPlanError(f"service {name} is an ExternalName Service: there is no traffic to intercept")


def _meta(name: str, namespace: str, service: str, owner: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**MANAGED_BY, ROUTER_LABEL: service},
    }
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


def owner_reference(deployment: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["name"],
        "uid": deployment["uid"],
        "blockOwnerDeletion": False,
        "controller": False,
    }


def origin_service(service: Mapping[str, Any], ports: Sequence[PortPlan]) -> dict[str, Any]:
    name = service["metadata"]["name"]
    namespace = service["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(origin_name(name), namespace, name),
        "spec": {
            "selector": dict(service["spec"]["selector"]),
            "ports": [
                {**({"name": p.name} if p.name else {}), "port": p.port, "targetPort": p.target, "protocol": "TCP"}
                for p in ports
            ],
        },
    }


def router_config(
    service: Mapping[str, Any],
    ports: Sequence[PortPlan],
    *,
    origin_ip: str,
    grace: float,
    startup: float = 60.0,
    settle: float = 3.0,
    drain: float = 5.0,
) -> dict[str, Any]:
    name = service["metadata"]["name"]
    return {
        "service": name,
        "namespace": service["metadata"]["namespace"],
        "deployment": router_name(name),
        "routerSelector": router_selector(name),
        "original": dict(service),
        "ports": [{"port": p.port, "listen": p.listen, "originHost": origin_ip, "originPort": p.port} for p in ports],
        "controlPort": CONTROL_PORT,
        "grace": grace,
        "startup": startup,
        "settle": settle,
        "drain": drain,
    }


def rbac_objects(service: str, namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding: patch this one Service, delete this one Deployment."""
    name = router_name(service)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace, service)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(name, namespace, service),
            "rules": [
                {"apiGroups": [""], "resources": ["services"], "resourceNames": [service], "verbs": ["get", "patch"]},
                {
                    "apiGroups": ["apps"],
                    "resources": ["deployments"],
                    "resourceNames": [name],
                    "verbs": ["get", "delete"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(name, namespace, service),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def config_map(service: str, namespace: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(router_name(service), namespace, service),
        "data": {"config.json": json.dumps(config, sort_keys=True)},
    }


def router_deployment(service: str, namespace: str, ports: Sequence[PortPlan], *, image: str) -> dict[str, Any]:
    name = router_name(service)
    labels = {**MANAGED_BY, **router_selector(service)}
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    low = min(p.listen for p in ports)
    if low < 1024:
        pod_security["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": str(low)}]
    container_ports = [
        {
            **({"name": p.target} if isinstance(p.target, str) and not p.target.isdigit() else {}),
            "containerPort": p.listen,
        }
        for p in ports
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, service),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": router_selector(service)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 10,
                    "securityContext": pod_security,
                    "containers": [
                        {
                            "name": "router",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["route", "--config", f"{CONFIG_DIR}/config.json"],
                            "ports": container_ports,
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "resources": {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"memory": "256Mi"}},
                            "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": name}}],
                },
            },
        },
    }
