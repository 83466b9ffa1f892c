"""``innerloop run``: a local command with a pod's environment, ConfigMaps and Secrets.

Reads the pod and what it references (needs ``get`` on pods, configmaps,
secrets and ``list`` on services: the Role in docs/RBAC.md), writes the
mounted files under a private local directory (mode 0700, secrets 0600), and
runs the command with this machine's environment, the container's variables
added by the rules of :func:`innerloop.connect.context.command_environment`,
plus ``INNERLOOP_MOUNTS`` (JSON: container mount path -> local directory) and
``INNERLOOP_ROOT``. A pod in dev mode (``innerloop up``) lends the app's
context, not the agent's (:func:`innerloop.deploy.devmode.app_pod`). Nothing
is created or changed in the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret, Service

from innerloop.connect.context import CommandEnvironment, RemoteContext, command_environment, container_context
from innerloop.deploy.devmode import app_pod
from innerloop.k8s.connection import ClusterConnection


class RunError(RuntimeError):
    """The pod to borrow a context from cannot be found; the message says what to do."""


async def _pod(client: AsyncClient, namespace: str, pod: str | None, selector: dict[str, str] | None) -> Any:  # noqa: ANN401
    if pod:
        try:
            return await client.get(Pod, pod, namespace=namespace)
        except ApiError as err:
            if err.status.code == 404:
                raise RunError(f"no pod {pod} in namespace {namespace}") from err
            raise
    labels: dict[str, Any] = dict(selector or {})
    pods = [p async for p in client.list(Pod, namespace=namespace, labels=labels)]
    running = [
        p for p in pods if p.status and p.status.phase == "Running" and p.metadata and not p.metadata.deletionTimestamp
    ]
    if not running:
        shown = ",".join(f"{k}={v}" for k, v in (selector or {}).items())
        raise RunError(f"no running pod matches {shown} in namespace {namespace}")
    return max(running, key=lambda p: str(p.metadata.creationTimestamp if p.metadata else ""))


async def fetch_context(
    conn: ClusterConnection,
    *,
    namespace: str,
    pod: str | None = None,
    selector: dict[str, str] | None = None,
    container: str | None = None,
) -> tuple[str, RemoteContext]:
    client = conn.client()
    try:
        found = await _pod(client, namespace, pod, selector)
        doc: dict[str, Any] = app_pod(found.to_dict())  # the app's context, never the dev-mode agent's
        names = {kind: _referenced(doc.get("spec", {}), kind) for kind in ("configMap", "secret")}
        configmaps: dict[str, Any] = {}
        secrets: dict[str, Any] = {}
        for name in names["configMap"]:
            try:
                configmaps[name] = (await client.get(ConfigMap, name, namespace=namespace)).to_dict()
            except ApiError as err:
                if err.status.code != 404:
                    raise
        for name in names["secret"]:
            try:
                secrets[name] = (await client.get(Secret, name, namespace=namespace)).to_dict()
            except ApiError as err:
                if err.status.code != 404:
                    raise
        services = [s.to_dict() async for s in client.list(Service, namespace=namespace)]
    finally:
        await client.close()
    context = container_context(doc, container, configmaps=configmaps, secrets=secrets, services=services)
    return str(doc["metadata"]["name"]), context


def _referenced(node: Any, kind: str) -> set[str]:  # noqa: ANN401 - walks a pod spec
    """Names of every ConfigMap (``kind="configMap"``) or Secret the spec refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict):
                if key in (f"{kind}Ref", f"{kind}KeyRef") and "name" in value:
                    found.add(str(value["name"]))
                if key == kind:
                    name = value.get("secretName") if kind == "secret" else value.get("name")
                    if name:
                        found.add(str(name))
            found |= _referenced(value, kind)
    elif isinstance(node, list):
        for item in node:
            found |= _referenced(item, kind)
    return found


def materialize(context: RemoteContext, root: Path) -> dict[str, str]:
    """Write the mounted files under ``root`` (replaced each run); returns mount path -> local directory."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, mode=0o700)
    mounts: dict[str, str] = {}
    for mount_path, files in context.files.items():
        local = root / mount_path.lstrip("/")
        local.mkdir(parents=True, exist_ok=True, mode=0o700)
        for rel, data in files.items():
            target = local / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        mounts[mount_path] = str(local)
    return mounts


def command_env(
    context: RemoteContext, mounts: dict[str, str], root: Path, *, explicit: dict[str, str] | None = None
) -> CommandEnvironment:
    """The local command's environment (``withheld``: the pod variables it does not get, to say so)."""
    decided = command_environment(os.environ, context.env, explicit)
    decided.env["INNERLOOP_MOUNTS"] = json.dumps(mounts)
    decided.env["INNERLOOP_ROOT"] = str(root)
    return decided
