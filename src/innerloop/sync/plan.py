"""What to send: pure decisions over plain data, the heart of the sync.

Three questions, each a function of values (no I/O, no clock), so property
tests can drive them with generated trees:

- :func:`plan`: the first sync of a root, or a resync after a reconnect.
  Compare the local tree with what the container holds (path -> sha256, as
  the agent reports it) and send only what differs: upload files whose
  content differs or is missing, delete remote files that are gone locally.
  Remote files the rule does not cover (``node_modules`` installed in the
  image, ``__pycache__`` written by the app) are left alone, unless they
  stand where a local file or folder must go.
- :func:`plan_batch`: a batch from the watcher. Only the changed paths (and,
  for a folder, what is below it) are looked at, and each is compared with
  the hash last sent: a file saved twice with the same bytes, or changed and
  changed back within the batch, sends nothing; mtime never decides.
- :func:`classify`: what a batch means for a service: which paths sync
  serves, which need an image rebuild (the Dockerfile, or a file of the build
  context that no sync rule covers), and which ``onChange`` steps to run.

A :class:`SyncPlan` is applied deletes first, then uploads; a delete also
removes the folders it empties (so a folder can become a file). Applying a
plan to the remote makes its covered part equal to the local tree's covered
part; planning again then finds nothing to do (tests/unit/sync/test_plan.py
checks both on generated trees).
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from innerloop.sync.ignore import PathFilter, SyncScope
from innerloop.sync.tree import FileState, Tree


class ChangeKind(enum.Enum):
    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Change:
    """One path the watcher saw change, posix and relative to its root (a file or a folder)."""

    kind: ChangeKind
    path: str


@dataclass(frozen=True)
class SyncPlan:
    """Paths (relative to the sync root, sorted) to delete, then to upload."""

    upload: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upload or self.delete)


def _covered(scope: PathFilter | None, path: str) -> bool:
    return scope is None or not scope.ignores(path)


def _parents(path: str) -> Iterable[str]:
    while "/" in path:
        path = path.rpartition("/")[0]
        yield path


def plan(local: Mapping[str, FileState], remote: Mapping[str, str], *, scope: PathFilter | None = None) -> SyncPlan:
    """The first sync: upload what differs, delete what is gone locally (see the module docstring)."""
    covered = {path: state for path, state in local.items() if _covered(scope, path)}
    upload = sorted(path for path, state in covered.items() if remote.get(path) != state.sha256)
    local_folders = {parent for path in covered for parent in _parents(path)}
    delete = sorted(
        path
        for path in remote
        if (path not in covered and _covered(scope, path))
        # A remote file where a local folder must go, or below a local file:
        # in the way whether the rule covers it or not.
        or path in local_folders
        or any(parent in covered for parent in _parents(path))
    )
    return SyncPlan(upload=upload, delete=delete)


def plan_batch(
    changes: Iterable[Change],
    local: Tree[FileState],
    sent: Tree[str],
    *,
    scope: PathFilter | None = None,
) -> SyncPlan:
    """A watcher batch: compare the changed paths of ``local`` (already refreshed) with what was last ``sent``.

    A changed folder stands for every file below it, now (``local``) and
    before (``sent``): a folder created, moved in or deleted brings one event
    for itself and none for its files.
    """
    touched: set[str] = set()
    for change in changes:
        path = change.path
        touched.add(path)
        for tree in (local, sent):
            if tree.is_folder(path):
                touched.update(tree.under(path))
    upload: list[str] = []
    delete: set[str] = set()
    for path in touched:
        covered = _covered(scope, path)
        state = local.get(path)
        if state is not None and covered:
            if sent.get(path) != state.sha256:
                upload.append(path)
            # What stands in the way of the file, covered or not: a remote
            # file where one of its folders must go, or files where it must go.
            delete.update(parent for parent in _parents(path) if parent in sent)
            if sent.is_folder(path):
                delete.update(sent.under(path))
        elif covered and path in sent:
            delete.add(path)
    return SyncPlan(upload=sorted(upload), delete=sorted(delete))


class PlanConflict(ValueError):
    """A plan that cannot be applied: an upload would need a folder where a file stays, or the reverse."""


def apply_plan(remote: Mapping[str, str], sync: SyncPlan, local: Mapping[str, FileState]) -> Tree[str]:
    """What the remote holds once ``sync`` is applied to it (a copy; see :func:`record_sent`)."""
    result = Tree(remote)
    record_sent(result, sync, local)
    return result


def record_sent(sent: Tree[str], sync: SyncPlan, local: Mapping[str, FileState]) -> None:
    """Update ``sent`` in place once the transport applied ``sync``: deletes first, then uploads.

    In place, because the session does this after every batch and a copy of
    100,000 entries costs more than the batch. Strict on purpose: the tests
    use it as the model of the remote side, so a plan that forgets a path in
    the way is an error here, not silently fixed.
    """
    for path in sync.delete:
        sent.pop(path, None)
    for path in sync.upload:
        blocking = [parent for parent in _parents(path) if parent in sent]
        if blocking or sent.is_folder(path):
            raise PlanConflict(f"cannot upload {path}: {blocking[0] if blocking else 'a folder'} is in the way")
        sent[path] = local[path].sha256


@dataclass(frozen=True, kw_only=True)
class SyncedPath:
    """A sync rule's ``local``: a folder or a single file, relative to the project folder (posix).

    ``scope`` answers for paths relative to that folder (for a single file:
    its name).
    """

    local: str
    scope: PathFilter


@dataclass(frozen=True, kw_only=True)
class ServiceFiles:
    """Where a service's files are, relative to the project folder (posix), for :func:`classify`.

    ``context_scope`` answers for paths relative to ``context``: build it with
    ``load_scope(context, build_context=context)`` so the context's
    ``.dockerignore`` (a file not sent to the build cannot change the image)
    and ``.gitignore`` files (generated files are not worth a rebuild) apply.
    ``on_change`` holds the ``paths`` of each ``onChange`` step, in order.
    """

    sync: Sequence[SyncedPath] = ()
    context: str | None = None
    dockerfile: str | None = None
    context_scope: PathFilter | None = None
    on_change: Sequence[Sequence[str]] = ()


@dataclass(frozen=True)
class ServiceUpdate:
    """What a set of changed paths (project-relative) means for one service."""

    serve_by_sync: list[str] = field(default_factory=list)
    needs_rebuild: list[str] = field(default_factory=list)
    run_steps: list[int] = field(default_factory=list)  # indices into onChange, in order
    ignored: list[str] = field(default_factory=list)


def _normal(path: str) -> str:
    normal = posixpath.normpath(path)
    return "" if normal == "." else normal


def _relative_to(path: str, root: str) -> str | None:
    """``path`` relative to a rule's root; a rule for a single file sees the file by its name."""
    if not root:
        return path
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    if path == root:
        return posixpath.basename(path)
    return None


def classify(service: ServiceFiles, changed: Iterable[str]) -> ServiceUpdate:
    """Sort changed paths (relative to the project folder) into sync, rebuild, steps and ignored.

    For a path under a sync root, pass it only when its content changed
    (the paths of :func:`plan_batch`'s result), so that a save without a
    change runs no step. In order:

    1. the Dockerfile, or the context's ``.dockerignore``: a rebuild;
    2. a file that a sync rule covers: served by sync, and every ``onChange``
       step whose ``paths`` match it (read as gitignore lines, like
       ``exclude``, relative to that rule's root) runs once;
    3. a file under a sync root that the rule excludes: ignored (excluding a
       file from sync says its changes do not matter while developing);
    4. a file of the build context that its scope keeps: a rebuild, since
       only a new image can carry it;
    5. anything else: ignored.
    """
    roots = [(_normal(rule.local), rule.scope) for rule in service.sync]
    context = _normal(service.context) if service.context is not None else None
    rebuild_files = set()
    if service.dockerfile is not None:
        rebuild_files.add(_normal(service.dockerfile))
    if context is not None:
        rebuild_files.add(posixpath.join(context, ".dockerignore") if context else ".dockerignore")
    steps = [SyncScope(exclude=list(paths)) for paths in service.on_change]

    update = ServiceUpdate()
    run: set[int] = set()
    for raw in changed:
        path = _normal(raw)
        if path in rebuild_files:
            update.needs_rebuild.append(path)
            continue
        under_root = False
        served = False
        for root, scope in roots:
            relative = _relative_to(path, root)
            if relative is None:
                continue
            under_root = True
            if not scope.ignores(relative):
                served = True
                run.update(i for i, step in enumerate(steps) if step.ignores(relative))
        if served:
            update.serve_by_sync.append(path)
            continue
        if not under_root and context is not None:
            in_context = _relative_to(path, context) if path != context else None
            if in_context is not None and (
                service.context_scope is None or not service.context_scope.ignores(in_context)
            ):
                update.needs_rebuild.append(path)
                continue
        update.ignored.append(path)
    update.run_steps.extend(sorted(run))
    return update
