"""A long-running innerloop command in the background of a test: wait for a line of its log, stop it gently."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from .kube import eventually


def stop_gently(proc: subprocess.Popen[str]) -> None:
    """Ctrl+C, as a developer stops it; killed if it has not ended within a minute."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def logged(proc: subprocess.Popen[str], log: Path, pattern: str, timeout_s: float = 600) -> re.Match[str]:
    """The first match of ``pattern`` in ``log``, waited for; fails at once with the log if the command ended."""

    def found() -> re.Match[str] | None:
        if proc.poll() is not None:
            raise RuntimeError(f"innerloop exited {proc.returncode}:\n{log.read_text()}")
        return re.search(pattern, log.read_text())

    match: re.Match[str] = eventually(found, timeout_s=timeout_s)
    return match
