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

The files live only as long as the command (:func:`materialized`): in
``.innerloop/run/<pod>.<pid>/`` (``config/state.py``: 0700, git-ignored, never
through a symlink), every path checked to stay inside it
(``connect/context.py`` ``mount_folder``/``file_name``), deleted when the
command ends, on Ctrl+C and on an error too. A run that could not clean up
(SIGKILL, the stop deadline's ``os._exit``) leaves its folder behind; the next
``run`` or ``intercept -- CMD`` in the project deletes every folder whose
process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret, Service

from innerloop.config.state import state_dir
from innerloop.connect.context import (
    CommandEnvironment,
    RemoteContext,
    command_environment,
    container_context,
    file_name,
    mount_folder,
)
from innerloop.deploy.devmode import app_pod
from innerloop.k8s.connection import ClusterConnection

OWNER_FILE = ".owner"  # "<pid> <start time>" of the run that owns the folder
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


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


@dataclass(frozen=True)
class Materialized:
    root: Path  # this run's folder: .innerloop/run/<pod>.<pid>
    mounts: dict[str, str]  # container mount path -> local folder

    def remove(self) -> None:
        """Delete the files now (for a hard exit, which skips the ``with`` block's end)."""
        _remove(self.root)


@contextmanager
def materialized(context: RemoteContext, project: Path, pod: str) -> Iterator[Materialized]:
    """The pod's mounted files under ``project/.innerloop/run/<pod>.<pid>/`` for as long as the block runs.

    Deleted when the block ends, however it ends (an error, a cancellation
    by Ctrl+C); folders that killed runs left behind are deleted first.
    """
    if not re.fullmatch(DNS_SUBDOMAIN, pod):
        raise RunError(f"the pod's name {pod!r} is not a Kubernetes name; refusing to use it as a folder name")
    runs = state_dir(project, "run")
    remove_stale(runs)
    root = runs / f"{pod}.{os.getpid()}"
    _remove(root)
    os.mkdir(root, 0o700)
    try:
        (root / OWNER_FILE).write_text(_owner(os.getpid()) or "")  # first: a concurrent run must not take it as stale
        yield Materialized(root=root, mounts=_write_files(context, root))
    finally:
        _remove(root)


def materialize(context: RemoteContext, root: Path) -> dict[str, str]:
    """Write the mounted files below ``root`` (emptied first): files 0600, folders 0700.

    Paths were checked by ``container_context`` (``mount_folder``,
    ``file_name``) and are checked again here; nothing is written through a
    symlink (``O_NOFOLLOW``, fresh folders). Returns mount path -> local folder.
    :func:`materialized` is the way to call it: it also deletes the files.
    """
    _remove(root)
    root.mkdir(parents=True, mode=0o700)
    return _write_files(context, root)


def _write_files(context: RemoteContext, root: Path) -> dict[str, str]:
    mounts: dict[str, str] = {}
    for mount_path, files in context.files.items():
        folder = mount_folder(mount_path) if mount_path != "/" else "/"
        local = root.joinpath(*folder.strip("/").split("/")) if folder != "/" else root
        try:
            _folders(root, local)
            for rel, data in files.items():
                target = local.joinpath(*file_name(rel, mount=mount_path).split("/"))
                _folders(root, target.parent)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        except OSError as err:
            raise RunError(f"cannot write the files of the volume at {mount_path}: {err}") from None
        mounts[mount_path] = str(local)
    return mounts


def remove_stale(runs: Path) -> list[str]:
    """Delete the folders under ``.innerloop/run/`` whose run is gone (a SIGKILL, an os._exit); their names."""
    removed = []
    for entry in sorted(os.listdir(runs)):
        path = runs / entry
        try:
            owner = (path / OWNER_FILE).read_text() if path.is_dir() and not path.is_symlink() else ""
        except OSError:
            owner = ""
        pid = owner.split(" ", 1)[0]
        if pid.isdigit() and owner == _owner(int(pid)):
            continue  # that run still runs
        _remove(path)
        removed.append(entry)
    return removed


def _owner(pid: int) -> str | None:
    """``"<pid> <start time>"`` of a live process (a reused pid has another start time), or None."""
    try:
        return f"{pid} {psutil.Process(pid).create_time()!r}"
    except psutil.Error:
        return None


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)  # rmtree does not follow symlinks inside


def _folders(root: Path, folder: Path) -> None:
    """Create ``folder`` (below ``root``) and its parents, 0700, refusing any that is not a real folder."""
    current = root
    for part in folder.relative_to(root).parts:
        current /= part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current, 0o700)
        if current.is_symlink() or not current.is_dir():
            raise RunError(f"{current} is not a folder innerloop made; refusing to write below it")


def command_env(
    context: RemoteContext, mounts: dict[str, str], root: Path, *, explicit: dict[str, str] | None = None
) -> CommandEnvironment:
    """The local command's environment (``withheld``: the pod variables it does not get, to say so)."""
    decided = command_environment(os.environ, context.env, explicit)
    decided.env["INNERLOOP_MOUNTS"] = json.dumps(mounts)
    decided.env["INNERLOOP_ROOT"] = str(root)
    return decided
