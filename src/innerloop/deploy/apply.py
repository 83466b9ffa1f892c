"""Apply rendered manifests, remember what they replaced, wait for rollouts.

Objects are applied with server-side apply under the field manager
``innerloop``. Before the first apply of a session, every object that already
exists is saved (as the API returned it, minus server-managed fields) into a
ConfigMap ``innerloop-<project>-restore`` in the namespace, together with the
list of objects innerloop created. ``innerloop down`` deletes what was
created and puts back what was replaced, from that record: it survives a
crashed or SIGKILLed CLI because it lives in the cluster, not in memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from lightkube import ApiError, AsyncClient, codecs
from lightkube.codecs import resource_registry
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.core_v1 import ConfigMap

FIELD_MANAGER = "innerloop"
MANAGED_BY = {"app.kubernetes.io/managed-by": "innerloop"}
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")


class DeployError(RuntimeError):
    """Applying or rolling out failed; the message says what and what to do."""


@dataclass(frozen=True, kw_only=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str

    @classmethod
    def of(cls, doc: dict[str, Any]) -> ObjectRef:
        return cls(api_version=str(doc["apiVersion"]), kind=str(doc["kind"]), name=str(doc["metadata"]["name"]))

    @property
    def key(self) -> str:
        return f"{self.api_version}/{self.kind}/{self.name}"


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


async def _get(client: AsyncClient, ref: ObjectRef, namespace: str) -> dict[str, Any] | None:
    try:
        found = await client.get(_kind_of(ref), ref.name, namespace=namespace)
    except ApiError as err:
        if err.status.code == 404:
            return None
        raise
    return cast(dict[str, Any], found.to_dict())


async def read_record(client: AsyncClient, project: str, namespace: str) -> dict[str, Any]:
    try:
        cm = await client.get(ConfigMap, restore_record_name(project), namespace=namespace)
    except ApiError as err:
        if err.status.code == 404:
            return {"created": [], "replaced": {}}
        raise
    data = cm.data or {}
    return {"created": json.loads(data.get("created", "[]")), "replaced": json.loads(data.get("replaced", "{}"))}


async def write_record(client: AsyncClient, project: str, namespace: str, record: dict[str, Any]) -> None:
    cm = _typed(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": restore_record_name(project), "namespace": namespace, "labels": MANAGED_BY},
            "data": {"created": json.dumps(record["created"]), "replaced": json.dumps(record["replaced"])},
        }
    )
    await client.apply(cm, field_manager=FIELD_MANAGER, force=True)


async def apply_all(client: AsyncClient, *, project: str, namespace: str, docs: Sequence[dict[str, Any]]) -> None:
    """Record what each object replaces (first time only), then server-side apply it."""
    record = await read_record(client, project, namespace)
    known = set(record["created"]) | set(record["replaced"])
    changed = False
    for doc in docs:
        ref = ObjectRef.of(doc)
        if ref.key not in known:
            existing = await _get(client, ref, namespace)
            if existing is None:
                record["created"].append(ref.key)
            else:
                record["replaced"][ref.key] = clean_for_restore(existing)
            changed = True
    if changed:
        await write_record(client, project, namespace, record)
    for doc in docs:
        labelled = dict(doc)
        labels = {**(doc["metadata"].get("labels") or {}), **MANAGED_BY}
        labelled["metadata"] = {**doc["metadata"], "namespace": namespace, "labels": labels}
        try:
            await client.apply(_typed(labelled), field_manager=FIELD_MANAGER, force=True)
        except ApiError as err:
            raise DeployError(f"applying {ObjectRef.of(doc).key} failed: {err.status.message}") from err


async def restore_all(client: AsyncClient, *, project: str, namespace: str) -> list[str]:
    """Delete what innerloop created and put back what it replaced; returns what was done."""
    record = await read_record(client, project, namespace)
    done: list[str] = []
    for key in reversed(record["created"]):
        api_version, kind, name = key.rsplit("/", 2)
        try:
            await client.delete(
                _kind_of(ObjectRef(api_version=api_version, kind=kind, name=name)), name, namespace=namespace
            )
            done.append(f"deleted {kind}/{name}")
        except ApiError as err:
            if err.status.code != 404:
                raise
    for key, original in record["replaced"].items():
        # Take back every field innerloop set, then put the original back as it was.
        original["metadata"]["namespace"] = namespace
        await client.apply(_typed(original), field_manager=FIELD_MANAGER, force=True)
        done.append(f"restored {key.rsplit('/', 2)[1]}/{key.rsplit('/', 1)[1]}")
    try:
        await client.delete(ConfigMap, restore_record_name(project), namespace=namespace)
    except ApiError as err:
        if err.status.code != 404:
            raise
    return done


async def wait_rollout(
    client: AsyncClient,
    *,
    namespace: str,
    kind: str,
    name: str,
    timeout_s: float = 120,
    on_progress: Callable[[str], None] = lambda _m: None,
) -> None:
    """Wait until a Deployment or StatefulSet has all replicas updated and ready."""
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
        await asyncio.sleep(0.25)
