"""Which services run under their debugger, and where their debug ports land on this machine.

``innerloop debug NAME...`` names them; ``innerloop debug`` alone takes
every service whose language innerloop can tell (``debug.language``, or
``auto`` from the files its sync rules cover); ``debug: {enabled: true}``
adds a service to plain ``innerloop up`` too.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from innerloop.config import Project, Service
from innerloop.debug.languages import LOOPBACK, DebugError, language_of_files
from innerloop.forward.local_port import port_holder

_SKIPPED_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", ".innerloop", "target", "dist", "build"}
_MAX_FILES = 5000  # enough to tell a language; a huge tree is not walked to the end


def synced_files(root: Path, service: Service) -> list[str]:
    """The relative names of the files under the service's sync rules (what ``language: auto`` reads)."""
    names: list[str] = []
    for rule in service.sync:
        local = root / rule.local
        if local.is_file():
            names.append(local.name)
            continue
        for folder, dirs, files in os.walk(local):
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
            base = Path(folder).relative_to(local)
            names.extend((base / f).as_posix() for f in sorted(files))
            if len(names) >= _MAX_FILES:
                return names
    return names


def debug_services(project: Project, root: Path, requested: Sequence[str] | None) -> dict[str, list[str]]:
    """The services to debug, each with its synced files (for ``auto``).

    ``requested``: None for plain ``up`` (only ``debug.enabled``); ``[]`` for
    ``innerloop debug`` alone (every service whose language is known); names
    otherwise. An unknown name raises :class:`DebugError`.
    """
    services = project.services
    chosen: list[str] = [name for name, s in services.items() if s.debug.enabled]
    if requested:
        unknown = [name for name in requested if name not in services]
        if unknown:
            raise DebugError(
                f"no service named {', '.join(map(repr, unknown))} in innerloop.yaml (it has {', '.join(services)})"
            )
        chosen += list(requested)
    out: dict[str, list[str]] = {}
    for name, service in services.items():
        files = synced_files(root, service) if (name in chosen or requested == []) else []
        if name in chosen or (
            requested == []
            and service.image is not None
            and (service.debug.language != "auto" or language_of_files(files) is not None)
        ):
            out[name] = files
    return out


def port_is_free(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def bind_debug_port(port: int) -> socket.socket:
    """A listening socket on ``127.0.0.1:port`` (``debug.local``), held from before the deploy to the forward."""
    return socket.create_server((LOOPBACK, port))


def debug_port_in_use(port: int, err: OSError) -> str:
    """The one line `up` and `debug` print when ``debug.local`` cannot be bound."""
    if err.errno == errno.EADDRINUSE:
        holder = port_holder(port)
        by = f" by {holder}" if holder else ""
        return (
            f"the debugger's local port {port} on {LOOPBACK} is in use{by}: stop it, or set debug.local "
            "to another port (leave it out and innerloop picks a free one)"
        )
    why = err.strerror or err
    return f"cannot listen on {LOOPBACK}:{port} for the debugger: {why} (set debug.local to another port)"


def local_debug_port(service: Service, container_port: int) -> int:
    """``debug.local``, else the container's debug port if it is free here, else 0 (any free one)."""
    if service.debug.local is not None:
        return service.debug.local
    return container_port if port_is_free(container_port) else 0
