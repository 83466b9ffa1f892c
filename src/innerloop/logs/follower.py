"""Follow the logs of every pod of a service, as pods come, restart and go.

``kubectl logs -f deploy/x`` follows one pod and stops when it dies; ``stern``
and Tilt follow a selector. Here a watch of the selector's pods
(``k8s.watching.watch_pods``) drives one follow per pod and container:

- a pod that appears is followed from its first line (its logs so far are
  all new to the user); pods already running when the follower starts show
  only ``tail_lines`` of history;
- a follow ends when the kubelet ends it (the container exited, or the
  connection dropped); it is then opened again for the container's current
  instance, so a restarted container goes on being followed;
- a deleted pod's follows stop once its last lines are read (or shortly
  after the pod is gone from the API).

Every reconnect asks for lines since the last one delivered, in whole seconds
(the only unit the API offers through lightkube), so it overlaps; the
`LogCursor` of each follow drops the overlap by timestamp.

Ownership: ``run()`` owns a task group with one task per followed container;
cancelling it (or leaving ``async with``) stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod

from innerloop.k8s.connection import ClusterConnection
from innerloop.k8s.watching import PodSnapshot, watch_pods
from innerloop.logs.lines import LogCursor, LogLine, parse_timestamped

OnLine = Callable[[LogLine], Awaitable[None] | None]
ContainerPhase = Literal["waiting", "running", "terminated"]

_RECHECK_S = 0.5  # after a follow ends while the status still says "running"
_RETRY_S = 1.0  # after the API refused a follow (container not started yet, pod going)
_GONE_GRACE_S = 3.0  # a deleted pod's follows may read their last lines for this long


@dataclass(frozen=True)
class ContainerState:
    """Which instance of a container is current, and what it is doing."""

    container_id: str | None
    phase: ContainerPhase


def container_state(pod: Pod, container: str) -> ContainerState:
    """The current instance of ``container`` in ``pod`` (from its status)."""
    statuses = pod.status.containerStatuses if pod.status else None
    for status in statuses or []:
        if status.name != container:
            continue
        state = status.state
        if state is not None and state.running is not None:
            phase: ContainerPhase = "running"
        elif state is not None and state.terminated is not None:
            phase = "terminated"
        else:
            phase = "waiting"
        return ContainerState(status.containerID or None, phase)
    return ContainerState(None, "waiting")


def container_names(pod: Pod, only: str | None = None) -> list[str]:
    names = [c.name for c in pod.spec.containers] if pod.spec else []
    return [n for n in names if only is None or n == only]


@dataclass
class _PodFollow:
    """The follows of one pod (one uid): its latest state, and a signal when it changes."""

    name: str
    uid: str
    pod: Pod
    tail_ids: dict[str, str]
    """Container -> instance already running when the follower started (shown from ``tail_lines``)."""
    gone: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def update(self, pod: Pod | None) -> None:
        if pod is None:
            self.gone = True
        else:
            self.pod = pod
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def wait_changed(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout_s)


class LogFollower:
    """Deliver every line of every container of the pods matching ``selector`` to ``on_line``.

    ``on_line`` may be a plain function or a coroutine function; it is awaited
    before the next line of the same container is read (back-pressure).
    ``container`` restricts the follow to one container name.
    """

    def __init__(
        self,
        conn: ClusterConnection,
        *,
        namespace: str,
        selector: Mapping[str, str],
        service_name: str,
        on_line: OnLine,
        container: str | None = None,
        tail_lines: int = 0,
    ) -> None:
        if not selector:
            raise ValueError("an empty label selector would follow every pod in the namespace")
        self._conn = conn
        self._namespace = namespace
        self._selector = dict(selector)
        self._service = service_name
        self._on_line = on_line
        self._container = container
        self._tail_lines = tail_lines
        self._pods: dict[str, _PodFollow] = {}  # by pod name
        self._leaving: dict[str, _PodFollow] = {}  # by uid: pods gone from the API, follows still reading
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def following(self) -> frozenset[tuple[str, str]]:
        """(pod, container) pairs being followed now."""
        return frozenset(
            (follow.name, container)
            for follow in [*self._pods.values(), *self._leaving.values()]
            for container, task in follow.tasks.items()
            if not task.done()
        )

    async def run(self) -> None:
        """Follow until cancelled."""
        client = self._conn.client()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                first = True
                async for snapshot in watch_pods(
                    client, namespace=self._namespace, labels=self._selector, on_error=self._note_error
                ):
                    self._reconcile(client, snapshot, first_list=first)
                    first = False
        finally:
            self._tg = None
            await client.close()

    async def __aenter__(self) -> LogFollower:
        self._task = asyncio.create_task(self.run(), name=f"logs-{self._service}")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    # ---- which pods -----------------------------------------------------

    def _reconcile(self, client: AsyncClient, snapshot: PodSnapshot, *, first_list: bool) -> None:
        for name, follow in list(self._pods.items()):
            pod = snapshot.get(name)
            if pod is None or _uid(pod) != follow.uid:
                self._forget(name, follow)
        for name, pod in snapshot.items():
            known = self._pods.get(name)
            if known is not None:
                known.update(pod)
                continue
            tail_ids = {}
            if first_list:
                for container in container_names(pod, self._container):
                    state = container_state(pod, container)
                    if state.phase == "running" and state.container_id:
                        tail_ids[container] = state.container_id
            follow = _PodFollow(name=name, uid=_uid(pod), pod=pod, tail_ids=tail_ids)
            self._pods[name] = follow
            assert self._tg is not None
            for container in container_names(pod, self._container):
                follow.tasks[container] = self._tg.create_task(
                    self._follow(client, follow, container), name=f"logs-{name}-{container}"
                )

    def _forget(self, name: str, follow: _PodFollow) -> None:
        """The pod is gone: let its follows finish reading, then make sure they end."""
        del self._pods[name]
        follow.update(None)
        self._leaving[follow.uid] = follow
        loop = asyncio.get_running_loop()
        for task in follow.tasks.values():
            handle = loop.call_later(_GONE_GRACE_S, task.cancel)
            task.add_done_callback(self._ended(follow, handle))

    def _ended(self, follow: _PodFollow, handle: asyncio.TimerHandle) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            handle.cancel()
            if all(task.done() for task in follow.tasks.values()):
                self._leaving.pop(follow.uid, None)

        return done

    # ---- one container --------------------------------------------------

    async def _follow(self, client: AsyncClient, follow: _PodFollow, container: str) -> None:
        cursor = LogCursor()
        finished: set[str] = set()  # instances read to their end
        started_ns: int | None = None  # when the first request for lines was made
        while not follow.gone:
            state = container_state(follow.pod, container)
            if state.container_id is None or state.phase == "waiting" or state.container_id in finished:
                await follow.wait_changed(2.0)
                continue
            tail: int | None = None
            since = cursor.since_seconds(time.time_ns())
            if since is None and started_ns is not None:
                since = max(1, (time.time_ns() - started_ns) // 1_000_000_000 + 2)
            if started_ns is None:
                started_ns = time.time_ns()
                if follow.tail_ids.get(container) == state.container_id:
                    tail = self._tail_lines
            try:
                await self._read(client, follow, container, cursor, since=since, tail=tail)
            except Exception as err:  # the container is not started yet, or the pod is going
                self._note_error(f"logs of {follow.name}/{container}: {err}")
                await follow.wait_changed(_RETRY_S)
                continue
            # The kubelet ended the follow: the container exited, or the connection dropped.
            now = container_state(follow.pod, container)
            if now.phase == "terminated" and now.container_id:
                finished.add(now.container_id)
            elif now == state:
                await follow.wait_changed(_RECHECK_S)  # status may lag behind the exit

    async def _read(
        self,
        client: AsyncClient,
        follow: _PodFollow,
        container: str,
        cursor: LogCursor,
        *,
        since: int | None,
        tail: int | None,
    ) -> None:
        last_at: datetime | None = None
        lines = client.log(
            follow.name,
            namespace=self._namespace,
            container=container,
            follow=True,
            timestamps=True,
            since=since,
            tail_lines=tail,
            newlines=False,
        )
        async for raw in lines:
            stamped = parse_timestamped(raw)
            if stamped is None:
                # A piece of the previous line (the HTTP reader also splits on a bare "\r"):
                # delivered with it, or skipped with it.
                if last_at is None:
                    continue
                text, at = raw, last_at
            elif not cursor.accept(stamped.ns, stamped.text):
                last_at = None
                continue
            else:
                text, at = stamped.text, stamped.at
            last_at = at
            line = LogLine(service=self._service, pod=follow.name, container=container, text=text, timestamp=at)
            delivered = self._on_line(line)
            if inspect.isawaitable(delivered):
                await delivered

    def _note_error(self, message: str) -> None:
        self.last_error = message


def _uid(pod: Pod) -> str:
    return (pod.metadata.uid if pod.metadata else None) or ""
