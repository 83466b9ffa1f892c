"""A CLI process whose output is read as it comes, for tests that stop it at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Cli:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> Cli:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        me = cls(proc)
        threading.Thread(target=me._read, daemon=True).start()
        return me

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        """Until a line contains ``text``; fails with the output if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                time.sleep(0.3)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output}")

    def stop(self, *signals: int, within: float, gap: float = 0.2) -> tuple[int, float]:
        """Send ``signals`` (``gap`` seconds apart); the exit status and the seconds until exit, at most ``within``."""
        started = time.monotonic()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap)
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running {within}s after {signals}:\n{self.output}") from None
        time.sleep(0.2)  # the reader's last lines
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
