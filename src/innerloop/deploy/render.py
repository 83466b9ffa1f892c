"""Pure manifest rendering: swap image names for the tags innerloop built.

Manifests name images the way developers write them (``image: bookshop-api``);
the deployed objects carry the content-hash tag of the build
(``innerloop.local/bookshop-api:3f2a...``). Like Skaffold and Tilt, a container
image is replaced when its repository (the part before ``:tag``/``@digest``)
equals a built image's name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import yaml

_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def repository(image: str) -> str:
    """``registry/name:tag@digest`` -> ``registry/name`` (a port's colon is kept)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name


def pod_spec(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    path = _POD_SPEC_PATHS.get(str(doc.get("kind", "")))
    node: Any = doc
    for key in path or ():
        node = node.get(key) if isinstance(node, dict) else None
    return node if path and isinstance(node, dict) else None


def containers(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(doc)
    if spec is None:
        return
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                yield c


def pin_images(docs: list[dict[str, Any]], built: Mapping[str, str]) -> list[str]:
    """Replace images whose repository is a key of ``built`` by its tag; returns the names used."""
    used: list[str] = []
    for doc in docs:
        for c in containers(doc):
            repo = repository(str(c.get("image", "")))
            if repo in built:
                c["image"] = built[repo]
                used.append(repo)
    return used


class ManifestError(ValueError):
    """A manifest is not valid YAML; the message says where."""


def load_all(text: str, *, source: str = "the manifests") -> list[dict[str, Any]]:
    try:
        return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ManifestError(f"{where}: invalid YAML: {reason}") from None


def dump_all(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)
