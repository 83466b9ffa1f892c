"""Log lines: parsing the kubelet's timestamps, skipping lines already delivered, and printing. Pure.

A follow that reconnects (dropped connection, container restart, status
lagging behind the kubelet) asks for logs again from a point in time, and the
API only takes whole seconds (``sinceSeconds``), so the first lines of every
reconnect overlap what was delivered. Each line carries the kubelet's
nanosecond timestamp (``timestamps=true``); a `LogCursor` remembers the last
one delivered (and the texts seen at exactly that instant), so overlaps are
dropped and nothing is delivered twice.

Colours: a service keeps its colour across runs and machines (a CRC of its
name, not Python's salted ``hash``), so a developer learns that "api is blue".
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True, kw_only=True)
class LogLine:
    """One line a container wrote, attributed to the service, pod and container it came from."""

    service: str
    pod: str
    container: str
    text: str
    timestamp: datetime
    """When the kubelet received it (UTC, microseconds)."""


_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2}) ?")


@dataclass(frozen=True)
class Stamped:
    """A raw line split into its timestamp (ns since the epoch, and as a datetime) and text."""

    ns: int
    at: datetime
    text: str


def parse_timestamped(raw: str) -> Stamped | None:
    """``2026-11-29T18:51:39.819768170Z hello`` -> Stamped; None when the line has no timestamp.

    The kubelet writes RFC 3339 with nanoseconds and drops trailing zeros
    (``...39.8197Z``, even ``...39Z``), so the fraction is padded, not compared as text.
    """
    match = _TIMESTAMP.match(raw)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    try:
        seconds = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    nanos = int((fraction or "").ljust(9, "0"))
    ns = int(seconds.timestamp()) * 1_000_000_000 + nanos
    at = seconds.astimezone(UTC).replace(microsecond=nanos // 1000)
    return Stamped(ns=ns, at=at, text=raw[match.end() :].rstrip("\r\n"))


@dataclass
class LogCursor:
    """Where a follow has got to: the newest timestamp delivered, and the texts delivered at it."""

    last_ns: int | None = None
    _at_last: set[str] = field(default_factory=set)

    def accept(self, ns: int, text: str) -> bool:
        """True if the line is new (and remember it); False if it was delivered before."""
        if self.last_ns is not None:
            if ns < self.last_ns:
                return False
            if ns == self.last_ns:
                if text in self._at_last:
                    return False
                self._at_last.add(text)
                return True
        self.last_ns = ns
        self._at_last = {text}
        return True

    def since_seconds(self, now_ns: int, *, margin_s: int = 2) -> int | None:
        """``sinceSeconds`` that surely covers everything after the cursor; None before any line.

        ``margin_s`` absorbs clock differences between this machine and the node.
        """
        if self.last_ns is None:
            return None
        return max(1, math.ceil((now_ns - self.last_ns) / 1e9) + margin_s)


# Readable on dark and light terminals; red is left out (it reads as an error).
PALETTE = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)
_RESET = "\x1b[0m"


def color_index(service: str) -> int:
    """A colour for a service that is the same in every run and on every machine."""
    return zlib.crc32(service.encode()) % len(PALETTE)


def format_line(line: LogLine, color_index: int | None, width: int) -> str:
    """``service | text``, the name padded to ``width`` and coloured; ``color_index=None`` for no colour."""
    name = line.service.ljust(width)
    if color_index is None:
        return f"{name} | {line.text}"
    code = PALETTE[color_index % len(PALETTE)]
    return f"\x1b[{code}m{name} |{_RESET} {line.text}"
