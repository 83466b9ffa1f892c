"""Pod rules on pods saved from the bundled cluster in each state (fixtures/: `kubectl get -o json`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from innerloop.alerts.pods import (
    CRASH_HOLD_S,
    NOT_READY_S,
    ProbeFailure,
    blocking,
    parse_time,
    pod_alerts,
    probe_failure,
    rollout_alerts,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def _probes(pod: str) -> list[ProbeFailure]:
    found = [probe_failure(e) for e in _json("events.json")["items"] if e["involvedObject"]["name"] == pod]
    return [f for f in found if f is not None]


def _latest_probe(pod: str) -> float:
    return max(p.at for p in _probes(pod))


def _kinds(pod: dict[str, Any], now: float, probes: list[ProbeFailure] = ()) -> dict[str, str]:  # type: ignore[assignment]
    return {a.kind: a.cause for a in pod_alerts(pod, service="shop", now=now, probes=probes, last_lines=["boom"])}


def test_oom_killed_names_the_limit_and_is_one_alert_not_a_crash_loop_too() -> None:
    pod = _json("pod-oom.json")
    alerts = pod_alerts(pod, service="cache", now=parse_time("2026-12-02T01:31:00Z") or 0, last_lines=["filling"])
    assert [a.kind for a in alerts] == ["oom-killed"]
    (oom,) = alerts
    assert oom.key == "oom-killed/cache/oom/app"
    assert "OOMKilled" in oom.cause and "limit of 32Mi" in oom.cause and "exit 137 (SIGKILL)" in oom.cause
    assert "limits.memory" in oom.hint
    assert oom.details == ["filling"]


def test_a_crash_loop_gives_the_restarts_and_the_last_exit_code() -> None:
    (alert,) = pod_alerts(_json("pod-crash.json"), service="worker", now=2e9, last_lines=["cannot connect to db"])
    assert alert.kind == "crash-loop"
    assert "CrashLoopBackOff after 3 restarts, last exit 3" in alert.cause
    assert alert.details == ["cannot connect to db"]


def test_a_container_that_exited_non_zero_and_stays_down_is_a_crash() -> None:
    (alert,) = pod_alerts(_json("pod-crashonce.json"), service="job", now=2e9)
    assert (alert.kind, alert.cause) == ("crashed", "app crashed (exit 3)")


def test_a_crash_stays_raised_a_moment_after_the_container_runs_again_then_clears() -> None:
    pod = _json("pod-crash.json")
    cs = pod["status"]["containerStatuses"][0]
    finished = parse_time(cs["lastState"]["terminated"]["finishedAt"]) or 0
    cs["state"] = {"running": {"startedAt": cs["lastState"]["terminated"]["finishedAt"]}}
    cs["ready"] = True
    assert _kinds(pod, finished + 1) == {"crashed": "app crashed (exit 3)"}
    assert _kinds(pod, finished + CRASH_HOLD_S + 1) == {}


def test_image_pull_failure_names_the_image_and_keeps_the_kubelets_message() -> None:
    (alert,) = pod_alerts(_json("pod-missing.json"), service="search", now=2e9)
    assert alert.kind == "image-pull"
    assert "192.0.2.2:5001/innerloop-test/missing:1" in alert.cause and "not found" in alert.cause
    assert "failed to resolve reference" in alert.details[0]


def test_unschedulable_gives_the_schedulers_reason_and_what_was_asked() -> None:
    (alert,) = pod_alerts(_json("pod-unschedulable.json"), service="reports", now=2e9)
    assert alert.kind == "unschedulable"
    assert alert.cause == "pod unschedulable cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
    assert "no node has that much cpu free" in alert.hint and "cpu 64" in alert.hint


def test_evicted_gives_the_kubelets_reason() -> None:
    (alert,) = pod_alerts(_json("pod-evicted.json"), service="batch", now=2e9)
    assert alert.kind == "evicted"
    assert "ephemeral local storage usage exceeds the total limit of containers 2Mi" in alert.cause


def test_not_ready_for_long_gives_the_probes_own_words_but_a_slow_start_is_no_alert() -> None:
    pod = _json("pod-notready.json")
    started = parse_time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]) or 0
    probes = _probes("notready")
    assert _kinds(pod, started + NOT_READY_S - 1, probes) == {}
    (alert,) = pod_alerts(pod, service="payments", now=_latest_probe("notready") + 1, probes=probes)
    assert alert.key == "probe-failed/payments/notready/app/readiness"
    assert alert.cause.endswith(": HTTP probe failed with statuscode: 404")


def test_ready_again_clears_the_readiness_alert() -> None:
    pod = copy.deepcopy(_json("pod-notready.json"))
    pod["status"]["containerStatuses"][0]["ready"] = True
    for cond in pod["status"]["conditions"]:
        cond["status"] = "True"
    assert _kinds(pod, _latest_probe("notready") + 1, _probes("notready")) == {}


def test_a_liveness_kill_is_a_probe_failure_not_a_crash_and_it_ages_out() -> None:
    pod = _json("pod-liveness-crashloop.json")
    probes = _probes("liveness")
    latest = _latest_probe("liveness")
    kinds = _kinds(pod, latest + 1, probes)
    assert list(kinds) == ["probe-failed"]
    assert (
        "liveness probe fails, so the kubelet restarts it: HTTP probe failed with statuscode: 404"
        in kinds["probe-failed"]
    )
    assert "probe-failed" not in _kinds(pod, latest + 3600, probes)


def test_a_pod_being_deleted_raises_nothing() -> None:
    pod = copy.deepcopy(_json("pod-crashonce.json"))
    pod["metadata"]["deletionTimestamp"] = "2026-12-02T01:40:00Z"
    assert pod_alerts(pod, service="job", now=2e9) == []


def test_probe_failure_reads_the_container_from_the_field_path() -> None:
    (failure, *_) = _probes("notready")
    assert (failure.probe, failure.container) == ("readiness", "app")
    other = {"reason": "Killing", "message": "Container app failed liveness probe"}
    assert probe_failure(other) is None


def test_a_deployment_past_its_progress_deadline() -> None:
    (alert,) = rollout_alerts(_json("deployment-stuck.json"), service="search")
    assert alert.kind == "rollout-stuck"
    assert "ProgressDeadlineExceeded" in alert.cause and "deployment/stuck" in alert.cause


@pytest.mark.parametrize(
    ("fixture", "stuck"),
    [
        ("pod-missing.json", "image-pull"),
        ("pod-unschedulable.json", "unschedulable"),
        ("pod-crash.json", "crash-loop"),
        ("pod-crashonce.json", None),
    ],
)
def test_what_stops_a_rollout_wait(fixture: str, stuck: str | None) -> None:
    found = blocking(pod_alerts(_json(fixture), service="s", now=2e9))
    assert (found.kind if found else None) == stuck


def test_a_liveness_check_that_failed_without_a_kill_raises_nothing() -> None:
    """A check failing while the agent restarts the app (a save) kills nothing: it was a false alert per save."""
    pod = copy.deepcopy(_json("pod-liveness-crashloop.json"))
    for status in pod["status"]["containerStatuses"]:
        status["lastState"] = {}
        status["restartCount"] = 0
        status["state"] = {"running": {"startedAt": "2026-12-02T01:00:00Z"}}
        status["ready"] = True
    probes = _probes("liveness")
    assert "probe-failed" not in _kinds(pod, _latest_probe("liveness") + 1, probes)
