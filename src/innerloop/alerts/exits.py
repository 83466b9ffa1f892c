"""In dev mode the container never exits: the agent reports the app's exit, and this turns it into an alert.

The agent keeps the container alive and the kubelet sees nothing, so a
crashed app would go unnoticed but for the timeline's ``exited`` event
(the agent's process-exited, with the exit code; negative: the signal that
killed it). A non-zero code or a signal is a ``crashed`` alert with the
pod's last log lines; it clears when the timeline shows the app started
again (``restarted``, after a sync or the restart action).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from innerloop.alerts.pods import DETAIL_LINES
from innerloop.status.store import Alert, TimelineEvent

KIND = "crashed"


def exit_key(service: str, pod: str) -> str:
    return f"{KIND}/{service}/{pod}/process"


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    why = " (out of memory? SIGKILL is what the kernel's OOM killer sends)" if -code == signal.SIGKILL else ""
    return f"killed by {name}{why}"


def exit_alert(event: TimelineEvent, *, last_lines: Sequence[str] = ()) -> Alert | None:
    """The ``crashed`` alert for an ``exited`` timeline event; None for a clean exit (code 0) or another event."""
    if event.kind != "exited" or event.exit_code is None or event.exit_code == 0:
        return None
    return Alert(
        key=exit_key(event.service, event.pod),
        service=event.service,
        kind=KIND,
        cause=f"the app crashed ({describe_exit(event.exit_code)}); the container stays up in dev mode",
        hint=f"its last lines are below (`innerloop logs {event.service}`); fix the cause and save: the sync "
        "starts it again",
        pod=event.pod,
        details=list(last_lines[-DETAIL_LINES:]),
    )
