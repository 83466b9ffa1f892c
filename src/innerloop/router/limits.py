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
