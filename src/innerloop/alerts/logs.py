"""App errors in log lines: Python tracebacks, Node stack traces, Go panics, error-level lines, patterns.

A log stream arrives one line at a time, and an error is often a block of
lines: a traceback ends with its ``XError: message`` line, a Node stack is
``Error: message`` then ``    at ...`` frames, a Go panic is ``panic: ...``
then a goroutine dump. :class:`ErrorScanner` (one per pod) assembles each
block and returns it as one :class:`AppError` when the block is complete:
at its last line when the format has one (a traceback), when a line that
cannot continue it arrives, or on :meth:`ErrorScanner.flush` after a quiet
moment (the watcher calls it), so a stack at the very end of a log is not
held forever.

An error-level line (``ERROR``, ``level=error``, JSON ``"level": "error"``)
that a traceback follows (Flask's ``ERROR in app: Exception on /x``, then
the traceback) is one error, summarised by the traceback's last line.

A service's ``alerts.errors`` patterns add lines; ``alerts.ignore`` drops any
line (or block whose summary) matches; ``alerts.builtin: false`` keeps the
patterns only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from innerloop.status.store import Alert

MAX_BLOCK_LINES = 60  # a runaway dump is cut; the summary line is what matters

ErrorKind = Literal["traceback", "stack", "panic", "error-line", "pattern"]

TRACEBACK_START = re.compile(r"^\s*Traceback \(most recent call last\):\s*$")
# The exception line that ends a traceback: a dotted name, then ": message" or nothing.
PY_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Iteration|[A-Z]\w*)(?::.*)?$")
NODE_ERROR = re.compile(r"^\s*(?:Uncaught )?(?:[A-Za-z_$][\w$.]*)?(?:Error|Exception)(?: \[[\w_]+\])?: .+$")
NODE_FRAME = re.compile(r"^\s+at \S")
GO_PANIC = re.compile(r"^(?:panic: |fatal error: )")
# Lines of a goroutine dump: blank, "goroutine 1 [running]:", "main.main()", "\t/src/x.go:12 +0x1d", "[signal ...".
GO_DUMP = re.compile(
    r"^(?:$|goroutine \d+ |\t|\[signal |[\w./*()\-]+\(.*\)$|created by |exit status \d+$|\s+panic: |\[recovered\])"
)
ERROR_LEVEL = re.compile(
    r"(?:^|[\s\[|:])(?:ERROR|FATAL|CRITICAL)(?:[\s\]|:]|$)|\blevel=(?:error|fatal|crit)\b|\"level\"\s*:\s*\"(?:error|fatal)\"",
)


# Error-level lines that are a graceful stop, not a fault: the agent restarts the app on every sync, so each
# would be a false alert per save. gunicorn's arbiter logs its workers' SIGTERM at ERROR level
# ("[ERROR] Worker (pid:8) was sent SIGTERM!"); SIGKILL (an OOM kill, a timeout) is not in here.
SHUTDOWN_NOISE = re.compile(r"\bWorker \(pid:\d+\) was sent (?:SIGTERM|SIGINT|SIGQUIT)!")


@dataclass(frozen=True)
class AppError:
    kind: ErrorKind
    summary: str  # the line that says what went wrong (a traceback's last line, a panic's message)
    lines: list[str]  # the whole block


@dataclass
class _Block:
    kind: ErrorKind
    lines: list[str] = field(default_factory=list)
    summary: str = ""
    complete: bool = False  # its last line arrived (a traceback's exception line)


def error_level(line: str) -> bool:
    """True for a line logged at error level (plain text, logfmt or JSON)."""
    if ERROR_LEVEL.search(line):
        return True
    text = line.strip()
    if text.startswith("{") and '"level"' not in text and '"severity"' in text:
        try:
            record = json.loads(text)
        except ValueError:
            return False
        return isinstance(record, dict) and str(record.get("severity", "")).lower() in ("error", "critical")
    return False


class ErrorScanner:
    """One pod's log lines in, complete app errors out (see the module docstring)."""

    def __init__(self, *, errors: Sequence[str] = (), ignore: Sequence[str] = (), builtin: bool = True) -> None:
        self.errors = [re.compile(p) for p in errors]
        self.ignore = [re.compile(p) for p in ignore]
        self.builtin = builtin
        self._block: _Block | None = None

    @property
    def pending(self) -> bool:
        """A block is open: :meth:`flush` after a quiet moment ends it."""
        return self._block is not None

    def _ignored(self, text: str) -> bool:
        return any(p.search(text) for p in self.ignore)

    def _done(self) -> list[AppError]:
        block, self._block = self._block, None
        if block is None:
            return []
        summary = block.summary or next((ln for ln in block.lines if ln.strip()), "")
        if self._ignored(summary):
            return []
        return [AppError(kind=block.kind, summary=summary.strip(), lines=block.lines[:MAX_BLOCK_LINES])]

    def flush(self) -> list[AppError]:
        """End the open block (the log went quiet): what it held, as an error."""
        return self._done()

    def feed(self, line: str) -> list[AppError]:
        """One line (without its newline): the errors it completes, usually none."""
        line = line.rstrip("\r\n")
        block = self._block
        if block is not None:
            if self._continues(block, line):
                return self._done() if block.complete else []
            return [*self._done(), *self.feed(line)]
        if self._ignored(line):
            return []
        if self.builtin:
            if TRACEBACK_START.match(line):
                self._block = _Block("traceback", [line])
                return []
            if GO_PANIC.match(line):
                self._block = _Block("panic", [line], summary=line)
                return []
            if NODE_ERROR.match(line):
                self._block = _Block("stack", [line], summary=line)
                return []
            if error_level(line) and not SHUTDOWN_NOISE.search(line):
                self._block = _Block("error-line", [line], summary=line)
                return []
        if any(p.search(line) for p in self.errors):
            self._block = _Block("pattern", [line], summary=line)
        return []

    def _continues(self, block: _Block, line: str) -> bool:
        """Add ``line`` to the open block if it belongs there (a traceback's last line sets its summary)."""
        if len(block.lines) >= MAX_BLOCK_LINES and block.kind != "traceback":
            return False
        if block.kind in ("error-line", "pattern"):
            # An error line followed by its traceback (Flask, logging.exception) is one error.
            if TRACEBACK_START.match(line):
                block.kind, block.summary = "traceback", ""
                block.lines.append(line)
                return True
            if block.kind == "error-line" and NODE_FRAME.match(line):
                block.kind = "stack"
                block.lines.append(line)
                return True
            return False
        if block.kind == "traceback":
            if len(block.lines) < MAX_BLOCK_LINES:
                block.lines.append(line)
            if line.startswith((" ", "\t")) or not line.strip() or TRACEBACK_START.match(line):
                return True
            if PY_EXCEPTION.match(line.strip()):
                block.summary, block.complete = line, True
                return True
            block.lines.pop()  # not part of it: the traceback was cut, end it here
            block.summary = next((ln for ln in reversed(block.lines) if ln.strip()), "")
            return False
        if block.kind == "stack":
            if NODE_FRAME.match(line):
                block.lines.append(line)
                return True
            return False
        # panic
        if GO_DUMP.match(line):
            block.lines.append(line)
            return True
        return False


APP_ERROR = "app-error"


def app_error_key(service: str) -> str:
    """One app-error alert per service: later errors while it is raised count, and update its lines."""
    return f"{APP_ERROR}/{service}"


def app_error_alert(error: AppError, *, service: str, pod: str) -> Alert:
    what = {
        "traceback": "a Python traceback",
        "stack": "a stack trace",
        "panic": "a Go panic",
        "error-line": "an error",
        "pattern": "a line matching alerts.errors",
    }[error.kind]
    return Alert(
        key=app_error_key(service),
        service=service,
        kind=APP_ERROR,
        cause=f"{what} in the logs: {error.summary}",
        hint=f"the lines are below (`innerloop logs {service}`); fix it and save (the alert clears on the next "
        "sync), or add a pattern to alerts.ignore in innerloop.yaml if it is expected",
        pod=pod,
        details=error.lines,
    )
