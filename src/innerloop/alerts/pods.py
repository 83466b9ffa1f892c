"""What is wrong with a service's pods right now: pod (and Deployment) JSON -> the alerts that hold.

Level, not edge: the watcher calls :func:`pod_alerts` on every pod snapshot
(and on a tick, because "not ready for long" and "crashed a moment ago" are
about time) and raises what is returned, clearing what no longer is. So a
missed watch event can delay an alert but never leave a stale one, and an
alert clears by itself when its pod is gone, ready again or running again.

The shapes read are the API's JSON (``Pod.to_dict()``), the same as
``kubectl get pod -o json``; the unit tests run on pods saved from the
bundled cluster in each state.

Keys are ``kind/service/pod/container``: one alert per cause and place,
whatever the number of snapshots that show it.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from innerloop.status.store import Alert

NOT_READY_S = 10.0  # a running container whose readiness probe fails this long is an alert (not a slow start)
CRASH_HOLD_S = 15.0  # a crash stays raised this long after the container runs again, so a quick restart is seen
LIVENESS_HOLD_S = 30.0  # a liveness failure stays raised this long after its last event
KILL_AFTER_PROBE_S = 60.0  # a kill this long before the failure's last event counts (events are deduplicated)
DETAIL_LINES = 10  # log lines kept with a crash

PULL_FAILURES = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})

# Kinds this module raises: the watcher clears any of them that no snapshot returns any more.
POD_KINDS = frozenset(
    {"crashed", "oom-killed", "crash-loop", "image-pull", "unschedulable", "evicted", "probe-failed", "cannot-start"}
)
ROLLOUT_KINDS = frozenset({"rollout-stuck"})


@dataclass(frozen=True)
class ProbeFailure:
    """The kubelet's last ``Unhealthy`` event for one container of a pod."""

    probe: str  # readiness | liveness | startup
    container: str  # "" when the event names none
    message: str  # the kubelet's, without the "Readiness probe failed: " prefix
    at: float  # the event's last timestamp (epoch seconds)


UNHEALTHY = re.compile(r"^(Readiness|Liveness|Startup) probe failed: (.*)$", re.DOTALL)
FIELD_CONTAINER = re.compile(r"spec\.(?:init)?[cC]ontainers\{(.+)\}")


def probe_failure(event: Mapping[str, Any]) -> ProbeFailure | None:
    """An ``Unhealthy`` event (core/v1 Event JSON) as a probe failure; None for any other event."""
    if event.get("reason") != "Unhealthy":
        return None
    found = UNHEALTHY.match(str(event.get("message") or ""))
    if found is None:
        return None
    obj = event.get("involvedObject") or {}
    field = FIELD_CONTAINER.fullmatch(str(obj.get("fieldPath") or ""))
    stamp = (
        event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get("creationTimestamp")
    )
    return ProbeFailure(
        probe=found.group(1).lower(),
        container=field.group(1) if field else "",
        message=found.group(2).strip(),
        at=parse_time(stamp) or 0.0,
    )


def parse_time(value: object) -> float | None:
    """An API timestamp (RFC 3339 text, or the datetime lightkube may give) as epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def exit_text(code: int, reason: str = "") -> str:
    """``exit 1``, ``exit 137 (SIGKILL)``: a code past 128 is the signal that ended the process."""
    text = f"exit {code}"
    if code > 128:
        with contextlib.suppress(ValueError):
            text += f" ({signal.Signals(code - 128).name})"
    if reason and reason not in ("Error", "Completed"):
        text += f", {reason}"
    return text


def _container_specs(pod: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    return {c["name"]: c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]}


def _condition(pod_or_workload: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (pod_or_workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            found: Mapping[str, Any] = cond
            return found
    return None


def _requests(spec: Mapping[str, Any]) -> str:
    requests = (spec.get("resources") or {}).get("requests") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(requests.items()))


def _scheduling_hint(message: str, specs: Mapping[str, Mapping[str, Any]]) -> str:
    asked = "; ".join(f"{name}: {r}" for name, spec in specs.items() if (r := _requests(spec)))
    short = re.findall(r"Insufficient ([\w./-]*\w)", message)
    if short:
        what = " and ".join(sorted(set(short)))
        return (
            f"no node has that much {what} free: lower resources.requests in the manifest"
            + (f" (now {asked})" if asked else "")
            + ", or add capacity to the cluster"
        )
    if "taint" in message or "affinity" in message or "selector" in message:
        return "no node matches the pod's nodeSelector, affinity or tolerations: check them in the manifest"
    return "see the scheduler's reason above; `kubectl describe pod` shows the same"


def pod_alerts(
    pod: Mapping[str, Any],
    *,
    service: str,
    now: float,
    probes: Sequence[ProbeFailure] = (),
    last_lines: Sequence[str] = (),
) -> list[Alert]:
    """The alerts that hold for ``pod`` at ``now`` (its JSON as the API gives it).

    ``probes`` are the pod's recent probe failures (from Events),
    ``last_lines`` its last log lines (kept with a crash).
    """
    meta = pod.get("metadata") or {}
    name = str(meta.get("name") or "")
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return []  # going away on purpose (a rollout, `down`): its containers' ends are not crashes
    specs = _container_specs(pod)
    details = list(last_lines[-DETAIL_LINES:])

    def alert(kind: str, container: str, cause: str, hint: str, *, with_lines: bool = False) -> Alert:
        return Alert(
            key=f"{kind}/{service}/{name}/{container}",
            service=service,
            kind=kind,
            cause=cause,
            hint=hint,
            pod=name,
            details=details if with_lines else [],
        )

    if status.get("phase") == "Failed" and status.get("reason") == "Evicted":
        return [
            alert(
                "evicted",
                "",
                f"pod {name} was evicted: {str(status.get('message') or 'the node ran short of a resource').strip()}",
                "the node ran short of memory or disk: set the container's resources (requests and limits, "
                "ephemeral-storage for files it writes); its controller starts a new pod",
            )
        ]

    found: list[Alert] = []
    scheduled = _condition(pod, "PodScheduled")
    if (
        status.get("phase") == "Pending"
        and scheduled is not None
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == "Unschedulable"
    ):
        message = str(scheduled.get("message") or "no node fits")
        first = message.split(". ", maxsplit=1)[0].rstrip(".") + "."  # the rest is about preemption, which did not help
        unschedulable = alert("unschedulable", "", f"pod {name} cannot be scheduled: {first}", "")
        unschedulable.hint = _scheduling_hint(message, specs)
        unschedulable.details = [message] if message != first else []
        found.append(unschedulable)

    ready = _condition(pod, "Ready")
    pod_ready = ready is not None and ready.get("status") == "True"
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for cs in statuses:
        container = str(cs.get("name") or "")
        spec = specs.get(container, {})
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        running = state.get("running")
        terminated = state.get("terminated")
        last = (cs.get("lastState") or {}).get("terminated")
        reason = str(waiting.get("reason") or "")
        image = str(cs.get("image") or spec.get("image") or "")

        if reason in PULL_FAILURES:
            message = str(waiting.get("message") or reason)
            pull = alert(
                "image-pull",
                container,
                f"{container} cannot pull image {image}: {_pull_reason(message, reason)}",
                "check the image name and tag in the manifest (or image.name in innerloop.yaml), "
                "that it was pushed to that registry, and the pod's imagePullSecrets",
            )
            pull.details = [message]
            found.append(pull)
            continue
        if reason in CONFIG_FAILURES:
            found.append(
                alert(
                    "cannot-start",
                    container,
                    f"{container} cannot start: {waiting.get('message') or reason}",
                    "fix the container's command, env or mounts (a missing ConfigMap or Secret key) in the manifest",
                )
            )
            continue

        ended = terminated or last
        ended_reason = str((ended or {}).get("reason") or "")
        code = int((ended or {}).get("exitCode") or 0)
        finished = parse_time((ended or {}).get("finishedAt"))
        # A crash holds while the container is down or not ready, and a moment after it runs again.
        recent = finished is not None and now - finished < CRASH_HOLD_S
        down = running is None or not cs.get("ready") or recent
        restarts = int(cs.get("restartCount") or 0)

        failures = [p for p in probes if p.container in ("", container)]
        # Only a failure the kubelet killed the container for: one failed check while the agent restarts the
        # app (below the probe's failureThreshold) kills nothing, and was a false alert after every save.
        liveness = [
            p
            for p in failures
            if p.probe in ("liveness", "startup")
            and now - p.at < LIVENESS_HOLD_S
            and finished is not None
            and finished >= p.at - KILL_AFTER_PROBE_S
        ]
        looping = reason == "CrashLoopBackOff"
        backoff = f"; restarted {restarts} times, the kubelet now waits before the next" if looping else ""
        if liveness:
            # The kubelet killed it (exit 137): the probe is the cause, not a crash of its own.
            latest = max(liveness, key=lambda p: p.at)
            found.append(
                alert(
                    "probe-failed",
                    f"{container}/{latest.probe}",
                    f"{container}'s {latest.probe} probe fails, so the kubelet restarts it: {latest.message}" + backoff,
                    f"make the {latest.probe} probe's endpoint answer (or fix the probe's path and port in the "
                    "manifest; a slow start needs a startupProbe or a longer initialDelaySeconds)",
                )
            )
        elif ended is not None and ended_reason == "OOMKilled" and down:
            limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
            found.append(
                alert(
                    "oom-killed",
                    container,
                    f"{container} was OOMKilled ({exit_text(code)}): it needed more memory than its limit"
                    + (f" of {limit}" if limit else " (no limit set: the node ran out)")
                    + backoff,
                    "raise resources.limits.memory in the manifest, or find what grows (the last lines are below)",
                    with_lines=True,
                )
            )
        elif looping:
            exit_part = f", last {exit_text(code, ended_reason)}" if ended is not None else ""
            found.append(
                alert(
                    "crash-loop",
                    container,
                    f"{container} keeps crashing: CrashLoopBackOff after {restarts} restarts{exit_part}",
                    f"its logs say why (`innerloop logs {service}`, last lines below); "
                    "fix the cause and save, the kubelet starts it again",
                    with_lines=True,
                )
            )
        elif ended is not None and code != 0 and down:
            found.append(
                alert(
                    "crashed",
                    container,
                    f"{container} crashed ({exit_text(code, ended_reason)})",
                    f"its last lines are below (`innerloop logs {service}` for more); fix the cause and save",
                    with_lines=True,
                )
            )
        started = parse_time((running or {}).get("startedAt"))
        if (
            running is not None
            and not cs.get("ready")
            and not pod_ready
            and spec.get("readinessProbe")
            and started is not None
            and now - started >= NOT_READY_S
        ):
            readiness = [p for p in failures if p.probe == "readiness"]
            why = max(readiness, key=lambda p: p.at).message if readiness else "its readiness probe does not pass"
            found.append(
                alert(
                    "probe-failed",
                    f"{container}/readiness",
                    f"{container} not ready for {now - started:.0f} s: {why}",
                    "its Service sends it no traffic until the readiness probe passes: make the endpoint answer, "
                    "or fix the probe's path and port in the manifest",
                )
            )
    return found


def _pull_reason(message: str, reason: str) -> str:
    """The kubelet's pull error in a few words (the whole message goes in the details)."""
    if "not found" in message or "code = NotFound" in message:
        return "no such image or tag in that registry (not found)"
    if "unauthorized" in message.lower() or "denied" in message.lower() or "401" in message:
        return "the registry refused (unauthorized): an imagePullSecret is missing or wrong"
    if "no such host" in message or "connection refused" in message or "i/o timeout" in message:
        return "the registry cannot be reached from the node"
    return reason + (f": {message[:200]}" if message != reason else "")


def rollout_alerts(workload: Mapping[str, Any], *, service: str) -> list[Alert]:
    """A Deployment that does not progress (its deadline passed) or cannot create its pods."""
    meta = workload.get("metadata") or {}
    name = f"{str(workload.get('kind') or 'Deployment').lower()}/{meta.get('name')}"
    found: list[Alert] = []
    progressing = _condition(workload, "Progressing")
    if progressing is not None and progressing.get("status") == "False":
        found.append(
            Alert(
                key=f"rollout-stuck/{service}/{name}/progress",
                service=service,
                kind="rollout-stuck",
                cause=f"{name} does not progress ({progressing.get('reason')}): {progressing.get('message')}",
                hint="its new pods never became ready: the pods' alerts say why "
                "(image, scheduling, crashes, probes); fix that and save",
            )
        )
    failure = _condition(workload, "ReplicaFailure")
    if failure is not None and failure.get("status") == "True":
        found.append(
            Alert(
                key=f"rollout-stuck/{service}/{name}/replicas",
                service=service,
                kind="rollout-stuck",
                cause=f"{name} cannot create pods: {failure.get('message')}",
                hint="the namespace refuses the pod (Pod Security, a quota, a missing ServiceAccount): "
                "fix the manifest so the pod is allowed",
            )
        )
    return found


def blocking(alerts: Sequence[Alert]) -> Alert | None:
    """The first alert that means a rollout waited on cannot finish by itself (none: keep waiting)."""
    order = ["image-pull", "unschedulable", "cannot-start", "crash-loop", "oom-killed", "rollout-stuck", "probe-failed"]
    stuck = [a for a in alerts if a.kind in order]
    return min(stuck, key=lambda a: order.index(a.kind)) if stuck else None
