"""The watcher's decisions (raise once, clear when the cause ends, blame a sync) driven without a cluster."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

from innerloop.alerts.pods import parse_time
from innerloop.alerts.watcher import AlertWatcher, WatchedService
from innerloop.k8s.connection import ClusterConnection
from innerloop.status.store import Alert, Store

FIXTURES = Path(__file__).parent / "fixtures"


def _pod(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def _watcher(*names: str) -> tuple[AlertWatcher, Store]:
    store = Store(project="shop", namespace="dev")
    watcher = AlertWatcher(
        conn=cast(ClusterConnection, None),  # the I/O edge is not used here
        namespace="dev",
        store=store,
        services=[WatchedService(name=n, selector={"app": n}) for n in names],
        report=lambda _m: None,
        quiet_s=60,
    )
    return watcher, store


def _active(store: Store) -> list[tuple[str, str]]:
    return sorted((a.service, a.kind) for a in store.active_alerts())


def test_a_pod_alert_is_raised_once_over_many_judgements_and_cleared_when_the_pod_is_gone() -> None:
    watcher, store = _watcher("search")
    watcher.services["search"].pods = {"missing": _pod("pod-missing.json")}
    for _ in range(3):
        watcher.judge("search", now=2e9)
    assert _active(store) == [("search", "image-pull")]
    assert store.alerts["image-pull/search/missing/app"].count == 1
    watcher.services["search"].pods = {}
    watcher.judge("search", now=2e9)
    assert _active(store) == []
    assert store.cleared[-1].kind == "image-pull"
    assert store.timeline[-1].message == "image-pull: the pod is gone"


def test_a_traceback_in_the_logs_raises_and_the_next_sync_clears_it() -> None:
    watcher, store = _watcher("orders")
    now = time.time()
    for line in ["Traceback (most recent call last):", '  File "/app/app.py", line 3', "KeyError: 'x'"]:
        watcher.on_log("orders", "orders-1", line, now)
    assert _active(store) == []  # held a moment: does the process exit with it?
    watcher.tick(now + 1)
    assert _active(store) == [("orders", "app-error")]
    watcher.on_log("orders", "orders-1", "ERROR again", now + 1)
    watcher.tick(now + 2)  # the quiet moment ends the open error line
    assert store.alerts["app-error/orders"].count == 2
    watcher.on_event(store.record("orders", "synced", "1 file"))
    assert _active(store) == []


def test_an_app_error_clears_after_the_quiet_period() -> None:
    watcher, store = _watcher("orders")
    now = time.time()
    watcher.on_log("orders", "orders-1", "level=error msg=boom", now)
    watcher.tick(now + 1)  # the line's block ends
    watcher.tick(now + 2)  # and its hold
    assert _active(store) == [("orders", "app-error")]
    watcher.tick(now + 59)
    assert _active(store) == [("orders", "app-error")]
    watcher.tick(now + 62)
    assert _active(store) == []


def test_a_dev_mode_exit_is_a_crash_with_its_last_lines_until_the_app_starts_again() -> None:
    watcher, store = _watcher("api")
    store.log("api", "api-1", "loading config")
    store.log("api", "api-1", "fatal: no DATABASE_URL")
    watcher.on_event(store.record("api", "exited", "the app exited", pod="api-1", exit_code=3))
    watcher.on_event(store.record("api", "exited", "clean", pod="api-1", exit_code=0))
    watcher.pending_exits = [(0.0, e) for _, e in watcher.pending_exits]  # due now
    watcher.tick()
    (alert,) = store.active_alerts()
    assert alert.kind == "crashed" and "exit 3" in alert.cause
    assert alert.details == ["loading config", "fatal: no DATABASE_URL"]
    watcher.on_event(store.record("api", "restarted", "after a sync", pod="api-1"))
    assert store.active_alerts() == []


def test_a_signal_exit_says_which_signal() -> None:
    watcher, store = _watcher("api")
    watcher.on_event(store.record("api", "exited", "killed", pod="api-1", exit_code=-9))
    watcher.pending_exits = [(0.0, e) for _, e in watcher.pending_exits]
    watcher.tick()
    (alert,) = store.active_alerts()
    assert "killed by SIGKILL" in alert.cause


def test_a_failure_after_another_services_sync_raises_one_blame_that_clears_with_the_failure() -> None:
    watcher, store = _watcher("api", "web")
    watcher.on_event(store.record("api", "synced", "1 file"))
    now = time.time()
    for line in ["Traceback (most recent call last):", '  File "/app/web.py", line 9', "KeyError: 'title'"]:
        watcher.on_log("web", "web-1", line, now)
    watcher.tick(now + 1)
    assert _active(store) == [("web", "app-error"), ("web", "broken-by-sync")]
    blame = store.alerts["broken-by-sync/web"]
    assert blame.cause.startswith("after your last sync of api (")
    assert blame.cause.endswith("web started failing: a Python traceback in the logs: KeyError: 'title'")
    watcher.on_event(store.record("web", "synced", "a fix"))
    assert _active(store) == []


def test_readiness_alert_raised_with_time_and_cleared_when_ready() -> None:
    watcher, store = _watcher("payments")
    pod = _pod("pod-notready.json")
    started = parse_time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]) or 0
    watcher.services["payments"].pods = {"notready": pod}
    watcher.judge("payments", now=started + 30)
    assert _active(store) == []  # not before the Events were read: the alert would lack the probe's words
    watcher.events_listed = True
    watcher.judge("payments", now=started + 2)
    assert _active(store) == []
    watcher.judge("payments", now=started + 30)
    assert _active(store) == [("payments", "probe-failed")]
    pod["status"]["containerStatuses"][0]["ready"] = True
    for cond in pod["status"]["conditions"]:
        cond["status"] = "True"
    watcher.judge("payments", now=started + 31)
    assert _active(store) == []
    assert isinstance(store.cleared[-1], Alert)


def test_a_traceback_the_process_exits_with_is_one_crash_alert_carrying_it() -> None:
    """One cause, one alert: the crash's details hold the traceback, no second app-error alert for it."""
    watcher, store = _watcher("api")
    now = time.time()
    for line in ["Traceback (most recent call last):", '  File "/app/app.py", line 54', "RuntimeError: no PRICES"]:
        store.log("api", "api-1", line)
        watcher.on_log("api", "api-1", line, now)
    watcher.on_event(store.record("api", "exited", "exited with code 1", pod="api-1", exit_code=1))
    watcher.pending_exits = [(0.0, e) for _, e in watcher.pending_exits]
    watcher.tick(now + 1)
    (alert,) = store.active_alerts()
    assert alert.kind == "crashed"
    assert alert.details[-1] == "RuntimeError: no PRICES"


def test_a_traceback_whose_lines_arrive_after_the_exit_is_still_one_crash_alert() -> None:
    """The exit comes through the agent at once; the log lines through the kubelet, later."""
    watcher, store = _watcher("api")
    now = time.time()
    watcher.on_event(store.record("api", "exited", "exited with code 1", pod="api-1", exit_code=1))
    for line in ["Traceback (most recent call last):", '  File "/app/app.py", line 54', "RuntimeError: no PRICES"]:
        store.log("api", "api-1", line)
        watcher.on_log("api", "api-1", line, now)
    watcher.pending_exits = [(0.0, e) for _, e in watcher.pending_exits]
    watcher.tick(now + 1)
    watcher.tick(now + 2)
    (alert,) = store.active_alerts()
    assert alert.kind == "crashed"
