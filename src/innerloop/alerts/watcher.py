"""The alert watcher: one task per `innerloop up` that feeds the pure rules and raises and clears alerts.

Inputs, each in its own task under one TaskGroup:

- each service's pods, as whole snapshots (:func:`innerloop.k8s.watching.watch_pods`,
  the same watch the forwards and log followers use), judged by
  :func:`innerloop.alerts.pods.pod_alerts` on every change and on a tick
  (some conditions are about time: not ready *for long*);
- the namespace's ``Unhealthy`` Events, for the probe's own words ("HTTP
  probe failed with statuscode: 500"); pods alone say only "not ready";
- the namespace's Deployments, for a rollout that does not progress;
- the store's feed: log lines (app errors, :mod:`innerloop.alerts.logs`),
  the timeline (a dev-mode app's exit, syncs and restarts that clear
  errors and start the cross-service window).

Everything it raises it also clears: a pod rule's alert when no snapshot
returns it, an app error at the service's next sync or restart or after
``quiet_s`` without errors, a dev-mode crash when the app starts again.

A refusal to watch Events (403: the Role lacks ``events``) is said once, in
one line naming the right, and the watcher goes on with pods only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Event, Pod

from innerloop.alerts.cross import SyncBlame
from innerloop.alerts.exits import exit_alert
from innerloop.alerts.logs import ErrorScanner, app_error_alert, app_error_key
from innerloop.alerts.pods import ProbeFailure, blocking, pod_alerts, probe_failure, rollout_alerts
from innerloop.k8s.connection import ClusterConnection
from innerloop.k8s.watching import REFUSALS, watch_pods
from innerloop.status.store import Alert, Change, Store, TimelineEvent

TICK_S = 0.25
BLOCK_QUIET_S = 0.3  # an open error block (a stack trace) ends after this long without a line
CRASH_LINES_WAIT_S = 0.5  # a dev-mode crash waits this long for its last lines to arrive
# A new app error waits this long before it is raised: when the process exits with it (a traceback,
# then the crash), the one crash alert carries the lines, rather than two alerts for one cause.
ERROR_HOLD_S = 0.6
QUIET_S = 120.0  # an app error clears after this long without another (or at the next sync)
STUCK_NOT_READY_S = 30.0  # how long `up` waits on a failing readiness probe before it goes on
CLEARING_EVENTS = frozenset({"synced", "restarted"})

Report = Callable[[str], None]


@dataclass(frozen=True)
class WatchedService:
    """What the watcher needs of one service: its pods, its workload, its log patterns."""

    name: str
    selector: Mapping[str, str]
    workload_kind: str = ""
    workload_name: str = ""
    errors: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    builtin: bool = True


@dataclass
class _Stream:
    scanner: ErrorScanner
    last_line: float = 0.0


@dataclass
class _Service:
    spec: WatchedService
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    raised: set[str] = field(default_factory=set)  # keys of pod rules raised
    rollout: dict[str, Any] | None = None
    rollout_raised: set[str] = field(default_factory=set)
    streams: dict[str, _Stream] = field(default_factory=dict)  # by pod
    last_error: float = 0.0


class AlertWatcher:
    def __init__(
        self,
        *,
        conn: ClusterConnection,
        namespace: str,
        store: Store,
        services: Iterable[WatchedService],
        report: Report,
        quiet_s: float = QUIET_S,
    ) -> None:
        self.conn = conn
        self.namespace = namespace
        self.store = store
        self.report = report
        self.quiet_s = quiet_s
        self.services = {s.name: _Service(s) for s in services}
        self.probes: dict[str, dict[tuple[str, str], ProbeFailure]] = {}  # pod -> (container, probe) -> latest
        self.blame = SyncBlame()
        self.pending_exits: list[tuple[float, TimelineEvent]] = []
        self.pending_errors: dict[tuple[str, str], tuple[float, Alert]] = {}  # (service, pod) -> (due, alert)
        self.events_listed = False  # the Unhealthy events were read once (or refused)

    # -- raising and clearing (every alert goes through here, for the cross-service rule) --

    def _raise(self, alert: Alert) -> None:
        before = [a for a in self.store.active_alerts(alert.service) if a.key != alert.key]
        if self.store.raise_alert(alert) is None:
            return
        blame = self.blame.failing(alert, at=alert.raised_at, failing_before=before)
        if blame is not None:
            self.store.raise_alert(blame)

    def _clear(self, key: str, why: str) -> None:
        alert = self.store.clear_alert(key, why)
        if alert is None:
            return
        blame = self.blame.recovered(alert.service, still_failing=self.store.active_alerts(alert.service))
        if blame is not None:
            self.store.clear_alert(blame, f"{alert.service} recovered")

    # -- the pure rules, applied ------------------------------------------------

    def _last_lines(self, service: str, pod: str) -> list[str]:
        return [e.text for e in self.store.recent_logs(service) if e.pod == pod][-10:]

    def judge(self, name: str, now: float | None = None) -> None:
        """Apply the pod and rollout rules to what is known of ``name``'s pods: raise and clear."""
        svc = self.services[name]
        now = time.time() if now is None else now
        holding: dict[str, Alert] = {}
        for pod_name, pod in svc.pods.items():
            probes = list(self.probes.get(pod_name, {}).values())
            for alert in pod_alerts(
                pod, service=name, now=now, probes=probes, last_lines=self._last_lines(name, pod_name)
            ):
                if self.events_listed or not alert.key.endswith("/readiness"):
                    holding[alert.key] = alert  # (not before the probe's own words are known)
        for key in sorted(svc.raised - holding.keys()):
            self._clear(key, "the pod is gone" if key.split("/")[2] not in svc.pods else "it runs again")
        for key, alert in holding.items():
            if key not in self.store.alerts:
                self._raise(alert)
        svc.raised = set(holding)
        rollout = {a.key: a for a in rollout_alerts(svc.rollout, service=name)} if svc.rollout else {}
        for key in sorted(svc.rollout_raised - rollout.keys()):
            self._clear(key, "the rollout progresses")
        for key, alert in rollout.items():
            if key not in self.store.alerts:
                self._raise(alert)
        svc.rollout_raised = set(rollout)

    def on_log(self, service: str, pod: str, text: str, at: float) -> None:
        svc = self.services.get(service)
        if svc is None:
            return
        stream = svc.streams.get(pod)
        if stream is None:
            spec = svc.spec
            scanner = ErrorScanner(errors=spec.errors, ignore=spec.ignore, builtin=spec.builtin)
            stream = svc.streams[pod] = _Stream(scanner)
        stream.last_line = at
        for error in stream.scanner.feed(text):
            self._app_error(service, pod, app_error_alert(error, service=service, pod=pod), at)

    def _crashed(self, service: str, pod: str) -> bool:
        """A crash of that pod's process is raised (or waits for its last lines) now."""
        if any(e.service == service and e.pod == pod and e.exit_code for _, e in self.pending_exits):
            return True
        return any(a.kind == "crashed" and a.pod == pod for a in self.store.active_alerts(service))

    def _app_error(self, service: str, pod: str, alert: Alert, at: float) -> None:
        self.services[service].last_error = at
        current = self.store.alerts.get(alert.key)
        if current is not None:
            self.store.raise_alert(alert)  # counted, and its lines updated
            return
        self.pending_errors.setdefault((service, pod), (at + ERROR_HOLD_S, alert))

    def on_event(self, event: TimelineEvent) -> None:
        if event.service not in self.services:
            return
        if event.kind in CLEARING_EVENTS:
            for key in self.blame.synced(event.service, event.at):
                self._clear(key, f"{event.service} was synced again")
            self._clear(app_error_key(event.service), f"{event.kind} since")
            for where in [w for w in self.pending_errors if w[0] == event.service]:
                del self.pending_errors[where]  # an error from before the sync: the sync is what counts now
        if event.kind in ("restarted", "started"):
            for alert in self.store.active_alerts(event.service):
                if alert.kind == "crashed" and alert.key.endswith("/process"):
                    self._clear(alert.key, "the app started again")
        elif event.kind == "exited":
            if event.exit_code:  # the crash alert will carry the error's lines: one alert for one cause
                self.pending_errors.pop((event.service, event.pod), None)
            self.pending_exits.append((time.monotonic() + CRASH_LINES_WAIT_S, event))

    def tick(self, now: float | None = None) -> None:
        """Time-based work: end quiet error blocks, raise waiting crashes, clear quiet errors, re-judge pods."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        due = [e for deadline, e in self.pending_exits if deadline <= mono]
        self.pending_exits = [(d, e) for d, e in self.pending_exits if d > mono]
        for event in due:
            alert = exit_alert(event, last_lines=self._last_lines(event.service, event.pod))
            if alert is not None:
                self._raise(alert)
        for where, (due_at, held) in list(self.pending_errors.items()):
            if due_at <= now:
                del self.pending_errors[where]
                if not self._crashed(*where):  # its lines reached us after the exit: the crash carries them
                    self._raise(held)
        for name, svc in self.services.items():
            for pod, stream in svc.streams.items():
                if stream.scanner.pending and now - stream.last_line >= BLOCK_QUIET_S:
                    for error in stream.scanner.flush():
                        self._app_error(name, pod, app_error_alert(error, service=name, pod=pod), now)
            key = app_error_key(name)
            if key in self.store.alerts and now - svc.last_error >= self.quiet_s:
                self._clear(key, f"no error for {self.quiet_s:.0f} s")
            self.judge(name, now)

    # -- the I/O edges ----------------------------------------------------------

    async def run(self) -> None:
        feed = self.store.subscribe()
        client = self.conn.client()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_feed(feed), name="alerts-feed")
                for name in self.services:
                    tg.create_task(self._watch_pods(client, name), name=f"alerts-pods-{name}")
                tg.create_task(self._watch_probes(client), name="alerts-events")
                if any(s.spec.workload_kind == "Deployment" for s in self.services.values()):
                    tg.create_task(self._watch_rollouts(client), name="alerts-rollouts")
                tg.create_task(self._tick(), name="alerts-tick")
        finally:
            self.store.unsubscribe(feed)
            await client.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()

    async def _read_feed(self, feed: asyncio.Queue[Change]) -> None:
        while True:
            change = await feed.get()
            data = change.data
            if change.kind == "log":
                self.on_log(data["service"], data["pod"], data["text"], data["at"])
            elif change.kind == "event":
                self.on_event(TimelineEvent(**data))

    async def _watch_pods(self, client: AsyncClient, name: str) -> None:
        svc = self.services[name]
        try:
            async for snapshot in watch_pods(client, namespace=self.namespace, labels=svc.spec.selector):
                svc.pods = {pod_name: pod.to_dict() for pod_name, pod in snapshot.items()}
                self.judge(name)
        except ApiError as err:  # a refusal: the forwards and log followers say so too
            self.report(f"alerts: {name}: cannot watch its pods: {err.status.message}")

    async def _watch_probes(self, client: AsyncClient) -> None:
        async for event in self._watch(client, Event, fields={"reason": "Unhealthy"}, what="events"):
            if event is None:  # listed (or refused): readiness alerts may now be raised, with the probe's words
                self.events_listed = True
                for name in self.services:
                    self.judge(name)
                continue
            failure = probe_failure(event)
            pod = str((event.get("involvedObject") or {}).get("name") or "")
            if failure is None or not pod:
                continue
            known = self.probes.setdefault(pod, {})
            slot = (failure.container, failure.probe)
            if slot not in known or known[slot].at <= failure.at:
                known[slot] = failure
            for name, svc in self.services.items():
                if pod in svc.pods:
                    self.judge(name)

    async def _watch_rollouts(self, client: AsyncClient) -> None:
        by_workload = {s.spec.workload_name: s for s in self.services.values() if s.spec.workload_kind == "Deployment"}
        async for workload in self._watch(client, Deployment, what="deployments"):
            if workload is None:
                continue
            svc = by_workload.get(str((workload.get("metadata") or {}).get("name")))
            if svc is not None:
                svc.rollout = {**workload, "kind": "Deployment"}
                self.judge(svc.spec.name)

    async def _watch(
        self,
        client: AsyncClient,
        res: type[Event] | type[Deployment],
        *,
        what: str,
        fields: Mapping[str, str] | None = None,
    ) -> AsyncIterator[dict[str, Any] | None]:
        """The namespace's objects (JSON): listed, then None, then changes; listed again after an error.

        A refusal (401, 403) is said once and ends it (after a None: nothing more will come).
        """
        delay = 0.1
        selected: dict[str, Any] | None = dict(fields) if fields else None
        while True:
            try:
                listing = client.list(res, namespace=self.namespace, fields=selected)
                async for obj in listing:
                    yield obj.to_dict()
                yield None
                async for kind, obj in client.watch(
                    res, namespace=self.namespace, fields=selected, resource_version=listing.resourceVersion
                ):
                    delay = 0.1
                    if kind != "DELETED":
                        yield obj.to_dict()
            except ApiError as err:
                if err.status.code in REFUSALS:
                    self.report(
                        f"alerts: cannot watch {what} in {self.namespace} ({err.status.message}); "
                        f"alerts from {what} are off: grant get, list, watch on {what} "
                        "(docs/rbac/innerloop-developer.yaml)"
                    )
                    yield None
                    return
            except Exception:  # a dropped watch heals by watching again, as k8s/watching.py does
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def wait_unless_stuck(
    rollout: Coroutine[Any, Any, None],
    *,
    client: AsyncClient,
    namespace: str,
    selector: Mapping[str, str],
    service: str,
    poll_s: float = 1.0,
    not_ready_patience_s: float = STUCK_NOT_READY_S,
) -> Alert | None:
    """Wait for ``rollout``, unless the service's pods show it cannot finish by itself: that alert, then.

    A missing image, an unschedulable pod, a crash loop never heal while
    `up` waits, so `up` goes on and the alert says what to fix; a readiness
    probe gets ``not_ready_patience_s`` first (apps that start slowly).
    """
    latest: dict[str, Pod] = {}

    async def follow() -> None:  # the one pod watch (k8s/watching.py), not a list per check
        async for snapshot in watch_pods(client, namespace=namespace, labels=selector):
            latest.clear()
            latest.update(snapshot)

    waiting = asyncio.ensure_future(rollout)
    pods_task = asyncio.ensure_future(follow())
    first_seen: dict[str, float] = {}
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=poll_s)
            if done:
                waiting.result()
                return None
            if pods_task.done():
                pods_task.result()  # the watch was refused: that error, as a list would have raised it
            now = time.time()
            pods = [p.to_dict() for p in latest.values()]
            found = [a for pod in pods for a in pod_alerts(pod, service=service, now=now)]
            for alert in found:
                first_seen.setdefault(alert.key, now)
            patient = [a for a in found if a.kind != "probe-failed" or now - first_seen[a.key] >= not_ready_patience_s]
            stuck = blocking(patient)
            if stuck is not None:
                return stuck
    finally:
        for task in (waiting, pods_task):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
