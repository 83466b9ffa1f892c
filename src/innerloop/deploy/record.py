"""The restore record: what `up` created or replaced, and what `down` may do with it (pure).

The record lives in the cluster so that `down` works after a SIGKILLed `up`
or from another terminal; but anyone holding the namespace's Role can rewrite
it, and `down` runs with the caller's credentials, which may reach far more
than the namespace. So `down` acts on an entry only when three things hold:

- the entry names a namespaced object, and `down` acts on it in the project's
  namespace under exactly the kind and name its key says (a body that names
  another kind, name or namespace is refused);
- the object is one of this project's: defined by innerloop.yaml and its
  manifests, as `up` would apply them now (this machine's copy is no proof
  of that: a file in the project folder may come with a clone or a pull);
- a replaced object's original body is one this machine's `up` wrote (its
  copy under ``.innerloop/restore/``, compared here), unless the user says
  ``--trust-cluster-record`` (a teammate's `up` replaced it, and they checked).

Deleting an object the project defines needs no proof of who recorded it:
that is what `down` is for, on a namespace two developers share.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

CREATED = None  # a `created` entry: `down` deletes the object; a replaced one carries the original body

RECORD_ID = re.compile(r"[0-9a-f]{16,64}")  # also a file name on this machine: nothing else passes
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")  # a DNS subdomain, what Kubernetes names objects
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_API_VERSION = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+((alpha|beta)[0-9]+)?")


@dataclass(frozen=True, kw_only=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> ObjectRef:
        return cls(api_version=str(doc["apiVersion"]), kind=str(doc["kind"]), name=str(doc["metadata"]["name"]))

    @classmethod
    def parse(cls, key: object) -> ObjectRef | None:
        """A record key ``apiVersion/kind/name`` (``apps/v1/Deployment/web``), or None when it is not one."""
        if not isinstance(key, str) or key.count("/") not in (2, 3):
            return None
        api_version, kind, name = key.rsplit("/", 2)
        if not (_API_VERSION.fullmatch(api_version) and _KIND.fullmatch(kind) and _NAME.fullmatch(name)):
            return None
        return cls(api_version=api_version, kind=kind, name=name)

    @property
    def key(self) -> str:
        return f"{self.api_version}/{self.kind}/{self.name}"

    @property
    def shown(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(kw_only=True)
class Record:
    """Entries in the order `up` recorded them: created keys, and replaced keys with the original bodies.

    ``id`` names one record's life, from the first `up` that writes it to the
    `down` that removes it; this machine's copy carries it, so a copy from an
    older record (or another cluster) is never compared with a newer one.
    """

    id: str = ""
    namespace: str = ""
    created: list[str] = field(default_factory=list)
    replaced: dict[str, dict[str, Any]] = field(default_factory=dict)

    def listed(self) -> set[str]:
        return set(self.created) | set(self.replaced)

    def entry(self, key: str) -> dict[str, Any] | None:
        return self.replaced.get(key, CREATED)

    def empty(self) -> bool:
        return not self.created and not self.replaced

    def to_data(self) -> dict[str, str]:
        """The record as the cluster keeps it (a Secret's keys)."""
        return {"id": self.id, "created": json.dumps(self.created), "replaced": json.dumps(self.replaced)}

    def to_json(self) -> str:
        """This machine's copy."""
        return json.dumps(
            {"id": self.id, "namespace": self.namespace, "created": self.created, "replaced": self.replaced}
        )


def decode(data: Mapping[str, str], *, where: str) -> tuple[Record, list[str]]:
    """A record from its fields as stored (JSON text each); what could not be read, one line each.

    The cluster's copy is input from anyone with the Role: a malformed field
    or entry is left out and said, never a traceback.
    """
    problems: list[str] = []
    record = Record(id=str(data.get("id") or ""), namespace=str(data.get("namespace") or ""))

    def field_of(name: str, default: str, kind: type) -> Any:  # noqa: ANN401 - JSON of any shape, checked below
        try:
            value = json.loads(data.get(name) or default)
        except ValueError:
            problems.append(f"{where}: `{name}` is not JSON; ignored")
            return kind()
        if not isinstance(value, kind):
            problems.append(f"{where}: `{name}` is not a JSON {kind.__name__}; ignored")
            return kind()
        return value

    for key in field_of("created", "[]", list):
        if isinstance(key, str) and key not in record.created:
            record.created.append(key)
        elif not isinstance(key, str):
            problems.append(f"{where}: a created entry is not a name ({json.dumps(key)[:80]}); ignored")
    for key, body in field_of("replaced", "{}", dict).items():
        if isinstance(body, dict):
            record.replaced[key] = body
        else:
            problems.append(f"{where}: the replaced entry {key[:120]} has no object body; ignored")
    return record, problems


def body_problem(ref: ObjectRef, body: Mapping[str, Any], namespace: str) -> str | None:
    """Why a restore body is not the object its key names (kind, name, namespace), or None."""
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return "its restore body has no metadata"
    try:
        named = ObjectRef.of(body)
    except (KeyError, TypeError):
        return "its restore body names no object"
    if named != ref:
        return f"its restore body is {named.api_version} {named.kind}/{named.name}, not this object"
    if meta.get("namespace") not in (None, namespace):
        return f"its restore body is in namespace {meta.get('namespace')!r}, not {namespace!r}"
    return None


def _keep(record: Record, key: str, entry: dict[str, Any] | None) -> None:
    if entry is CREATED:
        record.created.append(key)
    else:
        record.replaced[key] = entry


@dataclass(frozen=True, kw_only=True)
class DownPlan:
    """What `down` does: delete these, apply these originals, say these lines; and what stays recorded."""

    delete: list[ObjectRef]
    restore: list[tuple[ObjectRef, dict[str, Any]]]
    notes: list[str]  # done anyway, but worth saying
    refused: list[str]  # one line per entry: nothing was done for it
    keep: Record  # the entries left in the cluster's record, for a `down` that can verify them


def plan_down(
    *,
    cluster: Record,
    mine: Record | None,
    defined: frozenset[str],
    namespaced: Callable[[ObjectRef], bool],
    namespace: str,
    trust_cluster: bool = False,
    how_to_check: str = "",
) -> DownPlan:
    """Decide, entry by entry, what `down` does with the cluster's record.

    ``mine`` is this machine's copy of the entries its `up` wrote (used only
    when it belongs to this very record) and says whose originals to apply;
    ``defined`` the keys of the objects innerloop.yaml and its manifests make
    `up` apply, the only ones `down` touches; ``namespaced`` tells a
    namespaced kind from a cluster-scoped one.
    """
    if mine is not None and (mine.id != cluster.id or mine.namespace != namespace or not cluster.id):
        mine = None
    delete: list[ObjectRef] = []
    restore: list[tuple[ObjectRef, dict[str, Any]]] = []
    notes: list[str] = []
    refused: list[str] = []
    keep = Record(id=cluster.id, namespace=namespace)

    def act(ref: ObjectRef, entry: dict[str, Any] | None) -> None:
        if entry is CREATED:
            delete.append(ref)
            return
        problem = body_problem(ref, entry, namespace)
        if problem is not None:
            refused.append(f"refused {ref.key}: {problem}; nothing done (the restore record was changed)")
            return
        restore.append((ref, entry))

    both = set(cluster.created) & set(cluster.replaced)
    # Created objects in reverse order of creation, then the replaced ones, as `down` always did.
    entries: list[tuple[str, dict[str, Any] | None]] = [(key, CREATED) for key in reversed(cluster.created)]
    entries += [(key, body) for key, body in cluster.replaced.items() if key not in cluster.created]
    for key, entry in entries:
        ref = ObjectRef.parse(key)
        shown = json.dumps(key)[:120] if ref is None else ref.key
        if ref is None:
            refused.append(f"refused {shown}: not an object name; nothing done (the restore record was changed)")
            continue
        if not namespaced(ref):
            refused.append(
                f"refused {shown}: a cluster-scoped object; `down` touches only namespace {namespace}, "
                "nothing done (the restore record was changed)"
            )
            continue
        recorded_here = mine is not None and key in mine.listed()
        if key not in defined:
            if not recorded_here:
                refused.append(
                    f"refused {shown}: not one of this project's objects (innerloop.yaml's manifests); "
                    "nothing done (the restore record was changed)"
                )
                continue
            # This machine's `up` applied it, but the config no longer says so: a file of this folder
            # (a pull, a clone) is no proof either, so it waits in both records until the config does.
            _keep(keep, key, entry)
            refused.append(
                f"refused {shown}: innerloop.yaml's manifests no longer define it, so it is kept in the record "
                f"(define it again and run `innerloop down`, or remove it yourself: "
                f"kubectl -n {namespace} delete {ref.kind.lower()} {ref.name})"
            )
            continue
        if mine is not None and recorded_here:
            ours = mine.entry(key)
            if key in both or ours != entry:
                notes.append(
                    f"{ref.shown}: the cluster's record of it differs from what this machine's `up` wrote "
                    "(it was changed in the cluster): used this machine's copy"
                )
            act(ref, ours)
            continue
        if key in both:
            refused.append(f"refused {shown}: recorded as both created and replaced; nothing done")
            continue
        if entry is CREATED or trust_cluster:
            act(ref, entry)
            continue
        _keep(keep, key, entry)
        refused.append(
            f"not restored {ref.shown}: its original was recorded by another machine's `up` "
            f"(or changed in the cluster), so it is kept in the record; check it{how_to_check}, "
            "then `innerloop down --trust-cluster-record`"
        )
    if mine is not None:
        gone = [k for k in mine.created + list(mine.replaced) if k not in cluster.listed()]
        notes += [f"{k}: no longer in the cluster's record (another `down` handled it?): left as it is" for k in gone]
    return DownPlan(delete=delete, restore=restore, notes=notes, refused=refused, keep=keep)
