"""Start and stop the cluster's daemons by pid, without systemd.

Each daemon runs in its own session (it outlives the ``innerloop cluster up``
that started it) with its output in ``<state>/logs/<name>.log``. Its pid file
holds the pid *and* the process start time from ``/proc/<pid>/stat``, so a pid
reused by an unrelated process after a reboot is never mistaken for ours, and
never killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from innerloop.cluster.components import Component


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; it ends at the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


@dataclass(frozen=True, kw_only=True)
class PidFile:
    path: Path

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid} {process_start_time(pid)}\n")

    def running_pid(self) -> int | None:
        """The recorded pid if that very process still runs."""
        try:
            pid_s, started = self.path.read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_s)
        return pid if process_start_time(pid) == started else None


class Daemons:
    """The daemons of one cluster, found through their pid files."""

    def __init__(self, *, run_dir: Path, log_dir: Path) -> None:
        self._run = run_dir
        self._logs = log_dir

    def pidfile(self, name: str) -> PidFile:
        return PidFile(path=self._run / f"{name}.pid")

    def log(self, name: str) -> Path:
        return self._logs / f"{name}.log"

    def running(self, name: str) -> int | None:
        return self.pidfile(name).running_pid()

    def start(self, component: Component, *, env: dict[str, str] | None = None) -> int:
        """Start ``component`` unless it already runs; returns its pid."""
        pid = self.running(component.name)
        if pid is not None:
            return pid
        self._logs.mkdir(parents=True, exist_ok=True)
        with self.log(component.name).open("ab") as log:
            proc = subprocess.Popen(
                component.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.pidfile(component.name).write(proc.pid)
        return proc.pid

    def exited_early(self, name: str) -> str | None:
        """If ``name`` is not running, the tail of its log, to explain why."""
        if self.running(name) is not None:
            return None
        try:
            tail = self.log(name).read_text(errors="replace").splitlines()[-12:]
        except OSError:
            tail = []
        return "\n".join(tail)

    def stop(self, name: str, *, grace_s: float = 5.0) -> bool:
        """SIGTERM, then SIGKILL after ``grace_s``; True if something was stopped."""
        pf = self.pidfile(name)
        pid = pf.running_pid()
        if pid is None:
            pf.path.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and pf.running_pid() is not None:
            time.sleep(0.05)
        if pf.running_pid() is not None:
            os.kill(pid, signal.SIGKILL)
            while pf.running_pid() is not None:
                time.sleep(0.02)
        pf.path.unlink(missing_ok=True)
        return True
