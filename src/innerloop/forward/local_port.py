"""Who holds a local port, so "port in use" can say which process to stop.

Reading the kernel's socket table is what psutil is made for; a process of
another user shows without its name unless innerloop runs as root.
"""

from __future__ import annotations

import errno
import shlex

import psutil

from innerloop.config import PortForward as PortConfig
from innerloop.forward.forward import ForwardError


def port_holder(port: int) -> str | None:
    """``python3 (pid 1234: python3 -m http.server 8080)`` for the process listening on ``port``, if known."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.pid is None:
            return "another user's process"
        try:
            process = psutil.Process(conn.pid)
            command = shlex.join(process.cmdline())[:80]
            return f"{process.name()} (pid {conn.pid}: {command})"
        except (psutil.Error, OSError):
            return f"pid {conn.pid}"
    return None


def port_in_use(port: PortConfig, err: ForwardError) -> str:
    """The one line `up` prints when a forwarded local port cannot be bound."""
    local = port.local if port.local is not None else port.remote
    cause = err.__cause__
    if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE and isinstance(local, int):
        holder = port_holder(local)
        by = f" by {holder}" if holder else ""
        return (
            f"local port {local} on {port.address} is in use{by}: stop it, or set `local:` to another port "
            "(`local: 0` picks a free one, shown by `innerloop status`)"
        )
    return f"{err} (set `local:` to another port; `local: 0` picks a free one)"
