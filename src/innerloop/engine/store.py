"""The one store of `innerloop up`'s state, read by the terminal, the local API and tests.

Every long-running thing (a service's deploy, its sync session, a
port-forward, a log stream) reports into the store; readers take snapshots or
subscribe. Like Tilt's engine, state has one owner and many readers, and it is
plain data (JSON-ready), so `innerloop status` in another terminal sees
exactly what `up` sees.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any


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
    updated_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class LogEntry:
    service: str
    pod: str
    text: str
    at: float


class Store:
    def __init__(self, *, project: str, namespace: str, log_lines: int = 2000) -> None:
        self.project = project
        self.namespace = namespace
        self.services: dict[str, ServiceStatus] = {}
        self._logs: collections.deque[LogEntry] = collections.deque(maxlen=log_lines)
        self._log_subscribers: set[asyncio.Queue[LogEntry]] = set()
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

    def log(self, service: str, pod: str, text: str) -> None:
        entry = LogEntry(service=service, pod=pod, text=text, at=time.time())
        self._logs.append(entry)
        for queue in self._log_subscribers:
            if queue.qsize() < 10_000:
                queue.put_nowait(entry)

    def recent_logs(self, service: str | None = None) -> list[LogEntry]:
        return [e for e in self._logs if service is None or e.service == service]

    def subscribe_logs(self) -> asyncio.Queue[LogEntry]:
        queue: asyncio.Queue[LogEntry] = asyncio.Queue()
        self._log_subscribers.add(queue)
        return queue

    def unsubscribe_logs(self, queue: asyncio.Queue[LogEntry]) -> None:
        self._log_subscribers.discard(queue)

    def snapshot(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "namespace": self.namespace,
            "services": {name: asdict(s) for name, s in sorted(self.services.items())},
        }
