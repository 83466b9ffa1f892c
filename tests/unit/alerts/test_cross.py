"""After a sync of one service, another one starting to fail is blamed on it, once."""

from __future__ import annotations

from innerloop.alerts.cross import SyncBlame
from innerloop.status.store import Alert


def _failure(service: str, at: float, kind: str = "app-error") -> Alert:
    return Alert(key=f"{kind}/{service}", service=service, kind=kind, cause="KeyError: 'title'", hint="", raised_at=at)


def test_a_failure_soon_after_another_services_sync_is_blamed_on_that_sync_once() -> None:
    blame = SyncBlame(window_s=30)
    blame.synced("api", 100.0)
    alert = blame.failing(_failure("web", 110.0), at=110.0, failing_before=[])
    assert alert is not None
    assert alert.key == "broken-by-sync/web" and alert.service == "web"
    assert alert.cause == "after your last sync of api (10 s before), web started failing: KeyError: 'title'"
    assert alert.details[0] == "app-error: KeyError: 'title'"
    assert blame.failing(_failure("web", 111.0, "probe-failed"), at=111.0, failing_before=[]) is None  # once


def test_the_most_recent_sync_is_blamed() -> None:
    blame = SyncBlame(window_s=30)
    blame.synced("orders", 100.0)
    blame.synced("api", 105.0)
    alert = blame.failing(_failure("web", 110.0), at=110.0, failing_before=[])
    assert alert is not None and "sync of api" in alert.cause


def test_no_blame_outside_the_window_for_the_synced_service_itself_or_when_it_failed_before() -> None:
    blame = SyncBlame(window_s=30)
    blame.synced("api", 100.0)
    assert blame.failing(_failure("web", 140.0), at=140.0, failing_before=[]) is None
    assert blame.failing(_failure("api", 101.0), at=101.0, failing_before=[]) is None
    earlier = _failure("web", 90.0, "probe-failed")
    assert blame.failing(_failure("web", 101.0), at=101.0, failing_before=[earlier]) is None


def test_kinds_that_are_not_failures_of_the_service_are_not_blamed() -> None:
    blame = SyncBlame(window_s=30)
    blame.synced("api", 100.0)
    assert blame.failing(_failure("web", 101.0, "unschedulable"), at=101.0, failing_before=[]) is None


def test_the_blame_ends_when_the_service_recovers_or_the_synced_one_is_synced_again() -> None:
    blame = SyncBlame(window_s=30)
    blame.synced("api", 100.0)
    assert blame.failing(_failure("web", 101.0), at=101.0, failing_before=[]) is not None
    assert blame.recovered("web", still_failing=[_failure("web", 102.0, "crashed")]) is None
    assert blame.recovered("web", still_failing=[]) == "broken-by-sync/web"
    assert blame.failing(_failure("web", 103.0), at=103.0, failing_before=[]) is not None
    assert blame.synced("api", 104.0) == ["broken-by-sync/web"]
