"""Progress lines for the long-running steps of the bundled cluster.

A cold build runs for many minutes; a silent terminal looks hung. Every step
says what it is doing, and long subprocesses report a heartbeat with the last
thing they printed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

Report = Callable[[str], None]


def stderr_report(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


class StepFailed(RuntimeError):
    """A step of bringing up the cluster failed; the message says what to do."""


def run_logged(
    cmd: Sequence[str | Path],
    *,
    label: str,
    log: Path,
    report: Report,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    heartbeat_s: float = 20.0,
) -> None:
    """Run ``cmd`` with its output in ``log``, reporting progress while it runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    last_line = ""
    lines = 0
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
        )
        assert proc.stdout is not None
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(heartbeat_s):
                elapsed = int(time.monotonic() - started)
                report(f"{label}: {elapsed // 60}m{elapsed % 60:02d}s, {lines} lines, last: {last_line[:90]}")

        ticker = threading.Thread(target=beat, daemon=True)
        ticker.start()
        try:
            for line in proc.stdout:
                out.write(line)
                lines += 1
                last_line = line.strip()
            code = proc.wait()
        finally:
            stop.set()
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        raise StepFailed(f"{label} failed (exit {code}); full log: {log}\n" + "\n".join(tail))
    elapsed = time.monotonic() - started
    report(f"{label}: done in {elapsed:.0f}s")
