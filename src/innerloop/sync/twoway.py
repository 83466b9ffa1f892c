"""Two-way sync: what to do when the container changed a synced file (pure).

Inputs are three views of one sync root, each ``{relative path: sha256}``:
what the container has now, what this session last knew both sides agreed
on (``sent``), and what is on the developer's disk. A file only the
container changed comes back; a file both sides changed is a conflict and
both copies are kept: the local one stays where it is (and is sent again),
the container's is written next to it as ``<name>.innerloop-conflict-<sha8>``,
which is never synced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

CONFLICT_MARK = ".innerloop-conflict-"

ActionKind = Literal["adopt", "download", "conflict", "delete-local", "push"]


@dataclass(frozen=True)
class RemoteChange:
    kind: ActionKind
    path: str
    sha256: str | None = None  # the container's version, for adopt/download/conflict


def conflict_name(path: str, sha256: str) -> str:
    return f"{path}{CONFLICT_MARK}{sha256[:8]}"


def is_conflict_copy(path: str) -> bool:
    return CONFLICT_MARK in path.rsplit("/", 1)[-1]


def reconcile(
    *, remote: Mapping[str, str], sent: Mapping[str, str], local: Mapping[str, str | None]
) -> list[RemoteChange]:
    """The actions that bring the container's changes home. ``local`` needs only the paths concerned."""
    actions: list[RemoteChange] = []
    for path in sorted(remote):
        theirs = remote[path]
        if sent.get(path) == theirs or is_conflict_copy(path):
            continue
        mine = local.get(path)
        if mine == theirs:
            actions.append(RemoteChange(kind="adopt", path=path, sha256=theirs))
        elif mine == sent.get(path):
            actions.append(RemoteChange(kind="download", path=path, sha256=theirs))
        else:
            actions.append(RemoteChange(kind="conflict", path=path, sha256=theirs))
    for path in sorted(set(sent) - set(remote)):
        if local.get(path) == sent[path]:
            actions.append(RemoteChange(kind="delete-local", path=path))
        elif local.get(path) is not None:
            actions.append(RemoteChange(kind="push", path=path))
    return actions


def concerned(remote: Mapping[str, str], sent: Mapping[str, str]) -> set[str]:
    """Paths whose local hash ``reconcile`` needs."""
    return {p for p, sha in remote.items() if sent.get(p) != sha} | (set(sent) - set(remote))
