"""The cluster side of an intercept: start or join a Service's router, and remove leftovers.

The first developer to intercept a Service creates its router (the objects
of :mod:`innerloop.intercept.plan`), waits until it is ready and only then
switches the Service's selector to it, so no request meets a router that is
not listening. Later developers find the Service already switched and join.
Creation races (two developers at once) end in a 409 for one of them, who
then joins too.

The router removes itself when its last intercept ends; ``clean`` is the
manual path for anything left after, say, the router pod could not start.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from innerloop.intercept.plan import (
    ROUTER_LABEL,
    check_interceptable,
    config_map,
    origin_name,
    origin_service,
    owner_reference,
    plan_ports,
    rbac_objects,
    router_config,
    router_deployment,
    router_name,
    router_selector,
)
from innerloop.k8s.rest import RawApi, RestError, collection_path, object_path
from innerloop.router.restore import restore_managed_fields, restore_selector, selector_of, swap_selector

FIELD_MANAGER = "innerloop-intercept"
Report = Callable[[str], None]
LEFTOVER_KINDS = ("Service", "ConfigMap", "RoleBinding", "Role", "ServiceAccount")


class InterceptSetupError(RuntimeError):
    """The router could not be started or joined; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class RouterInfo:
    service: str
    namespace: str
    ports: list[int]  # the Service's intercepted ports


async def _pod_ports(api: RawApi, namespace: str, selector: dict[str, str]) -> dict[str, int]:
    """Named container ports of one of the Service's pods (for a named targetPort)."""
    query = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items()), "limit": "1"}
    pods = await api.call("GET", collection_path("Pod", namespace), query=query)
    ports: dict[str, int] = {}
    for pod in pods.get("items") or []:
        for container in pod["spec"].get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name"):
                    ports[port["name"]] = int(port["containerPort"])
    return ports


async def ensure_router(
    api: RawApi,
    *,
    namespace: str,
    service: str,
    image: str,
    grace: float,
    report: Report,
    timeout: float = 60.0,
) -> RouterInfo:
    """The Service's router: joined, or created (its pod may still be starting). The caller registers
    through it while it starts, waits until it is Ready (:func:`wait_router_ready`: a Service sends only
    to Ready pods) and then switches the Service (:func:`switch_service`), so no request meets a router
    not yet listening."""
    deadline = time.monotonic() + timeout
    while True:
        svc = await api.get(object_path("Service", namespace, service))
        if svc is None:
            raise InterceptSetupError(
                f"service {namespace}/{service} not found; `kubectl get svc -n {namespace}` lists them"
            )
        check_interceptable(svc)
        ports = [p.port for p in plan_ports(svc, {})]
        existing = await api.get(object_path("Deployment", namespace, router_name(service)))
        if existing is not None and existing["metadata"].get("deletionTimestamp"):
            # The previous router is going away (its last intercept just ended): wait, then start anew.
            if time.monotonic() > deadline:
                raise InterceptSetupError(f"the previous router of {service} is still being removed; try again")
            await asyncio.sleep(0.3)
            continue
        if existing is None and selector_of(svc) == router_selector(service):
            raise InterceptSetupError(
                f"service {service} points at an intercept router that does not exist:"
                f" run `innerloop clean -n {namespace}`"
            )
        if existing is None:
            try:
                await _create_router(api, svc, image=image, grace=grace)
            except RestError as err:
                if err.status != 409:
                    raise
                report(f"{service}: another developer is starting its router; joining")
            else:
                report(f"{service}: router created")
                return RouterInfo(service=service, namespace=namespace, ports=ports)
        return RouterInfo(service=service, namespace=namespace, ports=ports)


async def switch_service(api: RawApi, *, namespace: str, service: str) -> None:
    """Point the Service at its router (once a registration proved the router listens); idempotent."""
    svc = await api.get(object_path("Service", namespace, service))
    if svc is None:
        raise InterceptSetupError(f"service {namespace}/{service} was deleted")
    if selector_of(svc) != router_selector(service):
        await _switch_service(api, svc)


async def _create_router(api: RawApi, svc: dict[str, Any], *, image: str, grace: float) -> None:
    namespace = svc["metadata"]["namespace"]
    name = svc["metadata"]["name"]
    ports = plan_ports(svc, await _pod_ports(api, namespace, selector_of(svc)))
    origin = await api.create(
        collection_path("Service", namespace), origin_service(svc, ports), field_manager=FIELD_MANAGER
    )
    dependents: list[tuple[str, dict[str, Any]]] = [("Service", origin)]
    config = router_config(svc, ports, origin_ip=origin["spec"]["clusterIP"], grace=grace)
    for obj in [*rbac_objects(name, namespace), config_map(name, namespace, config)]:
        dependents.append(
            (obj["kind"], await api.create(collection_path(obj["kind"], namespace), obj, field_manager=FIELD_MANAGER))
        )
    deployment = await api.create(
        collection_path("Deployment", namespace),
        router_deployment(name, namespace, ports, image=image),
        field_manager=FIELD_MANAGER,
    )
    # Owned by the Deployment: deleting it (the router does, when it is done) removes them all.
    owner = owner_reference({"name": deployment["metadata"]["name"], "uid": deployment["metadata"]["uid"]})
    await asyncio.gather(
        *(
            api.merge_patch(
                object_path(kind, namespace, obj["metadata"]["name"]),
                {"metadata": {"ownerReferences": [owner]}},
                field_manager=FIELD_MANAGER,
            )
            for kind, obj in dependents
        )
    )


async def wait_router_ready(api: RawApi, *, namespace: str, service: str, deadline: float) -> str:
    """The name of the router's ready pod; explains a pod that cannot start."""
    query = {"labelSelector": f"{ROUTER_LABEL}={service}"}
    last = "no pod yet"
    while time.monotonic() < deadline:
        pods = await api.call("GET", collection_path("Pod", namespace), query=query)
        for pod in pods.get("items") or []:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
            if conditions.get("Ready") == "True":
                return str(pod["metadata"]["name"])
            for status in pod.get("status", {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in (
                    "ErrImagePull",
                    "ImagePullBackOff",
                    "CrashLoopBackOff",
                    "CreateContainerConfigError",
                ):
                    raise InterceptSetupError(
                        f"the intercept router of {service} cannot start:"
                        f" {waiting['reason']}: {waiting.get('message', '')}"
                    )
            last = pod.get("status", {}).get("phase", "Pending")
        await asyncio.sleep(0.05)
    events = await _deployment_problem(api, namespace, service)
    raise InterceptSetupError(f"the intercept router of {service} did not become ready ({last}){events}")


async def _deployment_problem(api: RawApi, namespace: str, service: str) -> str:
    rs_query = {"fieldSelector": "involvedObject.kind=ReplicaSet"}
    try:
        events = await api.call("GET", f"/api/v1/namespaces/{namespace}/events", query=rs_query)
    except RestError:
        return ""
    messages = [
        e.get("message", "")
        for e in events.get("items") or []
        if router_name(service) in e.get("involvedObject", {}).get("name", "") and e.get("type") == "Warning"
    ]
    return f": {messages[-1]}" if messages else ""


async def _switch_service(api: RawApi, svc: dict[str, Any]) -> None:
    namespace = svc["metadata"]["namespace"]
    name = svc["metadata"]["name"]
    try:
        await api.json_patch(
            object_path("Service", namespace, name),
            swap_selector(selector_of(svc), router_selector(name)),
            field_manager=FIELD_MANAGER,
        )
    except RestError as err:
        if err.status != 422:  # a failed `test`: someone else switched it meanwhile
            raise
        now = await api.get(object_path("Service", namespace, name))
        if now is None or selector_of(now) != router_selector(name):
            raise InterceptSetupError(f"service {name} changed while the intercept started; try again") from err


async def restore_service(api: RawApi, *, namespace: str, service: str) -> bool:
    """Point ``service`` back at its pods from its router's record. True when it changed it."""
    record = await api.get(object_path("ConfigMap", namespace, router_name(service)))
    svc = await api.get(object_path("Service", namespace, service))
    if svc is None or selector_of(svc) != router_selector(service):
        return False
    if record is None:
        raise InterceptSetupError(
            f"service {service} points at an intercept router but its record (configmap {router_name(service)}) is"
            " gone: set its selector back by hand (`kubectl edit svc`)"
        )
    original = json.loads(record["data"]["config.json"])["original"]
    after = await api.json_patch(
        object_path("Service", namespace, service),
        restore_selector(router_selector(service), selector_of(original)),
        field_manager=FIELD_MANAGER,
    )
    patch = restore_managed_fields(original, after)
    if patch is not None:
        await api.json_patch(object_path("Service", namespace, service), patch, field_manager=FIELD_MANAGER)
    return True


async def clean(api: RawApi, *, namespace: str, report: Report) -> list[str]:
    """End every intercept in ``namespace`` now: restore the Services, delete the routers and their objects."""
    query = {"labelSelector": ROUTER_LABEL}
    services: set[str] = set()
    for kind in ("Deployment", *LEFTOVER_KINDS):
        listing = await api.call("GET", collection_path(kind, namespace), query=query)
        services.update(item["metadata"]["labels"][ROUTER_LABEL] for item in listing.get("items") or [])
    removed: list[str] = []
    for service in sorted(services):
        if await restore_service(api, namespace=namespace, service=service):
            report(f"{service}: selector restored")
        for kind in ("Deployment", *LEFTOVER_KINDS):
            name = origin_name(service) if kind == "Service" else router_name(service)
            if await api.delete(object_path(kind, namespace, name)):
                removed.append(f"{kind.lower()}/{name}")
    return removed
