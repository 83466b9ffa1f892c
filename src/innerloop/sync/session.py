"""One service's sync session: local edits -> the agent in its pod, then a restart.

The session owns three things: a watcher over the service's sync roots
(started first, so no edit made while connecting is lost), the connection to
the agent (a port-forward to the agent's loopback port in the pod, through
the API server), and the loop that turns each batch of changes into one
``sync.apply`` and, when configured, one ``process.restart``.

When the pod goes away (deleted, rolled, evicted) the session finds the next
ready pod, reconnects and runs the initial comparison again: files are
compared by content hash with the agent's tree, so edits made meanwhile
arrive and nothing unchanged is sent twice.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightkube.resources.core_v1 import Pod

from innerloop.config import Service
from innerloop.deploy.devmode import DEV_MODE_ANNOTATION
from innerloop.k8s.connection import ClusterConnection
from innerloop.k8s.streams import PortForwardByteStream, StreamError
from innerloop.protocol.client import AgentClient, AgentError, FileUpload, SyncBatch
from innerloop.protocol.session import SessionClosed
from innerloop.sync.ignore import SyncScope, load_scope
from innerloop.sync.tree import Scanner, hash_file
from innerloop.sync.twoway import concerned, conflict_name, is_conflict_copy, reconcile
from innerloop.sync.watcher import FileWatch, WatchRoot

if TYPE_CHECKING:
    from innerloop.engine.plan import ServicePlan
    from innerloop.engine.store import Store

Report = Callable[[str], None]
PULL_INTERVAL_S = 0.5  # two-way roots: how often the container's tree is compared


@dataclass
class SyncRoot:
    local: Path
    remote: str
    scope: SyncScope
    two_way: bool = False
    sent: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 the agent has

    def relative(self, path: Path) -> str | None:
        try:
            rel = path.relative_to(self.local).as_posix()
        except ValueError:
            return None
        return None if rel in ("", ".") or self.scope.ignores(rel) or is_conflict_copy(rel) else rel


def covered_files(scanner: Scanner, root: SyncRoot) -> dict[str, str]:
    """``{relative path: sha256}`` of every regular file the rule covers (the scanner caches hashes)."""
    tree = scanner.scan(root.local, root.scope)
    return {rel: state.sha256 for rel, state in tree.items() if not state.is_symlink and not is_conflict_copy(rel)}


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write a local file the way editors save: a temp file renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.innerloop-tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode & 0o777)
    os.replace(tmp, path)


def steps_for(service: Service, changed: list[str]) -> list[list[str]]:
    """The ``onChange`` commands whose patterns match a changed path (pure)."""
    return [
        list(step.run)
        for step in service.on_change
        if any(fnmatch.fnmatch(path, pattern) for path in changed for pattern in step.paths)
    ]


class SyncSession:
    def __init__(
        self,
        *,
        conn: ClusterConnection,
        namespace: str,
        service: str,
        plan: ServicePlan,
        token: str,
        root: Path,
        config: Service,
        store: Store,
        report: Report,
    ) -> None:
        self._conn = conn
        self._namespace = namespace
        self._service = service
        self._plan = plan
        self._token = token
        self._config = config
        self._store = store
        self._report = report
        self.roots = [
            SyncRoot(
                local=(root / r.local).resolve(),
                remote=r.remote,
                scope=load_scope(root / r.local, exclude=r.exclude),
                two_way=r.mode == "two-way",
            )
            for r in config.sync
        ]
        self._scanner = Scanner()
        self._dirty: set[tuple[int, str]] = set()
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name=f"watch-{self._service}")
            tg.create_task(self._serve(), name=f"sync-{self._service}")

    # -- watching -------------------------------------------------------------

    async def _watch(self) -> None:
        # FileWatch registers watches off the event loop, filters by each root's scope, and raises
        # WatchLimitError with the sysctl to run instead of silently polling (see sync/watcher.py).
        roots = [WatchRoot(path=r.local, scope=r.scope) for r in self.roots]
        index = {r.local: i for i, r in enumerate(self.roots)}
        async with FileWatch(roots, step_ms=10, debounce_ms=50) as watch:
            self._report(f"{self._service}: watching {watch.folders} folders ({watch.ready_seconds * 1000:.0f} ms)")
            async for batch in watch:
                for root_path, changes in batch.changes.items():
                    i = index[root_path.absolute()]
                    for change in changes:
                        self._dirty.add((i, change.path))
                if self._dirty:
                    self._wake.set()

    # -- the connection ----------------------------------------------------------

    async def _ready_pod(self) -> str:
        client = self._conn.client()
        labels: dict[str, Any] = dict(self._plan.selector)
        try:
            while True:
                pods = [p async for p in client.list(Pod, namespace=self._namespace, labels=labels)]
                ready = []
                for p in pods:
                    meta, status = p.metadata, p.status
                    if meta is None or status is None or meta.deletionTimestamp is not None:
                        continue
                    if (meta.annotations or {}).get(DEV_MODE_ANNOTATION) != "true":
                        continue
                    conditions = {c.type: c.status for c in status.conditions or []}
                    if status.phase == "Running" and conditions.get("ContainersReady") == "True":
                        ready.append((meta.creationTimestamp, meta.name))
                if ready:
                    return str(max(ready)[1])
                await asyncio.sleep(0.25)
        finally:
            await client.close()

    async def _serve(self) -> None:
        while True:
            pod = await self._ready_pod()
            try:
                stream = await PortForwardByteStream.open(
                    self._conn, namespace=self._namespace, pod=pod, port=self._plan.agent_port
                )
                async with await AgentClient.connect(stream, token=self._token) as agent:
                    self._store.update(self._service, pod=pod, phase="running")
                    await self._initial_sync(agent)
                    self.connected.set()
                    two_way = any(r.two_way for r in self.roots)
                    while True:
                        if two_way:
                            try:
                                await asyncio.wait_for(self._wake.wait(), PULL_INTERVAL_S)
                            except TimeoutError:
                                await self._pull(agent)
                                continue
                        else:
                            await self._wake.wait()
                        self._wake.clear()
                        await self._sync_dirty(agent)
            except (AgentError, SessionClosed, StreamError, ConnectionError, TimeoutError) as err:
                self.connected.clear()
                self._store.update(self._service, message=f"reconnecting: {err}")
                self._report(f"{self._service}: lost the agent in {pod} ({err}); reconnecting")
                await asyncio.sleep(0.2)

    async def _initial_sync(self, agent: AgentClient) -> None:
        total_files = 0
        for root in self.roots:
            local = await asyncio.to_thread(covered_files, self._scanner, root)
            remote = await agent.tree(root.remote)
            uploads = [rel for rel, sha in local.items() if remote.get(rel) != sha]
            if root.two_way:
                # What only the container has was made there: it comes home with the next pull.
                deletes = []
                root.sent = {rel: sha for rel, sha in remote.items() if rel in local}
            else:
                deletes = [rel for rel in remote if rel not in local and root.scope.covers(rel)]
                root.sent = {rel: sha for rel, sha in remote.items() if rel not in deletes}
            if uploads or deletes:
                await self._send(agent, root, uploads, deletes, local)
                total_files += len(uploads) + len(deletes)
        if total_files and self._config.restart == "process":
            await self._restart(agent)
        self._report(f"{self._service}: in sync ({total_files} files sent)")

    async def _sync_dirty(self, agent: AgentClient) -> None:
        started = time.perf_counter()
        dirty, self._dirty = self._dirty, set()
        sent_any = False
        changed: list[str] = []
        for i, root in enumerate(self.roots):
            paths = sorted(rel for j, rel in dirty if j == i)
            uploads, deletes, hashes = [], [], {}
            for rel in paths:
                full = root.local / rel
                if full.is_file() and not full.is_symlink():
                    sha = await asyncio.to_thread(hash_file, str(full))
                    if root.sent.get(rel) != sha:  # unchanged content (mtime churn) sends nothing
                        uploads.append(rel)
                        hashes[rel] = sha
                elif not full.exists() and rel in root.sent:
                    deletes.append(rel)
                elif full.is_dir():  # a folder appeared (moved in, unpacked): everything below it
                    covered = await asyncio.to_thread(covered_files, self._scanner, root)
                    for rel_sub, sha in covered.items():
                        if rel_sub.startswith(f"{rel}/") and root.sent.get(rel_sub) != sha:
                            uploads.append(rel_sub)
                            hashes[rel_sub] = sha
            deletes += [
                p for p in root.sent if any(p.startswith(d + "/") for d in paths) and not (root.local / p).exists()
            ]
            if uploads or deletes:
                await self._send(agent, root, uploads, sorted(set(deletes)), hashes)
                sent_any = True
                changed += uploads + deletes
        if not sent_any:
            return
        sync_ms = (time.perf_counter() - started) * 1000
        # The files are in the container now (before any restart): readers time "file visible" on this.
        status = self._store.service(self._service)
        self._store.update(
            self._service, files_synced=status.files_synced + len(changed), last_sync_ms=round(sync_ms, 1)
        )
        for argv in steps_for(self._config, changed):
            done = await agent.run(argv)
            self._report(f"{self._service}: ran {' '.join(argv)} -> exit {done.exit_code}")
        restart_ms = None
        if self._config.restart == "process":
            restart_ms = await self._restart(agent)
        self._store.update(self._service, syncs=status.syncs + 1, last_restart_ms=restart_ms)
        extra = f", restarted in {restart_ms:.0f} ms" if restart_ms is not None else ""
        self._report(f"{self._service}: synced {len(changed)} file(s) in {sync_ms:.0f} ms{extra}")

    async def _send(
        self, agent: AgentClient, root: SyncRoot, uploads: list[str], deletes: list[str], hashes: dict[str, str]
    ) -> None:
        files = [FileUpload.from_file(rel, root.local / rel, sha256=hashes.get(rel)) for rel in uploads]
        await agent.apply(SyncBatch(root=root.remote, files=files, deletes=deletes))
        for upload in files:
            root.sent[upload.meta.path] = upload.meta.sha256
        for rel in deletes:
            root.sent.pop(rel, None)

    async def _pull(self, agent: AgentClient) -> None:
        """Two-way roots: bring the container's changes home; conflicts keep both copies."""
        for i, root in enumerate(self.roots):
            if not root.two_way:
                continue
            remote = {p: sha for p, sha in (await agent.tree(root.remote)).items() if root.scope.covers(p)}
            paths = concerned(remote, root.sent)
            if not paths:
                continue
            local = {p: hash_file(str(root.local / p)) if (root.local / p).is_file() else None for p in paths}
            for change in reconcile(remote=remote, sent=root.sent, local=local):
                target = root.local / change.path
                if change.kind == "adopt" and change.sha256:
                    root.sent[change.path] = change.sha256
                elif change.kind == "download" and change.sha256:
                    data, mode = await agent.read(root.remote, change.path)
                    root.sent[change.path] = change.sha256  # first: the watcher's event then sends nothing
                    write_atomically(target, data, mode)
                    self._report(f"{self._service}: {change.path} changed in the container: copied here")
                elif change.kind == "conflict" and change.sha256:
                    data, mode = await agent.read(root.remote, change.path)
                    copy = root.local / conflict_name(change.path, change.sha256)
                    write_atomically(copy, data, mode)
                    self._dirty.add((i, change.path))  # the local version wins in the container
                    self._wake.set()
                    self._report(
                        f"{self._service}: {change.path} changed on both sides: kept yours, "
                        f"the container's is in {copy.relative_to(root.local)}"
                    )
                elif change.kind == "delete-local":
                    root.sent.pop(change.path, None)
                    target.unlink(missing_ok=True)
                    self._report(f"{self._service}: {change.path} was deleted in the container: deleted here")
                elif change.kind == "push":
                    self._dirty.add((i, change.path))
                    self._wake.set()

    async def _restart(self, agent: AgentClient) -> float:
        started = time.perf_counter()
        await agent.restart()
        return round((time.perf_counter() - started) * 1000, 1)
