"""The router's limits: what one client may cost it before it is cut off.

The router is shared by every developer of a namespace and by whatever else
reaches the Service, so no single connection may hold its memory or its event
loop. Each default is documented in docs/SECURITY.md; a router's ConfigMap may
override them (``limits`` in its JSON config, camelCase keys).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_head_bytes: int = 64 * KIB  # an HTTP/1.1 request head, or an HTTP/2 header list (decoded)
    max_headers: int = 100  # header fields in one request head or header list
    head_timeout: float = 10.0  # a request head (HTTP/2: the preface and first SETTINGS) must arrive within this
    idle_timeout: float = 300.0  # a connection with nothing in flight is closed after this
    max_connections: int = 2048  # open client connections, all sources together
    max_connections_per_source: int = 256  # open client connections from one source address
    max_streams: int = 100  # concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
    max_buffered_bytes: int = 1 * MIB  # bytes queued towards one peer before the router stops reading from it

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Limits:
        """From the config's camelCase keys; unknown keys are refused (a typo must not silently keep a default)."""
        if not data:
            return cls()
        names = {_camel(f.name): f for f in fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"router limits: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            f = names[key]
            kind = float if f.type in ("float", float) else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"router limits: {key} must be a positive number, got {value!r}")
            values[f.name] = kind(value)
        return cls(**values)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class ConnectionCaps:
    """Admission of client connections under ``max_connections`` and ``max_connections_per_source``.

    Pure bookkeeping: the listener asks :meth:`admit` for each accepted
    connection (and closes it at once when refused) and calls
    :meth:`release` when an admitted one ends. A refusal is worth one log
    line per source per ``log_every`` seconds, not one per connection: a
    flood must not turn into a log flood.
    """

    def __init__(self, limits: Limits, *, log_every: float = 60.0) -> None:
        self.limits = limits
        self.log_every = log_every
        self.open = 0
        self.by_source: dict[str, int] = {}
        self._logged: dict[str, float] = {}
        self.refused = 0

    def admit(self, source: str, *, now: float) -> tuple[bool, str | None]:
        """Whether a connection from ``source`` may be served, and the line to log about a refusal (or None)."""
        count = self.by_source.get(source, 0)
        limits = self.limits
        if self.open >= limits.max_connections:
            reason = f"{self.open} connections open (maxConnections {limits.max_connections})"
        elif count >= limits.max_connections_per_source:
            reason = f"{count} connections open from it (maxConnectionsPerSource {limits.max_connections_per_source})"
        else:
            self.open += 1
            self.by_source[source] = count + 1
            return True, None
        self.refused += 1
        last = self._logged.get(source)
        if last is not None and now - last < self.log_every:
            return False, None
        if len(self._logged) > 4 * self.limits.max_connections:  # many sources: forget the old ones
            self._logged = {s: t for s, t in self._logged.items() if now - t < self.log_every}
        self._logged[source] = now
        return False, f"refusing connections from {source}: {reason} (said once per {self.log_every:g}s per source)"

    def release(self, source: str) -> None:
        self.open -= 1
        left = self.by_source[source] - 1
        if left:
            self.by_source[source] = left
        else:
            del self.by_source[source]
