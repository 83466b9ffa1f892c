"""Two-way sync: what to do when the container changed a synced file (pure).

Inputs are three views of one sync root, each ``{relative path: sha256}``:
what the container has now, what this session last knew both sides agreed
on (``sent``), and what is on the developer's disk. A file only the
container changed comes back; a file both sides changed is a conflict and
both copies are kept: the local one stays where it is (and is sent again),
the container's is written next to it as ``<name>.innerloop-conflict-<sha8>``,
which is never synced.

The container's listing is not trusted (a compromised app, or a fake agent,
names what it likes): :class:`HomeSide` admits only paths that
``sync/contained.py`` accepts, with a sha256 that is 64 hex digits (it ends
up in a conflict copy's name), and reaches local files only through
:class:`~innerloop.sync.contained.LocalRoot`, so nothing is written, read or
deleted outside the sync root or through a symlink. Each refused path is
reported once per session, and the sync goes on for the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from innerloop.sync.contained import LocalRoot, UnsafePath, relative_parts

CONFLICT_MARK = ".innerloop-conflict-"

ActionKind = Literal["adopt", "download", "conflict", "delete-local", "push"]


@dataclass(frozen=True)
class RemoteChange:
    kind: ActionKind
    path: str
    sha256: str | None = None  # the container's version, for adopt/download/conflict


_SHA256 = re.compile(r"[0-9a-f]{64}")


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


class HomeSide:
    """The developer's side of one two-way root: the container's listing checked, local files reached safely.

    ``report`` gets one line per refused path (once per path: the listing is
    pulled every half second) and per local write that failed. Only new or
    changed entries are checked against the disk, so a pull of an unchanged
    100,000-file listing costs no system call here.
    """

    def __init__(self, local: Path, *, report: Callable[[str], None], service: str) -> None:
        self.files = LocalRoot(local)
        self._report = report
        self._service = service
        self._refused: set[str] = set()
        self._admitted: dict[str, str] = {}

    def admit(self, listing: Mapping[str, object]) -> dict[str, str]:
        """The entries of the container's listing that may be used: safe paths with a real sha256."""
        admitted: dict[str, str] = {}
        folders: dict[tuple[str, ...], str | None] = {}  # each folder checked once per pull: why refused, or None
        for path, sha256 in listing.items():
            if isinstance(sha256, str) and self._admitted.get(path) == sha256:
                admitted[path] = sha256  # unchanged since the last pull: checked then (every use checks again)
                continue
            try:
                parts = relative_parts(path)
                if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
                    raise UnsafePath(f"{path!r} has no valid sha256")
                folder = parts[:-1]
                if folder not in folders:
                    try:
                        self.files.check_folder(folder)
                        folders[folder] = None
                    except (UnsafePath, OSError) as err:
                        folders[folder] = str(err)
                if folders[folder] is not None:
                    raise UnsafePath(folders[folder])
            except UnsafePath as err:
                self.refuse(path, str(err))
                continue
            admitted[path] = sha256
        self._admitted = admitted
        return admitted

    def refuse(self, path: str, reason: str) -> None:
        if path not in self._refused:
            self._refused.add(path)
            self._report(f"{self._service}: refused {path!r} from the container: {reason}")

    def sha256(self, path: str) -> str | None:
        try:
            return self.files.sha256(path)
        except (UnsafePath, OSError) as err:
            self.refuse(path, str(err))
            return None

    def write(self, path: str, data: bytes, mode: int) -> bool:
        """Write a file the container changed; False (and one line) when it cannot be written safely."""
        try:
            self.files.write(path, data, mode)
        except (UnsafePath, OSError) as err:
            self._report(f"{self._service}: not copied here: {err}")
            return False
        return True

    def delete(self, path: str) -> None:
        try:
            self.files.delete(path)
        except (UnsafePath, OSError) as err:
            self._report(f"{self._service}: not deleted here: {err}")
