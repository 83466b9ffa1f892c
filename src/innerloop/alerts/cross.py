"""The alert the tool was asked for: "after your last sync of api, backend started failing".

A sync changes one service; the service that breaks is often another one
that calls it. :class:`SyncBlame` remembers each service's last sync (the
timeline's ``synced`` and ``restarted``), and when another service starts
failing (a new alert of a failing kind: app errors, crashes, probes) within
``window_s`` of a sync, it returns ONE alert on the failing service naming
the synced one, with the evidence. "Started": a service that was failing
already before the sync is not blamed on it. It clears when the failing
service has no failing alert left, or when the synced service is synced
again (a new change, judged afresh).

Pure: times are passed in, the store is not read.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from innerloop.status.store import Alert

WINDOW_S = 30.0
KIND = "broken-by-sync"
FAILING_KINDS = frozenset({"app-error", "crashed", "oom-killed", "crash-loop", "probe-failed"})


def blame_key(service: str) -> str:
    return f"{KIND}/{service}"


@dataclass(frozen=True)
class Sync:
    service: str
    at: float


class SyncBlame:
    def __init__(self, *, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.last: dict[str, Sync] = {}  # by synced service
        self.blamed: dict[str, str] = {}  # failing service -> the synced service it is blamed on

    def synced(self, service: str, at: float) -> list[str]:
        """``service`` was synced (or restarted) at ``at``: the keys of blame alerts this ends."""
        self.last[service] = Sync(service, at)
        ended = [failing for failing, synced in self.blamed.items() if synced == service]
        for failing in ended:
            del self.blamed[failing]
        return [blame_key(f) for f in ended]

    def failing(self, alert: Alert, *, at: float, failing_before: Collection[Alert]) -> Alert | None:
        """``alert`` was just raised; ``failing_before``: the service's other active alerts. One blame, or None."""
        service = alert.service
        if alert.kind not in FAILING_KINDS or service in self.blamed:
            return None
        candidates = [s for s in self.last.values() if s.service != service and 0 <= at - s.at <= self.window_s]
        if not candidates:
            return None
        sync = max(candidates, key=lambda s: s.at)
        if any(a.kind in FAILING_KINDS and a.raised_at < sync.at for a in failing_before):
            return None  # it was failing before that sync
        self.blamed[service] = sync.service
        return Alert(
            key=blame_key(service),
            service=service,
            kind=KIND,
            cause=f"after your last sync of {sync.service} ({at - sync.at:.0f} s before), {service} started "
            f"failing: {alert.cause}",
            hint=f"look at what that change to {sync.service} does to its callers (its responses, its API); "
            f"undo it and save to check, or `innerloop logs {service}`",
            details=[f"{alert.kind}: {alert.cause}", *alert.details],
        )

    def recovered(self, service: str, *, still_failing: Collection[Alert]) -> str | None:
        """One of ``service``'s alerts cleared: the blame key to clear when no failing alert is left."""
        if service in self.blamed and not any(a.kind in FAILING_KINDS for a in still_failing):
            del self.blamed[service]
            return blame_key(service)
        return None
