"""How an intercept changes a Service and how it puts it back, byte for byte.

An intercept changes exactly one thing in the cluster that it did not
create: the intercepted Service's ``spec.selector``, which it points at the
router's pod. That is why the target workload's pods never restart: they
are not touched. The router passes every request it does not intercept to
a *shadow* Service that carries the original selector.

Both edits are JSON patches that first ``test`` the selector they expect,
so neither clobbers a change somebody else made in between. Putting the
selector back leaves one trace, the ``managedFields`` entry the API server
adds for the patch; when nothing else changed, a second patch puts the
original ``managedFields`` back too (the API server takes a request's
``managedFields`` verbatim when nothing else changes), so the Service
ends equal to what it was except for ``resourceVersion``, which only the
API server assigns.

Pure functions over plain JSON; the CLI (``innerloop clean``) and the
in-cluster router (standard library only) both use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JsonPatch = list[dict[str, Any]]

# Bookkeeping the API server owns; everything else must come back as it was.
_SERVER_FIELDS = ("resourceVersion", "managedFields")


def swap_selector(original: Mapping[str, str], router: Mapping[str, str]) -> JsonPatch:
    """Point the Service at the router, if its selector is still ``original``."""
    return [
        {"op": "test", "path": "/spec/selector", "value": dict(original)},
        {"op": "replace", "path": "/spec/selector", "value": dict(router)},
    ]


def restore_selector(router: Mapping[str, str], original: Mapping[str, str]) -> JsonPatch:
    """Point the Service back at its pods, if its selector is still the router's."""
    return [
        {"op": "test", "path": "/spec/selector", "value": dict(router)},
        {"op": "replace", "path": "/spec/selector", "value": dict(original)},
    ]


def _without_server_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_FIELDS}
    return {**obj, "metadata": meta}


def same_but_bookkeeping(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two versions of an object differ only in what the API server maintains."""
    return _without_server_fields(a) == _without_server_fields(b)


def restore_managed_fields(original: Mapping[str, Any], current: Mapping[str, Any]) -> JsonPatch | None:
    """The patch that gives ``current`` its original ``managedFields`` back, or None.

    None when there is nothing to do, or when the object differs from the
    original in more than bookkeeping: then someone else changed it during
    the intercept and the field ownership the server recorded is theirs.
    """
    before = (original.get("metadata") or {}).get("managedFields")
    after = (current.get("metadata") or {}).get("managedFields")
    if before is None or before == after or not same_but_bookkeeping(original, current):
        return None
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": current["metadata"]["resourceVersion"]},
        {"op": "replace", "path": "/metadata/managedFields", "value": before},
    ]


def selector_of(service: Mapping[str, Any]) -> dict[str, str]:
    return dict((service.get("spec") or {}).get("selector") or {})
