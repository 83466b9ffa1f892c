"""One service's sync session: local edits -> the agent in its pod, then a restart.

The session owns three things: a watcher over the service's sync roots
(started first, so no edit made while connecting is lost), the connection to
the agent (a port-forward to the agent's loopback port in the pod, through
the API server), and the loop that turns each batch of changes into one
``sync.apply`` and, when configured, one ``process.restart``.

Every replica of the workload is synced: the session follows the pods
(``k8s/watching.py``) and keeps one link per running dev-mode pod, each with
its own connection, its own record of what that agent has, and its own
queue of changed paths, so the replicas are served in parallel, one batch
each, and a slow or restarting pod delays only itself. A replica that
appears later (scale-up, rollout, eviction) first gets the initial
comparison: files are compared by content hash with its agent's tree, so it
receives the current tree and nothing unchanged is sent twice. Two-way
roots are pulled from one replica (the first connected); what comes home is
then pushed to the others like any local edit.

Which pods get our tokens and files: before each connection the pod (as
the watch last saw it) must be one this `up` deployed
(:func:`innerloop.deploy.devmode.check_agent_pod`: made by the workload's
controller, running the planned containers); no API call is added, the
watch already has the pod. Then ``hello`` carries this `up`'s token and the
kept earlier ones and rotates the agent to this one (see
:mod:`innerloop.engine.tokens`). A pod that fails the check, or an agent
that denies every token, is not retried: retrying cannot change the answer,
and it used to fill the log every 0.2 s forever. One line says why and what
to do; the other replicas go on. A lost connection (port-forward dropped,
agent restarting) is retried with a backoff, as before.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lightkube.resources.core_v1 import Pod

from innerloop.config import Service
from innerloop.deploy.devmode import DEV_MODE_ANNOTATION, check_agent_pod
from innerloop.k8s.connection import ClusterConnection, ClusterUnreachable
from innerloop.k8s.streams import PortForwardByteStream, StreamError
from innerloop.k8s.watching import PodSnapshot, watch_pods
from innerloop.protocol.client import AgentClient, AgentDenied, AgentError, FileUpload, SyncBatch
from innerloop.protocol.messages import token_sha256
from innerloop.protocol.session import SessionClosed
from innerloop.sync.ignore import SyncScope, load_scope
from innerloop.sync.tree import Scanner, hash_file
from innerloop.sync.twoway import HomeSide, concerned, conflict_name, is_conflict_copy, reconcile
from innerloop.sync.watcher import FileWatch, WatchRoot

if TYPE_CHECKING:
    from innerloop.engine.plan import ServicePlan
    from innerloop.status.store import Store

Report = Callable[[str], None]
PULL_INTERVAL_S = 0.5  # two-way roots: how often the container's tree is compared


@dataclass
class SyncRoot:
    local: Path
    remote: str
    scope: SyncScope
    two_way: bool = False

    def relative(self, path: Path) -> str | None:
        try:
            rel = path.relative_to(self.local).as_posix()
        except ValueError:
            return None
        return None if rel in ("", ".") or self.scope.ignores(rel) or is_conflict_copy(rel) else rel


@dataclass
class Replica:
    """One pod's side of the session: what its agent has, and what changed since."""

    pod: str
    sent: list[dict[str, str]]  # per root: relative path -> sha256 this agent has
    seen: Pod | None = None  # the pod as the watch last reported it
    dirty: set[tuple[int, str]] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    agent: AgentClient | None = None  # while linked: restart and status go through it

    def mark(self, changes: set[tuple[int, str]]) -> None:
        if changes:
            self.dirty |= changes
            self.wake.set()


def syncable_pods(snapshot: PodSnapshot, container: str) -> list[str]:
    """The pods a session links to, oldest first (pure): dev mode, running, not being deleted.

    Not "Ready": the agent serves as soon as the container runs, and an app
    whose readiness fails (a bug just saved) must still receive the fix.
    """
    found = []
    for name, pod in snapshot.items():
        meta, status = pod.metadata, pod.status
        if meta is None or status is None or meta.deletionTimestamp is not None:
            continue
        if (meta.annotations or {}).get(DEV_MODE_ANNOTATION) != "true" or status.phase != "Running":
            continue
        running = any(
            c.name == container and c.state is not None and c.state.running is not None
            for c in status.containerStatuses or []
        )
        if running:
            found.append((meta.creationTimestamp.timestamp() if meta.creationTimestamp else 0.0, name))
    return [name for _, name in sorted(found)]


def covered_files(scanner: Scanner, root: SyncRoot) -> dict[str, str]:
    """``{relative path: sha256}`` of every regular file the rule covers (the scanner caches hashes)."""
    tree = scanner.scan(root.local, root.scope)
    return {rel: state.sha256 for rel, state in tree.items() if not state.is_symlink and not is_conflict_copy(rel)}


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
        root: Path,
        config: Service,
        store: Store,
        report: Report,
        tokens: Sequence[str] = (),
        token: str | None = None,
        applied: Sequence[ServicePlan] = (),
    ) -> None:
        self._conn = conn
        self._namespace = namespace
        self._service = service
        self._plan = plan
        self._tokens = [*tokens, *([token] if token is not None else [])]  # newest first
        self._applied = applied  # every plan this up applied (a list the loop appends to), or just ``plan``
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
        self._homes = [HomeSide(r.local, report=report, service=service) for r in self.roots]
        self._scanner = Scanner()
        self._replicas: dict[str, Replica] = {}
        self._primary: str | None = None  # the replica two-way roots are pulled from
        self.connected = asyncio.Event()
        self._resumed = asyncio.Event()  # cleared while the user paused the sync
        self._resumed.set()

    # -- what the dashboard and the API ask for -------------------------------------

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> str:
        """Hold every change here until :meth:`resume` (the watcher keeps counting them)."""
        self._resumed.clear()
        self._store.update(self._service, sync_paused=True)
        self._store.record(self._service, "paused", "sync paused: saves wait until it is resumed")
        return f"{self._service}: sync paused"

    def resume(self) -> str:
        self._resumed.set()
        self._store.update(self._service, sync_paused=False)
        waiting = sum(len(r.dirty) for r in self._replicas.values())
        self._store.record(self._service, "resumed", f"sync resumed ({waiting} changed paths waiting)")
        return f"{self._service}: sync resumed"

    async def restart(self) -> str:
        """Restart the process in every linked replica (as a sync does); says in how many."""
        linked = [r for r in self._replicas.values() if r.agent is not None]
        if not linked:
            raise AgentError(f"{self._service}: no replica is linked yet; try again once it is in sync")
        results = await asyncio.gather(*(self._restart_replica(r) for r in linked), return_exceptions=True)
        failed = [f"{r.pod}: {e}" for r, e in zip(linked, results, strict=True) if isinstance(e, BaseException)]
        if failed:
            raise AgentError(f"{self._service}: restart failed in " + "; ".join(failed))
        return f"{self._service}: restarted in {len(linked)} replica(s)"

    async def _restart_replica(self, replica: Replica) -> None:
        assert replica.agent is not None
        ms = await self._restart(replica.agent)
        self._store.update_replica(self._service, replica.pod, last_restart_ms=ms)
        self._store.record(self._service, "restarted", f"restarted on request in {ms:.0f} ms", pod=replica.pod)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name=f"watch-{self._service}")
            tg.create_task(self._follow_replicas(), name=f"sync-{self._service}")

    # -- watching -------------------------------------------------------------

    async def _watch(self) -> None:
        if not self.roots:  # in dev mode only to run under its debugger: nothing to watch, replicas still followed
            return
        # FileWatch registers watches off the event loop, filters by each root's scope, and raises
        # WatchLimitError with the sysctl to run instead of silently polling (see sync/watcher.py).
        roots = [WatchRoot(path=r.local, scope=r.scope) for r in self.roots]
        index = {r.local: i for i, r in enumerate(self.roots)}
        async with FileWatch(roots, step_ms=10, debounce_ms=50) as watch:
            self._report(f"{self._service}: watching {watch.folders} folders ({watch.ready_seconds * 1000:.0f} ms)")
            async for batch in watch:
                changes = {
                    (index[root_path.absolute()], change.path)
                    for root_path, root_changes in batch.changes.items()
                    for change in root_changes
                }
                if changes:
                    shown = sorted(path for _, path in changes)
                    more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
                    held = " (sync paused)" if self.paused else ""
                    self._store.record(self._service, "save", ", ".join(shown[:3]) + more + held)
                self._mark_all(changes)

    def _mark_all(self, changes: set[tuple[int, str]]) -> None:
        for replica in self._replicas.values():
            replica.mark(changes)

    # -- the replicas -------------------------------------------------------------

    async def _follow_replicas(self) -> None:
        """One link per syncable pod: started when the pod runs, cancelled when it goes."""
        client = self._conn.client()
        links: dict[str, asyncio.Task[None]] = {}
        try:
            async with asyncio.TaskGroup() as tg:
                async for snapshot in watch_pods(client, namespace=self._namespace, labels=self._plan.selector):
                    wanted = syncable_pods(snapshot, self._plan.container)
                    for pod in [p for p in links if p not in snapshot or _leaving(snapshot[p])]:
                        links.pop(pod).cancel()
                        self._forget(pod)
                    for pod in wanted:
                        if pod in self._replicas:
                            self._replicas[pod].seen = snapshot[pod]
                        if pod not in links:
                            self._replicas[pod] = Replica(pod=pod, sent=[{} for _ in self.roots], seen=snapshot[pod])
                            links[pod] = tg.create_task(self._link(self._replicas[pod]), name=f"sync-{pod}")
        finally:
            await client.close()

    def _forget(self, pod: str) -> None:
        self._replicas.pop(pod, None)
        if self._primary == pod:
            self._primary = None
        self._store.drop_replica(self._service, pod)
        if not self._replicas:
            self.connected.clear()

    async def _link(self, replica: Replica) -> None:
        """Keep one replica in sync until cancelled; a lost connection is opened again."""
        delay = 0.2
        while True:
            try:
                await self._serve(replica)
            except (NotOurAgent, AgentDenied) as err:
                if self._primary == replica.pod:
                    self._primary = None
                self._store.update_replica(self._service, replica.pod, state="refused", message=str(err))
                self._report(f"{self._service}: {err}")
                return  # the same pod gives the same answer: a new pod gets a new link
            except (AgentError, SessionClosed, StreamError, ClusterUnreachable, OSError, TimeoutError) as err:
                if self._primary == replica.pod:
                    self._primary = None
                self._store.update_replica(self._service, replica.pod, state="reconnecting", message=str(err))
                self._report(f"{self._service}: lost the agent in {replica.pod} ({err}); reconnecting")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _verify(self, replica: Replica) -> None:
        """Raise ``NotOurAgent`` unless the pod is one this `up` deployed (before any token leaves)."""
        plans = self._applied or [self._plan]
        workloads = [
            doc
            for plan in plans
            for doc in plan.docs
            if doc.get("kind") == plan.workload_kind and (doc.get("metadata") or {}).get("name") == plan.workload_name
        ]
        pod = replica.seen.to_dict() if replica.seen is not None else {}
        reason = check_agent_pod(pod, workloads)
        if reason is not None:
            raise NotOurAgent(
                f"the agent in pod {replica.pod} is not the one innerloop deployed: {reason}; "
                "run `innerloop down` then `innerloop up`"
            )

    async def _serve(self, replica: Replica) -> None:
        self._store.update_replica(self._service, replica.pod, state="connecting", message="")
        self._verify(replica)
        stream = await PortForwardByteStream.open(
            self._conn, namespace=self._namespace, pod=replica.pod, port=self._plan.agent_port
        )
        try:
            agent = await AgentClient.connect(stream, tokens=self._tokens, rotate=token_sha256(self._tokens[0]))
        except AgentDenied as err:
            raise AgentDenied(
                f"the agent in pod {replica.pod} refused this `up`: {err}. Another `up` (yours on another "
                "machine, or a teammate's) took it over, or the token Secret was rewritten: run "
                "`innerloop down` then `innerloop up`"
            ) from None
        async with agent:
            events = asyncio.create_task(self._follow_events(agent, replica), name=f"events-{replica.pod}")
            replica.agent = agent
            try:
                await self._linked(agent, replica)
            finally:
                replica.agent = None
                events.cancel()

    async def _follow_events(self, agent: AgentClient, replica: Replica) -> None:
        """The agent's news: the app exiting on its own (a crash, for the alerts) goes on the timeline."""
        async for event in agent.events():
            if event.kind == "process-exited":
                self._store.record(
                    self._service,
                    "exited",
                    f"{event.message or 'exited'} in {replica.pod}",
                    pod=replica.pod,
                    exit_code=event.exit_code,
                )
            elif event.kind == "process-started":
                self._store.record(self._service, "started", f"process started in {replica.pod}", pod=replica.pod)

    async def _linked(self, agent: AgentClient, replica: Replica) -> None:
        replica.dirty.clear()  # the initial comparison covers everything changed until now
        replica.wake.clear()
        self._store.update_replica(self._service, replica.pod, state="syncing")
        await self._initial_sync(agent, replica)
        if self._primary is None:
            self._primary = replica.pod
        self._store.update_replica(self._service, replica.pod, state="in sync", synced_at=time.time())
        self._store.update(self._service, pod=self._primary or replica.pod, phase="running", message="")
        self.connected.set()
        two_way = any(r.two_way for r in self.roots)
        while True:
            if two_way:
                try:
                    await asyncio.wait_for(replica.wake.wait(), PULL_INTERVAL_S)
                except TimeoutError:
                    if self._primary is None:
                        self._primary = replica.pod
                    if self._primary == replica.pod:
                        await self._pull(agent, replica)
                    continue
            else:
                await replica.wake.wait()
            await self._resumed.wait()  # paused: the changes wait here, marked
            replica.wake.clear()
            await self._sync_dirty(agent, replica)

    async def _initial_sync(self, agent: AgentClient, replica: Replica) -> None:
        total_files = 0
        for i, root in enumerate(self.roots):
            local = await asyncio.to_thread(covered_files, self._scanner, root)
            remote = await agent.tree(root.remote)
            uploads = [rel for rel, sha in local.items() if remote.get(rel) != sha]
            if root.two_way:
                # What only the container has was made there: it comes home with the next pull.
                deletes = []
                replica.sent[i] = {rel: sha for rel, sha in remote.items() if rel in local}
            else:
                deletes = [rel for rel in remote if rel not in local and root.scope.covers(rel)]
                replica.sent[i] = {rel: sha for rel, sha in remote.items() if rel not in deletes}
            if uploads or deletes:
                await self._send(agent, replica, i, uploads, deletes, local)
                total_files += len(uploads) + len(deletes)
        if total_files and self._config.restart == "process":
            await self._restart(agent)
        self._report(f"{self._service}: in sync{self._where(replica)} ({total_files} files sent)")

    def _where(self, replica: Replica) -> str:
        """The pod's name in messages, once there is more than one to tell apart."""
        return f" in {replica.pod}" if len(self._replicas) > 1 else ""

    async def _sync_dirty(self, agent: AgentClient, replica: Replica) -> None:
        started = time.perf_counter()
        dirty, replica.dirty = replica.dirty, set()
        sent_any = False
        changed: list[str] = []
        for i, root in enumerate(self.roots):
            sent = replica.sent[i]
            paths = sorted(rel for j, rel in dirty if j == i)
            uploads, deletes, hashes = [], [], {}
            for rel in paths:
                full = root.local / rel
                if full.is_file() and not full.is_symlink():
                    sha = await asyncio.to_thread(hash_file, str(full))
                    if sent.get(rel) != sha:  # unchanged content (mtime churn) sends nothing
                        uploads.append(rel)
                        hashes[rel] = sha
                elif not full.exists() and rel in sent:
                    deletes.append(rel)
                elif full.is_dir():  # a folder appeared (moved in, unpacked): everything below it
                    covered = await asyncio.to_thread(covered_files, self._scanner, root)
                    for rel_sub, sha in covered.items():
                        if rel_sub.startswith(f"{rel}/") and sent.get(rel_sub) != sha:
                            uploads.append(rel_sub)
                            hashes[rel_sub] = sha
            deletes += [p for p in sent if any(p.startswith(d + "/") for d in paths) and not (root.local / p).exists()]
            if uploads or deletes:
                await self._send(agent, replica, i, uploads, sorted(set(deletes)), hashes)
                sent_any = True
                changed += uploads + deletes
        if not sent_any:
            return
        sync_ms = (time.perf_counter() - started) * 1000
        # The files are in the container now (before any restart): readers time "file visible" on this.
        self._count(replica, files=len(changed), last_sync_ms=round(sync_ms, 1))
        for argv in steps_for(self._config, changed):
            done = await agent.run(argv)
            self._report(f"{self._service}: ran {' '.join(argv)}{self._where(replica)} -> exit {done.exit_code}")
        restart_ms = None
        if self._config.restart == "process":
            restart_ms = await self._restart(agent)
        self._count(replica, syncs=1, last_restart_ms=restart_ms)
        self._store.update_replica(self._service, replica.pod, state="in sync", synced_at=time.time())
        extra = f", restarted in {restart_ms:.0f} ms" if restart_ms is not None else ""
        self._report(f"{self._service}: synced {len(changed)} file(s){self._where(replica)} in {sync_ms:.0f} ms{extra}")
        shown = ", ".join(sorted(changed)[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        self._store.record(self._service, "synced", f"{shown} in {sync_ms:.0f} ms{extra}", pod=replica.pod)
        if restart_ms is not None:
            self._store.record(self._service, "restarted", f"restarted in {restart_ms:.0f} ms", pod=replica.pod)

    def _count(self, replica: Replica, *, files: int = 0, syncs: int = 0, **last: float | None) -> None:
        """Add to the replica's counters in the store; the primary replica's also count for the service."""
        mine = self._store.replica(self._service, replica.pod)
        self._store.update_replica(
            self._service, replica.pod, files_synced=mine.files_synced + files, syncs=mine.syncs + syncs, **last
        )
        if replica.pod == self._primary:
            status = self._store.service(self._service)
            self._store.update(
                self._service, files_synced=status.files_synced + files, syncs=status.syncs + syncs, **last
            )

    async def _send(  # noqa: PLR0917 - private, called in three places with the same six
        self,
        agent: AgentClient,
        replica: Replica,
        i: int,
        uploads: list[str],
        deletes: list[str],
        hashes: dict[str, str],
    ) -> None:
        root, sent = self.roots[i], replica.sent[i]
        files = [FileUpload.from_file(rel, root.local / rel, sha256=hashes.get(rel)) for rel in uploads]
        await agent.apply(SyncBatch(root=root.remote, files=files, deletes=deletes))
        for upload in files:
            sent[upload.meta.path] = upload.meta.sha256
        for rel in deletes:
            sent.pop(rel, None)

    async def _pull(self, agent: AgentClient, replica: Replica) -> None:
        """Two-way roots: bring the container's changes home; conflicts keep both copies."""
        for i, root in enumerate(self.roots):
            if not root.two_way:
                continue
            sent, home = replica.sent[i], self._homes[i]  # home: the only way to local files (sync/twoway.py)
            remote = {p: sha for p, sha in home.admit(await agent.tree(root.remote)).items() if root.scope.covers(p)}
            paths = concerned(remote, sent)
            if not paths:
                continue
            local = {p: home.sha256(p) for p in paths}
            for change in reconcile(remote=remote, sent=sent, local=local):
                if change.kind == "adopt" and change.sha256:
                    sent[change.path] = change.sha256
                elif change.kind == "download" and change.sha256:
                    data, mode = await agent.read(root.remote, change.path)
                    sent[change.path] = change.sha256  # first: the watcher's event then sends nothing here
                    if home.write(change.path, data, mode):
                        self._report(f"{self._service}: {change.path} changed in the container: copied here")
                elif change.kind == "conflict" and change.sha256:
                    data, mode = await agent.read(root.remote, change.path)
                    copy = conflict_name(change.path, change.sha256)
                    if home.write(copy, data, mode):
                        self._mark_all({(i, change.path)})  # the local version wins in every container
                        self._report(
                            f"{self._service}: {change.path} changed on both sides: kept yours, "
                            f"the container's is in {copy}"
                        )
                elif change.kind == "delete-local":
                    sent.pop(change.path, None)
                    home.delete(change.path)
                    self._report(f"{self._service}: {change.path} was deleted in the container: deleted here")
                elif change.kind == "push":
                    replica.mark({(i, change.path)})

    async def _restart(self, agent: AgentClient) -> float:
        started = time.perf_counter()
        await agent.restart()
        return round((time.perf_counter() - started) * 1000, 1)


class NotOurAgent(Exception):
    """The pod is not one this `up` deployed: nothing is sent to it; the message says what to do."""


def _leaving(pod: Pod) -> bool:
    return pod.metadata is not None and pod.metadata.deletionTimestamp is not None
