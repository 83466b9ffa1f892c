"""The one store of `innerloop up`'s state, read by the terminal, the local API, the dashboard and tests.

Every long-running thing (a service's deploy, its sync session, a
port-forward, a log stream, the alert watcher) reports into the store; readers
take snapshots or subscribe. Like Tilt's engine, state has one owner and many
readers, and it is plain data (JSON-ready), so `innerloop status` in another
terminal and the dashboard see exactly what `up` sees.

Four kinds of record:

- each service's status (phase, image, replicas, sync counts, forwards,
  intercepts, whether its sync is paused);
- log lines (the last ``log_lines``);
- the timeline: what happened, in order (save, synced, restarted, built,
  deployed, crashed, alert, cleared...), the last ``timeline_events``;
- alerts: raised once per key while their cause lasts, cleared when it ends;
  cleared ones are kept (the last ``cleared_alerts``), so none is lost while
  no reader watches.

``subscribe()`` gives a queue of :class:`Change` records, one per status
update, log line, timeline event and alert change, in order: the feed the
local API and the dashboard stream. ``actions`` is how a reader asks `up` to
do something (restart a service's process, rebuild it, pause or resume its
sync); `up` registers the handlers.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class ReplicaStatus:
    """One pod of a service, as its sync link sees it."""

    pod: str
    state: str = "connecting"  # connecting | syncing | in sync | reconnecting
    syncs: int = 0
    files_synced: int = 0
    last_sync_ms: float | None = None
    last_restart_ms: float | None = None
    synced_at: float | None = None  # when its last batch (or the initial sync) finished
    message: str = ""


@dataclass
class ServiceStatus:
    name: str
    phase: str = "pending"  # pending | building | deploying | running | syncing | error
    pod: str = ""
    message: str = ""
    image: str = ""
    syncs: int = 0
    files_synced: int = 0
    last_sync_ms: float | None = None
    last_restart_ms: float | None = None
    forwards: list[str] = field(default_factory=list)
    replicas: dict[str, ReplicaStatus] = field(default_factory=dict)  # by pod name, dev-mode services only
    sync_paused: bool = False
    intercepts: list[str] = field(default_factory=list)  # who intercepts it (header rules, or "global")
    debug: str = ""  # "python on 127.0.0.1:5678" while a debugger port is forwarded
    dev_mode: bool = False  # its process runs under the agent: sync, restart and pause apply
    updated_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class LogEntry:
    service: str
    pod: str
    text: str
    at: float


@dataclass(frozen=True)
class TimelineEvent:
    """One thing that happened: ``kind`` is save, synced, restarted, built, deployed, crashed, alert, cleared..."""

    service: str
    kind: str
    message: str
    at: float
    pod: str = ""
    exit_code: int | None = None  # for exited/crashed: the app's code (negative: killed by that signal)
    seq: int = 0


@dataclass
class Alert:
    """Something wrong, raised once per ``key`` while its cause lasts."""

    key: str  # what makes it one alert: kind + service + pod (+ container), as the raiser chooses
    service: str
    kind: str  # crashed, oom-killed, crash-loop, probe-failed, image-pull, unschedulable, evicted, ...
    cause: str  # what happened, in one line (exit code, last log lines, the scheduler's reason)
    hint: str  # what to do
    pod: str = ""
    raised_at: float = field(default_factory=time.time)
    cleared_at: float | None = None
    count: int = 1  # how often the cause recurred while raised (one alert, not a flood)
    details: list[str] = field(default_factory=list)  # e.g. the last log lines before a crash
    seq: int = 0

    @property
    def active(self) -> bool:
        return self.cleared_at is None


ChangeKind = Literal["status", "log", "event", "alert"]


@dataclass(frozen=True)
class Change:
    """One entry of the feed: a service's new status, a log line, a timeline event, or an alert raised/cleared."""

    kind: ChangeKind
    data: dict[str, Any]
    seq: int


Action = Literal["restart", "rebuild", "pause", "resume"]
ActionHandler = Callable[[str], Awaitable[str]]  # service -> what was done, in one line


class ActionError(Exception):
    """An action that cannot be done (unknown service, not in dev mode...): the message says why."""


SUBSCRIBER_BACKLOG = 10_000


class Store:
    def __init__(
        self,
        *,
        project: str,
        namespace: str,
        log_lines: int = 2000,
        timeline_events: int = 1000,
        cleared_alerts: int = 200,
    ) -> None:
        self.project = project
        self.namespace = namespace
        self.services: dict[str, ServiceStatus] = {}
        self._logs: collections.deque[LogEntry] = collections.deque(maxlen=log_lines)
        self._subscribers: set[asyncio.Queue[Change]] = set()
        self._seq = itertools.count(1)
        self.timeline: collections.deque[TimelineEvent] = collections.deque(maxlen=timeline_events)
        self.alerts: dict[str, Alert] = {}  # active, by key
        self.cleared: collections.deque[Alert] = collections.deque(maxlen=cleared_alerts)
        self.actions: dict[str, ActionHandler] = {}  # by Action, registered by `up`
        self.on_alert: list[Callable[[Alert], None]] = []  # the terminal, desktop notifications
        self.on_alert_cleared: list[Callable[[Alert], None]] = []  # the terminal's "cleared" line
        self.changed = asyncio.Event()

    def service(self, name: str) -> ServiceStatus:
        return self.services.setdefault(name, ServiceStatus(name=name))

    def update(self, name: str, **changes: Any) -> None:  # noqa: ANN401 - fields of ServiceStatus
        status = self.service(name)
        for key, value in changes.items():
            setattr(status, key, value)
        status.updated_at = time.time()
        self.changed.set()
        self.changed = asyncio.Event()
        if self._subscribers:  # every sync updates the store: no copy for a feed no one reads
            self._publish("status", asdict(status))

    # -- the feed ---------------------------------------------------------------

    def _publish(self, kind: ChangeKind, data: dict[str, Any]) -> int:
        seq = next(self._seq)
        change = Change(kind=kind, data=data, seq=seq)
        for queue in self._subscribers:
            if queue.qsize() < SUBSCRIBER_BACKLOG:  # a stuck reader loses its feed, never `up`'s memory
                queue.put_nowait(change)
        return seq

    def subscribe(self) -> asyncio.Queue[Change]:
        """Every change from now on (read :meth:`snapshot` after subscribing, so nothing falls between)."""
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None:
        self._subscribers.discard(queue)

    # -- the timeline -----------------------------------------------------------

    def record(
        self, service: str, kind: str, message: str, *, pod: str = "", exit_code: int | None = None
    ) -> TimelineEvent:
        """Add to the timeline: what happened to ``service`` (``kind``: save, synced, restarted, built...)."""
        event = TimelineEvent(service=service, kind=kind, message=message, at=time.time(), pod=pod, exit_code=exit_code)
        event = dataclasses.replace(event, seq=self._publish("event", asdict(event)))
        self.timeline.append(event)
        return event

    # -- alerts -----------------------------------------------------------------

    def raise_alert(self, alert: Alert) -> Alert | None:
        """Raise ``alert`` once: None (and a higher count) if one with its key is raised already."""
        current = self.alerts.get(alert.key)
        if current is not None:
            current.count += 1
            if alert.details:
                current.details = alert.details
            return None
        self.alerts[alert.key] = alert
        alert.seq = self._publish("alert", {**asdict(alert), "active": True})
        self.record(alert.service, "alert", f"{alert.kind}: {alert.cause}")
        for notify in self.on_alert:
            notify(alert)
        return alert

    def clear_alert(self, key: str, why: str = "") -> Alert | None:
        """The cause is gone: the alert is cleared (kept among the cleared ones); None if none was raised."""
        alert = self.alerts.pop(key, None)
        if alert is None:
            return None
        alert.cleared_at = time.time()
        self.cleared.append(alert)
        self._publish("alert", {**asdict(alert), "active": False})
        self.record(alert.service, "cleared", f"{alert.kind}: {why or 'the cause is gone'}")
        for notify in self.on_alert_cleared:
            notify(alert)
        return alert

    def clear_alerts(
        self, *, service: str, kinds: set[str] | None = None, pod: str | None = None, why: str = ""
    ) -> None:
        """Clear every alert of ``service`` (of ``kinds``, of ``pod``) that is raised."""
        for key, alert in list(self.alerts.items()):
            if alert.service != service or (kinds is not None and alert.kind not in kinds):
                continue
            if pod is not None and alert.pod != pod:
                continue
            self.clear_alert(key, why)

    def active_alerts(self, service: str | None = None) -> list[Alert]:
        return [a for a in self.alerts.values() if service is None or a.service == service]

    # -- actions ----------------------------------------------------------------

    async def act(self, action: str, service: str) -> str:
        """Do ``action`` for ``service`` through `up`'s handler; ActionError says why it cannot be done."""
        if service not in self.services:
            raise ActionError(f"no service {service!r} (services: {', '.join(sorted(self.services))})")
        handler = self.actions.get(action)
        if handler is None:
            known = ", ".join(sorted(self.actions)) or "none"
            raise ActionError(f"unknown action {action!r} (actions: {known})")
        return await handler(service)

    def replica(self, service: str, pod: str) -> ReplicaStatus:
        return self.service(service).replicas.setdefault(pod, ReplicaStatus(pod=pod))

    def update_replica(self, service: str, pod: str, **changes: Any) -> None:  # noqa: ANN401 - fields of ReplicaStatus
        replica = self.replica(service, pod)
        for key, value in changes.items():
            setattr(replica, key, value)
        self.update(service)

    def drop_replica(self, service: str, pod: str) -> None:
        status = self.service(service)
        status.replicas.pop(pod, None)
        if status.pod == pod:
            status.pod = next(iter(status.replicas), "")
        self.update(service)

    def log(self, service: str, pod: str, text: str) -> LogEntry:
        entry = LogEntry(service=service, pod=pod, text=text, at=time.time())
        self._logs.append(entry)
        if self._subscribers:
            self._publish("log", asdict(entry))
        return entry

    def recent_logs(self, service: str | None = None) -> list[LogEntry]:
        return [e for e in self._logs if service is None or e.service == service]

    def snapshot(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "namespace": self.namespace,
            "services": {name: asdict(s) for name, s in sorted(self.services.items())},
            "alerts": [{**asdict(a), "active": True} for a in self.alerts.values()],
            "cleared": [{**asdict(a), "active": False} for a in self.cleared],
            "actions": sorted(self.actions),
        }

    def recent_timeline(self, service: str | None = None) -> list[TimelineEvent]:
        return [e for e in self.timeline if service is None or e.service == service]
