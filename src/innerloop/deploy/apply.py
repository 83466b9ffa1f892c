"""Apply rendered manifests, remember what they replaced, wait for rollouts.

Objects are applied with server-side apply under the field manager
``innerloop``. Before the first apply of a session, every object that already
exists is saved (as the API returned it, minus server-managed fields) into a
Secret ``innerloop-<project>-restore`` in the namespace, together with the
list of objects innerloop created. ``innerloop down`` deletes what was
created and puts back what was replaced, from that record: it survives a
crashed or SIGKILLed CLI because it lives in the cluster, not in memory.

The record is a Secret, not a ConfigMap, because a replaced Secret's original
data is in it: the Role innerloop needs reads Secrets anyway, but the many
who may read a namespace's ConfigMaps (the built-in ``view`` role, dashboards,
audit logs that keep ConfigMap bodies) must not get them that way. Each `up`
also keeps a copy of the entries it wrote on this machine
(``.innerloop/restore/<record id>.json``, mode 0600, through
:func:`innerloop.config.state.state_dir`: never a symlink), and `down` trusts the
cluster's copy only as far as :mod:`innerloop.deploy.record` says.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from lightkube import ApiError, AsyncClient, LoadResourceError, codecs
from lightkube.codecs import resource_registry
from lightkube.core.resource import NamespacedResource
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Secret

from innerloop.config.state import state_dir
from innerloop.deploy.record import RECORD_ID, ObjectRef, Record, decode, plan_down

__all__ = ["DeployError", "ObjectRef", "apply_all", "restore_all", "wait_rollout"]

FIELD_MANAGER = "innerloop"
MANAGED_BY = {"app.kubernetes.io/managed-by": "innerloop"}
PROJECT_LABEL = "innerloop.dev/project"
LOCAL_RECORDS = "restore"  # .innerloop/restore/<record id>.json
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")


class DeployError(RuntimeError):
    """Applying or rolling out failed; the message says what and what to do."""


def restore_record_name(project: str) -> str:
    return f"innerloop-{project}-restore"


def clean_for_restore(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as read from the API, without fields the server owns (pure)."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in _SERVER_FIELDS}
    out = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    out["metadata"] = meta
    return out


def _typed(doc: dict[str, Any]) -> Any:  # noqa: ANN401 - lightkube's overloads cannot type a manifest read at run time
    return codecs.from_dict(doc)


def _kind_of(ref: ObjectRef) -> Any:  # noqa: ANN401
    return resource_registry.load(ref.api_version, ref.kind)


def namespaced(ref: ObjectRef) -> bool:
    """Whether a kind lives in a namespace; a kind lightkube does not know (a CRD's) counts as not."""
    try:
        return issubclass(_kind_of(ref), NamespacedResource)
    except LoadResourceError:
        return False


def project_keys(docs: Sequence[dict[str, Any]]) -> frozenset[str]:
    """The record keys of what `up` applies for these rendered objects: the objects `down` may touch."""
    return frozenset(ObjectRef.of(doc).key for doc in docs)


async def _get(client: AsyncClient, ref: ObjectRef, namespace: str) -> dict[str, Any] | None:
    try:
        found = await client.get(_kind_of(ref), ref.name, namespace=namespace)
    except ApiError as err:
        if err.status.code == 404:
            return None
        raise
    return cast(dict[str, Any], found.to_dict())


async def _delete(client: AsyncClient, kind: Any, name: str, namespace: str) -> bool:  # noqa: ANN401
    """Delete one object; False when it was not there."""
    try:
        await client.delete(kind, name, namespace=namespace)
    except ApiError as err:
        if err.status.code != 404:
            raise
        return False
    return True


# -- the record in the cluster --------------------------------------------------


async def read_record(client: AsyncClient, project: str, namespace: str) -> tuple[Record, list[str]]:
    """The cluster's record (and what of it could not be read), from its Secret.

    A record an older innerloop wrote as a ConfigMap is read too: it has no
    id, so nothing in it counts as written by this machine.
    """
    name = restore_record_name(project)
    where = f"secret/{name}"
    record, problems = Record(namespace=namespace), []
    try:
        secret = await client.get(Secret, name, namespace=namespace)
    except ApiError as err:
        if err.status.code != 404:
            raise
    else:
        data: dict[str, str] = {}
        for field, value in (secret.data or {}).items():
            try:
                data[field] = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                problems.append(f"{where}: `{field}` is not base64 UTF-8; ignored")
        record, problems = decode(data, where=where)
        problems = [*problems]
        if not RECORD_ID.fullmatch(record.id):
            if record.id:
                problems.append(f"{where}: its id is not one innerloop writes; nothing in it counts as this machine's")
            record.id = ""
    try:
        cm = await client.get(ConfigMap, name, namespace=namespace)
    except ApiError as err:
        if err.status.code != 404:
            raise
        return record, problems
    legacy, legacy_problems = decode(cm.data or {}, where=f"configmap/{name}")
    record.created += [k for k in legacy.created if k not in record.created]
    record.replaced = {**legacy.replaced, **record.replaced}
    return record, problems + legacy_problems


async def write_record(client: AsyncClient, project: str, namespace: str, record: Record) -> None:
    name = restore_record_name(project)
    data = {k: base64.b64encode(v.encode()).decode() for k, v in record.to_data().items()}
    secret = _typed(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {**MANAGED_BY, PROJECT_LABEL: project},
            },
            "type": "Opaque",
            "data": data,
        }
    )
    await client.apply(secret, field_manager=FIELD_MANAGER, force=True)
    await _delete(client, ConfigMap, name, namespace)  # an older innerloop's record, now in the Secret


async def delete_record(client: AsyncClient, project: str, namespace: str) -> None:
    name = restore_record_name(project)
    await _delete(client, Secret, name, namespace)
    await _delete(client, ConfigMap, name, namespace)


# -- this machine's copy ----------------------------------------------------------


def local_record_path(project_dir: Path, record_id: str) -> Path:
    """Where this machine keeps its copy of the record ``record_id`` (the folder made safe first)."""
    assert RECORD_ID.fullmatch(record_id), record_id  # the cluster's id is checked before it names a file
    return state_dir(project_dir, LOCAL_RECORDS) / f"{record_id}.json"


def read_local(project_dir: Path, record_id: str) -> tuple[Record | None, list[str]]:
    """This machine's copy of the entries its `up` wrote into the record ``record_id``, if any."""
    if not RECORD_ID.fullmatch(record_id):
        return None, []
    path = local_record_path(project_dir, record_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, []
    except OSError as err:  # ELOOP: a symlink, which innerloop never writes
        return None, [f"{path}: {err.strerror}; ignored (nothing in the record counts as this machine's)"]
    with os.fdopen(fd, encoding="utf-8") as file:
        text = file.read()
    try:
        raw = json.loads(text)
    except ValueError:
        return None, [f"{path}: not JSON; ignored (nothing in the record counts as this machine's)"]
    if not isinstance(raw, dict):
        return None, [f"{path}: not a record; ignored"]
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    return decode(fields, where=str(path))


def write_local(project_dir: Path, record: Record) -> None:
    """Save this machine's copy: owner-only (it may hold a replaced Secret's data), never half written."""
    path = local_record_path(project_dir, record.id)
    partial = path.with_name(f".{path.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(record.to_json())
    partial.replace(path)


def forget_handled(project_dir: Path, mine: Record, keep: Record) -> None:
    """This machine's copy keeps only what the cluster's record still keeps (nothing: no file)."""
    left = Record(
        id=mine.id,
        namespace=mine.namespace,
        created=[k for k in mine.created if k in keep.listed()],
        replaced={k: v for k, v in mine.replaced.items() if k in keep.listed()},
    )
    if left.empty():
        with contextlib.suppress(FileNotFoundError):
            local_record_path(project_dir, mine.id).unlink()
    else:
        write_local(project_dir, left)


# -- up and down ------------------------------------------------------------------


async def apply_all(
    client: AsyncClient, *, project: str, namespace: str, docs: Sequence[dict[str, Any]], project_dir: Path
) -> None:
    """Record what each object replaces (first time only, here and on this machine), then server-side apply it."""
    record, _ = await read_record(client, project, namespace)  # what cannot be read is `down`'s to say
    if not record.id:
        record.id = secrets.token_hex(16)  # a new record (or an older innerloop's, now rewritten)
    mine, _ = read_local(project_dir, record.id)
    if mine is None or mine.namespace != namespace:
        mine = Record(id=record.id, namespace=namespace)
    known = record.listed()
    changed = False
    for doc in docs:
        ref = ObjectRef.of(doc)
        if ref.key not in known:
            existing = await _get(client, ref, namespace)
            if existing is None:
                record.created.append(ref.key)
                mine.created.append(ref.key)
            else:
                record.replaced[ref.key] = mine.replaced[ref.key] = clean_for_restore(existing)
            known.add(ref.key)
            changed = True
    if changed:
        write_local(project_dir, mine)  # first: a copy the cluster lacks is harmless, the reverse is not
        await write_record(client, project, namespace, record)
    for doc in docs:
        labelled = dict(doc)
        labels = {**(doc["metadata"].get("labels") or {}), **MANAGED_BY}
        labelled["metadata"] = {**doc["metadata"], "namespace": namespace, "labels": labels}
        try:
            await client.apply(_typed(labelled), field_manager=FIELD_MANAGER, force=True)
        except ApiError as err:
            raise DeployError(f"applying {ObjectRef.of(doc).key} failed: {err.status.message}") from err


@dataclass(frozen=True, kw_only=True)
class DownResult:
    done: list[str]  # deleted X, restored Y
    notes: list[str]  # worth saying, nothing refused
    refused: list[str]  # one line per record entry `down` did nothing for


async def restore_all(
    client: AsyncClient,
    *,
    project: str,
    namespace: str,
    defined: frozenset[str],
    project_dir: Path,
    trust_cluster: bool = False,
) -> DownResult:
    """Delete what innerloop created and put back what it replaced, as far as the record can be trusted.

    ``defined`` are the keys of what `up` applies for this project's config
    (:func:`project_keys`): every other entry is refused. What could not be
    read of either record counts as refused too.
    """
    record, problems = await read_record(client, project, namespace)
    mine, local_problems = read_local(project_dir, record.id)
    name = restore_record_name(project)
    plan = plan_down(
        cluster=record,
        mine=mine,
        defined=defined,
        namespaced=namespaced,
        namespace=namespace,
        trust_cluster=trust_cluster,
        how_to_check=f" (`kubectl -n {namespace} get secret {name} -o jsonpath='{{.data.replaced}}' | base64 -d`)",
    )
    done: list[str] = []
    for ref in plan.delete:
        if await _delete(client, _kind_of(ref), ref.name, namespace):
            done.append(f"deleted {ref.shown}")
    for ref, original in plan.restore:
        # Take back every field innerloop set, then put the original back as it was: in this namespace,
        # under the kind and name of its key (plan_down refused any body naming something else).
        body = {**original, "metadata": {**original["metadata"], "namespace": namespace}}
        await client.apply(_typed(body), field_manager=FIELD_MANAGER, force=True)
        done.append(f"restored {ref.shown}")
    if plan.keep.empty():
        await delete_record(client, project, namespace)
    else:
        await write_record(client, project, namespace, plan.keep)
    if mine is not None and mine.namespace == namespace:
        forget_handled(project_dir, mine, plan.keep)
    return DownResult(done=done, notes=plan.notes, refused=problems + local_problems + plan.refused)


async def wait_rollout(
    client: AsyncClient,
    *,
    namespace: str,
    kind: str,
    name: str,
    timeout_s: float = 120,
    on_progress: Callable[[str], None] = lambda _m: None,
    poll_s: float = 0.25,
) -> None:
    """Wait until a Deployment or StatefulSet has all replicas updated and ready (asked every ``poll_s``)."""
    res: type[Deployment] | type[StatefulSet] = Deployment if kind == "Deployment" else StatefulSet
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        obj = await client.get(res, name, namespace=namespace)
        spec_replicas = obj.spec.replicas if obj.spec and obj.spec.replicas is not None else 1
        st = obj.status
        generation = (obj.metadata.generation if obj.metadata else None) or 0
        gen_ok = st is not None and (st.observedGeneration or 0) >= generation
        updated = (st.updatedReplicas or 0) if st else 0
        ready = (st.readyReplicas or 0) if st else 0
        total = (st.replicas or 0) if st else 0
        if gen_ok and updated == spec_replicas and ready == spec_replicas and total == spec_replicas:
            return
        progress = f"{kind.lower()}/{name}: {ready}/{spec_replicas} ready, {updated} updated"
        if progress != last:
            on_progress(progress)
            last = progress
        if time.monotonic() > deadline:
            raise DeployError(
                f"{kind.lower()}/{name} not ready after {timeout_s:.0f}s ({progress}); "
                f"see `kubectl -n {namespace} describe {kind.lower()}/{name}` and its pods' events"
            )
        await asyncio.sleep(poll_s)
